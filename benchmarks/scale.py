"""Benchmark: reading an image's scale (issue 22). Prints tables and writes benchmarks/results/scale.{json,md}.

1. Scale-bar labels: the 252 label crops of ../shared/data/scalebars (published micrographs, text in NAME.gt.txt): the
   label's value and unit, read by each engine. A reading counts as right when it is trusted and its value and unit
   equal the ground truth's; trusted but wrong is the dangerous case (a wrong scale) and is counted apart. Targets:
   right on >= 95%.
2. The synthetic corpus (the demo's generator: `maemi synth --per-class 20 --seed 0`, 200 images) with its metadata hidden:
   nm per pixel from the info bar alone (read_scale, scale bar only), within 2% of the generator's truth on >= 98%.
4. Scale bars drawn on the micrograph (no info bar): synthetic micrographs with a bar and label burnt into a corner
   (random font, size, ink, backdrop, corner, JPEG): is the bar found, is the scale within 2%, and do the objects
   leave it out; and on real micrographs that carry none (../shared/data), how often a bar is wrongly found.
3. Instrument metadata: TIFFs written here with documented tag contents (Zeiss, including a file whose "Pixel Size"
   differs from its "Image Pixel Size"; FEI/Thermo Fisher; Tescan; ImageJ; OME-TIFF; a 72-dpi TIFF that must give no
   scale) and Hitachi/JEOL sidecar files: the pixel size must be exact.
   Gatan DM3 and DM4 files are written byte by byte (tests/gatan_dm.py): no package on the registries we reach ships
   a DM3/DM4 test file (RosettaSciIO fetches its test data from the network; ncempy ships none).

    .venv/bin/python benchmarks/scale.py [--engines both,tesseract,learned] [--synthetic-per-class 20] [--skip ...]

A skipped section keeps its rows from the previous results file, marked with the commit that measured them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.measure.ocr import read_label, tesseract_available
from maemi.measure.scale import read_scale
from maemi.measure.units import NM_PER_UNIT, parse_length

HERE = Path(__file__).resolve().parent
SCALEBARS = HERE.parents[1] / "shared" / "data" / "scalebars" / "scalebar-ground-truth"
TARGETS = {"labels_right": 0.95, "synthetic_within_2pct": 0.98}
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from finetune_memory import machine_info  # noqa: E402
from gatan_dm import write_dm  # noqa: E402


def load_crop(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0


def value_unit(nm: float, unit: str) -> tuple[float, str]:
    return round(nm / NM_PER_UNIT[unit], 9), unit


# ------------------------------------------------------------------------------------------------------ 1. labels


def label_engine(name: str):
    """function(crop) -> (text, nm or None when not trusted), for read_label's engine `name`."""
    def read(crop):
        reading = read_label(crop, engine=name)
        return (reading.text, reading.nm) if reading else ("", None)
    return read


def label_half(name: str) -> str:
    """'dev' or 'test': a fixed split of the crops by a hash of the label's name, a crop and its inverted copy
    ("NAME_inv.tif") on the same side. Engine rules and thresholds are chosen on the dev half alone; the test half is
    read once per reported row."""
    base = name.split(".")[0].removesuffix("_inv")
    return "dev" if zlib.crc32(base.encode()) % 2 == 0 else "test"


def bench_labels(root: Path, engines: dict) -> dict:
    files = sorted(root.glob("*.tif"))
    cases = []
    for f in files:
        truth_text = f.with_suffix(".gt.txt").read_text(encoding="utf-8").strip()
        truth = parse_length(truth_text)
        cases.append((f, truth_text, value_unit(*truth) if truth else None))
    scored = [c for c in cases if c[2] is not None]
    result = {"crops": len(files), "scored": len(scored),
              "halves": {h: sum(label_half(c[0].name) == h for c in scored) for h in ("dev", "test")},
              "skipped": [{"file": c[0].name, "truth": c[1], "why": "the ground truth holds no length"}
                          for c in cases if c[2] is None], "engines": {}}
    for name, engine in engines.items():
        outcomes = {"dev": [], "test": []}
        failures = []
        start = time.perf_counter()
        for f, truth_text, truth in scored:
            text, nm = engine(load_crop(f))
            parsed = parse_length(text) if nm is not None else None
            got = value_unit(nm, parsed[1]) if parsed else None
            outcome = "not_trusted" if got is None else "right" if got == truth else "wrong_trusted"
            outcomes[label_half(f.name)].append(outcome)
            if outcome != "right":
                failures.append({"file": f.name, "half": label_half(f.name), "truth": truth_text, "read": text,
                                 "trusted": got is not None})
        seconds = time.perf_counter() - start
        every = outcomes["dev"] + outcomes["test"]
        rates = {half: {k: got.count(k) / max(1, len(got)) for k in ("right", "wrong_trusted", "not_trusted")}
                 for half, got in (("all", every), *outcomes.items())}
        result["engines"][name] = {**rates["all"], "dev": rates["dev"], "test": rates["test"],
                                   "ms_per_crop": 1000 * seconds / len(scored), "failures": failures}
    return result


# --------------------------------------------------------------------------------------------------- 2. synthetic


def bench_synthetic(per_class: int, seed: int, engine: str) -> dict:
    from maemi.data.synth import synthesize

    with tempfile.TemporaryDirectory() as tmp:
        records = synthesize(Path(tmp), per_class, seed)
        right = wrong = unknown = 0
        failures = []
        start = time.perf_counter()
        for r in records:
            scale = read_scale(Path(tmp) / r["path"], label_engine=engine)  # no metadata: the info bar alone
            truth = r["nm_per_pixel"]
            if scale.nm_per_pixel is None:
                unknown += 1
                failures.append({"path": r["path"], "label": r["scale_bar_label"], "why": "; ".join(scale.notes)})
            elif abs(scale.nm_per_pixel / truth - 1) <= 0.02:
                right += 1
            else:
                wrong += 1
                failures.append({"path": r["path"], "label": r["scale_bar_label"], "why": scale.describe()})
        seconds = time.perf_counter() - start
    n = len(records)
    return {"engine": engine, "images": n, "per_class": per_class, "seed": seed, "within_2pct": right / n, "wrong": wrong / n,
            "unknown": unknown / n, "s_per_image": seconds / n, "failures": failures}


# ---------------------------------------------------------------------------------------------------- 3. metadata


def _zeiss(path: Path, fields: dict[str, str]) -> None:
    import tifffile

    text = "\r\n".join(["0", "0", "0", "0"] + [x for kv in fields.items() for x in kv]) + "\r\n"
    tag = text.encode("latin-1")
    tifffile.imwrite(path, np.zeros((48, 64), np.uint16), extratags=[(34118, 2, len(tag), tag, True)])


def metadata_cases(folder: Path) -> list[tuple[str, Path, float | None]]:
    """(what, file, the pixel size in nm it must give; None: no scale)."""
    import tifffile

    image = np.zeros((48, 64), np.uint8)
    cases = []
    _zeiss(folder / "zeiss_2k.tif", {"AP_PIXEL_SIZE": "Pixel Size = 9.922 nm",
                                     "AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 4.961 nm"})
    cases.append(("Zeiss, 'Pixel Size' 9.922 nm != 'Image Pixel Size' 4.961 nm", folder / "zeiss_2k.tif", 4.961))
    _zeiss(folder / "zeiss_pm.tif", {"AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 496.1 pm"})
    cases.append(("Zeiss, in pm", folder / "zeiss_pm.tif", 0.4961))
    _zeiss(folder / "zeiss_um.tif", {"AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 1.25 µm"})
    cases.append(("Zeiss, in µm (Latin-1 micro sign)", folder / "zeiss_um.tif", 1250.0))
    _zeiss(folder / "zeiss_monitor.tif", {"AP_PIXEL_SIZE": "Pixel Size = 9.922 nm"})
    cases.append(("Zeiss, only the monitor's 'Pixel Size': no scale", folder / "zeiss_monitor.tif", None))
    fei = "[Beam]\r\nHV=10000\r\n[Scan]\r\nPixelWidth=2.5e-09\r\nPixelHeight=2.5e-09\r\n"
    tifffile.imwrite(folder / "fei.tif", image, extratags=[(34682, "s", 0, fei, True)])
    cases.append(("FEI/Thermo Fisher [Scan] PixelWidth, in m", folder / "fei.tif", 2.5))
    tescan = "[MAIN]\r\nPixelSizeX=1.2e-08\r\nHV=15000\r\n"
    tifffile.imwrite(folder / "tescan.tif", image, extratags=[(50431, "s", 0, tescan, True)])
    cases.append(("Tescan tag 50431 PixelSizeX, in m", folder / "tescan.tif", 12.0))
    tifffile.imwrite(folder / "imagej.tif", image, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})
    cases.append(("ImageJ, 4 pixels per um", folder / "imagej.tif", 250.0))
    tifffile.imwrite(folder / "ome.ome.tif", image, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.0035, "PhysicalSizeXUnit": "µm"})
    cases.append(("OME-TIFF PhysicalSizeX 0.0035 µm", folder / "ome.ome.tif", 3.5))
    tifffile.imwrite(folder / "print.tif", image, resolution=(72, 72), resolutionunit="INCH")
    cases.append(("72 dpi resolution tags: a print resolution, no scale", folder / "print.tif", None))
    tifffile.imwrite(folder / "hitachi.tif", image)
    (folder / "hitachi.txt").write_text("[SemImageFile]\nPixelSize=4.9609375\n", encoding="latin-1")
    cases.append(("Hitachi sidecar PixelSize, in nm", folder / "hitachi.tif", 4.9609375))
    tifffile.imwrite(folder / "jeol.tif", image)
    (folder / "jeol.txt").write_text("$CM_MAG 10000\n$$SM_MICRON_BAR 200\n$$SM_MICRON_MARKER 1um\n", encoding="latin-1")
    cases.append(("JEOL sidecar: marker 1um over 200 pixels", folder / "jeol.tif", 5.0))
    pixels = np.zeros((48, 64), np.uint16)
    write_dm(folder / "stem.dm4", pixels, 0.125, "nm", version=4)
    cases.append(("Gatan DM4, 0.125 nm per pixel (written here)", folder / "stem.dm4", 0.125))
    write_dm(folder / "sem.dm3", pixels, 0.004, "µm", version=3)
    cases.append(("Gatan DM3, 0.004 µm per pixel (written here)", folder / "sem.dm3", 4.0))
    write_dm(folder / "diffraction.dm4", pixels, 0.05, "1/nm", version=4)
    cases.append(("Gatan DM4 diffraction pattern, 1/nm: no scale", folder / "diffraction.dm4", None))
    return cases


def bench_metadata() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for what, path, expected in metadata_cases(Path(tmp)):
            scale = read_scale(path, read_bar=False)
            got = scale.nm_per_pixel
            # DM stores its scale as float32: exact to float32 precision
            tolerance = 1e-6 if path.suffix.startswith(".dm") else 1e-9
            exact = (got is None) if expected is None else (got is not None and
                                                             abs(got - expected) <= tolerance * expected)
            rows.append({"case": what, "expected_nm_per_pixel": expected, "got": got, "source": scale.source,
                         "exact": exact})
    return {"cases": rows, "all_exact": all(r["exact"] for r in rows)}


# ------------------------------------------------------------------------------------------------ 4. drawn bars

DRAWN_CLASSES = ("Particles", "Powder", "Porous_Sponge", "Nanowires", "Fibres", "Films_Coated_Surface", "Biological",
                 "Tips", "Patterned_surface", "MEMS_devices_and_electrodes")
DRAWN_FONTS = ("default", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "STIXGeneral.ttf")


def drawn_case(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, str, int, tuple, tuple]:
    """(image with a drawn bar as float grey, the same without it, label text, bar px, bar box, covered box)."""
    import io

    from maemi.data.synth import make_micrograph
    from maemi.measure.label_render import draw_scale_bar, has_glyph, installed, sample_label

    rng = np.random.default_rng([seed, index])
    name = DRAWN_CLASSES[index % len(DRAWN_CLASSES)]
    image, truth = make_micrograph(name, seed, index, width=768, height=576)
    clean = image[: image.shape[0] - truth["info_bar_height_px"]]
    text = sample_label(rng)[1]
    fonts = [f for f, _ in installed(tuple((f, 1.0) for f in DRAWN_FONTS)) if "µ" not in text or has_glyph(f, "µ")]
    ink = 255 if rng.random() < 0.7 else 0
    drawn, bar, covered = draw_scale_bar(
        clean, text, int(rng.integers(50, 251)), font_name=str(rng.choice(fonts)), text_px=int(rng.integers(12, 31)),
        thickness=int(rng.integers(2, 11)), ink=ink, backdrop=(255 - ink) if rng.random() < 0.5 else None,
        corner=str(rng.choice(["top left", "top right", "bottom left", "bottom right"])),
        label_above=bool(rng.random() < 0.5), margin=int(rng.integers(8, 41)))
    if rng.random() < 0.4:  # saved as JPEG, as published figures often are
        buffer = io.BytesIO()
        Image.fromarray(drawn).save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        drawn = np.asarray(Image.open(buffer))
    return drawn.astype(np.float32) / 255, clean.astype(np.float32) / 255, text, bar[2] - bar[0], bar, covered


def bench_drawn(n: int, seed: int, engine: str, shared: Path) -> dict:
    from maemi.measure.annotations import find_annotations, without_annotations
    from maemi.measure.measurements import object_shapes, segment

    found = right = wrong = unknown = 0
    errors_before, errors_after, failures = [], [], []
    start = time.perf_counter()
    for i in range(n):
        grey, clean, text, bar_px, bar, covered = drawn_case(seed, i)
        truth = parse_length(text)[0] / bar_px
        annotations = find_annotations(grey)
        found += any(a.bar[0] < bar[2] and bar[0] < a.bar[2] and a.bar[1] < bar[3] and bar[1] < a.bar[3]
                     for a in annotations)
        scale = read_scale(None, grey, label_engine=engine, annotations=annotations)
        if scale.nm_per_pixel is None:
            unknown += 1
            failures.append({"case": i, "label": text, "why": "; ".join(scale.notes)})
        elif abs(scale.nm_per_pixel / truth - 1) <= 0.02:
            right += 1
        else:
            wrong += 1
            failures.append({"case": i, "label": text, "why": scale.describe()})
        # the objects an expert would count: the clean image's, less those the annotation covers
        centres = object_shapes(segment(clean).labels).centroids
        left, top, right_, bottom = covered
        hidden = (centres[:, 0] >= top) & (centres[:, 0] < bottom) & (centres[:, 1] >= left) & (centres[:, 1] < right_)
        expected = max(int((~hidden).sum()), 1)
        errors_before.append(abs(segment(grey).labels.max() - expected) / expected)
        errors_after.append(abs(segment(without_annotations(grey, annotations)).labels.max() - expected) / expected)
    seconds = time.perf_counter() - start
    return {"engine": engine, "images": n, "seed": seed, "bar_found": found / n, "within_2pct": right / n,
            "wrong": wrong / n, "unknown": unknown / n, "count_error_median_drawn": float(np.median(errors_before)),
            "count_error_median_left_out": float(np.median(errors_after)),
            "count_error_mean_drawn": float(np.mean(errors_before)),
            "count_error_mean_left_out": float(np.mean(errors_after)), "s_per_image": seconds / n,
            "false_bars": bench_false_bars(shared), "failures": failures}


def bench_false_bars(shared: Path) -> dict:
    """On real micrographs that carry no drawn scale bar: how many are said to have one."""
    from maemi.measure.annotations import find_annotations

    sets = {"STEM particles": sorted((shared / "stem-particles" / "dataset" / "images").glob("*.jpg")),
            "SEM nanowire tiles": sorted((shared / "sem-nanowires" / "tiles").glob("*.png")),
            "NEU-SDD": sorted((shared / "neu-det").glob("*/*.jpg"))}
    out = {}
    for name, paths in sets.items():
        if paths:
            hits = [p.name for p in paths if find_annotations(load_crop(p))]
            out[name] = {"images": len(paths), "with_a_bar": len(hits), "files": hits[:10]}
    return out


# ----------------------------------------------------------------------------------------------------------- main


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Reading the scale (benchmarks/scale.py)", "",
             f"Commit {m.get('commit')}, {m.get('cpu')}, {os.cpu_count()} CPU threads.", ""]
    labels = results.get("labels")
    if labels:
        lines += [f"## 1. Scale-bar labels ({labels['scored']} of {labels['crops']} crops from published micrographs; "
                  f"target: right on >= {TARGETS['labels_right']:.0%})", "",
                  f"Rules and thresholds were chosen on the dev half ({labels['halves']['dev']} crops, split by a hash "
                  f"of the name, a crop and its inverted copy together); the test half ({labels['halves']['test']}) "
                  "is read once per row.", "",
                  "| engine | right | trusted but wrong | not trusted (scale unknown) | right: dev / test half | "
                  "wrong: dev / test | ms per crop |",
                  "|---|---|---|---|---|---|---|"]
        for name, e in labels["engines"].items():
            lines.append(f"| {name} | {e['right']:.1%} | {e['wrong_trusted']:.1%} | {e['not_trusted']:.1%} | "
                         f"{e['dev']['right']:.1%} / {e['test']['right']:.1%} | "
                         f"{e['dev']['wrong_trusted']:.1%} / {e['test']['wrong_trusted']:.1%} | "
                         f"{e['ms_per_crop']:.0f} |")
        for s in labels["skipped"]:
            lines.append(f"\nNot scored: {s['file']} (ground truth {s['truth']!r}: {s['why']}).")
        lines.append("")
    rows = results.get("synthetic")
    if rows:
        syn = rows[0]
        lines += [f"## 2. Synthetic corpus, metadata hidden ({syn['images']} images, `maemi synth --per-class "
                  f"{syn['per_class']} --seed {syn['seed']}`; target: within 2% on >= "
                  f"{TARGETS['synthetic_within_2pct']:.0%})", "",
                  "| label engine | within 2% | wrong | unknown (said why) | s per image |", "|---|---|---|---|---|"]
        lines += [f"| {s['engine']} | {s['within_2pct']:.1%} | {s['wrong']:.1%} | {s['unknown']:.1%} | "
                  f"{s['s_per_image']:.2f} |" for s in rows]
        lines.append("")
    meta = results.get("metadata")
    if meta:
        lines += ["## 3. Instrument metadata (files written with documented tag contents; Gatan DM written byte by byte)",
                  "",
                  "| file | expected nm/px | read | source | exact |", "|---|---|---|---|---|"]
        for r in meta["cases"]:
            got = "-" if r["got"] is None else f"{r['got']:.6g}"
            lines.append(f"| {r['case']} | {r['expected_nm_per_pixel']} | {got} | {r['source']} | "
                         f"{'yes' if r['exact'] else 'NO'} |")
        lines.append("")
    drawn = results.get("drawn")
    if drawn:
        lines += [f"## 4. Scale bars drawn on the micrograph ({drawn['images']} synthetic micrographs of the corpus's "
                  "classes, info bar cropped, each with a bar and label burnt into a corner: random font, 12-30 px "
                  "text, 50-250 px bar, white or black ink, on a box or not, 40% saved as JPEG)", "",
                  "| label engine | bar found | scale within 2% | wrong | unknown (said why) | s per image |",
                  "|---|---|---|---|---|---|",
                  f"| {drawn['engine']} | {drawn['bar_found']:.1%} | {drawn['within_2pct']:.1%} | {drawn['wrong']:.1%} | "
                  f"{drawn['unknown']:.1%} | {drawn['s_per_image']:.2f} |", "",
                  "Object counts (classical), against the clean image's objects outside what the annotation covers: "
                  f"median / mean error {drawn['count_error_median_drawn']:.1%} / {drawn['count_error_mean_drawn']:.1%} "
                  f"when the annotation is measured as objects, {drawn['count_error_median_left_out']:.1%} / "
                  f"{drawn['count_error_mean_left_out']:.1%} when it is left out.", "",
                  "Real micrographs without a drawn bar, said to have one: " + "; ".join(
                      f"{name} {v['with_a_bar']} of {v['images']}" for name, v in drawn["false_bars"].items()) + ".",
                  ""]
    for section, commit in results.get("carried", {}).items():
        lines.append(f"Section {section}: carried from the results of commit {commit} (not rerun).")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="both,tesseract,learned",
                        help="label engines (maemi.measure.ocr.read_label), comma-separated; the first is the "
                             "default one")
    parser.add_argument("--scalebars", type=Path, default=SCALEBARS)
    parser.add_argument("--synthetic-per-class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drawn", type=int, default=120, help="synthetic micrographs with a drawn scale bar")
    parser.add_argument("--skip", default="", help="sections to skip, comma-separated: labels,synthetic,metadata,"
                                                   "drawn (each keeps its rows from the previous results file)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale")
    args = parser.parse_args()
    if not tesseract_available():
        sys.exit("tesseract is not installed (apt-get install tesseract-ocr; make test installs it)")
    skip = set(filter(None, args.skip.split(",")))
    engines = args.engines.split(",")
    results = {"machine": machine_info(), "targets": TARGETS, "carried": {}}
    previous_path = args.out.with_suffix(".json")
    previous = json.loads(previous_path.read_text()) if previous_path.is_file() else {}
    for section in ("labels", "synthetic", "metadata", "drawn"):
        if section in skip and section in previous:
            results[section] = previous[section]
            results["carried"][section] = previous.get("carried", {}).get(section) or previous["machine"].get("commit")
    if "labels" not in skip:
        if not args.scalebars.is_dir():
            sys.exit(f"{args.scalebars}: not found (pass --scalebars or --skip labels)")
        results["labels"] = bench_labels(args.scalebars, {e: label_engine(e) for e in engines})
    if "synthetic" not in skip:
        results["synthetic"] = [bench_synthetic(args.synthetic_per_class, args.seed, e) for e in engines]
    if "metadata" not in skip:
        results["metadata"] = bench_metadata()
    if "drawn" not in skip:
        results["drawn"] = bench_drawn(args.drawn, args.seed, engines[0], args.scalebars.parents[1])
    text = markdown(results)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out.with_suffix(".json"), results)
    atomic_write_text(args.out.with_suffix(".md"), text)


if __name__ == "__main__":
    main()
