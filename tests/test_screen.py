"""`maemi screen` on the tiny trained run of test_assistant.py: rows (classification, captions, measurements) for every
image under a folder, error rows for unreadable files, CSV and JSONL, no silent overwrite, resume after a torn write
and after a real SIGKILL of the command."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

import maemi.cpu
import maemi.teachers.measure
from maemi.assistant import Assistant
from maemi.data.datasets import scan_dataset
from maemi.serve.rows import RowFileError, RowWriter
from maemi.serve.screen import MEASUREMENT_FIELDS, ScreenConfig, screen_columns, screen_folder
from test_assistant import CAPTIONS, CLASSES, invoke, tiny, write_images  # noqa: F401  (tiny: the trained run)
from tiny_text_models import one_thread  # noqa: F401

BROKEN_REASON = "not a PNG, JPEG, BMP or TIFF image (content not recognised)"


@pytest.fixture(scope="module")
def assistant(tiny):
    return Assistant.load(tiny["run"], device="cpu", batch_size=4)


@pytest.fixture(scope="module")
def folder(tiny, tmp_path_factory) -> Path:
    """The run's 9 images one level deeper than class folders, a corrupt file, an image too small to measure, and
    what screening must pass over: a text file and a `_annotations` folder."""
    root = tmp_path_factory.mktemp("screen") / "micrographs"
    shutil.copytree(tiny["images"], root / "batch1")
    (root / "batch1" / "dark" / "corrupt.png").write_bytes(b"this is not an image")
    Image.fromarray(np.full((10, 10), 200, np.uint8)).save(root / "small.png")
    (root / "notes.txt").write_text("not an image")
    (root / "_annotations").mkdir()
    shutil.copy(root / "small.png", root / "_annotations" / "small.png")
    return root


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def expected_paths(folder: Path) -> list[str]:
    return [s.relpath for s in scan_dataset(folder)]


def test_one_row_per_image_with_classes_captions_measurements_and_errors(assistant, tiny, folder, tmp_path):
    config = ScreenConfig(batch_size=4, caption=True, measure=True)
    report = screen_folder(assistant, folder, tmp_path / "out.jsonl", config, progress=False)
    rows = read_jsonl(tmp_path / "out.jsonl")
    paths = expected_paths(folder)
    assert len(paths) == 11 and "small.png" in paths and not any(p.startswith("_") for p in paths)
    assert [r["path"] for r in rows] == paths  # relative to the folder, sorted, each once
    assert (report.images, report.written, report.already_done, report.errors) == (11, 11, 0, 2)
    assert report.images_per_second > 0
    by_path = {r["path"]: r for r in rows}

    broken = by_path["batch1/dark/corrupt.png"]
    assert broken["error"] == BROKEN_REASON
    assert broken["top1"] is None and broken["top5"] is None and broken["measurements"] is None

    small = by_path["small.png"]  # readable, so classified; too small to measure, and the row says so
    assert small["top1"] in CLASSES and small["measurements"] is None
    assert small["error"].startswith("measurements: small.png could not be measured: image too small to measure")
    assert "Not measured" in small["caption"]  # and its caption states no measured number

    images = [p for p in paths if p.startswith("batch1/") and "corrupt" not in p]
    ranked = assistant.classify([folder / p for p in images], top_k=5)
    captions = assistant.caption([folder / p for p in images])
    for path, top, text in zip(images, ranked, captions):
        row = by_path[path]
        assert row["error"] is None
        assert row["top1"] == top[0][0] and row["confidence"] == pytest.approx(top[0][1], abs=1e-5)
        assert [t["label"] for t in row["top5"]] == [label for label, _ in top] and len(top) == 3
        assert row["caption"] == text and row["caption_numbers"] == []  # these captions quote no measurement
        # the run is not calibrated: no familiarity score, and the flag follows the confidence alone
        assert row["ood_score"] is None and row["flag"] == ("low_confidence" if row["confidence"] < 0.5 else "ok")
        assert set(row["measurements"]) == set(MEASUREMENT_FIELDS)
        assert row["measurements"]["width_px"] == 40 and row["measurements"]["object_count"] >= 0
        assert row["nm_per_pixel"] is None and row["scale_source"] is None  # tiny images: no bar, no metadata
    for rel in tiny["train"]:  # the tiny run knows its training images
        label = rel.split("/")[0]
        assert by_path[f"batch1/{rel}"]["top1"] == label and by_path[f"batch1/{rel}"]["caption"] == CAPTIONS[label]


def test_rows_carry_the_scale_and_its_source(assistant, tmp_path):
    root = tmp_path / "scaled"
    root.mkdir()
    pixels = (np.random.default_rng(0).random((48, 64)) * 255).astype(np.uint8)
    tag = b"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 3.5 nm\r\n"
    tifffile.imwrite(root / "zeiss.tif", pixels, extratags=[(34118, 2, len(tag), tag, True)])
    Image.fromarray(pixels).save(root / "listed.png")
    (root / "metadata.jsonl").write_text(json.dumps({"path": "listed.png", "nm_per_pixel": 7.25}) + "\n")
    for measure in (False, True):
        out = tmp_path / f"scaled-{measure}.csv"
        screen_folder(assistant, root, out, ScreenConfig(measure=measure), progress=False)
        rows = {r["path"]: r for r in read_csv(out)}
        assert (rows["zeiss.tif"]["scale_source"], float(rows["zeiss.tif"]["nm_per_pixel"])) == ("instrument", 3.5)
        assert (rows["listed.png"]["scale_source"], float(rows["listed.png"]["nm_per_pixel"])) == ("metadata", 7.25)
        if measure:
            assert float(rows["zeiss.tif"]["measurements.nm_per_pixel"]) == 3.5


def test_csv_holds_the_same_rows_flat(assistant, folder, tmp_path):
    config = ScreenConfig(batch_size=3, caption=False, measure=True)
    screen_folder(assistant, folder, tmp_path / "out.jsonl", config, progress=False)
    screen_folder(assistant, folder, tmp_path / "out.csv", config, progress=False)
    as_json, as_csv = read_jsonl(tmp_path / "out.jsonl"), read_csv(tmp_path / "out.csv")
    assert list(as_csv[0]) == screen_columns(config) and "caption" not in as_csv[0]
    assert "measurements.object_count" in as_csv[0]
    for j, c in zip(as_json, as_csv, strict=True):
        assert c["path"] == j["path"] and c["top1"] == (j["top1"] or "") and c["error"] == (j["error"] or "")
        assert (json.loads(c["top5"]) if c["top5"] else None) == j["top5"]
        for name in MEASUREMENT_FIELDS:
            value = (j["measurements"] or {}).get(name)
            assert c[f"measurements.{name}"] == ("" if value is None else str(value)), (j["path"], name)


def test_measuring_ahead_on_every_core_gives_the_rows_of_measuring_inline(assistant, folder, tmp_path, monkeypatch):
    """Screening measures each chunk of images in worker processes before the model reads them; the rows are those
    of measuring each image as it comes (one core), the unreadable and too-small files' included."""
    config = ScreenConfig(batch_size=3, caption=True, measure=True)
    monkeypatch.setattr(maemi.cpu, "MIN_ITEMS_PER_WORKER", 1)  # a worker for every few of these 11 small images
    monkeypatch.setattr(maemi.teachers.measure, "_measured", OrderedDict())  # what earlier tests measured forgotten
    taken = []
    take = assistant._take_measured_ahead
    monkeypatch.setattr(assistant, "_take_measured_ahead", lambda *a: taken.append(take(*a)) or taken[-1])
    rows = {}
    for cores in (1, 2):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        screen_folder(assistant, folder, tmp_path / f"{cores}.jsonl", config, progress=False)
        rows[cores] = read_jsonl(tmp_path / f"{cores}.jsonl")
        used = sum(facts is not None for facts in taken)
        assert used == (0 if cores == 1 else 9), used  # the 9 images that can be measured, measured ahead
        taken.clear()
    assert rows[1] == rows[2]


def test_the_segmenter_asked_for_measures_the_folder(tiny, folder, tmp_path):
    out = tmp_path / "spots.jsonl"
    result = invoke("screen", str(tiny["run"]), str(folder), "--out", str(out), "--measure", "--segmenter", "spots",
                    "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    measured = [row["measurements"] for row in read_jsonl(out) if row["measurements"]]
    assert measured and {m["segmenter"] for m in measured} == {"spots"}
    result = invoke("screen", str(tiny["run"]), str(folder), "--out", str(tmp_path / "x.csv"), "--measure",
                    "--segmenter", "magic")
    assert result.exit_code != 0 and "--segmenter must be one of auto, classical, learned, spots" in result.output
    with pytest.raises(ValueError, match="unknown segmenter"):
        Assistant.load(tiny["run"], device="cpu", segmenter="magic")


def test_an_existing_output_is_never_overwritten(assistant, tiny, folder, tmp_path):
    out = tmp_path / "out.csv"
    out.write_text("precious results\n")
    with pytest.raises(FileExistsError, match="pass --resume"):
        screen_folder(assistant, folder, out, progress=False)
    result = invoke("screen", tiny["run"], folder, "--out", out, "--device", "cpu")
    assert result.exit_code == 1 and "out.csv: already exists; pass --resume" in result.stderr
    assert out.read_text() == "precious results\n"
    result = invoke("screen", tiny["run"], folder, "--out", tmp_path / "out.parquet")
    assert result.exit_code == 1 and "use a .csv or .jsonl file" in result.stderr
    result = invoke("screen", tiny["run"], tmp_path / "nowhere", "--out", tmp_path / "a.csv")
    assert result.exit_code == 1 and "nowhere: no such folder" in result.stderr


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_resume_drops_a_torn_last_row_and_finishes_without_repeats(assistant, folder, tmp_path, suffix):
    config = ScreenConfig(batch_size=4, caption=True)
    full = tmp_path / f"full{suffix}"
    screen_folder(assistant, folder, full, config, progress=False)
    data = full.read_bytes()
    lines = data.splitlines(keepends=True)
    cut = tmp_path / f"cut{suffix}"
    kept = 6 if suffix == ".jsonl" else 7  # CSV: the header and 6 rows
    cut.write_bytes(b"".join(lines[:kept]) + lines[kept][:25])  # killed in the middle of writing a row
    report = screen_folder(assistant, folder, cut, config, resume=True, progress=False)
    assert (report.already_done, report.written) == (6, 5)
    assert cut.read_bytes() == data  # the torn row cut off, the rest appended: the same table
    again = screen_folder(assistant, folder, cut, config, resume=True, progress=False)
    assert (again.already_done, again.written) == (11, 0) and cut.read_bytes() == data
    with pytest.raises(RowFileError, match=rf"cut{suffix}.*other columns.*same options"):
        screen_folder(assistant, folder, cut, ScreenConfig(caption=False), resume=True, progress=False)


def test_csv_row_cut_inside_a_quoted_line_break_is_dropped(tmp_path):
    out, columns = tmp_path / "t.csv", ["path", "caption", "error"]
    with RowWriter(out, columns) as writer:
        writer.write([{"path": "a.png", "caption": "two\nlines", "error": None},
                      {"path": "b.png", "caption": "also\ntwo lines", "error": None}])
    whole = out.read_bytes()
    out.write_bytes(whole[: whole.index(b"also\n") + 5])  # ends in "\n", inside b.png's quoted caption
    with RowWriter(out, columns, resume=True) as writer:
        assert writer.done() == {"a.png"}
        assert writer.write([{"path": "a.png", "caption": "x", "error": None},
                             {"path": "b.png", "caption": "also\ntwo lines", "error": None}]) == 1
    assert out.read_bytes() == whole
    out.write_bytes(whole.replace(b"a.png,", b"a.png,extra,", 1))  # damage before the end is not a kill
    with pytest.raises(RowFileError, match=r"t.csv:2: 4 fields, expected 3"):
        RowWriter(out, columns, resume=True).__enter__()


def test_sigkill_mid_run_then_resume_screens_each_image_once(tiny, folder, tmp_path):
    many = tmp_path / "many"
    write_images(many, 50, seed=7)  # 150 images: a few seconds of work, so the kill lands mid-run
    (many / "dark" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "maemi.cli", "screen", str(tiny["run"]), str(many), "--out", str(out),
               "--caption", "--batch-size", "2", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.read_bytes().count(b"\n") < 6) and time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.01)
    assert process.poll() is None, "the screen finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    before = read_jsonl(out)
    assert 6 <= len(before) < 151

    result = invoke("screen", tiny["run"], many, "--out", out, "--caption", "--batch-size", "8", "--resume",
                    "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert f"{151 - len(before)} rows written, {len(before)} images already done" in result.stdout
    assert "images/s (batch 8)" in result.stdout
    rows = read_jsonl(out)
    assert sorted(r["path"] for r in rows) == expected_paths(many)  # every image exactly once
    assert rows[:len(before)] == before
    (broken,) = [r for r in rows if r["error"]]
    assert broken["path"] == "dark/zz_corrupt.png" and broken["top1"] is None
    correct = sum(r["top1"] == r["path"].split("/")[0] for r in rows if not r["error"])
    assert correct >= 0.9 * 150  # rows are real predictions: the classes are easy to tell apart
