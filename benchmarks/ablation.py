"""Benchmark: what the paper's parts buy on the demo corpus (issue 24's ablation). Prints a table and writes
benchmarks/results/ablation.{json,md}.

Variants, each a set of --key=value settings on the shipped `demo` config:
- shipped: as `maemi demo` trains it: DyQLoRA-FA adapters on the pretrained MiniLM (int8 base), gated cross-attention;
- frozen_text: the pretrained text encoder frozen, no adapters;
- no_pretrained_text: the same encoder architecture from random weights, trained whole (no int8 base, no adapters);
- peft_lora: PEFT's plain LoRA on the full-precision encoder instead of DyQLoRA-FA (rank r_max, A and B trained);
- prefix_fusion: the image tokens prepended to the decoder's own sequence instead of gated cross-attention.

Per seed, `maemi demo --seed S` makes the corpus, split and teacher records once, in WORK/seedS (the same layout as
benchmarks/demo_seeds.py, so its runs are reused as the shipped variant); every other variant trains, calibrates and
evaluates on those same files in WORK/seedS/ablation/VARIANT, in its own process, whose peak resident memory is
reported (from the folder's timings.json: training and evaluation; the shipped variant's process also made the corpus
and records). Per variant and
seed: zero- and few-shot top-1, METEOR with the right and with shuffled images, numeric fidelity, training seconds.

    .venv/bin/python benchmarks/ablation.py [--seeds 0,1,2] [--variants shipped,frozen_text,...] [--work DIR]

A variant whose evaluation is already in WORK is read, not rerun, so variants can run in separate invocations (on
separate cores: give each OMP_NUM_THREADS) once the shipped one has made the seed's files.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


from maemi.fileio import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from demo_seeds import COLUMNS as DEMO_COLUMNS, mean_std  # noqa: E402
from finetune_memory import machine_info  # noqa: E402

VARIANTS = {
    "shipped": (),
    "frozen_text": ("--model.text.lora=none",),
    "no_pretrained_text": ("--model.text.pretrained=false", "--model.text.quantize_int8=false",
                           "--model.text.lora=none"),
    "peft_lora": ("--model.text.adapter=peft_lora", "--model.text.quantize_int8=false"),
    "prefix_fusion": ("--model.decoder.image_fusion=prefix",),
}
COLUMNS = {name: DEMO_COLUMNS[name] for name in ("zero_shot", "few_shot", "meteor", "meteor_shuffled", "numeric",
                                                  "numeric_shuffled")}
SHARED = ("corpus", "inspect.json", "splits.json", "train.jsonl", "val.jsonl", "test.jsonl")  # made once per seed


def variant_dir(work: Path, seed: int, variant: str) -> Path:
    return work / f"seed{seed}" if variant == "shipped" else work / f"seed{seed}" / "ablation" / variant


def run_variant(seed: int, variant: str, work: Path) -> None:
    """In the child process: `maemi demo`'s steps with the variant's settings; the shared steps are the seed's."""
    from maemi.demo import DemoConfig, run_demo

    out = variant_dir(work, seed, variant)
    out.mkdir(parents=True, exist_ok=True)
    if variant != "shipped":
        base = variant_dir(work, seed, "shipped")
        missing = [name for name in SHARED if not (base / name).exists()]
        if missing:
            sys.exit(f"{base}: no {', '.join(missing)}: run the shipped variant of seed {seed} first (it makes the "
                     "corpus and the teacher records every variant shares)")
        for name in SHARED:
            if not (out / name).exists():
                (out / name).symlink_to((base / name).resolve())
    run_demo(DemoConfig(out=out, seed=seed, train_overrides=VARIANTS[variant]))


def read_row(seed: int, variant: str, work: Path) -> dict:
    run = variant_dir(work, seed, variant) / "run"
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    timings_path = run.parent / "timings.json"  # written by maemi demo
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    return {"seed": seed, "variant": variant, **{name: read(metrics) for name, (_, read) in COLUMNS.items()},
            "train_seconds": timings.get("seconds", {}).get("train"), "peak_rss_mib": timings.get("peak_rss_mib")}


def carried_rows(path: Path, fresh: set[tuple[int, str]]) -> list[dict]:
    """The rows of an earlier results file that this invocation does not produce, each with the commit it ran at:
    a seed added later joins the seeds measured before, whose work folders may be gone."""
    if not path.is_file():
        return []
    old = json.loads(path.read_text())
    commit = old["machine"].get("commit")
    return [{"commit": commit, **r} for r in old["rows"] if (r["seed"], r["variant"]) not in fresh]


def summary(rows: list[dict]) -> dict:
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {"seeds": [r["seed"] for r in mine]}
        for name in (*COLUMNS, "train_seconds", "peak_rss_mib"):
            out[variant][name] = mean_std([r[name] for r in mine if r[name] is not None])
    return out


def markdown(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    heads = [h for h, _ in COLUMNS.values()] + ["training s", "peak RSS MiB"]
    lines = ["# Ablation on the demo corpus (benchmarks/ablation.py)", "",
             f"{m.get('cpu')}; the commit of each run is in the per-run table. Each variant is the shipped "
             "`demo` config with the settings below, trained, calibrated and evaluated on the same corpus, split and "
             "teacher records per seed as `maemi demo --seed S`; mean (standard deviation) over the seeds listed.", "",
             "| variant | settings | seeds | " + " | ".join(heads) + " |",
             "|---|---|---|" + "---:|" * len(heads)]

    def cell(stat: dict, digits: int) -> str:
        if stat["mean"] is None:
            return "-"
        return f"{stat['mean']:.{digits}f}" + (f" ({stat['std']:.{digits}f})" if stat["std"] is not None else "")

    for variant, v in s.items():
        settings = " ".join(f"`{f}`" for f in VARIANTS[variant]) or "(shipped)"
        lines.append(f"| {variant} | {settings} | {','.join(map(str, v['seeds']))} | "
                     + " | ".join([cell(v[n], 3) for n in COLUMNS] + [cell(v["train_seconds"], 0),
                                                                       cell(v["peak_rss_mib"], 0)]) + " |")
    lines += ["", "Per run:", "", "| variant | seed | " + " | ".join(heads) + " | commit |",
              "|---|---:|" + "---:|" * len(heads) + "---|"]
    for r in result["rows"]:
        values = [f"{r[n]:.3f}" if r[n] is not None else "-" for n in COLUMNS]
        values += [f"{r[n]:.0f}" if r[n] is not None else "-" for n in ("train_seconds", "peak_rss_mib")]
        lines.append(f"| {r['variant']} | {r['seed']} | " + " | ".join(values) + f" | {r.get('commit', '')} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/demo_seeds"),
                        help="one folder per seed, shared with benchmarks/demo_seeds.py")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ablation")
    parser.add_argument("--note", default="", help="a paragraph for the markdown: how the runs shared the machine")
    parser.add_argument("--child", nargs=2, metavar=("SEED", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_variant(int(args.child[0]), args.child[1], args.work)
        return
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variant(s) {unknown}: choose from {', '.join(VARIANTS)}")
    import torch

    machine = {**machine_info(), "threads": torch.get_num_threads()}
    seeds = [int(seed) for seed in args.seeds.split(",")]
    rows = carried_rows(args.out.with_suffix(".json"), {(seed, variant) for seed in seeds for variant in variants})
    for seed in seeds:
        for variant in variants:  # in VARIANTS' order unless told otherwise: shipped first makes the shared files
            if not (variant_dir(args.work, seed, variant) / "run" / "eval" / "metrics.json").is_file():
                subprocess.run([sys.executable, __file__, "--work", str(args.work), "--child", str(seed), variant],
                               check=True)
            rows.append({**read_row(seed, variant, args.work), "commit": machine.get("commit")})
    order = list(VARIANTS)
    rows.sort(key=lambda r: (r["seed"], order.index(r["variant"])))
    result = {"machine": machine, "variants": VARIANTS, "rows": rows,
              "summary": summary(rows)}
    result["note"] = args.note
    text = markdown(result) + (f"\n{args.note}\n" if args.note else "")
    print(text)
    atomic_write_json(args.out.with_suffix(".json"), result)
    atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
