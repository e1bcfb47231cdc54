"""Which images go together in multi-image records (MAEMI paper, appendix A.6).

- Few-shot classification: the K training images most cosine-similar to the query as demonstrations, most similar
  last, nearest the query (open_flamingo's RICES, Yang et al. 2022 "An Empirical Study of GPT-3 for Few-Shot
  Knowledge-Based VQA"). Inference keeps that order; the teacher's training records shuffle it (see
  pipeline._few_shot_records).
- Inter-class similarity: the most similar pairs of images from different classes.
- Intra-class dissimilarity: the least similar pairs of images within one class.
- Spatial heterogeneity: the images with the most uneven size distribution, grouped 2-4 per record.

Embeddings come from any `ImageEmbedder`; until a model is trained, `HandcraftedEmbedder` (thumbnail, intensity and
gradient-orientation histograms, GLCM statistics) stands in for the paper's ViT cls embedding. Ties are always broken
by index, so the same inputs give the same groups.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
from PIL import Image
from skimage.feature import graycomatrix, graycoprops

from maemi.cpu import map_in_processes, worker_count
from maemi.data.images import ImageReadError, crop_info_bar, load_grey


class ImageEmbedder(Protocol):
    def embed(self, paths: Sequence[Path]) -> np.ndarray:  # [N, D], rows L2-normalised
        ...


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


class HandcraftedEmbedder:
    """A fixed image embedding: 32x32 thumbnail (standardised), 32-bin intensity histogram, 16-bin gradient-orientation
    histogram (magnitude-weighted, 180-degree periodic) and GLCM contrast/homogeneity/energy/correlation at 4 angles.
    Each block is L2-normalised before concatenation so no block dominates; embeddings are cached by path."""

    thumb_side = 32

    def __init__(self) -> None:
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def embed(self, paths: Sequence[Path]) -> np.ndarray:
        return np.stack([self.embed_one(Path(p)) for p in paths]) if paths else np.zeros((0, self.dim))

    @property
    def dim(self) -> int:
        return self.thumb_side**2 + 32 + 16 + 16

    def embed_ahead(self, paths: Sequence[Path], workers: int | None = None) -> None:
        """Embed many files at once in worker processes (maemi.cpu.worker_count's), into the cache (50 ms an image in
        one process). A file that cannot be read is left to embed_one, which raises for it."""
        todo = [str(p) for p in paths if str(p) not in self._cache]
        n = worker_count(len(todo), workers)
        if n <= 1:
            return
        for key, vec in zip(todo, map_in_processes(_embedding_or_none, todo, n, chunksize=8)):
            if vec is not None:
                with self._lock:
                    self._cache[key] = vec

    def embed_one(self, path: Path) -> np.ndarray:
        key = str(path)
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        grey = load_grey(path)
        vec = self.features(crop_info_bar(grey))
        with self._lock:
            self._cache[key] = vec
        return vec

    def features(self, grey: np.ndarray) -> np.ndarray:
        s = self.thumb_side
        thumb = np.asarray(Image.fromarray(grey.astype(np.float32), mode="F").resize((s, s), Image.Resampling.BOX))
        thumb = (thumb - thumb.mean()) / max(float(thumb.std()), 1e-6)
        blocks = (_unit(np.asarray(thumb.ravel(), dtype=np.float64)), *statistics_blocks(grey))
        return _unit(np.concatenate(blocks)).astype(np.float32)


def _embedding_or_none(path: str) -> np.ndarray | None:
    try:
        return HandcraftedEmbedder().embed_one(Path(path))
    except ImageReadError:
        return None


def statistics_blocks(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intensity histogram, gradient-orientation histogram and GLCM texture, each L2-normalised."""
    hist, _ = np.histogram(grey, bins=32, range=(0.0, 1.0))
    gy, gx = np.gradient(grey.astype(np.float32))
    angle = np.mod(np.arctan2(gy, gx), np.pi)  # orientation, not direction: 0 and 180 degrees are the same edge
    orient, _ = np.histogram(angle, bins=16, range=(0.0, np.pi), weights=np.hypot(gx, gy))
    levels = np.clip(grey * 32, 0, 31).astype(np.uint8)
    glcm = graycomatrix(levels, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=32, symmetric=True, normed=True)
    tex = np.concatenate([graycoprops(glcm, p).ravel() for p in ("contrast", "homogeneity", "energy", "correlation")])
    tex = np.nan_to_num(tex)  # correlation is undefined on a flat image
    return tuple(_unit(np.asarray(b, dtype=np.float64)) for b in (hist, orient, tex))


def image_statistics(grey: np.ndarray) -> np.ndarray:
    """HandcraftedEmbedder's features without the thumbnail: how the image's grey levels, edges and texture are
    distributed, whatever it shows. What an instrument, a detector or a material changes first (evaluate.familiarity).
    `grey`: (H, W) in [0, 1], info bar already cropped."""
    return _unit(np.concatenate(statistics_blocks(grey))).astype(np.float32)


def cosine_matrix(embs: np.ndarray) -> np.ndarray:
    e = embs / np.maximum(np.linalg.norm(embs, axis=1, keepdims=True), 1e-12)
    return e @ e.T  # [N, N]


def few_shot_demos(query_emb: np.ndarray, support_embs: np.ndarray, k: int, exclude: Sequence[int] = ()) -> np.ndarray:
    """Indices of the k support images most cosine-similar to the query, ordered so the most similar comes last."""
    q = query_emb / max(float(np.linalg.norm(query_emb)), 1e-12)
    s = support_embs / np.maximum(np.linalg.norm(support_embs, axis=1, keepdims=True), 1e-12)
    sims = s @ q  # [N]
    keep = np.setdiff1d(np.arange(len(sims)), np.asarray(exclude, dtype=int))
    # most similar first, ties by lower index; take k, then reverse so the best demonstration sits next to the query
    order = keep[np.lexsort((keep, -sims[keep]))][:k]
    return order[::-1].copy()


def _greedy_pairs(score: np.ndarray, allowed: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Pairs (i < j) with `allowed[i, j]`, lowest `score` first, ties by (i, j); each image joins at most one pair,
    so a few outliers cannot fill every record."""
    i, j = np.triu_indices(len(score), k=1)
    keep = allowed[i, j]
    i, j = i[keep], j[keep]
    order = np.lexsort((j, i, score[i, j]))
    used: set[int] = set()
    out: list[tuple[int, int]] = []
    for a, b in zip(i[order].tolist(), j[order].tolist()):
        if len(out) == n:
            break
        if a not in used and b not in used:
            out.append((a, b))
            used.update((a, b))
    return out


def _label_array(labels: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray]:
    names = sorted({lab for lab in labels if lab is not None})
    codes = np.array([names.index(lab) if lab is not None else -1 for lab in labels])
    return codes, codes >= 0


def inter_class_pairs(embs: np.ndarray, labels: Sequence[str | None], n: int) -> list[tuple[int, int]]:
    """The n most similar pairs (i < j) of images with different labels (unlabelled images are left out)."""
    codes, known = _label_array(labels)
    allowed = (codes[:, None] != codes[None, :]) & known[:, None] & known[None, :]
    return _greedy_pairs(-cosine_matrix(embs), allowed, n)


def intra_class_pairs(embs: np.ndarray, labels: Sequence[str | None], n: int) -> list[tuple[int, int]]:
    """The n least similar pairs (i < j) within a class, taken from the classes in turn so every class is asked."""
    codes, _ = _label_array(labels)
    per_class = []
    for c in range(codes.max(initial=-1) + 1):
        idx = np.flatnonzero(codes == c)  # within one class only: a [n_c, n_c] matrix, not [N, N]
        pairs = _greedy_pairs(cosine_matrix(embs[idx]), np.ones((len(idx), len(idx)), dtype=bool), n)
        per_class.append([(int(idx[a]), int(idx[b])) for a, b in pairs])
    out: list[tuple[int, int]] = []
    for rank in range(n):
        for pairs in per_class:
            if len(out) < n and rank < len(pairs):
                out.append(pairs[rank])
    return out


def spatial_heterogeneous(size_heterogeneity: Sequence[float], n: int, per_record: int = 3) -> list[list[int]]:
    """n groups of `per_record` (2-4) images, the most size-heterogeneous first (NaN counts as least)."""
    if not 2 <= per_record <= 4:
        raise ValueError(f"per_record must be 2 to 4 images, got {per_record}")
    het = np.nan_to_num(np.asarray(size_heterogeneity, dtype=np.float64), nan=-np.inf)
    idx = np.arange(len(het))
    order = idx[np.lexsort((idx, -het))]
    return [order[g * per_record:(g + 1) * per_record].tolist() for g in range(min(n, len(order) // per_record))]
