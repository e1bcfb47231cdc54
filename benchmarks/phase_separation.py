"""How the trust cue and the auto segmenter were chosen: the phase separation of the classical threshold, the
classical objects' size spread, and the counts of the classical, spot and auto segmentations, on real and synthetic
images with known counts.

Per image: Measurements.phase_separation (how far apart, in their own standard deviations, the two phases lie that
Otsu's threshold splits the flattened image into), Otsu's eta beside it for comparison, the classical objects'
size_spread, and the count of segment(method) for classical, spots and auto, against the truth: the expert boxes of
the 33 real STEM images and 31 nanowire tiles (all objects, a parasitic crystal's pieces once, as measure_real.py
counts them; ../shared/data), and the drawn objects of a synthetic
development corpus (`maemi synth --seed 7`, 10 images a class, which no demo split contains; films, which have no
countable objects, count as truth 0). Each set is split by sorted order into an even-numbered half, on which
SEPARATION_MIN and MIXTURE_SPREAD were chosen, and an odd-numbered half, read to check. The level's table leaves out
the synthetic sponges and tips, whose classical counts fail for reasons no measure of the threshold sees (pores join
into a network; a tip is one object).

    .venv/bin/python benchmarks/phase_separation.py     # writes results/phase_separation.{json,md} (~6 minutes)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from skimage.filters import threshold_otsu

from maemi.data.synth import synthesize
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure.measurements import MIXTURE_SPREAD, SEPARATION_MIN, segment, size_spread
from maemi.measure.wires import classify_wires
from maemi.teachers.measure import split_for_measuring

from measure_real import SHARED, STEM, WIRES, load_grey, rel_error, stem_cases, wire_cases  # benchmarks/ on sys.path

HERE = Path(__file__).resolve().parent
LEVELS = [float(x) for x in np.arange(2.5, 5.51, 0.25)]
NOT_FOR_THE_LEVEL = ("Porous_Sponge", "Tips")
METHODS = ("classical", "spots", "auto")


def otsu_eta(flat: np.ndarray) -> float:
    """Otsu's own score of his threshold, between-class over total variance (for comparison only)."""
    low = flat <= threshold_otsu(flat)
    w0 = low.mean()
    return float(w0 * (1 - w0) * (flat[low].mean() - flat[~low].mean()) ** 2 / flat.var())


def objects(labels: np.ndarray) -> int:
    return int(labels.max())


def wire_objects(labels: np.ndarray) -> int:
    """As measure_real counts a nanowire tile: the pieces of one parasitic crystal once."""
    return sum(classify_wires(labels).counts.values())


def measure_row(grey: np.ndarray, truth: int, count=objects) -> dict:
    classical, auto = segment(grey, "classical"), segment(grey, "auto")
    counts = {"classical": count(classical.labels), "spots": count(segment(grey, "spots").labels),
              "auto": count(auto.labels)}
    return {"truth": truth, "separation": classical.phase_separation, "eta": otsu_eta(classical.flat),
            "spread": size_spread(classical.labels), "auto_chose": auto.method, **counts,
            "errors": {m: rel_error(counts[m], truth) for m in METHODS}}


def rows() -> list[dict]:
    out = []
    for path, boxes in stem_cases(SHARED / STEM, None):
        out.append({"set": "stem", "image": path.name, **measure_row(load_grey(path), len(boxes))})
    for path, _, classes in wire_cases(SHARED / WIRES, None):
        out.append({"set": "nanowires", "image": path.name,
                    **measure_row(load_grey(path), len(classes), wire_objects)})
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), per_class=10, seed=7)
        for line in (Path(tmp) / "metadata.jsonl").read_text().splitlines():
            meta = json.loads(line)
            above_bar = split_for_measuring(load_grey(Path(tmp) / meta["path"]))[0]  # what the teacher measures
            out.append({"set": "synthetic", "image": meta["path"], "class": meta["class"],
                        **measure_row(above_bar, meta["object_count"] or 0)})
    for name in ("stem", "nanowires", "synthetic"):
        for i, r in enumerate(r for r in out if r["set"] == name):
            r["half"] = "even" if i % 2 == 0 else "odd"
    return out


def balanced_accuracy(group: list[dict], level: float) -> tuple[float, float]:
    """How well separation >= level tells the images whose classical count is within 20% from the others, and the
    share of those good counts that it trusts."""
    good = [r["separation"] >= level for r in group if r["errors"]["classical"] <= 0.2]
    bad = [r["separation"] < level for r in group if r["errors"]["classical"] > 0.2]
    return (float(np.mean(good)) + float(np.mean(bad))) / 2, float(np.mean(good))


def markdown(data: list[dict]) -> str:
    lines = ["# Phase separation and the auto segmenter (benchmarks/phase_separation.py)", "",
             f"Shipped: SEPARATION_MIN {SEPARATION_MIN}, MIXTURE_SPREAD {MIXTURE_SPREAD}. Count error: median relative "
             "error against the truth (experts' boxes; drawn objects). Pure Gaussian noise has a phase separation of "
             "2.65.", "",
             "| images | n | separation min / median / max | Otsu's eta, median | below the level | classical | spots "
             "| auto | auto chose spots |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    groups = [("STEM particles", [r for r in data if r["set"] == "stem"]),
              ("SEM nanowire tiles", [r for r in data if r["set"] == "nanowires"])]
    groups += [(f"synthetic {c}", [r for r in data if r.get("class") == c])
               for c in sorted({r["class"] for r in data if "class" in r})]
    for name, group in groups:
        sep = np.array([r["separation"] for r in group])
        err = {m: np.median([r["errors"][m] for r in group]) for m in METHODS}
        lines.append(f"| {name} | {len(group)} | {sep.min():.2f} / {np.median(sep):.2f} / {sep.max():.2f} | "
                     f"{np.median([r['eta'] for r in group]):.2f} | {(sep < SEPARATION_MIN).sum()} | "
                     f"{err['classical']:.0%} | {err['spots']:.0%} | {err['auto']:.0%} | "
                     f"{sum(r['auto_chose'] == 'spots' for r in group)} |")
    lines += ["", "Choosing the level: balanced accuracy of separation >= level in telling the images whose classical "
              "count is within 20% from the rest (in brackets: the share of those good counts trusted), the real sets "
              f"and the synthetic corpus without {' and '.join(NOT_FOR_THE_LEVEL)} pooled, per half.", "",
              "| level | even half | odd half |", "|---:|---|---|"]
    chosen = [r for r in data if r.get("class") not in NOT_FOR_THE_LEVEL]
    for level in LEVELS:
        cells = []
        for half in ("even", "odd"):
            ba, trusted = balanced_accuracy([r for r in chosen if r["half"] == half], level)
            cells.append(f"{ba:.3f} ({trusted:.2f})")
        lines.append(f"| {level:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Auto against classical by half: median count error / share of images within 20%.", "",
              "| set | half | classical | auto |", "|---|---|---|---|"]
    for name in ("stem", "nanowires", "synthetic"):
        for half in ("even", "odd"):
            group = [r for r in data if r["set"] == name and r["half"] == half]
            cells = []
            for m in ("classical", "auto"):
                e = np.array([r["errors"][m] for r in group])
                cells.append(f"{np.median(e):.0%} / {(e <= 0.2).mean():.0%}")
            lines.append(f"| {name} | {half} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    data = rows()
    table = markdown(data)
    print(table)
    out = HERE / "results" / "phase_separation"
    atomic_write_json(out.with_suffix(".json"), {"separation_min": SEPARATION_MIN, "mixture_spread": MIXTURE_SPREAD,
                                                 "rows": data})
    atomic_write_text(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
