import math

import numpy as np

from maemi.measure.measurements import measure
from maemi.measure.size_distribution import frame_extents, size_distribution


def test_large_objects_are_weighted_for_the_frame_that_cuts_them_more_often():
    # a 10 px and a 50 px object, both inside a 100 x 100 field: a 50 px object lies wholly inside for 2,500 of the
    # 10,000 positions, a 10 px one for 8,100, so each big one found stands for 3.24 small ones
    sizes = size_distribution(np.array([10.0, 50.0]), np.array([[10, 10], [50, 50]]), np.array([False, False]),
                              (100, 100))
    assert sizes.d50 == 50.0  # unweighted, the median of two would be the smaller one
    assert sizes.d10 == 10.0 and sizes.d90 == 50.0
    expected = math.exp((math.log(10) * 100 / 81 + math.log(50) * 4) / (100 / 81 + 4))
    assert math.isclose(sizes.geometric_mean, expected, rel_tol=1e-9)


def test_objects_cut_by_the_frame_are_left_out_and_counted():
    sizes = size_distribution(np.array([10.0, 12.0, 3.0]), np.array([[10, 10], [12, 12], [3, 8]]),
                              np.array([False, False, True]), (200, 200))
    assert sizes.objects_used == 2 and sizes.objects_on_edge == 1
    assert sizes.d10 == 10.0  # the 3 px stub is not in the distribution
    # grains larger than the field all touch it: then they are all there is
    everything = size_distribution(np.array([80.0, 90.0]), np.array([[80, 100], [90, 100]]), np.array([True, True]),
                                   (100, 100))
    assert everything.objects_used == 2 and everything.d50 == 80.0
    assert size_distribution(np.zeros(0), np.zeros((0, 2)), np.zeros(0, bool), (10, 10)) is None


def test_log_normal_sizes_give_their_geometric_mean_and_spread():
    d = np.exp(np.random.default_rng(0).normal(math.log(20), 0.3, 4000))
    sizes = size_distribution(d, np.ones((d.size, 2)), np.zeros(d.size, bool), (10_000, 10_000))
    assert abs(sizes.geometric_mean / 20 - 1) < 0.02
    assert abs(math.log(sizes.geometric_std) / 0.3 - 1) < 0.05
    assert sizes.d10 < sizes.d50 < sizes.d90 and abs(sizes.d50 / 20 - 1) < 0.03


def test_frame_extents_of_labelled_objects():
    labels = np.zeros((50, 60), np.int32)
    labels[10:20, 10:15] = 1
    labels[0:5, 30:40] = 3  # on the top edge; label 2 unused
    extent, on_edge = frame_extents(labels, np.array([1, 3]))
    assert extent.tolist() == [[10, 5], [5, 10]] and on_edge.tolist() == [False, True]


def test_measure_reports_the_distribution_of_discs_inside_the_frame():
    rng = np.random.default_rng(3)
    h, w = 300, 400
    yy, xx = np.mgrid[:h, :w]
    image = np.full((h, w), 0.2, np.float32)
    radii = [6, 8, 10, 12, 14, 16, 18, 20]
    inside = []
    for k, r in enumerate(radii * 2):
        row, col = (r + 6 + 70 * (k // 4), 30 + 95 * (k % 4)) if k < 12 else (rng.uniform(0, h), w - 2)
        image[(yy - row) ** 2 + (xx - col) ** 2 <= r * r] = 0.8
        if k < 12:
            inside.append(2 * r)
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    m = measure(np.clip(image, 0, 1))
    assert m.edge_object_count == 4  # the four discs centred on the right edge
    # the discs inside, each weighted for the frame (under 10% here): D50 and the geometric mean of their diameters
    assert abs(m.diameter_d50_px / np.median(inside) - 1) < 0.15
    assert abs(m.diameter_geometric_mean_px / math.exp(np.mean(np.log(inside))) - 1) < 0.1
    assert m.diameter_d10_px < m.diameter_d50_px < m.diameter_d90_px and m.diameter_geometric_std > 1.2
