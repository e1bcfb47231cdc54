"""The spot detector (maemi.measure.spots): nothing from noise, every particle of a rendered support, honest sizes."""

import numpy as np
import pytest
from scipy import ndimage

from maemi.measure import spots
from maemi.measure.measurements import measure


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blank_and_pure_noise_images_yield_no_spots(seed):
    rng = np.random.default_rng(seed)
    assert spots.instances(np.full((300, 400), 0.4, np.float32)).max() == 0
    gaussian = np.clip(0.5 + 0.05 * rng.standard_normal((480, 640)), 0, 1).astype(np.float32)
    shot = (rng.poisson(20, (480, 640)) / 40).astype(np.float32)
    resized = np.clip(0.5 + 0.1 * rng.standard_normal((1400, 1400)), 0, 1).astype(np.float32)  # the resize path
    assert [int(spots.instances(image).max()) for image in (gaussian, shot, resized)] == [0, 0, 0]


def _on_clipped_black(seed: int, n: int, shape=(512, 512)) -> np.ndarray:
    """n bright particles (radius 3-7 px) on a field whose noise is clipped at black, as a dark-field detector's
    black level set at the vacuum's mean leaves it: half the pixels are 0 and only the noise above them is seen."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image, taken = np.zeros(shape), np.zeros(shape, bool)
    while int(ndimage.label(taken)[1]) < n:
        cy, cx, r = rng.uniform(10, shape[0] - 10), rng.uniform(10, shape[1] - 10), rng.uniform(3, 7)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if not (ndimage.binary_dilation(disc, iterations=3) & taken).any():
            taken |= disc
            image[disc] += 0.5
    return np.clip(ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 0.04, shape), 0, 1).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_clipped_at_black_makes_no_spots(seed):
    """With the dark clipped, the field's noise is half hidden: one noise figure for the image (the median neighbour
    difference, mostly between two black pixels) put the bar far below the noise that is seen, and pure noise gave
    25-29 spots here. The noise is measured where it is seen, above the clip."""
    assert spots.instances(_on_clipped_black(seed, 0)).max() <= 1
    assert spots.instances(_on_clipped_black(seed, 25)).max() == pytest.approx(25, abs=1)
    # bright field: dark particles, the vacuum clipped at white
    assert spots.instances(1 - _on_clipped_black(seed, 0)).max() <= 1
    assert spots.instances(1 - _on_clipped_black(seed, 25)).max() == pytest.approx(25, abs=1)


def support_scene(seed: int, n: int = 40, shape=(512, 512)):
    """Bright Gaussian-profile particles (some in touching pairs) on a lumpy support several times their size, with
    shot-like noise: the image and the particles' centres and diameters (4 standard deviations of the profile)."""
    rng = np.random.default_rng(seed)
    support = ndimage.gaussian_filter(rng.standard_normal(shape), 40)
    support = 0.25 + 0.2 * (support - support.min()) / np.ptp(support)  # thickness varies several-fold
    image = support.copy()
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres, diameters = [], []
    while len(centres) < n:
        c, s = rng.uniform(20, shape[0] - 20, 2), rng.uniform(2.0, 4.0)
        if len(centres) % 5 == 1 and rng.random() < 0.8:  # most fifths touch the previous particle: radii meet
            angle = rng.uniform(0, 2 * np.pi)
            c = centres[-1] + (2 * s + diameters[-1] / 2) * np.array([np.cos(angle), np.sin(angle)])
        inside = 20 < c[0] < shape[0] - 20 and 20 < c[1] < shape[1] - 20
        if not inside or any(np.hypot(*(c - o)) < 2 * s + do / 2 - 1e-6 for o, do in zip(centres, diameters)):
            continue  # overlapping blobs are one particle to anyone
        image += rng.uniform(0.08, 0.2) * np.exp(-((yy - c[0]) ** 2 + (xx - c[1]) ** 2) / (2 * s * s))
        centres.append(c)
        diameters.append(4 * s)
    image += 0.01 * rng.standard_normal(shape)
    return np.clip(image, 0, 1).astype(np.float32), np.array(centres), np.array(diameters)


@pytest.mark.parametrize("seed, bright_field", [(0, False), (1, False), (2, True)])
def test_every_particle_on_a_lumpy_support_is_found_once(seed, bright_field):
    image, centres, diameters = support_scene(seed)
    if bright_field:  # the same scene as bright field shows it: dark particles on a brighter support
        image = 1.0 - image
    assert spots.dark_particles(image) == bright_field
    labels = spots.instances(image)
    found = ndimage.center_of_mass(labels > 0, labels, range(1, labels.max() + 1))
    assert abs(labels.max() - len(centres)) <= 2, (labels.max(), len(centres))
    # one to one: each true particle has a found centre within its radius
    hits = sum(min(np.hypot(*(np.array(f) - c)) for f in found) < d / 2 for c, d in zip(centres, diameters))
    assert hits >= len(centres) - 2


def test_outline_size_and_the_measure_teacher_path():
    image, centres, diameters = support_scene(3, n=25)
    m = measure(image, method="spots")
    assert m.segmenter == "spots" and abs(m.object_count - len(centres)) <= 2
    # the outline at a fifth of the height: a Gaussian profile's 4-sigma diameter within a third
    assert m.diameter_mean_px == pytest.approx(diameters.mean(), rel=0.35)


def test_a_textured_particle_is_outlined_whole():
    """Lattice fringes or noise inside a particle dip below the outline level: the dips are the particle's own, so
    its outline has no holes and its area is the disc's."""
    yy, xx = np.mgrid[:160, :160]
    disc = (yy - 80) ** 2 + (xx - 80) ** 2 <= 20 ** 2
    # dark lines 3 px wide inside it, clear of its edge and of its centre
    fringes = ((xx - 80) % 8 >= 4) & ((xx - 80) % 8 <= 6) & ((yy - 80) ** 2 + (xx - 80) ** 2 <= 14 ** 2)
    image = np.where(disc & ~fringes, 0.8, 0.2).astype(np.float32)
    labels = spots.outline(image, np.array([[80.0, 80.0, 20 / np.sqrt(2), 10.0]]))
    assert labels.max() == 1
    assert ndimage.binary_fill_holes(labels > 0).sum() == (labels > 0).sum()
    assert (labels > 0).sum() == pytest.approx(disc.sum(), rel=0.1)


@pytest.mark.parametrize("shape", [(96, 128), (21, 30)])
def test_the_log_stack_by_fft_is_scipys_gaussian_laplace(shape):
    """The nine scales are filtered by FFT with scipy.ndimage's sampled kernels and mirrored edges: the same numbers as
    filtering in space, on an image narrower than the widest kernel too (its mirror images repeat)."""
    image = np.random.default_rng(1).random(shape).astype(np.float32)
    for sigma, response in zip(spots.SIGMAS, spots.log_stack(image)):
        expected = -(sigma ** 2) * ndimage.gaussian_laplace(image, sigma, truncate=spots.TRUNCATE)
        np.testing.assert_allclose(response, expected, atol=1e-6)
