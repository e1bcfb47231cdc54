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
samples of the sample (a field is chosen, and its neighbours share a history), so the images are the units of the
intervals, never single particles. The pooled mean is a ratio of per-image sums, and its 95% interval is the
cluster-sampling one (Cochran, Sampling Techniques, 1977, 6.9 and 11.7: the ratio estimator's linearised variance
over images, Student's t with one degree of freedom fewer than images), right for a few images as for many; two
samples' means are compared the same way (Welch's t). The D50's interval resamples whole images (a cluster
bootstrap, Davison and Hinkley 1997, 3.8) and reads the draws at the expanded percentiles (Hesterberg 2015, "What
teachers should know about the bootstrap", 4.5), since a plain percentile interval over a few images is too narrow.
On simulated samples of known size (benchmarks/results/pooled_coverage.md: field means varying by 10%, 20-120
log-normal particles each) the mean's interval held the truth 93-95% of the time over 3 to 30 images, the D50's 92-95%
over 5 to 30 (plain percentiles 83-93%, and 75% over 3 images, where no bootstrap is good); an interval that takes
particles as independent held it 34-38% of the time. So the mean gets an interval from MIN_IMAGES_FOR_INTERVAL
images, the D50 from MIN_IMAGES_FOR_D50_INTERVAL. Hand-written: scipy.stats.bootstrap resamples observations, not
groups, and no well-kept library has the ratio estimator over clusters.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from scipy import stats

from maemi.measure.size_distribution import weighted_sizes

MIN_IMAGES_FOR_INTERVAL = 3
MIN_IMAGES_FOR_D50_INTERVAL = 5
RESAMPLES = 2000
# the name of the sample of the files given one by one (each folder given is a sample named as given): unlike a name
# such as "images", no folder a lab would give is called so
FILES_SAMPLE = "(files)"


# What is pooled: the particles' equivalent diameters (objects table, frame-weighted), or the fibres' diameters of the
# fibre mats (fibres table, each fibre once: a fibre's own diameter, not its length, is what the field reports)
KINDS = {"particles": ("equivalent_diameter", "size_weight"), "fibres": ("diameter", None)}


@dataclass
class PooledSizes:
    name: str  # the sample: a folder measured, or FILES_SAMPLE for the files given one by one
    kind: str  # "particles" (the objects of the images that are not fibre mats) or "fibres" (those of the mats)
    unit: str  # "nm", or "px" when no pooled image has a known scale
    images: list[str]  # the pooled images' paths
    objects: int  # objects (particles or fibres) in them
    objects_used: int  # of them, those in the distribution: for particles, those wholly inside their field
    mean: float  # number-weighted mean diameter (particles: equivalent diameter, frame-weighted)
    std: float
    d10: float
    d50: float
    d90: float
    geometric_mean: float  # the maximum-likelihood log-normal
    geometric_std: float
    # volume-weighted percentiles (ISO 9276-2's Q3, each particle weighted by its diameter cubed): what laser
    # diffraction reports, where a few large particles hold most of the material
    d10_volume: float | None  # None for fibres
    d50_volume: float | None
    d90_volume: float | None
    mean_ci95: tuple[float, float] | None  # over images (the ratio estimator, Student's t); None with too few images
    d50_ci95: tuple[float, float] | None  # over images (whole images resampled); None with too few images
    image_means_cv: float | None  # coefficient of variation of the images' own mean diameters: how alike the fields are
    uncertain: list[str]  # pooled images whose objects do not stand apart from the background (objects_uncertain)
    left_out: list[dict] = field(default_factory=list)  # {"path", "reason"}
    notes: list[str] = field(default_factory=list)


def _float(value) -> float | None:
    return None if value is None or value == "" else float(value)


def _true(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def pool_sizes(image_rows: list[dict], object_rows: list[dict], seed: int = 0, name: str = FILES_SAMPLE,
               kind: str = "particles") -> PooledSizes | None:
    """The pooled distribution of the diameters of `object_rows` (the objects table, objects.COLUMNS; for kind
    "fibres", the fibres table, objects.FIBRE_COLUMNS) over the images of `image_rows` (the image table,
    batch.ROW_FIELDS); rows may be typed or read back from CSV as text (serve.rows.read_rows). None when no image can
    be pooled."""
    return _pool(image_rows, _by_image(object_rows), np.random.default_rng(seed), name, kind)[0]


def pool_samples(image_rows: list[dict], object_rows: list[dict], samples: dict[str, list[str]], seed: int = 0,
                 fibre_rows: list[dict] | None = None) -> dict:
    """{"samples": [...], "comparisons": [...]}: `samples` maps a name to its images' paths. Each sample gives the
    pool_sizes of its particles (as a dict; {"name", "kind", "images": [], "left_out"} when no image can be pooled)
    and, where it holds fibre mats and `fibre_rows` (the fibres table), the pool of its fibres. Each pair of pools of
    one kind is compared: the difference of their mean diameters (95% interval: Welch's t over the two ratio
    estimators) and of their D50s (95% interval: the difference of their bootstrap draws), and "differ" when the
    mean's interval excludes 0; None where they cannot be (two units, or a sample of fewer than
    MIN_IMAGES_FOR_INTERVAL images), with the note saying why."""
    items_of = {"particles": _by_image(object_rows), "fibres": _by_image(fibre_rows or [])}
    pooled, draws = [], {}
    for index, (name, paths) in enumerate(samples.items()):
        wanted = set(map(str, paths))
        rows = [row for row in image_rows if row["path"] in wanted]
        mats = [row for row in rows if _is_mat(row)]
        for kind in ("particles", "fibres") if mats else ("particles",):
            sample, sample_draws = _pool(rows, items_of[kind], np.random.default_rng([seed, index, len(pooled)]),
                                         name, kind)
            if sample is None:
                pooled.append({"name": name, "kind": kind, "images": [],
                               "left_out": _left_out_of_pool(rows, items_of[kind], kind)[0]})
                continue
            pooled.append(asdict(sample))
            draws[len(pooled) - 1] = sample_draws
    comparisons = []
    valid = [(i, p) for i, p in enumerate(pooled) if p["images"]]
    for (ia, a), (ib, b) in combinations(valid, 2):
        if a["kind"] != b["kind"]:
            continue
        comparison = dict(samples=[a["name"], b["name"]], kind=a["kind"], unit=None, mean_difference=None,
                          mean_difference_ci95=None, d50_difference=None, d50_difference_ci95=None, differ=None,
                          note=None)
        comparisons.append(comparison)
        if a["unit"] != b["unit"]:
            comparison["note"] = f"one sample in {a['unit']}, the other in {b['unit']}: not comparable"
            continue
        comparison.update(unit=a["unit"], mean_difference=a["mean"] - b["mean"], d50_difference=a["d50"] - b["d50"])
        if a["unit"] == "px":
            comparison["note"] = "in pixels: a difference in size only if both were taken at one magnification"
        da, db = draws[ia], draws[ib]
        if da is None or db is None:
            comparison["note"] = "; ".join(filter(None, [comparison["note"], f"fewer than {MIN_IMAGES_FOR_INTERVAL} "
                                                         "images in a sample: no interval"]))
            continue
        (se_a, df_a), (se_b, df_b) = da[0], db[0]
        se = math.hypot(se_a, se_b)
        df = se**4 / (se_a**4 / df_a + se_b**4 / df_b) if se > 0 else df_a + df_b  # Welch-Satterthwaite
        half = float(stats.t.ppf(0.975, df)) * se
        mean_ci = (comparison["mean_difference"] - half, comparison["mean_difference"] + half)
        d50_ci = None if da[1] is None or db[1] is None else _interval(da[1] - db[1], min(df_a, df_b) + 1)
        comparison.update(mean_difference_ci95=mean_ci, d50_difference_ci95=d50_ci,
                          differ=bool(mean_ci[0] > 0 or mean_ci[1] < 0))
    return {"samples": pooled, "comparisons": comparisons}


def _is_mat(row: dict) -> bool:
    """Whether an image row is of a fibre mat, whose objects are counted as the fibres traced through them."""
    m = row["measurements"]
    return not row["error"] and m is not None and _float(m.get("fibre_count")) is not None


def _by_image(rows: list[dict]) -> dict[str, list[dict]]:
    of: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        of[row["path"]].append(row)
    return of


def _interval(draws: np.ndarray, images: int) -> tuple[float, float]:
    """The 95% interval of bootstrap draws over `images` resampled images, at the expanded percentiles: the tail
    probability where a normal's quantile is sqrt(n / (n - 1)) times Student's t quantile with n - 1 degrees of
    freedom (Hesterberg 2015)."""
    tail = float(stats.norm.cdf(math.sqrt(images / (images - 1)) * stats.t.ppf(0.025, images - 1)))
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def _pool(image_rows: list[dict], items_of: dict[str, list[dict]], rng: np.random.Generator, name: str, kind: str
          ) -> tuple[PooledSizes | None, tuple[tuple[float, int], np.ndarray] | None]:
    """pool_sizes, and what comparing it takes: ((its mean's standard error, degrees of freedom), the bootstrap draws
    of its D50 [RESAMPLES] or None with fewer than MIN_IMAGES_FOR_D50_INTERVAL images); None with fewer than
    MIN_IMAGES_FOR_INTERVAL."""
    left_out, candidates = _left_out_of_pool(image_rows, items_of, kind)
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
        return None, None

    column, weight = KINDS[kind]
    diameters, weights = [], []
    for row in candidates:
        rows = items_of[row["path"]]
        diameters.append(np.array([_float(r[f"{column}_{unit}"]) for r in rows]))
        weights.append(np.array([_float(r[weight]) if weight else 1.0 for r in rows]))
    d, w = np.concatenate(diameters), np.concatenate(weights)
    d10, d50, d90, geometric_mean, geometric_std = weighted_sizes(d, w)
    d10_volume = d50_volume = d90_volume = None
    if kind == "particles":
        d10_volume, d50_volume, d90_volume = weighted_sizes(d, w * d**3)[:3]
    mean = float(np.average(d, weights=w))
    std = math.sqrt(float(np.average((d - mean) ** 2, weights=w)))
    image_means = [float(np.average(x, weights=v)) for x, v in zip(diameters, weights)]  # each pooled has weight
    draws = mean_ci = d50_ci = medians = None
    if len(candidates) >= MIN_IMAGES_FOR_INTERVAL:
        se, df = _ratio_standard_error(diameters, weights, mean)
        half = float(stats.t.ppf(0.975, df)) * se
        mean_ci = (mean - half, mean + half)
        if len(candidates) >= MIN_IMAGES_FOR_D50_INTERVAL:
            medians = _bootstrap_medians(diameters, weights, rng)
            d50_ci = _interval(medians, len(candidates))
        else:
            notes.append(f"fewer than {MIN_IMAGES_FOR_D50_INTERVAL} images: no interval for the D50")
        draws = (se, df), medians
    else:
        notes.append(f"fewer than {MIN_IMAGES_FOR_INTERVAL} images: no interval between fields")
    uncertain = [row["path"] for row in candidates if _true((row["measurements"] or {}).get("objects_uncertain"))]
    if uncertain:
        notes.append(f"{len(uncertain)} of the {len(candidates)} pooled images do not separate their objects from the "
                     "background by grey level: their counts and sizes may be far off")
    pooled = PooledSizes(
        name=name, kind=kind, unit=unit, images=[row["path"] for row in candidates], objects=int(d.size),
        objects_used=int((w > 0).sum()), mean=mean, std=std, d10=d10, d50=d50, d90=d90,
        geometric_mean=geometric_mean, geometric_std=geometric_std, d10_volume=d10_volume, d50_volume=d50_volume,
        d90_volume=d90_volume, mean_ci95=mean_ci, d50_ci95=d50_ci,
        image_means_cv=float(np.std(image_means) / np.mean(image_means)) if len(image_means) >= 2 else None,
        uncertain=uncertain, left_out=left_out, notes=notes)
    return pooled, draws


def _left_out_of_pool(image_rows: list[dict], items_of: dict[str, list[dict]], kind: str
                      ) -> tuple[list[dict], list[dict]]:
    """({"path", "reason"} for each image that cannot be pooled whatever the units, the image rows that can). A pool
    of fibres looks at the fibre mats only, and one of particles leaves them out, each saying so."""
    left_out, candidates = [], []
    for row in image_rows:
        if kind == "fibres" and not _is_mat(row):
            continue  # the particles' pool lists it
        m = row["measurements"]
        if row["error"] or m is None:
            left_out.append({"path": row["path"], "reason": f"not measured: {row['error']}"})
        elif kind == "particles" and _is_mat(row):
            left_out.append({"path": row["path"], "reason": "a fibre mat: its objects are segmented regions, not "
                                                            "particles; its fibres are pooled with the fibres"})
        elif kind == "fibres" and not items_of.get(row["path"]):
            left_out.append({"path": row["path"], "reason": "a fibre mat whose fibres are not at hand (none traced, "
                                                            "or measured before a resume without --fibres)"})
        elif kind == "particles" and not any(_float(r["size_weight"]) for r in items_of.get(row["path"], [])):
            left_out.append({"path": row["path"], "reason": "no objects found"})
        else:
            candidates.append(row)
    return left_out, candidates


def _ratio_standard_error(diameters: list[np.ndarray], weights: list[np.ndarray], mean: float) -> tuple[float, int]:
    """(standard error, degrees of freedom) of the pooled mean sum(w d) / sum(w) over images drawn as clusters: the
    ratio estimator's linearised variance n / (n - 1) sum_i (S_i - mean W_i)^2 / W^2 (Cochran 1977, 6.9)."""
    sums = np.array([float(np.dot(x, v)) for x, v in zip(diameters, weights)])  # S_i
    totals = np.array([float(v.sum()) for v in weights])  # W_i
    n = len(sums)
    variance = n / (n - 1) * float(np.sum((sums - mean * totals) ** 2)) / float(totals.sum()) ** 2
    return math.sqrt(variance), n - 1


def _bootstrap_medians(diameters: list[np.ndarray], weights: list[np.ndarray], rng: np.random.Generator
                       ) -> np.ndarray:
    """The pooled D50 over RESAMPLES draws of the images with replacement: each draw weighs every object by how
    often its image was drawn."""
    n = len(diameters)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=RESAMPLES)  # [R, n]: how often each image is drawn
    d = np.concatenate(diameters)
    image_of = np.concatenate([np.full(x.size, i) for i, x in enumerate(diameters)])
    order = np.argsort(d, kind="stable")  # sorted once; each draw only scales the weights
    d, image_of, w = d[order], image_of[order], np.concatenate(weights)[order]
    medians = np.empty(RESAMPLES)
    for k, row in enumerate(counts):
        cumulative = np.cumsum(w * row[image_of])  # every pooled image has weight, so every draw has some
        medians[k] = d[np.searchsorted(cumulative, 0.5 * cumulative[-1])]  # inverted CDF, as weighted_sizes
    return medians


def summary_lines(summary: dict) -> list[str]:
    """The pooled summary (pool_samples) as lines for a terminal."""
    lines = []
    for sample in summary["samples"]:
        fibres = sample["kind"] == "fibres"
        title = f"{sample['name']}, fibres" if fibres else sample["name"]
        if not sample["images"]:
            lines.append(f"{title}: no image could be pooled")
        else:
            u = sample["unit"]
            mean_ci, d50_ci = sample["mean_ci95"], sample["d50_ci95"]
            what = (f"{sample['objects']:,} fibres; fibre diameters" if fibres else
                    f"{sample['objects']:,} objects ({sample['objects_used']:,} wholly inside their field); equivalent "
                    "diameters")
            lines += [f"{title}: pooled over {len(sample['images'])} image(s), {what} in {u}",
                      f"  mean {sample['mean']:.4g} {u}"
                      + (f" (95% between images {mean_ci[0]:.4g}-{mean_ci[1]:.4g})" if mean_ci else "")
                      + f", standard deviation {sample['std']:.4g} {u}",
                      f"  D10 {sample['d10']:.4g}, D50 {sample['d50']:.4g}"
                      + (f" (95% {d50_ci[0]:.4g}-{d50_ci[1]:.4g})" if d50_ci else "")
                      + f", D90 {sample['d90']:.4g} {u}; log-normal: geometric mean {sample['geometric_mean']:.4g} "
                      f"{u}, geometric standard deviation {sample['geometric_std']:.3g}"]
            if sample["d50_volume"] is not None:
                lines.append(f"  by volume (as laser diffraction): D10 {sample['d10_volume']:.4g}, D50 "
                             f"{sample['d50_volume']:.4g}, D90 {sample['d90_volume']:.4g} {u}")
            if sample["image_means_cv"] is not None:
                lines.append(f"  the images' own mean diameters vary by {sample['image_means_cv']:.0%} (coefficient "
                             "of variation)")
            lines += [f"  note: {note}" for note in sample["notes"]]
        lines += [f"  left out: {item['path']}: {item['reason']}" for item in sample["left_out"]]
    for c in summary["comparisons"]:
        a, b = c["samples"]
        label = f"{a} vs {b}" + (", fibres" if c["kind"] == "fibres" else "")
        if c["unit"] is None:
            lines.append(f"{label}: {c['note']}")
            continue
        u, ci = c["unit"], c["mean_difference_ci95"]
        verdict = ("" if c["differ"] is None else
                   ": they differ" if c["differ"] else ": no difference shown at 95%")
        lines.append(f"{label}: mean diameter {c['mean_difference']:+.4g} {u}"
                     + (f" (95% {ci[0]:+.4g} to {ci[1]:+.4g})" if ci else "")
                     + f", D50 {c['d50_difference']:+.4g} {u}{verdict}" + (f" ({c['note']})" if c["note"] else ""))
    return lines
