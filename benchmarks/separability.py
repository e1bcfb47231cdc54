"""Exploration: does Otsu's separability predict when the classical count cannot be trusted?

Otsu (1979) scores a threshold by eta = between-class variance / total variance of the grey levels (1: two clean
phases). Here eta is taken on what the classical segmentation thresholds (Segmentation.flat of measurements.segment:
smoothed, background flattened), for each real STEM image and nanowire tile, beside the classical count error that
benchmarks/measure_real.py recorded (results/measure_real.json, its boxes as truth), and for one synthetic corpus
(`maemi synth --seed 7`, a dev corpus no demo split contains) per class. Nothing is chosen or shipped from it yet.

    .venv/bin/python benchmarks/separability.py     # writes results/separability.{json,md}
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.filters import threshold_otsu

from maemi.data.synth import synthesize
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure.measurements import segment
from maemi.teachers.measure import split_for_measuring

from measure_real import SHARED, STEM, WIRES, load_grey  # benchmarks/ is on sys.path

HERE = Path(__file__).resolve().parent


def separability(grey: np.ndarray) -> float:
    """Otsu's eta of the flattened image the classical segmentation thresholds."""
    flat = segment(grey).flat
    low = flat <= threshold_otsu(flat)
    w0 = low.mean()
    between = w0 * (1 - w0) * (flat[low].mean() - flat[~low].mean()) ** 2
    return float(between / flat.var())


def main() -> None:
    measured = json.loads((HERE / "results" / "measure_real.json").read_text())["methods"]["classical"]
    rows = []
    for r in measured["stem"]["rows"]:
        rows.append({"set": "stem", "image": r["image"], "eta": separability(load_grey(SHARED / STEM / "images" /
                                                                                     r["image"])),
                     "classical_count_error": r["count_error"]})
    for r in measured["wires"]["rows"]:
        rows.append({"set": "nanowires", "image": r["image"], "eta": separability(load_grey(SHARED / WIRES /
                                                                                          r["image"])),
                     "classical_count_error": r["total_error"]})
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), per_class=10, seed=7)
        for path in sorted(Path(tmp).glob("*/*.png")):
            above_bar = split_for_measuring(load_grey(path))[0]  # what the teacher measures
            rows.append({"set": "synthetic", "image": f"{path.parent.name}/{path.name}", "class": path.parent.name,
                         "eta": separability(above_bar)})
    lines = ["# Otsu's separability against the classical count error (benchmarks/separability.py)", "",
             "| images | n | eta min / median / max | classical count error, median | within 20% |",
             "|---|---:|---|---:|---:|"]
    groups = [("STEM particles", [r for r in rows if r["set"] == "stem"]),
              ("SEM nanowire tiles", [r for r in rows if r["set"] == "nanowires"])]
    groups += [(f"synthetic {c}", [r for r in rows if r.get("class") == c])
               for c in sorted({r["class"] for r in rows if "class" in r})]
    for name, group in groups:
        eta = np.array([r["eta"] for r in group])
        errors = np.array([r["classical_count_error"] for r in group if "classical_count_error" in r])
        error = f"{np.median(errors):.0%} | {(errors <= 0.2).mean():.0%}" if len(errors) else "- | -"
        lines.append(f"| {name} | {len(group)} | {eta.min():.2f} / {np.median(eta):.2f} / {eta.max():.2f} | {error} |")
    table = "\n".join(lines) + "\n"
    print(table)
    out = HERE / "results" / "separability"
    atomic_write_json(out.with_suffix(".json"), {"rows": rows})
    atomic_write_text(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
