"""The scale bar in an SEM info bar: its length in pixels and its label read by OCR, hence nm per pixel.

The info bar (maemi.data.images.find_info_bar) is a flat band under the micrograph holding high-contrast text and a
scale bar. Here:
1. the band's high-contrast pixels are split into connected components, after removing frame lines (rows or columns
   that run across the whole band), so a bar drawn against a frame still stands alone;
2. a scale bar is a component much wider than it is thick: a solid bar, or a line with end ticks; its length is the
   extent of its longest row (the line between the ticks' outer edges);
3. the other components are joined into runs of text (text_lines), each read by OCR (maemi.measure.ocr); the label is
   the run nearest a bar that reads as a length ("200 nm", "1 µm"), and the magnification ("Mag = 25.00 K X",
   "x5,000", "25.0kX") is read from all of them.

A reading is only returned as a scale when the bar and its label are both found and the label is trusted
(maemi.measure.ocr.read_label); otherwise nm_per_pixel is None and `reason` says why (a wrong scale is worse than none).

Reference: the bar-then-label approach of imagedataextractor (Mukaddem, Beard & Cole, J. Chem. Inf. Model. 60, 2020).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from maemi.measure.instrument import parse_magnification
from maemi.measure.ocr import read_label, tesseract_available, tesseract_line

BAR_TEXT_CONTRAST = 0.35  # |pixel - band background| at least this: text or bar (as maemi.data.images)
MIN_BAR_LENGTH_PX = 12
MIN_BAR_WIDTH_FRACTION = 0.04  # of the band's width: shorter lines are glyph strokes ("=", "-", "_"), not scale bars
MIN_BAR_ASPECT = 6.0  # length / thickness of the line part of a scale bar
WORD_GAP = 1.2  # in text heights: wide fonts (STIX) leave a space of ~0.9 height between "500" and "nm"
LABEL_LINES_TRIED = 3  # runs of text nearest a bar read again as a label
_MAGNIFICATION = re.compile(
    r"(?i)(?:\bmag\w*\s*[:=]?\s*[x×]?\s*(\d[\d,]*(?:\.\d+)?\s*[km]?\s*[x×]?)"
    r"|\b[x×]\s?(\d[\d,]*(?:\.\d+)?\s*[km]?)\b|\b(\d[\d,]*(?:\.\d+)?\s*[km]?\s?[x×])(?!\w))"
)


@dataclass(frozen=True)
class Word:
    text: str
    confidence: float  # 0-100
    box: tuple[int, int, int, int]  # left, top, right, bottom in band coordinates


@dataclass(frozen=True)
class ScaleBarReading:
    nm_per_pixel: float | None
    bar_px: int | None = None  # the bar's length
    bar_box: tuple[int, int, int, int] | None = None  # left, top, right, bottom in image coordinates
    label: str | None = None  # the label as read
    label_nm: float | None = None
    magnification: float | None = None
    text: str = ""  # everything OCR read in the band
    reason: str | None = None  # why nm_per_pixel is None
    words: tuple[Word, ...] = field(default=(), repr=False)
    on_image: bool = False  # drawn on the micrograph itself (maemi.measure.annotations), not in an info bar


def read_scale_bar(grey: np.ndarray, bar_top: int | None, label_engine: str = "both") -> ScaleBarReading:
    """Read the scale bar of the info bar that starts at row `bar_top` of the (H, W) float image `grey`."""
    if bar_top is None or bar_top >= grey.shape[0]:
        return ScaleBarReading(None, reason="no instrument info bar found at the bottom of the image")
    band = np.asarray(grey[bar_top:], dtype=np.float32)
    if band.shape[0] < 4:
        return ScaleBarReading(None, reason="the info bar is too small to hold a scale bar")
    background = float(np.median(band))
    ink = without_frame(np.abs(band - background) >= BAR_TEXT_CONTRAST)
    bars = find_bars(ink)
    if not tesseract_available():
        return ScaleBarReading(None, reason="Tesseract OCR is not installed (Debian: apt-get install tesseract-ocr), "
                                            "so the scale bar's label cannot be read")
    bar_mask = np.zeros_like(ink)
    for left, top, right, bottom in bars:
        bar_mask[top:bottom, left:right] = True
    lines = text_lines(ink & ~bar_mask)
    free = {box: Word(*tesseract_line(_crop(band, box), background), box) for box in lines}  # unrestricted readings
    words = [w for w in free.values() if w.text]
    text = " ".join(w.text for w in words)
    magnification = read_magnification(text)
    if not bars:
        return ScaleBarReading(None, magnification=magnification, text=text, words=tuple(words),
                               reason="no scale bar (a line much longer than it is thick) in the info bar")
    # The label is one of the runs of text nearest a bar (above, below or beside it) that reads as a length.
    near = sorted(lines, key=lambda box: min(label_gap(b, box) for b in bars))[:LABEL_LINES_TRIED]
    misread = None
    for box in near:
        if _names_a_field(free[box].text):
            continue  # "WD = 5.1 mm": a length, but an instrument field, not the bar's label
        label = read_label(_crop(band, box), background, free[box].text, label_engine)
        if label is None:
            continue
        if label.nm is None:
            misread = misread or f"the scale bar's label: {label.reason}"
            continue
        bar = min(bars, key=lambda b: label_gap(b, box))
        length = bar[2] - bar[0]
        return ScaleBarReading(label.nm / length, bar_px=length, bar_box=_to_image(bar, bar_top), label=label.text,
                               label_nm=label.nm, magnification=magnification, text=text, words=tuple(words))
    return ScaleBarReading(None, bar_px=bars[0][2] - bars[0][0], magnification=magnification, text=text,
                           words=tuple(words), bar_box=_to_image(bars[0], bar_top),
                           reason=misread or "a scale bar was found but no length label (a number and a unit such "
                                             "as nm or µm) could be read next to it")


# ------------------------------------------------------------------------------------------------------------- bars


def without_frame(ink: np.ndarray) -> np.ndarray:
    """The ink mask without frame lines: rows that run across the whole band and columns that run down it. A bar or
    a label drawn against the frame then stands alone."""
    ink = ink.copy()
    ink[ink.mean(axis=1) > 0.9] = False
    ink[:, ink.mean(axis=0) > 0.9] = False
    return ink


def find_bars(ink: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes (left, top, right, bottom; right/bottom exclusive) of scale-bar-like components of a boolean ink mask,
    longest first."""
    from scipy import ndimage
    from skimage.measure import label

    ink = without_frame(ink)
    width = ink.shape[1]
    min_length = max(MIN_BAR_LENGTH_PX, MIN_BAR_WIDTH_FRACTION * width)
    labels = label(ink, connectivity=2)
    bars = []
    # A bar is no longer than its box is wide, so only wide boxes are looked into: a field of pores or grains in the
    # band has tens of thousands of components, and building each one's region cost 50 ms an image (measured).
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or box[1].stop - box[1].start < min_length:
            continue
        top, left, bottom, right = box[0].start, box[1].start, box[0].stop, box[1].stop
        patch = labels[box] == i  # [h, w] bool
        row_extent = patch.sum(axis=1)  # ink per row of the component
        line_rows = row_extent >= 0.9 * row_extent.max()
        length = int(row_extent.max())
        thickness = int(line_rows.sum())
        if length < min_length or length < MIN_BAR_ASPECT * thickness or length > 0.95 * width:
            continue
        # the line must be solid: its rows filled from one end of the component to the other (text never is)
        line = patch[line_rows]
        if line.mean() < 0.9 or length < 0.9 * (right - left):
            continue
        # ticks or nothing above/below the line: other rows of the component are narrow (ticks) or absent
        others = row_extent[~line_rows]
        if others.size and np.median(others) > 0.25 * length:
            continue
        bars.append((left, top, right, bottom))
    return sorted(bars, key=lambda b: b[0] - b[2])


def _to_image(box: tuple[int, int, int, int], bar_top: int) -> tuple[int, int, int, int]:
    left, top, right, bottom = box
    return int(left), int(top + bar_top), int(right), int(bottom + bar_top)


def label_gap(bar: tuple[int, int, int, int], label: tuple[int, int, int, int]) -> float:
    """Gap between the boxes (0 when they overlap in both axes), with horizontal gaps weighted less: a label beside
    a bar is common, far above or below it is not."""
    dx = max(label[0] - bar[2], bar[0] - label[2], 0)
    dy = max(label[1] - bar[3], bar[1] - label[3], 0)
    return float(np.hypot(0.5 * dx, dy))


# -------------------------------------------------------------------------------------------------------------- OCR


def text_lines(ink: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Boxes of the runs of text in an ink mask: connected components (glyphs) joined when they overlap vertically
    and the horizontal gap between them is under WORD_GAP text heights (the space in "200 nm" is smaller; the gap
    between an info bar's columns larger)."""
    from skimage.measure import label, regionprops

    boxes = [r.bbox for r in regionprops(label(ink, connectivity=2)) if r.area >= 2]  # (top, left, bottom, right)
    if not boxes:
        return []
    boxes.sort(key=lambda b: b[1])
    groups: list[list[int]] = []  # [top, left, bottom, right]
    for top, left, bottom, right in boxes:
        for g in groups:
            overlap = min(bottom, g[2]) - max(top, g[0])
            height = max(bottom - top, g[2] - g[0])
            if overlap > 0.3 * min(bottom - top, g[2] - g[0]) and left - g[3] < WORD_GAP * height:
                g[0], g[1], g[2], g[3] = min(g[0], top), min(g[1], left), max(g[2], bottom), max(g[3], right)
                break
        else:
            groups.append([top, left, bottom, right])
    return [(g[1], g[0], g[3], g[2]) for g in groups if g[2] - g[0] >= 4]  # as (left, top, right, bottom)


def _crop(band: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The run of text with a margin of half its height (as far as the band allows): readers need the background
    around the glyphs to see where they end."""
    left, top, right, bottom = box
    margin = max(2, (bottom - top) // 2)
    return band[max(0, top - margin):bottom + margin, max(0, left - margin):right + margin]


def _names_a_field(text: str) -> bool:
    """'WD = 5.1 mm', 'HFW: 2.5 µm', 'Mag 25 kX': a run of text that names an instrument field."""
    return "=" in text or ":" in text or bool(re.search(r"(?i)\b(WD|HFW|FW|EHT|HV|mag|width|dwell|spot|det)\b", text))


def read_magnification(text: str) -> float | None:
    match = _MAGNIFICATION.search(text)
    if not match:
        return None
    return parse_magnification(next(g for g in match.groups() if g))
