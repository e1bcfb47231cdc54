"""Instruction records: the JSONL that `maemi teach` writes and training reads.

One JSON object per line, LLaVA's conversation format (Liu et al. 2023, "Visual Instruction Tuning") extended:

    {"id": "crazing/crazing_1.jpg#defect.contrast#short",
     "images": ["crazing/crazing_1.jpg"],                 # relative to the dataset root; 1 to 5 images
     "conversations": [{"from": "human", "value": "<image>\\nHow would you describe the contrast ...?"},
                       {"from": "gpt", "value": "Low: the marks differ little from the background ..."}],
     "task": "vqa",                                       # caption | vqa | classify | compare
     "family": "defect",                                  # question family: basics, morphology, ..., caption,
                                                          # classify, few_shot, compare.inter_class, ...
     "length": "short",                                   # short | long (each question is answered at both)
     "label": "crazing",                                  # the image's class (a list for multi-image records), or null
     "teacher": "measure",                                # "measure" or "openai:<model>"
     "question_key": "defect.contrast",
     "meta": {"profile": "neu"}}

A teacher that measures (or a remote teacher's answer matched to measurements) adds to the record "measured" (the
measurement in words, which the student's prompt carries: `with_measured`) and to the gpt turn "template" (the
answer with a {slot} wherever a measured value stands; maemi.measure.slots) and "slots" (the values it was filled
from). The student learns to write the template; the assistant fills it from its own measurement of the image.

The human turn holds exactly one `<image>` token per entry of `images`, in order; a single-image prompt starts with
`<image>\\n`. Few-shot records interleave demonstrations (`few_shot_prompt`):
`<image>\\n<question> patches.\\n<image>\\n...<image>\\n<question>`, the query last.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

from maemi.fileio import append_durably, truncate_file
from maemi.measure.slots import fill
from maemi.teachers.questions import LENGTHS, TASKS

IMAGE_TOKEN = "<image>"
_REQUIRED = {"id": str, "images": list, "conversations": list, "task": str, "family": str, "length": str,
             "teacher": str, "question_key": str}


class RecordError(ValueError):
    """A record that does not follow the format above; the message names the file:line (or record) and the problem."""


def few_shot_prompt(question: str, demo_labels: list[str] | tuple[str, ...]) -> str:
    """The human turn of a few-shot classification record: demonstrations "<image>\\n{question} {label}.\\n" (least
    similar first), then "<image>\\n{question}" for the query. Teaching and inference both build it here."""
    return "".join(f"{IMAGE_TOKEN}\n{question} {label}.\n" for label in demo_labels) + f"{IMAGE_TOKEN}\n{question}"


DETAIL_INSTRUCTION = "Answer in detail."


def asked(question: str, length: str) -> str:
    """The question as a record of answer `length` asks it. Each question is answered short and long; the long one is
    asked for in words, so that the prompt tells the student which to write (and a user can ask for either)."""
    return f"{question} {DETAIL_INSTRUCTION}" if length == "long" else question


def with_measured(prompt: str, measured: str | None) -> str:
    """`prompt` with the line "Measured: ..." before its last line (the question), after the images and any context.
    Training (train/data.py) and inference (Assistant) both insert it here."""
    if not measured:
        return prompt
    head, newline, question = prompt.rpartition("\n")
    return f"{head}{newline}Measured: {measured}\n{question}"


def make_record(
    images: list[str],
    question: str,
    answer: str,
    *,
    template: str | None = None,
    slots: dict[str, str] | None = None,
    measured: str | None = None,
    task: str,
    family: str,
    length: str,
    label: Any,
    teacher: str,
    question_key: str,
    meta: dict | None = None,
    id: str | None = None,
) -> dict:
    """Build one record. `question` without `<image>` tokens gets one per image prepended; a question that already
    places its tokens (few-shot interleaving) must hold exactly one per image."""
    n_tokens = question.count(IMAGE_TOKEN)
    prompt = question if n_tokens else IMAGE_TOKEN + "\n" + (IMAGE_TOKEN + "\n") * (len(images) - 1) + question
    reply: dict = {"from": "gpt", "value": answer}
    if template is not None:
        reply["template"], reply["slots"] = template, dict(slots or {})
    record = {
        "id": id or f"{'+'.join(images)}#{question_key}#{length}",
        "images": list(images),
        "conversations": [{"from": "human", "value": prompt}, reply],
        "task": task,
        "family": family,
        "length": length,
        "label": label,
        "teacher": teacher,
        "question_key": question_key,
        "meta": dict(meta or {}),
    }
    if measured:
        record["measured"] = measured
    validate_record(record, where=f"record {record['id']!r}")
    return record


def validate_record(rec: Any, where: str) -> None:
    """Raise RecordError(f"{where}: <problem>") unless `rec` follows the record format."""

    def fail(problem: str) -> None:
        raise RecordError(f"{where}: {problem}")

    if not isinstance(rec, dict):
        fail(f"expected a JSON object, got {type(rec).__name__}")
    for key, typ in _REQUIRED.items():
        if key not in rec:
            fail(f"missing key {key!r}")
        if not isinstance(rec[key], typ):
            fail(f"{key!r} must be a {typ.__name__}, got {type(rec[key]).__name__}")
    if not rec["id"]:
        fail("'id' is empty")
    if not rec["images"] or not all(isinstance(p, str) and p for p in rec["images"]):
        fail("'images' must be a non-empty list of paths")
    if rec["task"] not in TASKS:
        fail(f"'task' is {rec['task']!r}; expected one of {', '.join(TASKS)}")
    if rec["length"] not in LENGTHS:
        fail(f"'length' is {rec['length']!r}; expected one of {', '.join(LENGTHS)}")
    turns = rec["conversations"]
    if len(turns) < 2 or len(turns) % 2:
        fail(f"'conversations' needs human/gpt pairs, got {len(turns)} turns")
    for i, turn in enumerate(turns):
        expected = "human" if i % 2 == 0 else "gpt"
        if not isinstance(turn, dict) or turn.get("from") != expected:
            fail(f"turn {i} must come from {expected!r}")
        if not isinstance(turn.get("value"), str) or not turn["value"].strip():
            fail(f"turn {i} has no text")
        if expected == "gpt" and IMAGE_TOKEN in turn["value"]:
            fail(f"turn {i}: an answer must not contain {IMAGE_TOKEN}")
        if expected == "gpt" and "template" in turn:
            if not isinstance(turn["template"], str) or not turn["template"].strip():
                fail(f"turn {i}: 'template' must be non-empty text")
            slots = turn.get("slots")
            if not isinstance(slots, dict) or not all(isinstance(v, str) for v in slots.values()):
                fail(f"turn {i}: a template needs 'slots', an object of text values")
            if fill(turn["template"], slots).text != turn["value"]:
                fail(f"turn {i}: the template filled from its slots is not the answer")
    n_tokens = sum(t["value"].count(IMAGE_TOKEN) for t in turns[::2])
    if n_tokens != len(rec["images"]):
        fail(f"{n_tokens} {IMAGE_TOKEN} token(s) in the human turns for {len(rec['images'])} image(s)")
    if "meta" in rec and not isinstance(rec["meta"], dict):
        fail("'meta' must be an object")
    if "measured" in rec and not isinstance(rec["measured"], str):
        fail("'measured' must be text")


def demonstration_labels(records: Iterable[dict]) -> dict[str, str]:
    """image -> class of every image with a single-image labelled record (its first label): the images few-shot
    demonstrations are drawn from, at inference (Assistant.support_set) and in training (train/demos.py)."""
    labels: dict[str, str] = {}
    for record in records:
        if len(record["images"]) == 1 and isinstance(record.get("label"), str):
            labels.setdefault(record["images"][0], record["label"])
    return labels


def read_records(path: str | os.PathLike) -> list[dict]:
    """Every record of a JSONL file, validated; errors name the file and line."""
    path = Path(path)
    records = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            validate_record(rec, where=f"{path}:{n}")
            records.append(rec)
    return records


class RecordWriter:
    """Appends records to a JSONL file so that a run killed at any moment can resume without loss or duplicates.

    Each `write` is a single `os.write` of whole lines followed by fsync, so a kill leaves at most one partial trailing
    line; opening with `resume=True` cuts it off, and `done_keys()` lists the ids already written. Without `resume`
    an existing non-empty file is an error unless `overwrite=True`, so a finished dataset is never clobbered by mistake.
    """

    def __init__(self, path: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.resume = resume
        self.overwrite = overwrite
        self._fd: int | None = None
        self._done: set[str] = set()

    def __enter__(self) -> RecordWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        exists = self.path.exists() and self.path.stat().st_size > 0
        if exists and not self.resume and not self.overwrite:
            raise FileExistsError(f"{self.path}: already exists; pass --resume to continue it or remove it first")
        if exists and self.resume:
            self._truncate_partial_line()
            self._done = {rec["id"] for rec in read_records(self.path)}
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if not self.resume else 0)
        self._fd = os.open(self.path, flags, 0o644)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _truncate_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        truncate_file(self.path, data.rfind(b"\n") + 1)  # 0 when the only line is partial

    def done_keys(self) -> set[str]:
        """Ids of the records already in the file (including those written by this writer)."""
        return set(self._done)

    def write(self, records: Iterable[dict]) -> int:
        """Append the records not written yet, in one write; returns how many were new."""
        if self._fd is None:
            raise RuntimeError("RecordWriter is not open; use it as a context manager")
        new = []
        for rec in records:
            validate_record(rec, where=f"record {rec.get('id')!r}")
            if rec["id"] not in self._done:
                new.append(rec)
                self._done.add(rec["id"])
        if not new:
            return 0
        append_durably(self._fd, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in new).encode("utf-8"))
        return len(new)
