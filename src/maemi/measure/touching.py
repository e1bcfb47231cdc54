"""Touching objects cut apart: the distance-transform watershed between an object's separate peaks (split_touching),
clumps of compact particles cut between peaks that stand deep enough below their saddle (split_clumps, h_maxima), and
packed films and monolayers whose minority phase is the gaps or the interstices between particles (packing,
interstices, split_packing). Called from the classical segmentation (maemi.measure.measurements)."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label
from skimage.morphology import local_maxima, remove_small_objects
from skimage.segmentation import watershed

from maemi.measure.measurements import (MIN_OBJECT_AREA_PX, NETWORK_SHARE, WIRE_ASPECT, distance_to_background,
                                        hull_area, largest_piece_share)
from maemi.measure.moments import ellipse_moments
from maemi.measure.size_distribution import frame_extents

# Objects cover more than half the field in a packed film or monolayer of particles, and the minority phase is then
# the gaps between them: one network, which the minority rule took for the objects (hexagonal monolayers at 62-78%
# cover were counted as their gaps: 29-465 for 392-2,473 particles, diameters 0.5x or 2.6x). The majority phase is
# taken instead where the minority is one network (NETWORK_SHARE) and the majority's pieces, split at their necks,
# are a packing of particles (packing): at least PACKED_MIN_PIECES wholly inside the field, of one size and convex.
# One size: the interquartile range of their equivalent diameters over 1.349 times the median (a normal's CV, robust
# to the touching pairs the split leaves whole) at most PACKED_SIZE_SPREAD; convex: filling PACKED_SOLIDITY of their
# hulls. What sets a film apart from a fibre mat, whose fibres are a network too, around pores that are convex
# polygons: the pores of crossing lines are of every size. Measured (docs/measurement.md): packed films of particles
# whose sizes vary by a CV of 0.1-0.3, 0.11-0.30; rendered mats with 20 pores or more, 0.53-1.65; dense mats
# 0.77-1.85; the synthetic corpus's sponges 0.50-0.72 (and solidity 0.79-0.85; the films 0.89-0.95).
# Where the particles all touch, the minority is not one network but the separate interstices between them, and they
# were counted (a hexagonal monolayer of touching particles: twice as many objects as particles, a fifth of their
# diameter). Taken for interstices (the interstices test) where they are compact, spread more evenly than random
# points and fill under INTERSTICE_SOLIDITY of their hulls (rendered packings 0.36-0.67; the synthetic corpus's
# compact, evenly spread minorities are convex), and the majority, cut between the peaks of its distance
# (split_packing), is a packing as above. Measured in docs/measurement.md.
INTERSTICE_SOLIDITY = 0.75
PACKED_MIN_PIECES = 20
PACKED_SIZE_SPREAD = 0.4
PACKED_SOLIDITY = 0.85
# Touching particles whose neck is wider than the split's cut (peaks above 0.4 of the top: centres under 1.83 radii
# apart) stay one object there. Each object is then cut between its distance peaks that stand CLUMP_PEAK_DEPTH of its
# top (at least CLUMP_PEAK_MIN_PX) above their saddle, where every part is compact (CLUMP_COMPACT: its inscribed radius
# that share of its equivalent radius; a disk 1, half a disk 0.71, a stretch of a line cut at a narrowing less) and of
# MIN_OBJECT_AREA_PX or more: sintered pairs and agglomerates whatever the rest of the field holds. Lone ellipses,
# cells and lumpy grains stay whole because a peak counts by its depth below the saddle (h_maxima), not by its
# highest pixels. Measured in docs/measurement.md ("Clumps").
CLUMP_PEAK_DEPTH = 0.15
CLUMP_PEAK_MIN_PX = 2.0
CLUMP_COMPACT = 0.65


def split_touching(mask: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Label objects; an object whose distance transform has several separate peaks is split between them.

    Peaks are where the distance stays above its object's maximum less h, h half that maximum (at least 2 px): the
    neck between two touching disks dips far below both centres and separates their peaks, while the ridge of a wire
    or fibre stays within a pixel or two of its top, so wires are never cut into pieces. A watershed on the distance
    then draws the boundary along the neck. (A global threshold per object rather than h-domes: 10x faster, and it
    only misses a grain less than half the size of the one it touches.) Particles touching with a wider neck stay one
    object here; split_clumps cuts them apart.
    """
    labels = label(mask, connectivity=2)
    n = int(labels.max())
    if n == 0:
        return labels
    inside = labels > 0
    top = np.zeros(n + 1, np.float32)
    np.maximum.at(top, labels[inside], distance[inside])
    floor = 0.4 * top
    peaks, _ = ndimage.label((distance > floor[labels]) & inside, structure=np.ones((3, 3)))
    peak_owner = np.zeros(peaks.max() + 1, int)
    peak_owner[peaks[inside]] = labels[inside]
    next_label = n + 1
    boxes = ndimage.find_objects(labels)
    for region in np.flatnonzero(np.bincount(peak_owner[1:], minlength=n + 1) >= 2):
        box = boxes[region - 1]
        own = labels[box] == region
        parts = watershed(-distance[box], np.where(own, peaks[box], 0), mask=own)
        found = np.unique(parts[own])
        renamed = np.zeros(int(found[-1]) + 1, labels.dtype)  # one lookup: a network's box is the whole field
        renamed[found[0]] = region  # the first part keeps the object's label
        renamed[found[1:]] = np.arange(next_label, next_label + len(found) - 1)
        labels[box][own] = renamed[parts[own]]
        next_label += len(found) - 1
    return split_clumps(labels, distance)


def interstices(phase: np.ndarray) -> bool:
    """Whether a phase's pieces are the interstices of a packing of touching particles: many; not elongated (median
    aspect under WIRE_ASPECT: the gaps between particles are triangles, where a nanowire array's rods are rods); spread
    more evenly than random points (Clark-Evans ratio above 1: each sits between particles of one size, where the
    pieces of a texture, of fibres or of a film's relief are random or clustered); and concave (INTERSTICE_SOLIDITY:
    the triangle between three touching disks fills 0.5-0.7 of its hull, where pores, pits and particles are
    convex). The cheap tests first: most images' minority is their particles."""
    labels, n = ndimage.label(remove_small_objects(phase, max_size=MIN_OBJECT_AREA_PX - 1))
    if n < PACKED_MIN_PIECES:
        return False
    moments = ellipse_moments(labels)
    if float(np.median(moments.aspect)) >= WIRE_ASPECT:
        return False
    nearest, _ = cKDTree(moments.centroids).query(moments.centroids, k=2)
    if nearest[:, 1].mean() <= 0.5 * math.sqrt(phase.size / n):  # a Poisson pattern's expected nearest distance
        return False
    return _solidity(labels, np.arange(1, n + 1), np.bincount(labels.ravel()), 50) < INTERSTICE_SOLIDITY


def _solidity(labels: np.ndarray, ids: np.ndarray, area: np.ndarray, pieces: int = 200) -> float:
    """The pieces' area over their hulls', pooled (`area` by label); the hulls of at most `pieces` of them, evenly
    spread over the ids: enough for a share, and 1 ms per hull."""
    sample = ids[np.linspace(0, len(ids) - 1, min(len(ids), pieces)).astype(int)]
    boxes = ndimage.find_objects(labels)
    return float(area[sample].sum()) / sum(hull_area(labels[boxes[k - 1]] == k) for k in sample)


def packing(phase: np.ndarray, touching: bool = False) -> bool:
    """Whether a phase is a packing of particles (PACKED_MIN_PIECES, PACKED_SIZE_SPREAD, PACKED_SOLIDITY): its pieces,
    split at their necks as the objects are, many, of one size and convex, and no network of its own (unless they
    all touch). Pieces the frame cuts are left out: they are neither whole nor convex."""
    phase = remove_small_objects(phase, max_size=MIN_OBJECT_AREA_PX - 1)
    if not phase.any() or (not touching and largest_piece_share(phase) > NETWORK_SHARE):
        return False
    labels = (split_packing if touching else split_touching)(phase, distance_to_background(phase))
    area = np.bincount(labels.ravel()).astype(float)
    ids = np.flatnonzero(area[1:]) + 1
    inner = ids[~frame_extents(labels, ids)[1]]
    if len(inner) < PACKED_MIN_PIECES:
        return False
    if not _one_size(area[inner]):
        return False
    return _solidity(labels, inner, area) >= PACKED_SOLIDITY


def _one_size(area: np.ndarray) -> bool:
    """Whether objects of these areas are of one size: their equivalent diameters' interquartile range at most
    PACKED_SIZE_SPREAD x 1.349 x their median (a normal's CV, robust to the few touching pairs left whole)."""
    low, median, high = np.percentile(np.sqrt(area), [25, 50, 75])  # 2 / sqrt(pi) cancels in the ratio
    return high - low <= PACKED_SIZE_SPREAD * 1.349 * median


def h_maxima(d: np.ndarray, mask: np.ndarray, h: float) -> tuple[np.ndarray, int]:
    """The peaks of `d` in `mask` (labelled, and how many) that stand at least h above their saddle to any higher peak
    (their dynamic; each piece of the mask keeps its highest): the extended maxima (Soille 2003), one label per flat
    top. Not skimage's h_maxima, which marks only each peak's highest pixels (an exact distance map often has two
    equally high ones a few pixels apart on one particle: an ellipse's ridge, cut in two), and not by morphological
    reconstruction, which costs 8x a watershed here (0.12 s on a 400 px box against 0.015 s): the local maxima's
    basins by a watershed, the pass between each two by their shared border's highest point, and the basins merged
    from the highest pass down (union-find), where the lower peak of the two is a peak when it stands h above it."""
    maxima, n = ndimage.label(mask & local_maxima(d), structure=np.ones((3, 3)))
    if n < 2:
        return maxima, n
    basins = watershed(-d, maxima, mask=mask, connectivity=2)
    left, right, passes = [], [], []
    for a, b, da, db in ((basins[:, :-1], basins[:, 1:], d[:, :-1], d[:, 1:]),
                         (basins[:-1], basins[1:], d[:-1], d[1:]),
                         (basins[:-1, :-1], basins[1:, 1:], d[:-1, :-1], d[1:, 1:]),
                         (basins[:-1, 1:], basins[1:, :-1], d[:-1, 1:], d[1:, :-1])):
        border = (a != b) & (a > 0) & (b > 0)
        left.append(np.minimum(a, b)[border])
        right.append(np.maximum(a, b)[border])
        passes.append(np.minimum(da, db)[border])
    pair = np.concatenate(left).astype(np.int64) * (n + 1) + np.concatenate(right)
    pair, where = np.unique(pair, return_inverse=True)
    highest = np.full(len(pair), -np.inf)
    np.maximum.at(highest, where, np.concatenate(passes))
    height = np.zeros(n + 1)
    np.maximum.at(height, maxima[maxima > 0], d[maxima > 0])  # ndimage.maximum sorts
    parent = np.arange(n + 1)
    top = np.arange(n + 1)  # each merged set's highest peak
    peak = np.ones(n + 1, bool)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for j in np.argsort(-highest, kind="stable"):
        a, b = root(int(pair[j] // (n + 1))), root(int(pair[j] % (n + 1)))
        if a == b:
            continue
        low, high = (a, b) if height[top[a]] < height[top[b]] else (b, a)
        peak[top[low]] = height[top[low]] - highest[j] >= h - 1e-6
        parent[low] = high
    peak[0] = False
    kept = np.zeros(n + 1, np.int64)
    kept[peak] = np.arange(1, int(peak.sum()) + 1)
    return kept[maxima], int(peak.sum())


def split_packing(mask: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """A packing of particles that all touch, cut between the peaks of its distance that stand h above their saddles
    (h-maxima, as split_clumps), h CLUMP_PEAK_DEPTH of a particle's top (the 95th percentile of the distance): the
    particles are one network whose necks, as wide as the interstices leave them, are too wide for split_touching's
    cut at a fixed share of the top."""
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    d = distance.astype(np.float64)
    h = max(CLUMP_PEAK_MIN_PX, CLUMP_PEAK_DEPTH * float(np.percentile(d[mask], 95)))
    return watershed(-d, h_maxima(d, mask, h)[0], mask=mask)


def split_clumps(labels: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """`labels` with each object that is a clump of compact particles cut into them (CLUMP_PEAK_DEPTH,
    CLUMP_PEAK_MIN_PX, CLUMP_COMPACT, MIN_OBJECT_AREA_PX), new labels after the existing ones: between the peaks of its
    distance at least h deep below their saddle (h_maxima, h a share of the object's own top)."""
    inside = labels > 0
    if not inside.any():
        return labels
    top = np.zeros(int(labels.max()) + 1)
    np.maximum.at(top, labels[inside], distance[inside])
    h = np.maximum(CLUMP_PEAK_MIN_PX, CLUMP_PEAK_DEPTH * top)
    # Two such peaks need two local maxima of the distance at least h above the 1 px of any saddle inside the object:
    # a cheap pass over the image that leaves h_maxima to the objects that have them, in their boxes.
    d = distance.astype(np.float64)
    high, _ = ndimage.label(inside & local_maxima(d) & (d >= h[labels] + 1), structure=np.ones((3, 3)))
    high_owner = np.zeros(int(high.max()) + 1, np.int64)
    high_owner[high[high > 0]] = labels[high > 0]
    boxes = ndimage.find_objects(labels)
    next_label = int(labels.max()) + 1
    for k in np.flatnonzero(np.bincount(high_owner[1:], minlength=len(top)) >= 2):
        box = boxes[k - 1]
        own = labels[box] == k
        peaks, n = h_maxima(np.where(own, d[box], 0.0), own, float(h[k]))
        if n < 2:
            continue
        parts = watershed(-d[box], peaks, mask=own)
        found, part_area = np.unique(parts[own], return_counts=True)
        if part_area.min() < MIN_OBJECT_AREA_PX:
            continue
        # each part a compact particle: its own inscribed radius at least CLUMP_COMPACT of its equivalent radius
        # (a disk 1, a 2:1 ellipse 0.71), not a stretch of a fibre or wire cut at a crossing or a bend
        apart = own.copy()
        apart[:-1] &= parts[:-1] == parts[1:]
        apart[:, :-1] &= parts[:, :-1] == parts[:, 1:]
        inscribed = np.zeros(int(found[-1]) + 1)
        np.maximum.at(inscribed, parts[own], distance_to_background(apart)[own])
        inscribed = inscribed[found]
        if np.min(inscribed / np.sqrt(part_area / np.pi)) < CLUMP_COMPACT:
            continue
        view = labels[box]
        for j in found[1:]:  # the first part keeps the object's label
            view[parts == j] = next_label
            next_label += 1
    return labels
