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


def find_vacuum(smooth: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The vacuum beyond a support film (beyond half its height above the film's level), what to fill (the vacuum and
    its blurred edge: the pixels within EMPTY_RIM_PX of it on its side of the film's level, a faint outline of every
    hole otherwise, which the learned segmenter counted on a lace) and the film's level measured without the vacuum,
    each [H, W]; None where there is no vacuum (_vacuum, looked for at a resolution of EMPTY_TEST_SIDE)."""
    factor = min(max(1, min(smooth.shape) // EMPTY_TEST_SIDE), EMPTY_TEST_MAX_BLOCK)
    found = _vacuum(_block_mean(smooth, factor), MIN_OBJECT_AREA_PX / factor**2)
    if found is None:
        return None
    level, height = found
    toward = np.sign(height)  # the vacuum's side of the film's level
    above = (smooth - resize(level, smooth.shape, order=1, mode="edge")) * toward
    empty = remove_small_objects(above > abs(height) / 2, max_size=MIN_OBJECT_AREA_PX - 1)
    level = _film_level(smooth, empty)
    fill = ndimage.binary_dilation(empty, iterations=EMPTY_RIM_PX) & ((smooth - level) * toward > 0)
    return empty, fill, level


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


