"""Benchmark: calibrated confidence and out-of-distribution flags (issue 25). Prints tables and writes
benchmarks/results/ood.{json,md}.

For a calibrated run (`maemi calibrate`: temperature fitted on its validation split, familiarity threshold from its
training images alone), its held-out test images are the in-distribution (ID) set; each other set is out of
distribution (OOD). Per score: AUROC of ID against each OOD set, and the false-alarm rate at 95% ID recall (the share
of the OOD set that a threshold keeping 95% of the ID test images would let through: lower is better). Scores:
- knn: the product's flag (evaluate.familiarity): per block of the image statistics (grey histogram, gradient
  orientations, texture), the cosine distance to the 5th nearest training image's over that block's training
  threshold, the largest of the three;
- knn_concat: the first version of it, the cosine distance of the whole statistics vector (the three blocks
  concatenated) to the 5th nearest training image's;
- knn_vit: the same on the ViT's cls embedding;
- msp: 1 - the calibrated top-1 probability (Hendrycks & Gimpel 2017);
- energy: -T logsumexp(class scores / T) (Liu et al. 2020);
- mahalanobis: the smallest class-conditional Mahalanobis distance of the cls embedding, shared covariance fitted on
  the training images (Lee et al. 2018).
Then the product's flags (ok / low_confidence / unfamiliar) with the threshold the run carries: the share of each set
flagged unfamiliar, the expected calibration error on the ID test images, and, where a set's images belong to one of
the run's classes (real particles, real nanowires), top-1 and the share of wrong answers that a flag catches. The
ECE comes with a 95% bootstrap interval over the ID test images (1000 resamples): on a few dozen images it is wide.

    .venv/bin/python benchmarks/ood.py --run maemi-demo/run --test maemi-demo/test.jsonl --name demo \\
        --ood neu=../shared/data/neu-det --ood stem-particles=../shared/data/stem-particles/dataset/images:Particles \\
        --ood sem-nanowires=../shared/data/sem-nanowires/tiles:Nanowires
A set given as NAME=DIR:CLASS is also scored for top-1 against CLASS.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from maemi.assistant import Assistant
from maemi.data.datasets import scan_dataset
from maemi.evaluate.calibration import expected_calibration_error, probabilities
from maemi.evaluate.evaluate import classification_images
from maemi.evaluate.familiarity import LOW_CONFIDENCE, Familiarity, flag
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.teachers.records import read_records

RESULTS = Path(__file__).parent / "results"
SCORES = ("knn", "knn_concat", "knn_vit", "msp", "energy", "mahalanobis")


def mahalanobis_model(embeddings: np.ndarray, labels: list[str]):
    classes = sorted(set(labels))
    means = np.stack([embeddings[[i for i, c in enumerate(labels) if c == k]].mean(0) for k in classes])
    centred = embeddings - means[[classes.index(c) for c in labels]]
    precision = np.linalg.pinv(np.cov(centred, rowvar=False) + 1e-6 * np.eye(embeddings.shape[1]))

    def score(x: np.ndarray) -> np.ndarray:
        d = x[:, None, :] - means[None]  # [N, C, D]
        return np.einsum("ncd,de,nce->nc", d, precision, d).min(axis=1)
    return score


def ece_interval(probs: np.ndarray, truth: np.ndarray, resamples: int = 1000, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the expected calibration error over the images."""
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, len(truth), len(truth)) for _ in range(resamples)]
    values = [expected_calibration_error(probs[i], truth[i]) for i in draws]
    return [float(v) for v in np.quantile(values, [0.025, 0.975])]


def set_scores(assistant: Assistant, paths: list[Path], mahalanobis, knn_vit: Familiarity,
               knn_concat: Familiarity) -> dict:
    classes, raw = assistant.class_scores(paths)
    t = assistant.temperature
    probs = probabilities(raw, t)
    embeddings = assistant.embed(paths)
    statistics = np.stack([assistant.image_statistics(p) for p in paths])
    return {"classes": classes, "probs": probs, "knn": assistant.familiarity_scores(paths),
            "knn_concat": knn_concat.score(statistics), "knn_vit": knn_vit.score(embeddings), "msp": 1 - probs.max(1),
            "energy": -t * logsumexp(raw / t, axis=1), "mahalanobis": mahalanobis(embeddings)}


def fpr_at_95(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    threshold = np.quantile(id_scores, 0.95)
    return float((ood_scores <= threshold).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True, help="the run's held-out records (its ID test images)")
    parser.add_argument("--images", type=Path, default=None, help="images root of --test (default: the run's)")
    parser.add_argument("--name", required=True, help="the model's name in the results (demo, neu)")
    parser.add_argument("--ood", action="append", default=[], help="NAME=DIR or NAME=DIR:CLASS")
    args = parser.parse_args()

    assistant = Assistant.load(args.run, device="cpu")
    if assistant.familiarity is None:
        sys.exit(f"{args.run}: not calibrated; run `maemi calibrate {args.run} --data VAL.jsonl` first")
    root = args.images or Path(str(assistant.run_value("images_root")))
    train = {rec["images"][0]: rec["label"] for rec in read_records(str(assistant.run_value("train_data")))
             if len(rec["images"]) == 1 and isinstance(rec.get("label"), str)}
    train_paths = sorted(train)
    train_embeddings = assistant.embed([root / p for p in train_paths])
    mahalanobis = mahalanobis_model(train_embeddings, [train[p] for p in train_paths])
    knn_vit = Familiarity.fit(train_embeddings, blocks=(train_embeddings.shape[1],))
    train_statistics = np.stack([assistant.image_statistics(root / p) for p in train_paths])
    knn_concat = Familiarity.fit(train_statistics, blocks=(train_statistics.shape[1],))
    started = time.perf_counter()

    labelled = classification_images(read_records(args.test))
    test_rels = sorted(labelled)
    sets = {"id": (f"{args.name} test split", [root / r for r in test_rels], [labelled[r] for r in test_rels])}
    for spec in args.ood:
        name, _, where = spec.partition("=")
        folder, _, label = where.partition(":")
        paths = [s.path for s in scan_dataset(folder)]
        sets[name] = (folder, paths, [label] * len(paths) if label else None)

    threshold = assistant.familiarity.threshold
    results = {"model": args.name, "run": str(args.run), "temperature": assistant.temperature,
               "familiarity": assistant.calibration["familiarity"], "low_confidence_below": LOW_CONFIDENCE,
               "machine": f"{platform.processor() or platform.machine()}, {platform.system()}", "sets": {}}
    scored = {}
    for name, (where, paths, labels) in sets.items():
        s = set_scores(assistant, paths, mahalanobis, knn_vit, knn_concat)
        scored[name] = s
        confidence = s["probs"].max(1)
        flags = [flag(c, k, threshold) for c, k in zip(confidence, s["knn"])]
        row = {"where": where, "images": len(paths),
               "unfamiliar": float(np.mean([f == "unfamiliar" for f in flags])),
               "low_confidence": float(np.mean([f == "low_confidence" for f in flags])),
               "median_confidence": float(np.median(confidence)),
               "confident_above_0.9": float((confidence > 0.9).mean())}
        if labels is not None and all(label in s["classes"] for label in labels):
            predicted = [s["classes"][i] for i in s["probs"].argmax(1)]
            wrong = [p != label for p, label in zip(predicted, labels)]
            row["top1"] = float(1 - np.mean(wrong))
            row["wrong_flagged"] = (float(np.mean([f != "ok" for f, w in zip(flags, wrong) if w]))
                                    if any(wrong) else None)
            if name == "id":
                truth = np.array([s["classes"].index(label) for label in labels])
                row["ece"] = expected_calibration_error(s["probs"], truth)
                row["ece_interval"] = ece_interval(s["probs"], truth)
                row["ece_uncalibrated"] = expected_calibration_error(
                    probabilities(assistant.temperature * np.log(np.maximum(s["probs"], 1e-300))), truth)
        if name != "id":
            ood_id = np.r_[np.zeros(len(scored["id"]["knn"])), np.ones(len(paths))]
            row["scores"] = {score: {"auroc": float(roc_auc_score(ood_id, np.r_[scored["id"][score], s[score]])),
                                     "fpr_at_95_recall": fpr_at_95(scored["id"][score], s[score])}
                             for score in SCORES}
        results["sets"][name] = row
    results["seconds"] = round(time.perf_counter() - started, 1)

    lines = [f"# Out-of-distribution flags and calibration: the {args.name} model", "",
             f"Run `{args.run}`; temperature {assistant.temperature:.3f} (fitted on its validation split); unfamiliar "
             f"above {threshold:.4f} (per-block kNN, k = {results['familiarity']['k']}, 95% of its "
             f"{results['familiarity']['images']} training images within); low confidence below {LOW_CONFIDENCE}. "
             f"Machine: {results['machine']}. Written by benchmarks/ood.py.", "",
             "| set | images | flagged unfamiliar | low confidence | median confidence | confidence > 0.9 | top-1 | "
             "wrong answers flagged | ECE (uncalibrated) | ECE 95% interval |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]

    def fmt(v, spec=".3f"):
        return "-" if v is None else format(v, spec)
    for name, row in results["sets"].items():
        ece = f"{fmt(row.get('ece'))} ({fmt(row.get('ece_uncalibrated'))})" if "ece" in row else "-"
        interval = "{:.3f}-{:.3f}".format(*row["ece_interval"]) if "ece_interval" in row else "-"
        lines.append(f"| {name} | {row['images']} | {row['unfamiliar']:.3f} | {row['low_confidence']:.3f} | "
                     f"{row['median_confidence']:.3f} | {row['confident_above_0.9']:.3f} | {fmt(row.get('top1'))} | "
                     f"{fmt(row.get('wrong_flagged'))} | {ece} | {interval} |")
    lines += ["", "AUROC (ID test images against the set) and false-alarm rate at 95% ID recall, per score:", "",
              "| set | " + " | ".join(f"{s} AUROC | {s} FPR@95" for s in SCORES) + " |",
              "| --- |" + " ---: | ---: |" * len(SCORES)]
    for name, row in results["sets"].items():
        if "scores" in row:
            lines.append(f"| {name} | " + " | ".join(f"{row['scores'][s]['auroc']:.3f} | "
                                                     f"{row['scores'][s]['fpr_at_95_recall']:.3f}" for s in SCORES) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "ood.json"
    existing = json.loads(path.read_text()) if path.is_file() else {}
    existing[args.name] = results
    atomic_write_json(path, existing)
    md = RESULTS / "ood.md"
    sections = {}
    if md.is_file():
        for block in md.read_text().split("\n# ")[0:]:
            title = block.lstrip("# ").split("\n", 1)[0]
            sections[title] = "# " + block.lstrip("# ")
    sections[lines[0][2:]] = text
    atomic_write_text(md, "\n".join(v.rstrip("\n") + "\n" for v in sections.values()))


if __name__ == "__main__":
    main()
