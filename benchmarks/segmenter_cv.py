"""Benchmark: the learned segmenter fine-tuned on annotated real images, cross-validated by specimen.

A lab with a few dozen micrographs whose particles an expert has boxed can fine-tune the segmenter on them
(`python -m maemi.measure.train_segmenter --init ... --finetune-on FOLDER`). What that buys on images it was not
tuned on is measured here: the annotated images are split into folds by specimen (the name without its trailing
number: Pd_silica1-4 are one specimen, so no fold sees another image of the specimen it is scored on), the shipped
weights are fine-tuned on all folds but one for each seed, and each image is scored once, by the model that did not
see its specimen. Beside it, on the same images: the shipped weights (synthetic scenes only) and `auto`. The nanowire
tiles, never trained on, are scored by every fine-tuned model too: fine-tuning on particles must not cost the wires.

Prints a table and writes benchmarks/results/segmenter_cv.{json,md}.

    .venv/bin/python benchmarks/segmenter_cv.py [--folds 3] [--seeds 0,1] [--steps 2000]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from maemi.measure.boxes import annotated_images
from maemi.measure.segmenter import DEFAULT_WEIGHTS, Segmenter, SegmenterConfig
from maemi.measure.train_segmenter import TrainConfig, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402
from measure_real import (SHARED, STEM, WIRES, _pct, bench_stem, bench_wires, methods, source_state,  # noqa: E402
                          summary, wire_cases, write_results)


def specimen(path: Path) -> str:
    return re.sub(r"\d+$", "", path.stem)


def specimen_folds(cases, k: int) -> list[list[int]]:
    """Indices of cases in k folds, whole specimens to a fold: the largest specimens first, each to the fold with
    the fewest images so far (ties: the first)."""
    groups: dict[str, list[int]] = {}
    for i, (path, _) in enumerate(cases):
        groups.setdefault(specimen(path), []).append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        min(folds, key=len).extend(groups[name])
    return [sorted(f) for f in folds]


def link_folder(cases, indices: list[int], root: Path) -> Path:
    """A YOLO folder (images/, labels/) of symbolic links to the chosen cases' files."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in indices:
        image = cases[i][0].resolve()
        (root / "images" / image.name).symlink_to(image)
        (root / "labels" / f"{image.stem}.txt").symlink_to(image.parent.parent / "labels" / f"{image.stem}.txt")
    return root


def summarise_stem(rows: list[dict]) -> dict:
    values = lambda key: [r[key] for r in rows if r[key] is not None]  # noqa: E731
    return {"count": summary([r["count_error"] for r in rows], 0.20),
            "size": summary([r["size_error"] for r in rows], 0.15),
            "precision_median": float(np.median(values("precision"))),
            "recall_median": float(np.median(values("recall")))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--real-share", type=float, default=TrainConfig.real_share)
    ap.add_argument("--init", default=DEFAULT_WEIGHTS)
    ap.add_argument("--keep", type=Path, default=None, help="keep each fold's weights here (seedS_foldK.safetensors)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "segmenter_cv")
    args = ap.parse_args()
    stem_root = args.shared / STEM
    if not (stem_root / "images").is_dir():
        print(f"skipped: no annotated STEM images under {args.shared.resolve()}")
        return
    cases = annotated_images(stem_root)
    wires = wire_cases(args.shared / WIRES, None) if (args.shared / WIRES / "boxes.csv").is_file() else []
    folds = specimen_folds(cases, args.folds)
    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"machine": machine_info(), "uncommitted_src": source_state(), "folds": [
        [cases[i][0].name for i in f] for f in folds], "settings": {
        "steps": args.steps, "lr": args.lr, "real_share": args.real_share, "init": Path(args.init).name},
        "runs": []}
    available, _ = methods(["auto", "learned"], args.init)
    baseline = {name: bench_stem(cases, method, None, name) for name, method in available.items()}
    results["baseline"] = {name: {"rows": r["rows"], **summarise_stem(r["rows"])} for name, r in baseline.items()}
    for seed in seeds:
        rows, wire_runs, seconds = [None] * len(cases), [], []
        for k, held_out in enumerate(folds):
            with tempfile.TemporaryDirectory() as tmp:
                train_idx = [i for f in folds if f is not held_out for i in f]
                folder = link_folder(cases, train_idx, Path(tmp) / "train")
                weights = str(Path(tmp) / "finetuned.safetensors")
                tc = TrainConfig(steps=args.steps, lr=args.lr, seed=seed, init=args.init, finetune_on=str(folder),
                                 real_share=args.real_share)
                print(f"seed {seed} fold {k}: fine-tuning on {len(train_idx)} images, scoring {len(held_out)}",
                      flush=True)
                train(weights, tc, Segmenter.load(args.init).cfg if args.init else SegmenterConfig())
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(weights, args.keep / f"seed{seed}_fold{k}.safetensors")
                model = Segmenter.load(weights)
                seconds.append(float(model.metadata["train_seconds"]))
                scored = bench_stem([cases[i] for i in held_out], model.instances, None, "finetuned")
                for i, row in zip(held_out, scored["rows"]):
                    rows[i] = row
                if wires:
                    wire_runs.append(bench_wires(wires, model.instances, None, "finetuned"))
        run = {"seed": seed, "rows": rows, "train_seconds": seconds, **summarise_stem(rows)}
        if wire_runs:
            run["wires"] = [{key: w[key] for key in ("nw", "parasitic", "total")} for w in wire_runs]
        results["runs"].append(run)
    write_results(args.out, results, markdown(results))


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = ["# Learned segmenter fine-tuned on annotated STEM images, cross-validated by specimen "
             "(benchmarks/segmenter_cv.py)", "",
             f"Commit {m.get('commit')}, {m.get('cpu')}. {len(results['folds'])} folds by specimen: "
             + "; ".join(", ".join(f) for f in results["folds"]) + ".",
             f"Fine-tuning: from {s['init']}, {s['steps']} steps at lr {s['lr']}, {s['real_share']:.0%} of each batch "
             "real crops, the rest synthetic scenes. Every image is scored by the model that did not see its specimen.",
             ""]
    if results.get("uncommitted_src"):
        lines += [f"Run with uncommitted changes to: {', '.join(results['uncommitted_src'])}.", ""]
    lines += ["| method | STEM count median error | images within 20% | mean size within 15% | "
              "size median error | precision / recall (median) |", "|---|---|---|---|---|---|"]

    def row(name: str, r: dict) -> None:
        lines.append(f"| {name} | {_pct(r['count']['median_error'])} | {_pct(r['count']['within_20pct'])} | "
                     f"{_pct(r['size']['within_15pct'])} | {_pct(r['size']['median_error'])} | "
                     f"{_pct(r['precision_median'])} / {_pct(r['recall_median'])} |")

    for name, r in results["baseline"].items():
        row(name if name != "learned" else "learned, shipped (synthetic only)", r)
    for run in results["runs"]:
        row(f"learned, fine-tuned (seed {run['seed']}, out of fold)", run)
    if len(results["runs"]) > 1:
        med = [r["count"]["median_error"] for r in results["runs"]]
        lines += ["", f"Over seeds, fine-tuned STEM count median error: mean {np.mean(med):.0%}, "
                  f"spread {min(med):.0%}-{max(med):.0%}."]
    wires = [(run["seed"], k, w) for run in results["runs"] for k, w in enumerate(run.get("wires", []))]
    if wires:
        lines += ["", "Nanowire tiles (never trained on), each fold's model: nanowire / parasitic / all objects "
                  "median count error: " + "; ".join(
                      f"seed {seed} fold {k} {_pct(w['nw']['median_error'])} / {_pct(w['parasitic']['median_error'])}"
                      f" / {_pct(w['total']['median_error'])}" for seed, k, w in wires) + "."]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
