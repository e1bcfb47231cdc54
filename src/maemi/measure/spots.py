"""Compact particles on a support (STEM, TEM, backscattered-electron SEM): scale-space spot detection.

A metal particle on an oxide or carbon support is a compact bump, a few to a few tens of pixels across, on a support
whose brightness varies over much larger distances (its thickness) and has texture of its own. A global threshold
(the classical pipeline) segments the support; the particle is what stands out from the support's own structure *at
the particle's scale*. So: the scale-normalised Laplacian of Gaussian at a range of scales (Lindeberg), each scale's
response divided by its local spread over a window several times that scale (how much the support varies there),
local maxima over space and scale above THRESHOLD of that spread are particles. Particles are bright in dark-field
images (HAADF) and dark in bright-field ones; the image's own histogram says which (dark_particles). Each is then
outlined where it falls to a fifth of its height above the local background, so the per-object table has real areas
and shapes, not circles.

By hand because skimage.feature.blob_log compares the response with one absolute threshold over the whole image,
which on a lumpy support either counts the lumps or misses the particles on the bright ones; the per-scale local
normalisation is what this adds. Measured on real STEM images in benchmarks/results/measure_real.md ("spots").
"""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np
from scipy import fft, ndimage
from scipy.stats import skew
from skimage.transform import resize

from maemi.measure.measurements import clipped_pixels, noise_sigma

WORK_SIDE = 1024  # long side the detector works at, as the learned segmenter (particles of 3-35 px there)
SIGMAS = tuple(float(s) for s in np.geomspace(1.5, 12.0, 9))  # LoG scales, px at the working size: radius ~ sqrt2 sigma
LOCAL_WINDOW = 8.0  # the spread of a scale's response is taken over a Gaussian window of this many sigmas
MIN_WINDOW_PX = 24.0
# A spot must stand this many times the support's local spread above its surroundings. Chosen on the even-numbered
# half of ../shared/data/stem-particles (4 / 4.5 / 5 / 6: detection precision 0.55 / 0.73 / 0.87 / 0.98, recall 0.73
# / 0.61 / 0.50 / 0.29, median count error 0.33 / 0.33 / 0.42 / 0.69); the odd half and other images are evaluation
# only (docs/measurement.md).
THRESHOLD = 4.5
# ... and this many standard deviations of what pixel noise alone gives at its scale: a million pixels over nine
# scales reach 5 to 6 by chance, so a pure-noise image yields no spots (Rose's criterion with room for that search).
NOISE_THRESHOLD = 6.5
# Pixel noise is measured per block of this many pixels (of the original image) and the bar set where each spot lies:
# a dark-field image's noise grows with its signal (shot noise), so one figure for the whole field, set by a dark
# vacuum, was up to 16 times too low on the bright supports of ../shared/data/stem-particles, and a black clipped at
# the vacuum's mean hides half its noise (benchmarks/results/spots_tuning.md, "Pixel noise measured where ...").
NOISE_BLOCK_PX = 32
NOISE_TRIM = 0.8  # each block's estimate from its 80% smallest neighbour differences: edges of objects are left out
TRUNCATE = 6.0  # the LoG kernels' radius in sigmas
PEAK_NEIGHBOURHOOD = 5  # px: two maxima closer than this are one spot
OUTLINE_RADIUS = 2.5  # a spot's outline stays within this many sigmas of its centre
RING = (2.0, 3.0)  # its local background: the median of the ring between these many sigmas
# The outline: where the spot falls to this fraction of its height over the background. A fifth, chosen on the same
# half (outlined sizes 0.79 of the experts' boxes there; at half height, the FWHM, 0.60: a blurred particle's edge).
OUTLINE_LEVEL = 0.2


def working_image(grey: np.ndarray, side: int = WORK_SIDE) -> tuple[np.ndarray, float]:
    """The image at the working size (long side at most `side`, anti-aliased) and the factor applied."""
    h, w = grey.shape
    factor = min(1.0, side / max(h, w))
    if factor == 1.0:
        return grey.astype(np.float32), 1.0
    small = resize(grey, (max(round(h * factor), 1), max(round(w * factor), 1)), order=1, anti_aliasing=True,
                   preserve_range=True)
    return small.astype(np.float32), factor


@functools.cache
def noise_gain(factor: float) -> np.ndarray:
    """Per scale of SIGMAS, the standard deviation of the normalised LoG's response to white noise of unit standard
    deviation in the original image, once resized by `factor` to the working size. Measured on a noise patch rather
    than computed: the resize's anti-aliasing filter correlates the noise, which a formula for white noise misses."""
    work_side = 512  # room for many independent samples of the widest kernel
    side = int(math.ceil(work_side / factor))
    noise = np.random.default_rng(0).standard_normal((side, side)).astype(np.float32)
    work, _ = working_image(noise, work_side) if factor < 1 else (noise, 1.0)
    border = int(math.ceil(TRUNCATE * SIGMAS[-1]))
    inner = (slice(border, -border),) * 2
    return np.array([math.sqrt(float(np.mean(r[inner] ** 2))) for r in log_stack(work)])


def _gaussian_kernel(sigma: float, order: int) -> np.ndarray:
    """The sampled Gaussian (order 0) or its second derivative (order 2) to TRUNCATE sigmas, as scipy.ndimage's."""
    x = np.arange(-int(TRUNCATE * sigma + 0.5), int(TRUNCATE * sigma + 0.5) + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x * x / (sigma * sigma))
    phi /= phi.sum()
    return phi if order == 0 else phi * (x * x / sigma ** 4 - 1 / sigma ** 2)


def _centred_spectrum(kernel: np.ndarray, n: int, real: bool) -> np.ndarray:
    """The DFT of a symmetric kernel placed with its centre at index 0 of a length-n circle."""
    r = len(kernel) // 2
    circle = np.zeros(n)
    circle[: r + 1], circle[n - r:] = kernel[r:], kernel[:r]
    return (fft.rfft if real else fft.fft)(circle)


def log_stack(image: np.ndarray) -> np.ndarray:
    """[len(SIGMAS), H, W] float32: -sigma^2 x the Laplacian of Gaussian of the image at each scale, positive on a
    bright bump: scipy.ndimage.gaussian_laplace's sampled kernels and mirrored edges, applied by FFT (the same numbers
    to float32 rounding; tests/test_spots.py). The widest kernel is 145 px: filtering in space at nine scales was 57%
    of detecting an image's spots. By hand rather than scipy.signal.fftconvolve, which would transform the image again
    for each scale and each of the Laplacian's two separable terms; here one transform serves all nine."""
    border = int(TRUNCATE * SIGMAS[-1] + 0.5)
    padded = np.pad(np.asarray(image, np.float64), border, mode="symmetric")  # ndimage's "reflect"
    h, w = padded.shape
    spectrum = fft.rfft2(padded)
    stack = np.empty((len(SIGMAS), *image.shape), np.float32)
    for k, sigma in enumerate(SIGMAS):
        rows = [_centred_spectrum(_gaussian_kernel(sigma, order), h, False)[:, None] for order in (0, 2)]
        cols = [_centred_spectrum(_gaussian_kernel(sigma, order), w, True)[None, :] for order in (0, 2)]
        laplacian = fft.irfft2(spectrum * (rows[1] * cols[0] + rows[0] * cols[1]), s=(h, w))
        stack[k] = -(sigma ** 2) * laplacian[border:h - border, border:w - border]
    return stack


def noise_map(grey: np.ndarray, block: int = NOISE_BLOCK_PX) -> np.ndarray:
    """The standard deviation of pixel noise per block of `block` x `block` pixels of a grey image ([H // block,
    W // block], at least 1 x 1). From horizontal neighbour differences as measurements.noise_sigma, but (1) per
    block, since shot noise follows the signal; (2) the mean of each block's smallest NOISE_TRIM of them (a
    half-normal's truncated mean, corrected) rather than their median, which 8-bit quantisation sets to 0 or 1 grey
    level where noise is below a few levels; (3) differences that touch the image's lowest or highest value are left
    out: where a detector clips its dark to black, only the noise above the clip is seen, and the clipped pixels
    would say the field is noiseless. A block with too few differences left (clipped) takes the median of the others;
    each is then the median of its 3 x 3 blocks, so one block filled by an object's edge does not stand for its
    neighbourhood. By hand: skimage's estimate_sigma is one figure per image (and needs PyWavelets)."""
    grey = np.asarray(grey, np.float32)
    clipped = clipped_pixels(grey)
    clipped = clipped[:, :-1] | clipped[:, 1:]  # a difference that touches a clipped pixel
    d = np.where(clipped, np.inf, np.abs(grey[:, 1:] - grey[:, :-1]))
    h, w = d.shape
    rows, cols = max(h // block, 1), max(w // block, 1)
    bh, bw = min(block, h), min(block, w)
    blocks = d[:rows * bh, :cols * bw].reshape(rows, bh, cols, bw).transpose(0, 2, 1, 3).reshape(rows * cols, -1)
    seen = np.isfinite(blocks).sum(axis=1)
    enough = seen >= blocks.shape[1] // 8
    if not enough.any():  # a blank or wholly clipped image: no noise to see
        return np.zeros((rows, cols), np.float32)
    kept = np.sort(blocks[enough], axis=1)  # the clipped (inf) last
    k = np.maximum((NOISE_TRIM * seen[enough]).astype(int), 1)
    smallest = np.cumsum(np.where(np.isfinite(kept), kept, 0), axis=1, dtype=np.float64)[np.arange(len(k)), k - 1]
    sigma = np.empty(rows * cols)
    sigma[enough] = smallest / k / (_TRIMMED_HALF_NORMAL * math.sqrt(2))
    sigma[~enough] = np.median(sigma[enough])
    sigma = sigma.reshape(rows, cols)
    padded = np.pad(sigma, 1, mode="edge")
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, (3, 3)), axis=(2, 3)).astype(np.float32)


# E|Z| over the smallest NOISE_TRIM of a standard half-normal's values: a difference of two pixels is sigma sqrt 2 Z
_Z_TRIM = NormalDist().inv_cdf(0.5 + NOISE_TRIM / 2)
_TRIMMED_HALF_NORMAL = math.sqrt(2 / math.pi) * (1 - math.exp(-_Z_TRIM ** 2 / 2)) / NOISE_TRIM


def local_rms(response: np.ndarray, window: float) -> np.ndarray:
    """sqrt of the Gaussian-weighted mean of response^2 over a window (its sigma, px). The window is at least 24 px,
    so the mean is smooth: taken on a grid a quarter of the window's sigma apart and interpolated back, which costs a
    few per cent of filtering every pixel."""
    step = max(1, int(window // 4))
    h, w = response.shape
    pad = ((0, -h % step), (0, -w % step))
    blocks = np.pad(response * response, pad, mode="edge")
    coarse = blocks.reshape(blocks.shape[0] // step, step, blocks.shape[1] // step, step).mean(axis=(1, 3))
    coarse = ndimage.gaussian_filter(coarse, window / step)
    fine = ndimage.zoom(coarse, step, order=1, grid_mode=True, mode="nearest")[:h, :w]
    return np.sqrt(np.maximum(fine, 0.0))


def detect(image: np.ndarray, gain: np.ndarray, pixel_noise: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Spots of a working-size image: [N, 4] (row, column, sigma, strength in local spreads), strongest first.
    gain: per scale, the standard deviation of the response to pixel noise of unit standard deviation (noise_gain);
    pixel_noise: [H, W] the pixel noise's standard deviation where each pixel lies (noise_map, at the working size)."""
    noise = gain[:, None, None] * pixel_noise[None]  # per scale and pixel, what pixel noise alone gives
    # bright bump: positive. Kernels to 6 sigma: cut at scipy's default 4, their sum is 2e-3 off zero, so a bright
    # flat region would read as a bump.
    stack = log_stack(image)
    # The support's own texture makes dips as often as bumps; particles make bumps only. The spread is taken from the
    # dips (sqrt 2 x their RMS), so a field crowded with particles does not raise its own bar.
    spread = np.stack([math.sqrt(2) * local_rms(np.minimum(r, 0), max(LOCAL_WINDOW * s, MIN_WINDOW_PX))
                       for r, s in zip(stack, SIGMAS)])
    strength = stack / np.maximum(spread, noise)  # never a smaller spread than pixel noise gives
    best, scale = strength.max(axis=0), strength.argmax(axis=0)
    peaks = (best == ndimage.maximum_filter(best, size=PEAK_NEIGHBOURHOOD)) & (best > threshold)
    # the filters mirror the image at its edges, where noise then adds up with itself: no maxima on the frame
    peaks[[0, -1], :] = peaks[:, [0, -1]] = False
    rows, cols = np.nonzero(peaks)
    above_noise = stack[scale[rows, cols], rows, cols] > NOISE_THRESHOLD * noise[scale[rows, cols], rows, cols]
    rows, cols = rows[above_noise], cols[above_noise]
    spots = np.stack([rows, cols, np.asarray(SIGMAS)[scale[rows, cols]], best[rows, cols]], axis=1)
    return spots[np.argsort(-spots[:, 3], kind="stable")]


def outline(image: np.ndarray, spots: np.ndarray) -> np.ndarray:
    """Label image of the spots: each the pixels above OUTLINE_LEVEL of its height over the ring's background,
    connected to its centre and within OUTLINE_RADIUS sigmas; stronger spots first, a pixel goes to the first spot
    that takes it, and a spot whose centre is already taken is the same particle found twice."""
    h, w = image.shape
    smooth = ndimage.gaussian_filter(image, 1.0)
    labels = np.zeros((h, w), np.int32)
    n = 0
    for row, col, sigma, _ in spots:
        row, col = int(row), int(col)
        if labels[row, col]:
            continue
        r = int(math.ceil(RING[1] * sigma)) + 1
        top, left = max(row - r, 0), max(col - r, 0)
        window = smooth[top:row + r + 1, left:col + r + 1]
        yy, xx = np.ogrid[top - row:top - row + window.shape[0], left - col:left - col + window.shape[1]]
        distance = np.sqrt(yy * yy + xx * xx) / sigma
        ring = window[(distance >= RING[0]) & (distance <= RING[1])]
        peak = float(smooth[row, col])
        background = float(np.median(ring)) if ring.size else float(window.min())
        view = labels[top:top + window.shape[0], left:left + window.shape[1]]
        free = view == 0
        inside = (distance <= OUTLINE_RADIUS) & free
        if peak > background:
            inside &= window >= background + OUTLINE_LEVEL * (peak - background)
        else:  # no height over the ring (a spot on a slope): the disc the LoG scale implies
            inside &= distance <= math.sqrt(2)
        parts, _ = ndimage.label(inside)
        centre = parts[row - top, col - left]
        if centre == 0:
            continue
        n += 1
        # a particle is one piece without holes: its own texture (lattice fringes, noise) dips below the outline level
        # inside it, and those pixels are the particle's too (not where another spot already lies)
        view[ndimage.binary_fill_holes(parts == centre) & free] = n
    return labels


def dark_particles(grey: np.ndarray) -> bool:
    """Whether the particles are the dark ones: a bright-field image (TEM, or STEM's BF detector), where mass-thickness
    makes particles and thick support darker than the vacuum or thin support around them. The minority phase is the
    histogram's long tail: towards bright in annular dark field (HAADF), towards dark in bright field. So: is the grey
    level's skewness negative? On ../shared/data/stem-particles the 6 bright-field images measure -3.2 to -0.1 and
    the 27 dark-field ones +0.4 to +1.7."""
    if np.ptp(grey) == 0:
        return False  # a blank image: no phases at all
    return bool(skew(grey, axis=None) < 0)


def instances(grey: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Instance labels [H, W] int32 (0 background) of the particles of a grey image (float in [0, 1]): bright spots,
    or dark ones where the image is bright field (dark_particles)."""
    grey = np.asarray(grey, np.float32)
    if dark_particles(grey):
        grey = 1.0 - grey
    image, factor = working_image(grey)
    # never below the whole image's figure, nor 1e-4 of full scale: a blank or noiseless image has no noise to
    # measure, and a real one has more
    pixel_noise = resize(noise_map(grey), image.shape, order=1, mode="edge", preserve_range=True)
    pixel_noise = np.maximum(pixel_noise, max(noise_sigma(grey), 1e-4)).astype(np.float32)
    labels = outline(image, detect(image, noise_gain(round(factor, 4)), pixel_noise, threshold))
    if factor != 1.0:
        labels = resize(labels, grey.shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
    return labels
