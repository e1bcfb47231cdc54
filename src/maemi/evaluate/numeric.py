"""Numeric fidelity: does an answer state the numbers its reference states?

For each number in a reference answer (counts, sizes, fractions, scale, magnification, ...), the answer reproduces it
when it writes a number within 10% of it, and exactly when one of its numbers, rounded as the reference writes it,
equals it. Reported as shares of all reference numbers, overall and per group (question family, task), next to the
same share with the images shuffled among the questions: numbers that follow the image drop there, numbers made up
from the question do not. They drop only to the chance that two images measure alike (images of one size, one
magnification): the control's floor, measured as what the reference's own template states with the shuffled image's
measurement, and the control is also reported over the numbers where the two images' measurements differ, where an
answer that follows the image reproduces none. Hand-written: no evaluation library scores numbers in free text.

Word fidelity is the same for the words that describe the measurement ("widely varied in size", "clustered"): the
share of the reference's that the answer writes too.
"""

from __future__ import annotations

import re

from maemi.measure.slots import NUMBER_RE, SLOT_RE, parse_number
from maemi.teachers.measure import DESCRIPTORS

TOLERANCE = 0.1


def _decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def _close(x: float, said: list[float], tolerance: float) -> bool:
    return any(abs(y - x) <= tolerance * abs(x) for y in said)


def reproduced(reference: str, answer: str, tolerance: float = TOLERANCE, unless: str = "") -> tuple[int, int, int]:
    """(numbers in the reference, of them reproduced within `tolerance`, reproduced exactly after rounding). Numbers
    that `unless` reproduces within `tolerance` are left out of all three."""
    said = [parse_number(m.group(0)) for m in NUMBER_RE.finditer(answer)]
    skip = [parse_number(m.group(0)) for m in NUMBER_RE.finditer(unless)]
    n = close = exact = 0
    for match in NUMBER_RE.finditer(reference):
        x = parse_number(match.group(0))
        if _close(x, skip, tolerance):
            continue
        n += 1
        close += _close(x, said, tolerance)
        exact += any(round(y, _decimals(match.group(0).replace(",", ""))) == x for y in said)
    return n, close, exact


def _shares(counts: list[tuple[int, int, int]]) -> dict:
    n = sum(c[0] for c in counts)
    return {"numbers": n, "answers": len(counts),
            "within_10pct": sum(c[1] for c in counts) / n if n else None,
            "exact": sum(c[2] for c in counts) / n if n else None}


def measured_numbers(record: dict) -> str:
    """The numbers of a record's reference answer that state a measurement (its slot values, in the template's
    order), as text; "" for an answer without a template. The rest of its numbers are fixed text ("1 for a random
    pattern", "on a 0-1 scale") that any answer of that template repeats, whatever the image."""
    turn = record["conversations"][1]
    slots = turn.get("slots", {})
    return " ; ".join(slots[name] for name in SLOT_RE.findall(turn.get("template", "")) if name in slots)


def numeric_fidelity(references: list[str], answers: list[str], groups: dict[str, list[str]] | None = None,
                     measured: list[str] | None = None, floors: list[str] | None = None) -> dict:
    """{"overall": {"numbers", "answers", "within_10pct", "exact"}, "groups": {key: {value: {...}}}, and with
    `measured` (measured_numbers of each reference) "measured": the same shares over the measured numbers only}.
    With `floors` (for the shuffled control: each reference's template filled from the shuffled images' measurement,
    "" where there is none), "floor": the shares the floors themselves reach, and "images_differ": the answers' shares
    over the reference numbers that the floor does not reproduce."""
    if len(references) != len(answers) or (floors is not None and len(floors) != len(answers)):
        raise ValueError(f"{len(references)} references for {len(answers)} answers"
                         + (f" and {len(floors)} floors" if floors is not None else ""))
    counts = [reproduced(r, a) for r, a in zip(references, answers)]
    out: dict = {"overall": _shares(counts), "groups": {}}
    for key, values in (groups or {}).items():
        out["groups"][key] = {v: _shares([c for c, w in zip(counts, values) if w == v]) for v in sorted(set(values))}
    if measured is not None:
        out["measured"] = _shares([reproduced(m, a) for m, a in zip(measured, answers)])
    if floors is not None:
        out["floor"] = _shares([reproduced(r, f) for r, f in zip(references, floors)])
        out["images_differ"] = _shares([reproduced(r, a, unless=f) for r, a, f in zip(references, answers, floors)])
    return out


def measured_words(record: dict) -> list[str]:
    """The words of a record's reference answer that describe a measurement ("widely varied in size", "clustered":
    the values of its DESCRIPTORS slots, in the template's order); [] for an answer without a template."""
    turn = record["conversations"][1]
    slots = turn.get("slots", {})
    return [slots[name] for name in SLOT_RE.findall(turn.get("template", ""))
            if name in slots and name.partition("#")[0] in DESCRIPTORS]


def word_fidelity(words: list[list[str]], answers: list[str]) -> dict:
    """{"words", "reproduced"}: of the reference answers' descriptive words (measured_words), the share that the
    answer to the same question writes too (whole words, any case)."""
    if len(words) != len(answers):
        raise ValueError(f"{len(words)} references for {len(answers)} answers")
    n = hits = 0
    for ws, answer in zip(words, answers):
        for w in ws:
            n += 1
            hits += re.search(rf"\b{re.escape(w)}\b", answer, re.IGNORECASE) is not None
    return {"words": n, "reproduced": hits / n if n else None}
