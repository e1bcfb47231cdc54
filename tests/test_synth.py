"""The synthetic SEM corpus: deterministic bytes, layout, info bar, visibly different classes, sane ground truth."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage.filters import threshold_otsu

from maemi.data.synth import ARRANGEMENTS, DISPLAY_WIDTH_NM, INFO_BAR_LEVEL, SEM_CLASSES, make_micrograph, synthesize

W, H = 256, 192  # small images where size does not matter

REQUIRED = {
    "path", "class", "width", "height", "info_bar_height_px", "magnification", "nm_per_pixel", "scale_bar_nm",
    "scale_bar_px", "scale_bar_label", "eht_kv", "wd_mm", "object_count", "size_mean_nm", "size_std_nm",
    "orientation_deg", "area_fraction", "porosity", "arrangement", "seed",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("corpus")
    return out, synthesize(out, per_class=5, seed=3, width=W, height=H)


def _read(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


def test_same_seed_gives_identical_bytes_and_metadata(tmp_path):
    a = synthesize(tmp_path / "a", per_class=1, seed=7, width=W, height=H, workers=1)
    b = synthesize(tmp_path / "b", per_class=1, seed=7, width=W, height=H, workers=2)  # processes change nothing
    assert a == b
    assert (tmp_path / "a/metadata.jsonl").read_bytes() == (tmp_path / "b/metadata.jsonl").read_bytes()
    for record in a:
        assert (tmp_path / "a" / record["path"]).read_bytes() == (tmp_path / "b" / record["path"]).read_bytes()
    other = synthesize(tmp_path / "c", per_class=1, seed=8, classes=["Particles"], width=W, height=H)
    assert (tmp_path / "c" / other[0]["path"]).read_bytes() != (tmp_path / "a" / other[0]["path"]).read_bytes()


def test_an_image_does_not_depend_on_which_classes_are_made(tmp_path):
    only = synthesize(tmp_path / "only", per_class=2, seed=3, classes=["Tips"], width=W, height=H)
    full = synthesize(tmp_path / "full", per_class=2, seed=3, classes=["Powder", "Tips"], width=W, height=H)
    assert only == full[2:]
    assert (tmp_path / "only/Tips/tips_0001.png").read_bytes() == (tmp_path / "full/Tips/tips_0001.png").read_bytes()


def test_corpus_layout_and_metadata(corpus):
    out, records = corpus
    assert len(records) == 50
    assert _read(out) == records
    assert {r["class"] for r in records} == set(SEM_CLASSES)
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(SEM_CLASSES)
    for record in records:
        assert REQUIRED <= record.keys(), REQUIRED - record.keys()
        assert record["path"] == f"{record['class']}/{Path(record['path']).name}"
        with Image.open(out / record["path"]) as image:
            assert image.format == "PNG" and image.mode == "L" and image.size == (W, H)
        assert (record["width"], record["height"]) == (W, H)
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files behind


def _longest_run(mask: np.ndarray) -> int:
    edges = np.diff(np.r_[0, mask.astype(np.int8), 0])
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max(initial=0))


def test_info_bar_is_at_the_bottom_with_the_recorded_height():
    for name in ("Particles", "Porous_Sponge", "MEMS_devices_and_electrodes"):
        image, record = make_micrograph(name, 0, 0, width=512, height=384)
        bar = record["info_bar_height_px"]
        assert bar == round(0.09 * 384)
        band = image[-bar:]
        # every bar row is mostly the near-black band colour; together the rows hold white text and the scale bar
        assert ((band == INFO_BAR_LEVEL).mean(axis=1) > 0.6).all()
        assert (band > 128).sum() > 300  # anti-aliased text and the scale bar line
        # the row above the bar is micrograph: noisy, not the band colour
        assert (image[-bar - 1] == INFO_BAR_LEVEL).mean() < 0.2
        # the scale bar line: a run of white pixels of the recorded length
        runs = [_longest_run(row == 255) for row in band]
        assert abs(max(runs) - record["scale_bar_px"]) <= 1
        assert re.fullmatch(r"Mag = (\d+\.\d\d K|\d+) X", record["magnification_label"])


def _features(grey: np.ndarray) -> np.ndarray:
    """Plain statistics anyone would compute: brightness, contrast, skew, edges, bright fraction, texture, alignment."""
    g = grey.astype(float) / 255
    smooth = ndimage.gaussian_filter(g, 1.5)
    gy, gx = np.gradient(smooth)
    grad = np.hypot(gy, gx)
    bright = smooth > threshold_otsu(smooth)
    coarse = ndimage.gaussian_filter(g, 6)
    skew = ((smooth - smooth.mean()) ** 3).mean() / smooth.std() ** 3
    alignment = np.hypot((gx**2 - gy**2).mean(), 2 * (gx * gy).mean()) / (grad**2).mean()
    return np.array([
        g.mean(), g.std(), skew, grad.mean(), np.percentile(grad, 95), bright.mean(), coarse.std() / (g.std() + 1e-9),
        alignment,
    ])


def test_classes_differ_visibly(corpus):
    out, records = corpus
    feats, labels = [], []
    for r in records:
        grey = np.asarray(Image.open(out / r["path"]))[: H - r["info_bar_height_px"]]
        feats.append(_features(grey))
        labels.append(r["class"])
    x = np.array(feats)
    x = (x - x.mean(0)) / x.std(0)
    labels = np.array(labels)
    # leave-one-out nearest class centroid on those statistics: chance is 0.1
    correct = 0
    for i in range(len(x)):
        keep = np.arange(len(x)) != i
        centroids = {c: x[keep & (labels == c)].mean(0) for c in SEM_CLASSES}
        guess = min(centroids, key=lambda c: np.linalg.norm(x[i] - centroids[c]))
        correct += guess == labels[i]
    assert correct / len(x) >= 0.5


def test_ground_truth_is_consistent_and_in_realistic_ranges(corpus):
    _, records = corpus
    by_class = {c: [r for r in records if r["class"] == c] for c in SEM_CLASSES}
    for r in records:
        assert r["nm_per_pixel"] == pytest.approx(DISPLAY_WIDTH_NM / (r["magnification"] * r["width"]), rel=1e-5)
        assert abs(r["scale_bar_px"] - r["scale_bar_nm"] / r["nm_per_pixel"]) <= 1
        assert 1 <= r["eht_kv"] <= 30 and 2 <= r["wd_mm"] <= 12
        assert r["arrangement"] in ARRANGEMENTS
        assert r["orientation_deg"] is None or 0 <= r["orientation_deg"] < 180
        fraction = r["area_fraction"] if r["area_fraction"] is not None else r["porosity"]
        assert fraction is not None and 0 <= fraction < 1
        assert r["size_mean_nm"] > 0 and r["size_std_nm"] >= 0
    for name in ("Particles", "Powder", "Nanowires", "Fibres", "Biological", "Tips"):
        assert all(r["object_count"] >= 1 for r in by_class[name]), name
    for name in ("Films_Coated_Surface", "Porous_Sponge"):
        assert all(r["object_count"] is None and r["porosity"] is not None for r in by_class[name])
    assert all(15 <= r["size_mean_nm"] <= 260 for r in by_class["Particles"])  # 20-200 nm, +-25% per particle
    assert all(10 <= r["size_mean_nm"] <= 130 and r["size_kind"] == "width" for r in by_class["Nanowires"])
    assert all(r["length_mean_nm"] > 5 * r["size_mean_nm"] for r in by_class["Nanowires"] + by_class["Fibres"])
    # low magnification (as it reads on a full 1024-pixel frame: a smaller frame of the same pixels is a smaller field)
    assert all(r["magnification"] * r["width"] / 1024 < 2500 for r in by_class["MEMS_devices_and_electrodes"])
    assert all(r["size_mean_nm"] >= 300 for r in by_class["Powder"])  # micron-scale grains
    assert all(0.3 <= r["porosity"] <= 0.8 for r in by_class["Porous_Sponge"])
    assert all(r["porosity"] < 0.1 for r in by_class["Films_Coated_Surface"])  # continuous film, few defects
    # a particle's drawn size matches its recorded pixel size: size / nm_per_pixel lies in the drawn range
    assert all(10 <= r["size_mean_nm"] / r["nm_per_pixel"] <= 45 for r in by_class["Particles"])


def test_forced_arrangement_and_bad_input(tmp_path):
    _, ordered = make_micrograph("Particles", 1, 0, width=W, height=H, arrangement="ordered")
    _, clustered = make_micrograph("Particles", 1, 0, width=W, height=H, arrangement="clustered")
    assert ordered["arrangement"] == "ordered" and clustered["arrangement"] == "clustered"
    with pytest.raises(ValueError, match="Quasicrystals"):
        synthesize(tmp_path, per_class=1, seed=0, classes=["Quasicrystals"])
    with pytest.raises(ValueError, match="per_class"):
        synthesize(tmp_path, per_class=0, seed=0)
    with pytest.raises(ValueError, match="arrangement"):
        make_micrograph("Particles", 0, arrangement="lattice")
    assert math.isclose(0.09 * 768, 69.12)  # the bar of a full-size image: 69 rows
    _, full = make_micrograph("Tips", 0, 0)
    assert (full["width"], full["height"], full["info_bar_height_px"]) == (1024, 768, 69)
