"""The per-object table: one row per segmented object, from the very segmentation the aggregate Measurements average.

Sizes come from scikit-image's region properties. The equivalent diameter, circularity and aspect ratio are taken from
`object_shapes`, the numbers `measure()` averages, so the table's mean diameter is the Measurements' diameter_mean_px
exactly. Rows are in pixels; `table_rows` adds the nm columns when the scale is known (empty when not), next to the
scale and its source, so that a pixel is never read as a nanometre.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import ConvexHull
from skimage.measure import find_contours, regionprops

from maemi.data.datasets import metadata_for
from maemi.data.images import load_image
from maemi.fileio import atomic_write_text
from maemi.serve.rows import table_format
from maemi.teachers.measure import MeasuredImage, measure_segmented
from maemi.measure.measurements import DEFAULT_SEGMENTER, Segmentation, counted_fibres, object_shapes
from maemi.measure.size_distribution import frame_extents, frame_weights

# px columns with a nm twin
LENGTHS = ("equivalent_diameter", "feret_max", "feret_min", "perimeter", "centroid_x", "centroid_y")
COLUMNS = ["path", "object_id", "nm_per_pixel", "scale_source", "area_px", "area_nm2",
           "equivalent_diameter_px", "equivalent_diameter_nm", "feret_max_px", "feret_max_nm", "feret_min_px",
           "feret_min_nm", "perimeter_px", "perimeter_nm", "aspect_ratio", "circularity", "solidity", "centroid_x_px",
           "centroid_y_px", "centroid_x_nm", "centroid_y_nm", "orientation_deg", "touches_frame", "size_weight"]
# a fibre mat's table: one row per fibre its count counts (maemi.measure.fibres), not per segmented region
FIBRE_COLUMNS = ["path", "fibre_id", "nm_per_pixel", "scale_source", "length_px", "length_nm", "diameter_px",
                 "diameter_nm"]


@dataclass(frozen=True)
class ObjectRow:
    """One segmented object; lengths in pixels, x to the right and y down from the top-left corner."""

    object_id: int  # its label in the segmentation (the number on the overlay)
    area_px: float
    equivalent_diameter_px: float  # of the disk of the same area
    feret_max_px: float  # the longest caliper width over all directions
    feret_min_px: float  # the shortest caliper width
    perimeter_px: float  # the outline's length (scikit-image's, the one circularity takes)
    aspect_ratio: float  # major / minor axis of the fitted ellipse
    circularity: float  # 4 pi A / P^2, 1 for a disk
    solidity: float  # area over its convex hull's: 1 for a convex object, less for an agglomerate or a crescent
    centroid_x_px: float
    centroid_y_px: float
    orientation_deg: float  # the major axis, 0-180 degrees counter-clockwise from horizontal as seen on screen
    touches_frame: bool  # cut by the edge of the measured field: its size is too small
    # its weight in the size distribution (D10/D50/D90): 0 when the frame cuts it, else the inverse of the chance that
    # an object of its extent lies wholly inside the field (maemi.measure.size_distribution.frame_weights)
    size_weight: float


def min_feret(points: np.ndarray) -> float:
    """Smallest caliper width of a 2-D point set.

    The minimum width of a convex polygon is reached with one caliper flush against a hull edge (the rotating
    calipers theorem; Toussaint, "Solving geometric problems with the rotating calipers", 1983), so it is the
    smallest, over hull edges, of the hull's extent along that edge's normal. Written here because scikit-image has
    only the maximum; all K edges against all K vertices at once in numpy, as hulls here have at most a few hundred.
    """
    hull = points[ConvexHull(points).vertices]  # [K, 2]
    edges = np.roll(hull, -1, axis=0) - hull  # [K, 2]
    normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1) / np.linalg.norm(edges, axis=1, keepdims=True)
    extent = hull @ normals.T  # [K vertices, K edges]
    return float((extent.max(axis=0) - extent.min(axis=0)).min())


def _hull_outline(convex_image: np.ndarray) -> np.ndarray:
    # the points regionprops' feret_diameter_max measures (its convex image's contour at level 0.5), so that both
    # Feret diameters describe the same outline and min <= max
    return np.vstack(find_contours(np.pad(convex_image, 2), 0.5, fully_connected="high"))


def object_table(labels: np.ndarray) -> list[ObjectRow]:
    """One row per object of a label image (segment().labels), in label order."""
    shapes = object_shapes(labels)
    extent, on_edge = frame_extents(labels, shapes.ids)
    weights = frame_weights(extent, on_edge, labels.shape)
    rows = []
    for i, region in enumerate(regionprops(labels)):  # label order, as object_shapes
        rows.append(ObjectRow(
            object_id=int(region.label),
            area_px=float(shapes.area[i]),
            equivalent_diameter_px=float(shapes.diameters[i]),
            feret_max_px=float(region.feret_diameter_max),
            feret_min_px=min_feret(_hull_outline(region.image_convex)),
            perimeter_px=float(shapes.perimeter[i]),
            aspect_ratio=float(shapes.aspect[i]),
            circularity=float(shapes.circularity[i]),
            solidity=float(region.solidity),
            centroid_x_px=float(shapes.centroids[i, 1]),
            centroid_y_px=float(shapes.centroids[i, 0]),
            # regionprops: the angle from the row axis, -90..90 degrees; +90 turns it to from the x axis
            orientation_deg=(90.0 + math.degrees(region.orientation)) % 180.0,
            touches_frame=bool(on_edge[i]),
            size_weight=float(weights[i]),
        ))
    return rows


def table_rows(path: str, objects: list[ObjectRow], nm_per_pixel: float | None, scale_source: str | None
               ) -> list[dict]:
    """The rows of the objects table (keys: COLUMNS): the px values, and the nm values when the scale is known."""
    out = []
    for obj in objects:
        row = {"path": path, "nm_per_pixel": nm_per_pixel, "scale_source": scale_source, **asdict(obj)}
        row["area_nm2"] = None if nm_per_pixel is None else obj.area_px * nm_per_pixel**2
        for name in LENGTHS:
            row[f"{name}_nm"] = None if nm_per_pixel is None else row[f"{name}_px"] * nm_per_pixel
        out.append({c: row[c] for c in COLUMNS})
    return out


def fibre_rows(path: str, seg: Segmentation, nm_per_pixel: float | None, scale_source: str | None) -> list[dict]:
    """The rows of the fibres table (keys: FIBRE_COLUMNS) of a fibre mat: each counted fibre's traced length (along
    its centre line, through crossings and gaps) and mean diameter (twice the distance to the edge along it, away from
    crossings and ends), in px and in nm when the scale is known. Empty when the objects are not a fibre mat. Its row
    count is the Measurements' fibre_count, its diameters' mean weighted by length their fibre_diameter_mean_px."""
    fibres = seg.fibres  # the trace the measurements counted, not a second one
    if fibres is None:
        return []
    out = []
    for number, i in enumerate(counted_fibres(fibres), start=1):
        row = {"path": path, "fibre_id": number, "nm_per_pixel": nm_per_pixel, "scale_source": scale_source,
               "length_px": fibres.lengths_px[i], "diameter_px": fibres.diameters_px[i]}
        for name in ("length", "diameter"):
            row[f"{name}_nm"] = None if nm_per_pixel is None else row[f"{name}_px"] * nm_per_pixel
        out.append({c: row[c] for c in FIBRE_COLUMNS})
    return out


def write_table(path: str | os.PathLike, rows: list[dict], columns: list[str] = COLUMNS) -> None:
    """The whole table at once, atomically: CSV (empty cell for None) or JSONL, by the suffix."""
    if table_format(path) == "jsonl":
        atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)  # DictWriter writes None as an empty cell
    atomic_write_text(path, buffer.getvalue())


@dataclass
class MeasuredObjects:
    measured: MeasuredImage  # what maemi.teachers.measure.measure_file gives
    whole: np.ndarray  # [H, W] the whole grey image, info bar included; the measured part is the rows above the bar
    segmentation: Segmentation  # of the measured part


def measure_objects_file(path: Path, nm_per_pixel: float | None = None, segmenter: str = DEFAULT_SEGMENTER
                         ) -> MeasuredObjects:
    """measure_file (with the metadata.jsonl row of the file when one lists it, as the assistant measures), keeping
    the segmentation for the object table and the overlay, so that they come from the same one as the
    Measurements. Raises ImageReadError, or ValueError for an image too small to measure."""
    measured, seg, whole = measure_segmented(load_image(path), path, metadata_for(path), nm_per_pixel, segmenter)
    return MeasuredObjects(measured, whole, seg)
