"""Benchmark: how many synthetic images the demo's ViT needs. The `demo` config's warm start (the ViT alone on the
labels) on training corpora of N images per class, then a linear probe of its cls embedding (logistic regression on
the training images) scored on a fresh corpus of another synth seed: a development set that no split of any demo
run contains, so `demo.py`'s corpus size is chosen without reading a test split.

    .venv/bin/python benchmarks/demo_warmstart.py                         # 14 and 28 training images per class
    .venv/bin/python benchmarks/demo_warmstart.py --per-class 14,28 --seeds 0 --dev-per-class 10   # a smoke run

Each training corpus is `maemi synth --seed 8 --per-class N` (the same generator seed: the smaller corpus is the
first images of the larger), the ViT initialised and shuffled from each seed in --seeds; the dev corpus is
`maemi synth --seed 7`. Writes benchmarks/results/demo_warmstart.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from maemi.data.synth import synthesize
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.model.vision import VisionEncoder
from maemi.seeds import derived_seed
from maemi.train.config import load_train_config
from maemi.train.data import ImageCache
from maemi.train.demos import cls_embeddings
from maemi.train.warmstart import warm_start_vision

from finetune_memory import machine_info  # benchmarks/ (this script's folder is on sys.path)

HERE = Path(__file__).resolve().parent
TRAIN_SEED, DEV_SEED = 8, 7


def corpus(work: Path, seed: int, per_class: int) -> list[tuple[str, str]]:
    """(absolute path, class) of every image of `maemi synth --seed SEED --per-class N`, made once."""
    root = work / f"synth_seed{seed}_n{per_class}"
    if not (root / "metadata.jsonl").is_file():
        synthesize(root, per_class=per_class, seed=seed)
    return sorted((str(p), p.parent.name) for p in root.glob("*/*.png"))


def probe(per_class: int, seed: int, dev: list[tuple[str, str]], work: Path) -> dict:
    train = corpus(work, TRAIN_SEED, per_class)
    config = load_train_config("demo", [f"--seed={seed}"])
    torch.manual_seed(derived_seed("init", seed))
    vision = VisionEncoder(config.model.vision)
    cache = ImageCache(Path("/"), config.image_size)  # absolute paths
    start = time.perf_counter()
    warm_start_vision(vision, [{"images": [p], "label": c} for p, c in train], [], cache, config,
                      torch.device("cpu"), log=lambda _: None)
    seconds = time.perf_counter() - start
    cpu = torch.device("cpu")
    x, y = cls_embeddings(vision, [p for p, _ in train], cache, cpu, 32), [c for _, c in train]
    xd, yd = cls_embeddings(vision, [p for p, _ in dev], cache, cpu, 32), [c for _, c in dev]
    accuracy = LogisticRegression(C=1.0, max_iter=5000).fit(x, y).score(xd, yd)
    return {"per_class": per_class, "train_images": len(train), "seed": seed, "dev_probe_top1": float(accuracy),
            "warmstart_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", default="14,28", help="training images per class, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dev-per-class", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo_warmstart"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "demo_warmstart")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = corpus(args.work, DEV_SEED, args.dev_per_class)
    rows = []
    for per_class in [int(n) for n in args.per_class.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            rows.append(probe(per_class, seed, dev, args.work))
            print(rows[-1], flush=True)
    summary = []
    for per_class in sorted({r["per_class"] for r in rows}):
        acc = [r["dev_probe_top1"] for r in rows if r["per_class"] == per_class]
        summary.append({"per_class": per_class, "train_images": 10 * per_class, "seeds": len(acc),
                        "mean": float(np.mean(acc)), "std": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
                        "warmstart_seconds": float(np.mean([r["warmstart_seconds"] for r in rows
                                                            if r["per_class"] == per_class]))})
    machine = machine_info()
    lines = ["# The demo ViT's warm start against the size of its training corpus (benchmarks/demo_warmstart.py)", "",
             f"{machine.get('cpu', 'CPU')}, {args.threads} threads. The `demo` config's warm start, then a linear "
             f"probe of the cls embedding scored on {len(dev)} images of another synth seed ({DEV_SEED}); mean "
             "(standard deviation) over the ViT's seeds.", "",
             "| training images | seeds | dev probe top-1 | warm start, s |", "|---:|---:|---:|---:|"]
    for s in summary:
        spread = f" ({s['std']:.3f})" if s["std"] is not None else ""
        lines.append(f"| {s['train_images']} | {s['seeds']} | {s['mean']:.3f}{spread} | {s['warmstart_seconds']:.0f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), {"machine": machine, "dev_images": len(dev), "rows": rows,
                                                      "summary": summary})
    atomic_write_text(args.out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
