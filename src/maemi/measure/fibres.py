"""Fibres counted and sized as an expert does, not as connected objects.

On a fibre mat the connected foreground is one network (and the background a set of pores), so counting connected
objects gives a tenth or ten times the expert's count. Experts use one of two counts, both measured here:
- intercepts: crossings of fibres with test lines, per unit line length P_L (the line-intercept count; Underwood,
  Quantitative Stereology, 1970). For an isotropic mat the fibre length per unit area is L_A = (pi / 2) P_L.
- tracing: the skeleton is cut at its junctions into segments, and at each junction the arms that continue in a
  straight line are joined again (two fibres crossing make a 4-way junction whose opposite arms are collinear). Each
  chain of joined segments is one fibre; a fibre cut by the image frame counts once per visible piece.
The diameter is twice the distance transform along the skeleton, away from junctions and ends where it is biased.

The skeleton graph is walked by hand rather than with skan (Nunez-Iglesias et al., PeerJ 2018): skan brings numba,
llvmlite and pandas (and seconds of JIT compilation per process) for the segment table only, while the fibre-specific
parts (pruning against the local width, merging nearby junctions, pairing arms) would still be ours.
All sizes in pixels. Deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from maemi.measure.measurements import ISOTROPIC_BELOW_COHERENCE, distance_to_background

# A spur (a segment from a junction to a free end) shorter than this many junction radii, i.e. about the local fibre
# diameter, is a bump on an edge or the fork thinning leaves at a blunt end, not a fibre end.
SPUR_RADII = 2.0
# Two junctions whose inscribed disks are less than this many fibre diameters apart are one crossing: the skeleton
# often draws a crossing as two 3-way junctions a few pixels apart, and where three fibres cross nearly at one point the
# junction zones touch. Segments between separate crossings leave at least a fibre's width of clean fibre between them.
BRIDGE_DIAMETERS = 1.0
# Two fibres crossing at an angle below about 15 degrees overlap over more than w / sin(7.5) ~ 8 widths; below that they
# run together like a bundle, and the expert cannot separate them either.
SHALLOW_DIAMETERS = 8.0
# Arms at a junction are paired when the fibre would bend by less than this: fibres are stiff over a few diameters,
# so a sharper turn is two fibres meeting. A T (one fibre ending on another) pairs the through arms and not the stem.
MAX_BEND_DEG = 50.0
# Pairing prefers arms that line up, not only run parallel: each diameter by which one arm's line misses the other's
# start counts as this much bend. In a node merged from several crossings, parallel arms of two fibres are told apart.
OFFSET_DEG_PER_DIAMETER = 30.0
# An arm's direction is the chord from where it leaves the junction zone to this many diameters further on: the first
# pixels bend towards the junction centre, and a 2 px direction is quantised to 45 degrees.
ARM_DIAMETERS = 3.0
# A fibre that passes under others, or lies a little deeper, crosses the threshold only in stretches. Two free ends
# that face each other across a gap of at most GAP_DIAMETERS fibre diameters, their directions within MAX_GAP_BEND_DEG
# and each on the other's line (the same offset score as at a junction), are one fibre continued. The direction is
# the chord over the last GAP_ARM_DIAMETERS of each piece: longer than at a junction, as the ends of a thin fibre's
# stretches are ragged.
GAP_DIAMETERS = 10.0
MAX_GAP_BEND_DEG = 20.0
GAP_ARM_DIAMETERS = 8.0
# Pruning can expose new spurs (a fork on a spur); a few passes settle every case we have seen.
PRUNE_PASSES = 4
# The distance transform measures to the centre of the first background pixel, half a pixel past the edge: on a
# skeleton pixel centred in an odd width 2D is the width + 1, in an even width exactly the width; the mean is + 0.5.
EDT_DIAMETER_BIAS_PX = 0.5

_NEIGHBOURS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


@dataclass
class FibreMeasurements:
    fibre_count: int  # fibres, crossings traced through; a fibre cut by the frame counts once per visible piece
    segment_count: int  # skeleton segments between junctions and ends (spurs pruned, crossings merged)
    junction_count: int  # junctions (clusters of junction pixels, nearby ones of one crossing merged)
    diameter_mean_px: float | None  # 2 x distance transform along the skeleton, junctions and ends excluded
    diameter_std_px: float | None  # spread of the same samples (along the fibres, as an expert's spot measurements)
    length_total_px: float  # skeleton length after pruning
    intercepts_per_px: float  # crossings of fibres per pixel of test line (every row and every column)
    orientation_deg: float | None  # length-weighted axial mean direction, 0-180 counter-clockwise; None if isotropic
    lengths_px: list[float]  # skeleton length of each counted fibre
    diameters_px: list[float]  # mean diameter of each counted fibre, in the order of lengths_px
    seen_lengths_px: list[float]  # skeleton length of each piece traced before joining across gaps (the mat tests)


@dataclass
class _Segment:
    pixels: np.ndarray  # [n, 2] (row, col), ordered along the skeleton
    arc: np.ndarray  # [n] arc length from pixels[0]
    ends: list  # [node at pixels[0], node at pixels[-1]]; -1 for a free end
    closed: bool = False  # a loop without junction: no ends at all

    @property
    def length(self) -> float:
        return float(self.arc[-1]) + 1.0  # a lone pixel is one pixel long


@dataclass
class _Trace:
    skeleton: np.ndarray  # [H, W] bool, pruned
    distance: np.ndarray  # [H, W] the distance transform traced on (of the mask with its pinholes filled)
    segments: list[_Segment]
    node_radius: np.ndarray  # [nodes] largest distance in each junction (after merging)
    fibre_of: np.ndarray  # [segments] fibre id, -1 for dropped pieces and merged bridges
    fibre_count: int
    segment_count: int
    junction_count: int
    lengths_px: list[float]  # skeleton length of each traced fibre, by fibre id
    seen_lengths_px: list[float]  # the same before stretches were joined across gaps: what the mask itself shows


# ---------------------------------------------------------------------------------------------- the skeleton graph


def _degree(skel: np.ndarray) -> np.ndarray:
    counts = ndimage.convolve(skel.astype(np.uint8), np.ones((3, 3), np.uint8), mode="constant")
    return np.where(skel, counts.astype(np.int16) - 1, 0)


def _graph(skel: np.ndarray) -> tuple[list[_Segment], np.ndarray, int]:
    """Cut the skeleton at its junction pixels (3+ neighbours) into segments; junction clusters are the nodes.

    Without the junction pixels every pixel has at most two neighbours, so each piece is a path (or a closed loop)
    that one walk orders. Returns the segments, the node label image and the number of nodes.
    """
    h, w = skel.shape
    junction = skel & (_degree(skel) >= 3)
    nodes, n_nodes = ndimage.label(junction, structure=np.ones((3, 3)))
    rest = skel & ~junction
    pieces, n_pieces = ndimage.label(rest, structure=np.ones((3, 3)))
    if n_pieces == 0:
        return [], nodes, n_nodes
    # neighbour table of the rest pixels (at most 2 each), built with shifted views rather than per pixel
    index = np.full((h + 2, w + 2), -1, np.int64)
    rr, cc = np.nonzero(rest)
    index[rr + 1, cc + 1] = np.arange(len(rr))
    nbr = np.full((len(rr), 2), -1, np.int64)
    filled = np.zeros(len(rr), np.int64)
    for dr, dc in _NEIGHBOURS:
        other = index[rr + 1 + dr, cc + 1 + dc]
        has = (other >= 0) & (filled < 2)
        nbr[has, filled[has]] = other[has]
        filled[has] += 1
    padded_nodes = np.pad(nodes, 1)
    owner = pieces[rr, cc] - 1
    order = np.argsort(owner, kind="stable")
    starts = np.searchsorted(owner[order], np.arange(n_pieces + 1))
    segments = []
    for k in range(n_pieces):
        members = order[starts[k]:starts[k + 1]]
        ends = members[filled[members] <= 1]
        first = int(ends[0]) if len(ends) else int(members[0])  # no end: a closed loop
        path, prev, cur = [first], -1, first
        while True:  # walk the path: step to the neighbour we did not come from
            a, b = nbr[cur]
            nxt = b if a == prev else a
            if nxt < 0 or nxt == first or len(path) > len(members):
                break
            path.append(int(nxt))
            prev, cur = cur, int(nxt)
        px = np.stack([rr[path], cc[path]], axis=1)
        step = np.hypot(*np.diff(px, axis=0).T) if len(px) > 1 else np.zeros(0)
        arc = np.concatenate([[0.0], np.cumsum(step)])
        seg_ends = [-1, -1]
        if len(ends):  # which junction each end touches (a one-pixel segment may touch two)
            touched = []
            for i, (r, c) in enumerate((px[0], px[-1])):
                around = padded_nodes[r:r + 3, c:c + 3]
                labels = [int(v) - 1 for v in np.unique(around[around > 0])]
                touched.append(labels)
            if len(px) == 1 and len(touched[0]) >= 2:
                seg_ends = touched[0][:2]
            else:
                seg_ends = [t[0] if t else -1 for t in touched]
        segments.append(_Segment(px, arc, seg_ends, closed=not len(ends)))
    return segments, nodes, n_nodes


def _node_radii(distance: np.ndarray, nodes: np.ndarray, n_nodes: int) -> np.ndarray:
    """The largest distance-transform value in each junction zone (labels 1..n_nodes of `nodes`). Taken over the
    zones' own pixels: ndimage.maximum over the whole image sorts every pixel, a fifth of a teacher's time."""
    on = nodes > 0
    radius = np.zeros(n_nodes)
    np.maximum.at(radius, nodes[on] - 1, distance[on])
    return radius


def _prune(skel: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """Remove spurs shorter than SPUR_RADII junction radii, keeping at least two arms at every junction."""
    for _ in range(PRUNE_PASSES):
        segments, nodes, n_nodes = _graph(skel)
        if n_nodes == 0:
            break
        radius = _node_radii(distance, nodes, n_nodes)
        arms: dict[int, list[tuple[float, int, bool]]] = {}
        for k, seg in enumerate(segments):
            for node in seg.ends:
                if node >= 0:
                    spur = (seg.ends.count(-1) == 1) and seg.length < SPUR_RADII * radius[node]
                    arms.setdefault(node, []).append((seg.length, k, spur))
        cut = set()
        for node, node_arms in arms.items():
            # the longest arms stay, so a short blob keeps a centre line and a fibre end keeps its fibre
            node_arms.sort(reverse=True)
            cut.update(k for _, k, spur in node_arms[2:] if spur)
        if not cut:
            break
        skel = skel.copy()
        for k in cut:
            skel[segments[k].pixels[:, 0], segments[k].pixels[:, 1]] = False
        skel = skeletonize(skel)  # the junction pixels a removed spur leaves behind thin back to a line
    return skel


# ------------------------------------------------------------------------------------------------------ the tracing


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def _local_radius(seg: _Segment, distance: np.ndarray) -> float:
    """The fibre's radius on this segment: the median distance over its middle half (ends and junctions are off)."""
    d = distance[seg.pixels[:, 0], seg.pixels[:, 1]]
    n = len(d)
    return float(np.median(d[n // 4: n - n // 4])) if n >= 4 else float(np.median(d))


def _arm(seg: _Segment, at_start: bool, skip: float, reach: float) -> tuple[np.ndarray, np.ndarray]:
    """Where the segment leaves a junction zone and its unit direction away from it: the chord from `skip` to
    `skip + reach` of arc length."""
    arc, px = seg.arc, seg.pixels.astype(float)
    if not at_start:
        arc, px = arc[-1] - arc[::-1], px[::-1]
    skip = min(skip, 0.5 * arc[-1])
    i0 = int(np.searchsorted(arc, skip))
    i1 = int(np.searchsorted(arc, skip + reach))
    i1 = min(max(i1, i0 + 1), len(px) - 1)
    i0 = min(i0, max(i1 - 1, 0))
    chord = px[i1] - px[i0]
    norm = float(np.hypot(*chord))
    return px[i0], (chord / norm if norm > 0 else np.zeros(2))


def _bend_deg(a: np.ndarray, b: np.ndarray) -> float:
    """How far a fibre turns going in along outward direction a and out along outward direction b (0: straight on)."""
    return math.degrees(math.acos(float(np.clip(-np.dot(a, b), -1, 1))))


def _crossings(segments: list[_Segment], radius: np.ndarray, seg_radius: np.ndarray, n_nodes: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Merge the junctions of one crossing. Returns which segments are bridges inside a crossing, and each junction's
    merged node.

    A segment between two junctions is a bridge when
    1. it leaves less than BRIDGE_DIAMETERS fibre diameters between the junctions' inscribed disks (a crossing the
       skeleton drew as two junctions close together), or
    2. it is shorter than SHALLOW_DIAMETERS and at both its ends (junctions merged by 1) two other arms continue it
       within MAX_BEND_DEG: two fibres crossing at a shallow angle overlap over w / sin(angle / 2), and the skeleton
       runs along the overlap between two narrow forks. Where a fibre crosses another at a steep angle, only the
       fibre's own continuation lines up with it.
    Merging is benign when in doubt: arms are paired by their own directions, so a merged node of two crossings still
    pairs right.
    """
    arms: dict[int, list[tuple[int, int]]] = {}
    for k, seg in enumerate(segments):
        for end, node in enumerate(seg.ends):
            if node >= 0:
                arms.setdefault(node, []).append((k, end))
    # the fibre radius at a junction: the median over its arms (the junction's own inscribed disk is wider)
    fibre_radius = np.array([np.median([seg_radius[k] for k, _ in arms[i]]) if i in arms else radius[i]
                             for i in range(n_nodes)])
    merge = _Union(n_nodes)
    bridge = np.zeros(len(segments), bool)
    for k, seg in enumerate(segments):
        a, b = seg.ends
        if a >= 0 and b >= 0 and a != b and seg.length - radius[a] - radius[b] < BRIDGE_DIAMETERS * (
                fibre_radius[a] + fibre_radius[b]):
            merge.join(a, b)
            bridge[k] = True

    root = np.array([merge.find(i) for i in range(n_nodes)], int)
    zone = np.zeros(n_nodes)
    np.maximum.at(zone, root, radius)
    outward: dict[int, list[tuple[int, np.ndarray]]] = {}  # merged node -> (segment, its direction leaving the node)
    for k, seg in enumerate(segments):
        if bridge[k]:
            continue
        for end, node in enumerate(seg.ends):
            if node >= 0:
                _, v = _arm(seg, end == 0, zone[root[node]], ARM_DIAMETERS * 2 * seg_radius[k])
                outward.setdefault(int(root[node]), []).append((k, v))

    def is_fork(node: int, k: int) -> bool:
        along = [v for j, v in outward[node] if j == k]
        return len(along) == 1 and sum(_bend_deg(along[0], v) < MAX_BEND_DEG for j, v in outward[node] if j != k) >= 2

    for k, seg in enumerate(segments):
        a, b = seg.ends
        if bridge[k] or a < 0 or b < 0 or root[a] == root[b]:
            continue
        if seg.length < SHALLOW_DIAMETERS * (fibre_radius[a] + fibre_radius[b]) and is_fork(root[a], k) and is_fork(
                root[b], k):
            merge.join(a, b)
            bridge[k] = True

    root = np.array([merge.find(i) for i in range(n_nodes)], int)
    # a segment left with both ends on one merged node is the third side of a small triangle of crossings (by the
    # triangle inequality shorter than two short bridges) or a loop around a pinhole; a longer one is a fibre between
    # two crossings (or looping back to one), and stays
    for k, seg in enumerate(segments):
        a, b = seg.ends
        if a >= 0 and b >= 0 and root[a] == root[b] and not bridge[k]:
            bridge[k] = seg.length < 2 * SHALLOW_DIAMETERS * (fibre_radius[a] + fibre_radius[b])
    return bridge, root


def _skeleton(mask: np.ndarray, distance: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The mask (pinholes filled), its distance transform and its skeleton.

    Holes smaller than a fibre's cross-section, (2 r)^2 with r the median radius on the skeleton, are filled: where
    three fibres cross, a tiny pore in the middle rings the skeleton into a loop, and an expert sees one crossing there.
    (Skeletonising the mask mirrored past the frame, so that fibres run off it instead of ending in a fork, was tried:
    it did not count better on drawn mats, the spur pruning already removes those forks.)
    """
    if distance is None:
        distance = distance_to_background(mask)
    skel = skeletonize(mask)
    if not skel.any():
        return mask, distance, skel
    r = float(np.median(distance[skel]))
    holes, n = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if n:
        small = np.bincount(holes.ravel()) < (2 * r) ** 2
        small[0] = False
        if small.any():
            mask = mask | small[holes]
            distance = distance_to_background(mask)
            skel = skeletonize(mask)
    return mask, distance, skel


def _trace(mask: np.ndarray, distance: np.ndarray | None, min_length_px: float | None) -> _Trace:
    mask, distance, skel = _skeleton(np.asarray(mask, bool), distance)
    skel = _prune(skel, distance)
    segments, nodes, n_nodes = _graph(skel)
    radius = _node_radii(distance, nodes, n_nodes)
    seg_radius = np.array([_local_radius(s, distance) for s in segments])

    bridge, root = _crossings(segments, radius, seg_radius, n_nodes)
    node_radius = np.zeros(n_nodes)
    np.maximum.at(node_radius, root, radius)

    # pair the arms at every junction by the smallest bend
    arms: dict[int, list[tuple[int, int]]] = {}
    for k, seg in enumerate(segments):
        if bridge[k]:
            continue
        for end, node in enumerate(seg.ends):
            if node >= 0:
                arms.setdefault(int(root[node]), []).append((k, end))
    fibres = _Union(len(segments))
    kinks = []  # one segment at each two-arm node: the two segments there are one between junctions
    for node, node_arms in arms.items():
        if len(node_arms) < 2:
            continue
        ends = [_arm(segments[k], end == 0, node_radius[node], ARM_DIAMETERS * 2 * seg_radius[k]) for k, end in node_arms]
        if len(node_arms) == 2:  # a junction of two arms is a kink of one line (its other arms were pruned)
            fibres.join(node_arms[0][0], node_arms[1][0])
            kinks.append(node_arms[0][0])
            continue
        pairs = []
        for i in range(len(node_arms)):
            for j in range(i + 1, len(node_arms)):
                (pi, di), (pj, dj) = ends[i], ends[j]
                bend = _bend_deg(di, dj)
                # how far each arm's line passes from where the other leaves: 0 for one fibre straight through
                offset = 0.5 * (abs(di[0] * (pj - pi)[1] - di[1] * (pj - pi)[0])
                                + abs(dj[0] * (pi - pj)[1] - dj[1] * (pi - pj)[0]))
                diameter = seg_radius[node_arms[i][0]] + seg_radius[node_arms[j][0]]
                pairs.append((bend + OFFSET_DEG_PER_DIAMETER * offset / max(diameter, 1.0), bend, i, j))
        used = set()
        for score, bend, i, j in sorted(pairs):
            if bend > MAX_BEND_DEG:
                continue
            if i in used or j in used:
                continue
            used.update((i, j))
            fibres.join(node_arms[i][0], node_arms[j][0])

    seen, _ = _chains(segments, bridge, seg_radius, fibres, min_length_px)
    _join_across_gaps(segments, seg_radius, bridge, fibres)
    lengths, fibre_of = _chains(segments, bridge, seg_radius, fibres, min_length_px)
    junctions = sum(1 for node_arms in arms.values() if len(node_arms) >= 3)
    kept = int((fibre_of >= 0).sum()) - sum(1 for k in kinks if fibre_of[k] >= 0)
    return _Trace(skel, distance, segments, node_radius, fibre_of, len(lengths), kept, junctions, lengths, seen)


def _chains(segments: list[_Segment], bridge: np.ndarray, seg_radius: np.ndarray, fibres: _Union,
            min_length_px: float | None) -> tuple[list[float], np.ndarray]:
    """One id per chain of joined segments; specks and stubby blobs (skeleton shorter than their own width, or than
    min_length_px) are no fibre. Returns each fibre's length by id, and each segment's fibre id (-1: none)."""
    fibre_of = np.full(len(segments), -1, int)
    owner = [fibres.find(k) for k in range(len(segments))]
    length, width = {}, {}
    for k, seg in enumerate(segments):
        if bridge[k]:
            continue
        length[owner[k]] = length.get(owner[k], 0.0) + seg.length
        width[owner[k]] = max(width.get(owner[k], 0.0), 2 * seg_radius[k])
    ids: dict[int, int] = {}  # chain owner -> fibre id, in order of first segment
    for k in range(len(segments)):
        if bridge[k]:
            continue
        o = owner[k]
        shortest = width[o] if min_length_px is None else min_length_px
        if length[o] >= shortest:
            fibre_of[k] = ids.setdefault(o, len(ids))
    return [length[o] for o in ids], fibre_of


def _join_across_gaps(segments: list[_Segment], seg_radius: np.ndarray, bridge: np.ndarray, fibres: _Union) -> None:
    """Join the chains whose free ends face each other across a gap (GAP_DIAMETERS): a fibre seen in stretches."""
    ends, points, dirs, diam = [], [], [], []
    for k, seg in enumerate(segments):
        if bridge[k] or seg.closed:
            continue
        d = 2 * max(seg_radius[k], 0.5)
        for end, node in enumerate(seg.ends):
            if node < 0:
                point, inward = _arm(seg, end == 0, 0.0, GAP_ARM_DIAMETERS * d)
                ends.append(k)
                points.append(point)
                dirs.append(inward)
                diam.append(d)
    if len(ends) < 2:
        return
    points = np.array(points)
    pairs = []
    for i, j in cKDTree(points).query_pairs(GAP_DIAMETERS * max(diam)):
        if fibres.find(ends[i]) == fibres.find(ends[j]):
            continue
        diameter = 0.5 * (diam[i] + diam[j])
        gap = points[j] - points[i]
        distance = float(np.hypot(*gap))
        if distance > GAP_DIAMETERS * diameter or np.dot(gap, dirs[i]) > 0 or np.dot(gap, dirs[j]) < 0:
            continue  # too far, or one end does not face the other (the gap runs back along its own piece)
        bend = _bend_deg(dirs[i], dirs[j])
        offset = 0.5 * (abs(dirs[i][0] * gap[1] - dirs[i][1] * gap[0]) + abs(dirs[j][0] * gap[1] - dirs[j][1] * gap[0]))
        if bend <= MAX_GAP_BEND_DEG and offset <= diameter:
            pairs.append((bend + OFFSET_DEG_PER_DIAMETER * offset / diameter, i, j))
    used = set()
    for _, i, j in sorted(pairs):
        if i in used or j in used or fibres.find(ends[i]) == fibres.find(ends[j]):
            continue
        used.update((i, j))
        fibres.join(ends[i], ends[j])


# ------------------------------------------------------------------------------------------------------ the numbers


def _intercepts_per_px(mask: np.ndarray) -> float:
    """Fibre crossings per pixel of test line, over every row and every column: foreground runs / line length."""
    h, w = mask.shape
    if h == 0 or w == 0:
        return 0.0
    m = mask.astype(np.int8)
    row_runs = (np.diff(m, axis=1) == 1).sum() + m[:, 0].sum()
    col_runs = (np.diff(m, axis=0) == 1).sum() + m[0, :].sum()
    return float(row_runs + col_runs) / (2.0 * h * w)


def _segment_radii(trace: _Trace, k: int) -> np.ndarray:
    """The distance on segment k's skeleton pixels away from junctions (their inscribed disk and one fibre radius
    beyond) and ends (the cap, two radii, where the distance tapers)."""
    seg = trace.segments[k]
    d = trace.distance[seg.pixels[:, 0], seg.pixels[:, 1]]
    r = _local_radius(seg, trace.distance)
    keep = np.ones(len(d), bool)
    for end, node in enumerate([] if seg.closed else seg.ends):  # a closed loop has no ends
        along = seg.arc if end == 0 else seg.arc[-1] - seg.arc
        margin = (trace.node_radius[node] + r) if node >= 0 else 2 * r
        keep &= along >= margin
    return d[keep]


def _as_diameters(radii: np.ndarray) -> np.ndarray:
    return 2 * radii.astype(float) - EDT_DIAMETER_BIAS_PX


def _diameters(trace: _Trace) -> np.ndarray:
    """Diameter samples along every traced fibre (_segment_radii)."""
    samples = [_segment_radii(trace, k) for k in range(len(trace.segments)) if trace.fibre_of[k] >= 0]
    values = np.concatenate(samples) if samples else np.zeros(0)
    if values.size == 0:  # only short pieces: every skeleton pixel is near an end, use them all
        values = trace.distance[trace.skeleton]
    return _as_diameters(values)


def _fibre_diameters(trace: _Trace) -> list[float]:
    """Each traced fibre's mean diameter, by fibre id; a fibre with no sample away from its ends and junctions (a
    short piece) takes the mean over all its skeleton pixels."""
    inner: list[list[np.ndarray]] = [[] for _ in range(trace.fibre_count)]
    every: list[list[np.ndarray]] = [[] for _ in range(trace.fibre_count)]
    for k, seg in enumerate(trace.segments):
        f = trace.fibre_of[k]
        if f >= 0:
            inner[f].append(_segment_radii(trace, k))
            every[f].append(trace.distance[seg.pixels[:, 0], seg.pixels[:, 1]])
    out = []
    for f in range(trace.fibre_count):
        values = np.concatenate(inner[f])
        out.append(float(_as_diameters(values if values.size else np.concatenate(every[f])).mean()))
    return out


def _orientation_deg(trace: _Trace) -> float | None:
    """Length-weighted axial mean of the skeleton's steps (doubled angles), None below the isotropy coherence."""
    c = s = total = 0.0
    for k, seg in enumerate(trace.segments):
        if trace.fibre_of[k] < 0 or len(seg.pixels) < 2:
            continue
        steps = np.diff(seg.pixels.astype(float), axis=0)
        angle = np.arctan2(-steps[:, 0], steps[:, 1])  # counter-clockwise on screen: rows grow downwards
        weight = np.hypot(steps[:, 0], steps[:, 1])
        c += float((weight * np.cos(2 * angle)).sum())
        s += float((weight * np.sin(2 * angle)).sum())
        total += float(weight.sum())
    if total == 0 or math.hypot(c, s) / total < ISOTROPIC_BELOW_COHERENCE:
        return None
    return math.degrees(0.5 * math.atan2(s, c)) % 180


def measure_fibres(mask: np.ndarray, distance: np.ndarray | None = None, min_length_px: float | None = None,
                   sized_by: np.ndarray | None = None) -> FibreMeasurements:
    """Count and size the fibres of a foreground mask (segment(grey).mask; its .distance may be passed along).

    min_length_px: traced fibres with a shorter skeleton are dropped; by default each fibre's own width (a piece
    shorter than it is wide is a speck or a particle, not a fibre).
    sized_by: the distance transform of a mask whose edges sit where the fibres are to be measured (the classical
    pipeline's, at half their contrast); it gives diameters_px, the fibres' diameters reported, while the tracing and
    diameter_mean_px / diameter_std_px, which the mat tests and the count's length bar read, keep the mask's own.
    """
    mask = np.asarray(mask, bool)
    trace = _trace(mask, distance, min_length_px)
    diameters = _diameters(trace) if trace.fibre_count else np.zeros(0)
    sized = trace if sized_by is None else dataclasses.replace(  # a skeleton pixel it lost keeps the traced distance
        trace, distance=np.where(sized_by > 0, sized_by, trace.distance))
    return FibreMeasurements(
        fibre_count=trace.fibre_count,
        segment_count=trace.segment_count,
        junction_count=trace.junction_count,
        diameter_mean_px=float(diameters.mean()) if diameters.size else None,
        diameter_std_px=float(diameters.std()) if diameters.size else None,
        length_total_px=float(sum(seg.length for seg in trace.segments)),
        intercepts_per_px=_intercepts_per_px(mask),
        orientation_deg=_orientation_deg(trace),
        lengths_px=trace.lengths_px,
        diameters_px=_fibre_diameters(sized),
        seen_lengths_px=trace.seen_lengths_px,
    )


def fibre_labels(mask: np.ndarray, distance: np.ndarray | None = None,
                 min_length_px: float | None = None) -> np.ndarray:
    """[H, W] int32: 0 background, 1..n one id per traced fibre; every mask pixel takes the fibre of the nearest
    skeleton pixel, so a crossing is shared between its two fibres (pixels of dropped specks stay 0)."""
    mask = np.asarray(mask, bool)
    trace = _trace(mask, distance, min_length_px)
    seeds = np.zeros(mask.shape, np.int32)
    for k, seg in enumerate(trace.segments):
        if trace.fibre_of[k] >= 0:
            seeds[seg.pixels[:, 0], seg.pixels[:, 1]] = trace.fibre_of[k] + 1
    if not seeds.any():
        return seeds
    _, (ir, ic) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    labels = seeds[ir, ic]
    labels[~mask] = 0
    return labels
