"""Screening a folder (`maemi screen`): every micrograph under it classified, and optionally captioned and measured, in
batches, one row per image in a CSV or JSONL table that a killed run continues with `resume=True`.

Images are found as datasets are (maemi.data.datasets.scan_dataset: every image suffix, recursively, folders starting
with `_` or `.` skipped, sorted by path; a CSV manifest works too); each row's `path` is relative to the folder and is
the key that resume skips on. Inference is the Assistant's (zero-shot classification over the run's classes, the
run's caption question); measurements are the measure teacher's (maemi.measure.measurements.measure on the image
above its info bar, with the scale of maemi.measure.scale: metadata.jsonl, the instrument's metadata or the scale bar),
taken a few batches ahead on every core (Assistant.measure_ahead): measuring, not the model, is most of a measured
row's time.

Row: path, top1, confidence (its probability, calibrated when the run is), top5 ([{label, probability}], most likely
first), ood_score and flag (ok, low_confidence or unfamiliar: evaluate.familiarity; ood_score empty for a run not
calibrated with `maemi calibrate`), nm_per_pixel and
scale_source (maemi.measure.scale: explicit, metadata, instrument, scale_bar; empty when the scale is unknown), caption
and caption_numbers (with caption: which measured value each number of the caption is), measurements (with
measure: the Measurements fields), error (why a file could not be read or measured;
empty otherwise). An unreadable file gets a row with its error and the rest go on; so does one whose header declares
more decoded memory than the loader's largest image in 8-bit RGB (serve/budget.py), before it is decoded.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.color import rgb2gray
from tqdm import tqdm

from maemi.assistant import Assistant, PreparedImage, pixel_statistics
from maemi.data.datasets import DatasetError, Sample, scan_dataset
from maemi.data import images as image_io  # MAX_IMAGE_PIXELS is read at call time
from maemi.data.images import IMAGE_EXTENSIONS, ImageReadError, load_image, to_model_input
from maemi.measure.scale import read_scale
from maemi.serve.budget import DECODED_FORMATS, budget_bytes, decoded_size, file_suffix
from maemi.serve.rows import RowWriter
from maemi.teachers.measure import ImageFacts
from maemi.measure.measurements import Measurements

TOP_K = 5
MEASUREMENT_FIELDS = [f.name for f in dataclasses.fields(Measurements)]


@dataclass
class ScreenConfig:
    batch_size: int = 16  # images per forward pass, and per append + fsync of the output
    caption: bool = False
    measure: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass
class ScreenReport:
    images: int  # found under the folder
    already_done: int  # images that had a row in the output before this run (resume)
    written: int  # rows this run appended
    errors: int  # of those, rows with an error
    seconds: float  # wall time of this run's screening loop (the model already loaded)

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0


def screen_columns(config: ScreenConfig) -> list[str]:
    """The table's columns; CSV spells the measurements as flat `measurements.<field>` columns."""
    columns = ["path", "top1", "confidence", "top5", "ood_score", "flag", "nm_per_pixel", "scale_source"]
    if config.caption:
        columns += ["caption", "caption_numbers"]
    if config.measure:
        columns += [f"measurements.{name}" for name in MEASUREMENT_FIELDS]
    return columns + ["error"]


def find_images(folder: str | os.PathLike) -> list[Sample]:
    """Every image under the folder (or listed by a CSV manifest), sorted by path; DatasetError when there is none."""
    samples = scan_dataset(folder)
    if not samples:
        raise DatasetError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return samples


def check_decodable(path: Path) -> None:
    """ImageReadError for a file whose header declares more decoded memory than a MAX_IMAGE_PIXELS 8-bit RGB image
    takes (thousands of samples per pixel, 64-bit colour): one such file would stop the screen or the machine."""
    size = decoded_size(path, file_suffix(path)) if file_suffix(path) in DECODED_FORMATS else None
    budget = budget_bytes(image_io.MAX_IMAGE_PIXELS / 1e6)
    if size is not None and size.held_bytes > budget:
        raise ImageReadError(path, f"decoding it would take about {size.held_bytes / 2**30:.1f} GiB of memory "
                                   f"({size.describe()}), over the {budget / 2**30:.1f} GiB that a "
                                   f"{image_io.MAX_IMAGE_PIXELS / 1e6:g}-megapixel 8-bit RGB image takes")


def screen_batch(assistant: Assistant, samples: list[Sample], config: ScreenConfig) -> list[dict]:
    """One row per sample, in order."""
    columns = dict.fromkeys(c.partition(".")[0] for c in screen_columns(config))
    rows = [{**columns, "path": s.relpath} for s in samples]
    # measure each image once when a column needs it: the measurements, or a caption whose numbers are filled from it
    measured = config.measure or (config.caption and assistant.measured_answers)
    readable, inputs = [], []
    for sample, row in zip(samples, rows):
        try:
            # Read here, not through assistant.image_tensor: its cache is for a server seeing the same files again.
            # The decoded image serves the model input, the measurement (the caption's numbers and the measurements
            # column) and the scale alike: each file is read once and measured at most once.
            check_decodable(sample.path)
            image = load_image(sample.path)
            if measured:
                inputs.append(assistant.prepare(image, sample.path, sample.metadata))
            else:
                inputs.append(PreparedImage(to_model_input(image, assistant.image_config), "not measured",
                                            pixel_statistics(image) if assistant.familiarity else None))
            readable.append((sample, row, image))
        except ImageReadError as e:
            row["error"] = e.reason
        except MemoryError:  # within the budget, but more than this machine has free now
            row["error"] = "not enough free memory to decode it"
    if not inputs:
        return rows
    ranked = assistant.classify(inputs, top_k=TOP_K)
    flags = assistant.flags(inputs, [top[0][1] for top in ranked])
    captions = assistant.caption_detailed(inputs) if config.caption else [None] * len(inputs)
    for (sample, row, image), x, top, caption, (ood, flag) in zip(readable, inputs, ranked, captions, flags):
        row.update(top1=top[0][0], confidence=round(top[0][1], 6),
                   top5=[{"label": label, "probability": round(p, 6)} for label, p in top],
                   ood_score=None if ood is None else round(ood, 6), flag=flag)
        if config.caption:
            row.update(caption=caption.text, caption_numbers=caption.to_dict()["numbers"])
        facts = x.facts if measured else None
        if config.measure and isinstance(facts, str):  # unreadable as pixels, or too small to measure
            row["error"] = f"measurements: {facts}"
        elif config.measure:
            row["measurements"] = dataclasses.asdict(facts.m)
        if isinstance(facts, ImageFacts) and facts.scale is not None:
            scale = facts.scale
        else:
            grey = image if image.ndim == 2 else rgb2gray(image).astype(np.float32)
            scale = read_scale(sample.path, grey, metadata=sample.metadata)
        row.update(nm_per_pixel=scale.nm_per_pixel, scale_source=scale.source)
    return rows


def screen_folder(assistant: Assistant, folder: str | os.PathLike, out: str | os.PathLike,
                  config: ScreenConfig | None = None, resume: bool = False, progress: bool = True) -> ScreenReport:
    """Screen every image under `folder` into `out` (.csv or .jsonl). An existing `out` is an error unless `resume`,
    which keeps its rows, drops a torn last one and screens only the images without a row."""
    config = config or ScreenConfig()
    samples = find_images(folder)
    for key in ("classes", "classify_prompt") + (("caption_prompt",) if config.caption else ()):
        assistant.run_value(key)  # a RunError now, before the output is created
    with RowWriter(Path(out), screen_columns(config), key="path", resume=resume) as writer:
        done = writer.done()
        todo = [s for s in samples if s.relpath not in done]
        written = errors = 0
        bar = tqdm(total=len(todo), desc="screen", unit="img", disable=not progress)
        start = time.perf_counter()
        measured = config.measure or (config.caption and assistant.measured_answers)
        ahead = config.batch_size * (os.cpu_count() or 1)
        for begin in range(0, len(todo), config.batch_size):
            if measured and begin % ahead == 0:
                # measuring, not the model, is most of a measured row's time: the next batches on every core first
                assistant.measure_ahead([s.path for s in todo[begin: begin + ahead]])
            rows = screen_batch(assistant, todo[begin: begin + config.batch_size], config)
            written += writer.write(rows)
            errors += sum(row["error"] is not None for row in rows)
            bar.update(len(rows))
            if errors:
                bar.set_postfix(errors=errors)
        seconds = time.perf_counter() - start
        bar.close()
    return ScreenReport(images=len(samples), already_done=len(samples) - len(todo), written=written, errors=errors,
                        seconds=seconds)
