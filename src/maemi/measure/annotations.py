"""A scale bar and its label drawn on the micrograph itself: found, read for the scale, and left out of what is measured.

Published micrographs and many TEM and STEM exports have no info bar: the scale bar is burnt into the image, usually
in a corner, as a solid horizontal line (or a line with end ticks) in pure white or black, with its length ("200 nm")
written beside it in the same ink, often on a box of the other ink. Segmentation would count the bar and every glyph
as objects and skew the sizes. Here ink is what sits at the very end of the grey range (annotations are drawn at full
scale, and micrograph detail there rarely forms a solid rectangle); the bar is found as in an info bar
(maemi.measure.scalebar.find_bars) and kept only with a run of ink glyphs next to it (scalebar.text_lines): a line
with no label is left to the measurement. The label's length, read by OCR (maemi.measure.ocr.read_label), over the
bar's length in pixels is the scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from maemi.measure.ocr import read_label, tesseract_available, tesseract_line
from maemi.measure.scalebar import ScaleBarReading, _distance, find_bars, text_lines

INK_LEVEL = 0.04  # ink: grey within this of 0 (dark ink) or 1 (bright ink)
LABEL_REACH = 2.0  # a label starts within this many of its own heights of the bar (above, below or beside it)
MIN_LABEL_HEIGHT_PX = 5
MAX_TEXT_HEIGHT = 0.08  # of the image's height: annotation text is small beside the micrograph
MAX_BAR_HEIGHT = 0.25  # of its length: the line and its end ticks, not a blob with one long row
BACKDROP_MAX_FRACTION = 0.1  # a box of the other ink behind the annotation is left out too, if it is this small
MARGIN_PX = 2  # left out around the ink: its anti-aliased edge


@dataclass(frozen=True)
class Annotation:
    bar: tuple[int, int, int, int]  # left, top, right, bottom (exclusive) in image coordinates
    label: tuple[int, int, int, int]  # the run of text nearest the bar
    ink: str  # "bright" or "dark"
    box: tuple[int, int, int, int]  # everything left out of measurement: bar, label and the box behind them


def find_annotations(grey: np.ndarray) -> list[Annotation]:
    """The scale bars drawn on an (H, W) grey image in [0, 1], each with its label; at most one per ink."""
    grey = np.asarray(grey, dtype=np.float32)
    found = []
    for ink_name, ink in (("bright", grey >= 1.0 - INK_LEVEL), ("dark", grey <= INK_LEVEL)):
        if not ink.any() or ink.mean() > 0.5:  # no ink, or the ink is the image's own background
            continue
        for bar in filter(lambda b: _drawn_bar(b, ink.shape), find_bars(ink)):
            label = _label_of(ink, bar)
            if label is not None:
                found.append(Annotation(bar, label, ink_name, _backdrop(grey, ink_name, _union(bar, label))))
                break
    return found


def _drawn_bar(bar: tuple[int, int, int, int], shape: tuple[int, int]) -> bool:
    """A bar drawn on the image: flat (its ticks included), and clear of the frame's left and right edges, which a
    streak or the edge of a dark region running out of the field is not."""
    left, top, right, bottom = bar
    return bottom - top <= MAX_BAR_HEIGHT * (right - left) and left > 0 and right < shape[1]


def _label_of(ink: np.ndarray, bar: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The run of ink glyphs nearest the bar, within reach of it, as (left, top, right, bottom) in image coordinates."""
    left, top, right, bottom = bar
    length = right - left
    h, w = ink.shape
    # look within one bar length around the bar: labels are as wide as the bar or less and sit right next to it
    y0, y1, x0, x1 = max(top - length, 0), min(bottom + length, h), max(left - length, 0), min(right + length, w)
    region = ink[y0:y1, x0:x1].copy()
    region[top - y0:bottom - y0, left - x0:right - x0] = False
    near = []
    for l, t, r, b in text_lines(region):
        box = (l + x0, t + y0, r + x0, b + y0)
        height = b - t
        if not MIN_LABEL_HEIGHT_PX <= height <= min(length, MAX_TEXT_HEIGHT * h):
            continue
        if not height <= r - l <= 2 * length:  # text is wider than tall ("1 µm"), and about as wide as its bar
            continue
        if ndimage.label(region[t:b, l:r])[1] < 2:  # glyphs: a number and a unit at least
            continue
        if _distance(bar, box) <= LABEL_REACH * height:
            near.append(box)
    return min(near, key=lambda box: _distance(bar, box)) if near else None


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])


def _backdrop(grey: np.ndarray, ink: str, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The annotation's box grown by MARGIN_PX, and over the box of the other ink it is drawn on when there is one
    (white text on a black box): that box's pixels all touch the annotation's surroundings."""
    h, w = grey.shape
    left, top, right, bottom = box
    grown = (max(left - MARGIN_PX, 0), max(top - MARGIN_PX, 0), min(right + MARGIN_PX, w), min(bottom + MARGIN_PX, h))
    other = grey <= INK_LEVEL if ink == "bright" else grey >= 1.0 - INK_LEVEL
    labels, _ = ndimage.label(other)
    ring = labels[grown[1]:grown[3], grown[0]:grown[2]]
    objects = ndimage.find_objects(labels)
    result = grown
    for i in np.unique(ring[ring > 0]):
        region = objects[i - 1]
        area = (region[0].stop - region[0].start) * (region[1].stop - region[1].start)
        if area <= BACKDROP_MAX_FRACTION * h * w:
            result = _union(result, (region[1].start, region[0].start, region[1].stop, region[0].stop))
    return result


def without_annotations(grey: np.ndarray, annotations: list[Annotation]) -> np.ndarray:
    """A copy of `grey` with each annotation's box filled with the median of a ring just outside it, so that the
    measurement finds no objects there (what the annotation hides is lost to the expert's eye too)."""
    if not annotations:
        return grey
    out = np.array(grey, dtype=np.float32, copy=True)
    h, w = out.shape
    for a in annotations:
        left, top, right, bottom = a.box
        r = 4
        outer = out[max(top - r, 0):min(bottom + r, h), max(left - r, 0):min(right + r, w)]
        inner = np.zeros(outer.shape, bool)
        inner[top - max(top - r, 0):bottom - max(top - r, 0), left - max(left - r, 0):right - max(left - r, 0)] = True
        ring = outer[~inner]
        out[top:bottom, left:right] = float(np.median(ring)) if ring.size else float(np.median(out))
    return out


def read_annotation_scale(grey: np.ndarray, annotations: list[Annotation], label_engine: str = "both"
                          ) -> ScaleBarReading:
    """The scale from the first annotation whose label reads as a length: its length over the bar's in pixels."""
    if not annotations:
        return ScaleBarReading(None, reason="no scale bar with a label drawn on the image")
    if not tesseract_available():
        return ScaleBarReading(None, reason="Tesseract OCR is not installed (Debian: apt-get install tesseract-ocr), "
                                            "so the scale bar's label cannot be read")
    misread = None
    for a in annotations:
        crop, background = _label_crop(grey, a)
        free, _ = tesseract_line(crop, background)
        label = read_label(crop, background, free, label_engine)
        length = a.bar[2] - a.bar[0]
        if label is not None and label.nm is not None:
            return ScaleBarReading(label.nm / length, bar_px=length, bar_box=a.bar, label=label.text,
                                   label_nm=label.nm, text=free, on_image=True)
        misread = misread or (label.reason if label is not None else f"its label was read as {free!r}")
    bar = annotations[0].bar
    return ScaleBarReading(None, bar_px=bar[2] - bar[0], bar_box=bar, on_image=True,
                           reason=f"a scale bar is drawn on the image, but {misread}")


def _label_crop(grey: np.ndarray, a: Annotation) -> tuple[np.ndarray, float]:
    """The label with a margin of half its height, everything but its ink (and a pixel around, the anti-aliased edge)
    set to the other end of the range, so that the micrograph behind the text does not reach the reader."""
    left, top, right, bottom = a.label
    margin = max(2, (bottom - top) // 2)
    h, w = grey.shape
    crop = np.array(grey[max(top - margin, 0):min(bottom + margin, h), max(left - margin, 0):min(right + margin, w)],
                    dtype=np.float32)
    ink = crop >= 1.0 - INK_LEVEL if a.ink == "bright" else crop <= INK_LEVEL
    background = 0.0 if a.ink == "bright" else 1.0
    crop[~ndimage.binary_dilation(ink, iterations=1)] = background
    return crop, background
