"""What of the field maemi.measure.empty_space takes for no specimen, on every real image here and a synthetic corpus.

Per set: how many images get vacuum left out (find_vacuum), the dark beyond the illumination left out (find_unlit),
and black at the frame reported but measured (black_at_frame), each with the images' names and shares; on the STEM
set also how many of the experts' particle boxes have their centre in what was taken (none should). The sets: the
33 STEM images and 5,341 boxes, the 90 nanowire tiles and the 15 whole nanowire images, all 1,800 NEU-DET steel
surfaces (../shared/data), and `maemi synth`'s ten classes, 20 images each (seed 0, info bar cropped). The masks are
segment()'s own (Segmentation.unlit, .empty, .black).

    .venv/bin/python benchmarks/empty_space.py [--shared DIR]   # writes results/empty_space.{json,md} (~4 minutes)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from maemi.data.images import crop_info_bar
from maemi.data.synth import SEM_CLASSES, make_micrograph
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure.boxes import annotated_images
from maemi.measure.measurements import segment

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from measure_real import SHARED, STEM, load_grey, source_state  # noqa: E402
from finetune_memory import machine_info  # noqa: E402

SYNTH_PER_CLASS = 20


def taken(grey: np.ndarray) -> dict[str, np.ndarray]:
    """The masks segment() leaves out (the dark beyond the illumination, the vacuum) or reports (black at the frame).
    The classical segmenter: the masks do not depend on which one runs."""
    seg = segment(grey, method="classical")
    none = np.zeros(grey.shape, bool)
    unlit = none if seg.unlit is None else seg.unlit
    vacuum = none if seg.empty is None else seg.empty & ~unlit
    return {"unlit": unlit, "vacuum": vacuum, "black": none if seg.black is None else seg.black}


def images(shared: Path) -> dict[str, list[tuple[str, np.ndarray, np.ndarray | None]]]:
    """Set name -> [(name, grey image, expert boxes or None)]."""
    sets: dict[str, list] = {"stem": [(p.name, load_grey(p), boxes) for p, boxes in annotated_images(shared / STEM)]}
    nanowires = shared / "data" / "sem-nanowires"
    sets["nanowire tiles"] = [(p.name, load_grey(p), None) for p in sorted((nanowires / "tiles").glob("*.png"))]
    sets["whole nanowire images"] = [(p.name, load_grey(p), None)
                                     for p in sorted((nanowires / "fullres").glob("*.png"))]
    sets["NEU-DET"] = [(p.name, load_grey(p), None) for p in sorted((shared / "data" / "neu-det").glob("*/*.jpg"))]
    sets["synthetic"] = []
    for name in SEM_CLASSES:
        for index in range(SYNTH_PER_CLASS):
            pixels, _ = make_micrograph(name, 0, index)
            sets["synthetic"].append((f"{name}_{index}", crop_info_bar(pixels.astype(np.float32) / 255), None))
    return sets


def rows(shared: Path) -> dict:
    out = {}
    for set_name, cases in images(shared).items():
        found: dict[str, list] = {"unlit": [], "vacuum": [], "black": []}
        boxes_in = {k: 0 for k in found}
        boxes_total = 0
        for name, grey, boxes in cases:
            for kind, mask in taken(grey).items():
                if mask.any():
                    found[kind].append({"image": name, "share": round(float(mask.mean()), 3)})
                if boxes is not None:
                    centre_rows = np.clip((boxes[:, 1] + boxes[:, 3] / 2).astype(int), 0, grey.shape[0] - 1)
                    centre_cols = np.clip((boxes[:, 0] + boxes[:, 2] / 2).astype(int), 0, grey.shape[1] - 1)
                    inside = mask[centre_rows, centre_cols]
                    boxes_in[kind] += int(inside.sum())
            boxes_total += 0 if boxes is None else len(boxes)
        out[set_name] = {"images": len(cases), "found": found,
                         "boxes": boxes_total or None, "boxes_inside": boxes_in if boxes_total else None}
        print(set_name, {k: len(v) for k, v in found.items()}, flush=True)
    return out


def markdown(result: dict, machine: dict, dirty: list[str]) -> str:
    lines = ["# What is taken for no specimen (benchmarks/empty_space.py)", "",
             f"Commit {machine['commit']}{' (src/ changed: ' + ', '.join(dirty) + ')' if dirty else ''}. "
             "Vacuum and the dark beyond the illumination are left out of the field; black at the frame is "
             "reported and measured as field (maemi.measure.empty_space).", "",
             "| set | images | dark beyond the illumination | vacuum | black at the frame, reported | expert boxes "
             "inside (unlit / vacuum / black) |", "|---|---|---|---|---|---|"]

    def cell(entries: list[dict]) -> str:
        if not entries:
            return "0"
        shares = [e["share"] for e in entries]
        names = ", ".join(e["image"] for e in entries[:6]) + (", ..." if len(entries) > 6 else "")
        spread = f"{min(shares):.0%}" if min(shares) == max(shares) else f"{min(shares):.0%}-{max(shares):.0%}"
        return f"{len(entries)} ({spread}: {names})"

    for set_name, r in result.items():
        inside = ("-" if r["boxes_inside"] is None else
                  f"{r['boxes_inside']['unlit']} / {r['boxes_inside']['vacuum']} / {r['boxes_inside']['black']} "
                  f"of {r['boxes']}")
        lines.append(f"| {set_name} | {r['images']} | {cell(r['found']['unlit'])} | {cell(r['found']['vacuum'])} | "
                     f"{cell(r['found']['black'])} | {inside} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    args = parser.parse_args()
    if not (args.shared / STEM).is_dir():
        sys.exit(f"{args.shared / STEM}: not found (pass --shared)")
    result = rows(args.shared)
    machine, dirty = machine_info(), source_state()
    table = markdown(result, machine, dirty)
    print(table)
    out = HERE / "results" / "empty_space"
    atomic_write_json(out.with_suffix(".json"), {"machine": machine, "uncommitted_src": dirty, "sets": result})
    atomic_write_text(out.with_suffix(".md"), table)


if __name__ == "__main__":
    main()
