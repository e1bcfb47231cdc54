"""Benchmark: a lab's own labelled folder, MAEMI with the shipped config against a plain CNN, over seeds.

The question a lab asks before it trusts MAEMI with its own images: trained with the commands the README gives and no
hand-tuning, does it classify as well as a plain supervised CNN trained on the same images? For each seed:

1. `maemi data split ROOT --val 0.1 --test 0.2 --seed S [--group-pattern RE]`: stratified, the seed draws the split.
2. MAEMI: `maemi teach` the train, val and test sides; `maemi train --val` with `--config CONFIG --seed=S` (every
   choice the trainer makes, it makes on the validation side); `maemi eval` reads the test side once.
3. The plain CNN of benchmarks/neu_baselines.py on the same training side, at the same input size as MAEMI's
   (the training images' median shorter side up to 128 px, the rule of `image_size_from_images`), scored on the test side.

Every row of every seed is kept in benchmarks/results/lab_NAME.json; lab_NAME.md shows each run and the mean and
standard deviation over seeds. Seeds can run as parallel invocations (`--seeds 1` beside `--seeds 2`, each with
`--threads 1`): rows are merged under a lock. A rerun reuses finished steps (teach and train resume).
`--variant NAME` trains one of benchmarks/ablation.py's variants instead of the shipped model (rows `maemi:NAME/seedS`,
on the seed's same split and records), so the ablation runs on a labelled folder too.

    .venv/bin/python benchmarks/lab_folder.py --root ../shared/data/neu-det --name neu --profile neu
    .venv/bin/python benchmarks/nanowire_crops.py --out runs/nanowire-crops
    .venv/bin/python benchmarks/lab_folder.py --root runs/nanowire-crops --name nanowires --profile generic \\
        --group-pattern '^(\\d+nm_\\d+)_'
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from maemi.data.datasets import scan_dataset
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.train.config import load_train_config
from maemi.train.data import ImageCache
from maemi.train.trainer import image_size_for

from ablation import VARIANTS  # benchmarks/ (this script's folder is on sys.path)
from demo_seeds import mean_std
from finetune_memory import machine_info
from neu import model_params, run_maemi
from neu_baselines import DEFAULT_CONFIGS, train_and_evaluate

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROWS = ("maemi", "cnn")
VAL_FRACTION, TEST_FRACTION, SHOTS, FEW_SHOT_RECORDS, GENERATION_SAMPLE = 0.1, 0.2, 5, 600, 200


def log(message: str) -> None:
    print(message, flush=True)


def split(root: Path, seed_dir: Path, seed: int, group_pattern: str | None) -> tuple[Path, dict, str]:
    path = seed_dir / "split.json"
    args = ["data", "split", str(root), "--out", str(path), "--val", str(VAL_FRACTION), "--test", str(TEST_FRACTION),
            "--seed", str(seed)] + (["--group-pattern", group_pattern] if group_pattern else [])
    run_maemi(*args)
    return path, json.loads(path.read_text()), "maemi " + shlex.join(args)


def maemi_row(root: Path, seed_dir: Path, split_path: Path, seed: int, args: argparse.Namespace) -> dict:
    data = {side: str(seed_dir / f"{side}.jsonl") for side in ("train", "val", "test")}
    run = seed_dir / ("run" if args.variant == "shipped" else f"run-{args.variant}")
    steps = [("teach", ["teach", str(root), "--out", data["train"], "--profile", args.profile, "--split",
                        str(split_path), "--subset", "train", "--few-shot", str(FEW_SHOT_RECORDS), "--shots",
                        str(SHOTS), "--resume", "--quiet"])]
    steps += [("teach", ["teach", str(root), "--out", data[side], "--profile", args.profile, "--split",
                         str(split_path), "--subset", side, "--resume", "--quiet"]) for side in ("val", "test")]
    steps += [("train", ["train", "--data", data["train"], "--val", data["val"], "--images", str(root), "--out",
                         str(run), "--config", args.config, f"--seed={seed}", "--resume", "--progress=false",
                         *VARIANTS[args.variant], *args.train_arg]),
              ("eval", ["eval", str(run), "--data", data["test"], "--shots", str(SHOTS), "--sample",
                        str(GENERATION_SAMPLE), "--quiet"])]
    seconds = {"teach": 0.0, "train": 0.0, "eval": 0.0}
    for step, command in steps:
        seconds[step] += run_maemi(*command)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    run_info = json.loads((run / "run.json").read_text())
    meteor = lambda key: metrics.get(key, {}).get("overall", {}).get("METEOR", {}).get("mean")  # noqa: E731
    return {"model": "maemi", "variant": args.variant, **model_params(run), "top1": metrics["zero_shot"]["top1"],
            "macro_f1": metrics["zero_shot"]["macro"]["f1"], "few_shot_top1": metrics["few_shot"]["top1"],
            "few_shot_macro_f1": metrics["few_shot"]["macro"]["f1"], "meteor": meteor("generation"),
            "meteor_shuffled": meteor("generation_shuffled"),
            "image_size": run_info.get("image_size"),
            "train_seconds": round(seconds["train"], 1), "seconds": {k: round(v, 1) for k, v in seconds.items()},
            "commands": ["maemi " + shlex.join(command) for _, command in steps],
            "classification": metrics["zero_shot"], "few_shot": metrics["few_shot"]}


def cnn_row(root: Path, split_data: dict, seed: int, args: argparse.Namespace) -> dict:
    labels = {sample.relpath: sample.label for sample in scan_dataset(root)}
    vision = load_train_config(args.config).model.vision  # the same input-size rule and bounds as MAEMI's
    size = image_size_for([{"images": [rel]} for rel in split_data["train"]], root, vision.image_size,
                          vision.patch_size)
    config = replace(DEFAULT_CONFIGS["cnn"], seed=seed, image_size=size)
    if args.cnn_epochs:
        config = replace(config, epochs=args.cnn_epochs)
    row = train_and_evaluate("cnn", config, [(rel, labels[rel]) for rel in split_data["train"]],
                             [(rel, labels[rel]) for rel in split_data["test"]], ImageCache(root, size), log)
    row["image_size"] = size
    row["macro_f1"] = row["classification"]["macro"]["f1"]
    return row


# ------------------------------------------------------------------------------------------------ results


def summary(runs: dict) -> dict:
    """Per model and metric: mean, sample standard deviation and n over the seeds measured."""
    out: dict = {}
    for model in dict.fromkeys(key.split("/")[0] for key in sorted(runs)):  # maemi, maemi:VARIANT, cnn
        rows = [row for key, row in sorted(runs.items()) if key.startswith(model + "/")]
        for metric in ("top1", "macro_f1", "few_shot_top1", "meteor", "meteor_shuffled", "train_seconds"):
            values = [row[metric] for row in rows if row.get(metric) is not None]
            if values:
                out.setdefault(model, {})[metric] = {**mean_std(values), "n": len(values)}
    return out


def markdown(results: dict) -> str:
    name, runs, s = results["name"], results["runs"], results["summary"]

    def cell(model: str, metric: str, scale: float = 1.0, digits: int = 3) -> str:
        m = s.get(model, {}).get(metric)
        if not m:
            return ""
        std = "" if m["std"] is None else f" ± {m['std'] * scale:.{digits}f}"
        return f"{m['mean'] * scale:.{digits}f}{std}"

    lines = [f"# A lab's labelled folder: MAEMI against a plain CNN ({name})", "",
             f"Root `{results['root']}`; split per seed: `maemi data split --val {VAL_FRACTION} --test {TEST_FRACTION}`"
             + (f" with `--group-pattern '{results['group_pattern']}'`" if results.get("group_pattern") else "")
             + f"; MAEMI taught with `--profile {results['profile']}` and trained with `--config {results['config']}`"
             " and the validation side; the test side read once per row. Written by `benchmarks/lab_folder.py`.", "",
             "| model | seeds | top-1 | macro F1 | few-shot top-1 | METEOR (shuffled images) | training |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    titles = {"maemi": "MAEMI zero-shot", "cnn": "plain CNN (8 conv layers)",
              **{f"maemi:{v}": f"MAEMI zero-shot, ablation: {v}" for v in VARIANTS}}
    for model, title in titles.items():
        if model in s:
            meteor = (f"{cell(model, 'meteor')} ({cell(model, 'meteor_shuffled')})"
                      if "meteor" in s[model] else "")
            lines.append(f"| {title} | {s[model]['top1']['n']} | {cell(model, 'top1')} | {cell(model, 'macro_f1')} | "
                         f"{cell(model, 'few_shot_top1')} | {meteor} | {cell(model, 'train_seconds', 1 / 60, 1)} min |")
    lines += ["", "Mean ± standard deviation over seeds. Each run:", "",
              "| run | split | train / val / test | input px | top-1 | macro F1 | few-shot top-1 | training | threads "
              "| machine |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, row in sorted(runs.items()):
        few = f"{row['few_shot_top1']:.3f}" if row.get("few_shot_top1") is not None else ""
        m = row["machine"]
        lines.append(f"| {key} | `{row['split_fingerprint']}` | {row['split_sizes']} | {row.get('image_size', '')} | "
                     f"{row['top1']:.3f} | {row['macro_f1']:.3f} | {few} | {row['train_seconds'] / 60:.1f} min | "
                     f"{row['threads']} | {m['cpu']}, {m['date']}, {m.get('commit')} |")
    return "\n".join(lines) + "\n"


def merge_row(out: Path, name: str, key: str, row: dict, header: dict) -> dict:
    """Add one row to out/lab_NAME.json and rewrite lab_NAME.md, under a lock (seeds run as parallel invocations)."""
    path = out / f"lab_{name}.json"
    with open(out / f".lab_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
        previous = results["runs"].get(key)
        if previous and previous["split_fingerprint"] != row["split_fingerprint"]:
            sys.exit(f"{path}: {key} was measured on another split; move the file away or pass another --out")
        results.update(header)
        results["runs"][key] = row
        results["summary"] = summary(results["runs"])
        atomic_write_json(path, results)
        atomic_write_text(out / f"lab_{name}.md", markdown(results))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="class folders, root/<class>/<image>")
    parser.add_argument("--name", required=True, help="names the results: benchmarks/results/lab_NAME.{json,md}")
    parser.add_argument("--profile", default="generic", help="`maemi teach --profile` (question set)")
    parser.add_argument("--config", default="neu", help="`maemi train --config`")
    parser.add_argument("--group-pattern", default=None, help="`maemi data split --group-pattern`")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (each draws its own split)")
    parser.add_argument("--only", default=",".join(ROWS), help=f"rows to (re)run: {', '.join(ROWS)}")
    parser.add_argument("--work", type=Path, default=None, help="default: runs/lab-NAME")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of lab_NAME.{json,md}")
    parser.add_argument("--train-arg", action="append", default=[], help="extra `maemi train` setting (repeatable)")
    parser.add_argument("--variant", default="shipped", choices=sorted(VARIANTS),
                        help="the MAEMI row's ablation variant (benchmarks/ablation.py)")
    parser.add_argument("--cnn-epochs", type=int, default=0, help="the CNN's planned epochs (0: its default)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for every step (0: torch's default)")
    args = parser.parse_args()

    only = [row.strip() for row in args.only.split(",") if row.strip()]
    if not only or any(row not in ROWS for row in only):
        parser.error(f"--only: choose from {', '.join(ROWS)}")
    if not args.root.is_dir():
        sys.exit(f"{args.root}: not a folder")
    load_train_config(args.config)  # a wrong name fails here, not after the teaching
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # for the `maemi` subprocesses
        torch.set_num_threads(args.threads)
    work = args.work or REPO / "runs" / f"lab-{args.name}"
    args.out.mkdir(parents=True, exist_ok=True)
    header = {"name": args.name, "root": str(args.root), "profile": args.profile, "config": args.config,
              "group_pattern": args.group_pattern, "benchmark": "lab_folder"}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        seed_dir = work / f"seed{seed}"
        seed_dir.mkdir(parents=True, exist_ok=True)
        split_path, split_data, split_command = split(args.root, seed_dir, seed, args.group_pattern)
        for model in only:
            log(f"\n=== {model}, seed {seed} ===")
            started = time.perf_counter()
            row = (maemi_row(args.root, seed_dir, split_path, seed, args) if model == "maemi"
                   else cnn_row(args.root, split_data, seed, args))
            row.update({"seed": seed, "split_command": split_command, "split_fingerprint": split_fingerprint(split_data),
                        "split_sizes": " / ".join(str(len(split_data[side])) for side in ("train", "val", "test")),
                        "row_seconds": round(time.perf_counter() - started, 1), "threads": torch.get_num_threads(),
                        "machine": machine_info(), "command": "python benchmarks/lab_folder.py " + shlex.join(sys.argv[1:])})
            key = f"maemi:{args.variant}" if model == "maemi" and args.variant != "shipped" else model
            merge_row(args.out, args.name, f"{key}/seed{seed}", row, header)
            log(f"{model}, seed {seed}: top-1 {row['top1']:.3f}, trained in {row['train_seconds']:.0f} s")
    print(markdown(json.loads((args.out / f"lab_{args.name}.json").read_text())))


def split_fingerprint(split_data: dict) -> str:
    text = json.dumps({side: split_data[side] for side in ("train", "val", "test")}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


if __name__ == "__main__":
    main()
