"""Benchmark: fibre mats counted and sized against exact truth, on rendered scenes (maemi.measure.scenes, kind
"fibres", seeds 200-215 at two sizes; the same seed renders another scene at each size). No real mat with per-fibre
labels is at hand, so the rendered ones, whose instance masks are exact, are what is checked here.
Prints a table and writes benchmarks/results/measure_mats.{json,md}.

Per mat: the count error |object_count - fibres| / fibres, as `measure()` reports it (default segmenter); the same
for the segmented regions (`region_count`, what object_count was before mats were traced) as the baseline; and the
ratio of `fibre_diameter_mean_px` to the true mean diameter (each fibre's visible mask traced alone, length-weighted).
Even seeds chose the constants (docs/measurement.md); odd seeds are reported apart.

    .venv/bin/python benchmarks/measure_mats.py [--seeds 200-215]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from maemi.measure.fibres import measure_fibres
from maemi.measure.measurements import measure
from maemi.measure.scenes import render_scene

HERE = Path(__file__).resolve().parent
SHAPES = ((512, 512), (768, 1024))
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402
from measure_real import source_state, write_results  # noqa: E402


def true_diameter(instances: np.ndarray) -> float | None:
    """Length-weighted mean diameter of the fibres, each traced alone on its own visible mask."""
    diameters, lengths = [], []
    for i in range(1, int(instances.max()) + 1):
        fibre = measure_fibres(instances == i)
        if fibre.diameter_mean_px:
            diameters.append(fibre.diameter_mean_px)
            lengths.append(fibre.length_total_px)
    return float(np.average(diameters, weights=lengths)) if diameters else None


def bench(seeds: list[int], shape: tuple[int, int]) -> dict:
    rows = []
    for seed in seeds:
        scene = render_scene(seed, "fibres", shape)
        truth = int(scene.instances.max())
        m = measure(scene.image)
        diameter = true_diameter(scene.instances)
        rows.append({"seed": seed, "fibres": truth, "object_count": m.object_count, "region_count": m.region_count,
                     "segmenter": m.segmenter, "count_error": abs(m.object_count - truth) / truth,
                     "region_error": abs(m.region_count - truth) / truth,
                     "diameter_true_px": diameter, "diameter_px": m.fibre_diameter_mean_px,
                     "diameter_ratio": m.fibre_diameter_mean_px / diameter
                     if m.fibre_diameter_mean_px and diameter else None})
    return {"shape": list(shape), "rows": rows}


def _stats(rows: list[dict], key: str, within: float, centre: float = 0.0) -> tuple[float | None, float]:
    values = np.array([np.inf if r[key] is None else r[key] for r in rows], float)
    finite = values[np.isfinite(values)]
    median = float(np.median(finite)) if finite.size else None
    return median, float((np.abs(values - centre) <= within).mean())


def markdown(results: dict) -> str:
    lines = ["# Fibre mats on rendered scenes (benchmarks/measure_mats.py)", "",
             f"Commit {results['machine'].get('commit', '?')}, {results['machine']['cpu']}. "
             f"Seeds {results['seeds'][0]}-{results['seeds'][-1]} of `scenes` kind `fibres`; truth from the exact "
             "instance masks.", "",
             "| size | seeds | count error, median (within 20%) | regions as the count (before) | "
             "diameter / true, median (within 15%) |", "|---|---|---|---|---|"]
    for run in results["runs"]:
        for label, part in (("all", run["rows"]), ("even (chose)", run["rows"][0::2]), ("odd", run["rows"][1::2])):
            count, count_in = _stats(part, "count_error", 0.20)
            region, region_in = _stats(part, "region_error", 0.20)
            ratio, ratio_in = _stats(part, "diameter_ratio", 0.15, centre=1.0)
            lines.append(f"| {run['shape'][1]}x{run['shape'][0]} | {label} | {count:.2f} ({count_in:.0%}) | "
                         f"{region:.2f} ({region_in:.0%}) | "
                         f"{'-' if ratio is None else f'{ratio:.2f}'} ({ratio_in:.0%}) |")
    lines += ["", "Per mat (fibres / counted / regions): " + "; ".join(
        f"{run['shape'][1]}x{run['shape'][0]} " + ", ".join(
            f"{r['seed']}: {r['fibres']}/{r['object_count']}/{r['region_count']}" for r in run["rows"])
        for run in results["runs"]), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="200-215", help="first-last")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "measure_mats")
    args = parser.parse_args()
    first, last = (int(v) for v in args.seeds.split("-"))
    seeds = list(range(first, last + 1))
    results = {"machine": machine_info(), "uncommitted_src": source_state(), "seeds": seeds,
               "runs": [bench(seeds, shape) for shape in SHAPES]}
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()
