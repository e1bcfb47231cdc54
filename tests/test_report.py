"""report.md from a synthetic metrics dict: its tables, and links that resolve to files on disk."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from maemi.evaluate.classification import classification_metrics
from maemi.evaluate.metrics import METRICS, summarise_scores
from maemi.evaluate.report import THUMBNAIL_SIZE, format_metrics_table, write_report

CLASSES = ["Fibres", "Nanowires", "Particles"]


def fake_generation(meteor: list[float]) -> dict:
    """The layout of generation_metrics(), from made-up per-sample scores (no METEOR process needed here)."""
    n = len(meteor)
    scores = {name: np.linspace(0.2, 0.8, n) for name in METRICS}
    scores["METEOR"] = np.array(meteor)
    groups = {"task": ["caption", "vqa", "vqa", "compare"][:n],
              "family": ["caption", "basics", "surface", "basics"][:n]}
    return summarise_scores(scores, groups)


@pytest.fixture
def run(tmp_path) -> dict:
    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    Image.new("RGB", (320, 240), "white").save(run_dir / "loss_curve.png")
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.tile(np.arange(256, dtype=np.uint8), (300, 2))).save(images / "fibres_01.png")  # 512 x 300
    tifffile.imwrite(images / "wire_16bit.tif", (np.arange(400 * 200, dtype=np.uint16) % 4096).reshape(200, 400))
    zero = classification_metrics(["Fibres", "Nanowires", "Particles"],
                                  [["Fibres", "Nanowires", "Particles"], ["Particles", "Nanowires", "Fibres"],
                                   ["Particles", "Fibres", "Nanowires"]], CLASSES)
    few = dict(classification_metrics(["Fibres", "Nanowires", "Particles"],
                                      [["Fibres"], ["Nanowires"], ["Particles"]], CLASSES), shots=5)
    metrics = {
        "run": {"run_dir": str(run_dir), "data": "test.jsonl", "device": "cpu"},
        "generation": fake_generation([0.9, 0.8, 0.7, 0.6]),
        "generation_shuffled": fake_generation([0.3, 0.2, 0.1, 0.2]),
        "zero_shot": zero,
        "few_shot": few,
    }
    examples = [
        {"images": [images / "fibres_01.png"], "question": "<image>\nWhat is the *main* feature?",
         "reference": "Long fibres crossing at random.", "answer": "Long fibres.", "task": "vqa", "family": "basics",
         "shuffled_answer": "Round particles."},
        {"images": [images / "fibres_01.png", images / "wire_16bit.tif"], "question": "<image> <image> Compare them.",
         "reference": "The first is fibrous.", "answer": "The first has fibres | the second wires."},
    ]
    return {"run_dir": run_dir, "metrics": metrics, "examples": examples, "out": tmp_path / "report" / "report.md"}


def links(markdown: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in markdown.splitlines()
            if line.startswith(f"| {first_cell} |")]


def test_report_has_the_tables_and_every_link_exists(run):
    out = write_report(run["run_dir"], run["metrics"], run["examples"], run["out"])
    assert out == run["out"]
    text = out.read_text()
    report_dir = out.parent

    # headline: both generation rows, with mean ± std from the per-sample scores
    [real] = table_rows(text, "test images")
    [shuffled] = table_rows(text, "images shuffled among questions")
    meteor = 1 + 1 + METRICS.index("METEOR")  # after the "images" and "n" cells
    assert real[1] == "4" and real[meteor] == f"{0.75:.3f} ± {np.std([0.9, 0.8, 0.7, 0.6]):.3f}"
    assert shuffled[meteor] == f"{0.2:.3f} ± {np.std([0.3, 0.2, 0.1, 0.2]):.3f}"
    assert "METEOR 0.750 with the right image, 0.200 with a shuffled one (difference +0.550)" in text
    # classification headline: zero-shot 2 of 3 right (Nanowires taken for Particles), top-5 1; few-shot all right
    [zero] = table_rows(text, "zero-shot")
    assert zero[1:4] == ["3", "0.667", "1.000"]
    [few] = table_rows(text, "few-shot (K = 5)")
    assert few[1:4] == ["3", "1.000", "1.000"]

    # per-task and per-family tables, one row per value
    assert "## Generation by task" in text and "## Generation by family" in text
    assert table_rows(text, "vqa")[0][1] == "2" and table_rows(text, "compare")[0][1] == "1"
    # per-class table, zero-shot first: Particles predicted twice, once right
    fibres_rows = table_rows(text, "Fibres")
    assert fibres_rows[0] == ["Fibres", "1.000", "1.000", "1.000", "1"]
    assert table_rows(text, "Particles")[0] == ["Particles", "0.500", "1.000", "0.667", "1"]
    assert len(table_rows(text, "macro average")) == 2

    # every embedded picture exists, relative to the report
    found = links(text)
    for link in found:
        assert not Path(link).is_absolute()
        assert (report_dir / link).is_file(), link
    names = {Path(link).name for link in found}
    assert {"confusion_zero_shot.png", "confusion_few_shot.png", "loss_curve.png"} <= names
    assert {"example_1_1.png", "example_2_1.png", "example_2_2.png"} <= names
    assert "../runs/demo/loss_curve.png" in found


def test_thumbnails_are_small_pngs_of_the_images(run):
    out = write_report(run["run_dir"], run["metrics"], run["examples"], run["out"])
    thumbs = out.parent / "report_images"
    with Image.open(thumbs / "example_1_1.png") as im:
        assert im.format == "PNG" and im.size == (THUMBNAIL_SIZE, round(THUMBNAIL_SIZE * 300 / 512))
        row = np.asarray(im)[0]
        assert row[0] < 10 and row[-1] > 245  # the horizontal ramp survived
    with Image.open(thumbs / "example_2_2.png") as im:  # the 16-bit TIFF, stretched to 8 bits
        assert im.size == (THUMBNAIL_SIZE, THUMBNAIL_SIZE // 2)
        assert np.asarray(im).max() > 200


def test_example_text_survives_markdown(run):
    text = write_report(run["run_dir"], run["metrics"], run["examples"], run["out"]).read_text()
    assert "**Question:** \\<image\\>" in text  # not swallowed as an HTML tag
    assert "\\*main\\*" in text
    assert "fibres \\| the second" in text
    assert "### Example 1 (vqa / basics)" in text
    assert "**Answer with another test image (control):** Round particles." in text
    assert text.count("(control):") == 1  # example 2 has no shuffled answer


def test_missing_sections_are_left_out(tmp_path):
    metrics = {"generation": fake_generation([0.5, 0.4])}
    text = write_report(tmp_path, metrics, [], tmp_path / "report.md").read_text()
    assert "test images" in text
    assert "shuffled" not in text and "Classification" not in text and "Examples" not in text
    assert links(text) == []


def test_bad_metrics_and_examples_are_refused(run, tmp_path):
    with pytest.raises(ValueError, match="metrics\\['generation'\\] has no 'overall'"):
        write_report(tmp_path, {"generation": {"BLEU-2": 0.5}}, [], tmp_path / "r.md")
    with pytest.raises(ValueError, match="metrics\\['zero_shot'\\] lacks"):
        write_report(tmp_path, {"zero_shot": {"top1": 0.5}}, [], tmp_path / "r.md")
    with pytest.raises(ValueError, match="example 1 lacks \\['answer'\\]"):
        write_report(tmp_path, {}, [{"question": "q", "reference": "r"}], tmp_path / "r.md")
    with pytest.raises(ValueError, match="nope.png"):
        write_report(tmp_path, {}, [{"image": tmp_path / "nope.png", "question": "q", "reference": "r",
                                     "answer": "a"}], tmp_path / "r.md")
    assert not (tmp_path / "r.md").exists()


def test_format_metrics_table_for_stdout(run):
    table = format_metrics_table(run["metrics"])
    lines = table.splitlines()
    assert lines[0].split() == ["images", "n", *METRICS]
    assert lines[1].startswith("test images") and "0.750 ± 0.112" in lines[1]
    assert lines[2].startswith("images shuffled among questions")
    assert any(line.startswith("zero-shot") and "0.667" in line for line in lines)
    assert format_metrics_table({}) == ""
