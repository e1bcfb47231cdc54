"""`maemi measure` on many images: folders, rows written as each image is done, a killed run resumed without loss or
repeats, worker processes giving the same tables."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections import Counter

from PIL import Image
from typer.testing import CliRunner

from maemi.cli import app
from maemi.data.synth import make_micrograph

CLASSES = ("Particles", "Powder", "Particles", "Porous_Sponge", "Particles", "Powder")


def _folder(tmp_path):
    """Six small micrographs in two sub-folders, an unreadable file among them, and a hidden folder to skip."""
    root = tmp_path / "images"
    for i, name in enumerate(CLASSES):
        image, record = make_micrograph(name, i, i, width=384, height=288)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[: -record["info_bar_height_px"]]).save(folder / f"im{i}.png")
    (root / "a" / "broken.png").write_bytes(b"not an image")
    (root / "_thumbnails").mkdir()
    Image.new("L", (64, 64)).save(root / "_thumbnails" / "skip.png")
    return root


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _measure(*args):
    result = CliRunner().invoke(app, ["measure", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_a_folder_is_measured_image_by_image_and_workers_give_the_same_tables(tmp_path):
    root = _folder(tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    _measure(root, "--out", one / "t.csv", "--objects", one / "o.csv", "--overlay", one / "pictures", "--workers", "1")
    result = _measure(root, "--out", two / "t.csv", "--objects", two / "o.csv", "--overlay", two / "pictures",
                      "--workers", "2")
    rows = _rows(one / "t.csv")
    assert [os.path.relpath(r["path"], root) for r in rows] == [  # sorted by path, the hidden folder left out
        "a/broken.png", "a/im1.png", "a/im3.png", "a/im5.png", "b/im0.png", "b/im2.png", "b/im4.png"]
    assert "broken.png" in rows[0]["error"] and all(not r["error"] for r in rows[1:])
    assert "broken.png: skipped" in result.output
    assert (one / "t.csv").read_bytes() == (two / "t.csv").read_bytes()
    assert (one / "o.csv").read_bytes() == (two / "o.csv").read_bytes()
    assert sorted(p.name for p in (one / "pictures").iterdir()) == sorted(p.name for p in (two / "pictures").iterdir())
    objects = Counter(r["path"] for r in _rows(one / "o.csv"))
    assert all(objects[r["path"]] == int(r["measurements.region_count"]) for r in rows[1:])
    empty = tmp_path / "empty"
    empty.mkdir()
    result = CliRunner().invoke(app, ["measure", str(empty)])
    assert result.exit_code != 0 and f"{empty}: no image files found" in result.output


def test_an_image_cut_off_between_its_objects_and_its_row_is_measured_again_once(tmp_path):
    """The window a kill can hit: some of an image's object rows are written, its row in the image table is not.
    --resume measures it again and the objects table holds each of its objects once."""
    root = _folder(tmp_path)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    _measure(root, "--out", whole / "t.csv", "--objects", whole / "o.csv")
    table, objects = (whole / "t.csv").read_text().splitlines(True), (whole / "o.csv").read_text().splitlines(True)
    last = _rows(whole / "t.csv")[-1]["path"]
    kept = [line for line in objects if not line.startswith(last + ",")]
    half = [line for line in objects if line.startswith(last + ",")]
    cut.mkdir()
    (cut / "t.csv").write_text("".join(table[:-1]))  # the last image's row never written ...
    (cut / "o.csv").write_text("".join(kept + half[: len(half) // 2]) + half[len(half) // 2][:7])  # ... nor all objects
    result = _measure(root, "--out", cut / "t.csv", "--objects", cut / "o.csv", "--resume")
    assert "6 image(s) already in" in result.output
    assert (cut / "t.csv").read_bytes() == (whole / "t.csv").read_bytes()
    assert (cut / "o.csv").read_bytes() == (whole / "o.csv").read_bytes()


def test_a_killed_run_resumes_without_loss_or_repeats(tmp_path):
    root = _folder(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _measure(root, "--out", whole / "t.csv", "--objects", whole / "o.csv")
    command = [sys.executable, "-c", "from maemi.cli import app; app()", "measure", str(root),
               "--out", str(killed / "t.csv"), "--objects", str(killed / "o.csv")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if (killed / "t.csv").is_file() and len((killed / "t.csv").read_bytes().splitlines()) >= 3:
            break  # the header and two images: killed mid-run
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(_rows(killed / "t.csv"))
    assert 1 <= finished < 7, finished
    result = _measure(root, "--out", killed / "t.csv", "--objects", killed / "o.csv", "--resume")
    assert f"{finished} image(s) already in" in result.output
    assert (killed / "t.csv").read_bytes() == (whole / "t.csv").read_bytes()
    assert (killed / "o.csv").read_bytes() == (whole / "o.csv").read_bytes()
    assert CliRunner().invoke(app, ["measure", str(root), "--resume"]).exit_code != 0  # nothing records what is done
