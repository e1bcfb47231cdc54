"""The lattice of a patterned array: two primitive vectors and an origin fitted to points (e.g. nanowire feet).

Selective-area growth patterns its holes by lithography on a lattice, and in any view of the array, tilted or not, the
holes stay a two-dimensional lattice on screen (a projection is affine). So the feet of the upright wires, found with
some wires missing and a few misplaced, give the lattice, and every site of it can then be asked what grew there.
Written here because no well-kept library fits a Bravais lattice to a few hundred detected points (atomap does it for
atomic columns, on top of HyperSpy); the method is the textbook one: the most common short difference vectors between
neighbours are the lattice vectors, reduced to the shortest pair (Lagrange-Gauss), then refined by least squares.
Points are (x, y) on screen, in pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

# Difference vectors to this many nearest neighbours: the 6 of a hexagonal lattice (4 of a square one, 2 more
# diagonals), so each primitive vector shows up even with a third of the sites empty.
NEIGHBOURS = 6
# Two difference vectors vote for each other when they agree within this share of the nearest-neighbour distance:
# detection jitter of a foot is a pixel or two on spacings of 20-40 px.
VOTE_TOLERANCE = 0.1
# A difference vector is a candidate lattice vector when it has at least this share of the best one's votes: the
# primitive vectors of an oblique lattice are equally common; chance pairings between misplaced points are rare.
PEAK_SHARE = 0.3
# A point belongs to the lattice when it lies within this share of the spacing of a node; a lattice is accepted when
# most points do (a random arrangement, e.g. wires grown from scattered catalyst droplets, leaves about a fifth within).
NODE_TOLERANCE = 0.2
MIN_INLIER_SHARE = 0.6
MIN_POINTS = 12


@dataclass
class Lattice:
    origin: np.ndarray  # (x, y) of one node
    basis: np.ndarray  # 2 x 2, the two primitive vectors as columns (x, y)
    inlier_share: float  # share of the fitted points within NODE_TOLERANCE of the spacing from a node
    residual_px: float  # median distance of those points to their node

    @property
    def spacing_px(self) -> float:
        """The shortest distance between two sites."""
        return float(np.linalg.norm(self.basis, axis=0).min())

    def fractional(self, points: np.ndarray) -> np.ndarray:
        """Points in lattice coordinates (site (i, j) at origin + i a + j b)."""
        return np.linalg.solve(self.basis, (np.asarray(points, float) - self.origin).T).T

    def nearest_site(self, points: np.ndarray) -> np.ndarray:
        """The integer (i, j) of each point's nearest site (rounding in lattice coordinates, exact for a reduced
        basis up to the rare point near a cell corner)."""
        return np.round(self.fractional(points)).astype(int)

    def position(self, sites: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(sites, float) @ self.basis.T

    def sites_within(self, width: int, height: int) -> np.ndarray:
        """The (i, j) of every site whose position lies inside a width x height field."""
        corners = self.fractional(np.array([[0, 0], [width, 0], [0, height], [width, height]], float))
        lo, hi = np.floor(corners.min(0)).astype(int), np.ceil(corners.max(0)).astype(int)
        i, j = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1))
        sites = np.stack([i.ravel(), j.ravel()], 1)
        xy = self.position(sites)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)
        return sites[inside]


def reduced(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction: the shortest basis of the lattice that a and b span."""
    for _ in range(32):
        if a @ a > b @ b:
            a, b = b, a
        if a @ a == 0:
            break
        m = round(float(a @ b) / float(a @ a))
        if m == 0:
            break
        b = b - m * a
    return a, b


def fit_lattice(points: np.ndarray) -> Lattice | None:
    """The lattice through `points` [N, 2], or None when they do not form one (too few, or no two difference
    vectors recur, or too few points near the fitted sites)."""
    points = np.asarray(points, float)
    if len(points) < MIN_POINTS:
        return None
    k = min(NEIGHBOURS + 1, len(points))
    distance, index = cKDTree(points).query(points, k=k)
    tolerance = VOTE_TOLERANCE * float(np.median(distance[:, 1]))
    if tolerance <= 0:  # most points doubled: no spacing to measure
        return None
    vectors = (points[index[:, 1:]] - points[:, None, :]).reshape(-1, 2)
    # v and -v are the same lattice vector: keep the one pointing down the screen (to the right when level)
    flip = (vectors[:, 1] < 0) | ((vectors[:, 1] == 0) & (vectors[:, 0] < 0))
    vectors[flip] *= -1
    agreeing = cKDTree(vectors).query_ball_point(vectors, tolerance)
    votes = np.array([len(n) for n in agreeing])
    # peaks: vectors with the most votes among their neighbours (not the jittered flanks of a peak) and enough votes;
    # not the null vector of a point found twice
    local_max = np.array([votes[i] >= votes[n].max() for i, n in enumerate(agreeing)])
    length = np.linalg.norm(vectors, axis=1)
    peaks = np.flatnonzero(local_max & (votes >= PEAK_SHARE * votes.max()) & (length > tolerance))
    if len(peaks) < 2:
        return None
    peaks = peaks[np.argsort(length[peaks])]

    def mean_near(v: np.ndarray) -> np.ndarray:
        return vectors[np.linalg.norm(vectors - v, axis=1) <= tolerance].mean(0)

    a = mean_near(vectors[peaks[0]])
    b = None
    for p in peaks[1:]:
        v = vectors[p]
        if abs(a[0] * v[1] - a[1] * v[0]) > 0.5 * np.linalg.norm(a) * np.linalg.norm(v):  # at 30 degrees or more
            b = mean_near(v)
            break
    if b is None:
        return None
    a, b = reduced(a, b)
    basis = np.stack([a, b], 1)
    if abs(np.linalg.det(basis)) < 1e-6:
        return None
    lattice = Lattice(points[np.argmin(np.linalg.norm(points - points.mean(0), axis=1))].copy(), basis, 0.0, 0.0)
    for _ in range(3):  # least squares over the points near a site: origin and both vectors at once
        sites = lattice.nearest_site(points)
        off = np.linalg.norm(points - lattice.position(sites), axis=1)
        near = off <= NODE_TOLERANCE * lattice.spacing_px
        if near.sum() < MIN_POINTS:
            return None
        design = np.c_[np.ones(near.sum()), sites[near]]
        solution, *_ = np.linalg.lstsq(design, points[near], rcond=None)
        lattice = Lattice(solution[0], solution[1:].T.copy(), 0.0, 0.0)
    off = np.linalg.norm(points - lattice.position(lattice.nearest_site(points)), axis=1)
    near = off <= NODE_TOLERANCE * lattice.spacing_px
    lattice.inlier_share, lattice.residual_px = float(near.mean()), float(np.median(off[near])) if near.any() else 0.0
    return lattice if lattice.inlier_share >= MIN_INLIER_SHARE else None
