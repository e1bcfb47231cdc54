"""`maemi eval` on a tiny trained run (built as in test_assistant.py): metrics.json with every section, report.md,
the shuffled-images control, and the derangement behind it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from typer.testing import CliRunner

from maemi.cli import app
from maemi.evaluate.evaluate import shuffled_image_lists
from maemi.evaluate.metrics import METRICS
from maemi.teachers.records import make_record, read_records
from test_assistant import BRIGHT_Q, tiny  # noqa: F401  (a fixture: the tiny trained run)
from tiny_text_models import one_thread  # noqa: F401


def test_shuffled_image_lists_is_a_seeded_derangement():
    singles = [(f"{i}.png",) for i in range(7) for _ in range(3)]  # 7 images, 3 questions each
    pairs = [("a.png", "b.png"), ("b.png", "a.png"), ("c.png", "d.png")]
    lonely = [("x.png", "y.png", "z.png")]  # the only record with three images: nothing to swap with
    lists = singles + pairs + lonely
    shuffled = shuffled_image_lists(lists, seed=0)
    assert shuffled == shuffled_image_lists(lists, seed=0)
    assert shuffled != shuffled_image_lists(lists, seed=1)
    assert shuffled[-1] is None
    for original, other in zip(lists[:-1], shuffled[:-1]):
        assert other != original and len(other) == len(original)
    mapping = dict(zip(lists[:-1], shuffled[:-1]))  # one image list always goes to the same other one ...
    assert all(mapping[original] == other for original, other in zip(lists[:-1], shuffled[:-1]))
    assert sorted(set(mapping.values())) == sorted(set(mapping))  # ... and every list is used once: a permutation
    assert Counter(shuffled[:21]) == Counter(singles)


def test_eval_writes_metrics_report_and_the_shuffled_control(tiny, tmp_path):
    records = read_records(tiny["test_data"])
    rel = tiny["test"][0]
    too_long = make_record([rel], "Describe " + "every grain " * 200 + "in it.", "Grains.", task="vqa",
                           family="basics", length="long", label="bright", teacher="test",
                           question_key="basics.grains")
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records + [too_long]))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(tiny["run"]), "--data", str(data), "--out", str(out),
                                      "--shots", "2", "--batch-size", "4", "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "images shuffled among questions" in result.stdout and "zero-shot" in result.stdout
    assert str(out / "report.md") in result.stdout

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"run", "generation", "generation_shuffled", "numeric_fidelity",
                            "numeric_fidelity_shuffled", "word_fidelity", "word_fidelity_shuffled", "zero_shot",
                            "few_shot"}
    generated = [r for r in records if r["task"] != "classify"]  # 3 images x 3 questions + 2 comparisons
    assert metrics["run"]["generation_records"] == len(generated) == 11
    assert metrics["run"]["left_out_prompt_too_long"] == 1
    real, shuffled = metrics["generation"], metrics["generation_shuffled"]
    assert real["n"] == shuffled["n"] == 11
    # the grey-level answers state the measured number of their own image; with another image's, they miss
    fidelity, control = metrics["numeric_fidelity"], metrics["numeric_fidelity_shuffled"]
    assert fidelity["overall"]["numbers"] == 3 and fidelity["overall"]["within_10pct"] == 1.0
    assert fidelity["overall"]["exact"] == 1.0 and control["overall"]["within_10pct"] < 0.5
    # the answers state the shuffled image's own grey level: the control sits at its floor, and no number that
    # differs between the two images survives the shuffle
    assert control["overall"]["within_10pct"] == control["floor"]["within_10pct"]
    assert control["images_differ"]["within_10pct"] == 0.0
    assert set(real["overall"]) == {"n", *METRICS}
    assert set(real["groups"]) == {"task", "family", "length"}
    assert set(real["groups"]["task"]) == {"caption", "vqa", "compare"}
    # the tiny model answers from the image: its answers match on the right images, not on shuffled ones
    assert real["overall"]["METEOR"]["mean"] > shuffled["overall"]["METEOR"]["mean"] + 0.3

    zero, few = metrics["zero_shot"], metrics["few_shot"]
    assert zero["n"] == few["n"] == 3 and few["shots"] == 2
    assert zero["top1"] == 1.0 and zero["classes"] == ["bright", "dark", "striped"]
    assert set(zero["per_class"]["dark"]) == {"precision", "recall", "f1", "support"}

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 11 and all(a["shuffled_images"] != a["images"] for a in answers)
    brightness = [a for a in answers if a["question"] == BRIGHT_Q]
    assert {a["answer"] for a in brightness} == {"Bright.", "Dark.", "Neither: it is striped."}
    predictions = [json.loads(line) for line in (out / "classifications.jsonl").read_text().splitlines()]
    assert [p["label"] for p in predictions] == ["bright", "dark", "striped"]
    assert all(p["zero_shot"][0][0] == p["label"] for p in predictions)

    report = (out / "report.md").read_text()
    assert "Control: the same questions" in report and "## Examples" in report and "Numeric fidelity" in report
    assert "Answer with another test image" in report  # each example shows its shuffled-image answer too
    for png in ("confusion_zero_shot.png", "confusion_few_shot.png", "report_images/example_1_1.png"):
        assert (out / png).is_file(), png


def test_eval_names_a_missing_test_file(tiny, tmp_path):
    result = CliRunner().invoke(app, ["eval", str(tiny["run"]), "--data", str(tmp_path / "none.jsonl")])
    assert result.exit_code == 1 and "none.jsonl" in result.stderr


def test_eval_sample_draws_a_seeded_subset_for_generation_only(tiny, tmp_path):
    def run(out: Path) -> dict:
        result = CliRunner().invoke(app, ["eval", str(tiny["run"]), "--data", str(tiny["test_data"]), "--out",
                                          str(out), "--sample", "3", "--shots", "0", "--quiet", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        return json.loads((out / "metrics.json").read_text())

    first, again = run(tmp_path / "a"), run(tmp_path / "b")
    assert first["run"]["generation_records"] == first["generation"]["n"] == 3
    assert first["zero_shot"]["n"] == 3  # classification still sees every labelled test image
    assert (tmp_path / "a" / "answers.jsonl").read_text() == (tmp_path / "b" / "answers.jsonl").read_text()
    assert first["generation"]["overall"] == again["generation"]["overall"]


def test_eval_views_adds_test_time_augmented_classification(tiny, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", str(tiny["run"]), "--data", str(tiny["test_data"]), "--out", str(out),
                                      "--sample", "2", "--shots", "2", "--views", "8", "--quiet", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "zero-shot, 8 views" in result.stdout and "few-shot (K = 2), 8 views" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("zero_shot", "few_shot"):
        assert "views" not in metrics[key]
        assert metrics[f"{key}_views"]["views"] == 8 and metrics[f"{key}_views"]["n"] == metrics[key]["n"] == 3
    assert metrics["few_shot_views"]["shots"] == 2
    assert (out / "confusion_zero_shot_views.png").is_file()
    assert "## Classification, zero-shot, 8 views: per class" in (out / "report.md").read_text()
    bad = CliRunner().invoke(app, ["eval", str(tiny["run"]), "--data", str(tiny["test_data"]), "--views", "9"])
    assert bad.exit_code != 0
