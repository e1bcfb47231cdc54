"""`maemi demo` end to end on a tiny corpus and a few training steps: every step writes its output, and a second run
reuses all of it."""

from __future__ import annotations

import json
import shutil

from maemi.demo import DemoConfig, run_demo
from maemi.teachers.records import read_records


def test_demo_runs_every_step_and_reuses_them(tmp_path):
    cfg = DemoConfig(out=tmp_path / "demo", per_class=3, compare=2, few_shot=4, eval_sample=6,
                     train_overrides=("--max_steps=2", "--warmstart_epochs=1", "--progress=false",
                                      "--num_threads=1"))
    lines: list[str] = []
    result = run_demo(cfg, log=lines.append)
    out = cfg.out
    assert len(json.loads((out / "inspect.json").read_text())["classes"]) == 10
    split = json.loads((out / "splits.json").read_text())
    test_images = set(split["test"])
    assert test_images and not test_images & set(split["train"])
    train_images = {p for r in read_records(out / "train.jsonl") for p in r["images"]}
    assert train_images and not train_images & test_images  # no record mixes the sides of the split
    assert (out / "run" / "model.safetensors").is_file() and (out / "run" / "run.json").is_file()
    metrics = json.loads((out / "run" / "eval" / "metrics.json").read_text())
    assert {"generation", "generation_shuffled", "zero_shot"} <= set(metrics)
    assert metrics["generation"]["n"] == 6
    assert (out / "run" / "eval" / "report.md").is_file() and (out / "run" / "eval" / "reliability.png").is_file()
    assert "familiarity" in json.loads((out / "run" / "calibration.json").read_text())
    assert isinstance(result["answer"], str) and any("maemi ask" in line for line in lines)
    assert set(result["seconds"]) == {"synth", "inspect + split", "teach train", "teach val", "teach test", "train",
                                      "calibrate", "eval"}

    again: list[str] = []
    assert run_demo(cfg, log=again.append)["seconds"] == {}  # nothing ran again
    timings = json.loads((out / "timings.json").read_text())  # the first run's, kept when nothing ran again
    assert set(timings["seconds"]) == set(result["seconds"]) and timings["peak_rss_mib"] > 0
    reused = [line for line in again if "already done" in line]
    assert len(reused) == 8, again  # synth, inspect + split, teach x3, train, calibrate, eval

    # stopped during training, before its first checkpoint: run.json is there, no checkpoint; a rerun trains afresh
    for name in ("eval", "checkpoints"):
        shutil.rmtree(out / "run" / name, ignore_errors=True)
    (out / "run" / "calibration.json").unlink()
    assert (out / "run" / "run.json").is_file()
    assert "train" in run_demo(cfg, log=[].append)["seconds"]
