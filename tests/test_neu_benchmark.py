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
import neu_runs  # noqa: E402  (benchmarks/neu_runs.py)


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


def _result(date: str, zero: float, few: float, train_args: list[str], native_bf16: bool | None,
            minutes: float) -> dict:
    """A neu.json result with the MAEMI row fields the run log reads."""
    machine = {"date": date, "commit": "abc1234", "cpu": "AMD EPYC", "cpu_family_model": "25/17",
               "native_bf16": native_bf16}
    return {"split": {"fingerprint": "f00"}, "rows": {"maemi": {
        "machine": machine, "threads": 2, "train_args": train_args, "classification": {"top1": zero},
        "few_shot": {"top1": few}, "classification_views": {"top1": 1.0}, "few_shot_views": None, "top5": 1.0,
        "few_shot_top5": 1.0, "vqa": {"vqa": {"METEOR": 0.5}, "vqa_shuffled_images": {"METEOR": 0.4}},
        "train_seconds": minutes * 60, "within_budget": minutes <= 30}}}


def test_the_run_log_keeps_every_run_and_summarises_it_by_settings(tmp_path):
    log = tmp_path / "neu_runs"
    neu_runs.add(neu_runs.log_entry(_result("2026-12-01 10:00 UTC", 0.994, 0.997, [], True, 25.0)), log)
    neu_runs.add(neu_runs.log_entry(_result("2026-12-01 11:00 UTC", 1.0, 0.994, ["--seed=2"], False, 33.0)), log)
    # another setting: logged, listed and summarised apart
    neu_runs.add(neu_runs.log_entry(_result("2026-12-01 12:00 UTC", 0.5, 0.5, ["--seed=1", "--epochs=2"], True, 9)), log)
    again = neu_runs.add(neu_runs.log_entry(_result("2026-12-01 10:00 UTC", 0.994, 0.997, [], True, 25.0)), log)
    assert again.name == "2026-12-01-1000_abc1234_seed0.json"  # the same run again replaces its file
    entries = neu_runs.read_log(log)
    assert [e["seed"] for e in entries] == [0, 2, 1]
    table = neu_runs.write_table(log, tmp_path / "neu_runs.md").read_text()
    assert "| 2026-12-01 11:00 | abc1234 | 2 | none | AMD EPYC (25/17), no native bf16, 2 thread(s) | 1.000 | 0.994 |" \
        in table
    assert "33.0 min (over budget) |" in table and "| --epochs=2 |" in table
    summary = table.split("## Summary")[1]
    assert "| none, all | 2 | 0.9970 (0.994-1.000), 1 of 2 | 0.9955 (0.994-0.997), 1 of 2 | 1.0000 (1.000-1.000), " \
           "2 of 2 |  | 1 of 2 | 25.0-33.0 min |" in summary
    assert "| none, native bf16 | 1 |" in summary and "| none, no native bf16 | 1 |" in summary
    assert "| --epochs=2, all | 1 | 0.5000 (0.500-0.500), 0 of 1 |" in summary


def test_wrong_images_come_from_the_eval_predictions():
    rows = [{"image": "a/a_1.jpg", "label": "a", "zero_shot": [["a", 0.9]], "few_shot": [["b", 0.6], ["a", 0.4]]},
            {"image": "b/b_1.jpg", "label": "b", "zero_shot": [["a", 0.7]], "few_shot": [["b", 0.8]]}]
    wrong = neu_runs.wrong_images(rows)
    assert wrong == {"zero_shot": [["b/b_1.jpg", "b", "a"]], "few_shot": [["a/a_1.jpg", "a", "b"]]}
    assert neu_runs.describe_wrong(wrong) == "zero-shot: b_1 -> a; few-shot: a_1 -> b"
    assert neu_runs.describe_wrong({"zero_shot_views": []}) == "zero-shot, views averaged: none"


def run_benchmark(work: Path, *args: str) -> dict:
    subprocess.run([sys.executable, str(BENCHMARKS / "neu.py"), "--quick", "--work", str(work), "--threads", "1",
                    *args], check=True, cwd=REPO)
    return json.loads((work / "neu.json").read_text())


@needs_neu
@pytest.mark.slow  # about 2.5 minutes on the 2-core CPU: MAEMI's teach, train and eval, then three baselines
def test_quick_benchmark_end_to_end_and_a_row_rerun_alone(tmp_path):
    logged = sorted(neu_runs.LOG.glob("*.json"))
    results = run_benchmark(tmp_path)
    assert sorted(neu_runs.LOG.glob("*.json")) == logged  # a --quick smoke run is not a run of the benchmark
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
    for mode, section in (("zero_shot", maemi["classification"]), ("few_shot", maemi["few_shot"])):
        assert len(maemi["wrong"][mode]) == round((1 - section["top1"]) * 12)
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
