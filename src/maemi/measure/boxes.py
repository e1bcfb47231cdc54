"""Experts' bounding boxes: read from YOLO label files, and matched to measured objects to score a segmentation.

The common annotation format of particle datasets (and of the labelling tools labs use): a folder `images/` and a
folder `labels/` with one `NAME.txt` per image, one line per object, `class cx cy w h`, all relative to the image's
size. A measured object matches a box its centroid lies in, one to one (the Hungarian algorithm, nearest to the box
centres): an expert's box says where a particle is and about how large, not its outline, so a centroid in the box is
the test; scoring by IoU against a rectangle would punish a correct round outline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment

from maemi.measure.measurements import object_shapes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def read_yolo_boxes(path: Path, width: int, height: int) -> np.ndarray:
    """Boxes [M, 4] (left, top, width, height) in pixels from a YOLO label file; lines that are not five or more
    numbers are skipped (some tools add blank or comment lines)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) < 5:
            continue
        try:
            cx, cy, w, h = (float(v) for v in parts[1:5])
        except ValueError:
            continue
        rows.append((cx * width - w * width / 2, cy * height - h * height / 2, w * width, h * height))
    return np.array(rows, float).reshape(-1, 4)


def annotated_images(folder: Path) -> list[tuple[Path, np.ndarray]]:
    """(image, boxes) for each image of `folder`/images that has a label file in `folder`/labels, sorted by name."""
    folder = Path(folder)
    if not (folder / "images").is_dir() or not (folder / "labels").is_dir():
        raise FileNotFoundError(f"{folder}: expected images/ and labels/ (YOLO layout: labels/NAME.txt per image)")
    cases = []
    for image in sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = folder / "labels" / f"{image.stem}.txt"
        if label.exists():
            with Image.open(image) as im:
                width, height = im.size
            cases.append((image, read_yolo_boxes(label, width, height)))
    if not cases:
        raise FileNotFoundError(f"{folder}: no image in images/ has a label file in labels/")
    return cases


def match(centroids: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of objects (centroids [N, 2], row and column) to boxes [M, 4] (left, top, width, height):
    a pair is allowed when the object's centroid lies in the box; among those, the Hungarian algorithm minimises the
    total distance to the box centres (relative to the box size). Returns the matched object and box indices."""
    if len(centroids) == 0 or len(boxes) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    y, x = centroids[:, 0:1], centroids[:, 1:2]  # [N, 1]
    left, top, w, h = boxes.T  # [M] each
    inside = (x >= left) & (x <= left + w) & (y >= top) & (y <= top + h)  # [N, M]
    candidates = np.flatnonzero(inside.any(axis=1))
    boxes_hit = np.flatnonzero(inside.any(axis=0))
    if len(candidates) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    sub = inside[np.ix_(candidates, boxes_hit)]
    dx = (x[candidates] - (left + w / 2)[boxes_hit]) / w[boxes_hit]
    dy = (y[candidates] - (top + h / 2)[boxes_hit]) / h[boxes_hit]
    cost = np.where(sub, np.hypot(dx, dy), 1e6)
    rows, cols = linear_sum_assignment(cost)
    ok = sub[rows, cols]
    return candidates[rows[ok]], boxes_hit[cols[ok]]


@dataclass
class BoxScore:
    measured: int  # objects found
    boxes: int  # objects the expert boxed
    matched: int

    @property
    def count_error(self) -> float:
        return abs(self.measured - self.boxes) / self.boxes if self.boxes else float(self.measured > 0)


def score_against_boxes(labels: np.ndarray, boxes: np.ndarray) -> BoxScore:
    centroids = object_shapes(labels).centroids
    obj, _ = match(centroids, boxes)
    return BoxScore(len(centroids), len(boxes), len(obj))


def box_instances(boxes: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels [H, W] int32 from boxes [M, 4] (left, top, width, height, pixels): each box's inscribed
    ellipse, labelled 1..M in the boxes' order. An expert's box is a particle's extent, not its outline; the ellipse
    has the box's equivalent diameter (sqrt(w h), what the benchmarks compare sizes with) and a round particle's
    shape. Larger ellipses are drawn first, so where two overlap the smaller, nearer-the-front one keeps its pixels
    and every boxed particle keeps a core."""
    h, w = shape
    labels = np.zeros((h, w), np.int32)
    for i in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable"):
        left, top, bw, bh = boxes[i]
        cx, cy, rx, ry = left + bw / 2, top + bh / 2, max(bw / 2, 0.5), max(bh / 2, 0.5)
        r0, r1 = max(int(np.floor(cy - ry)), 0), min(int(np.ceil(cy + ry)) + 1, h)
        c0, c1 = max(int(np.floor(cx - rx)), 0), min(int(np.ceil(cx + rx)) + 1, w)
        if r0 >= r1 or c0 >= c1:
            continue  # outside the image
        yy, xx = np.ogrid[r0:r1, c0:c1]
        inside = ((yy + 0.5 - cy) / ry) ** 2 + ((xx + 0.5 - cx) / rx) ** 2 <= 1.0  # pixel centres at +0.5
        labels[r0:r1, c0:c1][inside] = i + 1
    return labels
