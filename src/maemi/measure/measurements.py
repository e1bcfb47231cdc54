"""What a micrograph really shows, measured with scikit-image: the facts the offline teacher speaks from.

Segmentation follows the usual particle-analysis recipe: Gaussian denoising, background flattening (a coarse median
of the image), Otsu's threshold (Otsu, IEEE SMC 9, 1979) kept clear of the background's noise, removal of specks, a
distance-transform watershed that splits touching objects (Beucher & Meyer 1993; the scikit-image "watershed
segmentation" example; maemi.measure.touching), and Rose's visibility criterion against each object's surroundings.
Then:
- spacing: nearest-neighbour distances and the Clark-Evans ratio R (Clark & Evans, Ecology 35, 1954);
- texture: grey-level co-occurrence contrast and homogeneity (Haralick et al., IEEE SMC 3, 1973); Canny edge density;
- orientation: the structure tensor; coherence (l1 - l2) / (l1 + l2) (Bigun & Granlund, ICCV 1987).
All sizes are in pixels; `to_nm` converts when the scale is known. Deterministic: no random state anywhere.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import edt
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, cKDTree
from skimage.feature import canny, graycomatrix, graycoprops, structure_tensor
from skimage.filters import threshold_otsu
from skimage.measure import label, regionprops_table
from skimage.morphology import remove_small_holes, remove_small_objects, skeletonize
from skimage.segmentation import relabel_sequential
from skimage.transform import resize

from maemi.measure.moments import EllipseMoments, ellipse_moments
from maemi.measure.size_distribution import frame_extents, size_distribution
from maemi.measure.wires import MIN_ARRAY_RODS, classify_wires

if TYPE_CHECKING:
    from maemi.measure.fibres import FibreMeasurements  # fibres imports this module

MIN_OBJECT_AREA_PX = 20  # smaller bright specks are noise at the resolutions we see (smallest real object ~50 px)
ISOTROPIC_BELOW_COHERENCE = 0.15  # below this the image has no dominant orientation
GLCM_LEVELS = 32
TEXTURE_MAX_SIDE = 256  # co-occurrence texture on a downsampled copy: fast, and steady across image sizes
EDGE_MAX_SIDE = 512
HETEROGENEITY_GRID = 4  # tiles per side for the spatial spread of object size
# Wires and fibres: an array when at least a third of the objects are twice as long as wide (upright wires are about
# half an array's objects, fused pairs a few of a particle image's); fibres when objects 3 or more times as long as
# they are wide carry the foreground
WIRE_ASPECT = 2.0
ELONGATED_SHARE = 1 / 3
FIBRE_ASPECT = 3.0
# A pixel is foreground only where noise alone would almost never put it: this many standard deviations of the
# smoothed image's pixel noise from the background phase's median, which Gaussian noise crosses with probability 3e-6
# (a few pixels of a 4-megapixel image, never a 20-px speck: pure noise of 0.2 to 3 megapixels gives no object, where
# 3 and 3.5 gave up to 30 specks). Otsu's threshold sits between the phases' means, and on a very noisy image whose
# objects cover little of it, that is inside the background's noise, which then reads as a web of hundreds of objects.
NOISE_MARGIN = 4.5
SMOOTHING_NOISE_GAIN = 1 / (2 * math.sqrt(math.pi))  # white noise's standard deviation after a Gaussian of 1 px
# Rose's criterion (Rose, J. Opt. Soc. Am. 38, 1948): an object is visible when its mean differs from its surroundings'
# by this many standard errors of pixel noise; a speck that noise made passes the threshold but not this.
ROSE_SNR = 5.0
ROSE_RING_PX = 3  # the surroundings: a ring this wide around the object, outside every object
# An array's wires stand apart (each grows from its own site; they touch in projection in twos and threes), a mat's
# fibres lie on one another: the largest connected piece of an array's foreground holds a few per cent of it (31 real
# nanowire tiles: 2-5%; rendered arrays at 256 and 512 px: 2-16%), of a dense mat most of it (the rendered mat whose
# pieces, cut at the crossings, passed for an array's rods: 99%). Above this share the foreground is one network:
# not an array, and where it is a network of fibres, a mat even when one threshold separates it poorly (segment).
NETWORK_SHARE = 0.5
# Whether one threshold can separate objects from their background: the phases Otsu's threshold splits the flattened
# image into must lie apart by several of their own standard deviations (phase_separation). One Gaussian phase, pure
# noise split at its mean, gives 2.65; two Gaussian phases 4.5 apart overlap by 1.2% of each at the midpoint. Below
# SEPARATION_MIN counts and sizes from a threshold are not to be trusted. Chosen on the even-numbered halves of the real
# STEM images, the real nanowire tiles and a synthetic development corpus (benchmarks/results/phase_separation.md): the
# balanced accuracy of telling the images whose classical count is within 20% from the rest rises to 0.91 at 4.5 and
# by at most 0.02 beyond, where the share of good counts still trusted starts to fall (0.98 to 0.94 at 5). Synthetic
# sponges and tips were left out of the choice: their counts fail for other reasons (pores join into a network; a
# tip is one object), which no measure of the threshold can see.
SEPARATION_MIN = 4.5
SEPARATION_CAP = 100.0
# ... and whether what the threshold found are objects at all or the pieces of a textured background: like objects,
# even polydisperse ones (log-normal, CV 0.5), have an area-weighted mean diameter under twice their median; a
# threshold through a lumpy support gives a few regions hundreds of pixels across among many specks (real STEM
# images: 1.5-73, median 9; synthetic films 2.1-5.1; synthetic particles and powder 1.0-1.6, cells 1.0-1.1 but one at
# 2.5 whose threshold had cut it into 103 specks for 18 cells).
MIXTURE_SPREAD = 2.0
# Holes are filled in an object that is this convex once filled (area over its convex hull's) and covers at most this
# share of the field (_fill_rings): a ring-shaped particle's hole fills to a disk (solidity 0.95-0.99); a fibre mat's
# network and a sponge's matrix, whose holes are pores, are far from convex or fill the field.
RING_SOLIDITY = 0.9
RING_MAX_FIELD = 0.25
# One threshold sits where the phases' histogram puts it: at 35% of the contrast on a field of small particles, whose
# blurred edges fill the middle, so each edge is cut outside its middle (8 px particles 9% large under a 1 px blur, 6 px
# 17%). Compact objects' edges are moved to half their own contrast, within EDGE_BAND_PX of the threshold's outline,
# once everything that decides from the outlines (auto's choice, the wire and fibre tests) has read them
# (_edges_at_half_contrast). Measured in benchmarks/results/measure_sizes.md, both ways side by side.
EDGE_BAND_PX = 2
# The background measured again without the objects (_flatten): two passes, kept when the phases separate twice as
# well. Discs as large as the window: 2.7-3.4 -> 18-28 (six times); the 25 real STEM images that have a second
# background: 0.9-1.48 times (docs/measurement.md).
BACKGROUND_PASSES = 2
BACKGROUND_GAIN = 2.0
# ... and looked for only where the first leaves the image uncertain (below SEPARATION_MIN). Where one threshold already
# separates it, the first background's pull under a tight cluster of touching particles is what cuts the necks
# between them (tests/test_segmenter.py's cluster of seven: 8.3 -> 15.4 with the second, and one object, not seven).
BACKGROUND_RECHECK_BELOW = SEPARATION_MIN
# A traced network is fibres only when they are long and keep their width: fibres traced at least this many of their
# own diameters long on average, with the width along them varying by at most this coefficient of variation. Set
# between the two populations measured: fibre mats (synthetic fibres, lying wires, drawn lines) trace 8-76
# diameters at a CV of 0.1-0.41; the lumpy supports of 33 real STEM images, which are slender by area too, 2.4-8.8
# diameters at 0.44-2.0. Without this 28 of the 33 were reported as mats of 40 to 7,491 fibres; with it one was (PtC2,
# whose carbon film's speckle segments as a maze of 4-px worms). The length is now the mean over the fibres as the
# mask shows them, before stretches are joined across gaps (inferred, they would make a maze's worms look long), and
# not counting the specks dropped: rendered mats (32 scenes, measure_mats) 5.1-148 diameters at a CV of 0.17-0.55,
# the STEM supports even enough to be traced 1.7-7.8 at 0.44-1.3 (PtC2 4.9995: just under the bar, so none passes).
# Of 96 rendered STEM scenes and agglomerates (512 px), two passed with the length as the total over the count; none
# does now.
FIBRE_MIN_LENGTH_DIAMETERS = 5.0
FIBRE_MAX_WIDTH_CV = 0.6
# Tracing a lumpy support's maze takes seconds (18 s on a 2048x2048 STEM image), so fibre_mat first rejects a mask
# whose width along the untraced skeleton (junctions and ends included, which a mat's trace leaves out) varies by more
# than this: rendered mats 0.15-0.58 (32 scenes), the 33 STEM supports 0.57-1.70, those traced before this check
# (largest piece over half the foreground) 1.06-1.25. A speed gate: it changes no count measured.
FIBRE_MAX_SKELETON_WIDTH_CV = 0.8
# On a mat, the fibres counted are those traced at least FIBRE_MIN_LENGTH_DIAMETERS of the mat's mean diameter long:
# a dimmer, lower fibre crosses the threshold only in stretches, and each stretch traces as a fibre. On 16 rendered
# mats (maemi.measure.scenes, seeds 200-215) the count's median error falls from 1.33 to 0.17 (0.17 on the even seeds,
# which chose it, against 0.15 at 8 diameters, 0.17 at 12: alike; the existing constant kept), and on their true masks
# the tracing is nearly exact: the stretches are the error (benchmarks/results/segmenter_runs.md).


@dataclass
class Measurements:
    """Sizes in pixels; nm_per_pixel is set when the scale is known. JSON-serialisable with dataclasses.asdict."""

    width_px: int
    height_px: int
    nm_per_pixel: float | None
    brightness_mean: float  # on [0, 1] grey
    brightness_std: float
    foreground: str  # "bright" or "dark": which phase the objects are (the minority phase after thresholding)
    # The objects as an expert counts them: the segmented regions, except on a fibre mat (fibre_count set), where they
    # are the fibres traced through their crossings: a mat's regions are pieces of one network cut at its crossings
    # and narrow points (hundreds on a mat of twenty fibres), or its pores.
    object_count: int
    region_count: int  # the segmented regions (touching ones split): the rows of the per-object table and overlay
    area_fraction: float  # foreground (segmented objects) fraction of the analysed area (the field less empty space)
    diameter_mean_px: float  # equivalent diameter (of a disk of the same area)
    diameter_std_px: float
    diameter_min_px: float
    diameter_max_px: float
    # Wires, fibres and rods only (rod_like; None for round objects, whose size is their diameter: along the skeleton
    # of an irregular blob the distance to the edge is a fraction of its radius): the local thickness, twice the
    # distance from the centre line to the edge, and area / width, the length.
    width_mean_px: float | None
    length_mean_px: float | None
    circularity_mean: float  # 4 pi A / P^2, 1 for a disk
    aspect_ratio_mean: float  # major / minor axis of the fitted ellipse
    orientation_deg: float | None  # dominant orientation, 0-180 degrees counter-clockwise from horizontal
    orientation_coherence: float  # 0 isotropic .. 1 all structure in one direction
    nn_distance_mean_px: float | None  # mean nearest-neighbour distance between object centroids
    clark_evans_r: float | None  # R < 1 clustered, about 1 random, > 1 ordered
    glcm_contrast: float
    glcm_homogeneity: float
    edge_density: float  # fraction of pixels on Canny edges
    anisotropy: float  # energy-weighted local coherence: 1 when structures are locally line-like, whatever direction
    size_heterogeneity: float  # coefficient of variation of the mean object size over a grid of tiles
    # counted as an expert counts them, when the objects are elongated (None otherwise):
    fibre_count: int | None = None  # fibres traced through their crossings (maemi.measure.fibres)
    fibre_diameter_mean_px: float | None = None  # the counted fibres' diameters, length-weighted
    nanowire_count: int | None = None  # upright wires of a tilted array (maemi.measure.wires), when there is one
    parasitic_count: int | None = None  # the array's other objects: parasitic crystals, lying or fused wires
    array_site_count: int | None = None  # the sites of the array's lattice in the field, when its wires stand on one
    empty_site_count: int | None = None  # of those, the sites where nothing grew
    segmenter: str = "classical"  # what found the objects: "classical", "spots" or "learned" (never "auto")
    phase_separation: float = 100.0  # how far apart the thresholded phases lie, in their standard deviations
    objects_uncertain: bool = False  # phase_separation < SEPARATION_MIN: one threshold cannot separate the objects
    # The equivalent diameters' distribution as particle sizing reports it, over the objects wholly inside the frame,
    # each weighted for the frame's bias against large objects (maemi.measure.size_distribution); None without objects.
    diameter_d10_px: float | None = None
    diameter_d50_px: float | None = None
    diameter_d90_px: float | None = None
    diameter_geometric_mean_px: float | None = None  # the log-normal's median
    diameter_geometric_std: float | None = None  # the log-normal's spread, a factor (at least 1)
    edge_object_count: int = 0  # objects the image frame cuts: left out of the distribution above
    empty_fraction: float = 0.0  # the field's share of vacuum beyond the support (holes in its film), left out
    unlit_fraction: float = 0.0  # the field's share beyond the illumination's edge (dark, no signal), left out
    # objects per square micrometre of the analysed area (the field less what is left out, as area_fraction), when
    # the scale is known: on a support film, the particles' loading per area of the film. Counted by the unbiased
    # counting frame (_frame_count; the fibres of a mat as traced)
    number_density_per_um2: float | None = None
    # the share of the field in large black pieces at the frame that were not left out: in dark-field STEM, most
    # likely vacuum beyond the support that find_vacuum missed (maemi.measure.empty_space.black_at_frame); the area
    # fraction, number density and Clark-Evans ratio then count it as field
    black_fraction: float = 0.0
    # The share of pixels at the image's own darkest or brightest grey level: clipped or saturated by the detector or
    # its settings, where nothing can be seen (a dark-field vacuum set to black, a particle's core burnt to white).
    # At the extremes of the image rather than of 0 and 1: 16-bit and float images are stretched to their range.
    clipped_fraction: float = 0.0

    def to_nm(self, px: float) -> float | None:
        return None if self.nm_per_pixel is None else px * self.nm_per_pixel


def _as_grey(grey: np.ndarray) -> np.ndarray:
    grey = np.asarray(grey)
    if grey.ndim != 2:
        raise ValueError(f"measure() needs a 2-D grey image, got an array of shape {grey.shape}")
    if min(grey.shape) < 16:
        raise ValueError(f"image too small to measure: {grey.shape[1]}x{grey.shape[0]} pixels (need 16x16)")
    if np.issubdtype(grey.dtype, np.integer):
        return grey.astype(np.float32) / np.iinfo(grey.dtype).max
    grey = grey.astype(np.float32)
    if not np.isfinite(grey).all():
        raise ValueError("image contains NaN or infinite values")
    return np.clip(grey, 0.0, 1.0)


def _block_mean(image: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))  # [h/f, w/f]


def _background(image: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray | None:
    """Slowly varying illumination: a median over windows a quarter of the short side, computed at low resolution.

    A median ignores objects covering less than half of each window, where a Gaussian blur would be pulled up by them.
    With `exclude` (a mask of the objects), a weighted mean of the other pixels alone over the same reach (normalised
    convolution), leaving out the blocks that hold an excluded pixel, their neighbours (the objects' blurred edges)
    and the blocks they enclose (a ring's middle); None when under a fifth of the blocks are left.
    """
    factor = max(1, min(image.shape) // 64)
    small = _block_mean(image, factor)
    window = max(3, min(small.shape) // 4) | 1
    if exclude is None:
        background = ndimage.gaussian_filter(ndimage.median_filter(small, size=window, mode="reflect"), window / 4)
    else:
        touched = ndimage.binary_dilation(_block_mean(exclude.astype(np.float32), factor) > 0)
        touched = ndimage.binary_fill_holes(touched)
        keep = (~touched).astype(np.float32)
        if keep.mean() < 0.2:
            return None
        weight = ndimage.gaussian_filter(keep, window / 2, mode="reflect")
        background = ndimage.gaussian_filter(small * keep, window / 2, mode="reflect") / np.maximum(weight, 1e-6)
    return resize(background, image.shape, order=1, mode="edge").astype(np.float32)


def _flatten(smooth: np.ndarray) -> tuple[np.ndarray, float]:
    """The image less its background, and the phase separation of the result.

    Objects as large as the median's window (a few big particles at high magnification) pull the background up under
    them, so that they are flattened into rings and crescents: 15 well-separated discs 160 px across in a
    1024x768 field were counted as 19, 3 discs 360 px across as 6, and one threshold no longer separated the image
    (phase separation 2.7-3.4 instead of about 20). So the background is measured again with the objects the first
    one revealed left out (with their surroundings and what they enclose), twice, and kept where the phases then
    separate clearly and BACKGROUND_GAIN times as well as before: the first background had hidden objects. Where it
    separates them only a little better, the first is kept (docs/measurement.md: no real STEM image or nanowire tile
    is changed by it), and where the first already separates them clearly (BACKGROUND_RECHECK_BELOW) it is not
    looked for.
    """
    flat = smooth - _background(smooth)
    separation = phase_separation(flat)
    if separation >= BACKGROUND_RECHECK_BELOW:
        return flat, separation
    again = flat
    for _ in range(BACKGROUND_PASSES):
        sample = again[::2, ::2]  # a threshold for what to leave out needs no more pixels
        objects = again > (threshold_otsu(sample) if sample.max() > sample.min() else float(sample.max()))
        if objects.mean() > 0.5:  # the minority phase, as the classical segmentation takes it
            objects = ~objects
        background = _background(smooth, exclude=objects)
        if background is None:
            return flat, separation
        again = smooth - background
    separation_again = phase_separation(again)
    if separation_again >= max(SEPARATION_MIN, BACKGROUND_GAIN * separation):
        return again, separation_again
    return flat, separation


def distance_to_background(mask: np.ndarray) -> np.ndarray:
    """The Euclidean distance of each mask pixel to the nearest pixel outside the mask (0 there), float32; to the
    frame where nothing is outside. By edt (seung-lab), exact as scipy's distance_transform_edt and about 13x faster
    on a 1024x768 mask (scipy computes the whole feature transform): a quarter of a measurement's time before."""
    mask = np.ascontiguousarray(mask, dtype=bool)
    return edt.edt(mask, black_border=bool(mask.all()), parallel=1).astype(np.float32, copy=False)


def _orientation(flat: np.ndarray) -> tuple[float | None, float, float]:
    """Dominant orientation (degrees, screen convention), its global coherence, and the mean local coherence."""
    small = _block_mean(flat, max(1, max(flat.shape) // 512))
    a_rr, a_rc, a_cc = structure_tensor(small, sigma=2, order="rc")
    # global tensor: the dominant gradient direction over the whole image; structures run perpendicular to it
    rr, rc, cc = float(a_rr.mean()), float(a_rc.mean()), float(a_cc.mean())
    energy = rr + cc
    coherence = math.hypot(cc - rr, 2 * rc) / energy if energy > 0 else 0.0
    gradient_deg = math.degrees(0.5 * math.atan2(2 * rc, cc - rr))  # from +column towards +row (downwards)
    orientation = (90.0 - gradient_deg) % 180 if coherence >= ISOTROPIC_BELOW_COHERENCE else None
    local = np.hypot(a_cc - a_rr, 2 * a_rc).sum()
    anisotropy = float(local / (a_rr + a_cc).sum()) if energy > 0 else 0.0
    return orientation, float(coherence), anisotropy


def _texture(image: np.ndarray) -> tuple[float, float, float]:
    """GLCM contrast and homogeneity (downsampled, 32 grey levels, 4 directions) and Canny edge density."""
    small = _block_mean(image, math.ceil(max(image.shape) / TEXTURE_MAX_SIDE))
    levels = np.clip((small * GLCM_LEVELS).astype(np.uint8), 0, GLCM_LEVELS - 1)
    glcm = graycomatrix(levels, [1], [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=GLCM_LEVELS, symmetric=True, normed=True)
    contrast = float(graycoprops(glcm, "contrast").mean())
    homogeneity = float(graycoprops(glcm, "homogeneity").mean())
    edges = canny(_block_mean(image, math.ceil(max(image.shape) / EDGE_MAX_SIDE)), sigma=2)
    return contrast, homogeneity, float(edges.mean())


def _heterogeneity(centroids: np.ndarray, diameters: np.ndarray, shape: tuple[int, int]) -> float:
    """Coefficient of variation of the tile means of object size (tiles holding at least 3 objects; 0 if < 4 tiles)."""
    if len(diameters) < 12:
        return 0.0
    g = HETEROGENEITY_GRID
    tile = (np.minimum(centroids[:, 0] * g // shape[0], g - 1) * g + np.minimum(centroids[:, 1] * g // shape[1], g - 1))
    tile = tile.astype(int)
    counts = np.bincount(tile, minlength=g * g)
    sums = np.bincount(tile, weights=diameters, minlength=g * g)
    means = sums[counts >= 3] / counts[counts >= 3]
    return float(means.std() / means.mean()) if len(means) >= 4 else 0.0


@dataclass
class Segmentation:
    """The objects measure() counts, as a label image, with the images they were found in. Everything per object
    (maemi.measure.objects, the overlay) derives from this, so it always agrees with the aggregate Measurements."""

    image: np.ndarray  # [H, W] float32 grey in [0, 1]
    flat: np.ndarray  # [H, W] smoothed, background subtracted
    mask: np.ndarray  # [H, W] bool: the foreground phase, specks and pinholes removed
    distance: np.ndarray  # [H, W] float32: distance of each mask pixel to the background
    labels: np.ndarray  # [H, W] int: 0 background, 1..n the objects, touching ones split
    foreground: str  # "bright" or "dark"
    method: str = "classical"  # which segmenter found the objects: "classical", "learned" or "spots"
    phase_separation: float = 100.0  # phase_separation(flat)
    empty: np.ndarray | None = None  # [H, W] bool: what is left out of the analysed area (below); or None
    unlit: np.ndarray | None = None  # [H, W] bool: of it, the dark beyond the illumination's edge (the rest is vacuum)
    black: np.ndarray | None = None  # [H, W] bool: black at the frame not left out (empty_space.black_at_frame)
    compact: bool = False  # the objects are known compact (spots; classical ones found so): no wire or fibre tests

    # Derived once per segmentation (it is never changed after it is made): segment() and measure_segmentation() both
    # ask whether the objects are a fibre mat, and the fibres table asks again.
    @functools.cached_property
    def skeleton(self) -> np.ndarray:
        """[H, W] bool: the mask's centre lines (object widths and the fibre test both read along them)."""
        return skeletonize(self.mask)

    @functools.cached_property
    def moments(self) -> EllipseMoments:
        """Area, centroid and fitted ellipse per object: what deciding needs, without the perimeters' cost."""
        return ellipse_moments(self.labels)

    @functools.cached_property
    def shapes(self) -> ObjectShapes:
        return object_shapes(self.labels, self.moments)

    @functools.cached_property
    def widths(self) -> np.ndarray:
        return object_widths(self)

    @functools.cached_property
    def labels_at_half_contrast(self) -> np.ndarray:
        """The labels with each object's edge at half its own contrast (_edges_at_half_contrast): what compact
        objects' sizes, rods' widths and a mat's fibre diameters are read from, once the decisions have read these."""
        return _edges_at_half_contrast(self)

    @functools.cached_property
    def distance_at_half_contrast(self) -> np.ndarray:
        return distance_to_background(self.labels_at_half_contrast > 0)

    @functools.cached_property
    def fibres(self) -> FibreMeasurements | None:
        """The traced fibres when the objects are a fibre mat, else None (fibre_mat)."""
        return fibre_mat(self)


SEGMENTERS = ("auto", "classical", "learned", "spots")
DEFAULT_SEGMENTER = "auto"


def phase_separation(flat: np.ndarray) -> float:
    """How far apart the two phases that Otsu's threshold splits an image into lie: the difference of their mean grey
    levels over their pooled within-phase standard deviation (Fisher's criterion for the threshold). 2.65 for pure
    Gaussian noise, 0 for a blank image, at most SEPARATION_CAP (a noiseless two-level image). Otsu's own score, eta =
    between-class / total variance, is this scaled by the phases' shares (eta = w0 w1 d^2 / (1 + w0 w1 d^2)), so it
    falls for a few clearly visible objects on a large background; this does not. By hand: two lines from Otsu's
    threshold, which is what skimage returns."""
    if flat.max() <= flat.min():
        return 0.0
    low = flat <= threshold_otsu(flat)
    return _phase_distance(flat[low], flat[~low])


def _phase_distance(low: np.ndarray, high: np.ndarray) -> float:
    """The difference of two phases' mean grey levels over their pooled within-phase standard deviation."""
    within = math.sqrt((low.var() * low.size + high.var() * high.size) / (low.size + high.size))
    difference = float(high.mean() - low.mean())
    return SEPARATION_CAP if difference >= SEPARATION_CAP * within else difference / within


def largest_piece_share(mask: np.ndarray) -> float:
    """The share of the foreground in its largest 8-connected piece: near 1 for a network (a fibre mat, a sponge),
    small for separate objects. 0 for an empty mask."""
    pieces, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return 0.0
    return float(np.bincount(pieces.ravel())[1:].max() / np.count_nonzero(mask))


def size_spread(labels: np.ndarray) -> float:
    """The area-weighted mean equivalent diameter of the objects over their median (MIXTURE_SPREAD); 0 with none."""
    area = np.bincount(labels.ravel())[1:]
    area = area[area > 0].astype(float)
    if len(area) == 0:
        return 0.0
    diameters = np.sqrt(area)  # the constant 2 / sqrt(pi) cancels in the ratio
    return float(np.average(diameters, weights=area) / np.median(diameters))


def learned_segmenter():
    """The learned segmenter: the weights $MAEMI_SEGMENTER_WEIGHTS names, else those shipped with the package; None
    when the file is missing (a source checkout before `python -m maemi.measure.train_segmenter`). Loaded once per
    weights file."""
    from maemi.measure.segmenter import weights_path

    return _segmenter_at(weights_path())


@functools.cache
def _segmenter_at(path: str):
    from maemi.measure.segmenter import Segmenter

    try:
        return Segmenter.load(path)
    except FileNotFoundError:
        return None


def segment(grey: np.ndarray, method: str = DEFAULT_SEGMENTER) -> Segmentation:
    """Segment a grey micrograph (float in [0, 1] or integer; the info bar already cropped) into objects.

    method: "classical" (threshold and distance-transform watershed, below: counts within 10% of the built-in corpus's
    truth and 3% of real nanowire tiles), "spots" (maemi.measure.spots: compact particles on a support, bright in dark
    field and dark in bright field: the closest to the experts on real STEM and TEM images, but it finds only
    particles a few to ~35 px across at the working size, not fibres, wires or large grains), "learned"
    (maemi.measure.segmenter, trained on hard synthetic cases; see benchmarks/results/measure_real.md) or "auto" (the
    default): the classical segmentation, unless one threshold does not separate the image (phase_separation below
    SEPARATION_MIN) and what it found is a few huge regions among specks (size_spread above MIXTURE_SPREAD), the
    signature of a threshold through a textured support, and not a fibre mat's network; then spots.
    Segmentation.method says which ran.
    """
    if method not in SEGMENTERS:
        raise ValueError(f"unknown segmentation method {method!r}: choose from {', '.join(SEGMENTERS)}")
    from maemi.measure.empty_space import black_at_frame, find_unlit, find_vacuum  # it imports from here

    image = _as_grey(grey)
    smooth = ndimage.gaussian_filter(image, 1.0)
    black = black_at_frame(smooth)
    seen, empty, unlit = image, None, None
    for find in (find_unlit, find_vacuum):  # each as film: the film's level there, with its own pixel noise
        found = find(smooth)
        if found is None:
            continue
        left_out, fill, level = found
        seen = np.where(fill, level + (seen - smooth), seen)
        smooth = ndimage.gaussian_filter(seen, 1.0)
        empty = left_out if empty is None else empty | left_out
        unlit = left_out if find is find_unlit else unlit
    seg = _segment(seen, smooth, method, empty)
    seg.image, seg.unlit = image, unlit  # what the image shows, for its brightness and texture
    seg.black = black if empty is None else black & ~empty
    return seg


def _segment(image: np.ndarray, smooth: np.ndarray, method: str, empty: np.ndarray | None) -> Segmentation:
    flat, separation = _flatten(smooth)
    if method == "learned":
        learned = learned_segmenter()
        if learned is None:
            raise FileNotFoundError("no learned segmenter installed: train it with python -m "
                                    "maemi.measure.train_segmenter or name its weights in $MAEMI_SEGMENTER_WEIGHTS")
        return _labelled_segmentation(image, flat, learned.instances(image), "learned", separation, empty)
    if method == "spots":
        return _spots(image, flat, separation, empty)
    classical = _classical(image, flat, separation, empty)
    if (method == "auto" and separation < SEPARATION_MIN and size_spread(classical.labels) > MIXTURE_SPREAD
            and not _fibre_network(classical)):
        return _spots(image, flat, separation, empty)
    if len(classical.moments.ids) == 0 or _elongated(classical.moments.aspect) or classical.fibres is not None:
        return classical  # wires and fibres are measured along their skeletons, from these outlines
    labels = classical.labels_at_half_contrast
    return Segmentation(image, flat, labels > 0, classical.distance_at_half_contrast, labels, classical.foreground,
                        "classical", separation, empty, compact=True)


def _fibre_network(seg: Segmentation) -> bool:
    """Whether the foreground is a fibre mat lying in one network: the one mixture of a huge region among specks that
    is objects, not a textured support (the network is the huge region). Both tests: on 33 real STEM images the
    foreground's largest piece holds at most 61% of it and none passes fibre_mat (PtC2, at 19%, is just under its
    length bar); rendered mats that went to spots: 57-99%, and all pass."""
    return largest_piece_share(seg.mask) > NETWORK_SHARE and seg.fibres is not None


def _spots(image: np.ndarray, flat: np.ndarray, separation: float, empty: np.ndarray | None) -> Segmentation:
    from maemi.measure import spots  # it imports noise_sigma and clipped_pixels from here

    seg = _labelled_segmentation(image, flat, spots.instances(image), "spots", separation, empty)
    seg.compact = True  # blobs by construction: tracing their skeletons for fibres could only find none
    return seg


def _classical(image: np.ndarray, flat: np.ndarray, separation: float, empty: np.ndarray | None) -> Segmentation:
    from maemi.measure.touching import interstices, packing, split_packing, split_touching  # it imports from here

    threshold = threshold_otsu(flat) if flat.max() > flat.min() else float(flat.max())
    mask = flat > threshold
    foreground = "bright"
    if mask.mean() > 0.5:  # objects are the minority phase: dark pores or pits on a bright surface
        mask, foreground = ~mask, "dark"
    # ... unless the minority is the gaps of a packed film (one network), or the interstices of particles that all touch
    gaps = largest_piece_share(mask) > NETWORK_SHARE
    touching = not gaps and interstices(mask) and packing(~mask, touching=True)
    if touching or (gaps and packing(~mask)):
        mask, foreground = ~mask, "dark" if foreground == "bright" else "bright"
    sigma = noise_sigma(image)
    margin = NOISE_MARGIN * SMOOTHING_NOISE_GAIN * sigma
    background = float(np.median(flat[~mask])) if (~mask).any() else 0.0
    if foreground == "bright":
        mask = flat > max(threshold, background + margin)
    else:
        mask = flat < min(threshold, background - margin)
    mask = remove_small_objects(mask, max_size=MIN_OBJECT_AREA_PX - 1)
    if not touching:  # where particles all touch, the interstices are what separates them: they stay open
        mask = _fill_rings(remove_small_holes(mask, max_size=MIN_OBJECT_AREA_PX - 1))
    distance = distance_to_background(mask)
    labels, hidden = _visible(image, (split_packing if touching else split_touching)(mask, distance), sigma)
    if hidden:
        mask = labels > 0
        distance = distance_to_background(mask)
    return Segmentation(image, flat, mask, distance, labels, foreground, "classical", separation, empty)


def _edges_at_half_contrast(seg: Segmentation) -> np.ndarray:
    """The labels with each object's edge at half its own contrast: its pixels within EDGE_BAND_PX of its outline, and
    the free pixels as near outside it, belong to it where the smoothed, flattened image stands above the middle of
    the object's level and the background's. The level is the mean of the band just inside that one (its edge's
    plateau: a secondary-electron sphere's bright rim, not its dark top; the core of an object too small to have one),
    a mean, not a maximum, which noise lifts. Pixels deeper inside stay; an object keeps its core, so none is lost; a
    free pixel goes to one object only (grey dilation: the largest label near it), so labels do not cross."""
    labels, distance = seg.labels.ravel(), seg.distance.ravel()
    signed = (seg.flat if seg.foreground == "bright" else -seg.flat).ravel()
    free = labels == 0
    background = float(np.median(signed[free][::4])) if free.any() else 0.0  # a quarter of the pixels is plenty
    n = int(labels.max())
    # the pixels within 2 * EDGE_BAND_PX + 1 of an outline: all this reads (distance is 1 on an object's outline)
    ring = np.flatnonzero((distance > 0) & (distance <= 2 * EDGE_BAND_PX + 1))
    owner, depth = labels[ring], distance[ring]
    top = np.zeros(n + 1, np.float32)  # each object's largest distance, as far as the ring shows it
    np.maximum.at(top, owner, depth)
    plateau = depth > np.minimum(top / 2, EDGE_BAND_PX)[owner]
    level = (np.bincount(owner[plateau], signed[ring[plateau]], minlength=n + 1)
             / np.maximum(np.bincount(owner[plateau], minlength=n + 1), 1))
    half = (level + background) / 2
    half[0] = np.inf
    out = labels.copy()
    band = ring[depth <= EDGE_BAND_PX]
    out[band[signed[band] < half[labels[band]]]] = 0
    near = ndimage.grey_dilation(seg.labels, size=2 * EDGE_BAND_PX + 1).ravel()
    outside = np.flatnonzero(free & (near > 0))
    grow = outside[signed[outside] >= half[near[outside]]]
    out[grow] = near[grow]
    return out.reshape(seg.labels.shape)


def _fill_rings(mask: np.ndarray) -> np.ndarray:
    """The mask with the holes of compact objects filled (RING_SOLIDITY, RING_MAX_FIELD).

    In secondary electrons a particle is brighter where its surface tilts away from the beam (the edge effect), and its
    top, facing the beam, is no brighter than a substrate of like yield: one threshold keeps a ring, and its area is
    the rim's (spheres 60 px across measured at 43 px). A cell's darker nucleus and a hollow shell do the same. A hole
    belongs to the one 8-connected object around it; it is filled when that object, filled, is convex, as a particle
    is, and not a network's: a mat's pores lie inside a piece far from its convex hull, and a sponge's fill the field.
    A hole with anything inside it (debris in a pore) is left as it is.
    """
    holes, n = ndimage.label(ndimage.binary_fill_holes(mask) & ~mask)
    if n == 0:
        return mask
    objects = label(mask, connectivity=2)
    # the objects next to each hole, their labels spread one pixel into it: the one around it, and any island inside
    # (debris in a pore), in which case it is left as it is
    in_hole = holes > 0
    hole_of = holes[in_hole]
    next_to = ndimage.grey_dilation(objects, size=3)[in_hole].astype(np.int64)
    owner = np.zeros(n + 1, np.int64)
    np.maximum.at(owner, hole_of, next_to)
    lowest = np.full(n + 1, np.iinfo(np.int64).max)
    np.minimum.at(lowest, hole_of[next_to > 0], next_to[next_to > 0])
    owner[lowest != owner] = 0
    if not owner.any():
        return mask
    filled = objects.copy()
    filled[in_hole] = owner[hole_of]
    area = np.bincount(filled.ravel(), minlength=int(objects.max()) + 1)
    boxes = ndimage.find_objects(filled)
    compact = np.zeros(int(objects.max()) + 1, bool)
    for k in np.unique(owner[owner > 0]):
        if area[k] <= RING_MAX_FIELD * mask.size:  # the hull only where the area allows it
            compact[k] = area[k] >= RING_SOLIDITY * hull_area(filled[boxes[k - 1]] == k)
    return mask | (in_hole & compact[filled])


def hull_area(region: np.ndarray) -> float:
    """The area of the convex hull of a mask's pixels (as squares: their corners), px. From the outline's corners with
    scipy's ConvexHull: skimage's convex_hull_image rasterises the hull, 60 ms for one object 500 px across."""
    edge = region & ~ndimage.binary_erosion(region)
    rows, cols = np.nonzero(edge)
    corners = np.concatenate([np.stack([rows + dr, cols + dc], axis=1) for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    return float(ConvexHull(corners).volume)


def _visible(image: np.ndarray, labels: np.ndarray, sigma: float) -> tuple[np.ndarray, int]:
    """The objects that pass Rose's criterion against their own surroundings, relabelled 1..n, and how many did not:
    the difference of the means of the object and of the ring around it, over the standard error of that difference
    for pixel noise `sigma`. An object with no free ring (inside a cluster, or the whole frame) is kept: there is
    nothing to judge it against."""
    n = int(labels.max())
    if n == 0:
        return labels, 0
    ring_owner = ndimage.grey_dilation(labels, size=2 * ROSE_RING_PX + 1)
    ring_owner[labels > 0] = 0
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    ring_area = np.bincount(ring_owner.ravel(), minlength=n + 1)[1:]
    inside = np.bincount(labels.ravel(), image.ravel(), minlength=n + 1)[1:] / np.maximum(area, 1)
    around = np.bincount(ring_owner.ravel(), image.ravel(), minlength=n + 1)[1:] / np.maximum(ring_area, 1)
    error = max(sigma, 1e-6) * np.sqrt(1 / np.maximum(area, 1) + 1 / np.maximum(ring_area, 1))
    hidden = (ring_area > 0) & (np.abs(inside - around) < ROSE_SNR * error)
    if not hidden.any():
        return labels, 0
    new_id = np.concatenate([[0], np.where(hidden, 0, np.cumsum(~hidden))]).astype(labels.dtype)
    return new_id[labels], int(hidden.sum())


def noise_sigma(image: np.ndarray) -> float:
    """The standard deviation of pixel noise: the MAD of horizontal neighbour differences over sqrt 2 (structure is
    smooth on a pixel's scale, noise is not). By hand because skimage's estimate_sigma needs PyWavelets. Where over
    half the differences are exactly 0 (an 8-bit image whose noise is under a grey level) the MAD is 0, which said
    the image was noiseless: a blank 8-bit field with noise of 0.3-0.45 grey levels gave 374-1,063 objects. There,
    the median of spots.noise_map's per-block estimate (a truncated mean, which quantisation zeroes later), and at
    least the quantisation's own noise, a uniform error of one grey step: step / sqrt 12."""
    d = np.diff(image, axis=1).ravel()
    sigma = float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2))
    if sigma > 0 or image.max() <= image.min():
        return sigma
    from maemi.measure.spots import noise_map  # it imports this module

    step = float(np.diff(np.unique(image)).min())
    return max(float(np.median(noise_map(image))), step / math.sqrt(12))


def _labelled_segmentation(image: np.ndarray, flat: np.ndarray, labels: np.ndarray, method: str,
                           separation: float, empty: np.ndarray | None = None) -> Segmentation:
    if empty is not None:  # what a detector found in the vacuum is noise or the film's edge
        labels = relabel_sequential(np.where(empty, 0, labels))[0]
    mask = labels > 0
    # each object's own distance to its border: cut the mask where two objects touch before the distance transform
    cut = mask.copy()
    cut[:-1] &= ~((labels[:-1] != labels[1:]) & (labels[1:] > 0))
    cut[:, :-1] &= ~((labels[:, :-1] != labels[:, 1:]) & (labels[:, 1:] > 0))
    distance = distance_to_background(cut)
    inside = float(image[mask].mean()) if mask.any() else 0.0
    outside = float(image[~mask].mean()) if (~mask).any() else 0.0
    foreground = "bright" if inside >= outside else "dark"
    return Segmentation(image, flat, mask, distance, labels.astype(np.int32), foreground, method, separation, empty)


@dataclass
class ObjectShapes:
    """The per-object numbers that measure() averages, one entry per object in label order (all [N] but centroids)."""

    ids: np.ndarray  # the object's label
    area: np.ndarray  # px, float
    centroids: np.ndarray  # [N, 2] (row, column)
    diameters: np.ndarray  # equivalent diameter: of the disk of the same area
    circularity: np.ndarray  # 4 pi A / P^2, clipped to [0, 1]
    aspect: np.ndarray  # major / minor axis of the fitted ellipse (minor at least 1 px)
    perimeter: np.ndarray  # px, scikit-image's, at least 1 (the circularity's)


def object_shapes(labels: np.ndarray, moments: EllipseMoments | None = None) -> ObjectShapes:
    """The objects' shapes; `moments`, ellipse_moments(labels) when already at hand."""
    table = regionprops_table(labels, properties=("label", "perimeter"))
    moments = ellipse_moments(labels) if moments is None else moments  # the same objects, in the same order
    area = moments.area
    perimeter = np.maximum(table["perimeter"], 1.0)
    return ObjectShapes(
        ids=moments.ids,
        area=area,
        centroids=moments.centroids,
        diameters=moments.diameters,
        circularity=np.clip(4 * np.pi * area / perimeter**2, 0, 1),
        aspect=moments.aspect,
        perimeter=perimeter,
    )


def object_widths(seg: Segmentation, distance: np.ndarray | None = None) -> np.ndarray:
    """Each object's thickness: twice the distance to the edge along its skeleton, away from the skeleton's ends. The
    distance counts to the nearest background pixel and skeleton pixels sit up to half a pixel off the true centre
    line, so a band N pixels wide along the pixel grid reads N = 2d - 1 (odd N) or N = 2d (even N): 2d - 0.5 on
    average (at 10-35 degrees to the grid d is nearly the edge's own distance, and such bands read up to half a pixel
    thin: segmenter_runs.md, "Rods' widths away from the ends"). Toward an end, and along the forks thinning leaves
    toward a flat end's corners, the distance tapers (a 14 px rod 30 long read 8% thin): a skeleton pixel counts where
    every end is more than twice its own distance away, as the fibre code leaves a segment's ends out; an object whose
    skeleton is all ends, over all of it. Without skeleton: its equivalent diameter. `distance`: the map to read
    instead of the mask's own (the edges at half contrast, rod_sizes)."""
    distance = seg.distance if distance is None else distance
    ids, n = seg.moments.ids, seg.labels.max() + 1
    rows, cols = np.nonzero(seg.skeleton & (seg.labels > 0))
    owner, along = seg.labels[rows, cols], distance[rows, cols]
    padded = np.pad(seg.skeleton, 1)
    ends = sum(padded[rows + 1 + dy, cols + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)) == 2  # itself and one
    middle = np.ones(len(rows), bool)
    if ends.any():
        to_end, _ = cKDTree(np.column_stack([rows[ends], cols[ends]])).query(np.column_stack([rows, cols]))
        middle = to_end > 2 * along
    in_middle = np.bincount(owner[middle], minlength=n)[ids] > 0
    counted = middle | ~in_middle[np.searchsorted(ids, owner)]  # the middle where an object has one
    ridge_sum = np.bincount(owner[counted], weights=along[counted], minlength=n)[ids]
    ridge_count = np.bincount(owner[counted], minlength=n)[ids]
    return np.where(ridge_count > 0, 2 * ridge_sum / np.maximum(ridge_count, 1) - 0.5, seg.moments.diameters)


def rod_sizes(seg: Segmentation) -> tuple[np.ndarray, np.ndarray]:
    """Each rod's width (object_widths) and length (its area over its width: a flat-ended rod's exactly; the caps of
    a rounded one count pi/4 of theirs), with its edges at half its contrast as a particle's where the threshold drew
    them (the wire and fibre tests keep the threshold's outlines; the sizes are read after them). On the threshold's
    outlines rods 6 px wide under a probe of sigma 1.5 px read 19% wide."""
    if seg.method != "classical" or seg.compact:  # outlines of their own, or already moved
        return seg.widths, seg.moments.area / np.maximum(seg.widths, 1.0)
    widths = object_widths(seg, seg.distance_at_half_contrast)
    area = np.bincount(seg.labels_at_half_contrast.ravel(), minlength=seg.labels.max() + 1)[seg.moments.ids]
    return widths, area / np.maximum(widths, 1.0)


def measure(grey: np.ndarray, nm_per_pixel: float | None = None, method: str = DEFAULT_SEGMENTER) -> Measurements:
    """Measure a grey micrograph (float in [0, 1] or integer; the info bar already cropped); `method` as segment()."""
    return measure_segmentation(segment(grey, method), nm_per_pixel)


def measure_segmentation(seg: Segmentation, nm_per_pixel: float | None = None) -> Measurements:
    """The Measurements of an image already segmented by segment()."""
    image, flat, mask, labels = seg.image, seg.flat, seg.mask, seg.labels
    h, w = image.shape
    shapes = seg.shapes
    ids, area, centroids, diameters = shapes.ids, shapes.area, shapes.centroids, shapes.diameters

    empty_px = 0 if seg.empty is None else int(np.count_nonzero(seg.empty))
    unlit_px = 0 if seg.unlit is None else int(np.count_nonzero(seg.unlit))
    field_px = max(h * w - empty_px, 1)  # the analysed area
    nn_mean = clark_evans = None
    if len(ids) >= 3:
        nearest, _ = cKDTree(centroids).query(centroids, k=2)
        nn_mean = float(nearest[:, 1].mean())
        clark_evans = nn_mean / (0.5 * math.sqrt(field_px / len(ids)))  # expected NN distance of a Poisson pattern

    orientation, coherence, anisotropy = _orientation(flat)
    contrast, homogeneity, edge_density = _texture(image)
    elongated = _elongated_counts(seg)
    rods = rod_like(shapes.aspect)  # a wire's width and length are sizes for these only
    widths, lengths = rod_sizes(seg) if rods else (None, None)  # (along the skeleton: not worth tracing otherwise)

    def stat(values: np.ndarray, fn) -> float:
        return float(fn(values)) if len(values) else 0.0

    count = elongated.get("fibre_count", int(len(ids)))
    extent, on_edge = frame_extents(labels, ids)
    sizes = size_distribution(diameters, extent, on_edge, (h, w))
    distribution = {} if sizes is None else {
        "diameter_d10_px": sizes.d10, "diameter_d50_px": sizes.d50, "diameter_d90_px": sizes.d90,
        "diameter_geometric_mean_px": sizes.geometric_mean, "diameter_geometric_std": sizes.geometric_std,
        "edge_object_count": sizes.objects_on_edge}

    return Measurements(
        width_px=w,
        height_px=h,
        nm_per_pixel=None if nm_per_pixel is None else float(nm_per_pixel),
        brightness_mean=float(image.mean()),
        brightness_std=float(image.std()),
        foreground=seg.foreground,
        object_count=count,
        region_count=int(len(ids)),
        area_fraction=float(mask.sum() / field_px),
        diameter_mean_px=stat(diameters, np.mean),
        diameter_std_px=stat(diameters, np.std),
        diameter_min_px=stat(diameters, np.min),
        diameter_max_px=stat(diameters, np.max),
        width_mean_px=stat(widths, np.mean) if rods else None,
        length_mean_px=stat(lengths, np.mean) if rods else None,
        circularity_mean=stat(shapes.circularity, np.mean),
        aspect_ratio_mean=stat(shapes.aspect, np.mean),
        orientation_deg=orientation,
        orientation_coherence=coherence,
        nn_distance_mean_px=nn_mean,
        clark_evans_r=clark_evans,
        glcm_contrast=contrast,
        glcm_homogeneity=homogeneity,
        edge_density=edge_density,
        anisotropy=anisotropy,
        size_heterogeneity=_heterogeneity(centroids, diameters, (h, w)),
        **elongated,
        segmenter=seg.method,
        phase_separation=seg.phase_separation,
        objects_uncertain=seg.phase_separation < SEPARATION_MIN,
        **distribution,
        empty_fraction=(empty_px - unlit_px) / mask.size,
        unlit_fraction=unlit_px / mask.size,
        number_density_per_um2=(None if nm_per_pixel is None else
                                (count if "fibre_count" in elongated else _frame_count(labels, ids))
                                / (field_px * (nm_per_pixel / 1000) ** 2)),
        black_fraction=0.0 if seg.black is None else float(seg.black.mean()),
        clipped_fraction=clipped_fraction(image),
    )


def _frame_count(labels: np.ndarray, ids: np.ndarray) -> int:
    """The objects counted by the unbiased counting frame (Gundersen, J. Microsc. 111, 1977): those that do not touch
    its bottom or right edge, so that a field cut into tiles counts each object once, in one tile; counting all, an
    object cut by a tile's edge counts in both tiles, and the number per area comes out high by the objects' size
    over the field's."""
    h, w = labels.shape
    boxes = ndimage.find_objects(labels)
    return sum(1 for i in ids if boxes[int(i) - 1][0].stop < h and boxes[int(i) - 1][1].stop < w)


def clipped_pixels(image: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels at the image's lowest or highest grey level, where a detector or its settings may have
    clipped what was there (every pixel of a flat image)."""
    return (image <= image.min()) | (image >= image.max())


def clipped_fraction(image: np.ndarray) -> float:
    """The share of pixels at the image's lowest or highest grey level (Measurements.clipped_fraction); 0 for a
    flat image, which has no range to clip."""
    return float(clipped_pixels(image).mean()) if image.max() > image.min() else 0.0


def rod_like(aspect: np.ndarray) -> bool:
    """Whether objects of these aspect ratios are wires, fibres or rods, whose width and length are their sizes: a
    third of them at least twice as long as wide (the wire array's gate), or FIBRE_ASPECT on average (what the answers
    call elongated)."""
    return len(aspect) > 0 and bool(np.mean(aspect >= WIRE_ASPECT) >= ELONGATED_SHARE
                                    or np.mean(aspect) >= FIBRE_ASPECT)


def _elongated_counts(seg: Segmentation) -> dict:
    """Wires by class when the objects form a tilted nanowire array; else the fibres when they are a fibre mat
    (fibre_mat). Empty for round objects, and for objects known compact (Segmentation.compact: spots, blobs by
    construction, whose skeletons tracing fibres cost a fifth of a STEM image's measurement and could only find none;
    classical objects found compact before their edges moved to half contrast)."""
    if len(seg.shapes.ids) == 0 or seg.compact:
        return {}
    if _elongated(seg.shapes.aspect):
        wires = classify_wires(seg.labels)
        # (classify_wires says no array where the rods cross the field: aligned fibres, lying wires)
        if (wires.array_found and wires.counts.get("nanowire", 0) >= MIN_ARRAY_RODS
                and largest_piece_share(seg.mask) <= NETWORK_SHARE):
            sites = {} if wires.sites is None else {"array_site_count": wires.sites.sites,
                                                    "empty_site_count": wires.sites.empty}
            return {"nanowire_count": wires.counts.get("nanowire", 0),
                    "parasitic_count": wires.counts.get("parasitic", 0), **sites}
    fibres = seg.fibres
    if fibres is None:
        return {}
    counted = counted_fibres(fibres)
    # the counted fibres' diameters, each weighed by its length: what the fibres table lists, as an expert's
    # measurements spaced along the fibres would weigh them
    diameter = np.average([fibres.diameters_px[i] for i in counted], weights=[fibres.lengths_px[i] for i in counted])
    return {"fibre_count": len(counted), "fibre_diameter_mean_px": float(diameter)}


def _elongated(aspect: np.ndarray) -> bool:
    """Whether enough of the objects are rods to look at them as a wire array (WIRE_ASPECT, ELONGATED_SHARE)."""
    return bool(np.mean(aspect >= WIRE_ASPECT) >= ELONGATED_SHARE)


def counted_fibres(fibres: FibreMeasurements) -> list[int]:
    """The ids of the fibres a mat's count counts: the mat test takes every piece; the count, only the fibres traced
    at least FIBRE_MIN_LENGTH_DIAMETERS of the mat's mean diameter long (not stretches of dimmer ones), or all of
    them when none is."""
    bar = FIBRE_MIN_LENGTH_DIAMETERS * fibres.diameter_mean_px
    return [i for i, n in enumerate(fibres.lengths_px) if n >= bar] or list(range(fibres.fibre_count))


def _even_width(seg: Segmentation) -> bool:
    """Whether the width along the skeleton varies little enough for fibres to be worth tracing."""
    along = seg.distance[seg.skeleton]
    return along.size > 0 and along.std() <= FIBRE_MAX_SKELETON_WIDTH_CV * along.mean()


def fibre_mat(seg: Segmentation) -> FibreMeasurements | None:
    """The fibres traced through their crossings (maemi.measure.fibres.FibreMeasurements) when the objects are
    fibre-like (slender: area / width^2, their length over their width, of FIBRE_ASPECT or more, area-weighted, which
    holds for a whole connected mat as for one fibre; a disk reads pi/4) and the traced fibres are long and of even
    width (FIBRE_MIN_LENGTH_DIAMETERS, FIBRE_MAX_WIDTH_CV); else None (round objects, a lumpy support, a film, a
    powder: slender by area, but not fibres)."""
    from maemi.measure.fibres import measure_fibres  # here: fibres imports this module

    if seg.labels.max() == 0 or not _even_width(seg):  # the width test first: it needs only the skeleton
        return None
    area = seg.moments.area
    if np.average(area / np.maximum(seg.widths, 1.0) ** 2, weights=area) < FIBRE_ASPECT:
        return None
    # the fibres' diameters at half their contrast, as a particle's (the threshold's are 4% wide on the rendered mats)
    sized_by = seg.distance_at_half_contrast if seg.method == "classical" else None
    fibres = measure_fibres(seg.mask, seg.distance, sized_by=sized_by)
    if not fibres.fibre_count or not fibres.diameter_mean_px:
        return None
    # on what the mask shows: stretches joined across gaps are inferred, and would make a maze's worms look long
    length = float(np.mean(fibres.seen_lengths_px)) / fibres.diameter_mean_px
    if length < FIBRE_MIN_LENGTH_DIAMETERS or fibres.diameter_std_px / fibres.diameter_mean_px > FIBRE_MAX_WIDTH_CV:
        return None
    return fibres
