"""benchmarks/scene_realism.py: the quantities that compare synthetic scenes with real micrographs are measured right
on an image whose answer is known, the same way for boxes and for masks."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.draw import disk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import scene_realism  # noqa: E402  (benchmarks/scene_realism.py)


def disk_on_flat(contrast: float, sigma: float, radius: float = 8.0):
    shape = (128, 128)
    inst = np.zeros(shape, np.int32)
    inst[disk((64, 64), radius, shape=shape)] = 1
    rng = np.random.default_rng(0)
    grey = (0.3 + contrast * (inst > 0) + rng.normal(0, sigma, shape)).astype(np.float32)
    return grey, inst


def test_a_disk_of_known_contrast_and_noise():
    grey, inst = disk_on_flat(0.2, 0.01)
    per_object, per_image = scene_realism.measure(grey, inst)
    area = int(inst.sum())
    assert per_object["diameter_px"][0] == pytest.approx(np.sqrt(4 * area / np.pi))
    span = np.subtract(*np.percentile(grey, [99.5, 0.5]))
    assert per_object["contrast"][0] == pytest.approx(0.2 / span, rel=0.05)
    assert per_object["snr_noise"][0] == pytest.approx(0.2 / 0.01 * np.sqrt(area), rel=0.1)
    assert per_object["background_level"][0] < 0.2  # it sits on the dark side of the image
    assert per_image["noise"] == pytest.approx(0.01 / span, rel=0.1)
    assert per_image["area_fraction"] == pytest.approx(area / grey.size)
    # ten times the noise: Rose's ratio falls tenfold, and so does the contrast over the (flat) background's spread
    noisy_object, _ = scene_realism.measure(*disk_on_flat(0.2, 0.1))
    assert noisy_object["snr_noise"][0] == pytest.approx(per_object["snr_noise"][0] / 10, rel=0.15)
    assert noisy_object["snr_clutter"][0] < per_object["snr_clutter"][0] / 5


def test_boxes_become_their_inscribed_ellipses():
    inst = scene_realism.boxes_as_instances((60, 80), np.array([[10.0, 20.0, 16.0, 8.0], [50.0, 5.0, 10.0, 10.0]]))
    assert inst.max() == 2
    rows, cols = np.nonzero(inst == 1)
    assert cols.min() >= 10 and cols.max() <= 26 and rows.min() >= 20 and rows.max() <= 28  # inside the first box
    assert cols.max() - cols.min() >= 13 and rows.max() - rows.min() >= 5  # and spanning it
    assert (inst == 1).sum() == pytest.approx(np.pi * 8 * 4, rel=0.15)
    assert (inst == 2).sum() == pytest.approx(np.pi * 25, rel=0.15)
