"""maemi.measure.lattice: the lattice of a patterned array from points with sites missing, jitter and strays; none
from scattered points."""

from __future__ import annotations

import numpy as np
import pytest

from maemi.measure.lattice import fit_lattice, reduced

A, B = np.array([24.0, 14.1]), np.array([-15.2, 22.5])  # the DeepSEM arrays' vectors on screen, in pixels


def _sites(width: int = 340, height: int = 340, origin=(7.0, 5.0)) -> np.ndarray:
    i, j = np.meshgrid(np.arange(-30, 30), np.arange(-30, 30))
    xy = np.asarray(origin) + np.stack([i.ravel(), j.ravel()], 1) @ np.stack([A, B], 1).T
    return xy[(xy[:, 0] >= 0) & (xy[:, 0] < width) & (xy[:, 1] >= 0) & (xy[:, 1] < height)]


def _same_lattice(basis: np.ndarray) -> bool:
    """Whether `basis` spans the lattice of A and B: each spans the other with integer coefficients."""
    true = np.stack([A, B], 1)
    coefficients = np.linalg.solve(basis, true)
    return np.allclose(coefficients, np.round(coefficients), atol=0.05) and abs(abs(np.linalg.det(coefficients)) - 1) < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_lattice_with_half_its_sites_empty_and_strays(seed):
    rng = np.random.default_rng(seed)
    sites = _sites()
    kept = sites[rng.random(len(sites)) < 0.5]
    points = np.r_[kept + rng.normal(0, 1.0, kept.shape), rng.uniform(0, 340, (10, 2))]
    lattice = fit_lattice(points)
    assert lattice is not None
    assert _same_lattice(lattice.basis)
    assert lattice.spacing_px == pytest.approx(np.linalg.norm(B), abs=0.5)
    assert lattice.inlier_share > 0.8 and lattice.residual_px < 2
    # every site of the field, the empty ones too (one on the border may fall either way by a fraction of a pixel)
    assert abs(len(lattice.sites_within(340, 340)) - len(sites)) <= 1
    assert np.abs(lattice.position(lattice.nearest_site(sites)) - sites).max() < 1.0


@pytest.mark.parametrize("seed", range(5))
def test_scattered_points_are_no_lattice(seed):
    """Wires grown from scattered catalyst droplets stand on no lattice; none is made up."""
    assert fit_lattice(np.random.default_rng(seed).uniform(0, 340, (80, 2))) is None


def test_some_sites_found_twice():
    """Two wires on one site (or one found twice) give a null difference vector; it is no lattice vector."""
    rng = np.random.default_rng(0)
    sites = _sites() + rng.normal(0, 0.8, (len(_sites()), 2))
    lattice = fit_lattice(np.r_[sites, sites[:40] + 1.0])
    assert lattice is not None and _same_lattice(lattice.basis)


def test_too_few_points_and_one_row():
    assert fit_lattice(_sites()[:5]) is None
    row = np.stack([np.arange(20) * 25.0, np.full(20, 50.0)], 1)  # one line of points spans no two directions
    assert fit_lattice(row) is None


def test_reduction_gives_the_shortest_basis():
    a, b = reduced(A, 3 * A + B)
    assert {tuple(np.round(v, 6)) for v in (a, b)} == {tuple(np.round(A, 6)), tuple(np.round(B, 6))}
