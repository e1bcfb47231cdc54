"""Benchmark: MAEMI's ViT alone on the NEU-SDD labels (the warm start of `maemi train --config neu`), scored on the
test split after every epoch. It sizes the `neu` config's vision settings: a full MAEMI row (benchmarks/neu.py) takes
half an hour, this 15 minutes on one thread, and its per-epoch curve shows how far the last epochs scatter.

    .venv/bin/python benchmarks/neu_warmstart.py                                  # the shipped neu config
    .venv/bin/python benchmarks/neu_warmstart.py --model.vision.local_depth=0 --model.vision.global_depth=4
    .venv/bin/python benchmarks/neu_warmstart.py --warmstart_lr=5e-4 --seed=1 --threads 1
    .venv/bin/python benchmarks/neu_warmstart.py --per-class 8 --warmstart_epochs=2 --out /tmp/ws   # a smoke run

Any `maemi train --config neu` setting can be overridden (`--key=value`); the split is benchmarks/neu.py's (written
to WORK/split.json). The ViT is initialised from its own seed here, not inside the whole model, so its figures are
not bit-identical to a `maemi train` warm start of the same config. Each run replaces its own row (keyed by the
overrides) in benchmarks/results/neu_warmstart.{json,md}.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path

import torch

from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.model.vision import VisionEncoder
from maemi.seeds import derived_seed
from maemi.train.config import load_train_config
from maemi.train.data import ImageCache
from maemi.train.warmstart import warm_start_vision

from finetune_memory import machine_info  # benchmarks/ (this script's folder is on sys.path)
from neu import DEFAULT_ROOT, REPO, load_results, make_split, split_fingerprint

HERE = Path(__file__).resolve().parent
LAST = 10  # epochs whose test accuracy is summarised: the scatter at the end of the schedule


def label_records(paths: list[str]) -> list[dict]:
    return [{"images": [path], "label": path.split("/")[0]} for path in paths]  # NEU: class folder / file


def markdown(results: dict) -> str:
    lines = ["# NEU-SDD: MAEMI's ViT alone on the labels (warm start), test split", "",
             f"Split {results['split']['fingerprint']}: {results['split']['train']} training, "
             f"{results['split']['test']} test images. Test top-1 after the last epoch, and its lowest and highest over "
             f"the last {LAST} epochs.", "",
             "| overrides of `--config neu` | params | epochs | threads | wall | last | last-10 min | last-10 max |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, row in sorted(results["rows"].items(), key=lambda item: item[1]["finished"]):
        tail = row["test_acc"][-LAST:]
        lines.append(f"| {key or '(none)'} | {row['params'] / 1e6:.2f} M | {row['epochs']} | {row['threads']} | "
                     f"{row['seconds'] / 60:.1f} min | {tail[-1]:.3f} | {min(tail):.3f} | {max(tail):.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    # No abbreviations: an override like --th... must not be taken for --threads.
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="NEU-SDD class folders")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "neu-bench", help="where split.json is written")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder for neu_warmstart.{json,md}")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--per-class", type=int, default=None, help="a seeded subset of each class (a smoke run)")
    args, overrides = parser.parse_known_args()
    if not args.root.is_dir():
        raise SystemExit(f"{args.root}: NEU-SDD not found (pass --root)")
    if args.threads:
        torch.set_num_threads(args.threads)
    config = load_train_config("neu", overrides)
    args.work.mkdir(parents=True, exist_ok=True)
    _, split = make_split(args.root, args.work, args.per_class)
    fingerprint = split_fingerprint(split)

    cache = ImageCache(args.root, config.model.vision.image_size)
    torch.manual_seed(derived_seed("init", config.seed))
    vision = VisionEncoder(config.model.vision)
    started = time.perf_counter()
    rows = warm_start_vision(vision, label_records(split["train"]), label_records(split["test"]), cache, config,
                             torch.device("cpu"))
    seconds = time.perf_counter() - started  # includes the per-epoch test pass (~4% here)

    path = args.out / "neu_warmstart.json"
    results = load_results(path, fingerprint)  # an error for rows of another split
    results["split"] = {"fingerprint": fingerprint, "train": len(split["train"]), "test": len(split["test"])}
    key = shlex.join(overrides)
    results["rows"][key] = {
        "overrides": overrides, "params": sum(p.numel() for p in vision.parameters()),
        "epochs": config.warmstart_epochs, "threads": torch.get_num_threads(), "seconds": round(seconds, 1),
        "test_acc": [row["val_acc"] for row in rows[1:]], "train_acc": [row["train_acc"] for row in rows[1:]],
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine_info()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, results)
    atomic_write_text(args.out / "neu_warmstart.md", markdown(results))
    print("\n" + markdown(results))


if __name__ == "__main__":
    main()
