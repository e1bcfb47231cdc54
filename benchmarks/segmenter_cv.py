"""Benchmark: the learned segmenter fine-tuned on annotated real images, cross-validated by specimen.

A lab with a few dozen micrographs whose objects an expert has boxed can fine-tune the segmenter on them
(`python -m maemi.measure.train_segmenter --init ... --finetune-on FOLDER...`). What that buys on images it was not
tuned on is measured here, on the two real sets of measure_real.py. Each set is split into folds by specimen: a STEM
image's specimen is its name without the trailing number (Pd_silica1-4 are one), a nanowire tile's is the micrograph
it was cut from, so no model sees another image of the specimen it is scored on. For each fold and seed the given
weights are fine-tuned on the other folds of both sets, and each image is scored once, by the model that did not
see its specimen. Beside it, on the same images: the weights it started from and `auto`.

Prints a table and writes benchmarks/results/segmenter_cv.{json,md}.

    .venv/bin/python benchmarks/segmenter_cv.py [--folds 3] [--seeds 0,1] [--steps 2000] [--sets stem,wires]
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from maemi.measure.boxes import annotated_images
from maemi.measure.segmenter import DEFAULT_WEIGHTS, Segmenter
from maemi.measure.train_segmenter import TrainConfig, train

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402
from measure_real import (SHARED, STEM, WIRES, _median, _pct, bench_stem, bench_wires, methods,  # noqa: E402
                          source_state, summary, wire_cases, write_results)


def specimen(path: Path) -> str:
    """A STEM image's specimen (the name less its number) or a tile's micrograph (the name less _x<i>_y<j>)."""
    return re.sub(r"(_x\d+_y\d+|\d+)$", "", path.stem)


def specimen_folds(cases, k: int) -> list[list[int]]:
    """Indices of cases in k folds, whole specimens to a fold: the largest specimens first, each to the fold with
    the fewest images so far (ties: the first)."""
    groups: dict[str, list[int]] = {}
    for i, case in enumerate(cases):
        groups.setdefault(specimen(case[0]), []).append(i)
    folds: list[list[int]] = [[] for _ in range(k)]
    for name in sorted(groups, key=lambda g: (-len(groups[g]), g)):
        min(folds, key=len).extend(groups[name])
    return [sorted(f) for f in folds]


def yolo_folder(cases, root: Path) -> Path:
    """A YOLO folder (images/ as links, labels/ written) of (image, boxes in pixels, ...) cases."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for path, boxes, *_ in cases:
        path = Path(path).resolve()
        (root / "images" / path.name).symlink_to(path)
        with Image.open(path) as im:
            w, h = im.size
        lines = [f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}" for x, y, bw, bh in boxes]
        (root / "labels" / f"{path.stem}.txt").write_text("\n".join(lines) + "\n")
    return root


def stem_summary(rows: list[dict]) -> dict:
    return {"count": summary([r["count_error"] for r in rows], 0.20),
            "size": summary([r["size_error"] for r in rows], 0.15),
            "precision_median": _median([r["precision"] for r in rows]),
            "recall_median": _median([r["recall"] for r in rows])}


def wire_summary(rows: list[dict]) -> dict:
    return {key: summary([r[f"{key}_error"] for r in rows], 0.20) for key in ("nw", "parasitic", "total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--sets", default="stem,wires", help="the sets fine-tuned on (both are always scored)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--real-share", type=float, default=TrainConfig.real_share)
    ap.add_argument("--init", default=DEFAULT_WEIGHTS)
    ap.add_argument("--keep", type=Path, default=None, help="keep each fold's weights here (seedS_foldK.safetensors)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "segmenter_cv")
    args = ap.parse_args()
    if not (args.shared / STEM / "images").is_dir() or not (args.shared / WIRES / "boxes.csv").is_file():
        print(f"skipped: the annotated sets are not under {args.shared.resolve()}")
        return
    sets = {"stem": annotated_images(args.shared / STEM), "wires": wire_cases(args.shared / WIRES, None)}
    tuned_on = args.sets.split(",")
    folds = {name: specimen_folds(cases, args.folds) for name, cases in sets.items()}
    benches = {"stem": (bench_stem, stem_summary), "wires": (bench_wires, wire_summary)}
    results = {"machine": machine_info(), "uncommitted_src": source_state(),
               "folds": {name: [[sets[name][i][0].name for i in f] for f in fs] for name, fs in folds.items()},
               "settings": {"steps": args.steps, "lr": args.lr, "real_share": args.real_share,
                            "init": Path(args.init).name, "tuned_on": tuned_on},
               "baseline": {}, "runs": []}
    available, _ = methods(["auto", "learned"], args.init)
    for method, fn in available.items():
        results["baseline"][method] = {}
        for name, (bench, summarise) in benches.items():
            rows = bench(sets[name], fn, None, method)["rows"]
            results["baseline"][method][name] = {"rows": rows, **summarise(rows)}
    for seed in (int(s) for s in args.seeds.split(",")):
        rows = {name: [None] * len(cases) for name, cases in sets.items()}
        seconds = []
        for k in range(args.folds):
            with tempfile.TemporaryDirectory() as tmp:
                train_folders = tuple(
                    str(yolo_folder([sets[name][i] for j, f in enumerate(folds[name]) if j != k for i in f],
                                    Path(tmp) / name)) for name in tuned_on)
                weights = str(Path(tmp) / "finetuned.safetensors")
                print(f"seed {seed} fold {k}: fine-tuning on {', '.join(tuned_on)}", flush=True)
                train(weights, TrainConfig(steps=args.steps, lr=args.lr, seed=seed, init=args.init,
                                           finetune_on=train_folders, real_share=args.real_share),
                      Segmenter.load(args.init).cfg)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(weights, args.keep / f"seed{seed}_fold{k}.safetensors")
                model = Segmenter.load(weights)
                seconds.append(float(model.metadata["train_seconds"]))
                for name, (bench, _) in benches.items():
                    held_out = folds[name][k]
                    scored = bench([sets[name][i] for i in held_out], model.instances, None, "finetuned")["rows"]
                    for i, row in zip(held_out, scored):
                        rows[name][i] = row
        results["runs"].append({"seed": seed, "train_seconds": seconds, **{
            name: {"rows": rows[name], **benches[name][1](rows[name])} for name in sets}})
    write_results(args.out, results, markdown(results))


def markdown(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = ["# Learned segmenter fine-tuned on annotated real images, cross-validated by specimen "
             "(benchmarks/segmenter_cv.py)", "",
             f"Commit {m.get('commit')}, {m.get('cpu')}. Fine-tuned on {' and '.join(s['tuned_on'])} from {s['init']}: "
             f"{s['steps']} steps at lr {s['lr']}, {s['real_share']:.0%} of each batch real crops (boxes drawn as "
             "their inscribed ellipses), the rest synthetic scenes. Every image is scored by the model that did not "
             "see its specimen; folds: " + " | ".join(
                 f"{name}: " + "; ".join(", ".join(f) for f in fs) for name, fs in results["folds"].items()) + ".", ""]
    if results.get("uncommitted_src"):
        lines += [f"Run with uncommitted changes to: {', '.join(results['uncommitted_src'])}.", ""]
    lines += ["| method | STEM count median error | STEM images within 20% | STEM mean size within 15% | "
              "STEM precision / recall | nanowire / parasitic / all count median error |",
              "|---|---|---|---|---|---|"]

    def row(label: str, r: dict) -> None:
        st, w = r["stem"], r["wires"]
        lines.append(f"| {label} | {_pct(st['count']['median_error'])} | {_pct(st['count']['within_20pct'])} | "
                     f"{_pct(st['size']['within_15pct'])} | {_pct(st['precision_median'])} / "
                     f"{_pct(st['recall_median'])} | {_pct(w['nw']['median_error'])} / "
                     f"{_pct(w['parasitic']['median_error'])} / {_pct(w['total']['median_error'])} |")

    for name, r in results["baseline"].items():
        row(name if name != "learned" else f"learned, {s['init']} (not fine-tuned)", r)
    for run in results["runs"]:
        row(f"learned, fine-tuned, seed {run['seed']} (out of fold)", run)
    if len(results["runs"]) > 1:
        med = [r["stem"]["count"]["median_error"] for r in results["runs"]]
        lines += ["", f"Over {len(med)} seeds, fine-tuned STEM count median error: mean {np.mean(med):.0%}, "
                  f"range {min(med):.0%}-{max(med):.0%}."]
    seconds = [t for run in results["runs"] for t in run["train_seconds"]]
    lines += ["", f"Fine-tuning took {min(seconds):.0f}-{max(seconds):.0f} s per fold on this CPU.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
