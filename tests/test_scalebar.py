"""The scale bar in the info bar, read by OCR: right when it can be, unknown with a reason when it cannot, never a guess.

Info bars are drawn here with Pillow (a font matplotlib ships) under a noisy micrograph, as SEM software draws them."""

from __future__ import annotations

import os

import matplotlib
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageDraw, ImageFont

from maemi.data.synth import make_micrograph
from maemi.measure.ocr import tesseract_available
from maemi.measure.scale import read_scale
from maemi.measure.scalebar import find_bars

pytestmark = pytest.mark.skipif(not tesseract_available(),
                                reason="Tesseract OCR is not installed (make test installs Debian's tesseract-ocr)")
FONT = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")


def micrograph_with_bar(path, label: str | None, bar_px: int, *, frame: bool = False, width: int = 640,
                        height: int = 480) -> None:
    """A noisy micrograph over a black info bar holding a white scale bar with `label` above it, and the usual
    instrument fields; with `frame`, a white line boxes the info bar and the bar starts against it."""
    rng = np.random.default_rng(0)
    bar_h = 48
    image = Image.new("L", (width, height), 10)
    image.paste(Image.fromarray((rng.random((height - bar_h, width)) * 120 + 60).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 15)
    top, x0 = height - bar_h, 3 if frame else 20
    if frame:
        draw.rectangle([0, top, width - 1, height - 1], outline=255, width=2)
    draw.rectangle([x0, top + 32, x0 + bar_px - 1, top + 35], fill=255)
    if label:
        draw.text((x0 + bar_px / 2, top + 6), label, fill=255, font=font, anchor="ma")
    draw.text((width * 0.45, top + 6), "EHT = 5.00 kV", fill=255, font=font)
    draw.text((width * 0.45, top + 26), "WD = 6.1 mm", fill=255, font=font)
    draw.text((width * 0.75, top + 6), "Mag = 25.00 K X", fill=255, font=font)
    image.save(path)


def test_a_drawn_bar_and_label_give_the_scale(tmp_path):
    micrograph_with_bar(tmp_path / "a.png", "200 nm", 160)
    scale = read_scale(tmp_path / "a.png")
    assert scale.source == "scale_bar" and scale.nm_per_pixel == pytest.approx(200 / 160, rel=0.01)
    assert scale.magnification == 25000 and scale.magnification_source == "info bar"
    assert "'200 nm'" in scale.detail and "160 px" in scale.detail


def test_a_bar_that_touches_the_frame(tmp_path):
    micrograph_with_bar(tmp_path / "f.png", "2 µm", 200, frame=True)
    scale = read_scale(tmp_path / "f.png")
    assert scale.nm_per_pixel == pytest.approx(2000 / 200, rel=0.02), scale.describe()


def test_no_readable_label_means_unknown_with_the_reason(tmp_path):
    micrograph_with_bar(tmp_path / "none.png", None, 160)
    scale = read_scale(tmp_path / "none.png")
    assert scale.nm_per_pixel is None and scale.source is None
    assert any("no length label" in note for note in scale.notes), scale.notes
    micrograph_with_bar(tmp_path / "unit.png", "200 furlongs", 160)  # a label in a unit that is no length we know
    scale = read_scale(tmp_path / "unit.png")
    assert scale.nm_per_pixel is None and scale.notes, scale.describe()


def test_a_cropped_image_without_an_info_bar(tmp_path):
    image, record = make_micrograph("Particles", 0, 1, width=512, height=384)
    Image.fromarray(image[: -record["info_bar_height_px"]]).save(tmp_path / "cropped.png")
    scale = read_scale(tmp_path / "cropped.png")
    assert scale.nm_per_pixel is None and any("no instrument info bar" in n for n in scale.notes)
    assert "unknown" in scale.describe()


def test_16_bit_tiff_with_an_info_bar(tmp_path):
    micrograph_with_bar(tmp_path / "a.png", "500 nm", 250)
    pixels = np.asarray(Image.open(tmp_path / "a.png")).astype(np.uint16) * 16 + 100  # a 12-bit detector's range
    tifffile.imwrite(tmp_path / "deep.tif", pixels)
    scale = read_scale(tmp_path / "deep.tif")
    assert scale.source == "scale_bar" and scale.nm_per_pixel == pytest.approx(2.0, rel=0.01)


def test_explicit_and_metadata_win_over_the_bar_and_disagreement_is_reported(tmp_path):
    micrograph_with_bar(tmp_path / "a.png", "200 nm", 160)
    scale = read_scale(tmp_path / "a.png", explicit_nm_per_pixel=2.0, check_scale_bar=True)
    assert (scale.source, scale.nm_per_pixel) == ("explicit", 2.0)
    assert scale.readings["scale_bar"] == pytest.approx(1.25, rel=0.01)
    assert any("the scale bar says 1.25 nm per pixel" in n for n in scale.notes), scale.notes
    quiet = read_scale(tmp_path / "a.png", metadata={"nm_per_pixel": 1.25})  # no OCR when a better source answers
    assert quiet.source == "metadata" and "scale_bar" not in quiet.readings


def test_bars_are_lines_not_glyph_strokes():
    ink = np.zeros((40, 400), bool)
    ink[30:33, 10:170] = True  # a solid bar
    ink[5:7, 200:212] = True  # the strokes of an "="
    ink[9:11, 200:212] = True
    ink[20:22, 250:330] = True  # a thin line with end ticks
    ink[14:28, 250:252] = True
    ink[14:28, 328:330] = True
    ink[0, :] = True  # a frame line across the band
    assert find_bars(ink) == [(10, 30, 170, 33), (250, 14, 330, 28)]
