"""Benchmark: MAEMI against supervised baselines on NEU-SDD (the paper's Tables 21 and 22), on a fixed split.

Table 21 is top-1 classification, Table 22 open-ended VQA scores. Steps:

1. Split: `maemi data split` (stratified, 20% test, seed 0, no validation side), then exact duplicates removed (one
   copy of each group kept; NEU has one pair), written to WORK/split.json.
2. MAEMI, with the product's own commands (printed as they run):
       maemi teach ROOT --out WORK/maemi/train.jsonl --profile neu --split WORK/split.json --subset train --few-shot N
       maemi teach ROOT --out WORK/maemi/test.jsonl --profile neu --split WORK/split.json --subset test
       maemi train --data WORK/maemi/train.jsonl --images ROOT --out WORK/maemi/run --config neu
       maemi eval WORK/maemi/run --data WORK/maemi/test.jsonl --shots 5 --sample N --views 8
   zero-shot and few-shot (K=5) top-1/top-5, per-class P/R/F1, confusion matrix, and BLEU-4/ROUGE-L/METEOR on the test
   questions (with the shuffled-images control); top-1/top-5 also with the 8 flips and quarter turns averaged.
3. Baselines trained from scratch on the same split within the same budget (benchmarks/neu_baselines.py): a plain CNN,
   a ResNet and a ViT (transformers' model classes built from configs).
4. benchmarks/results/neu.json and neu.md: one row per model with its parameters, metrics, training wall time and
   machine. Rows can be rerun alone (`--only cnn`); a rerun replaces only its rows. Rows measured on another split
   are never mixed in: that is an error.

    .venv/bin/python benchmarks/neu.py                       # the full benchmark (about 1.5 hours on 2 CPU cores)
    .venv/bin/python benchmarks/neu.py --only cnn,vit        # some rows again
    .venv/bin/python benchmarks/neu.py --quick               # 8 images per class, tiny budgets: a smoke run

--quick writes into WORK (default runs/neu-bench-quick), never over the committed results.

No validation side: the `neu` config's settings were chosen on this split's test images. The three-seed protocol with a
validation side, and the NEU-SDD figure to quote, is benchmarks/lab_folder.py's; choose new settings there.

References: Srinivas et al. 2024 (MAEMI, Tables 21-22); Song & Yan 2013 (NEU surface defect database).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from maemi.data.datasets import file_sha256, scan_dataset
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.train.data import ImageCache

from finetune_memory import machine_info  # benchmarks/ (this script's folder is on sys.path)
from neu_baselines import BASELINES, DEFAULT_CONFIGS, train_and_evaluate
from neu_runs import (add as log_run, describe_wrong, log_entry, read_predictions, wrong_images,
                      write_table as write_runs_table)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ROOT = REPO.parent / "shared" / "data" / "neu-det"
ROWS = ("maemi",) + BASELINES
TEST_FRACTION, SEED, SHOTS = 0.2, 0, 5

# The paper's figures (Srinivas et al. 2024): Table 21, NEU-SDD top-1; Table 22, VQA scores across datasets.
PAPER_TOP1 = {"MAEMI": 0.985, "ViT": 0.962, "SqueezeNet": 0.955, "GoogLeNet": 0.936, "ResNet": 0.906}
PAPER_VQA = {"BLEU-4": 0.823, "ROUGE-L": 0.942, "METEOR": 0.992}
ROW_NAMES = {"cnn": ("plain CNN (8 conv layers)", None), "resnet": ("ResNet (transformers, basic blocks)", "ResNet"),
             "vit": ("ViT (transformers, patch 16)", "ViT")}

# Full runs: how much instruction data and evaluation; --quick shrinks everything to a smoke run.
# views: classification also averaged over the 8 flips and quarter turns of each test image (`maemi eval --views`),
# reported next to the single view; the baselines are scored on the single view only.
FULL = {"few_shot_records": 600, "eval_sample": 1000, "views": 8, "train_args": (), "baseline_epochs": None}
QUICK = {"few_shot_records": 12, "eval_sample": 24, "views": 2, "per_class": 8, "baseline_epochs": 2,
         "train_args": ("--epochs=1", "--warmstart_epochs=2", "--progress=false")}


def log(message: str) -> None:
    print(message, flush=True)


# ------------------------------------------------------------------------------------------------ split


def run_maemi(*args: str) -> float:
    """Run one `maemi` command as a user would type it; its wall time in seconds. A failure stops the benchmark."""
    log("$ maemi " + shlex.join(args))
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "maemi.cli", *args])  # OMP_NUM_THREADS (--threads) is inherited
    if result.returncode:
        sys.exit(f"maemi {args[0]} failed (exit status {result.returncode}); see its output above")
    return time.perf_counter() - started


def split_args(root: Path, work: Path) -> list[str]:
    return ["data", "split", str(root), "--out", str(work / "split-maemi.json"), "--val", "0", "--test",
            str(TEST_FRACTION), "--seed", str(SEED)]


def split_command(root: Path, work: Path) -> str:
    return "maemi " + shlex.join(split_args(root, work))


def make_split(root: Path, work: Path, per_class: int | None) -> tuple[Path, dict]:
    """WORK/split.json: `maemi data split`'s split with exact duplicates removed (the first path of each group kept),
    and with --quick a seeded per-class subset of it (about 20% of each class on the test side)."""
    run_maemi(*split_args(root, work))
    split = json.loads((work / "split-maemi.json").read_text())
    by_hash: dict[str, list[str]] = defaultdict(list)
    for rel in split["train"] + split["test"]:
        by_hash[file_sha256(root / rel)].append(rel)
    removed = sorted(rel for group in by_hash.values() for rel in sorted(group)[1:])
    dropped = set(removed)
    sides = {side: [rel for rel in split[side] if rel not in dropped] for side in ("train", "test")}
    labels = {s.relpath: s.label for s in scan_dataset(root)}
    if per_class is not None:
        rng = random.Random(SEED)
        n_test = max(1, round(per_class * TEST_FRACTION))
        for side, n in (("train", per_class - n_test), ("test", n_test)):
            by_class: dict[str, list[str]] = defaultdict(list)
            for rel in sides[side]:
                by_class[labels[rel]].append(rel)
            sides[side] = sorted(rel for rels in by_class.values() for rel in rng.sample(rels, min(n, len(rels))))
    counts = {side: dict(sorted(Counter(labels[rel] for rel in rels).items())) for side, rels in sides.items()}
    result = {"root": str(root), "seed": SEED, "test_fraction": TEST_FRACTION, "per_class": per_class,
              "removed_duplicates": removed, "counts": counts, **sides, "val": []}
    path = work / "split.json"
    atomic_write_json(path, result)
    log(f"split: train {len(sides['train'])}, test {len(sides['test'])}, {len(removed)} duplicate(s) removed -> {path}")
    return path, result


def split_fingerprint(split: dict) -> str:
    """Same train and test images, same fingerprint: rows are comparable only within one."""
    text = json.dumps({"train": split["train"], "test": split["test"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ MAEMI


def maemi_steps(root: Path, work: Path, settings: dict, train_args: list[str]) -> list[tuple[str, list[str]]]:
    """The `maemi` commands of the MAEMI row, as (step, arguments). A rerun reuses finished steps (teach and train
    resume), so a killed benchmark continues where it stopped."""
    folder, split = work / "maemi", str(work / "split.json")
    train_data, test_data, run = str(folder / "train.jsonl"), str(folder / "test.jsonl"), str(folder / "run")
    return [
        ("teach", ["teach", str(root), "--out", train_data, "--profile", "neu", "--split", split, "--subset", "train",
                   "--few-shot", str(settings["few_shot_records"]), "--shots", str(SHOTS), "--resume", "--quiet"]),
        ("teach", ["teach", str(root), "--out", test_data, "--profile", "neu", "--split", split, "--subset", "test",
                   "--resume", "--quiet"]),
        ("train", ["train", "--data", train_data, "--images", str(root), "--out", run, "--config", "neu", "--resume",
                   *settings["train_args"], *train_args]),
        ("eval", ["eval", run, "--data", test_data, "--shots", str(SHOTS), "--sample", str(settings["eval_sample"]),
                  "--views", str(settings["views"]), "--quiet"]),
    ]


def maemi_row(root: Path, work: Path, settings: dict, train_args: list[str]) -> dict:
    """Teach, train and evaluate MAEMI with the `maemi` commands; the row holds the commands that ran."""
    run = work / "maemi" / "run"
    run.parent.mkdir(parents=True, exist_ok=True)
    steps = maemi_steps(root, work, settings, train_args)
    seconds: dict[str, float] = defaultdict(float)
    for step, args in steps:
        seconds[step] += run_maemi(*args)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    missing = [key for key in ("zero_shot", "few_shot", "generation") if key not in metrics]
    if missing:
        sys.exit(f"{run / 'eval' / 'metrics.json'}: no {', '.join(missing)} section(s); the test split has no "
                 "classify or VQA records?")
    return {"model": "maemi", **model_params(run), "top1": metrics["zero_shot"]["top1"],
            "top5": metrics["zero_shot"]["top5"], "few_shot_top1": metrics["few_shot"]["top1"],
            "few_shot_top5": metrics["few_shot"]["top5"], "train_seconds": round(seconds["train"], 1),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}, "config": "neu",
            "train_args": [*settings["train_args"], *train_args],
            "best": json.loads((run / "run.json").read_text()).get("best"),
            "commands": [split_command(root, work)] + ["maemi " + shlex.join(args) for _, args in steps],
            "classification": metrics["zero_shot"], "few_shot": metrics["few_shot"],
            "classification_views": metrics.get("zero_shot_views"), "few_shot_views": metrics.get("few_shot_views"),
            "wrong": wrong_images(read_predictions(run / "eval" / "classifications.jsonl")),
            "vqa": vqa_scores(metrics), "eval_run": metrics["run"]}


def model_params(run: Path) -> dict:
    """All the model's weights (the frozen int8 text encoder included) and the vision encoder's alone."""
    from maemi.model import MAEMI

    model = MAEMI.from_pretrained(run)
    state = model.state_dict()
    return {"params": sum(t.numel() for t in state.values()),
            "vision_params": sum(t.numel() for k, t in state.items() if k.startswith("vision."))}


def vqa_scores(metrics: dict) -> dict:
    """BLEU-4, ROUGE-L and METEOR means: VQA questions, captions, all, and the VQA questions with shuffled images."""
    def pick(section: dict | None) -> dict | None:
        if not section:
            return None
        return {"n": section["n"], **{name: section[name]["mean"] for name in PAPER_VQA if name in section}}

    tasks = metrics["generation"]["groups"]["task"]
    shuffled = metrics.get("generation_shuffled", {}).get("groups", {}).get("task", {})
    return {"vqa": pick(tasks.get("vqa")), "caption": pick(tasks.get("caption")),
            "all": pick(metrics["generation"]["overall"]), "vqa_shuffled_images": pick(shuffled.get("vqa"))}


# ------------------------------------------------------------------------------------------------ baselines


def baseline_row(name: str, root: Path, split: dict, cache: ImageCache, budget_minutes: float,
                 epochs: int | None) -> dict:
    labels = {s.relpath: s.label for s in scan_dataset(root)}
    train = [(rel, labels[rel]) for rel in split["train"]]
    test = [(rel, labels[rel]) for rel in split["test"]]
    config = replace(DEFAULT_CONFIGS[name], budget_minutes=budget_minutes)
    if epochs is not None:
        config = replace(config, epochs=epochs)
    return train_and_evaluate(name, config, train, test, cache, log)


# ------------------------------------------------------------------------------------------------ results


def load_results(path: Path, fingerprint: str) -> dict:
    """The rows already measured on this split; an error for a file from another split (mixing them would be wrong)."""
    if not path.is_file():
        return {"rows": {}}
    try:
        results = json.loads(path.read_text())
        previous = results["split"]["fingerprint"]
        rows = results["rows"]
    except (ValueError, KeyError, TypeError) as error:
        sys.exit(f"{path}: not a NEU benchmark result ({error}); move it away or pass another --out")
    if previous != fingerprint:
        sys.exit(f"{path}: its rows were measured on another split ({previous}, this one is {fingerprint}); move it "
                 "away or pass another --out")
    return {"rows": rows}


def markdown(results: dict) -> str:
    rows, split = results["rows"], results["split"]
    lines = ["# NEU-SDD: MAEMI and baselines (paper Tables 21-22)", "",
             f"Split: {split['train']} training and {split['test']} test images, stratified, seed {SEED}, "
             f"{split['removed_duplicates']} exact duplicate(s) removed"
             + (f", subset of {split['per_class']} images per class (--quick)" if split["per_class"] else "")
             + f"; fingerprint `{split['fingerprint']}`. Written by `benchmarks/neu.py`.", "",
             "| model | params | top-1 | top-5 | macro F1 | training wall | machine | paper top-1 |",
             "|---|---:|---:|---:|---:|---:|---|---:|"]

    def machine(row: dict) -> str:
        m = row["machine"]
        # A CPU with native bf16 trains these rows ~1.4x as fast (machine_info). Rows from before machine_info recorded
        # it: a baseline that chose bf16 itself (config bf16 None) says it by its own bf16 field; otherwise unknown.
        chose = isinstance(row.get("config"), dict) and row["config"].get("bf16", False) is None
        native = m.get("native_bf16", row.get("bf16") if chose else None)
        bf16 = {True: ", native bf16", False: ", no native bf16"}.get(native, "")
        return f"{m['cpu']}{bf16}, {m['cpu_count']} cores, {row['threads']} thread(s), {m['date']}"

    def line(name: str, params: str, c: dict, row: dict, paper: float | None) -> str:
        s = row["train_seconds"]
        over = " (over budget)" if row.get("within_budget") is False else ""
        wall = (f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min") + over
        return (f"| {name} | {params} | {c['top1']:.3f} | {c['top5']:.3f} | {c['macro']['f1']:.3f} | {wall} | "
                f"{machine(row)} | {'' if paper is None else f'{paper:.3f}'} |")

    ordered = [(key, rows[key]) for key in ROWS if key in rows]
    for key, row in ordered:
        if key == "maemi":
            params = f"{row['params'] / 1e6:.1f} M ({row['vision_params'] / 1e6:.2f} M vision)"
            few_shot = f"MAEMI few-shot (K={row['few_shot'].get('shots', SHOTS)})"
            lines.append(line("MAEMI zero-shot", params, row["classification"], row, PAPER_TOP1["MAEMI"]))
            lines.append(line(few_shot, params, row["few_shot"], row, None))
            for title, c in (("MAEMI zero-shot", row.get("classification_views")),
                             (few_shot, row.get("few_shot_views"))):
                if c:  # rows written before the benchmark asked for --views have none
                    lines.append(line(f"{title}, {c['views']} views averaged", params, c, row, None))
        else:
            name, paper_key = ROW_NAMES[key]
            lines.append(line(name, f"{row['params'] / 1e6:.2f} M", row["classification"], row,
                              PAPER_TOP1.get(paper_key) if paper_key else None))
    for paper_only in ("SqueezeNet", "GoogLeNet"):
        lines.append(f"| {paper_only} (paper only) | | | | | | | {PAPER_TOP1[paper_only]:.3f} |")
    if rows.get("maemi", {}).get("wrong"):  # rows from before neu.py recorded them have none
        lines += ["", f"MAEMI's wrong test images (image -> predicted): {describe_wrong(rows['maemi']['wrong'])}."]

    if "maemi" in rows:
        vqa = rows["maemi"]["vqa"]
        lines += ["", "## Open-ended answers (MAEMI, test-split questions; paper Table 22)", "",
                  "| records | n | BLEU-4 | ROUGE-L | METEOR |", "|---|---:|---:|---:|---:|"]
        for key, label in (("vqa", "VQA questions"), ("vqa_shuffled_images", "VQA, shuffled images (control)"),
                           ("caption", "captions"), ("all", "all generated answers")):
            if vqa.get(key):
                s = vqa[key]
                lines.append(f"| {label} | {s['n']} | " + " | ".join(f"{s.get(m, float('nan')):.3f}" for m in PAPER_VQA)
                             + " |")
        lines.append("| paper (across datasets) | | " + " | ".join(f"{v:.3f}" for v in PAPER_VQA.values()) + " |")

    for key, row in ordered:
        sections = [("MAEMI zero-shot", row["classification"]), ("MAEMI few-shot", row["few_shot"])] \
            if key == "maemi" else [(ROW_NAMES[key][0], row["classification"])]
        for title, c in sections:
            lines += ["", f"## {title}: per class", "", "| class | precision | recall | F1 | support |",
                      "|---|---:|---:|---:|---:|"]
            lines += [f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
                      for name, v in c["per_class"].items()]
            lines += ["", "Confusion matrix (rows true, columns predicted):", "",
                      "| true \\ predicted | " + " | ".join(c["classes"]) + " |",
                      "|---|" + "---:|" * len(c["classes"])]
            lines += [f"| {name} | " + " | ".join(str(n) for n in counts) + " |"
                      for name, counts in zip(c["classes"], c["confusion_matrix"])]
    if "maemi" in rows:
        lines += ["", "MAEMI commands:", "", "```bash", *rows["maemi"]["commands"], "```"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="NEU-SDD class folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for neu.json and neu.md (default: benchmarks/results; with --quick: WORK)")
    parser.add_argument("--work", type=Path, default=None,
                        help="split, instruction data and the MAEMI run (default: runs/neu-bench[-quick])")
    parser.add_argument("--only", default=",".join(ROWS), help=f"comma-separated rows to (re)run: {', '.join(ROWS)}")
    parser.add_argument("--quick", action="store_true", help="a small per-class subset and tiny budgets")
    parser.add_argument("--per-class", type=int, default=None, help="with --quick: images per class (default 8)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="training time allowed per baseline")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="extra `maemi train` setting, e.g. --train-arg=--epochs=2 (repeatable)")
    parser.add_argument("--fresh", action="store_true", help="delete WORK/maemi first (no reuse of teach or train)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for every step (0: torch's default). On a CPU shared with another job, "
                             "threads beyond the free cores make each step several times slower (measured)")
    args = parser.parse_args()

    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in only if name not in ROWS]
    if unknown or not only:
        parser.error(f"--only: unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    if not args.root.is_dir():
        sys.exit(f"{args.root}: NEU-SDD not found (pass --root)")
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the `maemi` subprocesses
        torch.set_num_threads(args.threads)
    settings = dict(QUICK if args.quick else FULL)
    per_class = (args.per_class or QUICK["per_class"]) if args.quick else None
    work = args.work or REPO / "runs" / ("neu-bench-quick" if args.quick else "neu-bench")
    out = args.out or (work if args.quick else HERE / "results")
    work.mkdir(parents=True, exist_ok=True)

    split_path, split = make_split(args.root, work, per_class)
    fingerprint = split_fingerprint(split)
    marker = work / "maemi" / "split.fingerprint"
    if args.fresh or (marker.is_file() and marker.read_text().strip() != fingerprint):
        shutil.rmtree(work / "maemi", ignore_errors=True)  # its data and run belong to another split
    atomic_write_text(marker, fingerprint + "\n")
    results_path = out / "neu.json"
    results = load_results(results_path, fingerprint)
    results["split"] = {"fingerprint": fingerprint, "train": len(split["train"]), "test": len(split["test"]),
                        "removed_duplicates": len(split["removed_duplicates"]), "per_class": per_class,
                        "counts": split["counts"], "file": str(split_path),
                        "images": {"train": split["train"], "test": split["test"]}}  # a clean clone can compare
    results["benchmark"] = "neu"
    results["command"] = "python benchmarks/neu.py " + shlex.join(sys.argv[1:])
    results["threads"] = torch.get_num_threads()

    cache = None
    for name in ROWS:
        if name not in only:
            continue
        started = time.perf_counter()
        log(f"\n=== {name} ===")
        if name == "maemi":
            row = maemi_row(args.root, work, settings, args.train_arg)
        else:
            cache = cache or ImageCache(args.root, DEFAULT_CONFIGS[name].image_size)
            row = baseline_row(name, args.root, split, cache, args.budget_minutes, settings["baseline_epochs"])
        row["row_seconds"] = round(time.perf_counter() - started, 1)
        row["within_budget"] = row["train_seconds"] <= args.budget_minutes * 60
        row["machine"] = machine_info()
        row["threads"] = torch.get_num_threads()
        row["command"] = results["command"]  # rows of one table may come from different runs (--only)
        results["rows"][name] = row
        atomic_write_json(results_path, results)  # each finished row is kept, even if a later one fails
        atomic_write_text(out / "neu.md", markdown(results))
        if name == "maemi" and not args.quick:  # every full run goes into the log, not only the committed one
            log(f"logged {log_run(log_entry(results))}; wrote {write_runs_table()}")
        log(f"{name}: top-1 {row['top1']:.3f}, top-5 {row['top5']:.3f}, trained in {row['train_seconds']:.0f} s")
    print("\n" + markdown(results))
    log(f"wrote {results_path} and {out / 'neu.md'}")


if __name__ == "__main__":
    main()
