import numpy as np
from skimage.measure import regionprops_table

from maemi.measure.moments import ellipse_moments
from maemi.measure.scenes import render_scene


def _regionprops(labels):
    return regionprops_table(labels, properties=("label", "area", "centroid", "orientation", "axis_major_length",
                                                 "axis_minor_length"))


def test_ellipse_moments_are_regionprops_numbers():
    # the instance masks of rendered wires, particles and fibres, with a gap in the labels and large coordinates
    for kind in ("nanowires", "sem_clusters", "fibres"):
        labels = render_scene(7, kind, shape=(384, 512)).instances.astype(np.int64)
        labels[labels == 3] = 0
        labels = np.pad(labels, ((3000, 0), (0, 2000)))
        want, got = _regionprops(labels), ellipse_moments(labels)
        np.testing.assert_array_equal(got.ids, want["label"])
        np.testing.assert_array_equal(got.area, want["area"])
        np.testing.assert_allclose(got.centroids, np.stack([want["centroid-0"], want["centroid-1"]], 1), atol=1e-9)
        np.testing.assert_allclose(got.major, want["axis_major_length"], atol=1e-9)
        np.testing.assert_allclose(got.minor, want["axis_minor_length"], atol=1e-9)
        # orientation is axial: -pi/2 and pi/2 are the same axis
        turn = np.angle(np.exp(2j * (got.orientation - want["orientation"])))
        np.testing.assert_allclose(turn, 0, atol=1e-9)


def test_symmetric_objects_take_regionprops_diagonal():
    labels = np.zeros((40, 40), int)
    labels[5:15, 5:15] = 1  # a square: equal variances, no covariance
    labels[20:30, 20:30] = np.eye(10, dtype=int) * 2  # a diagonal line, down and to the right
    labels[20:30, 5:15] = np.fliplr(np.eye(10, dtype=int)) * 3  # the other diagonal
    want, got = _regionprops(labels), ellipse_moments(labels)
    np.testing.assert_allclose(got.orientation, want["orientation"], atol=1e-12)
    assert np.isclose(got.orientation[1], -got.orientation[2])


def test_empty_label_image():
    got = ellipse_moments(np.zeros((8, 8), int))
    assert len(got.ids) == 0 and got.centroids.shape == (0, 2) and len(got.orientation) == 0
