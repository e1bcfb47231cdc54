"""A second real labelled set for the lab-folder benchmark: the SEM nanowire boxes cut out as class folders.

`../shared/data/sem-nanowires/tiles/boxes.csv` holds 4,840 hand-drawn boxes on 31 tiles of 15 real SEM micrographs of
GaAs nanowire arrays (Friedl et al., DeepSEM, MIT): a vertical nanowire (`nw`), a parasitic crystal (`parasitic`) or a
nanospade (`nanospade`). Telling them apart is what a fab engineer measures the growth yield by. This script writes one
square crop per box, centred on it, as OUT/<class>/<micrograph>__<tile>__<n>.png: a class-folder dataset such as a lab
would hand to `maemi train`. Neighbouring objects show in the crop, as they do around any object in the array; the
label is the centre object's.

    .venv/bin/python benchmarks/nanowire_crops.py --out runs/nanowire-crops

Split it by micrograph (`maemi data split OUT --group-pattern '^(\\d+nm_\\d+)_'`) so that no micrograph is on two sides.
Same input, same bytes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter, defaultdict
from io import BytesIO
from pathlib import Path

from PIL import Image

from maemi.fileio import atomic_write_bytes

HERE = Path(__file__).resolve().parent
DEFAULT_TILES = HERE.parent.parent / "shared" / "data" / "sem-nanowires" / "tiles"
SIZE = 48  # pixels of each saved crop; a median nanowire box is 11x31, a parasitic crystal 17x21
MARGIN = 1.25  # the crop's side is at least this many times the box's longer side, so large crystals fit whole
GROUP_PATTERN = r"^(\d+nm_\d+)_"  # the micrograph a crop comes from


def crop_box(tile: Image.Image, left: int, top: int, width: int, height: int) -> Image.Image:
    """The square around the box's centre (side max(SIZE, MARGIN x longer side)), moved inside the tile, at SIZE."""
    side = min(max(SIZE, round(MARGIN * max(width, height))), tile.width, tile.height)
    cx, cy = left + width / 2, top + height / 2
    x0 = int(round(min(max(cx - side / 2, 0), tile.width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), tile.height - side)))
    crop = tile.crop((x0, y0, x0 + side, y0 + side))
    return crop if side == SIZE else crop.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def write_crops(tiles: Path, out: Path) -> tuple[Counter, int]:
    """Write the crops; returns the crops per class and how many boxes were left out. The source labels some objects
    twice (two boxes on one object, ~50 pairs, mostly `nw` and `parasitic`), which gives pixel-identical crops: one
    copy is kept when the labels agree, none when they disagree (the label is unknown)."""
    boxes_csv = tiles / "boxes.csv"
    if not boxes_csv.is_file():
        sys.exit(f"{boxes_csv}: not found (pass --tiles)")
    by_tile: dict[str, list[dict]] = defaultdict(list)
    with boxes_csv.open(newline="") as handle:
        for row in csv.DictReader(handle):
            by_tile[row["image"]].append(row)
    crops: dict[bytes, list[tuple[str, Path]]] = defaultdict(list)  # PNG bytes -> (class, path) of each box
    for name in sorted(by_tile):
        with Image.open(tiles / name) as image:
            tile = image.convert("L")
        stem = Path(name).stem.replace("_cropped_", "__")  # "130nm_21__x1_y0"
        for n, row in enumerate(by_tile[name]):
            crop = crop_box(tile, *(int(row[k]) for k in ("left", "top", "width", "height")))
            buffer = BytesIO()
            crop.save(buffer, format="PNG")
            crops[buffer.getvalue()].append((row["class"], out / row["class"] / f"{stem}__{n:04d}.png"))
    counts: Counter = Counter()
    for data, boxes in crops.items():
        if len({label for label, _ in boxes}) > 1:
            continue
        label, path = boxes[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        counts[label] += 1
    return counts, sum(len(boxes) for boxes in crops.values()) - sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=Path, default=DEFAULT_TILES, help="sem-nanowires/tiles (with boxes.csv)")
    parser.add_argument("--out", type=Path, required=True, help="class folders are written here")
    args = parser.parse_args()
    counts, left_out = write_crops(args.tiles, args.out)
    print(f"wrote {sum(counts.values())} crops of {SIZE}x{SIZE} to {args.out}: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
          + f"; {left_out} boxes left out (the same object boxed twice)")


if __name__ == "__main__":
    main()
