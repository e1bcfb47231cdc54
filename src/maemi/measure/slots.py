"""Measured numbers as typed slots: an answer is written as a template ("There are {object_count} particles, about
{diameter_mean} across") and its slots are filled from the measurement of the image it is about.

Why slots rather than a copy (pointer) mechanism over a facts context: the offline teacher renders every number
from one measurement record, so it can write the template exactly, and a template filled from the same record is
byte-identical to its answer. A decoder that writes the slot name cannot get the digits wrong, whatever its size;
a pointer network would have to learn, per number, to copy the right span, and a small one fails on exactly the
values that matter (counts with four digits, sizes with units). The price: a slot the measurement cannot fill reads
"unknown", never a made-up value.

A slot is `{name}` for one image, `{name#i}` for the i-th image (from 1) of a multi-image question. Slot values are
text with their unit and rounding ("24.5 nm", "104", "12.3%"), rendered once by the teacher's formatting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SLOT_RE = re.compile(r"\{([a-z][a-z0-9_]*(?:#[1-9])?)\}")
UNKNOWN = "unknown"
BARE_NUMBER_SLOTS = ("object_count", "fibre_count", "nanowire_count", "parasitic_count", "magnification")  # stated without a unit
# A number as answers write it: 1,234 / 24.5 / 0.526 / 12.3% (the sign and the thousands separator included); not the
# dimension of "3D rendering" or "2.5D packaging", which is a word, not a quantity.
_NOT_A_DIMENSION = r"(?!\.?\d|D\b)"
NUMBER_RE = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?" + _NOT_A_DIMENSION
                       + r"|(?<![\w.])-?\d+(?:\.\d+)?" + _NOT_A_DIMENSION)


def slot(name: str, index: int | None = None) -> str:
    """The placeholder for `name` (of the `index`-th image, from 1, in a multi-image answer)."""
    return "{" + name + (f"#{index}" if index is not None else "") + "}"


def indexed(values: dict[str, str], index: int) -> dict[str, str]:
    """One image's slot values renamed for its place in a multi-image answer: {"object_count#2": ...}."""
    return {f"{name}#{index}": value for name, value in values.items()}


@dataclass
class Filled:
    text: str
    used: dict[str, str] = field(default_factory=dict)  # slot name -> the value written in its place
    missing: list[str] = field(default_factory=list)  # slots the measurement could not fill (written "unknown")


def fill(template: str, values: dict[str, str]) -> Filled:
    """Replace every `{slot}` of `template` by its value; a slot with no value becomes "unknown" and is listed."""
    used: dict[str, str] = {}
    missing: list[str] = []

    def one(match: re.Match) -> str:
        name = match.group(1)
        if name in values:
            used[name] = values[name]
            return values[name]
        if name not in missing:
            missing.append(name)
        return UNKNOWN

    return Filled(SLOT_RE.sub(one, template), used, missing)


def parse_number(text: str) -> float:
    return float(text.replace(",", ""))


def numbers(text: str) -> list[float]:
    """The numbers written in `text`, in order."""
    return [parse_number(m.group(0)) for m in NUMBER_RE.finditer(text)]


def template_from_text(text: str, values: dict[str, str], tolerance: float = 0.1) -> tuple[str, dict[str, str]]:
    """A free-text answer (a remote teacher's) with each number that a measured slot backs replaced by that slot:
    the number agrees with the slot's within `tolerance` (relative) and is followed by the slot's unit. Numbers no
    measurement backs stay as written (the record's slots say which are measured). Returns (template, slots used)."""
    candidates = []  # (value, unit, name) of every slot whose value is one number and an optional unit
    for name, value in values.items():
        m = re.fullmatch(r"\s*(" + NUMBER_RE.pattern + r")\s*(\S*)\s*", value)
        # A bare number ("3") would match some ratio or index by chance: only a count or a magnification is
        # written bare; everything else must carry its unit (nm, px, %).
        if m and (m.group(2) or name in BARE_NUMBER_SLOTS):
            candidates.append((parse_number(m.group(1)), m.group(2), name))
    used: dict[str, str] = {}
    out, last = [], 0
    for m in NUMBER_RE.finditer(text):
        x = parse_number(m.group(0))
        after = text[m.end():]
        best = None
        for value, unit, name in candidates:
            if unit and not re.match(r"\s*" + re.escape(unit) + r"(?![\w])", after):
                continue
            if value == x or (value != 0 and abs(x - value) <= tolerance * abs(value)):
                if best is None or abs(x - value) < abs(x - best[0]):
                    best = (value, unit, name)
        if best is None:
            continue
        end = m.end()
        if best[1]:  # the slot's value carries its unit: swallow the text's unit too
            end += re.match(r"\s*" + re.escape(best[1]), after).end()
        out.append(text[last:m.start()] + slot(best[2]))
        used[best[2]] = values[best[2]]
        last = end
    out.append(text[last:])
    return "".join(out), used
