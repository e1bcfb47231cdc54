"""How the trust cue and the auto segmenter were chosen: Otsu's separability, the classical objects' size spread,
and the counts of the classical and spot segmentations, on real and synthetic images with known counts.

Per image: eta (Measurements.separability: how well one threshold splits the flattened image), the classical objects'
size_spread, and the count of `segment(method)` for classical, spots and auto, against the truth: the expert boxes of
the 33 real STEM images and 31 nanowire tiles (all objects; ../shared/data), and the drawn objects of a synthetic
development corpus (`maemi synth --seed 7`, 10 images a class, which no demo split contains; classes without
countable objects, films and sponges, count as truth 0). Each set is split by sorted order into an even-numbered half,
on which SEPARABLE_ETA and MIXTURE_SPREAD were chosen, and an odd-numbered half, read to check.

    .venv/bin/python benchmarks/separability.py     # writes results/separability.{json,md} (~6 minutes)
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from maemi.data.synth import synthesize
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure.measurements import MIXTURE_SPREAD, SEPARABLE_ETA, segment, size_spread
from maemi.teachers.measure import split_for_measuring

from measure_real import SHARED, STEM, WIRES, load_grey, rel_error, stem_cases, wire_cases  # benchmarks/ on sys.path

HERE = Path(__file__).resolve().parent
LEVELS = [round(x, 2) for x in np.arange(0.55, 0.81, 0.02)]


def measure_row(grey: np.ndarray, truth: int) -> dict:
    classical = segment(grey, "classical")
    counts = {"classical": int(classical.labels.max()), "spots": int(segment(grey, "spots").labels.max())}
    auto = segment(grey, "auto")
    counts["auto"] = int(auto.labels.max())
    return {"truth": truth, "eta": classical.separability, "spread": size_spread(classical.labels),
            "auto_chose": auto.method, **counts}


def rows() -> list[dict]:
    out = []
    for path, boxes in stem_cases(SHARED / STEM, None):
        out.append({"set": "stem", "image": path.name, **measure_row(load_grey(path), len(boxes))})
    for path, _, classes in wire_cases(SHARED / WIRES, None):
        out.append({"set": "nanowires", "image": path.name, **measure_row(load_grey(path), len(classes))})
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), per_class=10, seed=7)
        for line in (Path(tmp) / "metadata.jsonl").read_text().splitlines():
            meta = json.loads(line)
            above_bar = split_for_measuring(load_grey(Path(tmp) / meta["path"]))[0]  # what the teacher measures
            out.append({"set": "synthetic", "image": meta["path"], "class": meta["class"],
                        **measure_row(above_bar, meta["object_count"] or 0)})
    for r in out:
        r["errors"] = {m: rel_error(r[m], r["truth"]) for m in ("classical", "spots", "auto")}
        half = [x for x in out if x["set"] == r["set"]].index(r) % 2
        r["half"] = "even" if half == 0 else "odd"
    return out


def balanced_accuracy(group: list[dict], level: float) -> float:
    """How well eta >= level tells the images whose classical count is within 20% from the others."""
    good = [r["eta"] >= level for r in group if r["errors"]["classical"] <= 0.2]
    bad = [r["eta"] < level for r in group if r["errors"]["classical"] > 0.2]
    return (np.mean(good) + np.mean(bad)) / 2 if good and bad else float("nan")


def markdown(data: list[dict]) -> str:
    lines = ["# Separability and the auto segmenter (benchmarks/separability.py)", "",
             f"Shipped: SEPARABLE_ETA {SEPARABLE_ETA}, MIXTURE_SPREAD {MIXTURE_SPREAD}. Count error: median relative "
             "error against the truth (experts' boxes; drawn objects).", "",
             "| images | n | eta min / median / max | below the level | classical | spots | auto | auto chose spots |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    groups = [("STEM particles", [r for r in data if r["set"] == "stem"]),
              ("SEM nanowire tiles", [r for r in data if r["set"] == "nanowires"])]
    groups += [(f"synthetic {c}", [r for r in data if r.get("class") == c])
               for c in sorted({r["class"] for r in data if "class" in r})]
    for name, group in groups:
        eta = np.array([r["eta"] for r in group])
        err = {m: np.median([r["errors"][m] for r in group]) for m in ("classical", "spots", "auto")}
        lines.append(f"| {name} | {len(group)} | {eta.min():.2f} / {np.median(eta):.2f} / {eta.max():.2f} | "
                     f"{(eta < SEPARABLE_ETA).sum()} | {err['classical']:.0%} | {err['spots']:.0%} | "
                     f"{err['auto']:.0%} | {sum(r['auto_chose'] == 'spots' for r in group)} |")
    lines += ["", "Choosing the level: balanced accuracy of eta >= level in telling the images whose classical count "
              "is within 20% from the rest, all three sets pooled, per half.", "",
              "| level | " + " | ".join(f"{x:.2f}" for x in LEVELS) + " |", "|---|" + "---:|" * len(LEVELS)]
    for half in ("even", "odd"):
        group = [r for r in data if r["half"] == half]
        lines.append(f"| {half} half | " + " | ".join(f"{balanced_accuracy(group, x):.2f}" for x in LEVELS) + " |")
    lines += ["", "Auto against classical by half: median count error, and the share within 20%.", "",
              "| set | half | classical | auto |", "|---|---|---|---|"]
    for s in ("stem", "nanowires", "synthetic"):
        for half in ("even", "odd"):
            group = [r for r in data if r["set"] == s and r["half"] == half]
            cells = []
            for m in ("classical", "auto"):
                e = np.array([r["errors"][m] for r in group])
                cells.append(f"{np.median(e):.0%} / {(e <= 0.2).mean():.0%}")
            lines.append(f"| {s} | {half} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    data = rows()
    table = markdown(data)
    print(table)
    out = HERE / "results" / "separability"
    atomic_write_json(out.with_suffix(".json"), {"separable_eta": SEPARABLE_ETA, "mixture_spread": MIXTURE_SPREAD,
                                                 "rows": data})
    atomic_write_text(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
