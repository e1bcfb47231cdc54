"""`maemi teach`: ask a teacher about every image of a dataset and write instruction records (records.py).

Per image, one request answers every question of the profile; each answer becomes two records (short and long).
Then the multi-image records of the paper's appendix A.6: inter-class similarity, intra-class dissimilarity and
spatial heterogeneity pairs/groups (answered by the teacher) and few-shot classification records (answered by the
query's label, with demonstrations picked by embedding similarity, as open_flamingo's RICES).

Resumable: each image's records are appended in one write, and a rerun with `resume=True` skips every record id
already in the file. Unreadable images are skipped and reported; replies that fail validation (TeacherReplyError) or
requests that fail after retries go to the rejects file as {"images", "reason", "teacher"} lines, and are asked again
by the next resumed run.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
from tqdm import tqdm

from maemi.data.datasets import Sample, scan_dataset
from maemi.data.images import ImageReadError
from maemi.measure.slots import fill, template_from_text
from maemi.seeds import derived_seed
from maemi.teachers.measure import MeasureTeacher, measured_context
from maemi.teachers.questions import (LENGTHS, Profile, Question, TeacherReply, TeacherReplyError,
                                      check_reply, get_profile)
from maemi.teachers.records import RecordWriter, asked, few_shot_prompt, make_record
from maemi.teachers.remote import TeacherRequestError
from maemi.teachers.sampling import (HandcraftedEmbedder, ImageEmbedder, few_shot_demos, inter_class_pairs,
                                     intra_class_pairs, spatial_heterogeneous)


class Teacher(Protocol):
    name: str

    def answer(self, images: list[Path], questions: list[Question], *, label: str | None = None,
               metadata: dict | None = None, instruction: str = "") -> TeacherReply: ...


@dataclass
class TeachConfig:
    profile: str = "sem"
    compare: int = 0  # records per comparison strategy (inter_class, intra_class, spatial); 0: none
    compare_images: int = 3  # images per spatial-heterogeneity record (2-4); the class pairs always have 2
    few_shot: int = 0  # few-shot classification records; 0: none
    shots: int = 3  # demonstrations per few-shot record
    concurrency: int = 1  # teacher requests in flight (threads)
    workers: int | None = None  # processes measuring and embedding images; None: maemi.cpu.worker_count's
    limit: int | None = None  # first N images, taken from the classes in turn
    only: frozenset[str] | None = None  # relative paths to teach (one side of a split); None: every image
    price_per_1k_input: float | None = None  # for the cost estimate, in the user's currency
    price_per_1k_output: float | None = None


@dataclass
class TeachReport:
    images: int = 0  # images considered
    answered: int = 0  # images the teacher answered in this run
    skipped_done: int = 0  # images whose records were already in the output (resume)
    records: int = 0  # records written in this run
    unreadable: list[dict] = field(default_factory=list)  # {"path", "reason"}
    rejects: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: int = 0  # replies served from the teacher's cache

    def cost(self, config: TeachConfig) -> float | None:
        if config.price_per_1k_input is None and config.price_per_1k_output is None:
            return None
        return (self.prompt_tokens * (config.price_per_1k_input or 0.0)
                + self.completion_tokens * (config.price_per_1k_output or 0.0)) / 1000.0

    def add_usage(self, reply: TeacherReply) -> None:
        self.prompt_tokens += reply.usage.get("prompt_tokens", 0)
        self.completion_tokens += reply.usage.get("completion_tokens", 0)
        self.cached += reply.cached


def default_rejects_path(out: Path) -> Path:
    return out.with_name(out.stem + ".rejects.jsonl")


def interleave_by_label(samples: list[Sample]) -> list[Sample]:
    """Samples taken from the classes in turn (a, b, c, a, b, c, ...), so any prefix covers every class."""
    by_label: dict[str, list[Sample]] = {}
    for s in samples:
        by_label.setdefault(s.label or "", []).append(s)
    rounds = zip_longest(*(by_label[k] for k in sorted(by_label)))
    return [s for r in rounds for s in r if s is not None]


def _measured(reply: TeacherReply, key: str, length: str) -> dict:
    """make_record's template, slots and measured for one answer, when the teacher measured (else nothing)."""
    template = reply.templates.get(key, {}).get(length)
    if template is None:
        return {}
    return {"template": template, "slots": fill(template, reply.slots).used, "measured": reply.measured}


def matched_to_measurements(reply: TeacherReply, measurer: MeasureTeacher, sample: Sample) -> TeacherReply:
    """A remote teacher's reply with each number that agrees with the image's measurement (within 10%, same unit)
    turned into that measurement's slot, and written as measured; other numbers stay as the teacher wrote them (a
    free-text estimate: the record's slots say which numbers are measured). An image that cannot be measured keeps
    the reply as it is."""
    try:
        facts, _ = measurer.facts(sample.path, sample.label, sample.metadata)
    except (ImageReadError, ValueError):
        return reply
    templates = {key: {length: template_from_text(text, facts.values)[0] for length, text in pair.items()}
                 for key, pair in reply.answers.items()}
    answers = {key: {length: fill(t, facts.values).text for length, t in pair.items()} for key, pair in templates.items()}
    return dataclasses.replace(reply, answers=answers, templates=templates, slots=facts.values,
                               measured=measured_context([facts]))


def image_records(sample: Sample, questions: tuple[Question, ...], reply: TeacherReply, teacher: str,
                  profile: str) -> list[dict]:
    return [
        make_record([sample.relpath], asked(q.text, length), reply.answers[q.key][length], task=q.task,
                    family=q.family, length=length, label=sample.label, teacher=teacher, question_key=q.key, meta={"profile": profile},
                    **(_measured(reply, q.key, length) if q.task != "classify" else {}))
        for q in questions for length in LENGTHS
    ]


def record_ids(images: list[str], questions: tuple[Question, ...] | list[Question]) -> set[str]:
    """The ids make_record gives: what a resumed run looks for."""
    return {f"{'+'.join(images)}#{q.key}#{length}" for q in questions for length in LENGTHS}


def group_metadata(samples: list[Sample]) -> dict:
    """Per-image lists for a multi-image request: {"labels": [...], "nm_per_pixel": [...], ...}."""
    keys = ("nm_per_pixel", "magnification", "info_bar_height_px")
    md = {"labels": [s.label for s in samples]}
    for k in keys:
        values = [s.metadata.get(k) for s in samples]
        if any(v is not None for v in values):
            md[k] = values
    return md


class _Rejects:
    """Append-only JSONL of what could not be turned into records, one write + fsync per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def add(self, images: list[str], reason: str, teacher: str) -> None:
        line = json.dumps({"images": images, "reason": reason, "teacher": teacher}, ensure_ascii=False) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.count += 1


def _ask_all(teacher: Teacher, jobs: list[tuple[list[Sample], list[Question], dict | None, str | None]],
             concurrency: int) -> Iterator[tuple[int, TeacherReply | Exception]]:
    """Run teacher.answer over jobs with at most `concurrency` in flight; yield (job index, reply or error) in order."""

    def ask(job) -> TeacherReply | Exception:
        samples, questions, metadata, label = job
        try:
            reply = teacher.answer([s.path for s in samples], questions, label=label, metadata=metadata)
            check_reply(reply, questions)
            return reply
        # TeacherRequestError: the endpoint failed after retries; reported, and asked again by a resumed run
        except (ImageReadError, TeacherReplyError, TeacherRequestError) as e:
            return e

    if concurrency <= 1:
        for i, job in enumerate(jobs):
            yield i, ask(job)
        return
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # Bounded submission window: a killed run has at most 2 x concurrency requests in flight and unwritten.
        window = 2 * concurrency
        futures = {}
        next_job = 0
        for i in range(len(jobs)):
            while next_job < len(jobs) and next_job < i + window:
                futures[next_job] = pool.submit(ask, jobs[next_job])
                next_job += 1
            yield i, futures.pop(i).result()


def teach(
    root: str | Path,
    out: str | Path,
    teacher: Teacher,
    config: TeachConfig | None = None,
    *,
    rejects_path: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    embedder: ImageEmbedder | None = None,
    progress: bool = True,
) -> TeachReport:
    """Teach over the dataset at `root`, writing records to `out`. See the module docstring."""
    config = config or TeachConfig()
    profile: Profile = get_profile(config.profile)
    root, out = Path(root), Path(out)
    rejects = _Rejects(Path(rejects_path) if rejects_path else default_rejects_path(out))
    samples = scan_dataset(root)
    if config.only is not None:
        samples = [s for s in samples if s.relpath in config.only]
    samples = interleave_by_label(samples)
    if config.limit is not None:
        samples = samples[: config.limit]
    report = TeachReport(images=len(samples))
    measurer = teacher if isinstance(teacher, MeasureTeacher) else MeasureTeacher(profile)

    with RecordWriter(out, resume=resume, overwrite=overwrite) as writer:
        done = writer.done_keys()
        if isinstance(teacher, MeasureTeacher):  # measure every image up front, on every core
            teacher.measure_all([(s.path, s.metadata) for s in samples], workers=config.workers)

        # 1. one request per image, every question of the profile
        pending = [s for s in samples if not record_ids([s.relpath], profile.questions) <= done]
        report.skipped_done = len(samples) - len(pending)
        jobs = [([s], list(profile.questions), s.metadata or None, s.label) for s in pending]
        bad: set[str] = set()
        bar = tqdm(total=len(jobs), desc=f"teach ({teacher.name})", unit="img", disable=not progress)
        for i, result in _ask_all(teacher, jobs, config.concurrency):
            sample = pending[i]
            bar.update(1)
            if isinstance(result, ImageReadError):
                report.unreadable.append({"path": sample.relpath, "reason": result.reason})
                bad.add(sample.relpath)
            elif isinstance(result, Exception):
                rejects.add([sample.relpath], f"{type(result).__name__}: {result}", teacher.name)
            else:
                report.add_usage(result)
                report.answered += 1
                if not result.templates:
                    result = matched_to_measurements(result, measurer, sample)
                report.records += writer.write(image_records(sample, profile.questions, result, teacher.name,
                                                             profile.name))
        bar.close()

        # 2. multi-image records: comparisons (teacher) and few-shot classification (labels)
        if config.compare > 0 or config.few_shot > 0:
            usable = [s for s in samples if s.relpath not in bad]
            usable, embs = _embed(usable, embedder or HandcraftedEmbedder(), report, config.workers)
            if config.compare > 0:
                groups = _compare_groups(usable, embs, measurer, config, report)
                _ask_compare(groups, usable, profile, teacher, writer, rejects, config, report, progress)
            if config.few_shot > 0:
                report.records += writer.write(_few_shot_records(usable, embs, profile, config))
    report.rejects = rejects.count
    return report


def _embed(samples: list[Sample], embedder: ImageEmbedder, report: TeachReport, workers: int | None = None
           ) -> tuple[list[Sample], np.ndarray]:
    if isinstance(embedder, HandcraftedEmbedder):
        embedder.embed_ahead([s.path for s in samples], workers)
    keep, rows = [], []
    for s in samples:
        try:
            rows.append(embedder.embed([s.path])[0])
            keep.append(s)
        except ImageReadError as e:
            report.unreadable.append({"path": s.relpath, "reason": e.reason})
    return keep, (np.stack(rows) if rows else np.zeros((0, 1), dtype=np.float32))


def _compare_groups(samples: list[Sample], embs, measurer: MeasureTeacher, config: TeachConfig,
                    report: TeachReport) -> dict[str, list[list[int]]]:
    labels = [s.label for s in samples]
    het = []
    for s in samples:
        m = measurer.measure_image(s.path, s.metadata)[0].m
        het.append(m.size_heterogeneity if m.object_count >= 2 else float("nan"))
    return {
        "inter_class": [list(p) for p in inter_class_pairs(embs, labels, config.compare)],
        "intra_class": [list(p) for p in intra_class_pairs(embs, labels, config.compare)],
        # rotated so that the most heterogeneous image is not always "image 1": the answer must be read, not learnt
        "spatial": [g[k % len(g):] + g[:k % len(g)]
                    for k, g in enumerate(spatial_heterogeneous(het, config.compare, config.compare_images))],
    }


def _ask_compare(groups, samples, profile, teacher, writer, rejects, config, report, progress) -> None:
    done = writer.done_keys()
    jobs, meta = [], []
    for strategy, index_groups in groups.items():
        q = profile.compare_questions[strategy]
        for idx in index_groups:
            members = [samples[i] for i in idx]
            if record_ids([s.relpath for s in members], [q]) <= done:
                continue
            jobs.append((members, [q], group_metadata(members), None))
            meta.append((strategy, q, members))
    bar = tqdm(total=len(jobs), desc="compare", unit="rec", disable=not progress)
    for i, result in _ask_all(teacher, jobs, config.concurrency):
        bar.update(1)
        strategy, q, members = meta[i]
        paths = [s.relpath for s in members]
        if isinstance(result, Exception):
            rejects.add(paths, f"{type(result).__name__}: {result}", teacher.name)
            continue
        report.add_usage(result)
        labels = [s.label for s in members]
        report.records += writer.write([
            make_record(paths, asked(q.text, length), result.answers[q.key][length], task=q.task, family=q.family,
                        length=length, label=labels, teacher=teacher.name, question_key=q.key,
                        meta={"profile": profile.name, "strategy": strategy}, **_measured(result, q.key, length))
            for length in LENGTHS
        ])
    bar.close()


def _few_shot_records(samples: list[Sample], embs, profile: Profile, config: TeachConfig) -> list[dict]:
    """Queries from the classes in turn; demonstrations are the most similar other labelled images (RICES), in an
    order shuffled per query (seeded by its path, so a resumed or repeated run writes the same records).

    Why shuffled: inference puts the most similar demonstration last (Assistant.classify). Trained on that order, the
    student leans on the last label, which these records' most similar image shares more often than the majority of
    the five does when the five disagree (NEU-SDD, 600 records: 138 against 132 of the 178 mixed ones). Shuffled, the
    position says nothing and the student weighs all K: on NEU-SDD (same ViT, measured at cd9db85) few-shot top-1
    0.994 -> 0.997 (a pitted surface with four pitted demonstrations of five, which zero-shot calls crazing, now
    right). One test image on one seed: the gain is within the run-to-run scatter of a few borderline images.

    The demonstrations come from the teacher's embedding (no model yet); `maemi train --few_shot_demos=vision` chooses
    them again by the warm-started ViT, as inference does (train/demos.py), and shuffles them the same way."""
    q = profile.classify_question
    labelled = [i for i, s in enumerate(samples) if s.label is not None]
    if len(labelled) <= config.shots:
        return []
    records = []
    for qi in labelled[: config.few_shot]:
        support = [i for i in labelled if i != qi]
        demos = [support[j] for j in few_shot_demos(embs[qi], embs[support], config.shots)]
        np.random.default_rng(derived_seed("few-shot-order", samples[qi].relpath)).shuffle(demos)
        members = [samples[i] for i in demos] + [samples[qi]]
        prompt = few_shot_prompt(q.text, [samples[i].label for i in demos])
        records.append(make_record([s.relpath for s in members], prompt, samples[qi].label, task="classify",
                                   family="few_shot", length="short", label=samples[qi].label, teacher="label",
                                   question_key="classify.few_shot", meta={"profile": profile.name,
                                                                           "shots": config.shots}))
    return records
