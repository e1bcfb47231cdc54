"""`maemi demo`: the main job end to end on the built-in synthetic corpus.

Each step writes its output under one folder and is skipped when that output is already there, so a second run reuses
what is done. The steps that exist today: synthesise the corpus, inspect it, split it, distil instruction data with
the offline measure teacher, train with the shipped `demo` config, calibrate on the validation split (temperature and
the familiarity threshold), evaluate on the held-out split (with the shuffled-images control), and answer one
question with `maemi ask`'s code path.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from maemi.fileio import atomic_write_json


@dataclass
class DemoConfig:
    out: Path = Path("maemi-demo")
    # The ViT learns from the training side alone, from scratch. Its linear probe on 400 fresh synthetic images (another
    # synth seed, never the test split): 0.916 (sd 0.008) trained on 140 images, 0.968 (sd 0.001) on 280, over three
    # seeds each (benchmarks/results/demo_runs.md). 40 per class gives it 280.
    per_class: int = 40
    seed: int = 0
    val: float = 0.1
    test: float = 0.2
    compare: int = 20  # multi-image comparison records per strategy, training side
    few_shot: int = 60  # few-shot classification records, training side
    train_config: str = "demo"  # a shipped config name (src/maemi/configs/) or a file
    train_overrides: tuple[str, ...] = ()  # --key=value settings on top of it
    eval_sample: int | None = 200  # generation metrics on this many test records (classification uses all images)


def _step(name: str, done: bool, run: Callable[[], str], log: Callable[[str], None], seconds: dict[str, float]
          ) -> None:
    """Run a step unless its output is there; seconds[name] is its wall time when it ran."""
    if done:
        log(f"[{name}] already done, reusing it")
        return
    t0 = time.perf_counter()
    summary = run()
    seconds[name] = time.perf_counter() - t0
    log(f"[{name}] {summary} ({seconds[name]:.1f} s)")


def run_demo(cfg: DemoConfig, log: Callable[[str], None] = print) -> dict:
    from maemi.data.datasets import check_samples, inspection_report, scan_dataset, split_dataset
    from maemi.data.synth import SEM_CLASSES, synthesize

    corpus, inspect_path, split_path = cfg.out / "corpus", cfg.out / "inspect.json", cfg.out / "splits.json"
    expected = cfg.per_class * len(SEM_CLASSES)

    def synth_done() -> bool:
        meta = corpus / "metadata.jsonl"
        if not meta.is_file():
            return False
        rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        return len(rows) == expected and all(r.get("seed") is not None for r in rows)

    def do_synth() -> str:
        synthesize(corpus, per_class=cfg.per_class, seed=cfg.seed)
        return f"{expected} micrographs in {len(SEM_CLASSES)} classes -> {corpus}"

    def do_inspect_and_split() -> str:
        samples = scan_dataset(corpus)
        checked = check_samples(samples)  # one full decode of every image serves both the report and the split
        report = inspection_report(corpus, samples, *checked)
        atomic_write_json(inspect_path, report)
        good, _, facts = checked
        split = split_dataset(good, {k: v["sha256"] for k, v in facts.items()}, cfg.val, cfg.test, cfg.seed)
        split["root"] = str(corpus)
        atomic_write_json(split_path, split)
        return (f"{report['images']} images, {len(report['classes'])} classes, {len(report['duplicates'])} duplicate "
                f"groups, {len(report['unreadable'])} unreadable -> {inspect_path}; train {len(split['train'])}, "
                f"val {len(split['val'])}, test {len(split['test'])} -> {split_path}")

    seconds: dict[str, float] = {}
    synth_ok = synth_done()
    _step("synth", synth_ok, do_synth, log, seconds)
    _step("inspect + split", synth_ok and inspect_path.is_file() and split_path.is_file(), do_inspect_and_split, log,
          seconds)

    # Instruction data per side of the split, so that no record mixes training and test images.
    data = {side: cfg.out / f"{side}.jsonl" for side in ("train", "val", "test")}
    for side, path in data.items():
        def do_teach(side=side, path=path) -> str:
            from maemi.teachers.measure import MeasureTeacher
            from maemi.teachers.pipeline import TeachConfig, teach

            only = frozenset(json.loads(split_path.read_text())[side])
            extra = {"compare": cfg.compare, "few_shot": cfg.few_shot} if side == "train" else {}
            tmp = path.with_name(path.name + ".partial")
            report = teach(corpus, tmp, MeasureTeacher("sem"), TeachConfig(profile="sem", only=only, **extra),
                           resume=tmp.exists(), progress=False)
            tmp.replace(path)  # the step counts as done only once its file is complete
            return f"{report.records} records about {report.answered} images -> {path}"

        _step(f"teach {side}", synth_ok and path.is_file(), do_teach, log, seconds)

    run = cfg.out / "run"

    def do_train() -> str:
        from maemi.train.config import load_train_config
        from maemi.train.trainer import train

        config = load_train_config(cfg.train_config, list(cfg.train_overrides))
        # The demo owns its run folder: resume from a checkpoint when there is one, else start afresh there (a run
        # stopped before its first checkpoint leaves run.json behind, which a fresh `maemi train` would refuse).
        summary = train(config, data["train"], data["val"], corpus, run, resume=True, log=log)
        return f"{summary.get('finished')}: best at step {summary.get('best_step')} -> {run}"

    eval_dir = run / "eval"
    train_done = (run / "eval" / "metrics.json").is_file()  # evaluation comes after a finished training
    _step("train", train_done, do_train, log, seconds)

    def do_calibrate() -> str:
        from maemi.evaluate.calibration import calibrate_run

        result = calibrate_run(run, data["val"], images=corpus, progress=False)
        return (f"temperature {result['temperature']:.3f} (validation split), unfamiliar above "
                f"{result['familiarity']['threshold']:.4f} -> {run / 'calibration.json'}")

    _step("calibrate", (run / "calibration.json").is_file(), do_calibrate, log, seconds)

    def do_eval() -> str:
        from maemi.evaluate.evaluate import EvalConfig, evaluate_run

        evaluate_run(run, data["test"], images=corpus, out=eval_dir, config=EvalConfig(sample=cfg.eval_sample),
                     progress=False)
        return f"-> {eval_dir / 'report.md'}"

    _step("eval", (eval_dir / "metrics.json").is_file(), do_eval, log, seconds)
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    from maemi.evaluate.report import format_metrics_table

    log(format_metrics_table(metrics))
    log(f"report: {eval_dir / 'report.md'}")

    # One question, as `maemi ask` would answer it.
    from maemi.assistant import Assistant

    image = corpus / json.loads(split_path.read_text())["test"][0]
    question = "How many nanostructures are there, and what is their mean size?"
    assistant = Assistant.load(run)
    answer = assistant.ask(image, question)[0]
    log(f"\n$ maemi ask {run} {image} \"{question}\"\n{answer}")
    facts = assistant.image_facts(image)
    if not isinstance(facts, str):  # the numbers above are these, as `maemi measure` reports them
        log(f"measured: {facts.values['object_count']} objects, mean equivalent diameter {facts.values['diameter_mean']}"
            f" (scale: {facts.scale.source if facts.scale else 'unknown'})")
    # Each step's wall time and the process's peak memory, kept across reruns (benchmarks read them).
    record = cfg.out / "timings.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    atomic_write_json(record, {"seconds": {**previous.get("seconds", {}), **seconds},
                               "peak_rss_mib": max(previous.get("peak_rss_mib", 0.0), peak_mib)})
    return {"corpus": corpus, "inspect": inspect_path, "splits": split_path, "data": data, "run": run,
            "metrics": metrics, "answer": answer, "seconds": seconds}
