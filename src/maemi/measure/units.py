"""Lengths as microscopes write them: "200 nm", "1 µm", "2 um", "500nm", "0.5 μm", "1 mm", "20 Å", "2.5e-09 m".

One parser for every place a length is read (scale-bar labels, instrument metadata, sidecar files), so that the same
text gives the same number everywhere. Lengths come back in nanometres.
"""

from __future__ import annotations

import re

# nm per unit. "µ" (U+00B5, micro sign) and "μ" (U+03BC, Greek mu) are both written for micro; "u" and "micron" by
# software that avoids non-ASCII text.
NM_PER_UNIT: dict[str, float] = {
    "pm": 1e-3,
    "Å": 0.1,
    "A": 0.1,  # only accepted as a unit in metadata fields (unit_to_nm), never in free text: "A" is too common a glyph
    "nm": 1.0,
    "µm": 1e3,
    "um": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}
_MICRO = str.maketrans({"μ": "µ"})  # Greek mu -> micro sign

# A number then a length unit: "200 nm", "0.5 um", ".2 um", "1,5 µm", "10 µ m" (spaced as some fonts lay it out).
LENGTH_LABEL = re.compile(
    r"(?<![\d.,])(\d+(?:[.,]\d+)?|[.,]\d+)\s*(pm|nm|[µu]\s?m|mm|Å)(?![a-zA-Z])",
)


def unit_to_nm(unit: str) -> float | None:
    """nm per `unit` ("nm", "µm", "um", "μm", "micron", "m", "mm", "pm", "Å"); None for anything else."""
    return NM_PER_UNIT.get(unit.strip().translate(_MICRO).replace("\\u00B5", "µ"))


def parse_length(text: str) -> tuple[float, str] | None:
    """The first "number unit" length in `text`, as (value in nm, the unit as written, normalised: "nm", "µm", ...);
    None when the text holds no length. "50x 200 um WD" -> (200000.0, "µm")."""
    match = LENGTH_LABEL.search(text.translate(_MICRO))
    if match is None:
        return None
    number, unit = match.group(1).replace(",", "."), match.group(2).replace(" ", "")
    unit = "µm" if unit in ("um", "µm") else unit
    value = float(number)
    if value <= 0:
        return None
    return value * NM_PER_UNIT[unit], unit


def format_length(nm: float) -> str:
    """A length for people: "4.96 nm", "1.2 µm"."""
    if nm >= 1e6:
        return f"{nm / 1e6:.3g} mm"
    if nm >= 1e3:
        return f"{nm / 1e3:.3g} µm"
    return f"{nm:.3g} nm"
