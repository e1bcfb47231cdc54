"""A scale bar drawn on the micrograph itself: found, read for the scale, and left out of the objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maemi.data.synth import make_micrograph
from maemi.measure.annotations import find_annotations, without_annotations
from maemi.measure.label_render import draw_scale_bar
from maemi.measure.measurements import object_shapes, segment
from maemi.measure.ocr import tesseract_available
from maemi.measure.scale import read_scale
from maemi.teachers.measure import measure_file

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def particles(seed: int) -> np.ndarray:
    """A synthetic particle micrograph without its info bar, uint8."""
    image, truth = make_micrograph("Particles", seed, 0, width=768, height=576)
    return image[: 576 - truth["info_bar_height_px"]]


@pytest.mark.parametrize("ink, backdrop", [(255, None), (255, 0), (0, 255)])
def test_a_drawn_scale_bar_and_its_label_are_found(ink, backdrop):
    image, bar, box = draw_scale_bar(particles(0), "200 nm", 120, ink=ink, backdrop=backdrop)
    found = find_annotations(image.astype(np.float32) / 255)
    assert len(found) == 1
    a = found[0]
    assert a.ink == ("bright" if ink == 255 else "dark")
    assert a.bar == bar  # the bar's box, exactly
    assert a.label[3] <= a.bar[1]  # the label above the bar
    left, top, right, bottom = a.box  # what is left out of the measurement
    covered = box if backdrop is not None else (min(a.bar[0], a.label[0]), a.label[1], a.bar[2], a.bar[3])
    assert left <= covered[0] and top <= covered[1] and right >= covered[2] and bottom >= covered[3]


def test_the_objects_leave_the_annotation_out():
    clean = particles(1)
    image, _, _ = draw_scale_bar(clean, "200 nm", 120, backdrop=0)
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
    image, _, _ = draw_scale_bar(particles(3), "200 nm", 120, backdrop=0)
    path = tmp_path / "drawn_bar.png"
    Image.fromarray(image).save(path)
    scale = read_scale(path)
    assert scale.source == "scale_bar" and scale.nm_per_pixel == pytest.approx(200 / 120)
    assert "drawn on the image" in scale.detail
    measured = measure_file(path)
    assert measured.scale.nm_per_pixel == pytest.approx(200 / 120)
    assert len(measured.left_out) == 1  # and says what it left out
    clean = segment(particles(3).astype(np.float32) / 255).labels.max()
    assert measured.m.object_count <= clean  # no bar or glyph among the objects


def test_the_overlay_dims_what_was_left_out():
    from maemi.measure.figures import INFO_BAR_DIM, overlay_image

    image, _, _ = draw_scale_bar(particles(4), "500 nm", 100, backdrop=0)
    grey = image.astype(np.float32) / 255
    found = find_annotations(grey)
    labels = segment(without_annotations(grey, found)).labels
    left, top, right, bottom = found[0].box
    picture = np.asarray(overlay_image(grey, labels, left_out=(found[0].box,)), np.float32)[..., 0] / 255
    assert picture[top:bottom, left:right] == pytest.approx(grey[top:bottom, left:right] * INFO_BAR_DIM, abs=1 / 255)
