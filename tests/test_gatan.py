"""Gatan DM3/DM4 files open like any other image, with their calibration as the scale."""

from __future__ import annotations

import numpy as np
import pytest

from gatan_dm import write_dm
from maemi.data.datasets import inspect_dataset
from maemi.data.images import ImageReadError, load_image, read_image_info
from maemi.measure.scale import read_scale

PIXELS = (np.arange(48 * 64).reshape(48, 64) * 7 % 4001).astype(np.uint16)


@pytest.mark.parametrize("version", [3, 4])
def test_dm_file_opens_with_its_scale(tmp_path, version):
    path = tmp_path / f"stem.dm{version}"
    write_dm(path, PIXELS, 0.125, "nm", version)
    image = load_image(path)
    assert image.shape == (48, 64) and image.dtype == np.float32
    np.testing.assert_allclose(image, (PIXELS - PIXELS.min()) / (PIXELS.max() - PIXELS.min()), atol=1e-6)
    info = read_image_info(path)
    assert (info.format, info.width, info.height, info.bit_depth) == (f"DM{version}", 64, 48, 16)
    scale = read_scale(path)
    assert (scale.source, scale.nm_per_pixel) == ("instrument", 0.125) and "Gatan" in scale.detail


def test_dm_units_and_what_is_not_a_length(tmp_path):
    write_dm(tmp_path / "um.dm4", PIXELS, 0.002, "µm")
    assert read_scale(tmp_path / "um.dm4").nm_per_pixel == pytest.approx(2.0)
    write_dm(tmp_path / "diffraction.dm4", PIXELS, 0.05, "1/nm")  # reciprocal space: no length per pixel
    scale = read_scale(tmp_path / "diffraction.dm4")
    assert scale.nm_per_pixel is None and any("not a length" in note for note in scale.notes)


def test_a_damaged_dm_file_is_reported_and_skipped(tmp_path):
    (tmp_path / "a").mkdir()
    write_dm(tmp_path / "a" / "good.dm4", PIXELS, 0.5, "nm")
    (tmp_path / "a" / "bad.dm4").write_bytes(b"\x00\x00\x00\x04 not really a DM file")
    with pytest.raises(ImageReadError, match="bad.dm4: corrupt or unsupported Gatan DM file"):
        load_image(tmp_path / "a" / "bad.dm4")
    report = inspect_dataset(tmp_path)
    assert report["images"] == 1 and report["formats"] == {"DM4": 1} and report["scales"] == {"instrument": 1}
    assert [bad["path"] for bad in report["unreadable"]] == ["a/bad.dm4"]
