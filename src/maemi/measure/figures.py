"""The pictures `maemi measure` draws: what was segmented (an overlay on the image) and the size distribution.

Both are PNGs written atomically: a reader sees the old picture or the new one, never half of one.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage
from skimage.color import label2rgb
from skimage.segmentation import find_boundaries

from maemi.fileio import atomic_write_bytes

TINT = 0.25  # how much of its colour an object's inside takes: enough to tell neighbours apart, the image still seen
INFO_BAR_DIM = 0.5  # the info bar is shown dimmed: it was not measured


def overlay_image(whole: np.ndarray, labels: np.ndarray, numbers: bool = True,
                  left_out: tuple[tuple[int, int, int, int], ...] = (), empty: np.ndarray | None = None) -> Image.Image:
    """The whole grey image ([H, W] in [0, 1], info bar included) with each object of `labels` (the segmentation of
    the top labels.shape[0] rows) outlined and tinted in its own colour and numbered with its object_id; the info bar
    below, the `left_out` boxes (left, top, right, bottom: drawn scale bars) and the vacuum beyond a support film
    (`empty`, the shape of `labels`) are dimmed. Background pixels keep their grey value."""
    top = labels.shape[0]
    rgb = np.repeat(whole[..., None], 3, axis=2).astype(np.float32)  # [H, W, 3]
    colours = label2rgb(labels, bg_label=0)  # [top, W, 3]: one colour per object, cycling through a fixed palette
    measured = rgb[:top]
    inside = labels > 0
    measured[inside] = (1 - TINT) * measured[inside] + TINT * colours[inside]
    outline = find_boundaries(labels, mode="inner")  # on the object's own pixels, so touching objects keep both
    measured[outline] = colours[outline]
    rgb[top:] *= INFO_BAR_DIM
    if empty is not None:
        measured[empty] *= INFO_BAR_DIM
    for left, top_, right, bottom in left_out:
        rgb[top_:bottom, left:right] *= INFO_BAR_DIM
    picture = Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")
    if numbers and inside.any():
        _number(picture, labels)
    return picture


def _number(picture: Image.Image, labels: np.ndarray) -> None:
    """Each object's id at its centroid, white on a dark edge so it reads on any background."""
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, min(picture.size) // 60))
    ids = np.unique(labels)[1:]
    for i, (y, x) in zip(ids, ndimage.center_of_mass(np.ones(labels.shape), labels, ids)):
        draw.text((x, y), str(i), fill="white", font=font, anchor="mm", stroke_width=1, stroke_fill="black")


def histogram_png(diameters: list[float], unit: str, title: str, things: str = "object",
                  weights: list[float] | None = None) -> bytes:
    """A histogram of diameters (already in `unit`, "nm" or "px") as PNG bytes: the objects' equivalent diameters, or
    with things="fibre" a fibre mat's fibre diameters; with `weights` (each object's size_weight), the
    frame-weighted distribution, as the size distribution's percentiles take it."""
    # the object-oriented API, not pyplot: no global figure state, no display backend needed
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    values = np.asarray(diameters, dtype=float)
    if len(values):
        w = np.ones_like(values) if weights is None else np.asarray(weights, dtype=float)
        # the bins from every object; the heights are the weighted counts (objects the frame cuts weigh 0)
        ax.hist(values, bins=np.histogram_bin_edges(values, bins="auto"), weights=w, color="tab:blue",
                edgecolor="white")
        mean = float(np.average(values, weights=w))
        std = float(np.sqrt(np.average((values - mean) ** 2, weights=w)))
        ax.set_title(f"{title}\n{len(values)} {things}s, {'frame-weighted ' if weights is not None else ''}mean "
                     f"{mean:.4g} {unit}, std {std:.4g} {unit}", fontsize=10)
    else:
        ax.set_title(f"{title}\nno {things}s segmented", fontsize=10)
    ax.set_xlabel(f"{'equivalent' if things == 'object' else things} diameter ({unit})")
    ax.set_ylabel(f"{things}s" if weights is None else f"{things}s, frame-weighted")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def write_png(path: str | os.PathLike, picture: Image.Image | bytes) -> None:
    if isinstance(picture, Image.Image):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        picture = buffer.getvalue()
    atomic_write_bytes(path, picture)


def output_names(paths: list[Path]) -> list[str]:
    """A file-name stem per input, unique: a/x.png and b/x.tif give "x" and "x-2", so no picture overwrites another."""
    names: list[str] = []
    for path in paths:
        stem = Path(path).stem or "image"
        name, k = stem, 1
        while name in names:
            k += 1
            name = f"{stem}-{k}"
        names.append(name)
    return names
