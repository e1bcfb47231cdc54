"""Synthetic micrographs with exact instance masks, to train the learned instance segmenter (maemi.measure.segmenter).

The segmenter must work on real micrographs it never saw, so the scenes teach the physics that makes real ones hard,
with broad random ranges rather than a fit to any file:

- stem_particles: HAADF-STEM of heavy-metal particles (Pt, Pd, Cu, Ru) on a light support. Intensity grows with the
  projected thickness times about Z^2 (Pennycook, Ultramicroscopy 30, 58, 1989), so a sphere's profile is the chord
  length sqrt(1 - rho^2), overlaps add, the support is a cloudy 1/f^beta thickness field with vacuum around it, and a
  small particle on thick support is faint. A share is inverted, as bright-field TEM shows the same sample.
- sem_clusters: agglomerated / sintered powders in secondary-electron contrast: the SE yield grows with the local
  surface tilt, so edges are bright and centres darker (Goldstein et al., Scanning Electron Microscopy and X-ray
  Microanalysis, ch. 5); a particle hides what lies below it; soft shadows next to particles.
- fibres: a mat of long curved fibres; the top one owns the crossings, lower layers are darker.
- nanowires: a tilted view of a (rotated, jittered, gappy) lattice of standing wires, each a bright rod with a round
  droplet at one end, plus "parasitic" crystals: blobs, short thick rods, lying and kinked wires.
- empty: hard negatives with no objects at all: blank, noise, gradients, bare support, fringes, charging streaks.

Degradations (noise from clean to very noisy, scan lines, charging, drift, gradients, local and global blur,
gamma/contrast, JPEG) touch the image only, never the instance mask.

Masks are exact: an object owns the pixels inside its geometric border (signed distance > 0); where objects overlap,
the one drawn last (on top) owns them; ids are 1..n with no gaps, every id has pixels, and slivers of a few pixels
left by occlusion are dropped. Same seed, same bytes. Objects are stamped in small patches, so a 256x256 scene takes a
few milliseconds to a few tens of them.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from maemi.fileio import atomic_write_bytes, atomic_write_text
from maemi.seeds import derived_seed

KINDS = ("stem_particles", "sem_clusters", "fibres", "nanowires", "empty")
KIND_SHARES = (0.34, 0.20, 0.12, 0.20, 0.14)  # scene_batch's fixed mix; STEM particles are the main use
CLASSES = ("particle", "nanowire", "parasitic", "fibre")
MIN_VISIBLE_PX = 4  # an occluded object with fewer visible pixels is a sliver nobody could segment: dropped


@dataclass
class Scene:
    image: np.ndarray  # [H, W] float32 grey in [0, 1]
    instances: np.ndarray  # [H, W] int32: 0 background, 1..n; the object on top owns overlaps
    classes: list[str]  # classes[i - 1] is the class of instance i
    kind: str


# ---------------------------------------------------------------------------------------------------------------------
# random fields


def _log_uniform(rng, lo: float, hi: float, size=None):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), size))


def _fractal(rng, shape, beta: float, cutoff: float = 0.5) -> np.ndarray:
    """Zero-mean, unit-std noise with a 1/f^beta power spectrum (beta 2-4: clouds; 1: fine texture), low-passed at
    `cutoff` cycles/px. One FFT: cheaper than summing blurred octaves."""
    H, W = shape
    fy = np.fft.fftfreq(H)[:, None]
    fx = np.fft.rfftfreq(W)[None, :]
    f = np.sqrt(fy * fy + fx * fx)
    f[0, 0] = 1.0
    filt = f ** (-beta / 2) * np.exp(-((f / cutoff) ** 2))
    filt[0, 0] = 0.0
    spec = np.fft.rfft2(rng.standard_normal(shape)) * filt
    out = np.fft.irfft2(spec, s=shape)
    return ((out - out.mean()) / (out.std() + 1e-12)).astype(np.float32)


def _ramp(rng, shape) -> np.ndarray:
    """A unit linear ramp in a random direction, in [-1, 1]."""
    H, W = shape
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    r = (xx - W / 2) * math.cos(a) + (yy - H / 2) * math.sin(a)
    return r / (np.abs(r).max() + 1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# shapes: every object is a patch of signed distance s (px, > 0 inside) and normalised radius rho (0 centre, 1 edge)


def _grid(cy: float, cx: float, half: float, shape):
    """Absolute pixel coordinates of the square patch around (cy, cx), clipped to the image; None when outside."""
    H, W = shape
    y0, y1 = max(int(cy - half), 0), min(int(cy + half) + 2, H)
    x0, x1 = max(int(cx - half), 0), min(int(cx + half) + 2, W)
    if y0 >= y1 or x0 >= x1:
        return None
    return np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]


def _box_grid(pts: np.ndarray, pad: float, shape):
    """Like _grid, for the bounding box of points [K, 2] (y, x)."""
    H, W = shape
    y0, y1 = max(int(pts[:, 0].min() - pad), 0), min(int(pts[:, 0].max() + pad) + 2, H)
    x0, x1 = max(int(pts[:, 1].min() - pad), 0), min(int(pts[:, 1].max() + pad) + 2, W)
    if y0 >= y1 or x0 >= x1:
        return None
    return np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]


def _random_outline(rng, faceted: float, lumpy: float, aspect_max: float) -> dict:
    """Parameters of a star-shaped outline: round to polygonal (faceted), with low harmonics (lumpy), elongated."""
    return dict(
        aspect=rng.uniform(1.0, aspect_max),
        angle=rng.uniform(0, math.pi),
        facets=int(rng.integers(3, 9)) if rng.random() < faceted else 0,
        facet_phase=rng.uniform(0, 2 * math.pi),
        facet_mix=rng.uniform(0.5, 1.0),
        harmonics=[(k, rng.normal(0, lumpy / k), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4, 5)] if lumpy else [],
    )


def _blob(yy, xx, cy: float, cx: float, r: float, o: dict):
    """Signed distance and rho of a star-shaped blob of radius r (its major semi-axis) with outline `o`."""
    dy, dx = yy - cy, xx - cx
    c, s = math.cos(o["angle"]), math.sin(o["angle"])
    u = dx * c + dy * s
    v = (dy * c - dx * s) * o["aspect"]
    d = np.sqrt(u * u + v * v)
    rt = np.ones_like(d)
    if o["facets"] or o["harmonics"]:
        th = np.arctan2(v, u)
        if o["facets"]:
            seg = 2 * math.pi / o["facets"]
            t = np.mod(th - o["facet_phase"], seg) - seg / 2  # polygon radius: apothem / cos(angle off the normal)
            rt = o["facet_mix"] * math.cos(seg / 2) / np.cos(t) + (1 - o["facet_mix"])
        for k, a, p in o["harmonics"]:
            rt = rt + a * np.cos(k * th + p)
        rt = np.maximum(rt, 0.3)
    R = r * rt
    return (R - d) / o["aspect"] ** 0.5, d / R  # the aspect divisor keeps the edge width near one pixel scale


def _chain(yy, xx, pts: np.ndarray, hw: float):
    """Signed distance and rho of a polyline pts [K, 2] (y, x) of half-width hw: segments stamped one by one so a
    long fibre costs its length, not its bounding box."""
    d = np.full((yy.shape[0], xx.shape[1]), np.inf, np.float32)
    Y0, X0 = yy[0, 0], xx[0, 0]
    pad = hw + 4
    for a, b in zip(pts[:-1], pts[1:]):
        ys = slice(max(int(min(a[0], b[0]) - pad - Y0), 0), max(int(max(a[0], b[0]) + pad - Y0) + 2, 0))
        xs = slice(max(int(min(a[1], b[1]) - pad - X0), 0), max(int(max(a[1], b[1]) + pad - X0) + 2, 0))
        sy, sx = yy[ys], xx[:, xs]
        if sy.size == 0 or sx.size == 0:
            continue
        ab = b - a
        t = np.clip(((sy - a[0]) * ab[0] + (sx - a[1]) * ab[1]) / (ab @ ab + 1e-9), 0, 1)
        dist = np.hypot(sy - a[0] - t * ab[0], sx - a[1] - t * ab[1])
        np.minimum(d[ys, xs], dist, out=d[ys, xs])
    return hw - d, d / hw


def _walk(rng, start, angle: float, length: float, step: float, wiggle: float) -> np.ndarray:
    """A smooth random path: the heading does a random walk with per-step sd `wiggle` (radians)."""
    n = max(int(length / step), 1)
    heading = angle + np.cumsum(rng.normal(0, wiggle, n))
    steps = step * np.stack([np.sin(heading), np.cos(heading)], 1)
    return np.concatenate([[start], start + np.cumsum(steps, 0)]).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# the canvas: image plus exact instance ids


class _Canvas:
    def __init__(self, background: np.ndarray):
        self.img = background.astype(np.float32)
        self.inst = np.zeros(background.shape, np.int32)
        self.classes: list[str] = []
        self.invert = False  # map the finished image to 1 - image (dark objects on bright)
        self.streaks = False  # force charging streaks (an empty scene of that variant)
        self.gentle = False  # objects of a few pixels: spare them the noisiest draws, or nobody could see them

    def paint(self, yy, xx, s, value, cls: str, edge: float = 0.7, additive: bool = False, shadow: float = 0.0,
              shadow_px: float = 3.0):
        """Draw an object: alpha from the signed distance (soft edge of ~`edge` px), `value` the intensity inside.
        additive: transmission (STEM), overlaps sum; otherwise the object hides what is below it (SEM)."""
        sl = (slice(int(yy[0, 0]), int(yy[-1, 0]) + 1), slice(int(xx[0, 0]), int(xx[0, -1]) + 1))
        inside = s > 0
        if not inside.any():
            return
        img = self.img[sl]
        if shadow > 0:  # a soft dark ring just outside: the SE signal is partly blocked near a raised object
            ring = np.clip(1 + s / shadow_px, 0, 1) * (s < 0)
            img *= 1 - shadow * ring
        a = np.clip(s / edge + 0.5, 0, 1)
        if additive:
            img += a * value
        else:
            img += a * (value - img)
        self.classes.append(cls)
        self.inst[sl][inside] = len(self.classes)

    def finish(self) -> tuple[np.ndarray, list[str]]:
        """Drop ids with fewer than MIN_VISIBLE_PX visible pixels and renumber 1..n in drawing order."""
        counts = np.bincount(self.inst.ravel(), minlength=len(self.classes) + 1)
        keep = np.flatnonzero(counts[1:] >= MIN_VISIBLE_PX) + 1
        lut = np.zeros(len(self.classes) + 1, np.int32)
        lut[keep] = np.arange(1, len(keep) + 1, dtype=np.int32)
        return lut[self.inst], [self.classes[i - 1] for i in keep]


def _sem_value(rho, base: float, rim: float, power: float):
    """SE contrast of a convex body: brighter where the surface tilts away, i.e. towards the outline."""
    return base + rim * np.clip(rho, 0, 1) ** power


# ---------------------------------------------------------------------------------------------------------------------
# scene kinds: each draws a canvas on its own physical scale; _degrade maps it to [0, 1]


def _support(rng, shape):
    """A cloudy light-element support with vacuum around it: (thickness field, coverage mask in [0, 1])."""
    cover = rng.uniform(0.25, 1.0) if rng.random() < 0.8 else 1.0
    low = _fractal(rng, shape, beta=rng.uniform(3.0, 4.0), cutoff=0.05)
    thr = np.quantile(low, 1 - cover) if cover < 1 else low.min() - 1
    mask = np.clip((low - thr) / rng.uniform(0.05, 0.4), 0, 1)
    lumps = _fractal(rng, shape, beta=rng.uniform(1.5, 3.0), cutoff=rng.uniform(0.1, 0.4))
    thick = mask * np.clip(1 + rng.uniform(0.1, 0.45) * lumps, 0.05, None)
    if rng.random() < 0.3:  # lattice fringes of a crystalline support, in patches
        H, W = shape
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        a, period = rng.uniform(0, math.pi), rng.uniform(2.5, 7)
        stripes = np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period + rng.uniform(0, 6.3))
        patch = np.clip(_fractal(rng, shape, 3.5, 0.05) + rng.uniform(-0.5, 1.0), 0, 1)
        thick = thick * (1 + rng.uniform(0.05, 0.3) * stripes * patch)
    return thick, mask


def _stem_particles(rng, shape) -> _Canvas:
    H, W = shape
    thick, mask = _support(rng, shape)
    support = rng.uniform(0.15, 0.6)
    canvas = _Canvas(rng.uniform(0, 0.1) + support * thick)
    med = _log_uniform(rng, 3.0, 25.0)  # median equivalent diameter, px
    sd = rng.uniform(0.1, 0.55)
    coverage = _log_uniform(rng, 0.01, 0.45)  # fraction of the field the particles would cover
    n = int(np.clip(coverage * H * W / (math.pi * (med / 2) ** 2 * math.exp(2 * sd * sd)), 1, 600))
    diam = np.clip(med * np.exp(rng.normal(0, sd, n)), 2.5, 45.0)
    canvas.gentle = med < 6
    # where: mostly on the support, a few over vacuum; some placed against an earlier one (touching, overlapping)
    p = (mask + rng.uniform(0.0, 0.08)).ravel().astype(np.float64)
    idx = rng.choice(H * W, n, p=p / p.sum())
    pos = np.stack([idx // W, idx % W], 1).astype(np.float32) + rng.uniform(-0.5, 0.5, (n, 2))
    touch = rng.uniform(0, 0.7)
    # peak over the local support, relative to the support's mean signal: Pt on carbon is several times brighter,
    # a small particle on thick silica a few per cent of the image's range
    contrast = support * _log_uniform(rng, 0.4, 2.5)  # fainter ones an expert would not label either
    fringes = rng.random() < 0.3  # lattice fringes across the larger particles (high-resolution STEM)
    power = rng.uniform(0.15, 1.5)  # 0.5: a sphere's chord; small: flat-top; large: Gaussian-ish
    faceted, lumpy = rng.uniform(0, 0.8), rng.uniform(0, 0.12)
    edge = rng.uniform(0.5, 2.0)
    for i in range(n):
        r = diam[i] / 2
        if i and rng.random() < touch:
            j = int(rng.integers(0, i))
            a = rng.uniform(0, 2 * math.pi)
            dist = (r + diam[j] / 2) * rng.uniform(0.6, 1.05)
            pos[i] = pos[j] + dist * np.array([math.sin(a), math.cos(a)], np.float32)
        g = _grid(pos[i, 0], pos[i, 1], r * 1.6 + edge + 2, shape)
        if g is None:
            continue
        o = _random_outline(rng, faceted, lumpy, 1.35)
        s, rho = _blob(*g, pos[i, 0], pos[i, 1], r, o)
        height = np.sqrt(np.clip(1 - rho * rho, 0, 1)) ** (2 * power)
        value = contrast * (diam[i] / med) ** rng.uniform(0, 0.5) * rng.uniform(0.7, 1.3) * height
        if fringes and r > 4:
            a, period = rng.uniform(0, math.pi), rng.uniform(2.5, 5)
            value = value * (1 + 0.2 * np.sin(2 * math.pi * (g[1] * math.cos(a) + g[0] * math.sin(a)) / period))
        canvas.paint(*g, s, value, "particle", edge=edge, additive=True)
    canvas.invert = rng.random() < 0.3  # bright-field TEM: the same sample, dark on bright
    return canvas


def _substrate(rng, shape, level: float) -> np.ndarray:
    """A flat substrate: a level, a gentle tilt, faint fine texture."""
    return (level + rng.uniform(0, 0.1) * _ramp(rng, shape)
            + rng.uniform(0, 0.04) * _fractal(rng, shape, rng.uniform(0.5, 2.5))).astype(np.float32)


def _sem_clusters(rng, shape) -> _Canvas:
    H, W = shape
    canvas = _Canvas(_substrate(rng, shape, rng.uniform(0.05, 0.45)))
    med = _log_uniform(rng, 6.0, 45.0)
    sd = rng.uniform(0.08, 0.45)
    n_clusters = int(rng.integers(1, 14))
    budget = int(np.clip(_log_uniform(rng, 0.15, 1.5) * H * W / (math.pi * (med / 2) ** 2), 2, 300))
    sizes = rng.multinomial(budget, rng.dirichlet(np.ones(n_clusters)))
    faceted, lumpy = rng.uniform(0, 0.7), rng.uniform(0, 0.12)
    neck = rng.uniform(0.55, 1.0)  # centre distance / sum of radii: < 1 overlaps (sintered necks)
    base, rim, power = rng.uniform(0.45, 0.9), rng.uniform(0.0, 0.6), rng.uniform(1.5, 8)
    shadow, edge = rng.uniform(0, 0.35), rng.uniform(0.5, 1.5)
    for size in sizes:
        centres, radii = [rng.uniform(-0.1, 1.1, 2) * (H, W)], [med / 2 * math.exp(rng.normal(0, sd))]
        for _ in range(size - 1):  # grow the cluster: each new particle leans on a random earlier one
            j = int(rng.integers(0, len(centres)))
            r = med / 2 * math.exp(rng.normal(0, sd))
            a = rng.uniform(0, 2 * math.pi)
            d = (r + radii[j]) * rng.uniform(neck, min(neck + 0.25, 1.1))
            centres.append(centres[j] + d * np.array([math.sin(a), math.cos(a)]))
            radii.append(r)
        for c, r in zip(centres, radii):
            r = float(np.clip(r, 1.5, 60))
            g = _grid(c[0], c[1], r * 1.6 + 6, shape)
            if g is None:
                continue
            s, rho = _blob(*g, c[0], c[1], r, _random_outline(rng, faceted, lumpy, 1.4))
            value = _sem_value(rho, base * rng.uniform(0.85, 1.15), rim, power)
            canvas.paint(*g, s, value, "particle", edge=edge, shadow=shadow, shadow_px=max(2.0, r / 3))
    canvas.invert = rng.random() < 0.2  # dark particles on a bright substrate (backscatter of light on heavy)
    return canvas


def _fibres(rng, shape) -> _Canvas:
    H, W = shape
    canvas = _Canvas(_substrate(rng, shape, rng.uniform(0.0, 0.3)))
    n = int(rng.integers(2, 30))
    width = _log_uniform(rng, 3.0, 15.0)
    rim, power, shadow = rng.uniform(0.0, 0.5), rng.uniform(2, 8), rng.uniform(0, 0.4)
    wiggle = _log_uniform(rng, 0.005, 0.12)
    for k in range(n):
        hw = width / 2 * rng.uniform(0.7, 1.3)
        start = rng.uniform(0, 1, 2) * (H, W)
        a, length = rng.uniform(0, 2 * math.pi), rng.uniform(0.3, 1.2) * (H + W)
        step = max(3.0, min(8.0, hw))
        fwd = _walk(rng, start, a, length / 2, step, wiggle)
        back = _walk(rng, start, a + math.pi, length / 2, step, wiggle)
        pts = np.concatenate([back[::-1], fwd[1:]])
        keep = (pts[:, 0] > -hw - 8) & (pts[:, 0] < H + hw + 8) & (pts[:, 1] > -hw - 8) & (pts[:, 1] < W + hw + 8)
        if keep.sum() < 2:
            continue
        lo, hi = np.flatnonzero(keep)[[0, -1]]
        pts = pts[max(lo - 1, 0):hi + 2]
        g = _box_grid(pts, hw + 6, shape)
        if g is None:
            continue
        s, rho = _chain(*g, pts, hw)
        depth = 0.55 + 0.45 * (k + 1) / n  # lower layers get fewer of the collected electrons: darker
        value = _sem_value(rho, rng.uniform(0.45, 0.85) * depth, rim * depth, power)
        canvas.paint(*g, s, value, "fibre", edge=rng.uniform(0.5, 1.2), shadow=shadow, shadow_px=max(2.0, hw))
    return canvas


def _lattice(rng, shape, pitch: float, squash: float) -> np.ndarray:
    """Sites of a rotated square or hex lattice seen at a tilt (rows squashed), jittered, with missing sites."""
    H, W = shape
    hexa = rng.random() < 0.6
    span = int(1.6 * max(H, W) / (pitch * squash)) + 2
    i, j = np.mgrid[-span:span + 1, -span:span + 1].astype(np.float32)
    x = (i + (0.5 * j if hexa else 0)) * pitch
    y = j * pitch * (math.sqrt(3) / 2 if hexa else 1)
    a = rng.uniform(0, math.pi)
    xr, yr = x * math.cos(a) - y * math.sin(a), (x * math.sin(a) + y * math.cos(a)) * squash
    jitter = rng.normal(0, rng.uniform(0, 0.12) * pitch, (xr.size, 2))
    pts = np.stack([yr.ravel() + H / 2, xr.ravel() + W / 2], 1) + jitter
    pts = pts[(pts[:, 0] > -pitch) & (pts[:, 0] < H + pitch) & (pts[:, 1] > -pitch) & (pts[:, 1] < W + pitch)]
    return pts[rng.random(len(pts)) > rng.uniform(0, 0.4)].astype(np.float32)


def _nanowires(rng, shape) -> _Canvas:
    H, W = shape
    canvas = _Canvas(_substrate(rng, shape, rng.uniform(0.02, 0.3)))
    w = _log_uniform(rng, 3.0, 11.0)
    ratio = rng.uniform(3, 8)
    squash = rng.uniform(0.45, 1.0)
    # rows far enough apart that a wire mostly ends before the next row's foot (the tilted view squashes rows)
    pitch = max(rng.uniform(2.5, 6.0) * w, w * ratio * rng.uniform(0.8, 1.5) / squash**0.5)
    sites = _lattice(rng, shape, pitch, squash)
    # all wires point the same way (within a few degrees): often up, sometimes anywhere
    heading = rng.normal(0, math.radians(6)) if rng.random() < 0.7 else rng.uniform(-math.pi, math.pi)
    drop_at_tip, drop_r = rng.random() < 0.5, rng.uniform(0.6, 1.0) * w  # wider than the rod (radius vs half-width)
    rim, power, shadow = rng.uniform(0.0, 0.4), rng.uniform(2, 6), rng.uniform(0, 0.3)
    base_v, drop_v = rng.uniform(0.5, 0.85), rng.uniform(0.8, 1.1)
    p_parasitic = rng.uniform(0, 0.4)
    objs = []  # (z, kind, site)
    for site in sites:
        objs.append((rng.random() + 0.3, "nanowire" if rng.random() > p_parasitic else "parasitic", site))
    for _ in range(int(rng.uniform(0, 0.3) * len(sites))):  # extra crystals, some against a wire's foot
        near = sites[int(rng.integers(0, len(sites)))] if len(sites) and rng.random() < 0.5 else None
        site = rng.uniform(0, 1, 2).astype(np.float32) * (H, W) if near is None else near + rng.normal(0, w, 2)
        objs.append((rng.random(), "parasitic", site.astype(np.float32)))
    objs.sort(key=lambda t: t[0])
    for _, cls, site in objs:
        if cls == "nanowire":
            a = heading + rng.normal(0, math.radians(1.5))
            L = w * ratio * rng.uniform(0.85, 1.15)
            tip = site + L * np.array([-math.cos(a), math.sin(a)], np.float32)  # heading 0 points up the screen
            hw = w / 2 * rng.uniform(0.85, 1.15)
            g = _box_grid(np.stack([site, tip]), w * 1.5 + 6, shape)
            if g is None:
                continue
            s, rho = _chain(*g, np.stack([site, tip]), hw)
            end = tip if drop_at_tip else site
            sd, rd = _blob(*g, end[0], end[1], drop_r * rng.uniform(0.85, 1.15), _random_outline(rng, 0, 0.05, 1.1))
            on_drop = sd > s
            s = np.where(on_drop, sd, s)
            value = np.where(on_drop, _sem_value(rd, drop_v, rim, power), _sem_value(rho, base_v, rim, power))
        else:
            g, s, value = _parasitic(rng, site, w, ratio, base_v, rim, power, shape)
            if g is None:
                continue
        canvas.paint(*g, s, value, cls, edge=rng.uniform(0.5, 1.0), shadow=shadow, shadow_px=max(2.0, w / 2))
    return canvas


def _parasitic(rng, site, w: float, ratio: float, base_v: float, rim: float, power: float, shape):
    """One parasitic crystal at `site`: an irregular polygon, a short thick rod, or a lying (kinked) wire."""
    kind = rng.choice(3, p=(0.4, 0.3, 0.3))
    v = base_v * rng.uniform(0.8, 1.15)
    if kind == 0:
        r = w * rng.uniform(0.6, 1.8)
        g = _grid(site[0], site[1], 1.8 * r + 6, shape)
        if g is None:
            return None, None, None
        s, rho = _blob(*g, site[0], site[1], r, _random_outline(rng, 0.8, 0.15, 1.8))
        return g, s, _sem_value(rho, v, rim, power)
    if kind == 1:
        hw, L = w / 2 * rng.uniform(1.0, 1.8), w * rng.uniform(1.5, 3.0)
        n_seg = 1
    else:
        hw, L = w / 2 * rng.uniform(0.6, 1.0), w * ratio * rng.uniform(0.5, 1.5)
        n_seg = int(rng.integers(1, 4))
    a = rng.uniform(0, 2 * math.pi)
    pts = [np.asarray(site, np.float32)]
    for _ in range(n_seg):  # a kink turns by 20-90 degrees either way
        pts.append(pts[-1] + L / n_seg * np.array([math.sin(a), math.cos(a)], np.float32))
        a += rng.choice((-1, 1)) * rng.uniform(math.radians(20), math.radians(90))
    pts = np.stack(pts)
    g = _box_grid(pts, hw + 6, shape)
    if g is None:
        return None, None, None
    s, rho = _chain(*g, pts, hw)
    return g, s, _sem_value(rho, v, rim, power)


def _empty(rng, shape) -> _Canvas:
    """Hard negatives: everything a micrograph can show except objects."""
    variant = rng.choice(("blank", "noise", "gradient", "support", "substrate", "fringes", "streaks"))
    if variant == "support":
        thick, _ = _support(rng, shape)
        bg = 0.05 + 0.4 * thick
    elif variant == "fringes":
        H, W = shape
        yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
        a, period = rng.uniform(0, math.pi), rng.uniform(2.5, 10)
        bg = 0.5 + 0.2 * np.sin(2 * math.pi * (xx * math.cos(a) + yy * math.sin(a)) / period)
        bg *= np.clip(0.5 + _fractal(rng, shape, 3.5, 0.05), 0, 1)
    elif variant == "noise":
        bg = 0.5 + 0.2 * _fractal(rng, shape, rng.uniform(0, 1.5))
    elif variant == "gradient":
        bg = 0.5 + 0.3 * _ramp(rng, shape) + 0.2 * _fractal(rng, shape, 4.0, 0.03)
    elif variant == "substrate":
        bg = _substrate(rng, shape, 0.3) + 0.05 * _fractal(rng, shape, 2.0)
    else:  # blank, streaks: the degradations add the rest; streaks forces charging
        bg = np.full(shape, 0.3, np.float32)
    canvas = _Canvas(bg)
    canvas.invert = rng.random() < 0.3
    canvas.streaks = variant == "streaks"
    return canvas


# ---------------------------------------------------------------------------------------------------------------------
# degradations: image only


def _charging(rng, img: np.ndarray, force: bool) -> np.ndarray:
    """Bright horizontal smears: a charged region saturates the detector for a while along the scan line."""
    H, W = img.shape
    for _ in range(int(rng.integers(1, 6)) if force else int(rng.integers(1, 3))):
        y0, h = int(rng.integers(0, H)), int(rng.integers(1, max(2, H // 25)))
        x0, L = int(rng.integers(0, W)), rng.uniform(5, W)
        x = np.arange(W, dtype=np.float32)
        tail = np.where(x >= x0, np.exp(-(x - x0) / L), 0) * rng.uniform(0.1, 0.8)
        img[y0:y0 + h] += tail[None] * rng.uniform(0.6, 1.0, (min(h, H - y0), 1))
    return img


def _drift(rng, img: np.ndarray) -> np.ndarray:
    """Row shifts of at most ~1 px (stage drift, scan jitter), by linear interpolation along the row."""
    H, W = img.shape
    shift = np.cumsum(rng.normal(0, rng.uniform(0.05, 0.3), H))
    shift = np.clip(shift - shift.mean(), -1.2, 1.2).astype(np.float32)
    x = np.arange(W, dtype=np.float32)[None] - shift[:, None]
    x0 = np.clip(np.floor(x).astype(np.int64), 0, W - 1)
    x1 = np.clip(x0 + 1, 0, W - 1)
    f = np.clip(x - np.floor(x), 0, 1)
    rows = np.arange(H)[:, None]
    return img[rows, x0] * (1 - f) + img[rows, x1] * f


def _jpeg(rng, img: np.ndarray) -> np.ndarray:
    from PIL import Image  # only here: the rest of the module is numpy/scipy

    buf = io.BytesIO()
    quality = int(rng.integers(15, 70))
    Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32) / 255


def _degrade(rng, canvas: _Canvas) -> np.ndarray:
    img, shape = canvas.img, canvas.img.shape
    H, W = shape
    if rng.random() < 0.25:  # local defocus: a blurred region (a thicker or tilted part of the sample)
        cy, cx, r = rng.uniform(0, H), rng.uniform(0, W), rng.uniform(0.15, 0.6) * max(H, W)
        yy, xx = np.ogrid[0:H, 0:W]
        m = np.clip((r - np.hypot(yy - cy, xx - cx)) / (0.3 * r), 0, 1).astype(np.float32)
        img = img + m * (ndimage.gaussian_filter(img, rng.uniform(1.0, 4.0)) - img)
    if rng.random() < 0.6:  # the probe's size
        img = ndimage.gaussian_filter(img, _log_uniform(rng, 0.3, 1.3))
    if rng.random() < 0.6:  # detector / illumination gradients
        gain = 1 + rng.uniform(0, 0.5) * _ramp(rng, shape)
        img = img * gain + rng.uniform(0, 0.15) * _fractal(rng, shape, 4.0, 0.02)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo + 1e-6)
    if canvas.invert:
        img = 1 - img
    if rng.random() < 0.15 or canvas.streaks:  # after the normalisation: streaks saturate, they set no scale
        img = _charging(rng, img, canvas.streaks)
    img = np.clip(img, 0, 1) ** _log_uniform(rng, 0.6, 1.7)
    black, white = rng.uniform(0, 0.3), rng.uniform(0.6, 1.05)  # white > 1: some saturation
    img = black + (white - black) * img
    if rng.random() < 0.75:  # shot noise: counts per pixel at full scale from a handful to thousands
        dose = _log_uniform(rng, 12, 3000) if rng.random() < 0.9 or canvas.gentle else _log_uniform(rng, 4, 12)
        img = rng.poisson(np.clip(img, 0, None) * dose).astype(np.float32) / dose
    sigma = _log_uniform(rng, 0.002, 0.06 if rng.random() < 0.9 or canvas.gentle else 0.12)  # read-out noise
    img = img + rng.normal(0, sigma, shape).astype(np.float32)
    if rng.random() < 0.35:  # scan lines: each row's offset and gain wander
        gain = 1 + rng.normal(0, rng.uniform(0.005, 0.05), (H, 1))
        img = img * gain + rng.normal(0, rng.uniform(0.005, 0.05), (H, 1))
    if rng.random() < 0.25:
        img = _drift(rng, img)
    if rng.random() < 0.1:
        img = _jpeg(rng, img)
    return np.clip(img, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# public API

_RENDER = {"stem_particles": _stem_particles, "sem_clusters": _sem_clusters, "fibres": _fibres,
           "nanowires": _nanowires, "empty": _empty}


def render_scene(seed: int, kind: str | None = None, shape: tuple[int, int] = (256, 256)) -> Scene:
    """One scene. kind None draws one with the KIND_SHARES probabilities. Same (seed, kind, shape), same bytes."""
    if kind is None:
        kind = KINDS[int(np.random.default_rng(derived_seed("scene-kind", seed)).choice(len(KINDS), p=KIND_SHARES))]
    if kind not in _RENDER:
        raise ValueError(f"unknown scene kind {kind!r}; one of {KINDS}")
    rng = np.random.default_rng(derived_seed("scene", seed, kind))
    shape = (int(shape[0]), int(shape[1]))
    canvas = _RENDER[kind](rng, shape)
    instances, classes = canvas.finish()
    return Scene(image=_degrade(rng, canvas), instances=instances, classes=classes, kind=kind)


def batch_kinds(seed: int, n: int) -> list[str]:
    """The kinds of scene_batch(seed, n): exactly the KIND_SHARES mix (to rounding), in a seeded order."""
    cum = np.cumsum(KIND_SHARES)
    kinds = [KINDS[min(int(np.searchsorted(cum, (i + 0.5) / n)), len(KINDS) - 1)] for i in range(n)]
    order = np.random.default_rng(derived_seed("scene-batch-order", seed, n)).permutation(n)
    return [kinds[i] for i in order]


def scene_batch(seed: int, n: int, shape: tuple[int, int] = (256, 256)) -> list[Scene]:
    kinds = batch_kinds(seed, n)
    return [render_scene(derived_seed("scene-batch", seed, i), kind, shape) for i, kind in enumerate(kinds)]


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def read_mask(path: str | Path) -> np.ndarray:
    """A .mask.png written by write_scenes, as int32 instance ids."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).astype(np.int32)


def write_scenes(out_dir: str | Path, n: int, seed: int, shape: tuple[int, int] = (256, 256)) -> list[dict]:
    """scene_batch(seed, n, shape) on disk: scene_00000.png (8-bit grey), scene_00000.mask.png (16-bit instance ids)
    and scenes.jsonl (name, kind, classes), every file written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, kind in enumerate(batch_kinds(seed, n)):
        scene = render_scene(derived_seed("scene-batch", seed, i), kind, shape)
        if len(scene.classes) > 65535:
            raise ValueError("more than 65535 instances do not fit a 16-bit mask")
        name = f"scene_{i:05d}"
        atomic_write_bytes(out / f"{name}.png", _png((scene.image * 255).round().astype(np.uint8)))
        atomic_write_bytes(out / f"{name}.mask.png", _png(scene.instances.astype(np.uint16)))
        records.append({"name": name, "image": f"{name}.png", "mask": f"{name}.mask.png", "kind": kind,
                        "classes": scene.classes})
    atomic_write_text(out / "scenes.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    return records
