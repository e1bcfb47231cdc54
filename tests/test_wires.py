"""maemi.measure.wires: upright rods of one direction and size are nanowires, whatever breaks the pattern is parasitic,
and an image without such an array says so instead of guessing."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk, polygon

from maemi.measure.wires import axial_difference, axial_mean, classify_wires


def _rod(labels: np.ndarray, label: int, centre: tuple[float, float], length: float, width: float, deg: float) -> None:
    """Paint a rectangle rod, `deg` counter-clockwise from horizontal on screen (rows grow downwards)."""
    a = np.radians(deg)
    along = np.array([-np.sin(a), np.cos(a)]) * length / 2  # (row, column)
    across = np.array([np.cos(a), np.sin(a)]) * width / 2
    c = np.asarray(centre, float)
    corners = np.array([c + along + across, c + along - across, c - along - across, c - along + across])
    rr, cc = polygon(corners[:, 0], corners[:, 1], labels.shape)
    labels[rr, cc] = label


def _array_image(direction: float = 80.0) -> tuple[np.ndarray, dict[int, str]]:
    """A 6 x 4 grid of upright rods (30 x 6 px at `direction`), with blobs, a rod at 60 degrees to the array, a rod
    twice as long and a rod twice as wide between them."""
    labels = np.zeros((400, 520), int)
    truth = {}
    k = 0
    for i in range(4):
        for j in range(6):
            k += 1
            _rod(labels, k, (50 + 90 * i, 40 + 80 * j), 30, 6, direction + (2 if (i + j) % 2 else -2))
            truth[k] = "nanowire"
    for centre, radius in [((95, 80), 9), ((185, 160), 7), ((275, 240), 11), ((95, 400), 8)]:
        k += 1
        labels[disk(centre, radius, shape=labels.shape)] = k
        truth[k] = "parasitic"
    for centre, length, width, deg in [((185, 320), 30, 6, direction + 60), ((275, 480), 62, 6, direction),
                                       ((360, 480), 30, 13, direction)]:
        k += 1
        _rod(labels, k, centre, length, width, deg)
        truth[k] = "parasitic"
    return labels, truth


@pytest.mark.parametrize("direction", [80.0, 90.0, 3.0])  # 3: the array straddles the 0/180 wrap-around
def test_aligned_rods_are_wires_and_the_rest_parasitic(direction):
    labels, truth = _array_image(direction)
    result = classify_wires(labels)
    assert result.array_found, result.note
    assert axial_difference(result.direction_deg, direction) < 3
    assert abs(result.rod_length_px - 30) < 5 and abs(result.rod_width_px - 6) < 2
    assert dict(zip(result.ids.tolist(), result.classes)) == truth
    assert result.counts == {"nanowire": 24, "parasitic": 7}
    assert result.wire_yield == pytest.approx(24 / 31)
    assert "24 nanowires" in result.describe()


def test_pieces_of_one_crystal_count_once():
    labels, truth = _array_image()
    # a crystal cut in three by dim facets: pieces 2 px apart (half the 6 px rod width is 3), below the grid
    k = max(truth) + 1
    for dx in (0, 12, 24):
        labels[372:387, 100 + dx:110 + dx] = k
        truth[k] = "parasitic"
        k += 1
    result = classify_wires(labels)
    assert dict(zip(result.ids.tolist(), result.classes)) == truth
    crystal = dict(zip(result.ids.tolist(), result.crystal.tolist()))
    assert len({crystal[i] for i in (k - 3, k - 2, k - 1)}) == 1  # one crystal
    assert all(crystal[i] == -1 for i, c in truth.items() if c == "nanowire")
    assert result.counts == {"nanowire": 24, "parasitic": 8}  # the 7 separate ones and the cut one
    assert result.wire_yield == pytest.approx(24 / 32)


def test_no_array_is_said_not_guessed():
    rng = np.random.default_rng(0)
    labels = np.zeros((400, 400), int)
    for k in range(1, 31):  # rods of random directions and lengths, and blobs: no common direction
        centre = (30 + 60 * ((k - 1) // 6), 30 + 65 * ((k - 1) % 6))
        if k % 3:
            _rod(labels, k, centre, rng.uniform(20, 45), 5, rng.uniform(0, 180))
        else:
            labels[disk(centre, 8, shape=labels.shape)] = k
    result = classify_wires(labels)
    assert not result.array_found
    assert set(result.classes) == {"object"} and len(result.classes) == 30
    assert result.counts == {"object": 30} and result.wire_yield is None
    assert "no nanowire array" in result.describe()


def test_too_few_rods_and_an_empty_image():
    labels = np.zeros((100, 100), int)
    assert not classify_wires(labels).array_found
    _rod(labels, 1, (50, 30), 30, 6, 90)
    _rod(labels, 2, (50, 60), 30, 6, 90)
    result = classify_wires(labels)
    assert not result.array_found and "at least" in result.note


def test_axial_mean_wraps():
    assert axial_difference(axial_mean(np.array([179.0, 1.0]), np.ones(2)), 0) < 1e-9
    assert axial_difference(170, 10) == 20


def test_a_few_aligned_fragments_of_a_large_support_are_not_an_array():
    """Rods of one direction and size that cover a sliver of what was segmented are fragments that line up by
    chance (a lumpy support cut in pieces), not an array: the same 24 rods do make an array on their own."""
    labels, _ = _array_image()
    assert classify_wires(labels).array_found
    support = np.zeros((1400, 1400), int)
    support[:400, :520] = labels
    support[450:1400, 20:1380] = labels.max() + 1  # a support region 70 times the rods' area
    result = classify_wires(support)
    assert not result.array_found and "fragments, not an array" in result.note


def test_real_stem_particle_images_are_not_called_nanowire_arrays(stem_greys):
    """Before the area check, measure() reported 12-44 upright nanowires on 5 of the 33 real STEM images."""
    from maemi.measure.measurements import measure

    for name, grey in stem_greys("Pd_silica2.jpg", "PtC1.jpg"):
        m = measure(grey)
        assert m.object_count > 0 and m.nanowire_count is None and m.parasitic_count is None, name
