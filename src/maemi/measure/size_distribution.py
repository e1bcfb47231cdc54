"""The size distribution as particle sizing reports it: percentiles and a log-normal, the image frame's bias corrected.

A particle that touches the image frame is cut by it, so its size is too small; leaving the cut ones out is no cure
either, since a large particle touches the frame more often than a small one. So the distribution is taken over the
particles wholly inside, each weighted by the inverse of the chance that a particle of its extent lies wholly inside
the field: W H / ((W - w) (H - h)) for a bounding box w x h in a W x H field (Miles 1978, Lantuejoul 1980; ISO 13322-1's
guard frame). Reported, in the equivalent diameters of the objects:
- D10, D50, D90: number-weighted percentiles (ISO 9276-2's cumulative distribution Q0);
- the geometric mean and geometric standard deviation: the maximum-likelihood log-normal, the usual description of
  nanoparticle sizes (nucleation and growth give log-normal sizes; Granqvist and Buhrman, J. Appl. Phys. 1976).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass
class SizeDistribution:
    d10: float
    d50: float
    d90: float
    geometric_mean: float
    geometric_std: float  # dimensionless, at least 1
    objects_used: int  # the objects wholly inside the frame (all of them when every one touches it)
    objects_on_edge: int  # the objects the frame cuts


def frame_extents(labels: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per object of `ids` (labels in `labels`): its bounding box's (height, width) [N, 2] in px, and whether it
    touches the frame [N]."""
    boxes = ndimage.find_objects(labels)
    h, w = labels.shape
    extent = np.zeros((len(ids), 2))
    on_edge = np.zeros(len(ids), bool)
    for k, i in enumerate(ids):
        rows, cols = boxes[int(i) - 1]
        extent[k] = rows.stop - rows.start, cols.stop - cols.start
        on_edge[k] = rows.start == 0 or cols.start == 0 or rows.stop == h or cols.stop == w
    return extent, on_edge


def frame_weights(extent: np.ndarray, on_edge: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each object's weight [N] in the size distribution of a field of `shape` (height, width): 0 for one the frame
    cuts, W H / ((W - w) (H - h)) for one wholly inside with bounding box `extent` (height, width). Where every object
    touches the frame (grains larger than the field), all weigh 1: there is nothing else."""
    on_edge = np.asarray(on_edge, bool)
    if on_edge.all():
        return np.ones(on_edge.size)
    h, w = shape
    extent = np.asarray(extent, float).reshape(-1, 2)
    free = np.maximum(h - extent[:, 0], 1.0) * np.maximum(w - extent[:, 1], 1.0)
    return np.where(on_edge, 0.0, h * w / free)


def weighted_sizes(diameters: np.ndarray, weights: np.ndarray) -> tuple[float, float, float, float, float]:
    """(D10, D50, D90, geometric mean, geometric standard deviation) of `diameters` [N] with `weights` [N] (objects
    of weight 0 left out; at least one weighs more)."""
    keep = np.asarray(weights, float) > 0
    d, weight = np.asarray(diameters, float)[keep], np.asarray(weights, float)[keep]
    d10, d50, d90 = np.percentile(d, [10, 50, 90], weights=weight, method="inverted_cdf")
    logs = np.log(np.maximum(d, 1e-9))
    mean = np.average(logs, weights=weight)
    spread = math.sqrt(np.average((logs - mean) ** 2, weights=weight))
    return float(d10), float(d50), float(d90), math.exp(mean), math.exp(spread)


def size_distribution(diameters: np.ndarray, extent: np.ndarray, on_edge: np.ndarray,
                      shape: tuple[int, int]) -> SizeDistribution | None:
    """The distribution of `diameters` [N] (px) of objects with bounding boxes `extent` [N, 2] (height, width) and
    frame contact `on_edge` [N] in a field of `shape` (height, width), weighted by frame_weights; None without
    objects."""
    diameters = np.asarray(diameters, float)
    if diameters.size == 0:
        return None
    weights = frame_weights(extent, on_edge, shape)
    d10, d50, d90, geometric_mean, geometric_std = weighted_sizes(diameters, weights)
    return SizeDistribution(d10=d10, d50=d50, d90=d90, geometric_mean=geometric_mean, geometric_std=geometric_std,
                            objects_used=int((weights > 0).sum()), objects_on_edge=int(np.sum(on_edge)))
