"""How often the pooled summary's 95% intervals (`maemi measure --summary`, maemi.measure.pooled) hold the truth.

Simulated samples of known size: each field's own mean diameter varies about the sample's (log-normal, sigma 0.1 in
the log, as fields of one powder differ), each field holds 20-120 particles whose diameters are log-normal about the
field's mean (sigma 0.2). The sample's true mean diameter and D50 are known in closed form; each simulated sample of
N fields is pooled by `pool_sizes` and its intervals checked. Also, for comparison, the plain percentile interval of
the same image bootstrap and the interval that treats particles as independent (what resampling single particles or
a t-interval over all particles gives).

    .venv/bin/python benchmarks/pooled_coverage.py          # writes results/pooled_coverage.json and .md
    .venv/bin/python benchmarks/pooled_coverage.py --quick  # fewer samples, to a temporary folder
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

from finetune_memory import RESULTS, machine_info
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure import pooled

FIELD_SIGMA, PARTICLE_SIGMA, MEDIAN_NM = 0.1, 0.2, 30.0
TRUE_MEAN = MEDIAN_NM * math.exp((FIELD_SIGMA**2 + PARTICLE_SIGMA**2) / 2)
TRUE_D50 = MEDIAN_NM  # the mixture's logs are symmetric about log(MEDIAN_NM)


def simulated_sample(rng: np.random.Generator, fields: int) -> tuple[list[dict], list[dict]]:
    """Image rows and object rows (as `maemi measure` writes them) of one simulated sample."""
    images, objects = [], []
    for i in range(fields):
        path = f"field{i}.tif"
        images.append({"path": path, "error": None, "nm_per_pixel": 1.0,
                       "measurements": {"fibre_count": None, "objects_uncertain": False}})
        mean = MEDIAN_NM * math.exp(rng.normal(0, FIELD_SIGMA))
        for d in mean * np.exp(rng.normal(0, PARTICLE_SIGMA, rng.integers(20, 121))):
            objects.append({"path": path, "equivalent_diameter_nm": float(d), "size_weight": 1.0})
    return images, objects


def coverage(fields: int, samples: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    held = {"mean": 0, "d50": 0, "d50_plain": 0, "mean_particles_independent": 0}
    tried_d50 = 0
    for k in range(samples):
        images, objects = simulated_sample(rng, fields)
        result = pooled.pool_sizes(images, objects, seed=k)
        low, high = result.mean_ci95
        held["mean"] += low <= TRUE_MEAN <= high
        d = np.array([o["equivalent_diameter_nm"] for o in objects])
        half = stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
        held["mean_particles_independent"] += d.mean() - half <= TRUE_MEAN <= d.mean() + half
        diameters = [np.array([o["equivalent_diameter_nm"] for o in objects if o["path"] == im["path"]])
                     for im in images]
        medians = pooled._bootstrap_medians(diameters, [np.ones(x.size) for x in diameters],
                                            np.random.default_rng(k))
        low, high = np.percentile(medians, [2.5, 97.5])
        held["d50_plain"] += low <= TRUE_D50 <= high
        if result.d50_ci95 is not None:
            tried_d50 += 1
            held["d50"] += result.d50_ci95[0] <= TRUE_D50 <= result.d50_ci95[1]
    return {"fields": fields, "samples": samples,
            "mean": held["mean"] / samples,
            "d50": held["d50"] / tried_d50 if tried_d50 else None,
            "d50_plain_percentiles": held["d50_plain"] / samples,
            "mean_particles_independent": held["mean_particles_independent"] / samples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer simulated samples: a smoke run")
    parser.add_argument("--samples", type=int, default=None, help="simulated samples per row; default 1000 (quick 50)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    samples = args.samples or (50 if args.quick else 1000)
    out = args.out or (Path(tempfile.gettempdir()) / "maemi-bench" / "pooled_coverage.quick.json" if args.quick
                       else RESULTS / "pooled_coverage.json")
    rows = []
    for fields in (3, 5, 10, 30):
        rows.append(coverage(fields, samples, seed=fields))
        print(rows[-1], flush=True)
    m = machine_info("cpu")
    lines = ["# How often the pooled summary's 95% intervals hold the truth (benchmarks/pooled_coverage.py)", "",
             f"Commit {m['commit']}, {m['date']}. {samples} simulated samples per row: field means log-normal "
             f"(sigma {FIELD_SIGMA}), 20-120 particles per field log-normal about it (sigma {PARTICLE_SIGMA}). "
             "Nominal: 0.95.", "",
             "| fields | mean (ratio estimator, t) | D50 (image bootstrap, expanded percentiles) "
             "| D50, plain percentiles | mean, particles as independent |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        d50 = "none given" if r["d50"] is None else f"{r['d50']:.3f}"
        lines.append(f"| {r['fields']} | {r['mean']:.3f} | {d50} | {r['d50_plain_percentiles']:.3f} | "
                     f"{r['mean_particles_independent']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_json(out, {"benchmark": "pooled_coverage", "machine": m, "samples": samples, "rows": rows})
    atomic_write_text(out.with_suffix(".md"), text)
    print(f"wrote {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
