"""A scale bar drawn on the micrograph itself: found, read for the scale, and left out of the objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from maemi.data.synth import make_micrograph
from maemi.measure.annotations import find_annotations, without_annotations
from maemi.measure.label_render import font_path
from maemi.measure.measurements import object_shapes, segment
from maemi.measure.ocr import tesseract_available
from maemi.measure.scale import read_scale
from maemi.teachers.measure import measure_file

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def particles(seed: int) -> np.ndarray:
    """A synthetic particle micrograph without its info bar, uint8."""
    image, truth = make_micrograph("Particles", seed, 0, width=768, height=576)
    return image[: 576 - truth["info_bar_height_px"]]


def draw_scale_bar(image: np.ndarray, text: str = "200 nm", bar_px: int = 120, ink: int = 255,
                   backdrop: int | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The image with a scale bar and its label burnt into the bottom-right corner, and the box they cover."""
    im = Image.fromarray(image)
    draw = ImageDraw.Draw(im)
    font = ImageFont.truetype(font_path("DejaVuSans.ttf"), 22)
    x0, y0 = image.shape[1] - bar_px - 30, image.shape[0] - 60
    box = (x0 - 10, y0 - 10, x0 + bar_px + 10, y0 + 45)
    if backdrop is not None:
        draw.rectangle(box, fill=backdrop)
    draw.text((x0 + (bar_px - draw.textlength(text, font=font)) / 2, y0), text, fill=ink, font=font)
    draw.rectangle([x0, y0 + 30, x0 + bar_px - 1, y0 + 35], fill=ink)
    return np.asarray(im), box


@pytest.mark.parametrize("ink, backdrop", [(255, None), (255, 0), (0, 255)])
def test_a_drawn_scale_bar_and_its_label_are_found(ink, backdrop):
    image, box = draw_scale_bar(particles(0), ink=ink, backdrop=backdrop)
    found = find_annotations(image.astype(np.float32) / 255)
    assert len(found) == 1
    a = found[0]
    assert a.ink == ("bright" if ink == 255 else "dark")
    assert a.bar[2] - a.bar[0] == 120  # the bar's length in pixels, exactly
    assert a.label[3] <= a.bar[1]  # the label above the bar
    left, top, right, bottom = a.box  # what is left out of the measurement
    covered = box if backdrop is not None else (min(a.bar[0], a.label[0]), a.label[1], a.bar[2], a.bar[3])
    assert left <= covered[0] and top <= covered[1] and right >= covered[2] and bottom >= covered[3]


def test_the_objects_leave_the_annotation_out():
    clean = particles(1)
    image, _ = draw_scale_bar(clean, backdrop=0)
    grey = image.astype(np.float32) / 255
    with_bar = segment(grey).labels.max()
    found = find_annotations(grey)
    left, top, right, bottom = found[0].box
    # the particles of the clean image whose centre lies outside what the annotation covers
    centres = object_shapes(segment(clean.astype(np.float32) / 255).labels).centroids
    outside = ~((centres[:, 0] >= top) & (centres[:, 0] < bottom) & (centres[:, 1] >= left) & (centres[:, 1] < right))
    assert with_bar > outside.sum()  # the bar and the glyphs were objects
    assert segment(without_annotations(grey, found)).labels.max() == outside.sum()


@pytest.mark.parametrize("kind", ["blank", "noise", "particles", "stem"])
def test_nothing_is_taken_for_a_scale_bar_where_none_is_drawn(kind):
    rng = np.random.default_rng(0)
    if kind == "stem":
        paths = sorted((SHARED / "stem-particles" / "dataset" / "images").glob("*.jpg"))[:6]
        if not paths:
            pytest.skip("../shared/data/stem-particles is not here")
        images = [np.asarray(Image.open(p).convert("L"), np.float32) / 255 for p in paths]
    else:
        images = [{"blank": np.full((300, 400), 1.0, np.float32),
                   "noise": np.clip(rng.normal(0.5, 0.4, (300, 400)), 0, 1).astype(np.float32),
                   "particles": particles(2).astype(np.float32) / 255}[kind]]
    assert all(find_annotations(g) == [] for g in images)


@pytest.mark.skipif(not tesseract_available(), reason="Tesseract OCR is not installed")
def test_the_scale_is_read_from_a_drawn_bar_and_the_measurement_uses_it(tmp_path):
    image, _ = draw_scale_bar(particles(3), text="200 nm", bar_px=120, backdrop=0)
    path = tmp_path / "drawn_bar.png"
    Image.fromarray(image).save(path)
    scale = read_scale(path)
    assert scale.source == "scale_bar" and scale.nm_per_pixel == pytest.approx(200 / 120)
    assert "drawn on the image" in scale.detail
    measured = measure_file(path)
    assert measured.scale.nm_per_pixel == pytest.approx(200 / 120)
    clean = segment(particles(3).astype(np.float32) / 255).labels.max()
    assert measured.m.object_count <= clean  # no bar or glyph among the objects
