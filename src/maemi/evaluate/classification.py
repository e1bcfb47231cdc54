"""Classification metrics for zero-shot and few-shot MAEMI: top-1 and top-5 accuracy, per-class precision, recall, F1
and support (the paper's Tables 7 and 9), macro averages and the confusion matrix, drawn as a PNG.

The model ranks the class names per sample (by likelihood); these functions only read the rankings.

Decisions:
- The prediction is the first-ranked class. A class never predicted has precision 0 (sklearn's zero_division=0).
- Macro averages are taken over the classes present in y_true: a class absent from the evaluated set says nothing
  about the model, and counting it as 0 would lower the average for a test split that simply lacks it.
- Confusion matrix: rows are true classes, columns predicted classes, both in the order of `classes`.

References: scikit-learn's precision_recall_fscore_support and confusion_matrix; matplotlib's object-oriented API
without pyplot (Figure + Agg canvas), which leaves the user's backend alone and is safe in a server.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from maemi.fileio import atomic_write_bytes


def classification_metrics(y_true: list[str], ranked: list[list[str]], classes: list[str]) -> dict:
    """y_true: the true class per sample; ranked: class names by descending score per sample; classes: the order of
    the per-class table and the confusion matrix.

    Returns {"n", "top1", "top5", "classes", "per_class": {name: {"precision", "recall", "f1", "support"}},
             "macro": {"precision", "recall", "f1"}, "confusion_matrix": [[count]] (rows true, columns predicted)}.
    """
    _check_inputs(y_true, ranked, classes)
    y_pred = [r[0] for r in ranked]
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0
    )
    present = support > 0
    return {
        "n": len(y_true),
        "top1": _top_k(y_true, ranked, 1),
        "top5": _top_k(y_true, ranked, 5),
        "classes": list(classes),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "macro": {
            "precision": float(precision[present].mean()),
            "recall": float(recall[present].mean()),
            "f1": float(f1[present].mean()),
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist(),
    }


def _top_k(y_true: list[str], ranked: list[list[str]], k: int) -> float:
    return float(np.mean([y in r[:k] for y, r in zip(y_true, ranked)]))


def _check_inputs(y_true: list[str], ranked: list[list[str]], classes: list[str]) -> None:
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes contains duplicates: {classes}")
    if len(y_true) != len(ranked):
        raise ValueError(f"{len(y_true)} true labels but {len(ranked)} rankings: one of each per sample")
    if not y_true:
        raise ValueError("no samples to score")
    known = set(classes)
    for i, (y, r) in enumerate(zip(y_true, ranked)):
        if y not in known:
            raise ValueError(f"sample {i}: true class {y!r} is not one of the classes {classes}")
        if not r:
            raise ValueError(f"sample {i}: empty ranking")
        unknown = [c for c in r if c not in known]
        if unknown:
            raise ValueError(f"sample {i}: ranking names unknown classes {unknown}")


def plot_confusion_matrix(
    cm: list[list[int]] | np.ndarray, classes: list[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> Path:
    """Draw cm (rows true, columns predicted) with a count in every cell; write it to path as a PNG, atomically."""
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {n} classes; expected ({n}, {n})")
    side = max(4.0, 0.6 * n + 2.5)  # inches: room for n cells and rotated labels
    fig = Figure(figsize=(side + 1.0, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(cm, cmap="Blues", vmin=0)
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(ticks, labels=classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    dark = cm.max() / 2 if cm.max() > 0 else 1
    for i in range(n):
        for j in range(n):
            # white on dark cells, black on light ones, so every count stays readable
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > dark else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
