"""Benchmark: `maemi demo` on several seeds (issue 24's protocol). Prints a table and writes
benchmarks/results/demo_seeds.{json,md}.

Each seed is a whole `maemi demo --seed S` (its own synthetic corpus, split, teacher records, training and
evaluation), so the spread covers everything a new user's run could differ in. Per seed: wall time, zero- and
few-shot top-1 on its held-out images, the expected calibration error of the calibrated zero-shot probabilities,
METEOR and numeric fidelity with the right images and with the images shuffled among the questions. Then the mean and
standard deviation over seeds, and the calibration error of all seeds' test images pooled (each seed's tens of
images alone are too few to read an ECE of 0.05 from).

    .venv/bin/python benchmarks/demo_seeds.py [--seeds 0,1,2] [--work /tmp/demo_seeds]

A seed whose evaluation is already in WORK is read, not rerun; its minutes are then the sum of its steps' seconds in
its timings.json (the demo's steps alone: no interpreter start or imports).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from maemi.evaluate.calibration import expected_calibration_error
from maemi.fileio import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402

TARGET_ZERO_SHOT = 0.9
BUDGET_MINUTES = 15.0
COLUMNS = {  # name: (header, how to read it from metrics.json)
    "zero_shot": ("zero-shot top-1", lambda m: m["zero_shot"]["top1"]),
    "few_shot": ("few-shot top-1", lambda m: m["few_shot"]["top1"]),
    "ece": ("ECE (zero-shot, calibrated)", lambda m: m["zero_shot"].get("ece")),
    "meteor": ("METEOR", lambda m: m["generation"]["overall"]["METEOR"]["mean"]),
    "meteor_shuffled": ("METEOR, shuffled images", lambda m: m["generation_shuffled"]["overall"]["METEOR"]["mean"]),
    "numeric": ("numeric fidelity", lambda m: m["numeric_fidelity"]["overall"]["within_10pct"]),
    "numeric_shuffled": ("numeric fidelity, shuffled", lambda m: m["numeric_fidelity_shuffled"]["overall"]["within_10pct"]),
    # what the shuffled image's own measurement reproduces by chance, and the shuffled answers over the numbers where
    # the two images measure differently (evaluate/numeric.py)
    "numeric_floor": ("shuffled: chance floor",
                      lambda m: m["numeric_fidelity_shuffled"].get("floor", {}).get("within_10pct")),
    "numeric_differ": ("shuffled, where the images differ",
                       lambda m: m["numeric_fidelity_shuffled"].get("images_differ", {}).get("within_10pct")),
    "words": ("word fidelity", lambda m: m.get("word_fidelity", {}).get("reproduced")),
    "words_shuffled": ("word fidelity, shuffled", lambda m: m.get("word_fidelity_shuffled", {}).get("reproduced")),
}


def run_seed(seed: int, work: Path) -> dict:
    out = work / f"seed{seed}"
    metrics_path = out / "run" / "eval" / "metrics.json"
    minutes = None
    if not metrics_path.is_file():
        start = time.perf_counter()
        maemi = Path(sys.executable).with_name("maemi")
        subprocess.run([str(maemi), "demo", "--seed", str(seed), "--out", str(out)], check=True)
        minutes = (time.perf_counter() - start) / 60
    timings = out / "timings.json"  # each step's seconds, written by the demo itself
    if minutes is None and timings.is_file():
        minutes = sum(json.loads(timings.read_text())["seconds"].values()) / 60
    metrics = json.loads(metrics_path.read_text())
    row = {"seed": seed, "minutes": minutes, **{name: read(metrics) for name, (_, read) in COLUMNS.items()}}
    # top-1 probability and correctness of each test image, for the pooled calibration error
    rows = [json.loads(line) for line in (out / "run" / "eval" / "classifications.jsonl").read_text().splitlines()]
    row["top1"] = [[r["zero_shot"][0][1], r["zero_shot"][0][0] == r["label"]] for r in rows if r.get("zero_shot")]
    row["classes"] = len(metrics["zero_shot"]["classes"])
    return row


def pooled_ece(rows: list[dict]) -> float:
    """ECE over every seed's test images together: only the top-1 probability and whether it was right count."""
    top1 = np.array([p for row in rows for p, _ in row["top1"]])
    right = np.array([ok for row in rows for _, ok in row["top1"]], dtype=bool)
    # the top-1 class first, the rest of its mass spread evenly over the other classes (never above the top-1's)
    classes = rows[0]["classes"]
    probs = np.concatenate([top1[:, None], np.repeat(((1.0 - top1) / (classes - 1))[:, None], classes - 1, 1)], 1)
    return expected_calibration_error(probs, np.where(right, 0, 1))


def mean_std(values: list[float]) -> dict:
    """Mean and sample standard deviation over seeds, as every multi-seed table here reports them (None: not enough)."""
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None}


def summary(rows: list[dict]) -> dict:
    out = {}
    for name in COLUMNS:
        out[name] = mean_std([r[name] for r in rows if r[name] is not None])
    out["seeds_meeting_zero_shot_target"] = sum(r["zero_shot"] >= TARGET_ZERO_SHOT for r in rows)
    out["pooled_ece"] = pooled_ece(rows)
    out["pooled_images"] = sum(len(r["top1"]) for r in rows)
    return out


def markdown(result: dict) -> str:
    m, rows, s = result["machine"], result["rows"], result["summary"]
    lines = ["# `maemi demo` over seeds (benchmarks/demo_seeds.py)", "",
             f"Commit {m.get('commit')}, {m.get('cpu')}, {m.get('threads', '?')} threads. Each seed is a whole "
             f"`maemi demo --seed S` (corpus, split, teacher, training, evaluation) on its held-out images "
             f"({', '.join(sorted({str(len(r['top1'])) for r in rows}))} per seed); "
             f"targets: zero-shot top-1 >= {TARGET_ZERO_SHOT} on every seed, within {BUDGET_MINUTES:.0f} minutes. Minutes "
             "are the demo alone, with `.venv/` already set up (a clean clone adds about 2).", "",
             "| seed | minutes | " + " | ".join(h for h, _ in COLUMNS.values()) + " |",
             "|---:|---:|" + "---:|" * len(COLUMNS)]
    for r in rows:
        minutes = "-" if r["minutes"] is None else f"{r['minutes']:.1f}"
        lines.append(f"| {r['seed']} | {minutes} | " + " | ".join(f"{r[n]:.3f}" if r[n] is not None else "-"
                                                                 for n in COLUMNS) + " |")
    def mean_std(n):
        return "-" if s[n]["mean"] is None else f"{s[n]['mean']:.3f}" + (
            f" ({s[n]['std']:.3f})" if s[n]["std"] is not None else "")
    lines.append("| mean (std) | | " + " | ".join(mean_std(n) for n in COLUMNS) + " |")
    lines += ["", f"Zero-shot top-1 >= {TARGET_ZERO_SHOT}: {s['seeds_meeting_zero_shot_target']} of {len(rows)} seeds. "
              f"Calibration error of the {s['pooled_images']} test images of all seeds pooled: {s['pooled_ece']:.3f} "
              "(target <= 0.05).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo_seeds"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "demo_seeds")
    parser.add_argument("--note", default="", help="a paragraph for the markdown: how the runs shared the machine")
    args = parser.parse_args()
    import torch

    rows = [run_seed(int(s), args.work) for s in args.seeds.split(",")]
    result = {"machine": {**machine_info(), "threads": torch.get_num_threads()}, "rows": rows,
              "summary": summary(rows)}
    text = markdown(result) + (f"\n{args.note}\n" if args.note else "")
    result["note"] = args.note
    print(text)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), text + "\n")


if __name__ == "__main__":
    main()
