"""One answer to "how many nanometres is a pixel of this image?", with where it came from.

Sources, highest priority first:
1. explicit: the user's --nm-per-pixel (or the page's field);
2. metadata.jsonl: the dataset's own record (maemi synth writes the generator's truth there);
3. instrument: the pixel size the microscope stored in the file (maemi.measure.instrument);
4. scale bar: the info bar's bar and label read by OCR (maemi.measure.scalebar), else a bar and label drawn on the
   micrograph itself (maemi.measure.annotations).
The highest-priority source that gives a scale wins. When another source also gives one and they disagree by more than
DISAGREEMENT, the winner is kept and the disagreement is reported in `notes`. The scale bar is read by OCR only when
no source above it gave a scale, or when check_scale_bar=True (OCR costs ~0.1-0.3 s an image).

Where no source gives a trustworthy scale, nm_per_pixel is None and `notes` says why: every size then stays in pixels.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from maemi.measure.instrument import InstrumentScale, read_instrument_scale
from maemi.measure.scalebar import ScaleBarReading, read_scale_bar

DISAGREEMENT = 0.05  # relative difference between two sources' nm per pixel that is reported
# A stage tilted by this much or more is reported: on the tilted surface, lengths across the tilt axis read cos(tilt)
# of their size (0.996 at 5 degrees; 0.62 at the 52 degrees of a FIB-SEM's coincidence point)
TILT_NOTE_DEG = 5.0
SOURCE_NAMES = {"explicit": "your value", "metadata": "metadata.jsonl", "instrument": "the instrument's metadata",
                "scale_bar": "the scale bar"}


@dataclass(frozen=True)
class Scale:
    nm_per_pixel: float | None
    source: str | None  # a key of SOURCE_NAMES (explicit, metadata, instrument, scale_bar), or None when unknown
    detail: str = ""  # e.g. "Zeiss tag 34118 'Image Pixel Size' = 4.961 nm", "scale bar 205 px = '200 nm'"
    magnification: float | None = None
    magnification_source: str | None = None
    eht_kv: float | None = None
    wd_mm: float | None = None
    readings: dict = field(default_factory=dict)  # source -> nm per pixel, for every source that gave one
    notes: tuple[str, ...] = ()  # disagreements, and why a source gave no scale
    stage_tilt_deg: float | None = None  # the stage's tilt, where the instrument's metadata states it
    tilt_corrected: bool | None = None  # whether the instrument's tilt correction was on (None: not stated)

    @property
    def known(self) -> bool:
        return self.nm_per_pixel is not None

    def describe(self) -> str:
        """One line for people: "4.96 nm per pixel (instrument: Zeiss tag ...)" or "unknown: <why>"."""
        if self.nm_per_pixel is None:
            return "unknown: " + ("; ".join(self.notes) if self.notes else "no source gives the scale")
        return f"{self.nm_per_pixel:.4g} nm per pixel ({self.source}: {self.detail})"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["notes"] = list(self.notes)
        return d


def read_scale(
    path: str | Path | None = None,
    grey: np.ndarray | None = None,
    *,
    explicit_nm_per_pixel: float | None = None,
    metadata: dict | None = None,
    info_bar_top: int | None = None,
    check_scale_bar: bool = False,
    read_bar: bool = True,
    label_engine: str = "both",
    annotations: list | None = None,
) -> Scale:
    """The scale of one image. `grey` is the (H, W) image in [0, 1] with its info bar (loaded from `path` when not
    given and the scale bar must be read); `info_bar_top` its first row when already known (else it is found);
    `label_engine` the reader of the bar's label (maemi.measure.ocr.read_label); `annotations` the scale bars drawn
    on the image above the info bar when already found (maemi.measure.annotations.find_annotations)."""
    readings: list[tuple[str, float, str]] = []  # (source, nm per pixel, detail), priority order
    notes: list[str] = []
    extras: dict = {}

    if explicit_nm_per_pixel is not None:
        if not explicit_nm_per_pixel > 0:
            raise ValueError(f"nm per pixel must be positive, got {explicit_nm_per_pixel}")
        readings.append(("explicit", float(explicit_nm_per_pixel), "given by the user"))
    metadata = metadata or {}
    if metadata.get("nm_per_pixel"):
        readings.append(("metadata", float(metadata["nm_per_pixel"]), "metadata.jsonl"))
        _set(extras, "magnification", metadata.get("magnification"), "metadata")
        _set(extras, "eht_kv", metadata.get("eht_kv"))
        _set(extras, "wd_mm", metadata.get("wd_mm"))

    instrument: InstrumentScale | None = read_instrument_scale(path) if path is not None else None
    if instrument is not None:
        if instrument.nm_per_pixel:
            readings.append(("instrument", instrument.nm_per_pixel, instrument.detail))
        elif instrument.note:
            notes.append(f"instrument metadata ({instrument.flavour}): {instrument.note}")
        _set(extras, "magnification", instrument.magnification, "instrument")
        _set(extras, "eht_kv", instrument.eht_kv)
        _set(extras, "wd_mm", instrument.wd_mm)
        _set(extras, "stage_tilt_deg", instrument.stage_tilt_deg)
        _set(extras, "tilt_corrected", instrument.tilt_corrected)
        tilt_note = _tilt_note(instrument.stage_tilt_deg, instrument.tilt_corrected)
        if tilt_note:
            notes.append(tilt_note)

    if read_bar and (not readings or check_scale_bar):
        bar = _read_bar(path, grey, info_bar_top, label_engine, annotations)
        if bar.nm_per_pixel:
            where = "drawn on the image" if bar.on_image else "in the info bar"
            readings.append(("scale_bar", bar.nm_per_pixel,
                             f"scale bar of {bar.bar_px} px labelled {bar.label!r} {where}"))
        elif bar.reason:
            notes.append(f"scale bar: {bar.reason}")
        _set(extras, "magnification", bar.magnification, "info bar")

    if not readings:
        return Scale(None, None, magnification=extras.get("magnification"),
                     magnification_source=extras.get("magnification_source"), eht_kv=extras.get("eht_kv"),
                     wd_mm=extras.get("wd_mm"), notes=tuple(notes), stage_tilt_deg=extras.get("stage_tilt_deg"),
                     tilt_corrected=extras.get("tilt_corrected"))
    source, nm, detail = readings[0]
    for other, other_nm, other_detail in readings[1:]:
        if abs(other_nm - nm) / nm > DISAGREEMENT:
            notes.append(f"{SOURCE_NAMES[other]} says {other_nm:.4g} nm per pixel ({other_detail}), "
                         f"{abs(other_nm / nm - 1):.0%} from {SOURCE_NAMES[source]} ({nm:.4g}), which is kept")
    return Scale(nm, source, detail, magnification=extras.get("magnification"),
                 magnification_source=extras.get("magnification_source"), eht_kv=extras.get("eht_kv"),
                 wd_mm=extras.get("wd_mm"), readings={s: v for s, v, _ in readings}, notes=tuple(notes),
                 stage_tilt_deg=extras.get("stage_tilt_deg"), tilt_corrected=extras.get("tilt_corrected"))


def _read_bar(path, grey, info_bar_top, label_engine, annotations) -> ScaleBarReading:
    """The info bar's scale bar, else one drawn on the image above it."""
    from maemi.data.images import ImageReadError, find_info_bar, load_grey
    from maemi.measure.annotations import find_annotations, read_annotation_scale

    if grey is None:
        if path is None:
            return ScaleBarReading(None, reason="no image to read a scale bar from")
        try:
            grey = load_grey(path)
        except ImageReadError as e:
            return ScaleBarReading(None, reason=f"the image could not be read ({e.reason})")
    if info_bar_top is None:
        info_bar_top = find_info_bar(grey)
    reading = read_scale_bar(grey, info_bar_top, label_engine)
    if reading.nm_per_pixel is not None or reading.bar_px is not None:
        return reading  # the info bar has a scale bar: the one to read
    micrograph = grey[:info_bar_top] if info_bar_top is not None else grey
    drawn = read_annotation_scale(micrograph, find_annotations(micrograph) if annotations is None else annotations,
                                  label_engine)
    return drawn if drawn.bar_px is not None else reading


def _tilt_note(tilt_deg: float | None, corrected: bool | None) -> str | None:
    """What a tilted stage does to the lengths measured, where it is tilted TILT_NOTE_DEG or more."""
    if tilt_deg is None or abs(tilt_deg) < TILT_NOTE_DEG:
        return None
    if corrected:
        return (f"the stage was tilted {tilt_deg:.0f} degrees with the instrument's tilt correction on: lengths across "
                "the tilt axis are stretched back for what lies in the tilted surface, not for heights out of it")
    unstated = "" if corrected is False else " (tilt correction not stated)"
    return (f"the stage was tilted {tilt_deg:.0f} degrees{unstated}: on the specimen's surface, lengths across the "
            f"tilt axis (the image's vertical, for a tilt about its horizontal) read "
            f"{math.cos(math.radians(tilt_deg)):.2f} of their size, and sizes, areas and spacings with them")


def _set(extras: dict, key: str, value, source: str | None = None) -> None:
    """Keep the first (highest-priority) value of each instrument field."""
    if value is None or key in extras:
        return
    extras[key] = float(value)
    if source is not None:
        extras[f"{key}_source"] = source
