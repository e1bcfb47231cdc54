"""The `maemi` command. Thin: it parses arguments and calls into the packages that do the work.

Each command names the package that owns it; a command whose issue has not landed yet says so and exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from maemi.demo import DemoConfig  # light: the demo's steps import what they need when they run

app = typer.Typer(
    name="maemi",
    help="MAEMI: a small, on-premises vision-language assistant for electron micrographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and split image datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data", help="Inspect and split image datasets (class folders or a CSV manifest).")


def _not_built(command: str, issue: int) -> None:
    typer.echo(f"maemi {command}: not built yet (tracked in issue #{issue}).", err=True)
    raise typer.Exit(2)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------------- data (issue 2)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the corpus into (OUT/<class>/<name>.png + metadata.jsonl)."),
    per_class: int = typer.Option(20, "--per-class", min=1, help="Images per class."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated subset of the ten SEM classes."),
) -> None:
    """Synthesise the built-in corpus: SEM-like micrographs in ten classes with ground truth."""
    from maemi.data.synth import synthesize  # imported here: scikit-image is slow to import for other commands

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    try:
        records = synthesize(out, per_class, seed, names)
    except ValueError as error:
        _fail(str(error))
    n_classes = len({r["class"] for r in records})
    typer.echo(f"wrote {len(records)} images in {n_classes} classes to {out} (ground truth: {out / 'metadata.jsonl'})")


@data_app.command("inspect")
def data_inspect(
    root: Path = typer.Argument(..., help="Dataset folder (root/<class>/<image>) or a CSV manifest (path,label)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Count images per class; list sizes, formats, bit depths, where their scale comes from, duplicates and unreadable
    files."""
    from maemi.data.datasets import DatasetError, inspect_dataset

    try:
        report = inspect_dataset(root, progress=not as_json)
    except DatasetError as e:
        _fail(str(e))
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_inspect_report(report)


def _print_inspect_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{report['root']}[/]: {report['images']} images readable of {report['files']} image files")
    if report["classes"]:
        table = Table("class", "images")
        for name, n in report["classes"].items():
            table.add_row(name, str(n))
        if report["unlabelled"]:
            table.add_row("(no class folder)", str(report["unlabelled"]))
        console.print(table)
    for key in ("sizes", "formats", "modes", "bit_depths"):
        items = list(report[key].items())
        shown = ", ".join(f"{k} ({v})" for k, v in items[:8]) + (f", ... {len(items) - 8} more" if len(items) > 8 else "")
        console.print(f"{key.replace('_', ' ')}: {shown or '-'}")
    scales = ", ".join(f"{source} ({n})" for source, n in report["scales"].items())
    console.print(f"scale (nm per pixel) from: {scales or '-'}")
    console.print(f"exact duplicates: {len(report['duplicates'])} group(s)")
    for group in report["duplicates"]:
        console.print("  " + " == ".join(group))
    console.print(f"unreadable: {len(report['unreadable'])}")
    for bad in report["unreadable"]:
        console.print(f"  {bad['path']}: {bad['reason']}", markup=False)


@data_app.command("split")
def data_split(
    root: Path = typer.Argument(..., help="Dataset folder or CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Where to write the split (JSON)."),
    val: float = typer.Option(0.1, "--val", min=0.0, max=0.9, help="Fraction for validation."),
    test: float = typer.Option(0.2, "--test", min=0.0, max=0.9, help="Fraction for test."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    group_pattern: Optional[str] = typer.Option(
        None, "--group-pattern", help="Regex on file names; files whose match (or first group) is equal stay together."
    ),
) -> None:
    """Deterministic stratified split; duplicates never straddle two splits."""
    from maemi.data.datasets import DatasetError, check_samples, scan_dataset, split_dataset
    from maemi.fileio import atomic_write_json

    try:
        good, bad, facts = check_samples(scan_dataset(root), progress=True)
        split = split_dataset(good, {k: v["sha256"] for k, v in facts.items()}, val=val, test=test, seed=seed,
                              group_pattern=group_pattern)
    except (DatasetError, ValueError) as e:
        _fail(str(e))
    split["root"] = str(root)
    split["unreadable"] = bad
    atomic_write_json(out, split)
    sizes = ", ".join(f"{k} {len(split[k])}" for k in ("train", "val", "test"))
    typer.echo(f"wrote {out}: {sizes}" + (f"; {len(bad)} unreadable file(s) left out" if bad else ""))


# ------------------------------------------------------------------------------------------- later issues fill these


@app.command()
def teach(
    root: Path = typer.Argument(..., help="Dataset folder (root/<class>/<image>) or a CSV manifest (path,label)."),
    out: Path = typer.Option(..., "--out", help="Instruction records to write (JSONL)."),
    teacher: str = typer.Option("measure", "--teacher", help="measure (offline, from scikit-image) or openai."),
    profile: str = typer.Option("sem", "--profile", help="Question set: sem, neu, kth, cmi or generic."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1."),
    model: Optional[str] = typer.Option(None, "--model", help="Teacher model name at the endpoint."),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="Environment variable holding the API key."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Requests in flight (openai teacher)."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help="Seconds per request before it is retried."),
    max_retries: int = typer.Option(6, "--max-retries", min=0, help="Retries on 429, 5xx and timeouts."),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Reply cache (default: .teach-cache/ beside OUT)."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run: skip records already in OUT."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
    rejects: Optional[Path] = typer.Option(None, "--rejects", help="Where failed replies go (default: OUT.rejects.jsonl)."),
    compare: int = typer.Option(0, "--compare", min=0, help="Records per comparison strategy (inter-/intra-class, spatial)."),
    few_shot: int = typer.Option(0, "--few-shot", min=0, help="Few-shot classification records."),
    shots: int = typer.Option(3, "--shots", min=1, help="Demonstrations per few-shot record."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N images (classes in turn)."),
    split: Optional[Path] = typer.Option(None, "--split", help="A split file from `maemi data split`."),
    subset: Optional[str] = typer.Option(None, "--subset", help="With --split: teach only this side (train, val, test)."),
    price_in: Optional[float] = typer.Option(None, "--price-per-1k-input", help="Cost estimate: price per 1k prompt tokens."),
    price_out: Optional[float] = typer.Option(None, "--price-per-1k-output", help="Price per 1k completion tokens."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Distil instruction data (JSONL) from a teacher: measured (offline) or an OpenAI-compatible endpoint."""
    import os

    from maemi.data.datasets import DatasetError
    from maemi.teachers.measure import MeasureTeacher
    from maemi.teachers.pipeline import TeachConfig, default_rejects_path, teach as run_teach
    from maemi.teachers.questions import get_profile

    try:
        get_profile(profile)
    except ValueError as e:
        _fail(str(e))
    if teacher == "measure":
        chosen = MeasureTeacher(profile)
        concurrency = 1  # CPU-bound in this process: threads would only contend for the GIL
    elif teacher == "openai":
        if not base_url or not model:
            _fail("--teacher openai needs --base-url and --model")
        from maemi.teachers.remote import OpenAITeacher

        chosen = OpenAITeacher(base_url, model, os.environ.get(api_key_env), timeout=timeout, max_retries=max_retries,
                               cache_dir=cache_dir or out.parent / ".teach-cache")
    else:
        _fail(f"unknown teacher {teacher!r}; choose measure or openai")
    only = None
    if (split is None) != (subset is None):
        _fail("--split and --subset go together")
    if split is not None:
        sides = json.loads(split.read_text())
        if subset not in sides or not isinstance(sides[subset], list):
            _fail(f"{split}: has no subset {subset!r} (it has {[k for k in ('train', 'val', 'test') if k in sides]})")
        only = frozenset(sides[subset])
    config = TeachConfig(profile=profile, compare=compare, few_shot=few_shot, shots=shots, concurrency=concurrency,
                         limit=limit, only=only, price_per_1k_input=price_in, price_per_1k_output=price_out)
    try:
        report = run_teach(root, out, chosen, config, rejects_path=rejects, resume=resume, overwrite=overwrite,
                           progress=not quiet)
    except (DatasetError, FileExistsError) as e:
        _fail(str(e))
    typer.echo(f"{out}: {report.records} records written for {report.answered} images"
               + (f" ({report.skipped_done} already done)" if report.skipped_done else ""))
    for bad in report.unreadable:
        typer.echo(f"skipped unreadable {bad['path']}: {bad['reason']}", err=True)
    if report.rejects:
        typer.echo(f"{report.rejects} rejected replies in {rejects or default_rejects_path(out)}", err=True)
    if teacher == "openai":
        cost = report.cost(config)
        typer.echo(f"tokens: {report.prompt_tokens} prompt + {report.completion_tokens} completion "
                   f"({report.cached} replies from cache)" + (f"; estimated cost {cost:.4f}" if cost is not None else ""))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(
    ctx: typer.Context,
    data: Path = typer.Option(..., "--data", help="Training instruction records (JSONL)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation records (JSONL): early stopping, best model."),
    images: Path = typer.Option(..., "--images", help="Folder the records' image paths are relative to."),
    out: Path = typer.Option(..., "--out", help="Run folder to write (runs/NAME)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Training config (TOML or JSON)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from a trained run and fine-tune it."),
) -> None:
    """Train MAEMI on instruction data (CPU, CUDA, or several processes with torchrun).

    Any setting of the training config (maemi/train/config.py) can follow as --key=value, dotted for nested ones.

    Example: --epochs=10 --micro_batch=8 --model.vision.dim=128 --augment.rotations=false --train_vision=false
    """
    from maemi.model import CheckpointError
    from maemi.teachers.records import RecordError
    from maemi.train.checkpoint import ResumeError, find_checkpoint, read_checkpoint_meta
    from maemi.train.config import ConfigError, load_train_config
    from maemi.train.trainer import TrainingDataError
    from maemi.train.trainer import train as run_training

    try:
        checkpoint = find_checkpoint(out) if resume else None
        saved = read_checkpoint_meta(checkpoint)["train_config"] if checkpoint else None  # resume: the run's config
        train_config = load_train_config(config, ctx.args, base=saved)
        run_training(train_config, data, val, images, out, resume=resume, init=init)
    except (ConfigError, RecordError, ResumeError, CheckpointError, TrainingDataError, OSError) as e:
        _fail(str(e))


def _check_segmenter(segmenter: str) -> None:
    from maemi.measure.measurements import SEGMENTERS, learned_segmenter
    from maemi.measure.segmenter import weights_path

    if segmenter not in SEGMENTERS:
        _fail(f"--segmenter must be one of {', '.join(SEGMENTERS)}, not {segmenter!r}")
    if segmenter == "learned":
        try:  # loaded here once, for every image after (the shipped weights, or $MAEMI_SEGMENTER_WEIGHTS)
            if learned_segmenter() is None:
                _fail(f"--segmenter learned: {weights_path()}: no segmenter weights (train them: python -m "
                      "maemi.measure.train_segmenter)")
        except ValueError as e:
            _fail(f"--segmenter learned: {e}")


def _load_assistant(run: Path, device: str, batch_size: int, segmenter: str = "auto"):
    from maemi.assistant import Assistant

    try:
        return Assistant.load(run, device=device, batch_size=batch_size, segmenter=segmenter)
    except (ValueError, OSError) as e:  # RunError, CheckpointError: both name the file
        _fail(str(e))


def _echo_json(rows: list[dict]) -> None:
    typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))


_RUN_HELP = "Run directory written by `maemi train --out`."
_SEGMENTER_HELP = ("auto (classical, or spots where one threshold cannot separate the image), classical (threshold + "
                   "watershed), learned (the U-Net segmenter) or spots (compact particles on a support, as in STEM/TEM; "
                   "see docs/measurement.md): what finds the objects.")
_DEVICE_HELP = "cpu, cuda, cuda:N or auto (CUDA when available)."
_VIEWS_HELP = ("Classification averaged over this many flips and quarter turns of each image (test-time augmentation; "
               "4: the quarter turns, 8: with their mirror images), at as many times the cost.")


@app.command()
def calibrate(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    data: Path = typer.Option(..., "--data", help="Validation instruction records (JSONL): the temperature is fitted "
                                                  "on their labelled images. Never the test split."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images root of the records (default: the run's)."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Calibrate a trained run: the temperature of its class probabilities (fitted on the validation split) and the
    threshold above which an image is unlike its training images (from the training images alone). Writes
    RUN/calibration.json; classify, screen, ask and serve then use it."""
    from maemi.evaluate.calibration import calibrate_run

    try:
        result = calibrate_run(run, data, images=images, device=device, progress=not quiet)
    except (ValueError, OSError) as e:
        _fail(str(e))
    f = result["familiarity"]
    fitted = (f"validation ECE {result['val_ece_before']:.3f} -> {result['val_ece_after']:.3f} on "
              f"{result['val_images']} images" if "val_ece_after" in result else result["note"])
    typer.echo(f"temperature {result['temperature']:.3f}: {fitted}; unfamiliar above {f['threshold']:.4f} "
               f"(k = {f['k']}, {f['recall']:.0%} of {f['images']} training images within) -> {run / 'calibration.json'}")


@app.command(name="eval")
def evaluate(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    data: Path = typer.Option(..., "--data", help="Test instruction records (JSONL) on held-out images."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images root of the records (default: the run's)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where metrics.json and report.md go (default: RUN/eval)."),
    shots: int = typer.Option(5, "--shots", min=0, help="Few-shot demonstrations from the training images; 0: none."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Only the first N records."),
    sample: Optional[int] = typer.Option(
        None, "--sample", min=1, help="Generation metrics on a seeded random N records (classification uses all)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Prompts per forward pass."),
    examples: int = typer.Option(4, "--examples", min=0, help="Example answers shown in the report."),
    seed: int = typer.Option(0, "--seed", help="Seed of the shuffled-images control."),
    views: int = typer.Option(1, "--views", min=1, max=8, help=_VIEWS_HELP + " Reported next to the single view."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
) -> None:
    """Evaluate a trained run: captioning/VQA metrics (with a shuffled-images control) and zero-/few-shot
    classification; writes metrics.json and report.md."""
    from maemi.evaluate.evaluate import EvalConfig, evaluate_run
    from maemi.evaluate.metrics import MeteorUnavailable
    from maemi.evaluate.report import format_metrics_table

    assistant = _load_assistant(run, device, batch_size)
    config = EvalConfig(shots=shots, limit=limit, sample=sample, batch_size=batch_size, examples=examples, seed=seed,
                        views=views)
    target = out or run / "eval"
    try:
        metrics = evaluate_run(run, data, images=images, out=target, config=config, assistant=assistant,
                               progress=not quiet)
    except (ValueError, OSError, MeteorUnavailable) as e:
        _fail(str(e))
    typer.echo(format_metrics_table(metrics))
    typer.echo(f"\nreport: {target / 'report.md'}  metrics: {target / 'metrics.json'}")


@app.command()
def ask(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    items: list[str] = typer.Argument(..., help='IMAGE [IMAGE...] "QUESTION": the last argument is the question, '
                                                "unless it is given with --question."),
    question: Optional[str] = typer.Option(None, "--question", "-q",
                                           help="The question; every argument is then an image."),
    context: Optional[str] = typer.Option(None, "--context", help="Your description added to the prompt (sample notes, "
                                                                   "instrument metadata)."),
    together: bool = typer.Option(False, "--together", help="One question about all the images together (a comparison) "
                                                            "instead of one answer per image."),
    detail: bool = typer.Option(False, "--detail", help="The long answer: three to five sentences that say what in the "
                                                        "image supports it (default: one sentence)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {images, question, context, answer, "
                                                       "template, numbers, unknown, measurements, scales}: which "
                                                       "measured value each number is, and each image's scale."),
    segmenter: str = typer.Option("auto", "--segmenter", help=_SEGMENTER_HELP + " The answers count them."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
) -> None:
    """Ask a trained model a question about one or more micrographs: one answer per image, in order."""
    images = list(items) if question is not None else list(items[:-1])
    question = question if question is not None else items[-1]
    if not images:
        _fail('no image given: maemi ask RUN IMAGE [IMAGE...] "QUESTION" (or -q QUESTION)')
    _check_segmenter(segmenter)
    assistant = _load_assistant(run, device, batch_size, segmenter)
    queries = [images] if together else [[image] for image in images]
    try:
        detailed = assistant.ask_detailed(queries, question, context=context, detail=detail)
    except ValueError as e:  # ImageReadError names the file; an over-long prompt says so
        _fail(str(e))
    answers = [a.text for a in detailed]
    if as_json:
        from maemi.measure.scale import read_scale

        def scales(images: list[str], answer) -> list[dict | None]:  # the scale each answer's sizes assume
            used = [m.get("scale") for m in answer.measurements]  # the measurement's, when the run measured
            return used if used and all(used) else [read_scale(image).to_dict() for image in images]

        _echo_json([{"images": q, "question": question, "context": context, **a.to_dict(),
                     "scales": scales(q, a)} for q, a in zip(queries, detailed)])
    elif len(queries) == 1:
        typer.echo(answers[0])
    else:
        for q, a in zip(queries, answers):
            typer.echo(f"{q[0]}: {a}")


@app.command()
def caption(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    images: list[str] = typer.Argument(..., help="Image files."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {image, caption, template, numbers, "
                                                       "unknown, measurements}."),
    detail: bool = typer.Option(False, "--detail", help="The long caption (default: one sentence)."),
    segmenter: str = typer.Option("auto", "--segmenter", help=_SEGMENTER_HELP + " The captions count them."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
) -> None:
    """Caption micrographs with a trained model (the caption question it was trained on)."""
    _check_segmenter(segmenter)
    assistant = _load_assistant(run, device, batch_size, segmenter)
    try:
        detailed = assistant.caption_detailed(images, detail=detail)
    except ValueError as e:  # ImageReadError names the file; RunError a run trained without captions
        _fail(str(e))
    captions = [a.text for a in detailed]
    if as_json:
        _echo_json([{"image": image, "caption": a.text, **{k: v for k, v in a.to_dict().items() if k != "answer"}}
                    for image, a in zip(images, detailed)])
    elif len(images) == 1:
        typer.echo(captions[0])
    else:
        for image, text in zip(images, captions):
            typer.echo(f"{image}: {text}")


@app.command()
def classify(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    images: list[str] = typer.Argument(..., help="Image files."),
    shots: int = typer.Option(0, "--shots", min=0, help="0: zero-shot; K: the K most similar labelled images as "
                                                        "demonstrations."),
    support: Optional[Path] = typer.Option(None, "--support", help="Labelled images for the demonstrations (class "
                                                                   "folders or a CSV manifest); default: the run's "
                                                                   "training images."),
    top_k: int = typer.Option(5, "--top-k", min=1, help="Classes listed per image."),
    views: int = typer.Option(1, "--views", min=1, max=8, help=_VIEWS_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {image, shots, predictions: [{label, "
                                                       "probability}], ood_score, flag}."),
    batch_size: int = typer.Option(16, "--batch-size", min=1),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
) -> None:
    """Classify micrographs, zero-shot or few-shot with demonstrations picked by similarity. A calibrated run
    (`maemi calibrate`) flags each image ok, low_confidence or unfamiliar (unlike its training images)."""
    assistant = _load_assistant(run, device, batch_size)
    try:
        ranked = assistant.classify(images, shots=shots, support=support, top_k=top_k, views=views)
        flags = assistant.flags(images, [row[0][1] for row in ranked])
    except (ValueError, OSError) as e:  # unreadable image, bad support folder, missing training records
        _fail(str(e))
    if as_json:
        _echo_json([{"image": image, "shots": shots, "views": views,
                     "predictions": [{"label": label, "probability": p} for label, p in row],
                     "ood_score": score, "flag": flag}
                    for image, row, (score, flag) in zip(images, ranked, flags)])
        return
    for image, row, (_, flag) in zip(images, ranked, flags):
        shown = ", ".join(f"{label} {p:.3f}" for label, p in row) + ("" if flag == "ok" else f" [{flag}]")
        typer.echo(f"{image}: {shown}" if len(images) > 1 else shown)


@app.command()
def screen(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    folder: Path = typer.Argument(..., help="Folder searched recursively for images (or a CSV manifest)."),
    out: Path = typer.Option(..., "--out", help="results.csv or results.jsonl: one row per image."),
    caption: bool = typer.Option(False, "--caption", help="Add a caption per image."),
    measure: bool = typer.Option(False, "--measure", help="Add the measure teacher's measurements per image."),
    segmenter: str = typer.Option("auto", "--segmenter", help=_SEGMENTER_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue OUT: keep its rows, screen the images without one."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Images per forward pass and per fsynced append."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Screen a whole folder of micrographs in batches (classification, captions, measurements) to CSV/JSONL.

    One row per image: path (relative to FOLDER), top1, confidence (its probability), top5, caption (with
    --caption), measurements (with --measure; objects found by --segmenter) and error (why a file could not be read
    or measured).

    JSONL: top5 is a list of {label, probability}, measurements an object. CSV: top5 is that list as JSON text,
    measurements are flat columns measurements.NAME (object_count, diameter_mean_px, area_fraction, ...).

    Rows are appended and fsynced per batch: after a kill, --resume continues without redoing or repeating a row.
    An existing OUT without --resume is an error.
    """
    from maemi.serve.rows import check_table_path
    from maemi.serve.screen import ScreenConfig, find_images, screen_folder

    _check_segmenter(segmenter)
    try:
        check_table_path(out, resume)
        find_images(folder)
    except (ValueError, FileExistsError) as e:  # DatasetError is a ValueError
        _fail(str(e))
    assistant = _load_assistant(run, device, batch_size, segmenter)
    config = ScreenConfig(batch_size=batch_size, caption=caption, measure=measure)
    try:
        report = screen_folder(assistant, folder, out, config, resume=resume, progress=not quiet)
    except (ValueError, OSError) as e:  # a damaged OUT, a run without the prompts it needs: each names its file
        _fail(str(e))
    typer.echo(f"{out}: {report.written} rows written"
               + (f", {report.already_done} images already done" if report.already_done else "")
               + (f", {report.errors} with an error" if report.errors else "")
               + f"; {report.images} images in {folder}; {report.images_per_second:.1f} images/s "
               f"(batch {batch_size})")


@app.command()
def measure(
    images: list[Path] = typer.Argument(..., help="Image files, or folders: every image under them."),
    nm_per_pixel: Optional[float] = typer.Option(None, "--nm-per-pixel", min=0.0, help="The scale, when you know it "
                                                                                      "better than the files do."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write a table: results.csv or results.jsonl."),
    objects: Optional[Path] = typer.Option(None, "--objects", help="Write the per-object table (objects.csv or "
                                           ".jsonl): one row per segmented object of each image."),
    overlay: Optional[Path] = typer.Option(None, "--overlay", help="Folder for one PNG per image: what was "
                                           "segmented, outlined and numbered as in --objects."),
    fibres: Optional[Path] = typer.Option(None, "--fibres", help="Write the per-fibre table of each fibre mat "
                                          "(fibres.csv or .jsonl): length and mean diameter of each fibre counted."),
    histogram: Optional[Path] = typer.Option(None, "--histogram", help="Folder for one PNG per image: the "
                                             "distribution of equivalent diameters (nm when the scale is known); "
                                             "on a fibre mat, of the fibres' diameters."),
    summary: Optional[Path] = typer.Option(None, "--summary", help="Write the size distribution pooled over the "
                                           "images of each folder given (summary.json): objects, mean, D10/D50/D90, "
                                           "log-normal, 95% intervals between images, what was left out and why, "
                                           "and the folders compared; with --histogram, histograms beside it."),
    segmenter: str = typer.Option("auto", "--segmenter", help=_SEGMENTER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list, one object per image."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run: the images already in --out "
                                "are skipped, and every table is continued without repeats."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Measure this many images at once, in "
                                          "separate processes (default: one per CPU core while each gets 8 images); "
                                          "the tables keep the input order."),
) -> None:
    """Measure micrographs: the scale (with its source) and the measure teacher's numbers, in nm when the scale is
    known; with --objects, --fibres, --overlay and --histogram, each object and a picture of what was counted.

    The scale comes from --nm-per-pixel, else the instrument's metadata in the file (Zeiss, FEI/Thermo Fisher, Tescan
    TIFF tags; Hitachi/JEOL sidecar .txt; ImageJ/OME-TIFF calibration), else the info bar's scale bar read by OCR; when
    none can be trusted it is unknown, sizes stay in pixels and the row says why.

    The objects table has, per object: area, equivalent diameter, Feret diameters (max and min), aspect ratio,
    circularity, centroid and orientation; lengths in px, and in nm (empty when the scale is unknown). Its count and
    mean diameter are those of the measurements. On a fibre mat the objects counted are its fibres, traced through
    their crossings: the fibres table has one row per fibre (length and mean diameter), the objects table the
    segmented regions. Overlays show the whole image, the info bar (not measured) dimmed.

    Each image's rows are written as soon as it is measured: a run killed halfway keeps every finished image, and
    --resume continues it.

    --summary pools the objects of a sample's images into one size distribution, as a sample is sized from several
    fields: each folder given is a sample, and the files given one by one another. In nm (images without a known
    scale left out), or in pixels where no image has a scale; each object weighted for the frame's bias as in each
    image's own D10/D50/D90; 95% intervals with the images, not the particles, as units. With several samples, each
    pair is compared: the difference of their mean diameters and D50s, with intervals, and whether they differ.
    """
    from maemi.measure.batch import (MeasureJob, check_outputs, image_paths, image_samples, measure_many,
                                     pooled_summary)
    from maemi.measure.figures import output_names
    from maemi.serve.rows import RowFileError

    if nm_per_pixel is not None and nm_per_pixel <= 0:
        _fail("--nm-per-pixel must be positive")
    _check_segmenter(segmenter)
    try:
        check_outputs(out, objects, fibres, resume, summary)
        inputs = image_paths(images)
        paths = [path for found in inputs.values() for path in found]
    except (FileExistsError, ValueError) as e:  # an existing table without --resume, a bad suffix, no images
        _fail(str(e))
    for folder in [f for f in (overlay, histogram) if f is not None]:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _fail(f"{folder}: cannot create the folder: {e.strerror or e}")
    wanted = summary is not None  # the summary pools every image's objects and every mat's fibres
    jobs = [MeasureJob(path, name, nm_per_pixel, segmenter, objects is not None or wanted, fibres is not None or wanted,
                       overlay, histogram) for path, name in zip(paths, output_names(paths))]
    printed = not as_json and (out is None or len(jobs) == 1)
    try:
        skipped, results = measure_many(jobs, out, objects, fibres, resume, workers,
                                        on_done=(lambda r: _print_measurement(r.row)) if printed else None)
    except (RowFileError, FileExistsError) as e:
        _fail(str(e))
    rows = [r.row for r in results]
    if as_json:
        _echo_json(rows)
    if not printed:  # name the skipped files
        for row in rows:
            if row["error"]:
                typer.echo(f"{row['path']}: skipped: {row['error']}", err=True)
    errors = sum(r["error"] is not None for r in rows)
    measured_count = len(rows) - errors
    if skipped:
        typer.echo(f"{skipped} image(s) already in {out}: not measured again", err=True)
    if out is not None:
        typer.echo(f"{out}: {len(rows)} rows written, {errors} with an error", err=True)
    if objects is not None:
        typer.echo(f"{objects}: {sum(len(r.objects) for r in results)} objects from {measured_count} images",
                   err=True)
    if fibres is not None:
        mats = sum(r["measurements"] is not None and r["measurements"]["fibre_count"] is not None for r in rows)
        typer.echo(f"{fibres}: {sum(len(r.fibres) for r in results)} fibres from {mats} fibre mat(s) of "
                   f"{measured_count} images", err=True)
    for folder, kind in ((overlay, "overlays"), (histogram, "histograms")):
        if folder is not None:
            typer.echo(f"{folder}: {measured_count} {kind}", err=True)
    if summary is not None:
        _write_summary(summary, *pooled_summary(results, resume, out, objects, fibres, image_samples(inputs)),
                       histogram is not None, as_json)
    if rows and all(r["error"] for r in rows):
        raise typer.Exit(1)


def _write_summary(path: Path, summary: dict, histograms: list[tuple[list, list]], with_histogram: bool,
                   quiet: bool) -> None:
    from maemi.fileio import atomic_write_json
    from maemi.measure.figures import histogram_png, write_png
    from maemi.measure.pooled import summary_lines

    atomic_write_json(path, summary)
    for line in summary_lines(summary) if not quiet else []:
        typer.echo(line)
    samples = {pool["name"] for pool in summary["samples"]}
    typer.echo(f"{path}: the size distributions pooled over each of {len(samples)} sample(s)", err=True)
    if not with_histogram:
        return
    pooled = [(pool, histogram) for pool, histogram in zip(summary["samples"], histograms) if pool["images"]]
    for number, (pool, (values, weights)) in enumerate(pooled, start=1):
        picture = path.with_suffix(".png") if len(pooled) == 1 else path.with_name(f"{path.stem}-{number}.png")
        fibres = pool["kind"] == "fibres"
        write_png(picture, histogram_png(values, pool["unit"], f"{pool['name']}{', fibres' if fibres else ''}: "
                                         f"{len(pool['images'])} images pooled", "fibre" if fibres else "object",
                                         weights=None if fibres else weights))
        typer.echo(f"{picture}: the histogram of {pool['name']}{' (fibres)' if fibres else ''}", err=True)


def _print_measurement(row: dict) -> None:
    from maemi.measure.field_notes import field_notes
    from maemi.measure.measurements import SEPARATION_MIN

    if row["error"]:
        typer.echo(f"{row['path']}: error: {row['error']}")
        return
    nm, m = row["nm_per_pixel"], row["measurements"]
    scale = (f"{nm:.4g} nm per pixel ({row['scale_source']}: {row['scale_detail']})" if nm
             else "unknown: sizes in pixels")
    typer.echo(f"{row['path']}\n  scale: {scale}")
    for note in row["scale_notes"]:
        typer.echo(f"    note: {note}")
    if row["magnification"]:
        typer.echo(f"  magnification: {row['magnification']:g} x")
    for left, top, right, bottom in row["left_out"]:
        typer.echo(f"  left out: a scale bar and label drawn on the image, x {left}-{right}, y {top}-{bottom} px")
    unit = "nm" if nm else "px"
    for key, value in m.items():
        if key == "nm_per_pixel" or value is None:
            continue
        if key.endswith("_px") and key not in ("width_px", "height_px"):
            key, value = key[:-3], f"{value * nm if nm else value:.4g} {unit}"
        elif isinstance(value, float):
            value = f"{value:.4g}"
        typer.echo(f"  {key.replace('_', ' ')}: {value}")
    if m["fibre_count"] is not None:
        typer.echo(f"  note: a fibre mat: its {m['object_count']} objects are the fibres traced through their crossings, "
                   f"from {m['region_count']} segmented region(s), which --objects and --overlay list; --fibres lists "
                   "the fibres")
    for note in field_notes(m):
        typer.echo(f"  note: {note}")
    if m["objects_uncertain"]:
        typer.echo(f"  note: one threshold does not separate the objects from the background here (phase separation "
                   f"{m['phase_separation']:.2f} < {SEPARATION_MIN}): counts and sizes may be far off")


@app.command()
def serve(
    run: Path = typer.Argument(..., help=_RUN_HELP),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind; 0.0.0.0 opens the server to the network "
                                                         "(use --api-key-env then)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", help="Name of the environment variable holding "
                                                                          "the API key; every endpoint but /health "
                                                                          "then needs 'Authorization: Bearer KEY'."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Most requests sharing one forward pass."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="How long a request waits for others to "
                                                                        "share its forward pass."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Waiting requests beyond which it answers 503."),
    timeout: float = typer.Option(120.0, "--timeout", min=0.001, help="Seconds a request may take before a 504."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", min=0.001, help="Largest image accepted (MiB)."),
    max_image_megapixels: float = typer.Option(40.0, "--max-image-megapixels", min=0.001,
                                               help="Largest image accepted (megapixels, from its header), and the "
                                                    "memory one decode may take: that of an image this large in "
                                                    "8-bit RGB."),
    max_decodes: int = typer.Option(2, "--max-decodes", min=1, help="Images decoded and measured at once; the "
                                                                    "others wait."),
    allowed_hosts: Optional[str] = typer.Option(None, "--allowed-hosts", help="Comma-separated Host names answered "
                                                                              "when there is no API key ('*': any); "
                                                                              "default: the --host address and "
                                                                              "localhost."),
    shots: int = typer.Option(0, "--shots", min=0, help="Default demonstrations for /v1/classify (0: zero-shot)."),
    support: Optional[Path] = typer.Option(None, "--support", help="Labelled images for few-shot (class folders or a "
                                                                   "CSV manifest); default: the run's training "
                                                                   "images."),
    segmenter: str = typer.Option("auto", "--segmenter", help=_SEGMENTER_HELP + " Answers and captions count "
                                  "them; /v1/measure takes its own."),
    device: str = typer.Option("auto", "--device", help=_DEVICE_HELP),
) -> None:
    """Serve a trained model: local web page, HTTP API and an OpenAI-compatible endpoint."""
    import os

    import uvicorn

    from maemi.serve.app import ServeConfig, create_app, model_name
    from maemi.serve.batcher import BatcherConfig
    from maemi.serve.security import default_allowed_hosts

    api_key = None
    if api_key_env is not None:
        api_key = os.environ.get(api_key_env, "").strip()
        if not api_key:
            _fail(f"--api-key-env {api_key_env}: the environment variable {api_key_env} is not set or empty")
    elif host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(f"warning: serving on {host} without an API key: anyone who can reach it can use it "
                   "(set --api-key-env)", err=True)
    config = ServeConfig(batcher=BatcherConfig(batch_size, max_wait_ms, max_queue, timeout),
                         max_upload_mb=max_upload_mb, max_image_megapixels=max_image_megapixels,
                         max_decodes=max_decodes, api_key=api_key, shots=shots,
                         support=str(support) if support else None, model_name=model_name(run),
                         allowed_hosts=tuple(h.strip() for h in allowed_hosts.split(",") if h.strip())
                         if allowed_hosts else default_allowed_hosts(host))
    _check_segmenter(segmenter)
    assistant = _load_assistant(run, device, batch_size, segmenter)
    if shots:
        try:
            assistant.support_set(config.support, progress=True)  # embedded once, here, so that errors are clear
        except (ValueError, OSError) as e:  # no labelled images, a run without training records
            _fail(str(e))
    typer.echo(f"MAEMI {config.model_name} on http://{host}:{port}/ (API: /v1, OpenAI-compatible: /v1/chat/completions"
               f"{', API key required' if api_key else ''})", err=True)
    uvicorn.run(create_app(assistant, config), host=host, port=port, log_level="warning")


@app.command()
def demo(
    out: Path = typer.Option(Path("maemi-demo"), "--out", help="Folder for everything the demo makes."),
    per_class: int = typer.Option(DemoConfig.per_class, "--per-class", min=1, help="Synthetic images per class."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The main job end to end on the built-in synthetic corpus."""
    from maemi.demo import run_demo

    run_demo(DemoConfig(out=out, per_class=per_class, seed=seed), log=typer.echo)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
