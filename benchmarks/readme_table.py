"""Write the generated blocks of README.md and docs/performance.md from the committed results: the README's
performance section (a summary of benchmarks/results/finetune_memory.json and the throughput.json table) and its
labelled-folder table (benchmarks/results/lab_*.json); docs/performance.md's table of every fine-tuning method.

Only the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` is replaced, so every number there comes from a
committed result file that names its machine.

    .venv/bin/python benchmarks/readme_table.py [--check]   # --check: exit 1 if a file is not up to date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
PERFORMANCE_DOC = HERE.parent / "docs" / "performance.md"
BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"
FINETUNE_BEGIN, FINETUNE_END = "<!-- finetune:begin -->", "<!-- finetune:end -->"
# benchmarks/lab_folder.py's sets, in the README's order: what each is.
LAB_SETS = {"neu": "NEU-SDD, steel surface defects (6 classes, 200x200 px)",
            "nanowires": "SEM nanowire arrays, one crop per labelled object (3 classes, 48x48 px, split by micrograph)"}
METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA (PEFT)", "lorafa": "LoRA-FA (PEFT optimizer)",
                "dylora_fa": "DyLoRA-FA (ours)", "dyqlora_fa": "DyQLoRA-FA (ours, int8 base)"}


def machine_line(result: dict) -> str:
    m = result["machine"]
    return (f"{m['cpu']}, {m['cpu_count']} cores{', ' + m['gpu'] if m['gpu'] else ''}, {result['threads']} threads, "
            f"torch {m['versions']['torch']}, {m['date']}")


def finetune_summary(result: dict) -> list[str]:
    """The README's lines: DyQLoRA-FA's peak memory and step time against LoRA and full fine-tuning, per encoder."""
    lines = [f"Fine-tuning the text encoder, one process per method (`benchmarks/finetune_memory.py`; "
             f"{machine_line(result)}; every method: [docs/performance.md](docs/performance.md)):", "",
             "| encoder | batch | DyQLoRA-FA training peak | vs LoRA (PEFT) | vs full fine-tuning | s/step vs LoRA |",
             "|---|---|---:|---:|---:|---:|"]
    for encoder, section in result["encoders"].items():
        rows = {row["method"]: row for row in section["rows"]}
        ours, lora, full = rows["dyqlora_fa"], rows["lora"], rows["full"]
        against_full = (f"not run here: {full['skipped']}" if "skipped" in full
                        else f"{ours['peak_gib'] / full['peak_gib']:.2f}x")
        lines.append(f"| {encoder}, {section['params'] / 1e6:,.0f} M parameters | {section['batch']} x "
                     f"{section['seq']} | {ours['peak_gib']:.2f} GiB | {ours['peak_gib'] / lora['peak_gib']:.2f}x | "
                     f"{against_full} | {ours['s_per_step'] / lora['s_per_step']:.2f}x |")
    return lines + [""]


def finetune_section(result: dict) -> list[str]:
    """docs/performance.md's tables: every method on every encoder."""
    lines = [FINETUNE_BEGIN, "", f"Fine-tuning one text encoder, one process per method "
             f"(`benchmarks/finetune_memory.py`; {machine_line(result)}; details in "
             f"`benchmarks/results/finetune_memory.md`):", ""]
    for encoder, section in result["encoders"].items():
        lines += [f"{encoder}, {section['params'] / 1e6:,.0f} M parameters, batch {section['batch']} x "
                  f"{section['seq']} tokens, {section['steps']} steps:", ""]
        if section.get("note"):
            lines += [section["note"], ""]
        lines += [
                  "| method | trainable | training peak GiB | above model GiB | s/step | loss after (before) |",
                  "|---|---:|---:|---:|---:|---:|"]
        for row in section["rows"]:
            name = METHOD_NAMES[row["method"]]
            if "skipped" in row:
                lines.append(f"| {name} | | not run here: {row['skipped']} | | | |")
                continue
            lines.append(f"| {name} | {row['trainable']:,} | {row['peak_gib']:.2f} | "
                         f"{row['peak_above_model_gib']:.2f} | {row['s_per_step']:.2f} | "
                         f"{row['loss_after']:.2f} ({row['loss_before']:.2f}) |")
        lines.append("")
    return lines + [FINETUNE_END]


def throughput_section(result: dict) -> list[str]:
    t = result["training"]
    batched = max(row["batch"] for row in result["inference"])
    rows = {(row["task"].split()[0], row["batch"], row["kv_cache"]): row for row in result["inference"]}
    tokens = result["inference"][-1]["task"].split("(")[1].split()[0]
    return [f"Throughput of the demo configuration (`benchmarks/throughput.py`; {machine_line(result)}):", "",
            "| measure | value |", "|---|---:|",
            f"| training, demo config (batch {t['batch_size']}, bf16 {'on' if t['bf16'] else 'off'}) | "
            f"{t['samples_per_s']:.1f} samples/s |",
            f"| training MFU against the {t['compute_dtype']} matmul peak measured in the same run | "
            f"{t['mfu']:.1%} |",
            f"| zero-shot classification, batch 1 / batch {batched} | "
            f"{rows['classify', 1, None]['images_per_s']:.1f} / {rows['classify', batched, None]['images_per_s']:.1f}"
            f" images/s |",
            f"| captions of {tokens} tokens, batch 1, KV cache off / on | "
            f"{rows['caption', 1, False]['tokens_per_s']:.0f} / {rows['caption', 1, True]['tokens_per_s']:.0f} "
            f"tokens/s |",
            f"| captions of {tokens} tokens, batch {batched}, KV cache off / on | "
            f"{rows['caption', batched, False]['tokens_per_s']:.0f} / "
            f"{rows['caption', batched, True]['tokens_per_s']:.0f} tokens/s |", ""]


def performance_text(results: Path = HERE / "results") -> str:
    lines = [BEGIN, "", "## Performance", "",
             "Generated by `benchmarks/readme_table.py` from the committed results; CPU timings on a shared machine "
             "are noisy, so compare rows of one table (measured side by side), not runs.", ""]
    for name, section in (("finetune_memory.json", finetune_summary), ("throughput.json", throughput_section)):
        path = results / name
        if path.is_file():
            lines += section(json.loads(path.read_text(encoding="utf-8")))
        else:
            lines += [f"(`benchmarks/results/{name}` not written yet.)", ""]
    return "\n".join(lines + [END])


def labelled_text(results: Path = HERE / "results") -> str:
    """The table of benchmarks/lab_folder.py: MAEMI (`--config neu`) against a plain CNN, mean ± sd over seeds."""
    def cell(summary: dict, model: str, metric: str) -> str:
        m = summary.get(model, {}).get(metric)
        if not m:
            return ""
        return f"{m['mean']:.3f}" + ("" if m["std"] is None else f" ± {m['std']:.3f}")

    lines = ["<!-- labelled:begin -->", "",
             "| images | seeds | train / val / test | MAEMI zero-shot | MAEMI few-shot (K = 5) | plain CNN | "
             "MAEMI training |", "|---|---:|---|---:|---:|---:|---:|"]
    for name, title in LAB_SETS.items():
        path = results / f"lab_{name}.json"
        if not path.is_file():
            continue
        result = json.loads(path.read_text(encoding="utf-8"))
        s, runs = result["summary"], result["runs"]
        maemi = [row for key, row in sorted(runs.items()) if key.startswith("maemi/")]
        sizes = sorted({row["split_sizes"] for row in runs.values()})
        minutes = [row["train_seconds"] / 60 for row in maemi]
        threads = sorted({row["threads"] for row in maemi})
        lines.append(f"| {title} | {s['maemi']['top1']['n']} | {', '.join(sizes)} | {cell(s, 'maemi', 'top1')} | "
                     f"{cell(s, 'maemi', 'few_shot_top1')} | {cell(s, 'cnn', 'top1')} | "
                     f"{minutes_range(minutes)} ({'/'.join(map(str, threads))} thread) |")
    return "\n".join(lines + ["", "<!-- labelled:end -->"])


def minutes_range(minutes: list[float]) -> str:
    low, high = round(min(minutes)), round(max(minutes))
    return f"{low} min" if low == high else f"{low}-{high} min"


def finetune_text(results: Path = HERE / "results") -> str:
    path = results / "finetune_memory.json"
    if not path.is_file():
        return "\n".join([FINETUNE_BEGIN, "", "(`benchmarks/results/finetune_memory.json` not written yet.)", "",
                          FINETUNE_END])
    return "\n".join(finetune_section(json.loads(path.read_text(encoding="utf-8"))))


def replace_block(text: str, begin: str, end: str, block: str, readme: Path) -> str:
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        sys.exit(f"{readme}: expected one {begin} ... {end} section")
    head, rest = text.split(begin)
    return head + block + rest.split(end, 1)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    parser.add_argument("--readme", type=Path, default=README)
    parser.add_argument("--performance-doc", type=Path, default=PERFORMANCE_DOC)
    args = parser.parse_args()
    from maemi.fileio import atomic_write_text

    blocks = {args.readme: [(BEGIN, END, performance_text()),
                            ("<!-- labelled:begin -->", "<!-- labelled:end -->", labelled_text())],
              args.performance_doc: [(FINETUNE_BEGIN, FINETUNE_END, finetune_text())]}
    stale = []
    for path, generated in blocks.items():
        text = path.read_text(encoding="utf-8")
        updated = text
        for begin, end, block in generated:
            updated = replace_block(updated, begin, end, block, path)
        if updated == text:
            print(f"{path}: generated sections already up to date")
        elif args.check:
            stale.append(path)
        else:
            atomic_write_text(path, updated)
            print(f"{path}: generated sections updated")
    if stale:
        sys.exit("; ".join(f"{path}: a generated section is out of date" for path in stale)
                 + "; run benchmarks/readme_table.py")


if __name__ == "__main__":
    main()
