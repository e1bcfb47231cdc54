"""Datasets: scanning layouts, inspection of good and bad files, leak-free deterministic splits, and the CLI."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from maemi.data.datasets import (
    DatasetError,
    check_samples,
    inspect_dataset,
    scan_dataset,
    split_dataset,
)

NEU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "neu-det"


def _png(path: Path, value: int, size=(16, 12)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0]), dtype=np.uint8)).save(path)


def _class_folders(root: Path, classes=("a", "b", "c"), per_class=20) -> None:
    for ci, c in enumerate(classes):
        for i in range(per_class):
            _png(root / c / f"{c}_{i}.png", 1000 * ci + i)


def test_scan_class_folders_nested_hidden_and_metadata(tmp_path):
    _png(tmp_path / "Particles" / "p1.png", 1)
    _png(tmp_path / "Particles" / "batch2" / "p2.png", 2)  # nested: the top folder is the class
    _png(tmp_path / "Fibres" / "f1.png", 3)
    _png(tmp_path / "_annotations" / "x.png", 4)  # hidden / side folders hold no dataset images
    (tmp_path / "Fibres" / "notes.txt").write_text("not an image")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"path": "Fibres/f1.png", "nm_per_pixel": 2.5}) + "\n")
    samples = scan_dataset(tmp_path)
    assert [(s.relpath, s.label) for s in samples] == [
        ("Fibres/f1.png", "Fibres"),
        ("Particles/batch2/p2.png", "Particles"),
        ("Particles/p1.png", "Particles"),
    ]
    assert samples[0].metadata["nm_per_pixel"] == 2.5
    assert samples[1].metadata == {}


def test_scan_manifest_and_errors(tmp_path):
    _png(tmp_path / "img" / "x.png", 1)
    _png(tmp_path / "img" / "y.png", 2)
    (tmp_path / "m.csv").write_text("path,label,group\nimg/x.png,cat,w1\nimg/y.png,dog,\n")
    samples = scan_dataset(tmp_path / "m.csv")
    assert [(s.relpath, s.label, s.group) for s in samples] == [("img/x.png", "cat", "w1"), ("img/y.png", "dog", None)]
    (tmp_path / "bad.csv").write_text("file,label\nimg/x.png,cat\n")
    with pytest.raises(DatasetError, match="bad.csv.*'path' column"):
        scan_dataset(tmp_path / "bad.csv")
    with pytest.raises(DatasetError, match="no such folder"):
        scan_dataset(tmp_path / "missing")


def _bad_files(root: Path) -> dict[str, str]:
    """The bad inputs of the foundation issue, and the word each reason must contain."""
    d = root / "bad"
    d.mkdir(parents=True)
    (d / "empty.png").write_bytes(b"")
    (d / "text.png").write_text("this is a text file, not a PNG\n")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (d / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    # A decompression bomb: a tiny PNG file whose header declares 40000 x 40000 pixels.
    Image.new("1", (40000, 40000)).save(d / "bomb.png", optimize=True)
    return {"empty.png": "empty", "text.png": "", "truncated.jpg": "truncat", "broken.tif": "", "bomb.png": "pixels"}


def test_inspect_reports_bad_files_and_counts_good_ones(tmp_path):
    _class_folders(tmp_path, per_class=3)
    _png(tmp_path / "a" / "copy.png", 0)  # same bytes as a/a_0.png
    sixteen = (np.linspace(1000, 3000, 20 * 10).reshape(10, 20)).astype(np.uint16)
    tag = b"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 2.5 nm\r\n"  # a Zeiss TIFF: it carries its scale
    tifffile.imwrite(tmp_path / "b" / "deep.tif", sixteen, extratags=[(34118, 2, len(tag), tag, True)])
    expected = _bad_files(tmp_path)
    report = inspect_dataset(tmp_path)
    assert report["images"] == 3 * 3 + 1 + 1
    assert report["files"] == report["images"] + len(expected)
    assert report["classes"] == {"a": 4, "b": 4, "c": 3}
    assert report["duplicates"] == [["a/a_0.png", "a/copy.png"]]
    assert report["bit_depths"] == {"8": 10, "16": 1}
    assert report["formats"] == {"PNG": 10, "TIFF": 1}
    assert report["scales"] == {"unknown": 10, "instrument": 1}
    reasons = {Path(b["path"]).name: b["reason"] for b in report["unreadable"]}
    assert set(reasons) == set(expected)
    for name, word in expected.items():
        assert word.lower() in reasons[name].lower(), (name, reasons[name])


def test_split_deterministic_stratified_and_leak_free(tmp_path):
    _class_folders(tmp_path, per_class=30)
    _png(tmp_path / "a" / "dup.png", 5)  # duplicate of a/a_5.png
    _png(tmp_path / "b" / "dup_of_a.png", 7)  # the same bytes filed under another class
    good, bad, facts = check_samples(scan_dataset(tmp_path))
    assert not bad
    hashes = {k: v["sha256"] for k, v in facts.items()}
    s1 = split_dataset(good, hashes, val=0.1, test=0.2, seed=3)
    s2 = split_dataset(good, hashes, val=0.1, test=0.2, seed=3)
    s3 = split_dataset(good, hashes, val=0.1, test=0.2, seed=4)
    assert s1 == s2
    assert s1["test"] != s3["test"]
    parts = [set(s1[k]) for k in ("train", "val", "test")]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == {s.relpath for s in good}
    side = {p: k for k in ("train", "val", "test") for p in s1[k]}
    assert side["a/dup.png"] == side["a/a_5.png"]
    assert side["b/dup_of_a.png"] == side["a/a_7.png"]
    for c in ("a", "b", "c"):  # stratified: each class gets its share (within one duplicate group)
        assert abs(s1["counts"]["test"][c] - 6) <= 2 and abs(s1["counts"]["val"][c] - 3) <= 2


def test_split_keeps_file_name_groups_together(tmp_path):
    for w in range(10):
        for i in range(4):
            _png(tmp_path / "x" / f"wafer{w}_tile{i}.png", 100 * w + i)
    good, _, facts = check_samples(scan_dataset(tmp_path))
    split = split_dataset(good, {k: v["sha256"] for k, v in facts.items()}, val=0.0, test=0.3, seed=0,
                          group_pattern=r"^(wafer\d+)_")
    wafers_test = {p.split("/")[1].split("_")[0] for p in split["test"]}
    wafers_train = {p.split("/")[1].split("_")[0] for p in split["train"]}
    assert wafers_test and wafers_train and not wafers_test & wafers_train
    assert len(split["test"]) == 12  # 3 whole wafers of 4 tiles


def _maemi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maemi.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_inspect_and_split(tmp_path):
    _class_folders(tmp_path / "ds", per_class=10)
    (tmp_path / "ds" / "a" / "bad.png").write_text("nope")
    r = _maemi("data", "inspect", str(tmp_path / "ds"), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["images"] == 30 and report["unreadable"][0]["path"] == "a/bad.png"
    r = _maemi("data", "inspect", str(tmp_path / "ds"))
    assert r.returncode == 0 and "a/bad.png" in r.stdout
    out = tmp_path / "splits.json"
    r = _maemi("data", "split", str(tmp_path / "ds"), "--out", str(out), "--val", "0.1", "--test", "0.2", "--seed", "1")
    assert r.returncode == 0, r.stderr
    split = json.loads(out.read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 30
    assert split["unreadable"][0]["path"] == "a/bad.png"
    r = _maemi("data", "inspect", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no such folder" in r.stderr


@pytest.mark.skipif(not NEU.is_dir(), reason="../shared/data/neu-det is not present")
def test_inspect_neu_det():
    report = inspect_dataset(NEU)
    assert report["images"] == 1800 and not report["unreadable"]
    assert report["classes"] == {c: 300 for c in
                                 ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")}
    assert report["duplicates"] == [["patches/patches_101.jpg", "patches/patches_105.jpg"]]
    assert report["sizes"] == {"200x200": 1800}
    assert report["scales"] == {"unknown": 1800}  # no info bar, no instrument metadata
