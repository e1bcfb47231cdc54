"""Benchmark: counting and sizing objects on real, expert-labelled micrographs, segmentation methods side by side.
Prints a table and writes benchmarks/results/measure_real.{json,md}.

1. STEM nanoparticles (../shared/data/stem-particles: 33 images, 5,341 hand-drawn boxes; its SOURCE.md says 5,321).
   Per image: the count error |n_measured - n_boxes| / n_boxes; the mean size error |mean equivalent diameter - mean
   box diameter| / mean box diameter, a box's diameter being that of the ellipse inscribed in it, sqrt(w h); and, to
   diagnose, detection precision and recall (an object matches a box its centroid lies in, one to one by the
   Hungarian algorithm).
   Targets: median count error <= 10%, >= 75% of images within 20%; mean size within 15% on >= 75%.
2. SEM nanowire arrays (../shared/data/sem-nanowires: the 31 tiles of tiles/boxes.csv, classes nw, parasitic,
   nanospade). Objects are classed by maemi.measure.wires (the array's own rods are nanowires, the rest parasitic);
   per tile the nw count, the parasitic count, the total and the yield nw / all. Targets: nw and parasitic counts,
   median error <= 10%.
   Per method as segment() runs it; "auto" is the default (classical, or spots where the image's phase separation
   is below SEPARATION_MIN and the classical objects are a mixture: see measurements.segment). The share of images
   below SEPARATION_MIN, whose answers say that counts and sizes are uncertain, is reported too.
3. Time per megapixel of each method, in the same run. The learned method should beat the classical one on both sets.

A method is one entry of `methods()`: name -> function(grey float32 [H, W] in [0, 1]) -> label image.

    .venv/bin/python benchmarks/measure_real.py [--methods auto,classical,spots,learned] [--limit N] [--shared DIR]
                                                [--overlays DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure.boxes import annotated_images, match
from maemi.measure.measurements import SEPARATION_MIN, measure, object_shapes, segment
from maemi.measure import spots
from maemi.measure.segmenter import Segmenter
from maemi.measure.wires import classify_wires

HERE = Path(__file__).resolve().parent
SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
STEM = Path("data/stem-particles/dataset")
WIRES = Path("data/sem-nanowires/tiles")
TARGETS = {"stem_count_median_error": 0.10, "stem_count_within_20pct": 0.75, "stem_size_within_15pct": 0.75,
           "nw_count_median_error": 0.10, "parasitic_count_median_error": 0.10}
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402

Method = Callable[[np.ndarray], np.ndarray]


def methods(names: list[str], weights: str | None) -> tuple[dict[str, Method], dict[str, str]]:
    """The methods asked for that can run, and why each of the others cannot. "learned" runs the segmenter that
    segment(method="learned") would (the shipped weights), or the weights given."""
    available: dict[str, Method] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in ("auto", "classical"):
            available[name] = lambda grey, name=name: segment(grey, method=name).labels
        elif name == "spots":
            available[name] = spots.instances
        elif name == "learned":
            try:
                segmenter = Segmenter.load(weights)
            except FileNotFoundError as e:
                skipped[name] = str(e)
                continue
            available[name] = segmenter.instances  # a bound method: .__self__.metadata is the weights' record
        else:
            skipped[name] = "unknown method"
    return available, skipped


def source_state() -> list[str]:
    """Files of src/ that differ from the commit named in the results (git status), so a number is never pinned on a
    commit that did not produce it."""
    try:
        out = subprocess.run(["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "src"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line[3:] for line in out.splitlines()]


def load_grey(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0  # RGB files too: luminance


def rel_error(measured: float, truth: float) -> float:
    return abs(measured - truth) / truth if truth > 0 else float(measured != truth)


def summary(errors: list[float | None], within: float) -> dict:
    """Median error and the share within `within`; a None error (nothing to compare) counts as a miss."""
    values = np.array([np.inf if e is None else e for e in errors], float)
    if len(values) == 0:
        return {"median_error": None, f"within_{round(within * 100)}pct": None, "n": 0}
    median = float(np.median(values))
    return {"median_error": median if np.isfinite(median) else None,
            f"within_{round(within * 100)}pct": float((values <= within).mean()), "n": len(values)}


# ---------------------------------------------------------------------------------------------------------- STEM


def stem_cases(root: Path, limit: int | None) -> list[tuple[Path, np.ndarray]]:
    """(image, boxes [M, 4] left, top, width, height in pixels) for each labelled image."""
    return annotated_images(root)[:limit]


def bench_stem(cases, method: Method, overlays: Path | None, name: str) -> dict:
    rows = []
    seconds = megapixels = 0.0
    for path, boxes in cases:
        grey = load_grey(path)
        start = time.perf_counter()
        labels = method(grey)
        seconds += time.perf_counter() - start
        megapixels += grey.size / 1e6
        shapes = object_shapes(labels)
        centroids, diameters = shapes.centroids, shapes.diameters
        box_diameter = np.sqrt(boxes[:, 2] * boxes[:, 3])  # the inscribed ellipse's equivalent diameter
        obj, box = match(centroids, boxes)
        n, n_true = len(diameters), len(boxes)
        rows.append({
            "image": path.name, "width": grey.shape[1], "height": grey.shape[0], "boxes": n_true, "measured": n,
            "count_error": rel_error(n, n_true),
            "box_diameter_mean_px": float(box_diameter.mean()),
            "diameter_mean_px": float(diameters.mean()) if n else None,
            "size_error": rel_error(float(diameters.mean()), float(box_diameter.mean())) if n else None,
            "matched": len(obj), "precision": len(obj) / n if n else None, "recall": len(obj) / n_true,
            # matched pairs only: is the size off because of what was found, or how it was outlined?
            "matched_diameter_ratio_median": float(np.median(diameters[obj] / box_diameter[box])) if len(obj) else None,
        })
        if overlays:
            save_overlay(overlays / f"stem_{name}_{path.stem}.png", grey, labels, boxes, None)
    return {
        "rows": rows,
        "count": summary([r["count_error"] for r in rows], 0.20),
        "size": summary([r["size_error"] for r in rows], 0.15),
        "precision_median": _median([r["precision"] for r in rows]),
        "recall_median": _median([r["recall"] for r in rows]),
        "ms_per_megapixel": 1000 * seconds / megapixels if megapixels else None,
    }


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None


# -------------------------------------------------------------------------------------------------------- wires


def wire_cases(root: Path, limit: int | None) -> list[tuple[Path, np.ndarray, list[str]]]:
    """(tile, boxes [M, 4], classes [M]) for each tile listed in boxes.csv."""
    boxes: dict[str, list] = defaultdict(list)
    with open(root / "boxes.csv", newline="") as f:
        for r in csv.DictReader(f):
            boxes[r["image"]].append((r["class"], [float(r[k]) for k in ("left", "top", "width", "height")]))
    return [(root / name, np.array([b for _, b in boxes[name]]), [c for c, _ in boxes[name]])
            for name in sorted(boxes)[:limit]]


def bench_wires(cases, method: Method, overlays: Path | None, name: str) -> dict:
    rows = []
    seconds = megapixels = 0.0
    for path, boxes, classes in cases:
        grey = load_grey(path)
        start = time.perf_counter()
        labels = method(grey)
        seconds += time.perf_counter() - start  # the segmentation; classing a 0.1-MP tile takes milliseconds
        megapixels += grey.size / 1e6
        wires = classify_wires(labels)
        labels = wires.labels  # the objects the classes refer to: wires cut free from what they touched
        truth = Counter(classes)
        n_true = len(classes)
        nw = wires.counts.get("nanowire") if wires.array_found else None
        parasitic = wires.counts.get("parasitic") if wires.array_found else None
        n = sum(wires.counts.values())  # the pieces of one parasitic crystal count once
        true_yield = truth["nw"] / n_true
        centroids = object_shapes(labels).centroids
        obj, box = match(centroids, boxes)
        agree = sum((wires.classes[o] == "nanowire") == (classes[b] == "nw") for o, b in zip(obj, box))
        rows.append({
            "image": path.name, "boxes": n_true, "nw": truth["nw"], "parasitic": truth["parasitic"],
            "nanospade": truth["nanospade"], "measured": n, "measured_nw": nw, "measured_parasitic": parasitic,
            "array_found": wires.array_found, "note": wires.note,
            "direction_deg": wires.direction_deg, "rod_length_px": wires.rod_length_px,
            "nw_error": rel_error(nw, truth["nw"]) if nw is not None else None,
            "parasitic_error": rel_error(parasitic, truth["parasitic"]) if parasitic is not None else None,
            "total_error": rel_error(n, n_true),
            "yield": true_yield, "measured_yield": wires.wire_yield,
            "yield_error": abs(wires.wire_yield - true_yield) if wires.wire_yield is not None else None,
            "matched": len(obj), "precision": len(obj) / len(centroids) if len(centroids) else None,
            "recall": len(obj) / n_true,
            "class_agreement_matched": agree / len(obj) if len(obj) else None,
        })
        if overlays:
            save_overlay(overlays / f"wires_{name}_{path.stem}.png", grey, labels, boxes, wires.classes)
    return {
        "rows": rows,
        "nw": summary([r["nw_error"] for r in rows], 0.20),
        "parasitic": summary([r["parasitic_error"] for r in rows], 0.20),
        "total": summary([r["total_error"] for r in rows], 0.20),
        "yield_abs_error_median": _median([r["yield_error"] for r in rows]),
        "arrays_found": sum(r["array_found"] for r in rows),
        "precision_median": _median([r["precision"] for r in rows]),
        "recall_median": _median([r["recall"] for r in rows]),
        "class_agreement_median": _median([r["class_agreement_matched"] for r in rows]),
        "ms_per_megapixel": 1000 * seconds / megapixels if megapixels else None,
    }


def save_overlay(path: Path, grey: np.ndarray, labels: np.ndarray, boxes: np.ndarray, classes: list[str] | None):
    """The expert's boxes (green) over the method's object outlines (red; for wires: yellow nanowire, red the rest)."""
    from PIL import ImageDraw
    from skimage.segmentation import find_boundaries

    rgb = np.repeat((grey * 255).astype(np.uint8)[..., None], 3, axis=2)
    edges = find_boundaries(labels, mode="inner")
    colour = np.zeros((labels.max() + 1, 3), np.uint8)
    colour[1:] = (255, 40, 40)
    if classes is not None:
        ids = np.unique(labels[labels > 0])
        colour[ids[np.array(classes) == "nanowire"]] = (255, 230, 0)
    rgb[edges] = colour[labels[edges]]
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for left, top, w, h in boxes:
        draw.rectangle([left, top, left + w, top + h], outline=(0, 220, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def speed(available: dict[str, Method]) -> dict:
    """Seconds for one 1024x768 micrograph of the built-in corpus (median of 3, after a warm-up), per method: to
    segment it ("seconds"), and to measure it as `maemi measure` does ("measure_seconds": the segmentation, the
    per-object shapes, wire and fibre tests, texture, size distribution)."""
    from maemi.data.synth import make_micrograph

    image, _ = make_micrograph("Particles", seed=0, width=1024, height=860)  # the info bar is below row 768
    grey = image[:768].astype(np.float32) / 255.0

    def median_seconds(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    return {"shape": list(grey.shape),
            "seconds": {name: median_seconds(lambda: method(grey)) for name, method in available.items()},
            "measure_seconds": {name: median_seconds(lambda: measure(grey, method=name)) for name in available}}


# ---------------------------------------------------------------------------------------------------------- main


def write_results(out: Path, results: dict, text: str) -> None:
    """Print the table and write out.json and out.md, each atomically."""
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out.with_suffix(".json"), results)
    atomic_write_text(out.with_suffix(".md"), text)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def markdown(results: dict) -> str:
    m = results["machine"]
    names = list(results["methods"])
    lines = ["# Measuring real micrographs (benchmarks/measure_real.py)", "",
             f"Commit {m.get('commit')}, {m.get('cpu')}, {os.cpu_count()} CPU threads. STEM: "
             f"{results.get('stem_images', 0)} images of ../shared/data/stem-particles; nanowires: "
             f"{results.get('wire_tiles', 0)} tiles of ../shared/data/sem-nanowires.", ""]
    if results.get("uncommitted_src"):
        lines += [f"Run with uncommitted changes to: {', '.join(results['uncommitted_src'])}.", ""]
    for name, why in results["skipped"].items():
        lines.append(f"Skipped {name}: {why}")
    lines += ["", "| metric | target | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]

    def row(label: str, target: str, get) -> None:
        cells = []
        for n in names:
            try:
                cells.append(get(results["methods"][n]))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")

    t = TARGETS
    row("STEM count, median error", f"<= {t['stem_count_median_error']:.0%}",
        lambda r: _pct(r["stem"]["count"]["median_error"]))
    row("STEM count, images within 20%", f">= {t['stem_count_within_20pct']:.0%}",
        lambda r: _pct(r["stem"]["count"]["within_20pct"]))
    row("STEM mean size, images within 15%", f">= {t['stem_size_within_15pct']:.0%}",
        lambda r: _pct(r["stem"]["size"]["within_15pct"]))
    row("STEM mean size, median error", "", lambda r: _pct(r["stem"]["size"]["median_error"]))
    row("STEM detection precision / recall (median)", "",
        lambda r: f"{_pct(r['stem']['precision_median'])} / {_pct(r['stem']['recall_median'])}")
    row("nanowire count, median error", f"<= {t['nw_count_median_error']:.0%}",
        lambda r: _pct(r["wires"]["nw"]["median_error"]))
    row("nanowire count, tiles within 20%", "", lambda r: _pct(r["wires"]["nw"]["within_20pct"]))
    row("parasitic count, median error", f"<= {t['parasitic_count_median_error']:.0%}",
        lambda r: _pct(r["wires"]["parasitic"]["median_error"]))
    row("parasitic count, tiles within 20%", "", lambda r: _pct(r["wires"]["parasitic"]["within_20pct"]))
    row("all objects, median count error", "", lambda r: _pct(r["wires"]["total"]["median_error"]))
    row("yield, median absolute error (points)", "",
        lambda r: "-" if r["wires"]["yield_abs_error_median"] is None else f"{100 * r['wires']['yield_abs_error_median']:.1f}")
    row("tiles where an array was found", "", lambda r: f"{r['wires']['arrays_found']}/{len(r['wires']['rows'])}")
    row("wires detection precision / recall; class agreement (median)", "",
        lambda r: f"{_pct(r['wires']['precision_median'])} / {_pct(r['wires']['recall_median'])}; "
                  f"{_pct(r['wires']['class_agreement_median'])}")
    row("ms per megapixel, STEM / wires", "",
        lambda r: f"{r['stem']['ms_per_megapixel']:.0f} / {r['wires']['ms_per_megapixel']:.0f}")
    if results.get("speed"):
        row("seconds to segment one 1024x768 image", "learned <= 1 s",
            lambda r: f"{results['speed']['seconds'][r['name']]:.2f}")
        row("seconds to measure it (segmentation included)", "",
            lambda r: f"{results['speed']['measure_seconds'][r['name']]:.2f}")
    weights = results.get("learned_weights")
    if weights:
        lines += ["", f"Learned weights: {weights.get('path')}, trained {weights.get('steps')} steps of "
                  f"{weights.get('batch')} scenes of {weights.get('crop')} px in {weights.get('train_seconds')} s "
                  f"as recorded by that run (target <= 1200 s on a 2-core CPU; the recipe run alone: "
                  f"segmenter_runs.md, run 18); synthetic validation F1 {weights.get('val_f1')}, "
                  f"median count error {weights.get('val_count_error')}."]
    separation = results.get("phase_separation")
    if separation:
        below = {kind: [v < results["separation_min"] for k, v in separation.items() if k.startswith(kind + "/")]
                 for kind in ("stem", "wires")}
        lines += ["", f"Images whose phase separation is below {results['separation_min']} (their answers say counts and "
                  f"sizes are uncertain; auto counts spots there when the classical objects are a mixture): STEM "
                  f"{sum(below['stem'])}/{len(below['stem'])}, nanowire tiles {sum(below['wires'])}/"
                  f"{len(below['wires'])}."]
    lines += ["", "The learned method should beat the classical one on both sets. Sizes in pixels (no calibration). "
              "Precision: measured objects whose centroid lies in a box (one to one); recall: boxes so matched.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="auto,classical,spots,learned",
                        help="comma-separated: auto, classical, spots, learned")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder holding data/")
    parser.add_argument("--limit", type=int, default=None, help="at most N images of each set (quick runs)")
    parser.add_argument("--overlays", type=Path, default=None, help="save PNG overlays (boxes over outlines) here")
    parser.add_argument("--weights", default=None, help="learned segmenter weights (default: the shipped ones)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "measure_real")
    args = parser.parse_args()
    stem_root, wire_root = args.shared / STEM, args.shared / WIRES
    if not (stem_root / "images").is_dir() and not (wire_root / "boxes.csv").is_file():
        print(f"skipped: no data under {args.shared.resolve()} (pass --shared DIR holding data/stem-particles and "
              "data/sem-nanowires)")
        return
    if args.weights:  # the whole measurement's timing runs segment(), which loads the weights this names
        os.environ["MAEMI_SEGMENTER_WEIGHTS"] = str(Path(args.weights).resolve())
    available, skipped = methods(args.methods.split(","), args.weights)
    for name, why in skipped.items():
        print(f"skipping method {name}: {why}")
    stem = stem_cases(stem_root, args.limit) if (stem_root / "images").is_dir() else []
    wires = wire_cases(wire_root, args.limit) if (wire_root / "boxes.csv").is_file() else []
    results = {"machine": machine_info(), "uncommitted_src": source_state(), "targets": TARGETS, "limit": args.limit, "stem_images": len(stem),
               "wire_tiles": len(wires), "skipped": skipped, "methods": {}}
    if "learned" in available:
        results["learned_weights"] = {"path": args.weights or "shipped", **available["learned"].__self__.metadata}
    for name, method in available.items():
        print(f"{name}: {len(stem)} STEM images, {len(wires)} nanowire tiles ...", flush=True)
        results["methods"][name] = {"name": name, "stem": bench_stem(stem, method, args.overlays, name) if stem else None,
                                    "wires": bench_wires(wires, method, args.overlays, name) if wires else None}
    results["speed"] = speed(available)
    results["phase_separation"] = {
        f"{kind}/{case[0].name}": segment(load_grey(case[0]), "classical").phase_separation
        for kind, cases in (("stem", stem), ("wires", wires)) for case in cases}
    results["separation_min"] = SEPARATION_MIN
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()
