"""The per-object table, the overlay and the histogram of `maemi measure`: they come from the segmentation the
aggregate measurements average, so the table's count and mean diameter are the measurements' own."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from skimage.segmentation import find_boundaries
from typer.testing import CliRunner

from maemi.cli import app
from maemi.data.synth import make_micrograph
from maemi.measure.figures import output_names, overlay_image
from maemi.measure.objects import measure_objects_file, min_feret, object_table
from maemi.teachers.measure import measure_file
from maemi.measure.measurements import measure, segment

W, H = 384, 288  # small: quick, and still dozens of particles


def _particles(seed: int = 0) -> tuple[np.ndarray, dict]:
    return make_micrograph("Particles", seed, 0, width=W, height=H)  # uint8 [H, W], info bar included


def test_the_table_has_the_measurements_objects():
    image, truth = _particles()
    grey = image[: H - truth["info_bar_height_px"]]
    m = measure(grey)
    rows = object_table(segment(grey).labels)
    assert len(rows) == m.region_count > 10
    assert np.mean([r.equivalent_diameter_px for r in rows]) == m.diameter_mean_px
    assert np.mean([r.circularity for r in rows]) == m.circularity_mean
    assert np.mean([r.aspect_ratio for r in rows]) == m.aspect_ratio_mean
    assert [r.object_id for r in rows] == list(range(1, len(rows) + 1))
    assert all(r.feret_min_px <= r.equivalent_diameter_px * 1.05 and r.feret_min_px <= r.feret_max_px for r in rows)


def test_feret_diameters_and_orientation_of_known_shapes():
    labels = np.zeros((80, 80), int)
    labels[10:20, 10:50] = 1  # a 10 x 40 bar along x
    rr, cc = np.ogrid[:80, :80]
    labels[(rr - 55) ** 2 + (cc - 55) ** 2 <= 15**2] = 2  # a disk 31 px across
    bar, disk = object_table(labels)
    assert bar.feret_min_px == pytest.approx(10, abs=1) and bar.feret_max_px == pytest.approx(math.hypot(10, 40), abs=1)
    assert bar.orientation_deg == pytest.approx(0, abs=1) or bar.orientation_deg == pytest.approx(180, abs=1)
    assert disk.feret_min_px == pytest.approx(31, abs=1.5) and disk.feret_max_px == pytest.approx(31, abs=1.5)
    assert (bar.centroid_x_px, bar.centroid_y_px) == pytest.approx((29.5, 14.5))
    diagonal = np.zeros((60, 60), int)
    for i in range(40):  # from bottom-left to top-right as seen on screen: 45 degrees counter-clockwise
        diagonal[50 - i, 10 + i: 14 + i] = 1
    assert object_table(diagonal)[0].orientation_deg == pytest.approx(45, abs=2)


def test_perimeter_and_solidity_as_imagej_gives_them():
    labels = np.zeros((120, 120), int)
    rr, cc = np.ogrid[:120, :120]
    labels[(rr - 30) ** 2 + (cc - 30) ** 2 <= 20**2] = 1  # a disk 41 px across
    labels[70:110, 10:20] = 2  # an L: two 10 px bars
    labels[100:110, 10:50] = 2
    disk, ell = object_table(labels)
    assert disk.perimeter_px == pytest.approx(2 * math.pi * 20.5, rel=0.05)
    assert disk.circularity == pytest.approx(4 * math.pi * disk.area_px / disk.perimeter_px**2)
    # the L's 700 px over its hull's: the L and the triangle of 30 x 30 px between its arms
    assert disk.solidity > 0.95 and ell.solidity == pytest.approx(700 / (700 + 450), abs=0.03)


def test_min_feret_is_the_smallest_width_over_all_directions():
    points = np.random.default_rng(0).normal(size=(200, 2)) * [5.0, 2.0]
    angles = np.linspace(0, np.pi, 20000, endpoint=False)
    widths = np.ptp(points @ np.stack([np.cos(angles), np.sin(angles)]), axis=0)
    assert min_feret(points) == pytest.approx(widths.min(), rel=1e-4)
    assert min_feret(points) <= widths.min()


def test_the_file_measurement_is_measure_files(tmp_path):
    image, _ = _particles(1)
    Image.fromarray(image).save(tmp_path / "p.png")
    result = measure_objects_file(tmp_path / "p.png", nm_per_pixel=2.0)
    assert result.measured == measure_file(tmp_path / "p.png", nm_per_pixel=2.0)
    assert result.whole.shape == image.shape and result.segmentation.labels.shape[0] == H - result.measured.info_bar_px


def test_overlay_outlines_objects_and_keeps_the_rest():
    image, truth = _particles()
    whole = image.astype(np.float32) / 255
    top = H - truth["info_bar_height_px"]
    labels = segment(whole[:top]).labels
    overlay = np.asarray(overlay_image(whole, labels, numbers=False))
    assert overlay.shape == (H, W, 3)
    outline = find_boundaries(labels, mode="inner")
    assert (overlay[:top][outline] != image[:top][outline, None]).any(axis=1).all()
    background = labels == 0
    assert (overlay[:top][background] == image[:top][background, None]).all()
    assert (overlay[top:, :, 0] < image[top:].astype(int) + 1).all()  # the info bar dimmed, not measured
    assert overlay[top:].mean() < image[top:].mean()


def test_output_names_never_collide(tmp_path):
    assert output_names([tmp_path / "a/x.png", tmp_path / "b/x.tif", tmp_path / "x-2.png"]) == ["x", "x-2", "x-2-2"]


def _files(tmp_path):
    image, truth = _particles(2)
    Image.fromarray(image).save(tmp_path / "bar.png")  # with its info bar
    Image.fromarray(image[: H - truth["info_bar_height_px"]]).save(tmp_path / "plain.png")  # no bar: no scale
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return tmp_path / "bar.png", tmp_path / "plain.png", tmp_path / "broken.png"


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_objects_overlay_and_histogram(tmp_path):
    bar, plain, broken = _files(tmp_path)
    out, objects = tmp_path / "table.csv", tmp_path / "objects.csv"
    args = ["measure", str(bar), str(broken), str(plain), "--nm-per-pixel", "2.5", "--out", str(out),
            "--objects", str(objects), "--overlay", str(tmp_path / "overlay"), "--histogram", str(tmp_path / "hist")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "broken.png: skipped" in result.stderr and f"{objects}: " in result.stderr

    table = {r["path"]: r for r in _read_csv(out)}
    assert table[str(broken)]["error"]
    rows = _read_csv(objects)
    for image in (bar, plain):
        mine = [r for r in rows if r["path"] == str(image)]
        m = table[str(image)]
        assert len(mine) == int(m["measurements.region_count"]) > 10
        assert np.mean([float(r["equivalent_diameter_px"]) for r in mine]) == float(m["measurements.diameter_mean_px"])
    assert not [r for r in rows if r["path"] == str(broken)]
    for r in rows:
        assert r["nm_per_pixel"] == "2.5" and r["scale_source"] == "explicit"
        for name in ("equivalent_diameter", "feret_max", "feret_min", "centroid_x", "centroid_y"):
            assert float(r[f"{name}_nm"]) == pytest.approx(float(r[f"{name}_px"]) * 2.5)
        assert float(r["area_nm2"]) == pytest.approx(float(r["area_px"]) * 2.5**2)

    for image in (bar, plain):
        with Image.open(image) as original, Image.open(tmp_path / "overlay" / f"{image.stem}.overlay.png") as drawn:
            assert drawn.size == original.size and drawn.mode == "RGB"
            differs = np.asarray(drawn).astype(int) != np.asarray(original.convert("RGB")).astype(int)
            assert differs.any(axis=2).mean() > 0.01
        with Image.open(tmp_path / "hist" / f"{image.stem}.histogram.png") as histogram:
            assert histogram.format == "PNG" and histogram.size[0] > 100
    assert sorted(p.name for p in (tmp_path / "overlay").iterdir()) == ["bar.overlay.png", "plain.overlay.png"]

    again = CliRunner().invoke(app, ["measure", str(plain), "--objects", str(objects)])
    assert again.exit_code == 1 and "already exists" in again.stderr  # a table is never overwritten


def test_cli_unknown_scale_leaves_the_nm_columns_empty(tmp_path):
    _, plain, broken = _files(tmp_path)
    objects = tmp_path / "objects.jsonl"
    result = CliRunner().invoke(app, ["measure", str(plain), "--objects", str(objects), "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in objects.read_text().splitlines()]
    assert rows and all(r["nm_per_pixel"] is None and r["scale_source"] is None for r in rows)
    assert all(r["equivalent_diameter_nm"] is None and r["area_nm2"] is None for r in rows)
    assert all(r["equivalent_diameter_px"] > 0 for r in rows)

    nothing = CliRunner().invoke(app, ["measure", str(broken), "--objects", str(tmp_path / "o.csv")])
    assert nothing.exit_code == 1 and "broken.png" in nothing.output
    assert _read_csv(tmp_path / "o.csv") == []  # header only
