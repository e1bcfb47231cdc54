"""maemi.measure.wires: upright rods of one direction and size are nanowires, whatever breaks the pattern is parasitic,
and an image without such an array says so instead of guessing."""

from __future__ import annotations

import dataclasses
import json

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


def _patterned_array(seed: int) -> tuple[np.ndarray, dict[str, int]]:
    """A patterned array as the DeepSEM tiles show it: sites on an oblique lattice, each holding an upright rod (28 x 5
    px, its foot on the site, its top towards the top of the screen), a crystal, or nothing. Some crystals are cut in
    two by a dim facet wider than the gap that groups pieces; two crystals on neighbouring sites touch; a wire that
    fell from its site lies against the foot of its neighbour's upright wire, segmented as one object with it."""
    rng = np.random.default_rng(seed)
    a, b = np.array([24.0, 14.1]), np.array([-15.2, 22.5])  # (x, y)
    i, j = np.meshgrid(np.arange(-30, 30), np.arange(-30, 30))
    sites = np.array([6.0, 40.0]) + np.stack([i.ravel(), j.ravel()], 1) @ np.stack([a, b], 1).T
    in_field = (sites[:, 0] >= 0) & (sites[:, 0] < 360) & (sites[:, 1] >= 0) & (sites[:, 1] < 360)
    inner = (sites[:, 0] >= 12) & (sites[:, 0] < 348) & (sites[:, 1] >= 40) & (sites[:, 1] < 348)
    truth = {"nanowire": 0, "parasitic": 0, "empty": int((in_field & ~inner).sum())}  # nothing near the border
    sites = sites[inner]
    labels = np.zeros((360, 360), int)
    kind = rng.choice(["nanowire", "parasitic", "empty"], size=len(sites), p=[0.55, 0.4, 0.05])
    k = 0
    for (x, y), what in zip(sites, kind):
        truth[what] += 1
        k += 1
        if what == "nanowire":
            _rod(labels, k, (y - 14, x), 28, 5, 90 + rng.normal(0, 1))
        elif what == "parasitic":
            if truth["parasitic"] <= 2 or rng.random() < 0.3:
                # a taller crystal whose tip a dim facet 7 px wide cuts off (the grouping gap bridges 6 px)
                labels[disk((y - 7, x), 9, shape=labels.shape)] = k
                labels[int(y) - 13:int(y) - 6, int(x) - 10:int(x) + 11] = 0
                tip = labels[:int(y) - 13] == k
                labels[:int(y) - 13][tip] = 1000 + k  # segmented as a piece of its own
            else:
                labels[disk((y - 4, x), rng.uniform(5, 7), shape=labels.shape)] = k
    # two crystals on neighbouring sites that touch: one object, two crystals
    wires = [s for s, w in zip(sites, kind) if w == "nanowire"]
    crystals = [s for s, w in zip(sites, kind) if w == "parasitic"]
    pair = next((p, q) for p in crystals for q in crystals if 20 < np.linalg.norm(p - q) < 30)
    (x0, y0), (x1, y1) = pair
    _rod(labels, labels[int(y0) - 4, int(x0)], ((y0 + y1) / 2 - 4, (x0 + x1) / 2), np.linalg.norm(pair[0] - pair[1]),
         4, np.degrees(np.arctan2(-(y1 - y0), x1 - x0)))
    # the fallen wire: an empty site's wire lying from it to the foot of a neighbouring upright wire, fused with it
    fallen = next((p, q) for p in wires for q, w in zip(sites, kind) if w == "empty" and 20 < np.linalg.norm(p - q) < 30)
    (xw, yw), (xe, ye) = fallen
    _rod(labels, labels[int(yw) - 14, int(xw)], ((yw + ye) / 2, (xw + xe) / 2), np.linalg.norm(fallen[0] - fallen[1]),
         3, np.degrees(np.arctan2(-(ye - yw), xe - xw)))
    truth["parasitic"] += 1
    truth["empty"] -= 1
    return labels, truth


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_patterned_array_counts_crystals_by_site_and_cuts_wires_free(seed):
    labels, truth = _patterned_array(seed)
    result = classify_wires(labels)
    assert result.array_found and result.sites is not None, result.note
    assert result.counts == {"nanowire": truth["nanowire"], "parasitic": truth["parasitic"]}, result.note
    json.dumps(result.counts)  # plain ints: measurements go out as JSON
    assert abs(result.sites.empty - truth["empty"]) <= 1  # a site on the border may fall either way
    assert result.sites.lattice.spacing_px == pytest.approx(27.1, abs=0.5)
    assert "cut free" in result.note and "lattice" in result.describe()
    # the wire cut free is a nanowire object of its own in the labels the classes refer to
    assert result.labels.max() > labels.max()
    # without the lattice, the pieces of cut crystals (two at least) would count twice and the touching pair once
    assert int(result.crystal.max()) + 1 > truth["parasitic"]


def test_an_array_shown_upside_down_is_counted_the_same():
    """Feet are taken at the bottom end on screen unless the crystals sit on the other end's lattice: an image turned
    upside down (scan rotation) counts the same."""
    labels, truth = _patterned_array(0)
    upright, flipped = classify_wires(labels), classify_wires(np.ascontiguousarray(labels[::-1]))
    assert flipped.counts == upright.counts == {"nanowire": truth["nanowire"], "parasitic": truth["parasitic"]}
    assert flipped.sites.empty == upright.sites.empty


def test_the_measurements_of_a_patterned_array_carry_its_sites():
    """measure() on the rendered patterned array: counts by class, the sites of the field and the empty ones; an
    image of scattered particles has no sites."""
    from maemi.measure.measurements import measure

    labels, truth = _patterned_array(0)
    noise = np.random.default_rng(0).normal(0, 0.02, labels.shape)
    m = measure(np.where(labels > 0, 0.75, 0.15) + noise, method="classical")
    assert (m.nanowire_count, m.parasitic_count) == (truth["nanowire"], truth["parasitic"])
    # every site of the field holds one wire, one crystal or nothing here (no crystal lies off the sites)
    assert m.array_site_count == m.nanowire_count + m.parasitic_count + m.empty_site_count
    assert abs(m.empty_site_count - truth["empty"]) <= 1
    json.dumps(dataclasses.asdict(m))
    particles = np.full((200, 200), 0.15)
    for r, c in np.random.default_rng(1).uniform(20, 180, (15, 2)):
        particles[disk((r, c), 5, shape=particles.shape)] = 0.75
    p = measure(particles + noise[:200, :200], method="classical")
    assert p.array_site_count is None and p.empty_site_count is None


def test_aligned_rods_that_cross_the_field_are_no_array():
    """Aligned fibres or lying wires as long as half the field are not an array's upright wires (and no rod is cut
    out of them)."""
    labels = np.zeros((300, 300), int)
    for k in range(1, 9):
        _rod(labels, k, (150, 20 + 33 * k), 180, 6, 88 + k % 3)
    result = classify_wires(labels)
    assert not result.array_found and "cross" in result.note
    assert result.labels.max() == labels.max()
