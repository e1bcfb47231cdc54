"""benchmarks/neu.py: the NEU-SDD split (duplicates removed, sides apart), the results file that keeps rows of one split
only, and (slow) the whole benchmark end to end on 8 images per class: MAEMI through the `maemi` commands and the three
baselines, then one row rerun alone."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
NEU = REPO.parent / "shared" / "data" / "neu-det"
needs_neu = pytest.mark.skipif(not NEU.is_dir(), reason="../shared/data/neu-det is not present")

sys.path.insert(0, str(BENCHMARKS))
import neu  # noqa: E402  (benchmarks/neu.py)


@needs_neu
def test_split_removes_duplicates_stratifies_and_keeps_sides_apart(tmp_path):
    path, split = neu.make_split(NEU, tmp_path, per_class=None)
    assert json.loads(path.read_text()) == split
    train, test = set(split["train"]), set(split["test"])
    assert not train & test
    # NEU's one exact duplicate pair: one copy is kept, the other is gone from both sides.
    assert split["removed_duplicates"] == ["patches/patches_105.jpg"]
    assert "patches/patches_101.jpg" in train | test and "patches/patches_105.jpg" not in train | test
    assert len(train) + len(test) == 1799
    test_per_class = Counter(rel.split("/")[0] for rel in test)
    assert sorted(test_per_class) == sorted(p.name for p in NEU.iterdir() if p.is_dir() and p.name[0] not in "._")
    assert all(59 <= n <= 61 for n in test_per_class.values()), test_per_class
    assert split["counts"]["test"] == dict(sorted(test_per_class.items()))
    # Same seed, same split; the subset of --quick is drawn from each side, so it cannot leak either.
    _, again = neu.make_split(NEU, tmp_path / "again", per_class=None)
    assert neu.split_fingerprint(again) == neu.split_fingerprint(split)
    _, small = neu.make_split(NEU, tmp_path / "small", per_class=8)
    assert set(small["train"]) <= train and set(small["test"]) <= test
    assert set(Counter(rel.split("/")[0] for rel in small["train"]).values()) == {6}
    assert set(Counter(rel.split("/")[0] for rel in small["test"]).values()) == {2}


def test_rows_of_another_split_are_refused(tmp_path):
    assert neu.load_results(tmp_path / "neu.json", "abc") == {"rows": {}}
    stored = tmp_path / "neu.json"
    stored.write_text(json.dumps({"split": {"fingerprint": "other"}, "rows": {"cnn": {}}}))
    with pytest.raises(SystemExit, match="measured on another split"):
        neu.load_results(stored, "abc")
    assert neu.load_results(stored, "other") == {"rows": {"cnn": {}}}
    stored.write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a NEU benchmark result"):
        neu.load_results(stored, "abc")


def run_benchmark(work: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(BENCHMARKS / "neu.py"), "--quick", "--work", str(work), "--threads", "1",
                    *args], check=True, cwd=REPO)
    return json.loads((work / "neu.json").read_text())


@needs_neu
@pytest.mark.slow  # about 2.5 minutes on the 2-core CPU: MAEMI's teach, train and eval, then three baselines
def test_quick_benchmark_end_to_end_and_a_row_rerun_alone(tmp_path):
    results = run_benchmark(tmp_path)
    rows = results["rows"]
    assert set(rows) == {"maemi", "cnn", "resnet", "vit"}
    assert results["split"]["train"] == 36 and results["split"]["test"] == 12
    classes = sorted(results["split"]["counts"]["test"])
    for name, row in rows.items():
        sections = [row["classification"]] + ([row["few_shot"]] if name == "maemi" else [])
        for c in sections:
            assert c["n"] == 12 and c["classes"] == classes
            assert sum(map(sum, c["confusion_matrix"])) == 12
            assert {v["support"] for v in c["per_class"].values()} == {2}
            correct = sum(c["confusion_matrix"][i][i] for i in range(len(classes)))
            assert c["top1"] == pytest.approx(correct / 12)
            assert c["top1"] <= c["top5"] <= 1.0
        assert row["train_seconds"] > 0 and row["params"] > 0 and row["machine"]["cpu"]
    assert rows["cnn"]["params"] == 1_174_758
    maemi = rows["maemi"]
    assert maemi["few_shot"]["shots"] == 5
    assert maemi["top1"] == maemi["classification"]["top1"]
    for scores in (maemi["vqa"]["vqa"], maemi["vqa"]["vqa_shuffled_images"]):
        assert scores["n"] > 0 and all(0.0 <= scores[m] <= 1.0 for m in ("BLEU-4", "ROUGE-L", "METEOR"))
    assert all(command.startswith("maemi ") for command in maemi["commands"])
    assert (tmp_path / "maemi" / "run" / "eval" / "metrics.json").is_file()
    table = (tmp_path / "neu.md").read_text()
    for c in (maemi["classification_views"], maemi["few_shot_views"]):
        assert c["views"] == 2 and c["n"] == 12 and c["top1"] <= c["top5"] <= 1.0
    for line in ("| MAEMI zero-shot |", "| MAEMI few-shot (K=5) |", "| MAEMI zero-shot, 2 views averaged |",
                 "| MAEMI few-shot (K=5), 2 views averaged |", "| plain CNN", "| ResNet", "| ViT", "0.985",
                 "## Open-ended answers", "Confusion matrix"):
        assert line in table

    # One row again: it is replaced, the others are kept as they were.
    again = run_benchmark(tmp_path, "--only", "cnn")["rows"]
    assert again["maemi"] == maemi and again["vit"] == rows["vit"] and again["resnet"] == rows["resnet"]
    assert again["cnn"]["machine"]["date"] >= rows["cnn"]["machine"]["date"]
    assert again["cnn"]["classification"] == rows["cnn"]["classification"]  # seeded: same split, same result


@needs_neu
def test_warmstart_benchmark_scores_every_epoch_and_keeps_one_row_per_override(tmp_path):
    def run(*overrides: str) -> dict:
        subprocess.run([sys.executable, str(BENCHMARKS / "neu_warmstart.py"), "--per-class", "8", "--work",
                        str(tmp_path), "--out", str(tmp_path), "--threads", "1", "--warmstart_epochs=2",
                        "--model.vision.dim=32", *overrides], check=True, cwd=REPO)
        return json.loads((tmp_path / "neu_warmstart.json").read_text())

    first = run()
    assert first["split"]["train"] == 36 and first["split"]["test"] == 12
    row = first["rows"]["--warmstart_epochs=2 --model.vision.dim=32"]
    assert row["epochs"] == 2 and len(row["test_acc"]) == 2 and len(row["train_acc"]) == 2
    assert all(round(acc * 12) == pytest.approx(acc * 12) for acc in row["test_acc"])  # a count of 12 test images
    assert row["threads"] == 1 and row["params"] > 0 and row["machine"]["cpu"]
    second = run("--model.vision.local_depth=0")
    assert len(second["rows"]) == 2 and second["rows"]["--warmstart_epochs=2 --model.vision.dim=32"] == row
    assert second["rows"]["--warmstart_epochs=2 --model.vision.dim=32 --model.vision.local_depth=0"]["params"] \
        < row["params"]  # two blocks fewer
    table = (tmp_path / "neu_warmstart.md").read_text()
    assert table.count("| --warmstart_epochs=2 --model.vision.dim=32") == 2
