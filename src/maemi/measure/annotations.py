"""A scale bar and its label drawn on the micrograph itself: found, read for the scale, and left out of what is measured.

Published micrographs and many TEM and STEM exports have no info bar: the scale bar is burnt into the image, usually
in a corner, as a solid horizontal line (or a line with end ticks) in pure white or black, with its length ("200 nm")
written beside it in the same ink, often on a box of the other ink. Segmentation would count the bar and every glyph
as objects and skew the sizes. Here ink is what sits at the very end of the grey range (annotations are drawn at full
scale, and micrograph detail there rarely forms a solid rectangle); the bar is found as in an info bar
(maemi.measure.scalebar.find_bars) and kept only with a run of ink glyphs next to it (scalebar.text_lines): a line
with no label is left to the measurement. The label's length, read by OCR (maemi.measure.ocr.read_label), over the
bar's length in pixels is the scale. By hand, on scalebar.py's parts: imagedataextractor (Mukaddem, Beard & Cole
2020), whose bar-then-label approach this follows, pins matplotlib 2.2.4 and pytesseract 0.3.3 and pulls in
chemdataextractor, which do not install beside this stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import apply_hysteresis_threshold

from maemi.measure.ocr import read_label, tesseract_available, tesseract_line
from maemi.measure.scalebar import ScaleBarReading, find_bars, label_gap, text_lines

INK_LEVEL = 0.04  # ink: grey within this of 0 (dark ink) or 1 (bright ink)
TEXT_EDGE_LEVEL = 0.6  # a glyph's anti-aliased edge: this much ink, connected to full ink
LABEL_REACH = 2.0  # a label starts within this many of its own heights of the bar (above, below or beside it)
MIN_LABEL_HEIGHT_PX = 5
MAX_TEXT_HEIGHT = 0.08  # of the image's height: annotation text is small beside the micrograph
MAX_BAR_HEIGHT = 0.25  # of its length: the line and its end ticks, not a blob with one long row
MAX_BAR_WIDTH = 0.4  # of the image's width: scale bars are a tenth to a third of the field
SURROUND_PX, SURROUND_MAX_LEVEL = 3, 0.75  # the rows around a bar are not ink: at most this much, in the median
TEXT_INK = (0.08, 0.7)  # the share of a label's box its glyphs cover: text is neither a speck nor solid
BACKDROP_MAX_FRACTION = 0.1  # a box of the other ink behind the annotation is left out too, if it is this small
MARGIN_PX = 2  # left out around the ink: its anti-aliased edge
FILL_RING_PX = 4  # a left-out box is filled with the median of a ring this wide around it


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
    for ink_name, level in (("bright", grey), ("dark", 1.0 - grey)):  # level: 1 is full ink
        ink = level >= 1.0 - INK_LEVEL
        if not ink.any() or ink.mean() > 0.5:  # no ink, or the ink is the image's own background
            continue
        for bar in filter(lambda b: _drawn_bar(b, level), find_bars(ink)):
            label = _label_of(level, ink, bar)
            if label is not None:
                found.append(Annotation(bar, label, ink_name, _backdrop(grey, ink_name, _union(bar, label))))
                break
    return found


def _drawn_bar(bar: tuple[int, int, int, int], level: np.ndarray) -> bool:
    """A bar drawn on the image: flat (its ticks included), a minor part of the field's width, clear of the frame's
    left and right edges, and standing out from the rows just above and below it; a streak, a dropped scan line, the
    edge of a dark region running out of the field, or a run of black pixels in the vacuum of a dark-field image is
    not."""
    left, top, right, bottom = bar
    h, w = level.shape
    if bottom - top > MAX_BAR_HEIGHT * (right - left) or right - left > MAX_BAR_WIDTH * w or left == 0 or right == w:
        return False
    above, below = level[max(top - SURROUND_PX, 0):top, left:right], level[bottom:bottom + SURROUND_PX, left:right]
    surround = np.concatenate([above.ravel(), below.ravel()])
    return surround.size == 0 or float(np.median(surround)) <= SURROUND_MAX_LEVEL


def _label_of(level: np.ndarray, ink: np.ndarray, bar: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """The label nearest the bar, within reach of it, as (left, top, right, bottom) in image coordinates: the run of
    glyphs nearest the bar and the runs on the same line beside it ("25" and "nm" when the space between them is
    wide)."""
    left, top, right, bottom = bar
    length = right - left
    h, w = ink.shape
    # look within one bar length around the bar: labels are as wide as the bar or less and sit right next to it
    y0, y1, x0, x1 = max(top - length, 0), min(bottom + length, h), max(left - length, 0), min(right + length, w)
    region = _glyphs(level[y0:y1, x0:x1], min(length, MAX_TEXT_HEIGHT * h))
    region[max(top - y0 - 1, 0):bottom - y0 + 1, max(left - x0 - 1, 0):right - x0 + 1] = False
    runs = [(l + x0, t + y0, r + x0, b + y0) for l, t, r, b in text_lines(region)
            if MIN_LABEL_HEIGHT_PX <= b - t <= min(length, MAX_TEXT_HEIGHT * h)]
    near = [box for box in runs if label_gap(bar, box) <= LABEL_REACH * (box[3] - box[1])]
    if not near:
        return None
    label = min(near, key=lambda box: label_gap(bar, box))
    for box in sorted(runs, key=lambda box: label_gap(label, box)):
        same_line = min(box[3], label[3]) - max(box[1], label[1]) > 0.5 * min(box[3] - box[1], label[3] - label[1])
        if same_line and label_gap(label, box) <= 2 * 2 * (label[3] - label[1]):  # label_gap halves horizontal gaps
            label = _union(label, box)
    height = label[3] - label[1]
    if not height <= label[2] - label[0] <= 2 * length:  # text is wider than tall ("1 µm"), about as wide as its bar
        return None
    inside = region[label[1] - y0:label[3] - y0, label[0] - x0:label[2] - x0]
    if not TEXT_INK[0] <= inside.mean() <= TEXT_INK[1]:
        return None
    return label if ndimage.label(inside)[1] >= 2 else None  # a number and a unit at least


def _glyphs(level: np.ndarray, max_height: float) -> np.ndarray:
    """Glyph pixels of a region (level 1: full ink): full ink, and the anti-aliased edges of thin strokes connected to
    it (hysteresis), the edge level halfway between full ink and the region's median so that a micrograph of the
    ink's own tone does not join in; components taller than text can be are not glyphs."""
    low = max(TEXT_EDGE_LEVEL, 0.5 * (1.0 + float(np.median(level))))
    glyphs = apply_hysteresis_threshold(level, min(low, 1.0 - INK_LEVEL), 1.0 - INK_LEVEL)
    labels, _ = ndimage.label(glyphs)
    for i, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is not None and region[0].stop - region[0].start > max_height:
            glyphs[region][labels[region] == i] = False
    return glyphs


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
        r = FILL_RING_PX
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


def _label_crop(grey: np.ndarray, a: Annotation) -> tuple[np.ndarray, None]:
    """The label with a margin of half its height, as it is: the readers were trained on labels over micrograph
    texture (maemi.measure.label_render), and on the synthetic drawn bars of benchmarks/scale.py (seed 0) the crop as
    it is read right 50 times of 60 and wrong once, where blanking all but the glyphs read 46 and 3 (thin strokes
    lost). The background is the crop's median (None)."""
    left, top, right, bottom = a.label
    margin = max(2, (bottom - top) // 2)
    h, w = grey.shape
    return np.asarray(grey[max(top - margin, 0):min(bottom + margin, h), max(left - margin, 0):min(right + margin, w)],
                      dtype=np.float32), None
