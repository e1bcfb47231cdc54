"""`maemi measure --summary`: one size distribution pooled over several fields, in one unit, frame-weighted, with
intervals between images, and every image it could not pool named with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk
from typer.testing import CliRunner

from maemi.cli import app
from maemi.measure.batch import MeasureJob, check_outputs, measure_one
from maemi.measure.pooled import pool_sizes
from maemi.serve.rows import read_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from pooled_coverage import TRUE_D50, TRUE_MEAN, simulated_sample  # noqa: E402  (benchmarks/pooled_coverage.py)

ZEISS_TAG = b"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 2.0 nm\r\n"


def _particles(diameter: float, seed: int, shape=(300, 400), n=24, spread: float = 0.0) -> np.ndarray:
    """Dark disks of one diameter (or log-normal about it, with `spread` the sigma of its log) on a bright, noisy
    background, some cut by the frame."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, 0.8)
    placed: list[tuple[float, float]] = []
    while len(placed) < n:
        centre = rng.uniform(-0.2 * diameter, shape[0] + 0.2 * diameter), rng.uniform(0, shape[1])
        if all(np.hypot(centre[0] - r, centre[1] - c) > 1.6 * diameter for r, c in placed):
            placed.append(centre)
            image[disk(centre, diameter * np.exp(rng.normal(0, spread)) / 2, shape=shape)] = 0.25
    image += rng.normal(0, 0.02, shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _save(path, diameter, seed, scale_tag=False, spread=0.0):
    grey = _particles(diameter, seed, spread=spread)
    if scale_tag:
        tifffile.imwrite(path, grey, extratags=[(34118, 2, len(ZEISS_TAG), ZEISS_TAG, True)])
    else:
        Image.fromarray(grey).save(path)
    return path


def _measured(path):
    result = measure_one(MeasureJob(path, path.stem, None, "auto", True, False, None, None))
    return result.row, result.objects


def test_a_pool_of_one_image_is_that_images_own_distribution_and_frame_cut_objects_weigh_nothing(tmp_path):
    row, objects = _measured(_save(tmp_path / "a.png", 30, 0))
    m = row["measurements"]
    cut = [o for o in objects if o["touches_frame"]]
    assert cut and all(o["size_weight"] == 0 for o in cut)
    assert all(o["size_weight"] >= 1 for o in objects if not o["touches_frame"])
    pooled = pool_sizes([row], objects)
    assert pooled.unit == "px" and pooled.images == [str(tmp_path / "a.png")]
    assert (pooled.d10, pooled.d50, pooled.d90) == (m["diameter_d10_px"], m["diameter_d50_px"], m["diameter_d90_px"])
    assert pooled.geometric_mean == pytest.approx(m["diameter_geometric_mean_px"])
    assert pooled.objects == m["object_count"] and pooled.objects_used == m["object_count"] - len(cut)
    assert pooled.mean_ci95 is None and any("fewer than 3 images" in note for note in pooled.notes)


def test_fields_of_two_sizes_pool_in_nm_with_an_interval_between_images(tmp_path):
    paths = [_save(tmp_path / f"{d}_{s}.png", d, s) for d in (16, 32) for s in range(2)]
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["measure", *map(str, paths), "--nm-per-pixel", "2", "--summary", str(summary),
                                      "--histogram", str(tmp_path / "histograms")])
    assert result.exit_code == 0, result.output
    [pooled] = json.loads(summary.read_text())["samples"]
    assert (pooled["name"], pooled["unit"], len(pooled["images"]), pooled["left_out"]) == ("(files)", "nm", 4, [])
    # half the particles 32 nm across, half 64 nm: the percentiles and mean land on them, not between
    assert pooled["d10"] == pytest.approx(32, rel=0.1) and pooled["d90"] == pytest.approx(64, rel=0.1)
    assert pooled["mean"] == pytest.approx(48, rel=0.1)
    # by volume the large particles hold 8/9 of the material: the D50 and D90 are theirs; the small ones, 1/9 of it,
    # still hold the D10
    assert pooled["d50_volume"] == pytest.approx(64, rel=0.1) and pooled["d90_volume"] == pytest.approx(64, rel=0.1)
    assert pooled["d10_volume"] == pytest.approx(32, rel=0.1)
    low, high = pooled["mean_ci95"]
    # the fields differ (two of each size): with the images as the units the interval spans them (about 20-77 here);
    # with single particles as if independent it would be 44-51
    assert low < pooled["mean"] < high and high - low > 20
    assert pooled["image_means_cv"] > 0.25
    assert "(files): pooled over 4 image(s)" in result.stdout and "D50" in result.stdout
    assert Image.open(summary.with_suffix(".png")).size[0] > 0


def test_images_without_a_scale_are_left_out_of_a_pool_in_nm_and_unreadable_ones_are_named(tmp_path):
    scaled = [_save(tmp_path / f"zeiss{i}.tif", 20, i, scale_tag=True) for i in range(2)]
    plain = _save(tmp_path / "plain.png", 20, 5)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rows, objects = zip(*[_measured(p) for p in [*scaled, plain]])
    pooled = pool_sizes([*rows, {"path": str(broken), "error": "unreadable", "measurements": None}],
                        [o for group in objects for o in group])
    assert pooled.unit == "nm" and pooled.images == [str(p) for p in scaled]
    assert pooled.d50 == pytest.approx(40, rel=0.1)  # 20 px at 2 nm per pixel
    reasons = {item["path"]: item["reason"] for item in pooled.left_out}
    assert "scale unknown" in reasons[str(plain)] and "not measured" in reasons[str(broken)]
    # without any scale, the pool is in pixels and says why that needs one magnification
    alone = pool_sizes([rows[2]], objects[2])
    assert alone.unit == "px" and any("one magnification" in note for note in alone.notes)
    result = CliRunner().invoke(app, ["measure", str(broken), "--summary", str(tmp_path / "none.json")])
    assert "(files): no image could be pooled" in result.stdout
    assert json.loads((tmp_path / "none.json").read_text())["samples"][0]["left_out"][0]["path"] == str(broken)


def test_a_resumed_run_pools_the_images_measured_before_as_one_run_would(tmp_path):
    paths = [_save(tmp_path / f"{i}.png", 18 + 4 * i, i) for i in range(4)]
    out, objects = tmp_path / "images.jsonl", tmp_path / "objects.csv"
    first = CliRunner().invoke(app, ["measure", *map(str, paths[:2]), "--out", str(out), "--objects", str(objects)])
    assert first.exit_code == 0, first.output
    resumed = CliRunner().invoke(app, ["measure", *map(str, paths), "--out", str(out), "--objects", str(objects),
                                       "--resume", "--summary", str(tmp_path / "resumed.json")])
    assert resumed.exit_code == 0, resumed.output
    whole = CliRunner().invoke(app, ["measure", *map(str, paths), "--summary", str(tmp_path / "whole.json")])
    assert whole.exit_code == 0, whole.output
    assert json.loads((tmp_path / "resumed.json").read_text()) == json.loads((tmp_path / "whole.json").read_text())
    assert len(read_rows(objects)) == json.loads((tmp_path / "whole.json").read_text())["samples"][0]["objects"]


def test_each_folder_is_a_sample_and_samples_that_differ_are_told_from_ones_that_do_not(tmp_path):
    folders = {"small": (16, 0), "small_again": (16, 10), "large": (32, 20)}
    for name, (diameter, seed) in folders.items():
        (tmp_path / name).mkdir()
        for i in range(3):
            _save(tmp_path / name / f"{i}.png", diameter, seed + i, spread=0.15)
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["measure", *(str(tmp_path / name) for name in folders), "--nm-per-pixel", "2",
                                      "--summary", str(summary), "--histogram", str(tmp_path / "histograms")])
    assert result.exit_code == 0, result.output
    pooled = json.loads(summary.read_text())
    assert [s["name"] for s in pooled["samples"]] == [str(tmp_path / name) for name in folders]
    assert all(len(s["images"]) == 3 and s["mean_ci95"] for s in pooled["samples"])
    by_pair = {tuple(Path(n).name for n in c["samples"]): c for c in pooled["comparisons"]}
    same, different = by_pair["small", "small_again"], by_pair["small", "large"]
    assert same["differ"] is False and same["mean_difference_ci95"][0] < 0 < same["mean_difference_ci95"][1]
    assert different["differ"] is True and different["mean_difference"] == pytest.approx(-32, rel=0.15)
    assert different["mean_difference_ci95"][1] < 0
    assert "they differ" in result.stdout and "no difference shown" in result.stdout
    assert all((tmp_path / f"summary-{k}.png").is_file() for k in (1, 2, 3))


def test_a_summary_is_never_overwritten_and_a_resumed_one_needs_the_objects_table(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text("{}")
    with pytest.raises(FileExistsError, match="summary.json"):
        check_outputs(None, None, None, False, summary)
    with pytest.raises(ValueError, match="--objects"):
        check_outputs(tmp_path / "images.csv", None, None, True, summary)
    with pytest.raises(ValueError, match=r"\.json"):
        check_outputs(None, None, None, False, tmp_path / "summary.csv")


def test_the_intervals_hold_the_truth_about_as_often_as_they_say_and_particles_are_not_the_units():
    # simulated samples of known mean and D50 (benchmarks/pooled_coverage.py has the full table); an interval that
    # took particles as independent holds the truth in well under half of these
    rng = np.random.default_rng(0)
    held_mean = held_d50 = 0
    for k in range(60):
        pooled = pool_sizes(*simulated_sample(rng, 6), seed=k)
        held_mean += pooled.mean_ci95[0] <= TRUE_MEAN <= pooled.mean_ci95[1]
        held_d50 += pooled.d50_ci95[0] <= TRUE_D50 <= pooled.d50_ci95[1]
    # 88% of 60: the nominal 95% less sampling noise (plain percentiles hold about 86%)
    assert held_mean >= 53 and held_d50 >= 53


def test_the_fibres_of_fibre_mats_are_pooled_apart_from_the_particles(tmp_path):
    from test_measurements import _draw_rod

    folder = tmp_path / "sample"
    folder.mkdir()
    layouts = [[(0, 20, 239, 300), (0, 300, 239, 10), (120, 0, 120, 319)],
               [(0, 60, 239, 260), (0, 260, 239, 40), (60, 0, 180, 319)],
               [(0, 100, 239, 220), (20, 319, 220, 0), (200, 0, 40, 319)]]
    for i, rods in enumerate(layouts):
        image = np.full((240, 320), 0.2, np.float32)
        for rod in rods:  # three crossing fibres, 9 px wide
            _draw_rod(image, *rod, 9)
        Image.fromarray((image * 255).astype(np.uint8)).save(folder / f"mat{i}.png")
    _save(folder / "particles.png", 20, 0)
    summary = tmp_path / "summary.json"
    result = CliRunner().invoke(app, ["measure", str(folder), "--nm-per-pixel", "2", "--summary", str(summary),
                                      "--histogram", str(tmp_path / "h"), "--out", str(tmp_path / "images.jsonl")])
    assert result.exit_code == 0, result.output
    counted = sum(row["measurements"]["fibre_count"] or 0 for row in read_rows(tmp_path / "images.jsonl"))
    particles, fibres = json.loads(summary.read_text())["samples"]
    assert (particles["kind"], fibres["kind"]) == ("particles", "fibres")
    assert particles["images"] == [str(folder / "particles.png")] and particles["d50"] == pytest.approx(40, rel=0.1)
    assert sorted(item["path"] for item in particles["left_out"]) == [str(folder / f"mat{i}.png") for i in range(3)]
    assert all("pooled with the fibres" in item["reason"] for item in particles["left_out"])
    # every fibre the mats' counts count (9 drawn: the tracer's count is measure_mats.md's business, not the pool's)
    assert len(fibres["images"]) == 3 and fibres["objects"] == counted >= 9 and fibres["d50_volume"] is None
    assert fibres["mean"] == pytest.approx(18, rel=0.15) and fibres["mean_ci95"] is not None  # 9 px at 2 nm
    assert f"sample, fibres: pooled over 3 image(s), {counted} fibres" in result.stdout.replace(str(tmp_path) + "/", "")
    assert (tmp_path / "summary-1.png").is_file() and (tmp_path / "summary-2.png").is_file()
