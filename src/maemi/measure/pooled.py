"""One size distribution from many fields of one sample (`maemi measure --summary`), as particle sizing reports it.

A single micrograph holds tens to hundreds of particles; a lab sizes a sample from several fields and pools them
(ISO 13322-1 asks for enough particles that the statistic of interest is stable). Pooling is done on the object
tables: every object of every pooled image, each with its weight for the frame's bias (size_weight: 0 when the frame
cuts it; maemi.measure.size_distribution), so a pool of one image gives that image's own D10/D50/D90.

What may be pooled: sizes in one unit. Where some images have a known scale, the pool is in nm and the images
without one are left out (their sizes are pixels); where none has, it is in pixels and says so, since pixels of two
magnifications are not the same length. Images that could not be measured, fibre mats (their objects are segmented
regions; their fibres are in the fibres table) and images without objects are left out, each with its reason.

The spread between fields is the honest uncertainty of a pooled mean: particles of one field are not independent
samples of the sample (a field is chosen, and its neighbours share a history), so the 95% intervals resample whole
images (a cluster bootstrap, Davison and Hinkley 1997, section 3.8), never single particles; with fewer than
MIN_IMAGES_FOR_INTERVAL images there is none. Hand-written: scipy.stats.bootstrap resamples observations, not groups.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from maemi.measure.size_distribution import weighted_sizes

MIN_IMAGES_FOR_INTERVAL = 3
RESAMPLES = 2000


@dataclass
class PooledSizes:
    unit: str  # "nm", or "px" when no pooled image has a known scale
    images: list[str]  # the pooled images' paths
    objects: int  # objects in them
    objects_used: int  # of them, those wholly inside their field (weight > 0): the distribution's
    mean: float  # number-weighted mean equivalent diameter, frame-weighted
    std: float
    d10: float
    d50: float
    d90: float
    geometric_mean: float  # the maximum-likelihood log-normal
    geometric_std: float
    mean_ci95: tuple[float, float] | None  # between images (cluster bootstrap); None with too few images
    d50_ci95: tuple[float, float] | None
    image_means_cv: float | None  # coefficient of variation of the images' own mean diameters: how alike the fields are
    uncertain: list[str]  # pooled images whose objects do not stand apart from the background (objects_uncertain)
    left_out: list[dict] = field(default_factory=list)  # {"path", "reason"}
    notes: list[str] = field(default_factory=list)


def _float(value) -> float | None:
    return None if value is None or value == "" else float(value)


def _true(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def pool_sizes(image_rows: list[dict], object_rows: list[dict], seed: int = 0) -> PooledSizes | None:
    """The pooled distribution of the equivalent diameters of `object_rows` (the objects table, objects.COLUMNS)
    over the images of `image_rows` (the image table, batch.ROW_FIELDS); rows may be typed or read back from CSV as
    text (serve.rows.read_rows). None when no image can be pooled (then nothing is left to report but left_out,
    which `left_out_of_pool` gives)."""
    objects_of: dict[str, list[dict]] = defaultdict(list)
    for row in object_rows:
        objects_of[row["path"]].append(row)
    left_out, candidates = left_out_of_pool(image_rows, objects_of)
    known = [row for row in candidates if _float(row["nm_per_pixel"])]
    unit = "nm" if known else "px"
    notes = []
    if known:
        left_out += [{"path": row["path"], "reason": "scale unknown: its sizes are in pixels, the pool's in nm"}
                     for row in candidates if not _float(row["nm_per_pixel"])]
        candidates = known
    elif candidates:
        notes.append("no pooled image has a known scale: sizes are in pixels, comparable between images only if all "
                     "were taken at one magnification and pixel size (give it with --nm-per-pixel)")
    if not candidates:
        return None

    diameters, weights = [], []
    for row in candidates:
        rows = objects_of[row["path"]]
        diameters.append(np.array([_float(r[f"equivalent_diameter_{unit}"]) for r in rows]))
        weights.append(np.array([_float(r["size_weight"]) for r in rows]))
    d, w = np.concatenate(diameters), np.concatenate(weights)
    d10, d50, d90, geometric_mean, geometric_std = weighted_sizes(d, w)
    mean = float(np.average(d, weights=w))
    std = math.sqrt(float(np.average((d - mean) ** 2, weights=w)))
    image_means = [float(np.average(x, weights=v)) for x, v in zip(diameters, weights) if v.sum() > 0]
    mean_ci = d50_ci = None
    if len(candidates) >= MIN_IMAGES_FOR_INTERVAL:
        mean_ci, d50_ci = _between_image_intervals(diameters, weights, seed)
    else:
        notes.append(f"fewer than {MIN_IMAGES_FOR_INTERVAL} images: no interval between fields")
    uncertain = [row["path"] for row in candidates if _true((row["measurements"] or {}).get("objects_uncertain"))]
    if uncertain:
        notes.append(f"{len(uncertain)} of the {len(candidates)} pooled images do not separate their objects from the "
                     "background by grey level: their counts and sizes may be far off")
    return PooledSizes(
        unit=unit, images=[row["path"] for row in candidates], objects=int(d.size), objects_used=int((w > 0).sum()),
        mean=mean, std=std, d10=d10, d50=d50, d90=d90, geometric_mean=geometric_mean, geometric_std=geometric_std,
        mean_ci95=mean_ci, d50_ci95=d50_ci,
        image_means_cv=float(np.std(image_means) / np.mean(image_means)) if len(image_means) >= 2 else None,
        uncertain=uncertain, left_out=left_out, notes=notes)


def left_out_of_pool(image_rows: list[dict], objects_of: dict[str, list[dict]]) -> tuple[list[dict], list[dict]]:
    """({"path", "reason"} for each image that cannot be pooled whatever the units, the image rows that can)."""
    left_out, candidates = [], []
    for row in image_rows:
        m = row["measurements"]
        if row["error"] or m is None:
            left_out.append({"path": row["path"], "reason": f"not measured: {row['error']}"})
        elif _float(m.get("fibre_count")) is not None:
            left_out.append({"path": row["path"], "reason": "a fibre mat: its objects are segmented regions, not "
                                                            "particles (its fibres are in --fibres)"})
        elif not any(_float(r["size_weight"]) for r in objects_of.get(row["path"], [])):
            left_out.append({"path": row["path"], "reason": "no objects found"})
        else:
            candidates.append(row)
    return left_out, candidates


def _between_image_intervals(diameters: list[np.ndarray], weights: list[np.ndarray], seed: int
                             ) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% percentile intervals of the pooled mean and D50 over RESAMPLES draws of the images with replacement: each
    draw weighs every object by how often its image was drawn."""
    rng = np.random.default_rng(seed)
    n = len(diameters)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=RESAMPLES)  # [R, n]: how often each image is drawn
    sums = np.array([float(np.dot(x, v)) for x, v in zip(diameters, weights)])  # [n]
    totals = np.array([float(v.sum()) for v in weights])  # [n]
    drawn = counts @ totals
    means = (counts @ sums)[drawn > 0] / drawn[drawn > 0]
    # the weighted median of each draw: objects sorted once, their weights scaled by their image's count
    d = np.concatenate(diameters)
    image_of = np.concatenate([np.full(x.size, i) for i, x in enumerate(diameters)])
    order = np.argsort(d, kind="stable")
    d, image_of, w = d[order], image_of[order], np.concatenate(weights)[order]
    medians = []
    for row in counts:
        cumulative = np.cumsum(w * row[image_of])
        if cumulative[-1] > 0:
            medians.append(d[np.searchsorted(cumulative, 0.5 * cumulative[-1])])  # inverted CDF, as weighted_sizes
    return (tuple(float(q) for q in np.percentile(means, [2.5, 97.5])),
            tuple(float(q) for q in np.percentile(medians, [2.5, 97.5])))


def summary_lines(summary: dict) -> list[str]:
    """The pooled summary (pool_sizes as a dict, or one without images) as lines for a terminal."""
    if not summary["images"]:
        lines = ["pooled size distribution: no image could be pooled"]
    else:
        u = summary["unit"]
        lines = [f"pooled over {len(summary['images'])} image(s): {summary['objects']:,} objects, "
                 f"{summary['objects_used']:,} wholly inside their field; equivalent diameters in {u}",
                 f"  mean {summary['mean']:.4g} {u}"
                 + (f" (95% between images {summary['mean_ci95'][0]:.4g}-{summary['mean_ci95'][1]:.4g})"
                    if summary["mean_ci95"] else "") + f", standard deviation {summary['std']:.4g} {u}",
                 f"  D10 {summary['d10']:.4g}, D50 {summary['d50']:.4g}"
                 + (f" (95% {summary['d50_ci95'][0]:.4g}-{summary['d50_ci95'][1]:.4g})" if summary["d50_ci95"] else "")
                 + f", D90 {summary['d90']:.4g} {u}; log-normal: geometric mean {summary['geometric_mean']:.4g} {u}, "
                 f"geometric standard deviation {summary['geometric_std']:.3g}"]
        if summary["image_means_cv"] is not None:
            lines.append(f"  the images' own mean diameters vary by {summary['image_means_cv']:.0%} (coefficient of "
                         "variation)")
        lines += [f"  note: {note}" for note in summary["notes"]]
    lines += [f"  left out: {item['path']}: {item['reason']}" for item in summary["left_out"]]
    return lines
