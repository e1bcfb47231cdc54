"""report.md: a readable evaluation report, and the headline table for stdout.

The `metrics` dict (the content of metrics.json) that write_report and format_metrics_table read; every key optional:
    {
      "run": {"run_dir": "runs/demo", "data": "test.jsonl", "device": "cpu", ...},  # facts listed at the top
      "generation": generation_metrics(...),           # answers on the test images vs the references
      "generation_shuffled": generation_metrics(...),  # control: the same questions, the test images shuffled among
                                                       # them; if the answers come from the image, scores drop
      "zero_shot": classification_metrics(...),        # ask the category, rank the class names by likelihood
      "few_shot": classification_metrics(...) | {"shots": K},  # K demonstrations chosen by cls-embedding similarity
      "zero_shot_views", "few_shot_views": the same | {"views": N},  # test-time augmentation over N dihedral views
    }
(generation_metrics in maemi.evaluate.metrics, classification_metrics in maemi.evaluate.classification.)

`examples`: a few dicts {"images": [path, ...] (or "image": path), "question", "reference", "answer", and optionally
"task", "family", "shuffled_answer" (the answer to the same question with another test image)}; each image is shown
as a small PNG thumbnail saved under report_images/ next to the report.

write_report also draws the confusion matrices next to the report (confusion_zero_shot.png, confusion_few_shot.png)
and embeds the run's loss curve(s) (any *loss*.png in run_dir, e.g. loss_curve.png), all by relative path.

The tables follow the MAEMI paper: Tables 1 and 3-6 (generation metrics by task), 7 (top-1/top-5), 9 (per class).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from maemi.data.images import load_image
from maemi.evaluate.classification import plot_confusion_matrix
from maemi.evaluate.metrics import METRICS
from maemi.fileio import atomic_write_bytes, atomic_write_text

THUMBNAIL_SIZE = 160  # px, longest side
_CLASSIFICATION_MODES = (("zero_shot", "zero-shot"), ("few_shot", "few-shot"),
                         ("zero_shot_views", "zero-shot"), ("few_shot_views", "few-shot"))

Table = tuple[list[str], list[list[str]]]  # (header, rows) of already formatted cells


# ------------------------------------------------------------------------------------------------------------- tables


def _mean_std(summary: dict, name: str) -> str:
    return f"{summary[name]['mean']:.3f} ± {summary[name]['std']:.3f}"


def _generation_metrics_of(metrics: dict, key: str) -> dict | None:
    section = metrics.get(key)
    if section is None:
        return None
    if not isinstance(section, dict) or "overall" not in section:
        raise ValueError(f"metrics[{key!r}] has no 'overall': expected the output of generation_metrics()")
    return section


def _classification_metrics_of(metrics: dict, key: str) -> dict | None:
    section = metrics.get(key)
    if section is None:
        return None
    missing = [k for k in ("n", "top1", "top5", "per_class", "macro") if k not in section]
    if missing:
        raise ValueError(f"metrics[{key!r}] lacks {missing}: expected the output of classification_metrics()")
    return section


def _mode_label(key: str, label: str, section: dict) -> str:
    """"few-shot (K = 5)", "zero-shot, 8 views"."""
    if key.startswith("few_shot") and "shots" in section:
        label += f" (K = {section['shots']})"
    return label + (f", {section['views']} views" if "views" in section else "")


def generation_headline(metrics: dict) -> Table | None:
    """Overall generation metrics, with the shuffled-images control as a second row when present."""
    rows = []
    for key, label in (("generation", "test images"), ("generation_shuffled", "images shuffled among questions")):
        section = _generation_metrics_of(metrics, key)
        if section is not None:
            rows.append([label, str(section["n"])] + [_mean_std(section["overall"], m) for m in METRICS])
    return (["images", "n", *METRICS], rows) if rows else None


def classification_headline(metrics: dict) -> Table | None:
    rows = []
    for key, label in _CLASSIFICATION_MODES:
        section = _classification_metrics_of(metrics, key)
        if section is not None:
            rows.append([
                _mode_label(key, label, section),
                str(section["n"]),
                f"{section['top1']:.3f}",
                f"{section['top5']:.3f}",
                f"{section['macro']['f1']:.3f}",
            ])
    return (["classification", "n", "top-1", "top-5", "macro F1"], rows) if rows else None


def generation_group_table(generation: dict, key: str) -> Table:
    """One row per value of a grouping (task, family): the paper's Tables 1 and 3-6."""
    rows = [
        [value, str(summary["n"])] + [_mean_std(summary, m) for m in METRICS]
        for value, summary in generation["groups"][key].items()
    ]
    return [key, "n", *METRICS], rows


def per_class_table(section: dict) -> Table:
    """Precision, recall, F1 and support per class, then the macro averages: the paper's Table 9."""
    rows = [
        [name, f"{c['precision']:.3f}", f"{c['recall']:.3f}", f"{c['f1']:.3f}", str(c["support"])]
        for name, c in section["per_class"].items()
    ]
    macro = section["macro"]
    rows.append(["macro average", f"{macro['precision']:.3f}", f"{macro['recall']:.3f}", f"{macro['f1']:.3f}",
                 str(section["n"])])
    return ["class", "precision", "recall", "F1", "support"], rows


def _text_table(table: Table) -> str:
    header, rows = table
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _md_table(table: Table) -> str:
    header, rows = table
    lines = ["| " + " | ".join(_md_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def format_metrics_table(metrics: dict) -> str:
    """The headline (generation overall and shuffled control; zero-/few-shot classification) as plain text."""
    tables = [t for t in (generation_headline(metrics), numeric_fidelity_table(metrics),
                          classification_headline(metrics)) if t is not None]
    return "\n\n".join(_text_table(t) for t in tables)


# ------------------------------------------------------------------------------------------------------------- report


def _md_text(text: str) -> str:
    """Text shown as markdown: "<image>" must not vanish as an HTML tag, nor "*" and "_" turn into emphasis."""
    for ch in "\\`*_[]<>|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("\n", "  \n")


def _link(target: Path, report_dir: Path) -> str:
    return Path(os.path.relpath(target, report_dir)).as_posix()


def _save_thumbnail(image_path: str | os.PathLike, dest: Path) -> None:
    # load_image reads 16-bit and float TIFFs too, and returns [0, 1] floats: (H, W) grey or (H, W, 3) colour
    pixels = np.round(load_image(image_path) * 255).astype(np.uint8)
    thumb = Image.fromarray(pixels)
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    buf = io.BytesIO()
    thumb.save(buf, format="PNG")
    atomic_write_bytes(dest, buf.getvalue())


def _run_section(run: dict) -> list[str]:
    lines = []
    for key, value in run.items():
        shown = value if isinstance(value, (str, int, float)) else json.dumps(value, ensure_ascii=False)
        verbatim = str(shown).replace("`", "'")  # shown as a code span: paths need no escaping
        lines.append(f"- {_md_text(str(key))}: `{verbatim}`")
    return lines + [""] if lines else []


def _headline_section(metrics: dict) -> list[str]:
    lines = ["## Headline", ""]
    generation = generation_headline(metrics)
    if generation is not None:
        lines += ["Answers against the references, mean ± std over samples.", "", _md_table(generation), ""]
        real, shuffled = metrics.get("generation"), metrics.get("generation_shuffled")
        if real is not None and shuffled is not None:
            a, b = real["overall"]["METEOR"]["mean"], shuffled["overall"]["METEOR"]["mean"]
            lines += [
                f"Control: the same questions asked with the test images shuffled among them. METEOR {a:.3f} with "
                f"the right image, {b:.3f} with a shuffled one (difference {a - b:+.3f}). A model that answered from "
                "the question alone would score the same on both.",
                "",
            ]
    fidelity = numeric_fidelity_table(metrics)
    if fidelity is not None:
        lines += ["Numeric fidelity: the share of the numbers in the reference answers that the answer states within "
                  "10% and exactly (as rounded in the reference).", "", _md_table(fidelity), ""]
        floor = (metrics.get("numeric_fidelity_shuffled") or {}).get("floor")
        differ = (metrics.get("numeric_fidelity_shuffled") or {}).get("images_differ")
        if floor and differ and floor["within_10pct"] is not None:
            lines += [f"With the images shuffled, an answer that states the shuffled image's own measurement "
                      f"reproduces {floor['within_10pct']:.3f} of the reference numbers by chance (two images of one "
                      f"size or magnification measure alike): the control's floor. Over the {differ['numbers']} "
                      "numbers where the two images measure differently, the shuffled answers reproduce "
                      + ("-" if differ["within_10pct"] is None else f"{differ['within_10pct']:.3f}")
                      + " (0 when every number follows the image).", ""]
    words, words_shuffled = metrics.get("word_fidelity"), metrics.get("word_fidelity_shuffled")
    if words and words["reproduced"] is not None:
        lines += [f"Word fidelity: of the {words['words']} words in the reference answers that describe the measurement "
                  f"(\"widely varied in size\", \"clustered\"), the answers write {words['reproduced']:.3f}"
                  + (f"; with the images shuffled, {words_shuffled['reproduced']:.3f}"
                     if words_shuffled and words_shuffled["reproduced"] is not None else "") + ".", ""]
    classification = classification_headline(metrics)
    if classification is not None:
        lines += [_md_table(classification), ""]
    return lines


def numeric_fidelity_table(metrics: dict) -> Table | None:
    """Overall and per question family, with the shuffled-images control beside."""
    real, shuffled = metrics.get("numeric_fidelity"), metrics.get("numeric_fidelity_shuffled")
    if real is None:
        return None

    def share(section: dict | None, key: str) -> str:
        return "-" if section is None or section[key] is None else f"{section[key]:.3f}"

    rows = [["all", str(real["overall"]["numbers"]), share(real["overall"], "within_10pct"),
             share(real["overall"], "exact"), share((shuffled or {}).get("overall"), "within_10pct")]]
    if real.get("measured"):  # the numbers that state a measurement (slot values), without the fixed text's
        rows.append(["measured values", str(real["measured"]["numbers"]), share(real["measured"], "within_10pct"),
                     share(real["measured"], "exact"), share((shuffled or {}).get("measured"), "within_10pct")])
    for family, section in real["groups"].get("family", {}).items():
        if section["numbers"]:
            other = (shuffled or {}).get("groups", {}).get("family", {}).get(family)
            rows.append([family, str(section["numbers"]), share(section, "within_10pct"), share(section, "exact"),
                         share(other, "within_10pct")])
    return ["numbers of", "n", "within 10%", "exact", "within 10%, images shuffled"], rows


def _groups_section(metrics: dict) -> list[str]:
    generation = _generation_metrics_of(metrics, "generation")
    lines = []
    for key in (generation or {}).get("groups", {}):
        lines += [f"## Generation by {key}", "", _md_table(generation_group_table(generation, key)), ""]
    return lines


def _per_class_sections(metrics: dict, report_dir: Path) -> list[str]:
    lines = []
    for key, label in _CLASSIFICATION_MODES:
        section = _classification_metrics_of(metrics, key)
        if section is None:
            continue
        title = _mode_label(key, label, section)
        lines += [f"## Classification, {title}: per class", "", _md_table(per_class_table(section)), ""]
        if "confusion_matrix" in section:
            png = plot_confusion_matrix(
                section["confusion_matrix"], section["classes"], report_dir / f"confusion_{key}.png",
                title=f"Confusion matrix, {title}",
            )
            lines += [f"![confusion matrix, {title}]({_link(png, report_dir)})", ""]
    return lines


def _training_section(run_dir: Path, report_dir: Path) -> list[str]:
    curves = sorted(run_dir.glob("*loss*.png"))
    if not curves:
        return []
    lines = ["## Training", ""]
    for png in curves:
        lines += [f"![{png.stem}]({_link(png, report_dir)})", ""]
    return lines


def _examples_section(examples: list[dict], report_dir: Path) -> list[str]:
    if not examples:
        return []
    lines = ["## Examples", ""]
    for i, ex in enumerate(examples, start=1):
        missing = [k for k in ("question", "reference", "answer") if k not in ex]
        if missing:
            raise ValueError(f"example {i} lacks {missing}")
        images = ex.get("images") or ([ex["image"]] if "image" in ex else [])
        tags = " / ".join(str(ex[k]) for k in ("task", "family") if ex.get(k))
        lines += [f"### Example {i}" + (f" ({_md_text(tags)})" if tags else ""), ""]
        if images:
            thumbs = []
            for j, image in enumerate(images, start=1):
                dest = report_dir / "report_images" / f"example_{i}_{j}.png"
                _save_thumbnail(image, dest)
                thumbs.append(f"![{_md_text(Path(image).name)}]({_link(dest, report_dir)})")
            lines += [" ".join(thumbs), ""]
        lines += [
            f"**Question:** {_md_text(ex['question'])}", "",
            f"**Reference:** {_md_text(ex['reference'])}", "",
            f"**Answer:** {_md_text(ex['answer'])}", "",
        ]
        if ex.get("shuffled_answer") is not None:
            lines += [f"**Answer with another test image (control):** {_md_text(ex['shuffled_answer'])}", ""]
    return lines


def write_report(run_dir: Path, metrics: dict, examples: list[dict], out: Path) -> Path:
    """Write the markdown report to `out` (atomically), with its plots and thumbnails next to it; return `out`."""
    run_dir, out = Path(run_dir), Path(out)
    report_dir = out.parent
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# MAEMI evaluation report", ""]
    lines += _run_section(metrics.get("run", {}))
    lines += _headline_section(metrics)
    lines += _groups_section(metrics)
    lines += _per_class_sections(metrics, report_dir)
    lines += _training_section(run_dir, report_dir)
    lines += _examples_section(examples, report_dir)
    atomic_write_text(out, "\n".join(lines).rstrip() + "\n")
    return out
