"""Is an image like the training images? An out-of-distribution score for screening.

The score compares the image's statistics (teachers.sampling.image_statistics, info bar cropped: its grey-level
histogram, gradient-orientation histogram and co-occurrence texture) with the training images' by k-nearest
neighbours (Sun et al. 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors": non-parametric, no
assumption that a class is one Gaussian), one block of statistics at a time: per block, the cosine distance to the
k-th nearest training image, divided by that block's own training threshold; the score is the largest of the three.
An image is unfamiliar when it is far in any one block. Another instrument, detector, material or magnification
changes these statistics first, but not always all of them.

Why per block: the cosine of the concatenated blocks (the first version) is the mean of the three blocks' cosines, so
an image whose texture is foreign but whose grey levels and edge orientations look like some training image's was
averaged back into the cloud. Measured on a development setup kept apart from benchmarks/ood.py (in distribution:
each model's validation split, and for the demo model 200 synthetic images of another seed; out of distribution: a
synthetic SEM corpus of another seed than the benchmark's for the NEU-SDD model, NEU-SDD validation images for the
demo model), thresholds from the training images alone: the NEU-SDD model flagged 50.5% of the synthetic SEM images
with the concatenated cosine and 97.5% per block, 4.4% of its validation images both ways (AUROC 0.914 -> 0.993); the
demo model, already right, stayed so (NEU-SDD 98.3% -> 100%; its validation images 5% both ways, the new synthetic
ones 4.5% -> 6.5%). Standardising each dimension by the training mean and deviation (31-45% of the synthetic SEM
images), whitening it (up to 92.5%, but then 35% of the demo model's validation images) or adding the ViT's cls
embedding as a fourth block (98.5%, but 5.6% of the NEU-SDD validation images, AUROC 0.987) did worse.

The thresholds come from the training images alone: each is scored against the others (leave one out), each block's
threshold is the `recall` quantile of its distances, and the overall threshold the `recall` quantile of the scores,
so that about that share of in-distribution images passes.

Saved beside the model as familiarity.safetensors (the training images' statistics, float16) and calibration.json's
"familiarity" entry (k, threshold, recall, blocks, block_thresholds); loaded with safetensors, never unpickled. An
entry written before the blocks (no "blocks" in it) keeps the score it was fitted with, the cosine of the whole
vector, with a warning to re-run `maemi calibrate`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from maemi.teachers.sampling import statistics_blocks

K = 5
IMAGES_PER_NEIGHBOUR = 20
RECALL = 0.95  # share of in-distribution (training) images the threshold lets through
FILE = "familiarity.safetensors"
# widths of image_statistics' blocks (grey histogram, gradient orientations, texture), read from the code that makes them
STATISTICS_BLOCKS = tuple(len(b) for b in statistics_blocks(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)))
MIN_BLOCK_THRESHOLD = 1e-4  # a block in which the training images are all alike still divides by something


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_distance(queries: np.ndarray, bank: np.ndarray, k: int, leave_one_out: bool = False) -> np.ndarray:
    """Cosine distance of each query to its k-th nearest row of `bank` (rows L2-normalised here). leave_one_out:
    the queries are the bank itself, and each skips its own row."""
    similarity = _normalised(queries) @ _normalised(bank).T  # [Q, B]
    if leave_one_out:
        np.fill_diagonal(similarity, -np.inf)
    k = min(k, similarity.shape[1] - (1 if leave_one_out else 0))
    kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
    return 1.0 - kth


def _edges(blocks: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(blocks).tolist()
    return list(zip([0] + ends[:-1], ends))


def block_distances(queries: np.ndarray, bank: np.ndarray, blocks: Sequence[int], k: int,
                    leave_one_out: bool = False) -> np.ndarray:
    """knn_distance within each block of columns: [Q, len(blocks)]."""
    return np.stack([knn_distance(queries[:, a:b], bank[:, a:b], k, leave_one_out) for a, b in _edges(blocks)], 1)


@dataclass
class Familiarity:
    bank: np.ndarray  # [N, D] the training images' statistics
    threshold: float  # a score above it is "unfamiliar"
    k: int = K
    recall: float = RECALL
    blocks: tuple[int, ...] = ()  # widths of the blocks of columns, in order; () = one block, the whole vector
    block_thresholds: tuple[float, ...] = field(default=())  # each block's distance is divided by its own

    def __post_init__(self):
        self.blocks = tuple(self.blocks) or (self.bank.shape[1],)
        self.block_thresholds = tuple(self.block_thresholds) or (1.0,) * len(self.blocks)
        if sum(self.blocks) != self.bank.shape[1] or len(self.block_thresholds) != len(self.blocks):
            raise ValueError(f"blocks {self.blocks} (thresholds {self.block_thresholds}) do not cover the bank's "
                             f"{self.bank.shape[1]} columns")

    @classmethod
    def fit(cls, embeddings: np.ndarray, k: int | None = None, recall: float = RECALL,
            blocks: Sequence[int] | None = None) -> Familiarity:
        """k: K, or one per IMAGES_PER_NEIGHBOUR training images when there are fewer, so that an image's k-th
        neighbour is still one of its own kind in a small training set. blocks: the widths of the column blocks
        scored apart; None = STATISTICS_BLOCKS for image_statistics vectors (their width), else the whole vector."""
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if blocks is None:
            blocks = STATISTICS_BLOCKS if embeddings.shape[1] == sum(STATISTICS_BLOCKS) else (embeddings.shape[1],)
        k = k or max(1, min(K, len(embeddings) // IMAGES_PER_NEIGHBOUR))
        if len(embeddings) <= k:
            raise ValueError(f"familiarity needs more than k = {k} training images, got {len(embeddings)}")
        bank = _normalised(embeddings).astype(np.float16).astype(np.float32)  # what save() keeps, so load() agrees
        own = block_distances(bank, bank, blocks, k, leave_one_out=True)  # [N, blocks]
        block_thresholds = np.maximum(np.quantile(own, recall, axis=0), MIN_BLOCK_THRESHOLD)
        score = (own / block_thresholds).max(1)
        return cls(bank, float(np.quantile(score, recall)), k, recall, tuple(int(b) for b in blocks),
                   tuple(float(t) for t in block_thresholds))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Per image, the largest over blocks of (distance to the k-th nearest training image / block threshold)."""
        distances = block_distances(np.asarray(embeddings, dtype=np.float32), self.bank, self.blocks, self.k)
        return (distances / np.asarray(self.block_thresholds)).max(1)

    def save(self, run_dir: str | os.PathLike) -> dict:
        save_file({"bank": torch.from_numpy(np.ascontiguousarray(self.bank)).half()}, str(Path(run_dir) / FILE))
        return {"k": self.k, "threshold": self.threshold, "recall": self.recall, "images": len(self.bank),
                "blocks": list(self.blocks), "block_thresholds": list(self.block_thresholds)}

    @classmethod
    def load(cls, run_dir: str | os.PathLike, entry: dict) -> Familiarity:
        bank = load_file(str(Path(run_dir) / FILE))["bank"].float().numpy()
        if "blocks" not in entry:
            warnings.warn(f"{run_dir}: its familiarity threshold predates the per-block score and keeps the old, "
                          f"weaker one; re-run `maemi calibrate {run_dir} --data VAL.jsonl` to refit it",
                          stacklevel=2)
        return cls(bank, float(entry["threshold"]), int(entry["k"]), float(entry["recall"]),
                   tuple(entry.get("blocks", ())), tuple(entry.get("block_thresholds", ())))


LOW_CONFIDENCE = 0.5  # calibrated top-1 probability below it: "low_confidence"


def flag(confidence: float, ood_score: float | None, threshold: float | None) -> str:
    """ok, low_confidence or unfamiliar (an unfamiliar image's confidence means nothing, so it wins)."""
    if ood_score is not None and threshold is not None and ood_score > threshold:
        return "unfamiliar"
    return "low_confidence" if confidence < LOW_CONFIDENCE else "ok"
