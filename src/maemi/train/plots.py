"""The loss curve of a run (loss.png), drawn from its metrics.jsonl rows: training loss per logged step, validation
loss per epoch, on one axis of optimizer steps."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from maemi.fileio import atomic_write_bytes


def plot_loss(rows: Sequence[dict], path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch" and r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if steps:
        ax.plot([r["step"] for r in steps], [r["train_loss"] for r in steps], label="train (per logged step)",
                linewidth=1)
    if epochs:
        ax.plot([r["step"] for r in epochs], [r["val_loss"] for r in epochs], "o-", label="validation (per epoch)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy per answer token")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if steps or epochs:
        ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
