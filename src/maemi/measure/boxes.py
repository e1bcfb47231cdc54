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
