"""Is an image like the training images? An out-of-distribution score for screening.

The score is the cosine distance from the image's statistics (teachers.sampling.image_statistics: its grey-level
histogram, gradient-orientation histogram and co-occurrence texture, info bar cropped) to those of its k-th nearest
training image (Sun et al. 2022, "Out-of-Distribution Detection with Deep Nearest Neighbors": non-parametric, no
assumption that a class is one Gaussian). Another instrument, detector, material or magnification changes these
statistics first. Measured against the ViT's cls embedding, the maximum softmax probability, the energy of the class
scores and a class-conditional Mahalanobis distance in benchmarks/ood.py: on the demo model, the cls embedding of a
ViT trained on 140 synthetic images separated real micrographs far worse (results/ood.md). The threshold comes from
the training images alone: each is scored against the others (leave one out) and the threshold is the `recall`
quantile of those scores, so that about that share of in-distribution images passes.

Saved beside the model as familiarity.safetensors (the training images' statistics, float16) and calibration.json's
"familiarity" entry (k, threshold, recall); loaded with safetensors, never unpickled.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

K = 5
IMAGES_PER_NEIGHBOUR = 20
RECALL = 0.95  # share of in-distribution (training) images the threshold lets through
FILE = "familiarity.safetensors"


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


@dataclass
class Familiarity:
    bank: np.ndarray  # [N, D] the training images' statistics
    threshold: float  # a score above it is "unfamiliar"
    k: int = K
    recall: float = RECALL

    @classmethod
    def fit(cls, embeddings: np.ndarray, k: int | None = None, recall: float = RECALL) -> Familiarity:
        """k: K, or one per IMAGES_PER_NEIGHBOUR training images when there are fewer, so that an image's k-th
        neighbour is still one of its own kind in a small training set."""
        k = k or max(1, min(K, len(embeddings) // IMAGES_PER_NEIGHBOUR))
        if len(embeddings) <= k:
            raise ValueError(f"familiarity needs more than k = {k} training images, got {len(embeddings)}")
        own = knn_distance(embeddings, embeddings, k, leave_one_out=True)
        return cls(_normalised(embeddings), float(np.quantile(own, recall)), k, recall)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        return knn_distance(embeddings, self.bank, self.k)

    def save(self, run_dir: str | os.PathLike) -> dict:
        save_file({"bank": torch.from_numpy(self.bank).half()}, str(Path(run_dir) / FILE))
        return {"k": self.k, "threshold": self.threshold, "recall": self.recall, "images": len(self.bank)}

    @classmethod
    def load(cls, run_dir: str | os.PathLike, entry: dict) -> Familiarity:
        bank = load_file(str(Path(run_dir) / FILE))["bank"].float().numpy()
        return cls(bank, float(entry["threshold"]), int(entry["k"]), float(entry["recall"]))


LOW_CONFIDENCE = 0.5  # calibrated top-1 probability below it: "low_confidence"


def flag(confidence: float, ood_score: float | None, threshold: float | None) -> str:
    """ok, low_confidence or unfamiliar (an unfamiliar image's confidence means nothing, so it wins)."""
    if ood_score is not None and threshold is not None and ood_score > threshold:
        return "unfamiliar"
    return "low_confidence" if confidence < LOW_CONFIDENCE else "ok"
