"""Nanowire or parasitic crystal: the objects of a tilted SEM view of a vertical nanowire array, classed as an expert does.

Physics, not tuning to a file: in a tilted view every upright wire of a vertical array projects to a rod of the same
direction (the tilt axis fixes it), the same width (the wires grow from holes of one diameter) and nearly the same
length (one growth time). Parasitic crystals are whatever breaks that pattern: irregular blobs, wires lying on the
substrate at random angles, wires grown far longer or kinked, and clusters that fused in the segmentation.

So, from the label image (maemi.measure.moments: the orientation, major and minor axis of the fitted ellipse):
1. the array's direction is the mode of the orientations of the elongated objects (weighted by their length), refined
   as the axial mean of those within the tolerance of that mode;
2. the typical rod is the median length and width of the elongated objects along that direction;
3. an object is a `nanowire` when it is elongated, aligned within the tolerance, and its length and width are within a
   factor of the typical rod's; else `parasitic`.
4. a wire touching a lying wire or a crystal is segmented together with it, and the fused object is no rod: an opening
   with a line along the array's direction keeps what an upright wire could be, and a typical rod it keeps that
   touches the rest at one place (its foot, its tip, a crossing) is cut free as a nanowire (`cut_rods`).
5. a parasitic crystal's facets differ in brightness, so segmentation cuts one crystal into pieces; an expert counts
   the crystal. In a patterned array every crystal grew on a site of the lattice the wires stand on: the lattice is
   fitted to the nanowires' feet (maemi.measure.lattice), and the parasitic count is the sites without a nanowire that
   parasitic pieces reach, plus the crystals off every site (`array_sites`).
6. where the wires stand on no lattice (grown from scattered catalyst), parasitic pieces closer than half a rod's width
   are one crystal (`crystal`), and the parasitic count is the number of those.
When too few elongated objects share a direction to define an array, or the rods that do cover a sliver of what was
segmented (fragments of a support that line up by chance), nothing is guessed: every object is `object` and
`array_found` is False, saying why. Nanospades (rare) are not told apart: they fall in `parasitic` (or `nanowire`).
Orientations are in degrees, 0-180 counter-clockwise from horizontal as seen on screen, as in maemi.measure.objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from skimage.draw import line as draw_line

from maemi.measure.lattice import Lattice, fit_lattice
from maemi.measure.moments import ellipse_moments

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
# An array is many short upright wires per field: its rods are at most a quarter of the field's short side long;
# aligned fibres or lying wires that cross the field are not one (and cutting rods that long would be slow).
ROD_MAX_FIELD = 0.25
# Pieces of one parasitic crystal closer than this many rod widths are one crystal: the gap a dim facet leaves is a
# few pixels, narrower than a wire, while separate crystals on the substrate usually lie further apart. Chosen on the
# even-numbered half of the 31 DeepSEM tiles (parasitic count error 0.10 there; touching pieces only 0.23, a whole
# rod width 0.21); the odd half: 0.16 (benchmarks/results/measure_real.md, docs/measurement.md).
CRYSTAL_GAP_RODS = 0.5
# An upright wire touches what it stands on or leans against at one place: its foot, its tip or a crossing, a few
# pixels of its outline; the middle of a round crystal, which a line opening also keeps, is surrounded by the rest.
MAX_ROD_CONTACT = 1 / 3
# A site holds a parasitic crystal when a parasitic piece comes within this share of the lattice spacing of it: a
# crystal covers the site it grew on. A quarter of the spacing; 0.15 to 0.5 gave the same counts on the DeepSEM tiles.
SITE_REACH = 0.25
# A crystal off every site (a wire fallen from its site, a crystal whose site is outside the field) holds at least about
# half a wire's material; smaller pieces off the sites are fragments of what stands on one (a facet cut off by a dim
# neighbour, a droplet). On the even DeepSEM tiles 90% of such pieces were under half an upright rod's area.
OFF_SITE_MIN_RODS = 0.5


@dataclass
class WireClasses:
    """One class per object, in label order (`ids`), and what the array looked like."""

    ids: np.ndarray  # the objects' labels, ascending
    classes: list[str]  # "nanowire" or "parasitic"; "object" for all when no array was found
    array_found: bool
    crystal: np.ndarray | None = None  # per object, its crystal by the gap grouping (0, 1, ...); -1 for wires
    direction_deg: float | None = None  # the array's rod direction
    rod_length_px: float | None = None  # the typical upright rod: major axis of the fitted ellipse
    rod_width_px: float | None = None  # minor axis
    counts: dict[str, int] = field(default_factory=dict)
    wire_yield: float | None = None  # nanowires / all objects: the growth yield when every object is one array site
    note: str = ""
    labels: np.ndarray | None = None  # the label image `ids` refer to: the input with upright rods cut free
    sites: ArraySites | None = None  # the array's lattice sites, when the wires stand on one

    def describe(self) -> str:
        if not self.array_found:
            return f"no nanowire array found: {self.note}"
        return (f"{self.counts.get('nanowire', 0)} nanowires and {self.counts.get('parasitic', 0)} parasitic crystals "
                f"(yield {self.wire_yield:.0%}); rods at {self.direction_deg:.0f} degrees, about "
                f"{self.rod_length_px:.0f} x {self.rod_width_px:.0f} px"
                + (f"; {self.sites.describe()}" if self.sites is not None else ""))


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
    table = _object_table(np.asarray(labels))
    ids, area, length, width, angle = table["label"], table["area"], table["length"], table["width"], table["angle"]
    n = len(ids)
    elongated = length / width >= ELONGATED_ASPECT

    def no_array(why: str) -> WireClasses:
        return WireClasses(ids, ["object"] * n, False, counts={"object": n}, note=why, labels=np.asarray(labels))

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
    if rod_length > ROD_MAX_FIELD * min(np.shape(labels)):
        return no_array(f"the aligned rods are {rod_length:.0f} px long, over {ROD_MAX_FIELD:g} of the field: fibres "
                        f"or wires that cross it, not an array's upright wires")
    wire = _like_the_rod(length, width, angle, direction, rod_length, rod_width)
    wire_area = float(area[wire].sum() / area.sum())
    if wire_area < MIN_WIRE_AREA_SHARE:
        return no_array(f"{int(wire.sum())} rods of one direction and size cover {wire_area:.1%} of the segmented area "
                        f"(an array's wires cover at least {MIN_WIRE_AREA_SHARE:.0%}): fragments, not an array")
    labels, changed = cut_rods(np.asarray(labels), ids[~wire], direction, rod_length, rod_width)
    n_cut = int(labels.max() - ids.max())
    if n_cut:  # measure again only the objects the cuts changed
        kept = ~np.isin(ids, changed)
        new = _object_table(np.where(np.isin(labels, changed), labels, 0))
        table = {k: np.concatenate([table[k][kept], new[k]]) for k in table}
        order = np.argsort(table["label"])
        table = {k: v[order] for k, v in table.items()}
        ids, area, length, width, angle = (table[k] for k in ("label", "area", "length", "width", "angle"))
        n = len(ids)
        wire = _like_the_rod(length, width, angle, direction, rod_length, rod_width)
    classes = ["nanowire" if w else "parasitic" for w in wire]
    crystal = crystals(np.asarray(labels), ids, ~wire, int(round(CRYSTAL_GAP_RODS * rod_width)))
    n_wire, n_crystal = int(wire.sum()), int(crystal.max()) + 1
    note = f"{int(aligned.sum())} aligned rods define the array; " + (f"{n_cut} cut free from what they touched; "
                                                                       if n_cut else "")
    # Which end is the foot: the crystals grew on the sites, so the lattice through the feet is the one whose free sites
    # the parasitic pieces cover (the tops' lattice is the same, shifted by a wire's length, off the crystals). The
    # bottom end on screen, as tilted views are shown, unless the other covers more.
    sites = None
    if wire.sum() >= MIN_ARRAY_RODS:
        pieces = np.isin(labels, ids[~wire])  # the parasitic pixels, and how far each pixel is from one
        distance = ndimage.distance_transform_edt(~pieces)
        for end in (1, -1):
            feet = wire_feet(table, wire, direction, end)
            lattice = fit_lattice(feet)
            if lattice is not None:
                found = array_sites(labels, table, wire, feet, crystal, lattice,
                                    np.pi / 4 * rod_length * rod_width, pieces, distance)
                if sites is None or found.parasitic_on_site > sites.parasitic_on_site:
                    sites = found
    if sites is not None:
        n_crystal = sites.parasitic
        note += sites.describe()
    else:
        note += f"{n - n_wire} parasitic pieces make {n_crystal} crystals"
    return WireClasses(ids, classes, True, crystal, direction, rod_length, rod_width,
                       counts={"nanowire": n_wire, "parasitic": n_crystal}, wire_yield=n_wire / (n_wire + n_crystal),
                       note=note, labels=labels, sites=sites)


@dataclass
class ArraySites:
    """What grew on the sites of a patterned array: each site holds one nanowire, one parasitic crystal, or nothing."""

    lattice: Lattice
    sites: int  # sites whose position lies in the field
    nanowire: int  # of those, sites with a nanowire's foot
    parasitic_on_site: int  # sites without one that parasitic pieces reach (within SITE_REACH of the spacing)
    parasitic_off_site: int  # parasitic crystals that reach no site of the field

    @property
    def parasitic(self) -> int:
        return self.parasitic_on_site + self.parasitic_off_site

    @property
    def empty(self) -> int:
        return self.sites - self.nanowire - self.parasitic_on_site

    def describe(self) -> str:
        return (f"a lattice of {self.sites} sites {self.lattice.spacing_px:.0f} px apart: {self.nanowire} with a "
                f"nanowire, {self.parasitic_on_site} with a parasitic crystal, {self.empty} empty; parasitic "
                f"crystals off the sites: {self.parasitic_off_site}")


def wire_feet(table: dict, wire: np.ndarray, direction: float, end: int = 1) -> np.ndarray:
    """(x, y) of one end of each wire: with end=1 the end nearer the bottom of the screen (for a level array, the
    left one), where a tilted view, shown with the tilt axis level, puts the feet; end=-1 the other."""
    a = np.radians(direction)
    down = np.array([np.cos(a), -np.sin(a)])
    if down[1] < 0 or (down[1] == 0 and down[0] > 0):
        down = -down
    return table["centre"][wire] + end * down * table["length"][wire, None] / 2


def array_sites(labels: np.ndarray, table: dict, wire: np.ndarray, feet: np.ndarray, crystal: np.ndarray,
                lattice: Lattice, rod_area: float, pieces: np.ndarray, distance: np.ndarray) -> ArraySites:
    """What each site of the array's lattice (maemi.measure.lattice, fitted to the nanowires' feet) holds.

    A crystal that grew on a site is counted once however many pieces its facets were segmented into, and two crystals
    on neighbouring sites are two even where they touch: an expert counts crystals by the sites they grew on. Parasitic
    pieces that reach no site at all (a wire that fell off its site, a crystal whose site lies outside the field) count
    by their `crystal` groups when they hold at least OFF_SITE_MIN_RODS of a wire's area."""
    ids, area = table["label"], table["area"]
    height, width = labels.shape
    in_field = {tuple(s) for s in lattice.sites_within(width, height).tolist()}
    wire_sites = in_field & {tuple(s) for s in lattice.nearest_site(feet).tolist()}
    free = np.array(sorted(in_field - wire_sites), int).reshape(-1, 2)
    reach = SITE_REACH * lattice.spacing_px
    if not pieces.any():
        return ArraySites(lattice, len(in_field), len(wire_sites), 0, 0)

    def at(sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xy = np.round(lattice.position(sites)).astype(int)
        return np.clip(xy[:, 1], 0, height - 1), np.clip(xy[:, 0], 0, width - 1)

    occupied = int((distance[at(free)] <= reach).sum()) if len(free) else 0
    # the crystals none of whose pieces comes within reach of any site of the field
    near_site = np.zeros(labels.shape, bool)
    near_site[at(np.array(sorted(in_field), int).reshape(-1, 2))] = True
    near_site = ndimage.distance_transform_edt(~near_site) <= reach
    group = np.full(int(labels.max()) + 1, -1)
    group[ids] = crystal
    touching = np.unique(group[labels[near_site & pieces]])
    group_area = np.bincount(crystal[~wire], weights=area[~wire], minlength=int(crystal.max()) + 1)
    off_site = set(crystal[~wire].tolist()) - set(touching.tolist())
    orphans = int(sum(group_area[g] >= OFF_SITE_MIN_RODS * rod_area for g in off_site))
    return ArraySites(lattice, len(in_field), len(wire_sites), occupied, orphans)


def _object_table(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per object of `labels`, in label order: label, area, centre (x, y), length and width (major and minor axis of
    the fitted ellipse) and angle (degrees counter-clockwise from horizontal on screen)."""
    m = ellipse_moments(labels)
    return {"label": m.ids, "area": m.area,
            "centre": m.centroids[:, ::-1].reshape(-1, 2),
            "length": m.major,
            "width": np.maximum(m.minor, 1.0),
            # regionprops' orientation: from the row axis (down) to the major axis, counter-clockwise in (row,
            # column) coordinates, which is counter-clockwise on screen too; the row axis is 90 degrees on screen
            "angle": (90.0 + np.degrees(m.orientation)) % 180.0}


def _like_the_rod(length, width, angle, direction, rod_length, rod_width) -> np.ndarray:
    """Per object: elongated, aligned with the array and of the typical rod's length and width within the factors."""
    return ((length / width >= ELONGATED_ASPECT) & (axial_difference(angle, direction) <= ALIGN_TOLERANCE_DEG)
            & (length <= rod_length * LENGTH_FACTOR) & (length >= rod_length / LENGTH_FACTOR)
            & (width <= rod_width * WIDTH_FACTOR) & (width >= rod_width / WIDTH_FACTOR))


def line_footprint(length: int, deg: float) -> np.ndarray:
    """A one-pixel line `length` pixels long through the centre of an odd-sized footprint, at `deg` degrees
    counter-clockwise from horizontal on screen."""
    a = np.radians(deg)
    half = (length - 1) / 2
    dr, dc = -np.sin(a) * half, np.cos(a) * half
    r0, c0 = int(np.ceil(abs(dr))), int(np.ceil(abs(dc)))
    footprint = np.zeros((2 * r0 + 1, 2 * c0 + 1), bool)
    rr, cc = draw_line(int(round(r0 - dr)), int(round(c0 - dc)), int(round(r0 + dr)), int(round(c0 + dc)))
    footprint[rr, cc] = True
    return footprint


def cut_rods(labels: np.ndarray, ids: np.ndarray, direction: float, rod_length: float,
             rod_width: float) -> tuple[np.ndarray, list[int]]:
    """`labels` with the upright rods cut out of the objects `ids` they were segmented together with (a wire standing
    on a lying one, or touching a crystal at its foot), each rod a new label after the existing ones; and the labels
    that changed (the objects cut and the rods).

    A morphological opening with a line along the array's direction, as long as the shortest wire, keeps only what
    an upright wire could be; a part it keeps is cut free when it is the typical rod and it touches the rest of its
    object along at most MAX_ROD_CONTACT of its outline (a wire touches what it stands on at one place; a round
    crystal's middle, which the opening also keeps, is surrounded by the rest of it). What the opening trims off a
    rod's outline (pieces reaching less than half a rod's width from it) stays with the rod."""
    out = labels.copy()
    footprint = line_footprint(max(3, int(round(rod_length / LENGTH_FACTOR)) | 1), direction)
    across = line_footprint(max(3, int(round(rod_width)) | 1), direction + 90.0)
    sliver_reach = rod_width / 2
    slices = ndimage.find_objects(labels)
    next_id = int(labels.max()) + 1
    changed: list[int] = []
    for k in ids:
        if k > len(slices) or slices[k - 1] is None:
            continue
        rows, cols = slices[k - 1]
        mask = labels[rows, cols] == k
        parts, n_parts = ndimage.label(ndimage.binary_opening(mask, structure=footprint))
        if n_parts == 0:
            continue
        # the opening also trims a rod's ragged sides; grow each part back across the rod, within the object
        restored = np.zeros_like(parts)
        for j in range(1, n_parts + 1):
            restored[(restored == 0) & ndimage.binary_dilation(parts == j, structure=across) & mask] = j
        table = _object_table(restored)
        rod = _like_the_rod(table["length"], table["width"], table["angle"], direction, rod_length, rod_width)
        if not rod.any():
            continue
        parts = restored
        rods = np.isin(parts, table["label"][rod])
        rest, n_rest = ndimage.label(mask & ~rods)
        if n_rest == 0:
            continue
        reach = ndimage.maximum(ndimage.distance_transform_edt(~rods), rest, np.arange(1, n_rest + 1))
        big = np.flatnonzero(np.asarray(reach) >= sliver_reach) + 1
        if big.size == 0:
            continue  # the object is one rod with a ragged outline: nothing to cut
        pieces = np.isin(rest, big)
        view = out[rows, cols]
        for j in table["label"][rod]:
            this = parts == j
            ring = ndimage.binary_dilation(this) & ~this
            if (ring & pieces).sum() > MAX_ROD_CONTACT * ring.sum():
                continue
            # the rod and the slivers the opening trimmed off it (those that touch it)
            grown = ndimage.binary_dilation(this) & mask & ~pieces
            view[this | grown] = next_id
            changed += [int(k), next_id]
            next_id += 1
    return out, sorted(set(changed))


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
