"""What of the field holds no specimen, found before the objects are: the vacuum beyond a support film, and the dark
beyond the edge of a TEM's illumination (or an image's black padding). Both are filled with the film's level before
any segmenter runs, and left out of the analysed area (Segmentation.empty; Measurements.empty_fraction and
unlit_fraction say how much). Hand-written: no library finds either; each test is a piece of the physics below.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import convex_hull_image, remove_small_objects
from skimage.transform import resize

from maemi.measure.measurements import MIN_OBJECT_AREA_PX, SEPARATION_MIN, _block_mean, _phase_distance

# Vacuum beyond the support (find_vacuum). TEM and STEM particles lie on a film (carbon, silica, alumina) that is
# holey or lacey or ends in the field, so the image has three phases: the particles, the film, and the vacuum beyond
# it, at the far end of the grey range from the particles (brightest in bright field, darkest in dark field). One
# threshold splits the vacuum from the film, and the holes were counted as the objects: 6-21 for 60-80 particles on
# rendered holey and lacey films, some at a phase separation that was trusted. The vacuum is left out (filled with the
# film's level and the vacuum's own pixel noise, for every segmenter) where one phase of Otsu's threshold (on the
# image less its least-squares plane), taken again relative to the film's local level, is large pieces (EMPTY_SCALE
# times the objects', area-weighted medians) beyond a film that itself covers EMPTY_SUPPORT_SHARE of the field in
# pieces as large and splits again into film and objects SEPARATION_MIN apart at the far end of the grey range, and
# where the vacuum's edge is a step: the median gradient on it EMPTY_STEP times the film's own (noise and texture) (or
# where the vacuum is flat, below). On 72 rendered films with vacuum (holes over a quarter or half of the field, or a
# lace) and 24 of the tests' the step is 3.9-11.8 (one low-contrast film under a slope, 1.6, is missed), on laces
# whose vacuum stands only 0.08-0.12 above the film 2.7-3.9; where a slope of illumination across a film with no
# vacuum is split by the threshold, 1.35-1.75. docs/measurement.md has what it changes. Not told apart: large objects
# beside small specks of the opposite contrast on a background between (the specks would be taken for the particles
# and the objects for vacuum); where a particle hangs over the vacuum, its part on the vacuum's side of the film's
# level goes with the vacuum.
EMPTY_SUPPORT_SHARE = 0.1
EMPTY_SCALE = 10.0
EMPTY_STEP = 2.5
# ... or where the vacuum is flat: its level this many of its own spreads (1.48 MADs) from the film's (_flatness). A
# support whose edge tapers over tens of pixels (bright-field TEM of flakes over vacuum) makes no step, but nothing
# lies in the vacuum beyond it: ../shared/data/stem-particles' PtC1, 11.5 (its step 0.9); rendered flakes tapering
# over 6-15 px 4-27; one side of a slope, a soft step, a bowl or a vignetting of illumination across a film with no
# vacuum (75 renders) 4.3 at most (benchmarks/results/segmenter_runs.md, "A vacuum beyond a tapered support").
EMPTY_FLAT = 8.0
# ... and never where it is not at least this flat: a vignetting of illumination with little noise and a scratched
# steel surface (NEU-DET scratches_67) pass the step test at a flatness of 2.4-2.9, and lost 37-53% of the field as
# vacuum (23 of 72 renders: 2-51 of 60 particles counted); the tests' holey and lacey films measure 5.3 at the least.
EMPTY_FLAT_MIN = 4.0
EMPTY_RIM_PX = 2  # the vacuum's blurred edge, filled with it on its side of the film's level
EMPTY_TEST_SIDE = 256  # the vacuum is looked for on block means to about this short side (most images have none)
EMPTY_TEST_MAX_BLOCK = 4  # ... of at most 4x4 pixels: a lace of thin strands in a large image stays resolved
FILL_MIN_WEIGHT = 0.05  # the vacuum's level is the film's nearby where this share of the reach is film
# The dark beyond the illumination's edge (find_unlit). A conventional TEM's beam is a disc: where it does not fill
# the camera, the corners (or a side) receive no electrons and are dark and featureless; so is the black padding of
# an image rotated or stitched. One threshold took that dark for the objects of a bright-field image: rendered fields
# of 60 dark particles with 6% of the frame beyond the beam's edge were counted as 3-4 objects at a trusted phase
# separation (7.4), and with 1% beyond it the corners were 3-4 extra objects. It is left out where pieces darker than
# UNLIT_DARK of the way from the darkest level to the median touch the frame; each lies (UNLIT_OUTSIDE of it) outside
# the convex hull of the rest (the lit field, a disc or a rectangle cut by the frame, is convex; a pore, particle or
# hole cut by the frame is a notch the hull covers), along a smooth edge (what of it lies inside the hull, over the
# length of its edge, at most UNLIT_EDGE_DEPTH px at the test's resolution), and is black (its median within
# UNLIT_BLACK of the way); nothing in the field is that black (no piece of MIN_OBJECT_AREA_PX: the darkest particle
# of a bright-field image still lets electrons through); the dark is flat (EMPTY_FLAT of its own spreads below the
# field's level); at least UNLIT_MAX_SHARE of the frame is lit, and the lit field spans it (two opposite sides: one
# large object on a black background need not). What is filled reaches down a soft edge's ramp to UNLIT_RAMP of the
# dark's depth (a 20-px ramp left arcs that were counted). Rendered beam edges and rotated frames: outside 0.91-0.99,
# edge depth 0.29-0.43. Of the real images here (../shared/data: 33 STEM, 90 nanowire tiles, the 15 whole nanowire
# images, all 1,800 of NEU-DET) and 400 of the built-in corpus none passes; with the outside and darkness tests alone
# six did: a dark-field vacuum beyond a ragged support (Ru1: edge depth 5.9), a faint dark arc in a STEM image's
# corner (PtW5, 0.5%), steel surfaces with a dark band or patch at the frame (NEU-DET scratches_129: edge depth 0.98;
# patches_49, whose patch is not black; two more).
UNLIT_DARK = 0.25
UNLIT_BLACK = 0.1
UNLIT_RAMP = 0.1
UNLIT_OUTSIDE = 0.9
UNLIT_EDGE_DEPTH = 0.75
UNLIT_MAX_SHARE = 0.5
# Black at the frame that neither test took (black_at_frame): in dark-field STEM the vacuum beyond a support scatters
# nothing and is black, but find_vacuum needs the support and its particles split by one threshold, which a textured
# support's are not. Black (UNLIT_BLACK of the way from the darkest level to the median) pieces at the frame, each at
# least BLACK_MIN_SHARE of it after an opening of 2 px at the test's resolution: 17 of the 33 real STEM images hold
# 5-36% of such black and none of their 5,341 expert boxes lies in it; 2 of NEU-DET's 1,800 steel surfaces do too
# (dark patches, 5-7%), and no cue tried tells those from a vacuum (skewness, flatness, the level, the gap to the
# support's darkest). So it is reported (Measurements.black_fraction, a field note), not left out.
BLACK_MIN_SHARE = 0.05


def find_vacuum(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The vacuum beyond a support film (beyond half its height above the film's level), what to fill (the vacuum and
    its blurred edge: the pixels within EMPTY_RIM_PX of it on its side of the film's level, a faint outline of every
    hole otherwise, which the learned segmenter counted on a lace) and the film's level measured without the vacuum,
    each [H, W]; None where there is no vacuum (_vacuum, looked for at a resolution of EMPTY_TEST_SIDE)."""
    factor = _test_factor(smooth)
    found = _vacuum(_block_mean(smooth, factor), MIN_OBJECT_AREA_PX / factor**2)
    if found is None:
        return None
    level, height = found
    return _left_out(smooth, level, height)


def black_at_frame(smooth: np.ndarray) -> np.ndarray:
    """[H, W] bool: large black pieces at the frame (BLACK_MIN_SHARE), looked for as the vacuum is."""
    factor = _test_factor(smooth)
    small = _block_mean(smooth, factor)
    darkest, middle = float(small.min()), float(np.median(small))
    black = ndimage.binary_opening(small < darkest + UNLIT_BLACK * (middle - darkest), iterations=2)
    pieces, _ = ndimage.label(black)
    area = np.bincount(pieces.ravel())
    on_frame = _on_frame(pieces)
    large = on_frame[area[on_frame] >= BLACK_MIN_SHARE * small.size]
    if large.size == 0:  # most images: no resizing back
        return np.zeros(smooth.shape, bool)
    return resize(np.isin(pieces, large).astype(np.float32), smooth.shape, order=0, mode="edge") > 0.5


def find_unlit(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The dark beyond the edge of the illumination (or an image's black padding), what to fill and the field's level
    without it, each [H, W], as find_vacuum; None where there is none (_unlit, looked for as the vacuum is)."""
    factor = _test_factor(smooth)
    found = _unlit(_block_mean(smooth, factor), MIN_OBJECT_AREA_PX / factor**2)
    if found is None:
        return None
    level, height, unlit = found
    near = resize(unlit.astype(np.float32), smooth.shape, order=0, mode="edge") > 0.5
    return _left_out(smooth, level, height, near=near)


def _on_frame(pieces: np.ndarray) -> np.ndarray:
    """The labels of a label image's pieces that touch its frame."""
    labels = np.unique(np.concatenate([pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]]))
    return labels[labels > 0]


def _test_factor(smooth: np.ndarray) -> int:
    return min(max(1, min(smooth.shape) // EMPTY_TEST_SIDE), EMPTY_TEST_MAX_BLOCK)


def _left_out(smooth: np.ndarray, level: np.ndarray, height: float, near: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Found at low resolution (the field's `level` there, the empty space `height` above it), at full resolution:
    what lies beyond half the height, what to fill (it and its blurred edge: the pixels within EMPTY_RIM_PX of it on
    its side of the level, a faint outline of every hole otherwise, which the learned segmenter counted on a lace)
    and the level measured without it. With `near` (the dark beyond the illumination): only the pieces that meet
    it, and the fill reaches down the whole ramp of a soft edge (UNLIT_RAMP)."""
    toward = np.sign(height)  # the empty space's side of the field's level
    above = (smooth - resize(level, smooth.shape, order=1, mode="edge")) * toward
    empty = remove_small_objects(above > abs(height) / 2, max_size=MIN_OBJECT_AREA_PX - 1)
    edge = empty
    if near is not None:
        empty = _meeting(empty, near)
        edge = _meeting(above > UNLIT_RAMP * abs(height), empty)
    level = _film_level(smooth, empty)
    fill = ndimage.binary_dilation(edge, iterations=EMPTY_RIM_PX) & ((smooth - level) * toward > 0)
    return empty, fill, level


def _meeting(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The pieces of `mask` that meet `seed`."""
    pieces = ndimage.label(mask)[0]
    return np.isin(pieces, np.unique(pieces[seed & mask]))


def _unlit(smooth: np.ndarray, min_area: float) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Whether dark pieces touching the frame lie beyond a convex lit field and hold no signal (UNLIT_DARK): then
    the field's level ([H, W] at this resolution), the dark's height below it, and the dark ([H, W] bool); else
    None. `min_area`: the least area of a piece at this resolution."""
    darkest, middle = float(smooth.min()), float(np.median(smooth))
    if middle <= darkest:
        return None
    pieces, count = ndimage.label(smooth < darkest + UNLIT_DARK * (middle - darkest))
    on_frame = _on_frame(pieces)
    dark = np.isin(pieces, on_frame)
    if on_frame.size == 0 or dark.mean() > UNLIT_MAX_SHARE:
        return None
    black = darkest + UNLIT_BLACK * (middle - darkest)
    if remove_small_objects(~dark & (smooth < black), max_size=max(int(min_area), 1) - 1).any():
        return None  # something in the field is as dark: the dark at the frame may be more of it
    area = np.bincount(pieces.ravel(), minlength=count + 1)
    rest, _ = ndimage.label(~dark)
    lit = rest == np.argmax(np.bincount(rest.ravel())[1:]) + 1  # specks of noise in the dark are not the field
    if not ((lit[0].any() and lit[-1].any()) or (lit[:, 0].any() and lit[:, -1].any())):
        return None  # a beam spread over the camera spans it; one large object on a black background need not
    hull = convex_hull_image(lit)
    outside = np.bincount(pieces[~hull], minlength=count + 1)
    edge = np.bincount(pieces[ndimage.binary_dilation(~dark)], minlength=count + 1)
    kept = [p for p in on_frame if area[p] >= min_area and outside[p] >= UNLIT_OUTSIDE * area[p]
            and area[p] - outside[p] <= UNLIT_EDGE_DEPTH * edge[p] and np.median(smooth[pieces == p]) < black]
    if not kept:
        return None
    unlit = np.isin(pieces, kept)
    level = _film_level(smooth, unlit)
    if _flatness(smooth, unlit, lit) < EMPTY_FLAT:
        return None
    return level, float(np.median((smooth - level)[unlit])), unlit


def _vacuum(smooth: np.ndarray, min_area: float) -> tuple[np.ndarray, float] | None:
    """Whether one of the two phases of Otsu's threshold is vacuum beyond a film (EMPTY_SCALE): then the film's level
    (_film_level, [H, W] at this resolution) and the vacuum's height above it (negative when darker); else None.

    Otsu's threshold is taken on the image less its least-squares plane (a slope of illumination steeper than the
    vacuum's step splits the field along the slope), and a phase again as what lies beyond half its median height
    above the film's level measured without it, so that what is left of the slope does not move the vacuum's edge.
    It is vacuum where the rest, less the film's level, splits again (Otsu on its pixels alone) into the film and,
    at the far end of the grey range from the vacuum, objects SEPARATION_MIN from it covering less than the film;
    where both the vacuum and the film lie in pieces EMPTY_SCALE times larger than the objects' (_piece_scale): the
    film is a sheet or a lace, the vacuum its holes, the particles small islands on it; and where the vacuum's edge
    is a step (_step) or the vacuum is flat (_flatness), and it is never less flat than EMPTY_FLAT_MIN. `min_area`:
    the least area of a piece at this resolution."""
    if smooth.max() <= smooth.min():
        return None
    levelled = smooth - _plane(smooth)  # a slope of illumination across the field would split the film
    low = levelled <= threshold_otsu(levelled)
    for first, bright in ((low, False), (~low, True)):
        if (np.count_nonzero(~first) < EMPTY_SUPPORT_SHARE * first.size  # cheap tests first: most images have none
                or _piece_scale(first, min_area) < EMPTY_SCALE * min_area):
            continue
        level = _film_level(smooth, first)
        flat = smooth - level
        height = float(np.median(flat[first]))
        empty = flat > height / 2 if bright else flat < height / 2
        empty_scale = _piece_scale(empty, min_area)
        if empty_scale < EMPTY_SCALE * min_area or np.count_nonzero(~empty) < EMPTY_SUPPORT_SHARE * empty.size:
            continue
        rest = flat[~empty]
        if rest.max() <= rest.min():
            continue
        cut = threshold_otsu(rest)
        objects = ~empty & ((flat <= cut) if bright else (flat > cut))
        film = ~empty & ~objects
        if not objects.any() or np.count_nonzero(objects) > np.count_nonzero(film):
            continue
        darker, brighter = (objects, film) if bright else (film, objects)
        if _phase_distance(flat[darker], flat[brighter]) < SEPARATION_MIN:
            continue
        objects_scale = _piece_scale(objects, min_area)
        if objects_scale == 0 or min(_piece_scale(film, min_area), empty_scale) < EMPTY_SCALE * objects_scale:
            continue
        flatness = _flatness(levelled, empty, film)
        if flatness < EMPTY_FLAT_MIN or (flatness < EMPTY_FLAT and _step(smooth, empty, film) < EMPTY_STEP):
            continue
        return level, height
    return None


def _plane(image: np.ndarray) -> np.ndarray:
    """The least-squares plane through the image: a slope of illumination, without following the vacuum's holes as a
    median background does where they are as large as its window."""
    rows, cols = np.indices(image.shape, dtype=np.float32)
    design = np.stack([np.ones(image.size, np.float32), rows.ravel(), cols.ravel()], axis=1)  # [H W, 3]
    coefficients = np.linalg.lstsq(design[::7], image.ravel()[::7], rcond=None)[0]
    return (design @ coefficients).reshape(image.shape)


def _step(smooth: np.ndarray, empty: np.ndarray, film: np.ndarray) -> float:
    """How sharply the grey level changes where the vacuum meets the film: the median gradient on the vacuum's edge
    over that inside the film (its noise and texture)."""
    gradient = np.hypot(ndimage.sobel(smooth, 0), ndimage.sobel(smooth, 1))
    edge = empty & ~ndimage.binary_erosion(empty)
    inside = ndimage.binary_erosion(film, iterations=2)
    if not edge.any() or not inside.any():
        return 0.0
    return float(np.median(gradient[edge]) / max(float(np.median(gradient[inside])), 1e-9))


def _flatness(levelled: np.ndarray, empty: np.ndarray, film: np.ndarray) -> float:
    """How flat the vacuum is beside the film: the difference of their median grey levels (inside each, 2 px from
    its edge) over the vacuum's own spread (1.48 median absolute deviations: the support's tapering edge, which
    the vacuum's outer part holds, is left out). Nothing lies in a vacuum, so it is as flat as its noise; one side of
    a slope of illumination is not."""
    vacuum, inside = ndimage.binary_erosion(empty, iterations=2), ndimage.binary_erosion(film, iterations=2)
    if not vacuum.any() or not inside.any():
        return 0.0
    levels = levelled[vacuum]
    middle = float(np.median(levels))
    spread = 1.4826 * float(np.median(np.abs(levels - middle)))
    return abs(middle - float(np.median(levelled[inside]))) / max(spread, 1e-9)


def _piece_scale(phase: np.ndarray, min_area: float) -> float:
    """A phase's typical piece area: the area-weighted median over its pieces of `min_area` or more (the size of
    the piece a pixel of the phase typically lies in); 0 with none."""
    area = np.bincount(ndimage.label(phase)[0].ravel())[1:]
    area = np.sort(area[area >= min_area]).astype(float)
    if area.size == 0:
        return 0.0
    cumulative = np.cumsum(area)
    return float(area[np.searchsorted(cumulative, cumulative[-1] / 2)])


def _film_level(smooth: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """The level of the film (with its particles) everywhere, the vacuum left out: a normalised convolution over a
    sixteenth of the short side at low resolution (as _background), and beyond its reach (the middle of a large hole)
    the level at the nearest place within it."""
    factor = max(1, min(smooth.shape) // 64)
    keep = (~empty).astype(np.float32)
    small, weight = _block_mean(smooth * keep, factor), _block_mean(keep, factor)
    reach = min(small.shape) / 16
    weight = ndimage.gaussian_filter(weight, reach, mode="reflect")
    level = ndimage.gaussian_filter(small, reach, mode="reflect") / np.maximum(weight, 1e-6)
    far = weight < FILL_MIN_WEIGHT
    if far.all():
        return np.full(smooth.shape, float(np.median(smooth[~empty])), np.float32)
    if far.any():
        nearest = ndimage.distance_transform_edt(far, return_distances=False, return_indices=True)
        level = level[tuple(nearest)]
    return resize(level, smooth.shape, order=1, mode="edge").astype(np.float32)


