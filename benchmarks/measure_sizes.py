"""Benchmark: particle sizes from the threshold's outlines and from edges at half each particle's contrast.

One threshold sits where the phases' histogram puts it; on a field of small particles, whose blurred edges fill the
histogram's middle, that is well under half their contrast, and each edge is cut outside its middle. The classical
pipeline now moves each compact object's edge to half its own contrast (maemi.measure.measurements,
_edges_at_half_contrast); this measures both, side by side in one run, on renders whose truth is what was drawn:
- grids of disks 6-40 px across (area-exact: supersampled 4x), contrast 0.45 on noise 0.03, bright on dark and dark
  on bright, blurred by a Gaussian probe of sigma 0, 1 or 2 px;
- log-normal populations (median 10 or 16 px, geometric spread 1.3), sigma 1 px;
- secondary-electron spheres (radius 30 px) whose tops are as dark as the substrate and whose rims are bright;
- rods lying in random directions, flat-ended or with round caps, 6-14 px wide, sigma 1 or 2 px: their widths (the
  "threshold" column keeps the skeleton's ends out too: that is not what it compares);
- the synthetic corpus (`maemi synth`, seed 0): the first 10 images of each class with counted objects and their size,
  against the generator's mean size (wires, lines, fingers and pads: width where the objects are rods).
Counts are not expected to move (the edges move after everything that decides from the outlines). Prints a table and
writes benchmarks/results/measure_sizes.{json,md} (about three minutes).

    .venv/bin/python benchmarks/measure_sizes.py
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from maemi.data.images import crop_info_bar
from maemi.data.synth import SEM_CLASSES, make_micrograph
from maemi.measure import measurements
from maemi.measure.measurements import measure

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402
from measure_real import source_state, write_results  # noqa: E402

H, W = 384, 512
SUPERSAMPLE = 4


@contextlib.contextmanager
def threshold_outlines():
    """The pipeline as it was before: each object as the threshold outlined it."""
    moved = measurements._edges_at_half_contrast
    measurements._edges_at_half_contrast = lambda seg: seg.labels
    try:
        yield
    finally:
        measurements._edges_at_half_contrast = moved


def grid(step: float) -> list[tuple[float, float]]:
    """The sites of a grid `step` apart that leave half a step to the frame."""
    return [(y, x) for y in np.arange(step / 2, H - step / 2, step) for x in np.arange(step / 2, W - step / 2, step)]


def disks(rng, diameters: np.ndarray, step: float) -> np.ndarray:
    """Area-exact coverage of disks of these diameters on a jittered grid `step` apart (one per site, in order)."""
    sites = grid(step)
    yy, xx = (np.mgrid[: H * SUPERSAMPLE, : W * SUPERSAMPLE] + 0.5) / SUPERSAMPLE
    fine = np.zeros(yy.shape, bool)
    for (y, x), d in zip(sites, diameters):
        y, x, r = y + rng.uniform(-2, 2), x + rng.uniform(-2, 2), d / 2
        box = (slice(int((y - r - 1) * SUPERSAMPLE), int((y + r + 2) * SUPERSAMPLE)),
               slice(int((x - r - 1) * SUPERSAMPLE), int((x + r + 2) * SUPERSAMPLE)))
        fine[box] |= (yy[box] - y) ** 2 + (xx[box] - x) ** 2 < r * r
    return fine.reshape(H, SUPERSAMPLE, W, SUPERSAMPLE).mean((1, 3))


def degrade(cover: np.ndarray, dark: bool, blur: float, rng) -> np.ndarray:
    image = 0.7 - 0.45 * cover if dark else 0.25 + 0.45 * cover
    image = ndimage.gaussian_filter(image, blur) if blur else image
    return np.clip(image + rng.normal(0, 0.03, image.shape), 0, 1).astype(np.float32)


def rods(rng, width: float, length: float, caps: bool, step: float) -> tuple[np.ndarray, int]:
    """Area-exact coverage of rods (rectangles, or spherocylinders with `caps`) in random directions on a grid."""
    yy, xx = (np.mgrid[: H * SUPERSAMPLE, : W * SUPERSAMPLE] + 0.5) / SUPERSAMPLE
    fine, reach = np.zeros(yy.shape, bool), length / 2 + width
    for y, x in grid(step):
        y, x, angle = y + rng.uniform(-2, 2), x + rng.uniform(-2, 2), rng.uniform(0, np.pi)
        box = (slice(max(int((y - reach) * SUPERSAMPLE), 0), int((y + reach) * SUPERSAMPLE)),
               slice(max(int((x - reach) * SUPERSAMPLE), 0), int((x + reach) * SUPERSAMPLE)))
        along = (yy[box] - y) * np.sin(angle) + (xx[box] - x) * np.cos(angle)
        across = (xx[box] - x) * np.sin(angle) - (yy[box] - y) * np.cos(angle)
        if caps:
            core = length / 2 - width / 2
            fine[box] |= np.hypot(along - np.clip(along, -core, core), across) < width / 2
        else:
            fine[box] |= (np.abs(along) < length / 2) & (np.abs(across) < width / 2)
    return fine.reshape(H, SUPERSAMPLE, W, SUPERSAMPLE).mean((1, 3)), len(grid(step))


def se_spheres(rng, radius: float = 30, level: float = 0.2) -> tuple[np.ndarray, int]:
    """Spheres whose SE yield rises as 1 / cos(tilt) towards the rim, their tops as bright as the substrate."""
    yy, xx = np.mgrid[:H, :W]
    image, centres = np.full((H, W), level), []
    for _ in range(5000):
        centre = rng.uniform(radius + 5, [H - radius - 5, W - radius - 5])
        if all(np.hypot(*(centre - c)) > 2 * radius + 20 for c in centres):
            centres.append(centre)
    for cy, cx in centres:
        rho = np.hypot(yy - cy, xx - cx) / radius
        inside = rho < 1
        image[inside] = np.minimum(level / np.sqrt(1 - np.minimum(rho[inside], 0.995) ** 2), 0.95)
    image = ndimage.gaussian_filter(image, 1.5) + rng.normal(0, 0.02, image.shape)
    return np.clip(image, 0, 1).astype(np.float32), len(centres)


def scenes() -> list[dict]:
    """Each rendered scene: what was drawn (count, mean diameter) and its image."""
    out = []
    for i, (d, blur, dark) in enumerate((d, b, k) for d in (6, 8, 12, 20, 40) for b in (0, 1, 2) for k in (0, 1)):
        rng = np.random.default_rng(i)
        step = 3 * d + 8
        n = len(grid(step))
        out.append({"scene": f"disks {d} px, sigma {blur}, {'dark' if dark else 'bright'}", "truth_count": n,
                    "kind": "diameter", "truth_size": float(d),
                    "image": degrade(disks(rng, np.full(n, d), step), dark, blur, rng)})
    for median in (10, 16):
        rng = np.random.default_rng(100 + median)
        step = 3.2 * median + 8
        n = len(grid(step))
        diameters = np.clip(median * np.exp(rng.normal(0, np.log(1.3), n)), 5, step - 6)
        out.append({"scene": f"log-normal, median {median} px, spread 1.3, sigma 1", "truth_count": n,
                    "kind": "diameter", "truth_size": float(diameters.mean()),
                    "image": degrade(disks(rng, diameters, step), False, 1.0, rng)})
    image, n = se_spheres(np.random.default_rng(7))
    out.append({"scene": "SE spheres 60 px, dark tops, bright rims", "truth_count": n, "kind": "diameter",
                "truth_size": 60.0, "image": image})
    for i, (width, blur, caps) in enumerate((w, b, c) for w in (6, 8, 10, 14) for b in (1, 2) for c in (0, 1)):
        rng = np.random.default_rng(200 + i)
        length = 3 * width + 12
        cover, n = rods(rng, width, length, bool(caps), length + 16)
        out.append({"scene": f"rods {width} px wide, {length} long, {'round caps' if caps else 'flat ends'}, sigma "
                    f"{blur} (width)", "truth_count": n, "kind": "width", "truth_size": float(width),
                    "image": degrade(cover, False, blur, rng)})
    return out


def measured(grey: np.ndarray, nm_per_pixel: float | None = None, kind: str = "diameter") -> tuple[int, float | None]:
    m = measure(grey, nm_per_pixel)
    size = m.width_mean_px if kind == "width" and m.width_mean_px else m.diameter_mean_px
    return m.object_count, (m.to_nm(size) if nm_per_pixel else size)


def run() -> dict:
    rendered = []
    for scene in scenes():
        image = scene.pop("image")
        with threshold_outlines():
            before = measured(image, kind=scene["kind"])
        after = measured(image, kind=scene["kind"])
        rendered.append({**scene, "threshold": {"count": before[0], "size": before[1]},
                         "half_contrast": {"count": after[0], "size": after[1]}})
    corpus = {}
    for name in SEM_CLASSES:
        rows = []
        for index in range(40):
            if len(rows) == 10:
                break
            pixels, truth = make_micrograph(name, 0, index)
            if not truth.get("size_mean_nm") or not truth.get("object_count") or truth["size_kind"] == "apex_diameter":
                continue  # a film's grains are not objects; a tip's size is its apex's, not the tip's
            grey, scale = crop_info_bar(pixels.astype(np.float32) / 255), truth["nm_per_pixel"]
            kind = "width" if truth["size_kind"].endswith("width") else "diameter"
            with threshold_outlines():
                before = measured(grey, scale, kind)
            after = measured(grey, scale, kind)
            rows.append({"index": index, "truth_nm": truth["size_mean_nm"], "threshold_nm": before[1],
                         "half_contrast_nm": after[1], "counts_equal": before[0] == after[0]})
        if rows:
            corpus[name] = rows
    return {"rendered": rendered, "corpus": corpus}


def _error(measured_value: float | None, truth: float) -> str:
    return "-" if not measured_value else f"{measured_value / truth - 1:+.0%}"


def markdown(result: dict, machine: dict, dirty: list[str]) -> str:
    lines = ["# Sizes at the threshold and at half contrast (benchmarks/measure_sizes.py)", "",
             f"Commit {machine['commit']}{' (src/ changed: ' + ', '.join(dirty) + ')' if dirty else ''}. "
             "Mean equivalent diameter (rods: mean width) error against what was drawn, default segmenter, the objects "
             "as the threshold outlined them and with their edges at half their own contrast (the pipeline), one run.",
             "",
             "| scene | drawn | counted (threshold / half contrast) | threshold | half contrast |",
             "|---|---|---|---|---|"]
    for r in result["rendered"]:
        lines.append(f"| {r['scene']} | {r['truth_count']} | {r['threshold']['count']} / {r['half_contrast']['count']} "
                     f"| {_error(r['threshold']['size'], r['truth_size'])} "
                     f"| {_error(r['half_contrast']['size'], r['truth_size'])} |")
    lines += ["", "Synthetic corpus, first 10 images of each class with counted objects and a size: median absolute "
              "size error (median signed error); counts equal in every image: "
              f"{all(r['counts_equal'] for rows in result['corpus'].values() for r in rows)}.", "",
              "| class | images | threshold | half contrast |", "|---|---|---|---|"]
    for name, rows in result["corpus"].items():
        cells = []
        for key in ("threshold_nm", "half_contrast_nm"):
            errors = np.array([r[key] / r["truth_nm"] - 1 for r in rows if r[key]])
            cells.append(f"{np.median(np.abs(errors)):.1%} ({np.median(errors):+.1%})" if len(errors) else "-")
        lines.append(f"| {name} | {len(rows)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    result = run()
    machine, dirty = machine_info(), source_state()
    text = markdown(result, machine, dirty)
    write_results(HERE / "results" / "measure_sizes", {"machine": machine, "uncommitted_src": dirty, **result}, text)


if __name__ == "__main__":
    main()
