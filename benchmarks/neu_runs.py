"""The log of every full MAEMI row of the NEU-SDD benchmark, and its table (benchmarks/results/neu_runs.md).

One row is one draw: which one to three borderline test images of 359 the model gets right moves with the seed and
with the machine's arithmetic (bf16 autocast or float32). The committed table (neu.md) shows one run; this log keeps
every full run that `benchmarks/neu.py` measures, one JSON file each in benchmarks/results/neu_runs/, so the scatter
is on record and a headline row cannot be picked from several.

    .venv/bin/python benchmarks/neu_runs.py                     # rewrite neu_runs.md from the log
    .venv/bin/python benchmarks/neu_runs.py --add neu.json      # log the MAEMI row of a result file
    git show 2ff6e39:benchmarks/results/neu.json | .venv/bin/python benchmarks/neu_runs.py --add -   # an older one

--add takes the row as it is; --classifications RUN/eval/classifications.jsonl adds its wrong images when the row
predates neu.py recording them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from maemi.fileio import atomic_write_json, atomic_write_text

HERE = Path(__file__).resolve().parent
LOG = HERE / "results" / "neu_runs"
TABLE = HERE / "results" / "neu_runs.md"
TARGET = 0.995  # the NEU issue's zero-shot aim (the paper: 0.985)
MODES = ("zero_shot", "few_shot", "zero_shot_views", "few_shot_views")


def wrong_images(rows: list[dict]) -> dict[str, list[list[str]]]:
    """From `maemi eval`'s classifications.jsonl rows: per mode, [image, true label, predicted] of each miss."""
    wrong: dict[str, list[list[str]]] = {}
    for mode in MODES:
        scored = [r for r in rows if r.get(mode)]
        if scored:
            wrong[mode] = [[r["image"], r["label"], r[mode][0][0]] for r in scored if r[mode][0][0] != r["label"]]
    return wrong


def read_predictions(path: Path) -> list[dict]:
    """The rows of `maemi eval`'s classifications.jsonl."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def describe_wrong(wrong: dict[str, list[list[str]]]) -> str:
    """'zero-shot: patches_77 -> pitted_surface; few-shot: none; ...'"""
    return "; ".join(f"{mode.replace('_', '-').replace('-views', ', views averaged')}: "
                     + (", ".join(f"{Path(image).stem} -> {predicted}" for image, _, predicted in misses) or "none")
                     for mode, misses in wrong.items())


def seed_of(train_args: list[str]) -> int:
    """The training seed a row ran with: the last --seed=N among its `maemi train` arguments, else the default 0."""
    seed = 0
    for arg in train_args:
        if arg.startswith("--seed="):
            seed = int(arg.split("=", 1)[1])
    return seed


def extra_settings(entry: dict) -> list[str]:
    """The `maemi train` overrides of a run other than its seed (the summary groups runs by them)."""
    return [arg for arg in entry["train_args"] if not arg.startswith("--seed=")]


def log_entry(result: dict, wrong: dict | None = None) -> dict:
    """The log entry of the MAEMI row of a neu.json result."""
    row = result["rows"]["maemi"]
    machine = row["machine"]
    vqa = row["vqa"]

    def top1(section: str) -> float | None:
        return row[section]["top1"] if row.get(section) else None

    def meteor(key: str) -> float | None:
        return vqa[key]["METEOR"] if vqa.get(key) else None

    return {
        "date": machine["date"], "commit": machine.get("commit"), "cpu": machine["cpu"],
        "cpu_family_model": machine.get("cpu_family_model"), "native_bf16": machine.get("native_bf16"),
        "threads": row["threads"], "seed": seed_of(row.get("train_args", [])), "train_args": row.get("train_args", []),
        "split": result["split"]["fingerprint"],
        "zero_shot": top1("classification"), "few_shot": top1("few_shot"),
        "zero_shot_views": top1("classification_views"), "few_shot_views": top1("few_shot_views"),
        "top5": min(row["top5"], row["few_shot_top5"]),
        "vqa_meteor": meteor("vqa"), "vqa_meteor_shuffled": meteor("vqa_shuffled_images"),
        "train_seconds": row["train_seconds"], "within_budget": row.get("within_budget"),
        "wrong": row.get("wrong", wrong),
    }


def entry_name(entry: dict) -> str:
    date = entry["date"].replace(" UTC", "").replace(" ", "-").replace(":", "")
    return f"{date}_{entry['commit'] or 'unknown'}_seed{entry['seed']}.json"


def add(entry: dict, log: Path = LOG) -> Path:
    """Write the entry into the log (the same run again replaces its file)."""
    path = log / entry_name(entry)
    atomic_write_json(path, entry)
    return path


def read_log(log: Path = LOG) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in log.glob("*.json")), key=lambda e: e["date"])


def _score(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def _machine(entry: dict) -> str:
    bf16 = {True: "native bf16", False: "no native bf16"}.get(entry["native_bf16"], "bf16 not recorded")
    family = f" ({entry['cpu_family_model']})" if entry.get("cpu_family_model") else ""
    return f"{entry['cpu']}{family}, {bf16}, {entry['threads']} thread(s)"


def _summary(label: str, entries: list[dict]) -> str:
    """One line of the summary table: per mode the mean (lowest-highest) and how many runs reach the target."""
    cells = []
    for mode in MODES:
        values = [e[mode] for e in entries if e[mode] is not None]
        cells.append(f"{statistics.fmean(values):.4f} ({min(values):.3f}-{max(values):.3f}), "
                     f"{sum(v >= TARGET for v in values)} of {len(values)}" if values else "")
    both = [e for e in entries if e["zero_shot"] is not None and e["few_shot"] is not None]
    at_least = sum(e["few_shot"] >= e["zero_shot"] for e in both)
    minutes = [e["train_seconds"] / 60 for e in entries]
    return (f"| {label} | {len(entries)} | " + " | ".join(cells) + f" | {at_least} of {len(both)} | "
            f"{min(minutes):.1f}-{max(minutes):.1f} min |")


def markdown(entries: list[dict]) -> str:
    lines = ["# NEU-SDD: every full MAEMI run", "",
             "Every full MAEMI row `benchmarks/neu.py` measured, oldest first (the log: `benchmarks/results/neu_runs/`; "
             "written by `benchmarks/neu_runs.py`). Top-1 on the 359 test images; one image is 0.0028. Rows differ in "
             "commit, seed and machine; `git log` between two commits says what changed. Other settings are the run's "
             "`maemi train` overrides of the `neu` config as it was at its commit (b511147 made `few_shot_demos = "
             "\"vision\"` the config's own: runs from there on without overrides belong with the "
             "`--few_shot_demos=vision` ones).", "",
             "| date (UTC) | commit | seed | other settings | machine | zero-shot | few-shot | zero-shot, 8 views | few-shot, 8 views "
             "| top-5 | VQA METEOR (shuffled) | training |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        over = " (over budget)" if e["within_budget"] is False else ""
        meteor = "" if e["vqa_meteor"] is None else f"{e['vqa_meteor']:.3f} ({_score(e['vqa_meteor_shuffled'])})"
        lines.append(f"| {e['date'].replace(' UTC', '')} | {e['commit'] or ''} | {e['seed']} | "
                     f"{' '.join(extra_settings(e)) or 'none'} | {_machine(e)} | "
                     f"{_score(e['zero_shot'])} | {_score(e['few_shot'])} | {_score(e['zero_shot_views'])} | "
                     f"{_score(e['few_shot_views'])} | {_score(e['top5'])} | {meteor} | "
                     f"{e['train_seconds'] / 60:.1f} min{over} |")
    lines += ["", "## Summary by settings (the `neu` config with these overrides)", "",
              f"Top-1 mean (lowest-highest), and how many runs reach {TARGET}:", "",
              "| settings, runs | n | zero-shot | few-shot | zero-shot, 8 views | few-shot, 8 views "
              "| few-shot >= zero-shot | training |", "|---|---:|---|---|---|---|---|---|"]
    for settings in dict.fromkeys(" ".join(extra_settings(e)) or "none" for e in entries):
        group = [e for e in entries if (" ".join(extra_settings(e)) or "none") == settings]
        lines.append(_summary(f"{settings}, all", group))
        for flag, label in ((True, "native bf16"), (False, "no native bf16"), (None, "bf16 not recorded")):
            part = [e for e in group if e["native_bf16"] is flag]
            if part and len(part) < len(group):
                lines.append(_summary(f"{settings}, {label}", part))
    recorded = [e for e in entries if e.get("wrong")]
    if recorded:
        lines += ["", "## Wrong test images (image -> predicted)", ""]
        lines += [f"- {e['date'].replace(' UTC', '')}, {e['commit']}, seed {e['seed']}: {describe_wrong(e['wrong'])}"
                  for e in recorded]
    return "\n".join(lines) + "\n"


def write_table(log: Path = LOG, table: Path = TABLE) -> Path:
    atomic_write_text(table, markdown(read_log(log)))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--add", metavar="NEU_JSON", help="log the MAEMI row of this result file ('-': stdin)")
    parser.add_argument("--classifications", type=Path, help="with --add: the run's eval/classifications.jsonl")
    args = parser.parse_args()
    if args.classifications and not args.add:
        parser.error("--classifications goes with --add")
    if args.add:
        source = sys.stdin.read() if args.add == "-" else Path(args.add).read_text()
        result = json.loads(source)
        if "maemi" not in result.get("rows", {}):
            sys.exit(f"{args.add}: no MAEMI row")
        wrong = None
        if args.classifications:
            wrong = wrong_images(read_predictions(args.classifications))
        print(f"logged {add(log_entry(result, wrong))}")
    print(f"wrote {write_table()}")


if __name__ == "__main__":
    main()
