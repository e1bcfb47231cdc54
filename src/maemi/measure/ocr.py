"""Reading text in micrographs: one line of an info bar (Tesseract), and a scale bar's length label (the learned
label reader, with Tesseract as a second opinion where it is unsure).

Tesseract (Debian's tesseract-ocr, through pytesseract) installs from the package registries, runs on CPU and reads
the printed fonts of instrument info bars. Its failure modes on short labels drive the rules here: measured on the
synthetic info bars, it reads "1 um" as "Tum", "5um" as "Sum" and the micro sign as "p", and its word confidences do
not separate right from wrong readings (right labels at 0-57, wrong ones at 90+). The learned reader
(maemi.measure.label_reader: a CRNN trained here on synthetic renders, decoded along a label's grammar) reads the
labels of published micrographs better than Tesseract (benchmarks/results/scale.md) and says how probable its
reading is; that probability decides whether a label is trusted.

References: Tesseract 5, LSTM engine, page segmentation mode 7 (a single text line); pytesseract.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

from maemi.measure.units import NM_PER_UNIT, parse_length

OCR_TEXT_HEIGHT_PX = 40  # crops are upscaled so that text is about this tall: Tesseract reads 30-40 px text best
LABEL_CHARACTERS = "0123456789., nmuµμpÅ"
# The learned reader's label is trusted at this probability or above (label_reader.label_decode). Chosen on the dev
# half of the published label crops and on 1,000 synthetic renders of another seed than training's, with the shipped
# pair of networks: at 0.7, 95.5% of the dev crops right and 0.8% wrong, 90.5% / 0.2% of the renders; at 0.5, 96.2% /
# 0.8% and 92.5% / 0.6% (three times the wrong labels on the renders for two points more right).
LEARNED_MIN_PROBABILITY = 0.7
# Tesseract's commonest misreadings of the digits of a label, undone before two readings are compared
_DIGIT_SLIPS = str.maketrans({"T": "1", "I": "1", "l": "1", "|": "1", "O": "0", "o": "0", "S": "5", "Z": "2",
                              "μ": "µ"})
_WHOLE_LABEL = re.compile(r"\s*(\d+(?:[.,]\d+)?|[.,]\d+)\s*(pm|nm|[µμu]\s?m|mm|Å)\s*")


@dataclass(frozen=True)
class LabelReading:
    text: str  # what was read (the restricted reading)
    nm: float | None  # the label's length when it is read and trusted
    reason: str | None = None  # why a reading that looks like a label is not trusted


def tesseract_available() -> bool:
    return shutil.which("tesseract") is not None


def dark_on_light(crop: np.ndarray, background: float | None = None) -> np.ndarray:
    """The crop as black text on white, uint8: the background level (the crop's median unless given) goes to white,
    the text (the pixels farthest from it, on whichever side they lie) to black."""
    crop = np.asarray(crop, dtype=np.float32)
    background = float(np.median(crop)) if background is None else background
    deviation = crop - background
    spread = float(np.percentile(np.abs(deviation), 99))
    if spread <= 1e-6:
        return np.full(crop.shape, 255, np.uint8)
    text_sign = np.sign(np.mean(deviation[np.abs(deviation) >= 0.5 * spread]))  # -1: dark text, +1: light text
    ink = np.clip(deviation * text_sign / spread, 0.0, 1.0)  # 0 background .. 1 text
    return ((1.0 - ink) * 255).astype(np.uint8)


def tesseract_line(crop: np.ndarray, background: float | None = None, characters: str | None = None
                   ) -> tuple[str, float]:
    """(text, lowest word confidence 0-100) of one line of text, optionally restricted to `characters`."""
    import pytesseract

    image = Image.fromarray(dark_on_light(crop, background))
    factor = float(np.clip(OCR_TEXT_HEIGHT_PX / max(1, image.height), 1.0, 8.0))
    image = image.resize((max(1, round(image.width * factor)), max(1, round(image.height * factor))),
                         Image.Resampling.LANCZOS)
    margin = OCR_TEXT_HEIGHT_PX // 2
    canvas = Image.new("L", (image.width + 2 * margin, image.height + 2 * margin), 255)
    canvas.paste(image, (margin, margin))
    config = "--psm 7" + (f' -c tessedit_char_whitelist="{characters}"' if characters else "")
    data = pytesseract.image_to_data(canvas, config=config, output_type=pytesseract.Output.DICT)
    tokens = [(t.strip(), float(c)) for t, c in zip(data["text"], data["conf"]) if t.strip()]
    return " ".join(t for t, _ in tokens), min((c for _, c in tokens), default=0.0)


LABEL_ENGINES = ("tesseract", "learned", "both")


@lru_cache(maxsize=1)
def learned_reader():
    """The shipped learned label reader (maemi.measure.label_reader), loaded once."""
    from maemi.measure.label_reader import LabelReader

    return LabelReader.load()


def read_label(crop: np.ndarray, background: float | None = None, free_text: str | None = None,
               engine: str = "both") -> LabelReading | None:
    """A scale bar's label in `crop`: a LabelReading (nm set when trusted), or None when the crop reads as no label.

    engine "learned": the learned reader (maemi.measure.label_reader) alone, trusted at LEARNED_MIN_PROBABILITY or
    above. "tesseract": Tesseract alone (tesseract_label). "both" (the default): the learned reader's label when it is
    that probable; below, the same label when Tesseract, reading the crop restricted to a label's characters or
    unrestricted (`free_text`, read here when not given), finds its number and a unit of the same kind (n, m, or a
    micro-like glyph: Tesseract writes the micro sign as "p", "pu", "y" or "u"); else Tesseract's own label when its
    two readings agree and the learned reader reads none; else nothing is trusted. Each engine's figures:
    benchmarks/results/scale.md.
    """
    if engine not in LABEL_ENGINES:
        raise ValueError(f"unknown label engine {engine!r}; choose one of {', '.join(LABEL_ENGINES)}")
    if engine == "tesseract":
        return tesseract_label(crop, background, free_text)
    text, probability = learned_reader().read(_grey_unit(crop))
    learned = parse_length(text) if text else None
    if learned and probability >= LEARNED_MIN_PROBABILITY:
        return LabelReading(text, learned[0])
    unsure = (f"the label was read as {text!r} with probability {probability:.2f} < {LEARNED_MIN_PROBABILITY}"
              if learned else None)
    if engine == "learned":
        return LabelReading(text, None, f"{unsure}; not trusted") if learned else None
    restricted, _ = tesseract_line(crop, background, LABEL_CHARACTERS)
    if learned and _confirms(restricted, learned):
        return LabelReading(text, learned[0])
    if free_text is None:
        free_text, _ = tesseract_line(crop, background)
    if learned and _confirms(free_text, learned):
        return LabelReading(text, learned[0])
    if learned is None:
        return tesseract_label(crop, background, free_text, restricted)
    return LabelReading(text, None, f"{unsure}, and Tesseract read {restricted!r}: not trusted")


_TESSERACT_READING = re.compile(r"\s*(\d+(?:[.,]\d+)?|[.,]\d+)\s*([a-zµμ ]*)\s*")
_UNIT_KIND = {"nm": "n", "mm": "m", "µm": "micro", "pm": "micro", "Å": "Å"}


def _confirms(restricted: str, learned: tuple[float, str]) -> bool:
    """Tesseract's restricted reading has the learned label's number and a unit glyph of the same kind."""
    match = _TESSERACT_READING.fullmatch(restricted.translate(_DIGIT_SLIPS).rstrip(".,;:"))  # "2um." is "2um"
    if match is None:
        return False
    number, unit = float(match.group(1).replace(",", ".")), match.group(2).replace(" ", "")
    kind = ("n" if unit == "nm" else "m" if unit == "mm" else
            "micro" if re.fullmatch(r"[pyuµμ]{1,2}m", unit) else None)
    value, learned_unit = learned[0] / NM_PER_UNIT[learned[1]], learned[1]
    return kind == _UNIT_KIND[learned_unit] and abs(number - value) <= 1e-9 * value


def _grey_unit(crop: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(crop, dtype=np.float32), 0.0, 1.0)


def tesseract_label(crop: np.ndarray, background: float | None = None, free_text: str | None = None,
                    restricted: str | None = None) -> LabelReading | None:
    """Tesseract reads the crop restricted to a label's characters, which stops its commonest slips ("1 um" as "Tum",
    "0" as "O"). The reading is trusted when the unrestricted reading (`free_text`, read here when not given), with
    those same slips undone, gives the same length: one reading alone is right too rarely on short labels to quote.
    "pm" is never trusted: it is what Tesseract returns for a micro sign."""
    if restricted is None:
        restricted, _ = tesseract_line(crop, background, LABEL_CHARACTERS)
    parsed = parse_length(restricted) if _WHOLE_LABEL.fullmatch(restricted) else None
    if parsed is None:
        return None
    if parsed[1] == "pm":
        return LabelReading(restricted, None, f"the label was read as {restricted!r}: picometres, which OCR also "
                                              "returns for a misread µm; not trusted")
    if free_text is None:
        free_text, _ = tesseract_line(crop, background)
    free = parse_length(free_text.translate(_DIGIT_SLIPS))
    if free is None or abs(free[0] - parsed[0]) > 1e-9 * parsed[0]:
        return LabelReading(restricted, None, f"the label was read as {restricted!r} and, unrestricted, as "
                                              f"{free_text!r}: the two readings disagree, so neither is trusted")
    return LabelReading(restricted, parsed[0])
