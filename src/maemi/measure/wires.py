"""Nanowire or parasitic crystal: the objects of a tilted SEM view of a vertical nanowire array, classed as an expert does.

Physics, not tuning to a file: in a tilted view every upright wire of a vertical array projects to a rod of the same
direction (the tilt axis fixes it), the same width (the wires grow from holes of one diameter) and nearly the same
length (one growth time). Parasitic crystals are whatever breaks that pattern: irregular blobs, wires lying on the
substrate at random angles, wires grown far longer or kinked, and clusters that fused in the segmentation.

So, from the label image (regionprops: orientation, major and minor axis of the fitted ellipse):
1. the array's direction is the mode of the orientations of the elongated objects (weighted by their length), refined
   as the axial mean of those within the tolerance of that mode;
2. the typical rod is the median length and width of the elongated objects along that direction;
3. an object is a `nanowire` when it is elongated, aligned within the tolerance, and its length and width are within a
   factor of the typical rod's; else `parasitic`.
4. a parasitic crystal's facets differ in brightness, so segmentation cuts one crystal into pieces that touch or nearly
   touch; an expert counts the crystal. Parasitic pieces closer than half a rod's width are one crystal (`crystal`),
   and the parasitic count is the number of crystals.
When too few elongated objects share a direction to define an array, or the rods that do cover a sliver of what was
segmented (fragments of a support that line up by chance), nothing is guessed: every object is `object` and
`array_found` is False, saying why. Nanospades (rare) are not told apart: they fall in `parasitic` (or `nanowire`).
Orientations are in degrees, 0-180 counter-clockwise from horizontal as seen on screen, as in maemi.measure.objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.measure import regionprops_table

# An upright wire is several times longer than wide even after the tilt foreshortens it (the DeepSEM tiles: rods about
# 28 x 5 px); blobs and droplets have aspect below ~1.5. 2 separates the two with room for a noisy ellipse fit.
ELONGATED_ASPECT = 2.0
# Upright wires are parallel to within a few degrees; the ellipse fit of a rod 4-5 px wide adds a few more. 15 degrees
# keeps them all, and catches a lying wire at a random angle only 1 time in 6 (the size check catches most of those).
ALIGN_TOLERANCE_DEG = 15.0
# Lengths of upright wires spread by about +-15%; two wires fused end to end, or a lying wire seen at full length, read
# 2x or more. 1.5 sits between (about the geometric mean of 1 and 2), both ways, so stubs well short of a wire fail too.
LENGTH_FACTOR = 1.5
# Width is set by the hole diameter; two wires fused side by side read 2x wide, a droplet adds a little. 1.6 both ways.
WIDTH_FACTOR = 1.6
# An array needs at least this many aligned rods, and they must be a share of the elongated objects well above chance:
# orientations at random put 2 x 15 / 180 = 1/6 of them within the tolerance of any direction; we ask for twice that.
MIN_ARRAY_RODS = 5
MIN_ALIGNED_SHARE = 2 * (2 * ALIGN_TOLERANCE_DEG / 180)
# ... and the wires must be part of what the image shows: at least this share of the segmented area. A lumpy support
# cut into hundreds of fragments has some that are rod-like and line up by chance (or along the scan): on 5 of the 33
# real STEM particle images 12-44 such "wires" covered at most 0.45% of the foreground, while on the 31 DeepSEM tiles
# the upright wires cover 26-61% (one poorly segmented tile 9.6%). 2% sits between, a factor of 4-5 from each.
MIN_WIRE_AREA_SHARE = 0.02
HISTOGRAM_BIN_DEG = 5.0
# Pieces of one parasitic crystal closer than this many rod widths are one crystal: the gap a dim facet leaves is a
# few pixels, narrower than a wire, while separate crystals on the substrate usually lie further apart. Chosen on the
# even-numbered half of the 31 DeepSEM tiles (parasitic count error 0.10 there; touching pieces only 0.23, a whole
# rod width 0.21); the odd half: 0.16 (benchmarks/results/measure_real.md, docs/measurement.md).
CRYSTAL_GAP_RODS = 0.5


@dataclass
class WireClasses:
    """One class per object, in label order (`ids`), and what the array looked like."""

    ids: np.ndarray  # the objects' labels, ascending
    classes: list[str]  # "nanowire" or "parasitic"; "object" for all when no array was found
    array_found: bool
    crystal: np.ndarray | None = None  # per object, the parasitic crystal it is a piece of (0, 1, ...); -1 for wires
    direction_deg: float | None = None  # the array's rod direction
    rod_length_px: float | None = None  # the typical upright rod: major axis of the fitted ellipse
    rod_width_px: float | None = None  # minor axis
    counts: dict[str, int] = field(default_factory=dict)
    wire_yield: float | None = None  # nanowires / all objects: the growth yield when every object is one array site
    note: str = ""

    def describe(self) -> str:
        if not self.array_found:
            return f"no nanowire array found: {self.note}"
        return (f"{self.counts.get('nanowire', 0)} nanowires and {self.counts.get('parasitic', 0)} parasitic crystals "
                f"(yield {self.wire_yield:.0%}); rods at {self.direction_deg:.0f} degrees, about "
                f"{self.rod_length_px:.0f} x {self.rod_width_px:.0f} px")


def axial_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Angle between two axes (directions modulo 180 degrees), in [0, 90]."""
    d = np.abs(np.asarray(a, float) - np.asarray(b, float)) % 180.0
    return np.minimum(d, 180.0 - d)


def axial_mean(angles: np.ndarray, weights: np.ndarray) -> float:
    """Weighted mean of axes: the mean of the doubled angles on the circle, halved (Mardia & Jupp, Directional
    Statistics, 2000, section 9.3), so that 179 and 1 degrees average to 0, not 90."""
    doubled = np.radians(2 * angles)
    return float(np.degrees(np.arctan2((weights * np.sin(doubled)).sum(), (weights * np.cos(doubled)).sum())) / 2 % 180)


def dominant_direction(angles: np.ndarray, weights: np.ndarray) -> float:
    """The mode of a length-weighted histogram of axes (bins of 5 degrees, smoothed over 3 bins with wrap-around),
    refined as the axial mean of the angles within the tolerance of that mode: a mode, because a crowd of lying wires
    at random angles shifts a plain mean but not the peak of the upright ones."""
    bins = int(round(180 / HISTOGRAM_BIN_DEG))
    hist = np.bincount((angles // HISTOGRAM_BIN_DEG).astype(int) % bins, weights=weights, minlength=bins)
    smooth = hist + np.roll(hist, 1) + np.roll(hist, -1)
    mode = (np.argmax(smooth) + 0.5) * HISTOGRAM_BIN_DEG
    near = axial_difference(angles, mode) <= ALIGN_TOLERANCE_DEG
    return axial_mean(angles[near], weights[near])


def classify_wires(labels: np.ndarray) -> WireClasses:
    """Class every object of `labels` (0 background, 1..n objects, e.g. `segment(grey).labels`) as nanowire or
    parasitic against the array's own typical rod; see the module docstring."""
    table = regionprops_table(np.asarray(labels), properties=("label", "area", "orientation", "axis_major_length",
                                                              "axis_minor_length"))
    ids = table["label"]
    n = len(ids)
    length = table["axis_major_length"].astype(float)
    width = np.maximum(table["axis_minor_length"].astype(float), 1.0)
    # regionprops: angle from the row axis (down) to the major axis, counter-clockwise in (row, column) coordinates,
    # which is counter-clockwise on screen too; the row axis is 90 degrees on screen
    angle = (90.0 + np.degrees(table["orientation"])) % 180.0
    elongated = length / width >= ELONGATED_ASPECT

    def no_array(why: str) -> WireClasses:
        return WireClasses(ids, ["object"] * n, False, counts={"object": n}, note=why)

    if elongated.sum() < MIN_ARRAY_RODS:
        return no_array(f"{int(elongated.sum())} elongated objects (aspect >= {ELONGATED_ASPECT:g}) of {n}; an array "
                        f"needs at least {MIN_ARRAY_RODS}")
    direction = dominant_direction(angle[elongated], length[elongated])
    aligned = elongated & (axial_difference(angle, direction) <= ALIGN_TOLERANCE_DEG)
    share = float(length[aligned].sum() / length[elongated].sum())
    if aligned.sum() < MIN_ARRAY_RODS or share < MIN_ALIGNED_SHARE:
        return no_array(f"{int(aligned.sum())} of {int(elongated.sum())} elongated objects share a direction (within "
                        f"{ALIGN_TOLERANCE_DEG:g} degrees of {direction:.0f}; {share:.0%} of their length): no common "
                        f"direction (an array needs {MIN_ARRAY_RODS} and {MIN_ALIGNED_SHARE:.0%})")
    # medians: the aligned set still holds a few fused pairs and chance-aligned lying wires, a minority
    rod_length, rod_width = float(np.median(length[aligned])), float(np.median(width[aligned]))
    wire = (aligned
            & (length <= rod_length * LENGTH_FACTOR) & (length >= rod_length / LENGTH_FACTOR)
            & (width <= rod_width * WIDTH_FACTOR) & (width >= rod_width / WIDTH_FACTOR))
    area = table["area"].astype(float)
    wire_area = float(area[wire].sum() / area.sum())
    if wire_area < MIN_WIRE_AREA_SHARE:
        return no_array(f"{int(wire.sum())} rods of one direction and size cover {wire_area:.1%} of the segmented area "
                        f"(an array's wires cover at least {MIN_WIRE_AREA_SHARE:.0%}): fragments, not an array")
    classes = ["nanowire" if w else "parasitic" for w in wire]
    crystal = crystals(np.asarray(labels), ids, ~wire, int(round(CRYSTAL_GAP_RODS * rod_width)))
    n_wire, n_crystal = int(wire.sum()), int(crystal.max()) + 1
    return WireClasses(ids, classes, True, crystal, direction, rod_length, rod_width,
                       counts={"nanowire": n_wire, "parasitic": n_crystal}, wire_yield=n_wire / (n_wire + n_crystal),
                       note=f"{int(aligned.sum())} aligned rods define the array; {n - n_wire} parasitic pieces make "
                            f"{n_crystal} crystals")


def crystals(labels: np.ndarray, ids: np.ndarray, parasitic: np.ndarray, gap_px: int) -> np.ndarray:
    """Per object (in `ids` order), the crystal its piece belongs to: parasitic pieces whose pixels come within gap_px
    of each other (8-connected after growing them by gap_px) are one crystal, numbered 0, 1, ... in label order;
    -1 for the others."""
    out = np.full(len(ids), -1)
    if not parasitic.any():
        return out
    mask = np.isin(labels, ids[parasitic])
    grown = ndimage.binary_dilation(mask, iterations=gap_px) if gap_px > 0 else mask
    groups, _ = ndimage.label(grown, structure=np.ones((3, 3)))
    # a piece's group: the group at any of its pixels (a piece lies inside one grown component)
    index = np.searchsorted(ids, labels[mask])
    group_of = np.zeros(len(ids), int)
    group_of[index] = groups[mask]
    _, out[parasitic] = np.unique(group_of[parasitic], return_inverse=True)
    return out
