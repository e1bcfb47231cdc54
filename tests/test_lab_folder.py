"""benchmarks/lab_folder.py and benchmarks/nanowire_crops.py: the real nanowire boxes as a class-folder dataset, the
results file that merges seeds and refuses rows of another split, and (slow) the benchmark end to end on a tiny
folder."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
TILES = REPO.parent / "shared" / "data" / "sem-nanowires" / "tiles"
needs_tiles = pytest.mark.skipif(not (TILES / "boxes.csv").is_file(), reason="../shared/data/sem-nanowires is absent")

sys.path.insert(0, str(BENCHMARKS))
import lab_folder  # noqa: E402  (benchmarks/lab_folder.py)
import nanowire_crops  # noqa: E402  (benchmarks/nanowire_crops.py)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.png"))}


@needs_tiles
def test_nanowire_crops_are_one_per_box_with_one_label_and_reproducible(tmp_path):
    counts, left_out = nanowire_crops.write_crops(TILES, tmp_path / "a")
    with (TILES / "boxes.csv").open(newline="") as handle:
        boxes = Counter(row["class"] for row in csv.DictReader(handle))
    assert sum(counts.values()) + left_out == sum(boxes.values())
    assert set(counts) == set(boxes) and all(counts[c] <= boxes[c] for c in boxes)
    assert 0 < left_out < 0.02 * sum(boxes.values())  # the objects boxed twice, no more
    files = digest(tmp_path / "a")
    assert Counter(path.split("/")[0] for path in files) == counts
    assert len(set(files.values())) == len(files)  # no crop is in two classes, nor twice in one
    first = next((tmp_path / "a").rglob("*.png"))
    with Image.open(first) as image:
        assert image.size == (nanowire_crops.SIZE, nanowire_crops.SIZE) and image.mode == "L"
    nanowire_crops.write_crops(TILES, tmp_path / "b")
    assert digest(tmp_path / "b") == files  # same input, same bytes


def row(top1: float, fingerprint: str = "f0") -> dict:
    return {"top1": top1, "macro_f1": top1, "few_shot_top1": None, "train_seconds": 60.0, "split_fingerprint":
            fingerprint, "split_sizes": "7 / 1 / 2", "threads": 1, "machine": {"cpu": "cpu", "date": "d"}}


def test_results_merge_seeds_into_mean_and_std_and_refuse_another_split(tmp_path):
    header = {"name": "x", "root": "r", "profile": "generic", "config": "neu", "group_pattern": None}
    lab_folder.merge_row(tmp_path, "x", "maemi/seed0", row(0.90), header)
    lab_folder.merge_row(tmp_path, "x", "cnn/seed0", row(0.95), header)
    results = lab_folder.merge_row(tmp_path, "x", "maemi/seed1", row(0.96, "f1"), header)
    assert json.loads((tmp_path / "lab_x.json").read_text()) == results
    top1 = results["summary"]["maemi"]["top1"]
    assert top1["n"] == 2 and top1["mean"] == pytest.approx(0.93) and top1["std"] == pytest.approx(0.0424264, abs=1e-6)
    assert results["summary"]["cnn"]["top1"] == {"mean": 0.95, "std": None, "n": 1}
    assert "few_shot_top1" not in results["summary"]["maemi"]  # no value measured, no mean of nothing
    assert "| MAEMI zero-shot | 2 | 0.930 ± 0.042 |" in (tmp_path / "lab_x.md").read_text()
    with pytest.raises(SystemExit, match="another split"):
        lab_folder.merge_row(tmp_path, "x", "maemi/seed0", row(0.91, "other"), header)
    assert lab_folder.merge_row(tmp_path, "x", "maemi/seed0", row(0.91), header)["runs"]["maemi/seed0"]["top1"] == 0.91
    # an ablation variant is its own row, never mixed into the shipped model's mean
    results = lab_folder.merge_row(tmp_path, "x", "maemi:frozen_text/seed0", row(0.5), header)
    assert results["summary"]["maemi:frozen_text"]["top1"]["mean"] == 0.5
    assert results["summary"]["maemi"]["top1"]["mean"] == pytest.approx(0.935)
    assert "| MAEMI zero-shot, ablation: frozen_text | 1 | 0.500 |" in (tmp_path / "lab_x.md").read_text()


@pytest.mark.slow  # about a minute: split, teach, a few training steps, eval, one CNN epoch
def test_the_benchmark_runs_end_to_end_on_a_tiny_folder(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for label, level in (("dark", 50), ("bright", 200)):
        (tmp_path / "data" / label).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(rng.normal(level, 20, (40, 40)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / "data" / label / f"{label}_{i}.png")
    command = [sys.executable, str(BENCHMARKS / "lab_folder.py"), "--root", str(tmp_path / "data"), "--name", "tiny",
               "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--seeds", "0,1",
               "--train-arg=--warmstart_epochs=1", "--train-arg=--max_steps=2", "--cnn-epochs", "1", "--threads", "1"]
    subprocess.run(command, check=True, cwd=REPO, capture_output=True, text=True)
    results = json.loads((tmp_path / "out" / "lab_tiny.json").read_text())
    assert sorted(results["runs"]) == ["cnn/seed0", "cnn/seed1", "maemi/seed0", "maemi/seed1"]
    assert results["runs"]["maemi/seed0"]["image_size"] == 48  # 40-pixel images, rounded up to the patch of 16
    assert results["runs"]["maemi/seed0"]["split_fingerprint"] == results["runs"]["cnn/seed0"]["split_fingerprint"]
    assert results["runs"]["maemi/seed0"]["split_fingerprint"] != results["runs"]["maemi/seed1"]["split_fingerprint"]
    assert results["summary"]["maemi"]["top1"]["n"] == 2
