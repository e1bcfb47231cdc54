"""`maemi eval`: a trained run on held-out instruction records -> metrics.json, report.md, the answers.

- Generation: every record whose task is not classify is answered (batched greedy) from its own prompt; the gpt turn
  is the reference. BLEU-2/4, ROUGE-1/2/L, METEOR and CIDEr overall and per task, family and length.
- The shuffled-images control: the same prompts with each record's images replaced by another test record's images
  (a seeded cyclic permutation of the distinct image lists, so no record keeps its own). If the answers come from the
  image and not from the question alone, the scores drop.
- Classification on the test images that have a classify record (one per image): zero-shot over the run's classes
  and few-shot with K demonstrations from the training images (Assistant.classify), top-1/top-5, per-class P/R/F1,
  confusion matrices.

Decisions: `limit` keeps the first N records of the file; records whose prompt does not fit the model (too many
tokens) are left out and counted in metrics["run"]; a multi-turn record is evaluated on its first question.

References: Srinivas et al. 2024 (MAEMI, Tables 1, 3-7, 9); Sattolo (1986) for the cyclic permutation.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maemi.assistant import Assistant, caveats
from maemi.evaluate.calibration import expected_calibration_error, probabilities, reliability_png
from maemi.evaluate.classification import classification_metrics
from maemi.evaluate.metrics import generation_metrics
from maemi.evaluate.numeric import measured_numbers, measured_words, numeric_fidelity, word_fidelity
from maemi.evaluate.report import write_report
from maemi.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text
from maemi.measure.slots import fill
from maemi.model import IMAGE_TOKEN
from maemi.teachers.records import read_records

GROUPS = ("task", "family", "length")


@dataclass
class EvalConfig:
    shots: int = 5  # few-shot demonstrations; 0 skips few-shot classification
    limit: int | None = None  # only the first N records of the test file
    sample: int | None = None  # generation on a seeded random N of the records (classification still sees every
    #                            labelled image): a CPU-sized estimate of the metrics on a large test file
    batch_size: int = 16
    examples: int = 4  # example answers shown in the report
    seed: int = 0  # the shuffled-images control
    views: int = 1  # > 1: classification again with test-time augmentation over this many dihedral views (extra
    #                 sections zero_shot_views and few_shot_views next to the single-view ones)


def shuffled_image_lists(image_lists: list[tuple[str, ...]], seed: int) -> list[tuple[str, ...] | None]:
    """For each record's images, another record's images with as many entries: a seeded cyclic permutation (Sattolo's
    algorithm, hence no fixed point) of the distinct image lists of each size. None where a size has only one."""
    rng = random.Random(seed)
    by_size: dict[int, list[tuple[str, ...]]] = {}
    for images in sorted(set(image_lists)):
        by_size.setdefault(len(images), []).append(images)
    mapping: dict[tuple[str, ...], tuple[str, ...]] = {}
    for distinct in by_size.values():
        if len(distinct) < 2:
            continue
        order = list(range(len(distinct)))
        for i in range(len(order) - 1, 0, -1):
            j = rng.randrange(i)  # j < i (never i itself): one single cycle
            order[i], order[j] = order[j], order[i]
        mapping.update({images: distinct[k] for images, k in zip(distinct, order)})
    return [mapping.get(images) for images in image_lists]


def _question(prompt: str) -> str:
    return prompt.replace(f"{IMAGE_TOKEN}\n", "").replace(IMAGE_TOKEN, "").strip()


def _pick_examples(records: list[dict], n: int) -> list[int]:
    """Indices of up to n records, one per task first (in order of appearance), then the next ones."""
    first_of_task: dict[str, int] = {}
    for i, rec in enumerate(records):
        first_of_task.setdefault(rec["task"], i)
    picked = list(first_of_task.values())[:n]
    picked += [i for i in range(len(records)) if i not in picked][: n - len(picked)]
    return sorted(picked)


def _fits(assistant: Assistant, n_images: int, prompt: str) -> str | None:
    """None if the model takes this prompt, else why not (the processor's own check, on blank images)."""
    blank = torch.zeros(assistant.model.processor.image_shape)
    try:
        assistant.model.processor([blank] * n_images, prompt)
    except ValueError as e:
        return str(e)
    return None


def as_the_assistant_says_it(record: dict, assistant: Assistant, root: Path) -> str:
    """The teacher's answer, with the caveats the assistant adds (assistant.caveats: a count or size of objects that
    its image does not separate from the background; an area fraction of a film with vacuum beyond it): the same
    rule on both sides, so that a right answer with its caveat scores as right. The caveats have no numbers."""
    turn = record["conversations"][1]
    if not assistant.measured_answers or not turn.get("slots"):
        return turn["value"]
    caveat = caveats(turn["slots"], assistant.measure_item([root / p for p in record["images"]])[2])
    return f"{turn['value']} {caveat}" if caveat else turn["value"]


def evaluate_generation(assistant: Assistant, records: list[dict], root: Path, seed: int, progress: bool
                        ) -> tuple[dict, list[dict]]:
    """Metrics sections "generation" and "generation_shuffled", and one answer row per record."""
    images = [tuple(rec["images"]) for rec in records]
    prompts = [rec["conversations"][0]["value"] for rec in records]
    shuffled = shuffled_image_lists(images, seed)
    control = [i for i, other in enumerate(shuffled) if other is not None]
    items = [([root / p for p in imgs], prompt) for imgs, prompt in zip(images, prompts)]
    items += [([root / p for p in shuffled[i]], prompts[i]) for i in control]
    if assistant.measured_answers:
        assistant.measure_ahead(sorted({path for paths, _ in items for path in paths}))
    references = [as_the_assistant_says_it(rec, assistant, root) for rec in records]
    detailed = assistant.answer_detailed(items, progress=progress)
    answers = [a.text for a in detailed]
    real, control_answers = answers[: len(records)], answers[len(records):]
    groups = {key: [str(rec[key]) for rec in records] for key in GROUPS}
    measured = [measured_numbers(rec) for rec in records]
    words = [measured_words(rec) for rec in records]
    sections = {"generation": generation_metrics(references, real, groups),
                "numeric_fidelity": numeric_fidelity(references, real, groups, measured),
                "word_fidelity": word_fidelity(words, real)}
    if control:
        control_groups = {key: [values[i] for i in control] for key, values in groups.items()}
        # what the reference's own template states with the shuffled images' measurement: the control's floor
        floors = [fill(template, assistant.measure_item([root / p for p in shuffled[i]])[1]).text
                  if (template := records[i]["conversations"][1].get("template")) else "" for i in control]
        sections["generation_shuffled"] = generation_metrics([references[i] for i in control], control_answers,
                                                             control_groups)
        sections["numeric_fidelity_shuffled"] = numeric_fidelity([references[i] for i in control], control_answers,
                                                                 control_groups, [measured[i] for i in control],
                                                                 floors)
        sections["word_fidelity_shuffled"] = word_fidelity([words[i] for i in control], control_answers)
    by_record = dict(zip(control, control_answers))
    rows = [{"id": rec["id"], "task": rec["task"], "family": rec["family"], "length": rec["length"],
             "images": rec["images"], "question": _question(prompts[i]), "reference": references[i],
             "answer": real[i], "template": detailed[i].template, "slots": detailed[i].slots,
             "unknown_slots": detailed[i].missing,
             "shuffled_images": list(shuffled[i]) if shuffled[i] else None,
             "shuffled_answer": by_record.get(i)} for i, rec in enumerate(records)]
    return sections, rows


def classification_images(records: list[dict]) -> dict[str, str]:
    """relpath -> label of the images that have a (single-image, labelled) classify record."""
    labelled: dict[str, str] = {}
    for rec in records:
        if (rec["task"] == "classify" and rec["family"] != "few_shot" and len(rec["images"]) == 1
                and isinstance(rec.get("label"), str)):
            labelled.setdefault(rec["images"][0], rec["label"])
    return labelled


def evaluate_classification(assistant: Assistant, labelled: dict[str, str], root: Path, shots: int, progress: bool,
                            views: int = 1, out: Path | None = None) -> tuple[dict, list[dict], dict]:
    """Metrics sections "zero_shot" and (shots > 0) "few_shot", with views > 1 also "zero_shot_views" and
    "few_shot_views"; one prediction row per image, and what was left out. Each section has the expected calibration
    error of its probabilities (and without the run's temperature, when it has one); with `out`, the zero-shot
    reliability diagram is written there as reliability.png."""
    sections, left_out = {}, {}
    rels = sorted(labelled)
    rows = [{"image": rel, "label": labelled[rel]} for rel in rels]
    modes = [("zero_shot", 0, assistant.classes)]
    if shots > 0:
        support = assistant.support_set(progress=progress)
        modes.append(("few_shot", min(shots, len(support.paths)), support.classes))
    if views > 1:
        modes += [(f"{key}_views", k, classes) for key, k, classes in modes]
    for key, k, classes in modes:
        known = [i for i, rel in enumerate(rels) if labelled[rel] in classes]
        if len(known) < len(rels) and not key.endswith("_views"):
            left_out[f"{key}_unknown_label"] = len(rels) - len(known)  # a class the model cannot answer
        if not known:
            continue
        n_views = views if key.endswith("_views") else 1
        ranked = assistant.classify([root / rels[i] for i in known], shots=k, top_k=None, progress=progress,
                                    views=n_views)
        sections[key] = classification_metrics([labelled[rels[i]] for i in known],
                                                [[label for label, _ in r] for r in ranked], classes)
        sections[key].update(_calibration(ranked, [labelled[rels[i]] for i in known], classes, assistant.temperature,
                                          out / "reliability.png" if out is not None and key == "zero_shot" else None))
        if k:
            sections[key]["shots"] = k
        if n_views > 1:
            sections[key]["views"] = n_views
        for i, r in zip(known, ranked):
            rows[i][key] = [[label, round(p, 6)] for label, p in r[:5]]
    return sections, rows, left_out


def _calibration(ranked: list[list[tuple[str, float]]], labels: list[str], classes: list[str], temperature: float,
                 png: Path | None) -> dict:
    """ECE of the probabilities as classify gave them, and of the raw softmax when a temperature was applied (the
    raw one is recovered from the calibrated: log p = score / T + const)."""
    probs = np.array([[dict(r)[c] for c in classes] for r in ranked])
    truth = np.array([classes.index(label) for label in labels])
    result = {"ece": expected_calibration_error(probs, truth), "temperature": temperature}
    if temperature != 1.0:
        raw = probabilities(temperature * np.log(np.maximum(probs, 1e-300)))
        result["ece_uncalibrated"] = expected_calibration_error(raw, truth)
    if png is not None:
        png.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(png, reliability_png(probs, truth, f"zero-shot, T = {temperature:.2f}"))
    return result


def evaluate_run(run_dir: str | os.PathLike, data: str | os.PathLike, images: str | os.PathLike | None = None,
                 out: str | os.PathLike | None = None, config: EvalConfig | None = None,
                 device: str = "auto", assistant: Assistant | None = None, progress: bool = True) -> dict:
    """Evaluate the run on the records in `data` (images under `images`, default run.json images_root); write
    metrics.json, report.md, answers.jsonl and classifications.jsonl to `out` (default RUN/eval). Return the
    metrics (report.py's layout)."""
    config = config or EvalConfig()
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "eval"
    assistant = assistant or Assistant.load(run_dir, device=device, batch_size=config.batch_size)
    root = Path(images) if images is not None else Path(str(assistant.run_value("images_root")))
    records = read_records(data)[: config.limit]
    if not records:
        raise ValueError(f"{data}: no records to evaluate")
    started = time.perf_counter()

    generation, too_long = [], 0
    for rec in records:
        if rec["task"] == "classify":
            continue
        if _fits(assistant, len(rec["images"]), rec["conversations"][0]["value"]) is None:
            generation.append(rec)
        else:
            too_long += 1
    if config.sample is not None and len(generation) > config.sample:
        keep = sorted(random.Random(config.seed).sample(range(len(generation)), config.sample))
        generation = [generation[i] for i in keep]
    metrics: dict = {}
    answer_rows: list[dict] = []
    if generation:
        sections, answer_rows = evaluate_generation(assistant, generation, root, config.seed, progress)
        metrics.update(sections)
    labelled = classification_images(records)
    class_rows, left_out = [], {}
    if labelled:
        sections, class_rows, left_out = evaluate_classification(assistant, labelled, root, config.shots, progress,
                                                                 config.views, out)
        metrics.update(sections)

    run_facts = {"run_dir": str(run_dir), "data": str(data), "images": str(root), "device": str(assistant.device),
                 "records": len(records), "generation_records": len(generation),
                 "classification_images": len(labelled), "seconds": round(time.perf_counter() - started, 1)}
    if too_long:
        run_facts["left_out_prompt_too_long"] = too_long
    run_facts.update({f"left_out_{k}": v for k, v in left_out.items()})
    metrics = {"run": run_facts, **metrics}

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "answers.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in answer_rows))
    atomic_write_text(out / "classifications.jsonl",
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in class_rows))
    examples = [dict(answer_rows[i], images=[str(root / p) for p in answer_rows[i]["images"]])
                for i in _pick_examples(generation, config.examples)]
    write_report(run_dir, metrics, examples, out / "report.md")
    return metrics
