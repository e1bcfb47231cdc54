"""Measuring many micrographs (`maemi measure`): one row per image, written as each image is done, resumable after a
kill, on every CPU core when there are enough images to pay for starting the processes.

A lab points it at a folder of hundreds of 4-megapixel images (a few seconds each), so nothing may wait for the end:
each image's object and fibre rows are appended first, then its row of the image table, each batch with one write
and an fsync (maemi.serve.rows.RowWriter). The image table is the record of what is done: `resume` skips the images it
holds and measures the others again, and the object and fibre tables, keyed by (path, object_id) and (path,
fibre_id), take only the rows they lack, so an image cut off halfway is neither lost nor counted twice. Measuring is
deterministic, so the rows measured again are the ones a kill cut off.

Workers are separate processes (maemi.cpu.map_in_processes); the rows come back in input order whatever finishes first,
and each worker writes its image's pictures itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from maemi.data.datasets import scan_dataset
from maemi.serve.rows import RowWriter, check_table_path

ROW_FIELDS = ("path", "nm_per_pixel", "scale_source", "scale_detail", "scale_notes", "magnification", "info_bar_px",
              "left_out", "measurements", "error")


def image_paths(inputs: list[Path]) -> dict[Path, list[Path]]:
    """Each input with the images it stands for: a file itself, a folder every image under it (recursively, sorted,
    as datasets are scanned: folders starting with `_` or `.` skipped); in input order. A folder without images is a
    ValueError naming it."""
    paths: dict[Path, list[Path]] = {}
    for item in inputs:
        if item.is_dir():
            found = [sample.path for sample in scan_dataset(item)]
            if not found:
                raise ValueError(f"{item}: no image files found in the folder")
            paths.setdefault(item, []).extend(found)
        else:
            paths.setdefault(item, []).append(item)
    return paths


@dataclass(frozen=True)
class MeasureJob:
    """What to measure and write for one image (picklable: it goes to a worker process)."""

    image: Path
    name: str  # unique file-name stem for its pictures
    nm_per_pixel: float | None
    segmenter: str
    objects: bool  # the per-object rows are wanted
    fibres: bool  # the per-fibre rows are wanted
    overlay: Path | None  # folder for its overlay PNG
    histogram: Path | None  # folder for its histogram PNG


@dataclass
class Measured:
    row: dict  # the image table's row (keys: ROW_FIELDS); row["error"] says why an image was not measured
    objects: list[dict]  # its object rows (objects.COLUMNS), when asked
    fibres: list[dict]  # its fibre rows (objects.FIBRE_COLUMNS), when asked and it is a fibre mat


def measure_one(job: MeasureJob) -> Measured:
    """Measure one image and write its pictures; an unreadable or too small image gives a row with its error."""
    from maemi.data.images import ImageReadError
    from maemi.measure.figures import histogram_png, overlay_image, write_png
    from maemi.measure.objects import fibre_rows, measure_objects_file, object_table, table_rows

    row = dict.fromkeys(ROW_FIELDS)
    row.update(path=str(job.image), scale_notes=[], left_out=[])
    try:
        result = measure_objects_file(job.image, nm_per_pixel=job.nm_per_pixel, segmenter=job.segmenter)
    except (ImageReadError, ValueError) as e:  # unreadable, or too small to measure
        row["error"] = str(e)
        return Measured(row, [], [])
    measured, scale = result.measured, result.measured.scale
    row.update(nm_per_pixel=scale.nm_per_pixel, scale_source=scale.source, scale_detail=scale.detail or None,
               scale_notes=list(scale.notes), magnification=scale.magnification, info_bar_px=measured.info_bar_px,
               left_out=[list(box) for box in measured.left_out], measurements=dataclasses.asdict(measured.m))
    labels = result.segmentation.labels
    mat = measured.m.fibre_count is not None
    objects = fibres = []
    if job.objects or (job.histogram is not None and not mat):
        objects = table_rows(str(job.image), object_table(labels), scale.nm_per_pixel, scale.source)
    if mat and (job.fibres or job.histogram is not None):
        fibres = fibre_rows(str(job.image), result.segmentation, scale.nm_per_pixel, scale.source)
    if job.overlay is not None:
        write_png(job.overlay / f"{job.name}.overlay.png",
                  overlay_image(result.whole, labels, left_out=measured.left_out, empty=result.segmentation.empty))
    if job.histogram is not None:
        unit = "nm" if scale.known else "px"
        if mat:
            picture = histogram_png([r[f"diameter_{unit}"] for r in fibres], unit, job.image.name, "fibre")
        else:
            picture = histogram_png([r[f"equivalent_diameter_{unit}"] for r in objects], unit, job.image.name)
        write_png(job.histogram / f"{job.name}.histogram.png", picture)
    return Measured(row, objects if job.objects else [], fibres if job.fibres else [])


def image_columns() -> list[str]:
    """The image table's columns: the measurements as flat `measurements.<field>` columns (CSV)."""
    from maemi.measure.measurements import Measurements

    columns = [c for c in ROW_FIELDS if c != "measurements"]
    columns[-1:-1] = [f"measurements.{f.name}" for f in dataclasses.fields(Measurements)]
    return columns


def check_outputs(out: Path | None, objects: Path | None, fibres: Path | None, resume: bool,
                  summary: Path | None = None) -> None:
    """Fail before any work: two outputs on one file, an unknown suffix, an existing table or summary without resume
    (neither is ever overwritten), resume without the image table that records what is done, or a summary to resume
    without the objects table that holds the objects of the images measured before."""
    outputs = [p for p in (out, objects, fibres, summary) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise ValueError("--out, --objects, --fibres and --summary must be different files")
    if resume and out is None:
        raise ValueError("--resume needs --out: the image table is the record of which images are done")
    if summary is not None:
        if summary.suffix.lower() != ".json":
            raise ValueError(f"{summary}: the summary is written as JSON; give a .json file")
        if resume and objects is None:
            raise ValueError("--summary with --resume needs --objects: the objects of the images measured before are "
                             "read back from it")
        if not resume and summary.is_file():
            raise FileExistsError(f"{summary}: already exists; pass --resume to continue its run, or choose another "
                                  "output path")
    for path in (out, objects, fibres):
        if path is not None:
            check_table_path(path, resume)


def measure_many(jobs: list[MeasureJob], out: Path | None = None, objects: Path | None = None,
                 fibres: Path | None = None, resume: bool = False, workers: int | None = None,
                 on_done: Callable[[Measured], None] | None = None) -> tuple[int, list[Measured]]:
    """Measure the jobs in order, appending each image's rows to the tables as it is done, in `workers` processes
    (default: maemi.cpu.worker_count's). With resume, the images already in `out` are skipped. Returns (how
    many were skipped as done, what this run measured, in job order); on_done is called with each as it comes."""
    from maemi.measure.objects import COLUMNS, FIBRE_COLUMNS

    check_outputs(out, objects, fibres, resume)
    with ExitStack() as stack:
        def writer(path: Path | None, columns: list[str], key) -> RowWriter | None:
            return None if path is None else stack.enter_context(RowWriter(path, columns, key=key, resume=resume))

        image_table = writer(out, image_columns(), "path")
        object_table = writer(objects, COLUMNS, ("path", "object_id"))
        fibre_table = writer(fibres, FIBRE_COLUMNS, ("path", "fibre_id"))
        done = image_table.done() if image_table is not None else set()
        todo = [job for job in jobs if str(job.image) not in done]
        results = []
        for result in _run(todo, workers):
            # the image's row last: it is what says the image is done
            for table, rows in ((object_table, result.objects), (fibre_table, result.fibres)):
                if table is not None and rows:
                    table.write(rows)
            if image_table is not None:
                image_table.write([result.row])
            results.append(result)
            if on_done is not None:
                on_done(result)
    return len(jobs) - len(todo), results


def _run(jobs: list[MeasureJob], workers: int | None) -> Iterator[Measured]:
    from maemi.cpu import map_in_processes, worker_count

    workers = worker_count(len(jobs), workers)
    yield from map(measure_one, jobs) if workers <= 1 else map_in_processes(measure_one, jobs, workers)


def image_samples(paths: dict[Path, list[Path]]) -> dict[str, list[Path]]:
    """The samples a pooled summary reports, from image_paths: every folder given is one (named as given), and the
    files given one by one are one more (pooled.FILES_SAMPLE)."""
    from maemi.measure.pooled import FILES_SAMPLE

    samples: dict[str, list[Path]] = {}
    for item, images in paths.items():
        samples.setdefault(str(item) if item.is_dir() else FILES_SAMPLE, []).extend(images)
    return samples


def pooled_summary(results: list[Measured], resumed: bool, out: Path | None, objects: Path | None,
                   fibres: Path | None, samples: dict[str, list[Path]]) -> tuple[dict, list[tuple[list, list]]]:
    """The size distributions of each sample's particles and fibres pooled over its images and the samples compared
    (maemi.measure.pooled.pool_samples) as a JSON-ready dict, and for each pool (in its order) its (diameters,
    weights) for the histogram. After a resume the images measured before are read back from the tables (`out`,
    `objects`, and `fibres` where given), which then hold them all."""
    from maemi.measure.pooled import KINDS, pool_samples
    from maemi.serve.rows import read_rows

    fibre_rows = [f for r in results for f in r.fibres]
    if resumed:
        image_rows, object_rows = read_rows(out), read_rows(objects)
        fibre_rows = read_rows(fibres) if fibres is not None else fibre_rows
    else:
        image_rows, object_rows = [r.row for r in results], [o for r in results for o in r.objects]
    summary = pool_samples(image_rows, object_rows, {name: [str(p) for p in paths] for name, paths in samples.items()},
                           fibre_rows=fibre_rows)
    histograms = []
    for pool in summary["samples"]:
        column, weight = KINDS[pool["kind"]]
        pooled = set(pool["images"])  # empty for a pool without images, which has no "unit" and no rows
        rows = [r for r in (object_rows if pool["kind"] == "particles" else fibre_rows) if r["path"] in pooled]
        histograms.append(([float(r[f"{column}_{pool['unit']}"]) for r in rows],
                           [float(r[weight]) if weight else 1.0 for r in rows]))
    return summary, histograms
