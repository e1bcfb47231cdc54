"""maemi.measure.fibres: fibres counted through crossings and sized on the skeleton, on masks drawn with known truth."""

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from maemi.measure.fibres import fibre_labels, measure_fibres


def _draw(shape, paths, width):
    """Mask of thick curves: every pixel centre within width / 2 of a centre line sampled densely as (row, col) points
    (so a fibre is `width` pixels across on average over its position and angle)."""
    grid = np.stack(np.mgrid[: shape[0], : shape[1]], axis=-1).reshape(-1, 2)
    points = np.concatenate(paths)
    distance, _ = cKDTree(points).query(grid, distance_upper_bound=width)
    return (distance <= width / 2).reshape(shape)


def _line(centre, angle_deg, length, step=0.25):
    """A straight centre line through `centre` at `angle_deg` counter-clockwise on screen."""
    t = np.arange(-length / 2, length / 2, step)[:, None]
    a = math.radians(angle_deg)
    return np.asarray(centre, float) + t * np.array([-math.sin(a), math.cos(a)])


@pytest.mark.parametrize("width", [8, 14])
@pytest.mark.parametrize("angles", [(0,), (0, 90), (0, 45), (0, 25), (10, 70, 130), (0, 60, 120), (20, 65, 110, 160)])
def test_straight_fibres_crossing_are_counted_once_each(width, angles):
    shape = (300, 400)
    # the lines cross near, not at, one point; all run off the frame (one visible piece each)
    # (.5 offsets: a line along a pixel row is then `width` rows wide, not width + 1)
    paths = [_line((150.5 + 30 * math.sin(2 * i), 200.5 + 40 * math.cos(3 * i)), a, 1000) for i, a in enumerate(angles)]
    f = measure_fibres(_draw(shape, paths, width))
    assert f.fibre_count == len(angles)
    assert f.diameter_mean_px == pytest.approx(width, rel=0.1)


def test_an_x_is_two_fibres_of_four_segments_at_one_junction():
    mask = _draw((200, 200), [_line((100, 100), 30, 400), _line((100, 100), 120, 400)], 10)
    f = measure_fibres(mask)
    assert (f.fibre_count, f.segment_count, f.junction_count) == (2, 4, 1)
    labels = fibre_labels(mask)
    assert labels.max() == 2 and ((labels > 0) == mask).all()


def test_a_curved_fibre_is_one():
    t = np.linspace(0, 1, 4000)[:, None]
    arc = np.concatenate([150 - 120 * np.sin(np.pi * t), 30 + 340 * t], axis=1)  # half a sine, 120 px high
    f = measure_fibres(_draw((300, 400), [arc], 12))
    assert f.fibre_count == 1 and f.junction_count == 0
    assert f.diameter_mean_px == pytest.approx(12, rel=0.1)
    assert f.length_total_px == pytest.approx(np.linalg.norm(np.diff(arc, axis=0), axis=1).sum(), rel=0.1)


def test_bumps_on_the_edges_do_not_add_fibres():
    shape, width = (300, 400), 14
    paths = [_line((100, 200), 10, 1000), _line((200, 200), 80, 1000), _line((220, 200), -5, 1000)]
    mask = _draw(shape, paths, width)
    rng = np.random.default_rng(0)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    edge = np.argwhere(mask & ~ndimage.binary_erosion(mask))
    for r, c in edge[rng.choice(len(edge), 25, replace=False)]:  # bumps up to half a width high
        mask |= (rows - r) ** 2 + (cols - c) ** 2 <= rng.uniform(2, width / 2) ** 2
    assert measure_fibres(mask).fibre_count == 3


def test_a_blob_with_spurs_is_at_most_one_fibre():
    rows, cols = np.ogrid[:200, :200]
    mask = (rows - 100) ** 2 + (cols - 100) ** 2 <= 40**2
    for a in range(0, 360, 45):  # radial stubs sticking out 10 px, shorter than the blob's radius
        stub = _line((100 - 45 * math.sin(math.radians(a)), 100 + 45 * math.cos(math.radians(a))), a, 10)
        mask |= _draw((200, 200), [stub], 6)
    assert measure_fibres(mask).fibre_count <= 1


def test_a_fibre_leaving_and_reentering_the_frame_counts_per_visible_piece():
    t = np.linspace(0, 1, 4000)[:, None]
    wave = np.concatenate([150 - 190 * np.sin(2 * np.pi * t), 30 + 340 * t], axis=1)  # out at the top, then the bottom
    f = measure_fibres(_draw((300, 400), [wave], 10))
    inside = (wave[:, 0] >= 0) & (wave[:, 0] < 300)
    assert f.fibre_count == (np.diff(np.r_[0, inside.astype(int)]) == 1).sum() == 3


def test_empty_mask():
    f = measure_fibres(np.zeros((64, 64), bool))
    assert (f.fibre_count, f.segment_count, f.junction_count) == (0, 0, 0)
    assert f.diameter_mean_px is None and f.diameter_std_px is None and f.orientation_deg is None
    assert f.length_total_px == 0 and f.intercepts_per_px == 0
    assert fibre_labels(np.zeros((64, 64), bool)).max() == 0


def test_intercepts_and_orientation_of_parallel_fibres():
    shape, width, n = (200, 300), 8, 5
    mask = np.zeros(shape, bool)
    for i in range(n):  # n vertical bars of exactly `width` columns
        mask[:, 30 + 55 * i: 30 + 55 * i + width] = True
    f = measure_fibres(mask)
    assert f.fibre_count == n
    # every row crosses n fibres; each of the n * width columns inside a fibre is one run
    assert f.intercepts_per_px == pytest.approx((shape[0] * n + n * width) / (2 * shape[0] * shape[1]))
    assert f.orientation_deg == pytest.approx(90, abs=1)


def test_counts_maemis_synthetic_fibre_scenes():
    from maemi.data.synth import make_micrograph
    from maemi.measure.measurements import segment

    for index in range(3):
        image, record = make_micrograph("Fibres", seed=0, index=index, width=512, height=384)
        seg = segment(image[: image.shape[0] - record["info_bar_height_px"]])
        f = measure_fibres(seg.mask, seg.distance)
        assert f.fibre_count == record["object_count"]
        width_px = record["size_mean_nm"] / record["nm_per_pixel"]
        assert f.diameter_mean_px == pytest.approx(width_px, rel=0.1)


def _random_fibre(rng, shape, curl):
    """A smooth random walk through a random point, long enough to leave the frame both ways."""
    start, heading = rng.uniform((0, 0), shape), rng.uniform(0, 2 * np.pi)
    halves = []
    for back in (0, np.pi):
        turn = ndimage.gaussian_filter1d(rng.standard_normal(2500), 60) * curl
        angle = heading + back + np.cumsum(turn)
        halves.append(start + np.cumsum(0.5 * np.stack([np.sin(angle), np.cos(angle)], axis=1), axis=0))
    return np.concatenate([halves[1][::-1], halves[0]])


def test_a_mat_of_crossing_curved_fibres_is_counted_within_fifteen_percent():
    shape, width, drawn, counted = (300, 400), 8, 0, 0
    for seed in range(4):
        rng = np.random.default_rng(seed)
        paths = [_random_fibre(rng, shape, 0.02) for _ in range(int(rng.integers(5, 11)))]
        for p in paths:  # truth: the visible pieces longer than the width
            inside = np.r_[0, ((p[:, 0] >= 0) & (p[:, 0] < shape[0]) & (p[:, 1] >= 0) & (p[:, 1] < shape[1])), 0]
            starts, stops = np.flatnonzero(np.diff(inside) == 1), np.flatnonzero(np.diff(inside) == -1)
            drawn += int(((stops - starts) * 0.5 > width).sum())
        counted += measure_fibres(_draw(shape, paths, width)).fibre_count
    assert abs(counted - drawn) <= 0.15 * drawn


def test_measure_reports_fibres_for_a_mat_and_not_for_a_lumpy_support(stem_greys):
    """measure() states fibre_count only where the traced network is long fibres of even width: the synthetic Fibres
    class, not the lumpy supports of real STEM images, whose segmented foreground is slender by area too (before the
    length and width checks, 28 of 33 real STEM images were reported as mats of 40 to 7,491 fibres)."""
    from maemi.data.synth import make_micrograph
    from maemi.measure.measurements import measure

    image, record = make_micrograph("Fibres", seed=0, index=0, width=512, height=384)
    assert measure(image[: image.shape[0] - record["info_bar_height_px"]]).fibre_count == record["object_count"]
    for name, grey in stem_greys("Pd1.jpg", "PtW2.jpg", "Cu_silica1.jpg"):
        m = measure(grey)
        assert m.object_count > 0 and m.fibre_count is None, name


def test_junction_radii_equal_ndimage_maximum() -> None:
    from maemi.measure.fibres import _node_radii

    rng = np.random.default_rng(0)
    distance = rng.random((40, 50)).astype(np.float32) * 5
    nodes, n = ndimage.label(rng.random((40, 50)) > 0.8)
    expected = np.asarray(ndimage.maximum(distance, nodes, np.arange(1, n + 1)), float)
    assert n > 10 and np.array_equal(_node_radii(distance, nodes, n), expected)
