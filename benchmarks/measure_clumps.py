"""Benchmark: agglomerates of overlapping particles counted particle by particle, and lone shapes left whole.

No real agglomerate with per-particle labels is at hand, so rendered fields are checked against what was drawn:
- sintered: 12 fields (512x640) of 6-11 clusters of 1-6 disks (radius 10-25 px; each new disk's centre 0.62-0.95 of
  the two radii's sum from a disk of its cluster and at least the larger radius plus 0.4 of the smaller, so it shows
  its own centre), drawn three ways in turn: secondary-electron spheres with bright rims lying over one another,
  bright-field TEM whose thickness adds where they overlap, and flat disks; blurred and noisy. Truth: the disks.
- lone shapes: 10 fields of up to 12 shapes of one kind 36-72 px across, apart (ellipses 1.5, 2 and 3 to 1, squares,
  hexagons, triangles, lumpy and bean-shaped grains, particles with a bright rim): each is one object.
- the synthetic corpus (`maemi synth`, seed 0): the first 6 images with a count of each class.
Count error (measured - truth) / truth per field, default segmenter. Prints a table and writes
benchmarks/results/measure_clumps.{json,md} (about a minute).

    .venv/bin/python benchmarks/measure_clumps.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from maemi.data.images import crop_info_bar
from maemi.data.synth import SEM_CLASSES, make_micrograph
from maemi.measure.measurements import measure

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402
from measure_real import source_state, write_results  # noqa: E402

H, W = 512, 640
YY, XX = np.mgrid[0:H, 0:W].astype(float)
SHAPES = ("ellipse1.5", "ellipse2", "ellipse3", "square", "hexagon", "triangle", "lumpy", "bean", "rimmed", "lumpy")


def apart(rng, n: int, spacing: float, margin: float = 60) -> list[tuple[float, float]]:
    """Up to n points at least `spacing` apart, by rejection (fewer where the field is full)."""
    points: list[tuple[float, float]] = []
    for _ in range(5000):
        if len(points) >= n:
            break
        p = (rng.uniform(margin, H - margin), rng.uniform(margin, W - margin))
        if all(np.hypot(p[0] - a, p[1] - b) > spacing for a, b in points):
            points.append(p)
    return points


def clusters(rng, n: int) -> list[tuple[float, float, float]]:
    disks = []
    for cy, cx in apart(rng, n, 130):
        cluster = [(cy, cx, rng.uniform(10, 25))]
        size = rng.integers(1, 7)
        for _ in range(300):
            if len(cluster) >= size:
                break
            y0, x0, r0 = cluster[rng.integers(len(cluster))]
            r, angle = rng.uniform(10, 25), rng.uniform(0, 2 * np.pi)
            gap = max(rng.uniform(0.62, 0.95) * (r0 + r), max(r0, r) + 0.4 * min(r0, r))
            y, x = y0 + gap * np.sin(angle), x0 + gap * np.cos(angle)
            if r + 2 < y < H - r - 2 and r + 2 < x < W - r - 2 and all(
                    np.hypot(y - b, x - a) >= 0.99 * max(0.62 * (r + s), max(r, s) + 0.4 * min(r, s))
                    for b, a, s in cluster):
                cluster.append((y, x, r))
        disks += cluster
    return disks


def draw_disks(disks, style: str, rng) -> np.ndarray:
    if style == "tem":  # transmitted intensity falls with the thickness, which adds where spheres overlap
        thickness = sum(2 * np.sqrt(np.clip(r * r - (YY - y) ** 2 - (XX - x) ** 2, 0, None)) for y, x, r in disks)
        return 0.85 * np.exp(-0.04 * thickness) + 0.05
    image, height = np.full((H, W), 0.3), np.full((H, W), -np.inf)
    for i in rng.permutation(len(disks)):
        y, x, r = disks[i]
        rho = np.hypot(YY - y, XX - x)
        inside = rho < r
        if style == "flat":
            image[inside] = 0.75
            continue
        tilt = np.sqrt(np.clip(1 - (rho / r) ** 2, 0, 1))  # the surface normal's cosine: SE yield rises at the rim
        over = inside & (tilt * r + 0.01 * i > height)
        image = np.where(over, 0.45 + 0.12 / np.maximum(tilt, 0.35) - 0.1 * (YY - y) / r, image)
        height = np.where(over, tilt * r + 0.01 * i, height)
    return image


def lone_shapes(rng, kind: str) -> tuple[np.ndarray, int]:
    image = np.full((H, W), 0.25)
    centres = apart(rng, 12, 150)
    for cy, cx in centres:
        r, turn = rng.uniform(18, 36), rng.uniform(0, np.pi)
        u = (XX - cx) * np.cos(turn) + (YY - cy) * np.sin(turn)
        v = (YY - cy) * np.cos(turn) - (XX - cx) * np.sin(turn)
        angle, rho = np.arctan2(v, u), np.hypot(u, v)
        if kind == "rimmed":  # a secondary-electron particle: dark top, bright rim
            image = np.where(rho < r, 0.45 + 0.3 * (rho / r) ** 4, image)
            continue
        if kind.startswith("ellipse"):
            q = float(kind[7:])
            inside = (u / (r * np.sqrt(q))) ** 2 + (v * np.sqrt(q) / r) ** 2 < 1
        elif kind == "square":
            inside = (np.abs(u) < 0.85 * r) & (np.abs(v) < 0.85 * r)
        elif kind == "hexagon":
            inside = rho * np.cos(angle % (np.pi / 3) - np.pi / 6) < 0.9 * r
        elif kind == "triangle":
            inside = rho * np.cos(angle % (2 * np.pi / 3) - np.pi / 3) < 0.6 * r
        elif kind == "lumpy":
            phase = rng.uniform(0, 2 * np.pi, 3)
            inside = rho < r * (1 + 0.18 * np.sin(3 * angle + phase[0]) + 0.12 * np.sin(5 * angle + phase[1])
                                + 0.08 * np.sin(2 * angle + phase[2]))
        else:  # bean
            inside = rho < r * (1 - 0.3 * np.cos(2 * angle)) * (1 + 0.25 * np.cos(angle))
        image[inside] = 0.7
    return image, len(centres)


def degrade(image: np.ndarray, rng) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(image, 1.0) + rng.normal(0, 0.035, image.shape), 0, 1)


def error(measured: int, truth: int) -> float:
    return (measured - truth) / truth


def run() -> dict:
    sintered = []
    for seed in range(12):
        rng = np.random.default_rng(seed)
        disks = clusters(rng, 6 + seed % 6)
        style = ("se", "tem", "flat")[seed % 3]
        sintered.append({"seed": seed, "style": style, "disks": len(disks),
                         "error": error(measure(degrade(draw_disks(disks, style, rng), rng)).object_count, len(disks))})
    lone = []
    for i, kind in enumerate(SHAPES):
        rng = np.random.default_rng(100 + i)
        image, shown = lone_shapes(rng, kind)
        lone.append({"kind": kind, "shapes": shown, "error": error(measure(degrade(image, rng)).object_count, shown)})
    corpus = {}
    for name in SEM_CLASSES:
        errors = []
        for index in range(40):
            if len(errors) == 6:
                break
            pixels, truth = make_micrograph(name, 0, index)
            if truth.get("object_count"):
                grey = crop_info_bar(pixels.astype(np.float32) / 255)
                errors.append(error(measure(grey).object_count, truth["object_count"]))
        if errors:
            corpus[name] = errors
    return {"sintered": sintered, "lone": lone, "corpus": corpus}


def markdown(result: dict, machine: dict, dirty: list[str]) -> str:
    def share(errors) -> str:
        return f"{np.median(np.abs(errors)):.0%} (within 20%: {np.mean(np.abs(errors) <= 0.2):.0%})"

    sintered = [r["error"] for r in result["sintered"]]
    lines = ["# Agglomerates and lone shapes (benchmarks/measure_clumps.py)", "",
             f"Commit {machine['commit']}{' (src/ changed: ' + ', '.join(dirty) + ')' if dirty else ''}. "
             "Median absolute count error per field, default segmenter; truth is what was drawn.", "",
             "| fields | median count error |", "|---|---|",
             f"| sintered clusters, 12 fields, {sum(r['disks'] for r in result['sintered'])} disks | "
             f"{share(sintered)}; "
             f"per field {', '.join(f'{e:+.0%}' for e in sintered)} |",
             f"| lone shapes, 10 fields of one kind | {share([r['error'] for r in result['lone']])}; worst "
             f"{max(abs(r['error']) for r in result['lone']):.0%} |"]
    lines += [f"| corpus {name}, {len(errors)} images | {share(errors)} |" for name, errors in result["corpus"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    result = run()
    machine, dirty = machine_info(), source_state()
    text = markdown(result, machine, dirty)
    write_results(HERE / "results" / "measure_clumps", {"machine": machine, "uncommitted_src": dirty, **result}, text)


if __name__ == "__main__":
    main()
