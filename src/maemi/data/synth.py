"""The built-in synthetic SEM corpus: ten classes of secondary-electron micrographs with ground truth.

No public micrograph corpus can be downloaded here, so the demo and the tests use this one. Each image is drawn from a
scene (what lies on the sample, in pixels), rendered the way an SEM sees it, and given an instrument info bar:

- secondary-electron contrast: bright edges where the surface slopes (the SE "edge effect": yield grows with the local
  tilt, Goldstein et al., Scanning Electron Microscopy and X-ray Microanalysis, ch. 5), made here by adding the gradient
  magnitude of a relief map; uneven illumination (a low-frequency gain field); slight probe blur; shot noise.
- classes and look-alike pairs follow the SEM data set of Aversa et al., Sci. Data 5, 180172 (2018): particles vs
  powder, porous sponge vs coated films.
- arrangements ordered / random / clustered in the sense of Clark & Evans, Ecology 35, 445 (1954).

Ground truth is computed from what was drawn (after clipping), never from the parameters that were asked for.
Countable objects (particles, powder, nanowires, fibres, cells) are placed without touching so that they can be counted.
Same seed, same bytes: every image has its own generator seeded by (seed, class index, image index).
"""

from __future__ import annotations

import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.draw import polygon as draw_polygon
from skimage.transform import resize

from maemi.fileio import atomic_write_bytes

SEM_CLASSES: tuple[str, ...] = (
    "Biological",
    "Fibres",
    "Films_Coated_Surface",
    "MEMS_devices_and_electrodes",
    "Nanowires",
    "Particles",
    "Patterned_surface",
    "Porous_Sponge",
    "Powder",
    "Tips",
)
ARRANGEMENTS: tuple[str, ...] = ("ordered", "random", "clustered")

# Magnification refers to a 127 mm wide print (the Polaroid 545 format of classic SEM data bars), so the field of view
# is 127 mm / magnification and nm_per_pixel = DISPLAY_WIDTH_NM / (magnification * image width).
DISPLAY_WIDTH_NM = 127e6
INFO_BAR_FRACTION = 0.09
INFO_BAR_LEVEL = 12  # near-black band; the text is 255


@dataclass(frozen=True)
class ClassScale:
    """Physical and drawn size of a class's characteristic feature; together they fix the magnification."""

    size_nm: tuple[float, float]  # realistic range of the feature size (sampled log-uniformly)
    size_px: tuple[float, float]  # how many pixels the feature spans when drawn (sampled uniformly)
    eht_kv: tuple[float, float]  # accelerating voltage range used for this kind of sample


CLASS_SCALES: dict[str, ClassScale] = {
    "Biological": ClassScale((400, 1500), (22, 44), (1, 5)),  # bacterium width
    "Fibres": ClassScale((100, 2000), (8, 20), (2, 15)),  # fibre width
    "Films_Coated_Surface": ClassScale((20, 500), (16, 50), (2, 20)),  # grain diameter
    "MEMS_devices_and_electrodes": ClassScale((2000, 20000), (10, 30), (5, 20)),  # finger / pad width
    "Nanowires": ClassScale((15, 100), (6, 12), (3, 20)),  # wire width
    "Particles": ClassScale((20, 200), (14, 34), (3, 30)),  # particle diameter
    "Patterned_surface": ClassScale((100, 2000), (10, 36), (2, 15)),  # pillar / hole / line width
    "Porous_Sponge": ClassScale((50, 5000), (16, 44), (2, 15)),  # pore diameter
    "Powder": ClassScale((500, 20000), (16, 40), (5, 30)),  # particle equivalent diameter
    "Tips": ClassScale((20, 200), (4, 12), (2, 20)),  # apex diameter
}


@dataclass
class Scene:
    """What lies on the sample, before the microscope sees it. All sizes in pixels."""

    signal: np.ndarray  # [H, W] float32, material SE yield (background and object bodies), about 0..1
    relief: np.ndarray  # [H, W] float32, topography proxy: its slopes become bright edges
    truth: dict  # "sizes_px" (per drawn object), "object_count", "orientation_deg", ... see _metadata


# --------------------------------------------------------------------------------------------------- small helpers


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-std random field varying over about `cells` cells along the longer side."""
    h, w = shape
    gh, gw = max(2, round(cells * h / max(h, w))) + 2, max(2, round(cells * w / max(h, w))) + 2
    coarse = rng.standard_normal((gh, gw))
    # cubic to 1/8 resolution, then linear to full: smooth enough, and 4x faster than cubic at full size
    mid = resize(coarse, (max(2, h // 8), max(2, w // 8)), order=3, mode="edge")
    field = resize(mid, (h, w), order=1, mode="edge").astype(np.float32)
    return (field - field.mean()) / (field.std() + 1e-6)


def _axial_mean_deg(angles_deg: np.ndarray, weights: np.ndarray) -> float:
    """Mean of undirected angles (mod 180), weighted: the doubled-angle circular mean."""
    doubled = np.deg2rad(2 * np.asarray(angles_deg))
    return float(np.rad2deg(0.5 * np.arctan2((weights * np.sin(doubled)).sum(), (weights * np.cos(doubled)).sum())) % 180)


def _direction(theta_deg: float | np.ndarray) -> tuple:
    """(d_row, d_col) of a direction given in degrees counter-clockwise from horizontal, as seen on screen."""
    t = np.deg2rad(theta_deg)
    return -np.sin(t), np.cos(t)  # rows grow downwards


def _place_disks(
    rng: np.random.Generator,
    radii: np.ndarray,
    shape: tuple[int, int],
    arrangement: str,
    gap: float,
    size_gradient: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random sequential addition of non-touching disks (bounding circles), fully inside the frame.

    "random": uniform positions; "clustered": around a few cluster centres (a Thomas process with a hard core);
    size_gradient scales each radius by (1 + g * (x / width - 0.5)), a spatially heterogeneous size distribution.
    Returns centres [N, 2] (row, col) and the radii actually used; objects that find no room are dropped.
    """
    h, w = shape
    centres = np.empty((len(radii), 2))
    used = np.empty(len(radii))
    n = 0
    if arrangement == "clustered":
        per_cluster = rng.uniform(6, 16)
        n_clusters = max(1, round(len(radii) / per_cluster))
        cluster_centres = rng.uniform([0.1 * h, 0.1 * w], [0.9 * h, 0.9 * w], size=(n_clusters, 2))
        spread = float(np.mean(radii)) * math.sqrt(per_cluster) * 0.6  # about as tight as the hard core allows
    for r0 in radii:
        for _ in range(40):
            if arrangement == "clustered":
                c = cluster_centres[rng.integers(n_clusters)] + rng.normal(0, spread, 2)
            else:
                c = rng.uniform([0, 0], [h, w])
            r = r0 * (1 + size_gradient * (c[1] / w - 0.5))
            if not (r + 2 <= c[0] <= h - r - 3 and r + 2 <= c[1] <= w - r - 3):
                continue
            if n and np.any(np.hypot(*(centres[:n] - c).T) < used[:n] + r + gap):
                continue
            centres[n], used[n] = c, r
            n += 1
            break
    return centres[:n], used[:n]


def _lattice(rng: np.random.Generator, shape: tuple[int, int], spacing: float, margin: float) -> np.ndarray:
    """Sites of a hexagonal lattice at a random rotation, kept `margin` pixels inside the frame; [N, 2] (row, col)."""
    h, w = shape
    half = int(math.hypot(h, w) / spacing) + 2
    i, j = np.meshgrid(np.arange(-half, half + 1), np.arange(-half, half + 1), indexing="ij")
    x = (i + 0.5 * (j % 2)) * spacing  # offset every other row: hexagonal packing
    y = j * spacing * math.sqrt(3) / 2
    a = rng.uniform(0, math.pi / 3)
    rows = h / 2 + x.ravel() * math.sin(a) + y.ravel() * math.cos(a)
    cols = w / 2 + x.ravel() * math.cos(a) - y.ravel() * math.sin(a)
    inside = (rows >= margin) & (rows <= h - 1 - margin) & (cols >= margin) & (cols <= w - 1 - margin)
    return np.stack([rows[inside], cols[inside]], axis=1)


def _window(shape: tuple[int, ...], patch_shape: tuple[int, ...], r0: int, c0: int) -> tuple[tuple, tuple]:
    """Slices of the canvas and of a patch placed with its corner at (r0, c0), clipped at the borders."""
    h, w = shape
    rs, cs = max(r0, 0), max(c0, 0)
    re, ce = max(rs, min(h, r0 + patch_shape[0])), max(cs, min(w, c0 + patch_shape[1]))
    return (slice(rs, re), slice(cs, ce)), (slice(rs - r0, re - r0), slice(cs - c0, ce - c0))


def _stamp(canvas: np.ndarray, patch: np.ndarray, r0: int, c0: int) -> None:
    """canvas = max(canvas, patch) where the patch lies."""
    dst, src = _window(canvas.shape, patch.shape, r0, c0)
    canvas[dst] = np.maximum(canvas[dst], patch[src])


def _paint(canvas: np.ndarray, value: np.ndarray, coverage: np.ndarray, r0: int, c0: int) -> None:
    """Paint an object over the canvas, weighted by its (anti-aliased) coverage."""
    dst, src = _window(canvas.shape, value.shape, r0, c0)
    canvas[dst] = canvas[dst] * (1 - coverage[src]) + value[src] * coverage[src]


def _disk_patch(cy: float, cx: float, r: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Anti-aliased coverage and hemisphere height of a disk, in a patch whose corner is (r0, c0)."""
    r0, c0 = int(math.floor(cy - r - 2)), int(math.floor(cx - r - 2))
    size = int(math.ceil(2 * r + 5))
    yy, xx = np.ogrid[r0 : r0 + size, c0 : c0 + size]
    d = np.hypot(yy - cy, xx - cx).astype(np.float32)
    coverage = np.clip(r - d + 0.5, 0, 1)
    height = np.sqrt(np.clip(1 - (d / r) ** 2, 0, 1))
    return coverage, height, r0, c0


def _tubes(shape: tuple[int, int], paths: list[np.ndarray], widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anti-aliased coverage and cylinder height of tubes of the given widths around centre paths.

    paths: float (row, col) points about 0.5 px apart. One distance transform finds, for every pixel, the nearest
    centre-line pixel; the distance is then measured across the local tangent (sub-pixel smooth edges) and, past a path's
    end, also along it (rounded caps). Paths must stay apart by more than their widths (the placement guarantees it).
    """
    h, w = shape
    owner = np.full(shape, -1, np.int32)
    point = np.zeros((4, h, w), np.float32)  # row, col, tangent row, tangent col of the sample owning each pixel
    for k, pts in enumerate(paths):
        tangent = np.gradient(pts, axis=0)
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-9
        ij = np.rint(pts).astype(int)
        keep = (ij[:, 0] >= 0) & (ij[:, 0] < h) & (ij[:, 1] >= 0) & (ij[:, 1] < w)
        ij, pts, tangent = ij[keep], pts[keep], tangent[keep]
        owner[ij[:, 0], ij[:, 1]] = k
        point[:, ij[:, 0], ij[:, 1]] = np.concatenate([pts, tangent], axis=1).T
    if not (owner >= 0).any():
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    _, (ir, ic) = ndimage.distance_transform_edt(owner < 0, return_indices=True)
    rows, cols = np.ogrid[:h, :w]
    pr, pc, tr, tc = point[:, ir, ic]
    dr, dc = rows - pr, cols - pc
    across = np.abs(dr * tc - dc * tr)
    along = np.maximum(np.abs(dr * tr + dc * tc) - 0.5, 0)
    d = np.hypot(across, along)
    half = (np.asarray(widths, np.float32) / 2)[owner[ir, ic]]
    coverage = np.clip(half - d + 0.5, 0, 1)
    height = np.sqrt(np.clip(1 - (d / half) ** 2, 0, 1))
    return coverage, height


def _clear_of(tree: cKDTree | None, pts: np.ndarray, clearance: float) -> np.ndarray:
    """Per point: True while no placed centre-line point lies within `clearance`."""
    if tree is None:
        return np.ones(len(pts), bool)
    dist, _ = tree.query(pts, distance_upper_bound=clearance)
    return ~np.isfinite(dist)


def _base(rng: np.random.Generator, shape: tuple[int, int], level: float, texture: float) -> np.ndarray:
    """Substrate: a flat level with faint low-frequency texture."""
    return (level + texture * _smooth_field(rng, shape, rng.uniform(8, 24))).astype(np.float32)


# ------------------------------------------------------------------------------------------------- class scenes


def _particles(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """Monodisperse spheres: bright bodies with brighter rims, ordered (hexagonal), random or clustered."""
    h, w = shape
    r_mean = size_px / 2
    cv = rng.uniform(0.03, 0.12)
    gradient = rng.uniform(0.5, 0.9) * rng.choice([-1, 1]) if arrangement != "ordered" and rng.random() < 0.25 else 0.0
    if arrangement == "ordered":
        spacing = r_mean * math.sqrt(2 * math.pi / (math.sqrt(3) * rng.uniform(0.15, 0.35)))
        spacing = max(spacing, 2 * r_mean * (1 + 3 * cv) + 4)
        centres = _lattice(rng, shape, spacing, r_mean * 1.5 + 3)
        centres += rng.normal(0, 0.03 * spacing, centres.shape)
        radii = r_mean * np.clip(1 + cv * rng.standard_normal(len(centres)), 0.75, 1.25)
    else:
        # clusters read as clusters only on a sparse sample: dense random packing also has close neighbours
        fraction = rng.uniform(0.04, 0.1) if arrangement == "clustered" else rng.uniform(0.06, 0.2)
        n = max(4, round(fraction * h * w / (math.pi * r_mean**2)))
        radii0 = r_mean * np.clip(1 + cv * rng.standard_normal(n), 0.75, 1.25)
        centres, radii = _place_disks(rng, radii0, shape, arrangement, gap=4.0, size_gradient=gradient)
    background = rng.uniform(0.2, 0.35)
    signal = _base(rng, shape, background, 0.015)
    relief = np.zeros(shape, np.float32)
    coverage = np.zeros(shape, np.float32)
    sizes = []
    light = _direction(rng.uniform(0, 360))
    for (cy, cx), r, contrast in zip(centres, radii, rng.uniform(0.22, 0.4, len(radii))):
        cov, height, r0, c0 = _disk_patch(cy, cx, r)
        # directional shading from the side the detector sits on: the slope towards it is brighter
        gy, gx = np.gradient(height)
        tilt = np.clip(-(gy * light[0] + gx * light[1]) * r, -1, 1)
        body = background + contrast * (0.8 + 0.2 * height + 0.15 * tilt)
        _paint(signal, body, cov, r0, c0)
        _stamp(relief, cov * 0.6 + 0.4 * height, r0, c0)
        _stamp(coverage, cov, r0, c0)
        sizes.append(2 * math.sqrt(cov.sum() / math.pi))
    truth = dict(
        object_count=len(sizes), sizes_px=sizes, size_kind="equivalent_diameter", orientation_deg=None,
        arrangement=arrangement, size_gradient=round(gradient, 3), variant="spheres", area_fraction_map=coverage,
    )
    return Scene(signal, relief, truth)


def _powder(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """Irregular, faceted, polydisperse grains, mostly agglomerated: the look-alike of Particles."""
    h, w = shape
    fraction = rng.uniform(0.08, 0.22)
    spread = rng.uniform(0.25, 0.45)  # log-normal sigma: polydisperse
    r_median = size_px / 2
    n = max(4, round(fraction * h * w / (math.pi * r_median**2 * math.exp(2 * spread**2))))
    radii0 = np.clip(r_median * rng.lognormal(0, spread, n), max(5.0, 0.45 * r_median), 2.4 * r_median)
    gradient = rng.uniform(0.5, 0.9) * rng.choice([-1, 1]) if rng.random() < 0.2 else 0.0
    # bounding circles are 1.25 x the nominal radius (vertex jitter below), kept 4 px apart so grains never touch
    centres, bounds = _place_disks(rng, radii0 * 1.25, shape, arrangement, gap=4.0, size_gradient=gradient)
    background = rng.uniform(0.18, 0.32)
    signal = _base(rng, shape, background, 0.02)
    relief = np.zeros(shape, np.float32)
    coverage = np.zeros(shape, np.float32)
    light = _direction(rng.uniform(0, 360))
    sizes = []
    for (cy, cx), bound in zip(centres, bounds):
        r = bound / 1.25
        k = rng.integers(6, 11)
        angles = np.sort(rng.uniform(0, 2 * math.pi, k))
        radius = r * rng.uniform(0.75, 1.25, k)
        r0, c0 = int(cy - bound - 2), int(cx - bound - 2)
        size = int(2 * bound + 5)
        rr, cc = draw_polygon(cy - r0 + radius * np.sin(angles), cx - c0 + radius * np.cos(angles), (size, size))
        mask = np.zeros((size, size), bool)
        mask[rr, cc] = True
        if mask.sum() < 20:
            continue
        # a pyramid over the grain: its facets catch the detector differently (faceted shading)
        height = ndimage.distance_transform_edt(mask).astype(np.float32)
        height /= height.max()
        gy, gx = np.gradient(height)
        facet = np.clip(-(gy * light[0] + gx * light[1]) * r * 0.6, -0.15, 0.15)
        body = background + rng.uniform(0.25, 0.4) * (0.85 + 0.15 * height + facet)
        cov = mask.astype(np.float32)
        _paint(signal, body, cov, r0, c0)
        _stamp(relief, cov * (0.6 + 0.4 * height), r0, c0)
        _stamp(coverage, cov, r0, c0)
        sizes.append(2 * math.sqrt(mask.sum() / math.pi))
    truth = dict(
        object_count=len(sizes), sizes_px=sizes, size_kind="equivalent_diameter", orientation_deg=None,
        arrangement=arrangement, size_gradient=round(gradient, 3), variant="irregular_grains",
        area_fraction_map=coverage,
    )
    return Scene(signal, relief, truth)


def _tube_scene(rng: np.random.Generator, shape: tuple[int, int], paths: list[np.ndarray], widths: list[float],
                angles: list[float], lengths: list[float], aligned: bool, *, background: tuple[float, float],
                brightness: tuple[float, float], flat: float, rim: float, variants: tuple[str, str]) -> Scene:
    """Wires and fibres: render the tubes, light them (brighter towards their crest) and record their truth."""
    coverage, height = _tubes(shape, paths, np.array(widths))
    level = rng.uniform(*background)
    signal = _base(rng, shape, level, 0.02) + rng.uniform(*brightness) * coverage * (flat + rim * height)
    truth = dict(
        object_count=len(paths), sizes_px=widths, size_kind="width", lengths_px=lengths,
        orientation_deg=_axial_mean_deg(np.array(angles), np.array(lengths)) if aligned and paths else None,
        arrangement="ordered" if aligned else "random", variant=variants[0] if aligned else variants[1],
        area_fraction_map=coverage,
    )
    return Scene(signal.astype(np.float32), (0.5 * coverage + 0.5 * height).astype(np.float32), truth)


def _nanowires(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """Thin straight or slightly bowed wires, microns long, aligned ("ordered") or in random directions."""
    h, w = shape
    aligned = arrangement == "ordered"
    theta0 = rng.uniform(0, 180)
    widths_target = np.maximum(4.5, size_px * (1 + rng.uniform(0.05, 0.12) * rng.standard_normal(400)))
    fraction = rng.uniform(0.05, 0.14)
    gap = 6.0
    paths, widths, angles, lengths = [], [], [], []
    tree, covered = None, 0.0
    for wi in widths_target:
        if covered >= fraction * h * w:
            break
        length = rng.uniform(0.25, 0.75) * min(h, w) * (1.3 if aligned else 1.0)
        theta = theta0 + rng.normal(0, 3) if aligned else rng.uniform(0, 180)
        dr, dc = _direction(theta)
        centre = rng.uniform([0, 0], [h, w])
        t = np.linspace(-0.5, 0.5, max(3, int(length * 2)))[:, None]
        bow = rng.normal(0, 0.015) * length * (1 - 4 * t**2)  # slight bending, zero at the ends
        pts = centre + t * length * np.array([dr, dc]) + bow * np.array([dc, -dr])
        margin = wi + 3
        if not ((pts >= margin).all() and (pts[:, 0] <= h - 1 - margin).all() and (pts[:, 1] <= w - 1 - margin).all()):
            continue
        if not _clear_of(tree, pts[::4], wi / 2 + size_px * 0.8 + gap).all():
            continue
        paths.append(pts)
        widths.append(wi)
        angles.append(theta % 180)
        lengths.append(float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum() + wi))  # caps add half a width each end
        covered += wi * lengths[-1]
        tree = cKDTree(np.concatenate([p[::4] for p in paths]))
    return _tube_scene(rng, shape, paths, widths, angles, lengths, aligned, background=(0.2, 0.35),
                       brightness=(0.25, 0.4), flat=0.75, rim=0.25, variants=("aligned", "scattered"))


def _walk(rng: np.random.Generator, start: np.ndarray, theta: float, steps: int, curl: float) -> np.ndarray:
    """A smooth random walk of 0.5 px steps: the heading turns by a smoothed random rate (no kinks)."""
    rate = ndimage.gaussian_filter1d(rng.standard_normal(steps), 60, mode="nearest") * curl
    heading = np.deg2rad(theta) + np.cumsum(rate)
    steps_rc = 0.5 * np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    return start + np.cumsum(steps_rc, axis=0)


def _fibres(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """Long curved fibres running across the frame, in random directions or partly aligned; they do not cross."""
    h, w = shape
    aligned = arrangement == "ordered"
    theta0 = rng.uniform(0, 180)
    spread = rng.uniform(0.1, 0.3)
    curl = rng.uniform(0.01, 0.03)
    target = rng.integers(6, 20)
    paths, widths, angles, lengths = [], [], [], []
    tree = None
    steps = int(2 * math.hypot(h, w))
    for _ in range(target * 6):
        if len(paths) >= target:
            break
        wi = float(np.clip(size_px * rng.lognormal(0, spread), 6, 3 * size_px))
        theta = theta0 + rng.normal(0, 8) if aligned else rng.uniform(0, 180)
        start = rng.uniform([0, 0], [h, w])
        halves = []
        for heading in (theta, theta + 180):
            pts = _walk(rng, start, heading, steps, curl)
            inside = (pts[:, 0] >= 0) & (pts[:, 0] <= h - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= w - 1)
            end = int(np.argmin(inside)) if not inside.all() else len(pts)
            # stop short of the first placed fibre it would touch (fibres end against each other, never cross)
            clear = _clear_of(tree, pts[:end], wi / 2 + 1.5 * size_px + 6)
            if not clear.all():
                end = max(0, int(np.argmin(clear)) - int(wi * 2))
            halves.append(pts[:end])
        pts = np.concatenate([halves[1][::-1], start[None], halves[0]])
        length = float(np.linalg.norm(np.diff(pts, axis=0), axis=1).sum())
        if length < max(60.0, 8 * wi) or not _clear_of(tree, start[None], wi / 2 + 1.5 * size_px + 6).all():
            continue
        paths.append(pts)
        widths.append(wi)
        chord = pts[-1] - pts[0]
        angles.append(math.degrees(math.atan2(-chord[0], chord[1])) % 180)
        lengths.append(length)
        tree = cKDTree(np.concatenate([p[::4] for p in paths]))
    return _tube_scene(rng, shape, paths, widths, angles, lengths, aligned, background=(0.15, 0.3),
                       brightness=(0.3, 0.45), flat=0.7, rim=0.3, variants=("aligned_mat", "random_mat"))


def _biological(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """Bacteria-like rods and cocci: domed bodies with a bright membrane and a mottled interior."""
    h, w = shape
    r = size_px / 2
    rods = rng.random() < 0.7
    n = rng.integers(8, 40)
    half_lengths = r * rng.uniform(0.8, 2.5, n) if rods else np.zeros(n)
    bounds = half_lengths + r
    centres, bounds = _place_disks(rng, bounds, shape, arrangement, gap=4.0)
    background = rng.uniform(0.2, 0.32)
    signal = _base(rng, shape, background, 0.03)
    relief = np.zeros(shape, np.float32)
    coverage = np.zeros(shape, np.float32)
    mottle = 0.06 * _smooth_field(rng, shape, max(h, w) / (0.6 * r))
    sizes, lengths = [], []
    for (cy, cx), bound in zip(centres, bounds):
        ri = r * rng.uniform(0.85, 1.1)
        half = max(0.0, bound - r)
        dr, dc = _direction(rng.uniform(0, 180))
        r0, c0 = int(cy - bound - 3), int(cx - bound - 3)
        size = int(2 * bound + 7)
        yy, xx = np.ogrid[r0 : r0 + size, c0 : c0 + size]
        # distance to the rod's axis segment: a capsule (a disk when half == 0)
        along = np.clip((yy - cy) * dr + (xx - cx) * dc, -half, half)
        d = np.hypot(yy - (cy + along * dr), xx - (cx + along * dc)).astype(np.float32)
        cov = np.clip(ri - d + 0.5, 0, 1)
        dome = np.sqrt(np.clip(1 - (d / ri) ** 2, 0, 1))
        membrane = np.exp(-(((d - (ri - 1.5)) / 1.3) ** 2)) * cov
        body = background + rng.uniform(0.15, 0.3) * (0.7 + 0.3 * dome) + 0.15 * membrane
        _paint(signal, body, cov, r0, c0)
        _stamp(relief, 0.7 * dome * cov + 0.3 * cov, r0, c0)
        _stamp(coverage, cov, r0, c0)
        sizes.append(2 * math.sqrt(cov.sum() / math.pi))
        lengths.append(2 * (half + ri))
    signal += mottle * 0.5 * coverage
    truth = dict(
        object_count=len(sizes), sizes_px=sizes, size_kind="equivalent_diameter", lengths_px=lengths,
        orientation_deg=None, arrangement=arrangement, variant="rods" if rods else "cocci", area_fraction_map=coverage,
    )
    return Scene(signal, relief, truth)


def _films(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """A continuous coating: grains (Voronoi cells) with shallow boundaries, occasional cracks and pinholes."""
    h, w = shape
    grainy = rng.random() < 0.7
    n_grains = max(4, round(h * w / (math.pi * (size_px / 2) ** 2)))
    seed_id = np.full(shape, -1, np.int32)
    seed_id[rng.integers(0, h, n_grains), rng.integers(0, w, n_grains)] = np.arange(n_grains)
    _, (ir, ic) = ndimage.distance_transform_edt(seed_id < 0, return_indices=True)
    grain = seed_id[ir, ic]  # every pixel labelled by its nearest seed: Voronoi grains
    boundary = (np.diff(grain, axis=0, prepend=grain[:1]) != 0) | (np.diff(grain, axis=1, prepend=grain[:, :1]) != 0)
    areas = np.bincount(grain.ravel(), minlength=n_grains)
    areas = areas[areas > 0]  # seeds that landed on the same pixel make one grain
    level = rng.uniform(0.35, 0.5)
    tone = rng.normal(0, 0.035 if grainy else 0.01, n_grains).astype(np.float32)[grain]
    signal = _base(rng, shape, level, 0.03) + tone
    signal -= (0.06 if grainy else 0.02) * boundary
    relief = (-0.25 if grainy else -0.08) * boundary.astype(np.float32)
    defects = np.zeros(shape, np.float32)
    n_cracks, n_pinholes = int(rng.integers(0, 3)), int(rng.integers(0, 12))
    for _ in range(n_cracks):
        pts = _walk(rng, rng.uniform([0, 0], [h, w]), rng.uniform(0, 360), int(rng.uniform(0.3, 1.0) * max(h, w)), 0.08)
        cov, _ = _tubes(shape, [pts], np.array([rng.uniform(1.5, 3.5)]))
        defects = np.maximum(defects, cov)
    for _ in range(n_pinholes):
        cov, _, r0, c0 = _disk_patch(rng.uniform(0, h), rng.uniform(0, w), rng.uniform(2, 6))
        _stamp(defects, cov, r0, c0)
    signal = signal * (1 - 0.75 * defects)
    relief -= defects
    truth = dict(
        object_count=None, sizes_px=2 * np.sqrt(areas / math.pi), size_kind="grain_diameter",
        orientation_deg=None, arrangement="random", porosity=float((defects > 0.5).mean()),
        crack_count=n_cracks, pinhole_count=n_pinholes, grain_count=int(len(areas)),
        variant="grainy" if grainy else "smooth",
    )
    return Scene(signal, relief, truth)


def _sponge(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """An open pore network: overlapping pores (a Boolean model) leave thin bright walls; pore floors are dark."""
    h, w = shape
    porosity = rng.uniform(0.45, 0.7)
    spread = rng.uniform(0.15, 0.35)
    r_median = size_px / 2
    n = max(4, round(-math.log(1 - porosity) * h * w / (math.pi * r_median**2 * math.exp(2 * spread**2))))
    depth = np.zeros(shape, np.float32)
    diameters = []
    for cy, cx, r in zip(rng.uniform(0, h, n), rng.uniform(0, w, n), r_median * rng.lognormal(0, spread, n)):
        cov, dome, r0, c0 = _disk_patch(cy, cx, max(r, 3.0))
        _stamp(depth, np.maximum(cov, 0) * (0.4 + 0.6 * dome), r0, c0)
        diameters.append(2 * max(r, 3.0))
    level = rng.uniform(0.4, 0.55)
    signal = _base(rng, shape, level, 0.03) * (1 - 0.85 * depth)
    truth = dict(
        object_count=None, sizes_px=diameters, size_kind="pore_diameter", orientation_deg=None,
        arrangement="random", porosity=float((depth > 0.2).mean()), pore_count=len(diameters), variant="open_cell",
    )
    return Scene(signal.astype(np.float32), -depth, truth)


def _patterned(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """A regular lattice of pillars or holes, or a line grating, slightly rotated, with a few missing features."""
    h, w = shape
    variant = str(rng.choice(["pillars", "holes", "lines"]))
    pitch = size_px * rng.uniform(1.6, 3.0)
    angle = rng.uniform(-20, 20) if rng.random() < 0.5 else 0.0
    rows, cols = np.mgrid[:h, :w].astype(np.float32)
    a = math.radians(angle)
    u = cols * math.cos(a) - rows * math.sin(a)  # along the lattice's first axis (screen angle `angle`)
    v = cols * math.sin(a) + rows * math.cos(a)
    if variant == "lines":
        index = np.rint(v / pitch)
        d = np.abs(v - index * pitch)
        site = index.astype(np.int64)
    else:
        # a square lattice (hexagonal packing is Particles' "ordered"): nearest site and the distance to it
        iu, iv = np.rint(u / pitch), np.rint(v / pitch)
        d = np.hypot(u - iu * pitch, v - iv * pitch)
        site = (iu.astype(np.int64) + 100_000) * 1_000_000 + iv.astype(np.int64)
        # only whole features: drop sites whose feature would be cut by the frame
        cy = (iu * pitch * -math.sin(a) + iv * pitch * math.cos(a))
        cx = (iu * pitch * math.cos(a) + iv * pitch * math.sin(a))
        r = size_px / 2 + 2
        whole = (cy >= r) & (cy <= h - 1 - r) & (cx >= r) & (cx <= w - 1 - r)
    coverage = np.clip(size_px / 2 - d + 0.5, 0, 1)
    if variant != "lines":
        coverage *= whole
    ids, inverse = np.unique(site, return_inverse=True)
    missing = rng.random(len(ids)) < rng.uniform(0, 0.03)
    coverage *= ~missing[inverse.reshape(shape)]
    drawn = np.unique(site[coverage > 0.5])
    level = rng.uniform(0.25, 0.38)
    contrast = rng.uniform(0.25, 0.4) * (-0.8 if variant == "holes" else 1)
    height = np.sqrt(np.clip(1 - (d / (size_px / 2)) ** 2, 0, 1)) * coverage
    signal = _base(rng, shape, level, 0.015) + contrast * coverage * (0.85 + 0.15 * height)
    relief = (coverage * 0.6 + 0.4 * height) * (-1 if variant == "holes" else 1)
    truth = dict(
        object_count=int(len(drawn)), sizes_px=[size_px] * len(drawn), size_kind="line_width" if variant == "lines" else "feature_diameter",
        orientation_deg=angle % 180 if variant == "lines" else None, arrangement="ordered", variant=variant,
        pitch_px=pitch, area_fraction_map=coverage,
    )
    return Scene(signal.astype(np.float32), relief.astype(np.float32), truth)


def _mems(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """Metal electrodes on a substrate at low magnification: an interdigitated comb or an array of pads with traces."""
    h, w = shape
    vertical = rng.random() < 0.5
    ch, cw = (h, w) if vertical else (w, h)  # draw fingers vertical on a canvas, transposed for horizontal ones
    metal = np.zeros((ch, cw), np.float32)
    fw = int(round(size_px))
    variant = str(rng.choice(["comb", "pads"]))
    if variant == "comb":
        space = int(fw * rng.uniform(0.8, 2.0))
        bus = int(fw * rng.uniform(1.5, 3))
        top, bottom = int(ch * rng.uniform(0.05, 0.2)), int(ch * rng.uniform(0.8, 0.95))
        left, right = int(cw * rng.uniform(0.03, 0.15)), int(cw * rng.uniform(0.85, 0.97))
        metal[top : top + bus, left:right] = 1
        metal[bottom - bus : bottom, left:right] = 1
        gap = int(fw * rng.uniform(1, 2.5))
        n = 0
        for x in range(left + space, right - fw - space, fw + space):
            if n % 2 == 0:
                metal[top + bus : bottom - bus - gap, x : x + fw] = 1  # finger from the top bus
            else:
                metal[top + bus + gap : bottom - bus, x : x + fw] = 1  # interleaved finger from the bottom bus
            n += 1
        widths = [fw] * n
    else:
        pitch = int(fw * rng.uniform(2.5, 4))
        n = 0
        for y in range(int(ch * 0.15), int(ch * 0.85) - fw, pitch):
            for x in range(int(cw * 0.15), int(cw * 0.85) - fw, pitch):
                metal[y : y + fw, x : x + fw] = 1
                n += 1
        widths = [fw] * n
    metal = metal if vertical else metal.T.copy()
    substrate = rng.uniform(0.15, 0.3)
    signal = _base(rng, shape, substrate, 0.025) + rng.uniform(0.3, 0.5) * metal
    truth = dict(
        object_count=n, sizes_px=widths, size_kind="finger_width" if variant == "comb" else "pad_width",
        orientation_deg=(90.0 if vertical else 0.0) if variant == "comb" else None, arrangement="ordered",
        variant=variant, area_fraction_map=metal,
    )
    return Scene(signal.astype(np.float32), metal, truth)


def _tips(rng: np.random.Generator, shape: tuple[int, int], size_px: float, arrangement: str) -> Scene:
    """A conical tip or a fine needle with a rounded apex, coming in from outside the frame."""
    h, w = shape
    variant = str(rng.choice(["cone", "needle"]))
    half_angle = rng.uniform(8, 22) if variant == "cone" else rng.uniform(1, 3)
    r_apex = size_px / 2
    axis = rng.uniform(0, 360)  # direction from the apex back towards the base
    apex = np.array([rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w])
    dr, dc = _direction(axis)
    rows, cols = np.ogrid[:h, :w]
    u = (rows - apex[0]) * dr + (cols - apex[1]) * dc  # distance from the apex along the axis
    v = (rows - apex[0]) * dc - (cols - apex[1]) * dr  # distance across the axis
    half_width = r_apex + np.maximum(u, 0) * math.tan(math.radians(half_angle))
    d_side = (np.abs(v) - half_width) * math.cos(math.radians(half_angle))
    cone = np.where(u >= 0, np.clip(0.5 - d_side, 0, 1), 0)
    cap = np.clip(r_apex - np.hypot(u, v) + 0.5, 0, 1)
    coverage = np.maximum(cone, cap).astype(np.float32)
    height = np.sqrt(np.clip(1 - (v / half_width) ** 2, 0, 1)) * coverage
    background = rng.uniform(0.15, 0.3)
    shade = 0.75 + 0.25 * np.sign(v) * np.sqrt(np.clip(1 - height**2, 0, 1)) * rng.choice([-1, 1])
    signal = _base(rng, shape, background, 0.012) + rng.uniform(0.3, 0.45) * coverage * (0.7 + 0.3 * height) * shade
    truth = dict(
        object_count=1, sizes_px=[2 * r_apex], size_kind="apex_diameter", orientation_deg=axis % 180,
        arrangement="random", variant=variant, cone_half_angle_deg=round(half_angle, 2), area_fraction_map=coverage,
    )
    return Scene(signal.astype(np.float32), (0.5 * coverage + 0.5 * height).astype(np.float32), truth)


SCENES = {
    "Biological": _biological,
    "Fibres": _fibres,
    "Films_Coated_Surface": _films,
    "MEMS_devices_and_electrodes": _mems,
    "Nanowires": _nanowires,
    "Particles": _particles,
    "Patterned_surface": _patterned,
    "Porous_Sponge": _sponge,
    "Powder": _powder,
    "Tips": _tips,
}
# which arrangements each class draws from (the others are fixed by what the class is)
CLASS_ARRANGEMENTS = {
    "Particles": ("ordered", "random", "clustered"),
    "Powder": ("clustered", "clustered", "random"),
    "Biological": ("random", "clustered"),
    "Nanowires": ("ordered", "ordered", "random"),
    "Fibres": ("random", "random", "ordered"),
}


# ----------------------------------------------------------------------------------------------- the microscope


def _microscope(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """SE image of a scene: edge brightening, uneven illumination, probe blur, shot noise -> uint8."""
    shape = scene.signal.shape
    relief = ndimage.gaussian_filter(scene.relief, 1.0)
    # Sobel is 8x the per-pixel slope; a unit step blurred with sigma 1 has a peak slope of 0.4. The tilted surface
    # that emits more electrons belongs to the object, so the bright rim is kept on the object's side of the edge.
    slope = np.hypot(ndimage.sobel(relief, 0), ndimage.sobel(relief, 1)) / 8 * (scene.relief != 0)
    image = scene.signal + rng.uniform(0.12, 0.25) * np.minimum(slope / 0.4, 1.5)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    rows, cols = rows.astype(np.float32), cols.astype(np.float32)
    tilt = rng.uniform(0.04, 0.15)
    ramp_angle = rng.uniform(0, 2 * math.pi)
    ramp = (math.cos(ramp_angle) * (cols / shape[1] - 0.5) + math.sin(ramp_angle) * (rows / shape[0] - 0.5)) * 2
    illumination = 1 + tilt * ramp + rng.uniform(0.02, 0.06) * _smooth_field(rng, shape, 3)
    image = ndimage.gaussian_filter(image * illumination, rng.uniform(0.6, 1.1))
    photons = rng.uniform(40, 150)  # electrons per pixel at full white: sets the shot noise
    noise = rng.standard_normal(shape, dtype=np.float32)
    image = image + noise * np.sqrt(np.clip(image, 0, None) / photons + 0.008**2)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------- the info bar


@dataclass(frozen=True)
class Instrument:
    magnification: float
    nm_per_pixel: float
    scale_bar_nm: float
    scale_bar_px: int
    eht_kv: float
    wd_mm: float


def _instrument(rng: np.random.Generator, spec: ClassScale, width: int) -> tuple[Instrument, float]:
    """Magnification and scale for one image; returns them and the feature size to draw, in pixels.

    The feature's physical size and its drawn size are both sampled; the magnification follows, is rounded as a data
    bar prints it, and the pixel size is recomputed from the rounded value so that everything stays consistent.
    """
    size_nm = math.exp(rng.uniform(math.log(spec.size_nm[0]), math.log(spec.size_nm[1])))
    size_px = rng.uniform(*spec.size_px)
    mag = DISPLAY_WIDTH_NM / (width * size_nm / size_px)
    mag = round(mag, -1) if mag >= 1000 else float(round(mag))
    nm_per_pixel = DISPLAY_WIDTH_NM / (mag * width)
    # scale bar: the 1-2-5 length closest to a fifth of the image width
    target = 0.2 * width * nm_per_pixel
    candidates = [m * 10**e for e in range(-1, 8) for m in (1, 2, 5)]
    bar_nm = float(min(candidates, key=lambda c: abs(math.log(c / target))))
    instrument = Instrument(
        magnification=mag, nm_per_pixel=nm_per_pixel, scale_bar_nm=bar_nm,
        scale_bar_px=int(round(bar_nm / nm_per_pixel)), eht_kv=round(rng.uniform(*spec.eht_kv), 2),
        wd_mm=round(rng.uniform(2.0, 12.0), 1),
    )
    return instrument, size_nm / nm_per_pixel


# Info-bar styles, so that reading the scale from the bar (maemi.measure.scalebar) is exercised on more than one look:
# fonts that matplotlib ships (a pinned dependency, so the bytes are the same on every machine) and Pillow's own.
INFO_BAR_FONTS: tuple[str, ...] = (
    "pillow-default", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf",
    "STIXGeneral.ttf",
)
BAR_STYLES: tuple[str, ...] = ("solid", "ticks")  # a filled bar, or a thin line with end ticks
LABEL_PLACES: tuple[str, ...] = ("above", "below", "right")
MICRO_SPELLINGS: tuple[str, ...] = ("µm", "μm", "um")  # micro sign, Greek mu, ASCII


@dataclass(frozen=True)
class InfoBarStyle:
    font: str
    font_fraction: float  # text height as a fraction of the bar height
    bar_style: str
    label_place: str
    micro: str  # how "µm" is spelled
    space: bool  # "200 nm" or "200nm"


def _info_bar_style(rng: np.random.Generator) -> InfoBarStyle:
    return InfoBarStyle(
        font=str(rng.choice(INFO_BAR_FONTS)), font_fraction=float(rng.uniform(0.22, 0.32)),
        bar_style=str(rng.choice(BAR_STYLES)), label_place=str(rng.choice(LABEL_PLACES)),
        micro=str(rng.choice(MICRO_SPELLINGS)), space=bool(rng.random() < 0.7),
    )


def format_length_label(nm: float, micro: str = "um", space: bool = True) -> str:
    """A scale-bar label: "200 nm", "5 µm", "2um"."""
    value, unit = (nm, "nm") if nm < 1000 else (nm / 1000, micro)
    return f"{value:g}{' ' if space else ''}{unit}"


def format_magnification(mag: float) -> str:
    """As SEM data bars print it: "Mag = 11.00 K X", or "Mag = 250 X" below a thousand."""
    return f"Mag = {mag / 1000:.2f} K X" if mag >= 1000 else f"Mag = {mag:.0f} X"


@lru_cache(maxsize=64)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    if name == "pillow-default":
        return ImageFont.load_default(size=size)
    import matplotlib  # its fonts only; pyplot is not imported

    fonts = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")
    return ImageFont.truetype(os.path.join(fonts, name), size)


def _with_info_bar(micrograph: np.ndarray, bar_height: int, instrument: Instrument, style: InfoBarStyle
                   ) -> tuple[np.ndarray, str]:
    """Append the near-black data bar under the micrograph: scale bar and its label, magnification, EHT, WD.
    Returns the image and the scale bar's label as drawn."""
    h, w = micrograph.shape
    image = Image.new("L", (w, h + bar_height), INFO_BAR_LEVEL)
    image.paste(Image.fromarray(micrograph), (0, 0))
    draw = ImageDraw.Draw(image)
    font = _font(style.font, max(8, round(bar_height * style.font_fraction)))
    # Pillow's built-in font has no micro sign or Greek mu: it gets "um".
    micro = style.micro if style.font != "pillow-default" else "um"
    label = format_length_label(instrument.scale_bar_nm, micro, style.space)
    top, x0, bar_px = h, round(0.03 * w), instrument.scale_bar_px
    left, text_top, right, text_bottom = draw.textbbox((0, 0), label, font=font)
    label_w, label_h = right - left, text_bottom - text_top
    line_h = max(2, bar_height // 14) if style.bar_style == "solid" else max(1, bar_height // 35)
    if style.label_place == "above":
        y_bar = top + round(0.68 * bar_height)
        label_xy = (x0 + (bar_px - label_w) / 2 - left, top + 0.14 * bar_height - text_top)
    elif style.label_place == "below":
        y_bar = top + round(0.22 * bar_height)
        label_xy = (x0 + (bar_px - label_w) / 2 - left, top + 0.45 * bar_height - text_top)
    else:  # right of the bar, on its line
        y_bar = top + round(0.5 * bar_height)
        label_xy = (x0 + bar_px + 0.4 * label_h - left, y_bar + line_h / 2 - label_h / 2 - text_top)
    draw.text(label_xy, label, fill=255, font=font)
    draw.rectangle([x0, y_bar, x0 + bar_px - 1, y_bar + line_h - 1], fill=255)
    if style.bar_style == "ticks":
        tick = max(3, round(0.12 * bar_height))
        for x in (x0, x0 + bar_px - 1 - line_h + 1):
            draw.rectangle([x, y_bar - tick, x + line_h - 1, y_bar + line_h - 1 + tick], fill=255)
    label_right = label_xy[0] + left + label_w if style.label_place == "right" else 0
    rows = (top + 0.15 * bar_height, top + 0.55 * bar_height)
    x1 = max(x0 + bar_px + 0.04 * w, label_right + 0.04 * w, 0.32 * w)
    x2 = max(0.64 * w, x1 + 0.3 * w)
    draw.text((x1, rows[0]), f"EHT = {instrument.eht_kv:.2f} kV", fill=255, font=font)
    draw.text((x1, rows[1]), f"WD = {instrument.wd_mm:.1f} mm", fill=255, font=font)
    draw.text((x2, rows[0]), format_magnification(instrument.magnification), fill=255, font=font)
    draw.text((x2, rows[1]), "Signal A = SE2", fill=255, font=font)
    return np.asarray(image), label


# ------------------------------------------------------------------------------------------------------- public API


def _mean_std(values: list[float] | np.ndarray, scale: float) -> tuple[float | None, float | None]:
    values = np.asarray(values, float) * scale
    if values.size == 0:
        return None, None
    return float(values.mean()), float(values.std())


def make_micrograph(
    class_name: str,
    seed: int,
    index: int = 0,
    *,
    width: int = 1024,
    height: int = 768,
    arrangement: str | None = None,
) -> tuple[np.ndarray, dict]:
    """One synthetic micrograph: uint8 [height, width] with its info bar, and its ground truth (no "path").

    The generator is seeded by (seed, class index, index), so an image does not depend on which others are made.
    `arrangement` forces one of ARRANGEMENTS where the class varies it (Particles, Powder, Biological; for Nanowires
    and Fibres "ordered" means aligned).
    """
    if class_name not in SCENES:
        raise ValueError(f"unknown class {class_name!r}; the classes are: {', '.join(SEM_CLASSES)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}")
    if width < 64 or height < 64:
        raise ValueError(f"image size must be at least 64x64, got {width}x{height}")
    if arrangement is not None and arrangement not in ARRANGEMENTS:
        raise ValueError(f"unknown arrangement {arrangement!r}; choose one of {', '.join(ARRANGEMENTS)}")
    rng = np.random.default_rng([seed, SEM_CLASSES.index(class_name), index])
    bar_height = round(INFO_BAR_FRACTION * height)
    shape = (height - bar_height, width)
    instrument, size_px = _instrument(rng, CLASS_SCALES[class_name], width)
    drawn_arrangement = str(rng.choice(CLASS_ARRANGEMENTS.get(class_name, ("random",))))
    scene = SCENES[class_name](rng, shape, size_px, arrangement or drawn_arrangement)
    micrograph = _microscope(scene, rng)
    # The info bar's look has its own generator, so that it does not change the micrograph drawn above it.
    style = _info_bar_style(np.random.default_rng([seed, SEM_CLASSES.index(class_name), index, 1]))
    image, label = _with_info_bar(micrograph, bar_height, instrument, style)

    truth, npp = scene.truth, instrument.nm_per_pixel
    size_mean, size_std = _mean_std(truth.pop("sizes_px"), npp)
    length_mean, _ = _mean_std(truth.pop("lengths_px", []), npp)
    coverage = truth.pop("area_fraction_map", None)
    area_fraction = None if "porosity" in truth else float((coverage > 0.5).mean())
    record = {
        "class": class_name,
        "width": width,
        "height": height,
        "info_bar_height_px": bar_height,
        "magnification": instrument.magnification,
        "magnification_label": format_magnification(instrument.magnification),
        "nm_per_pixel": npp,
        "scale_bar_nm": instrument.scale_bar_nm,
        "scale_bar_px": instrument.scale_bar_px,
        "scale_bar_label": label,
        "eht_kv": instrument.eht_kv,
        "wd_mm": instrument.wd_mm,
        "object_count": truth.pop("object_count"),
        "size_mean_nm": size_mean,
        "size_std_nm": size_std,
        "size_kind": truth.pop("size_kind"),
        "length_mean_nm": length_mean,
        "orientation_deg": truth.pop("orientation_deg"),
        "area_fraction": area_fraction,
        "porosity": truth.pop("porosity", None),
        "arrangement": truth.pop("arrangement"),
        "seed": seed,
        "index": index,
    }
    if "pitch_px" in truth:
        truth["pitch_nm"] = truth.pop("pitch_px") * npp
    record.update(truth)  # class-specific extras: variant, size_gradient, crack_count, ...
    return image, _rounded(record)


def _rounded(record: dict) -> dict:
    """Six significant digits: readable JSON, and the same text on every machine."""
    return {k: float(f"{v:.6g}") if isinstance(v, float) else v for k, v in record.items()}


def _png_bytes(image: np.ndarray) -> bytes:
    """Lossless grey PNG with fixed options and no text or time chunks: the same pixels give the same bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _write_micrograph(job: tuple) -> dict:
    out, class_name, seed, i, width, height = job
    image, record = make_micrograph(class_name, seed, i, width=width, height=height)
    name = f"{class_name.lower()}_{i:04d}.png"
    atomic_write_bytes(out / class_name / name, _png_bytes(image))
    return {"path": f"{class_name}/{name}", **record}


def synthesize(
    out: Path,
    per_class: int,
    seed: int,
    classes: list[str] | None = None,
    *,
    width: int = 1024,
    height: int = 768,
    workers: int | None = None,
) -> list[dict]:
    """Write OUT/<class>/<class lower>_<i>.png for each class and OUT/metadata.jsonl; return the metadata records.
    `workers` processes make the images (default: one per CPU core); the output does not depend on it."""
    out = Path(out)
    classes = list(SEM_CLASSES) if classes is None else list(classes)
    unknown = [c for c in classes if c not in SEM_CLASSES]
    if unknown:
        raise ValueError(f"unknown class(es) {', '.join(unknown)}; the classes are: {', '.join(SEM_CLASSES)}")
    if not classes:
        raise ValueError("no classes to synthesise")
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    jobs = [(out, class_name, seed, i, width, height) for class_name in classes for i in range(per_class)]
    for class_name in classes:
        (out / class_name).mkdir(parents=True, exist_ok=True)
    # Each image has its own seed, so the images can be made in any order, by several processes, with the same bytes.
    workers = min(os.cpu_count() or 1, len(jobs)) if workers is None else workers
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            records = list(pool.map(_write_micrograph, jobs, chunksize=4))
    else:
        records = [_write_micrograph(job) for job in jobs]
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    atomic_write_bytes(out / "metadata.jsonl", lines.encode("utf-8"))
    return records
