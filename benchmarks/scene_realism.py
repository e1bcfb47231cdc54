"""Benchmark: how close the segmenter's synthetic STEM scenes are to real STEM micrographs, quantity by quantity.
Prints a table and writes benchmarks/results/scene_realism.{json,md}.

The learned segmenter never sees a real micrograph (maemi.measure.scenes draws what it trains on), so where a
quantity's range in the scenes misses the real images' range, the network never met that case. The same measurement
runs on both, at the segmenter's working size (long side at most segmenter.WORK_SIDE px):

- diameter_px: an object's equivalent diameter (real: the ellipse inscribed in the expert's box);
- contrast: |mean inside - mean of the ring 2-5 px outside it, away from every object| over the image's 0.5-99.5
  percentile range;
- snr_noise: Rose's ratio (Rose, J. Opt. Soc. Am. 38, 196, 1948): the contrast in grey levels over the pixel noise,
  times sqrt(area); 5 is where an object becomes detectable against noise alone;
- snr_clutter: the contrast over the background's own structure at the object's scale: the robust spread of a
  band-pass (Gaussian at sigma minus Gaussian at 2 sigma, sigma nearest to the radius / sqrt 2) over pixels at least
  5 px from every object. A particle on a lumpy support can pass Rose's criterion and still hide among the lumps;
- background_level: the ring's mean within the image's range (0 darkest, 1 brightest): is the particle on vacuum,
  on thin support or on a bright clump;
- per image: noise (pixel noise over the range), objects per 100 x 100 px, and the share of the field they cover.

Real: ../shared/data/stem-particles (33 HAADF/BF STEM images, 5,341 boxes; the dataset's SOURCE.md says 5,321).
Synthetic: scenes of kind stem_particles, every drawn object (hidden or not).

    .venv/bin/python benchmarks/scene_realism.py [--scenes 120] [--shape 256] [--shared DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse
from skimage.segmentation import expand_labels

from maemi.measure.measurements import noise_sigma
from maemi.measure.scenes import render_scene
from maemi.measure.segmenter import WORK_SIDE
from maemi.measure.spots import working_image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from finetune_memory import machine_info  # noqa: E402
from measure_real import SHARED, STEM, load_grey, stem_cases, write_results  # noqa: E402

RING = (2, 5)  # px: the ring an object is seen against
SIGMAS = (0.75, 1.5, 3.0, 6.0, 12.0)  # band-pass scales for the clutter
OBJECT_QUANTITIES = ("diameter_px", "contrast", "snr_noise", "snr_clutter", "background_level")
IMAGE_QUANTITIES = ("noise", "objects_per_100px_square", "area_fraction")
QUANTILES = (0.1, 0.5, 0.9)


def boxes_as_instances(shape: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """Label image of the ellipses inscribed in boxes [M, 4] (left, top, width, height); a later box covers an
    earlier one where they overlap."""
    inst = np.zeros(shape, np.int32)
    for i, (left, top, w, h) in enumerate(boxes, start=1):
        rr, cc = ellipse(top + h / 2, left + w / 2, max(h / 2, 0.5), max(w / 2, 0.5), shape=shape)
        inst[rr, cc] = i
    return inst


def measure(grey: np.ndarray, inst: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-object quantities (arrays over the objects with pixels) and per-image quantities."""
    n = int(inst.max())
    lo, hi = np.percentile(grey, [0.5, 99.5])
    span = max(float(hi - lo), 1e-6)
    sigma = max(noise_sigma(grey), 1e-4)
    values = grey.astype(np.float64).ravel()

    def means(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        total = np.bincount(labels.ravel(), weights=values, minlength=n + 1)[1:]
        return total / np.maximum(count, 1), count

    inside, area = means(inst)
    near = expand_labels(inst, RING[0]) > 0
    ring_labels = np.where(near, 0, expand_labels(inst, RING[1]))
    ring, ring_area = means(ring_labels)
    ok = (area > 0) & (ring_area > 0)
    contrast = np.abs(inside - ring)
    diameter = np.sqrt(4 * area / np.pi)

    background = expand_labels(inst, RING[1]) == 0
    clutter = np.full(n, np.nan)
    if background.sum() > 100:
        spreads = []
        for s in SIGMAS:
            band = ndimage.gaussian_filter(grey, s) - ndimage.gaussian_filter(grey, 2 * s)
            b = band[background]
            spreads.append(1.4826 * float(np.median(np.abs(b - np.median(b)))))
        nearest = np.abs(np.log(diameter[:, None] / 2 / np.sqrt(2) / np.array(SIGMAS)[None])).argmin(axis=1)
        clutter = np.array(spreads)[nearest]
    per_object = {
        "diameter_px": diameter[ok],
        "contrast": (contrast / span)[ok],
        "snr_noise": (contrast / sigma * np.sqrt(area))[ok],
        "snr_clutter": (contrast / np.maximum(clutter, 1e-6))[ok],
        "background_level": np.clip((ring - lo) / span, 0, 1)[ok],
    }
    per_image = {"noise": sigma / span, "objects_per_100px_square": 1e4 * int((area > 0).sum()) / grey.size,
                 "area_fraction": float((inst > 0).mean())}
    return per_object, per_image


def collect(items) -> dict:
    """Quantiles of every quantity over all objects (and all images) of `items`: (grey, instances) pairs."""
    objects: dict[str, list] = {q: [] for q in OBJECT_QUANTITIES}
    images: dict[str, list] = {q: [] for q in IMAGE_QUANTITIES}
    for grey, inst in items:
        per_object, per_image = measure(grey, inst)
        for q in OBJECT_QUANTITIES:
            objects[q].append(per_object[q])
        for q in IMAGE_QUANTITIES:
            images[q].append(per_image[q])
    out = {"objects": int(sum(len(v) for v in objects["diameter_px"])), "images": len(images["noise"])}
    for q in OBJECT_QUANTITIES:
        v = np.concatenate(objects[q]) if objects[q] else np.zeros(0)
        v = v[np.isfinite(v)]
        out[q] = [float(x) for x in np.quantile(v, QUANTILES)] if len(v) else None
    for q in IMAGE_QUANTITIES:
        out[q] = [float(x) for x in np.quantile(images[q], QUANTILES)] if images[q] else None
    return out


def real_items(root: Path):
    for path, boxes in stem_cases(root, None):
        grey, factor = working_image(load_grey(path), WORK_SIDE)
        yield grey, boxes_as_instances(grey.shape, boxes * factor)


def synthetic_items(n: int, shape: int, seed: int):
    for i in range(n):
        scene = render_scene(seed + i, "stem_particles", (shape, shape))
        yield scene.image, scene.instances


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) < 1 else f"{v:.1f}" if abs(v) < 100 else f"{v:.0f}"


def markdown(results: dict) -> str:
    real, synth = results["real"], results["synthetic"]
    m = results["machine"]
    lines = ["# Synthetic STEM scenes against real STEM micrographs (benchmarks/scene_realism.py)", "",
             f"Commit {m.get('commit')}. Real: {real['images']} images, {real['objects']} boxes of "
             f"../shared/data/stem-particles; synthetic: {synth['images']} `stem_particles` scenes of "
             f"{results['shape']} px, {synth['objects']} objects. Both at the segmenter's working size. "
             "10th / 50th / 90th percentile.", "",
             "| quantity | real | synthetic |", "|---|---|---|"]
    for q in OBJECT_QUANTITIES + IMAGE_QUANTITIES:
        cells = [" / ".join(_fmt(x) for x in r[q]) if r[q] else "-" for r in (real, synth)]
        lines.append(f"| {q} | {cells[0]} | {cells[1]} |")
    lines += ["", "Quantities are defined in the script's docstring. The real objects are the boxes' inscribed "
              "ellipses, so their contrast is a little diluted at the corners of a box; the synthetic objects are "
              "exact masks, including objects the noise hides.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=120)
    parser.add_argument("--shape", type=int, default=256)
    parser.add_argument("--seed", type=int, default=5_000)
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared folder holding data/")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scene_realism")
    args = parser.parse_args()
    root = args.shared / STEM
    if not (root / "images").is_dir():
        print(f"skipped: no STEM images under {root.resolve()}")
        return
    results = {"machine": machine_info(), "shape": args.shape, "seed": args.seed,
               "real": collect(real_items(root)),
               "synthetic": collect(synthetic_items(args.scenes, args.shape, args.seed))}
    write_results(args.out, results, markdown(results))


if __name__ == "__main__":
    main()
