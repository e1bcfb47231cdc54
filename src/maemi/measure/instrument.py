"""The pixel size an instrument wrote into the file: SEM TIFF tags, ImageJ/OME-TIFF calibration, sidecar text files.

Returns an InstrumentScale (nm per pixel, magnification, accelerating voltage, working distance, each as the file
states it, and which flavour of metadata it came from), or None when the file carries no calibration we trust.

What was measured before choosing (tifffile 2026.3.3, rosettasciio 0.15.0, on TIFFs written with documented tag
contents, as tests/test_instrument_scale.py builds them): tifffile's parsers (`TiffFile.sem_metadata`, Zeiss tag
34118; `TiffFile.fei_metadata`, tags 34680/34682; `imagej_metadata`; `ome_metadata`) return every raw value right;
RosettaSciIO's TIFF reader gave 0.0 m per pixel for a Zeiss file and dropped the unit of an ImageJ file. So the raw
values come from tifffile and the units and the choice of field are ours (written here because no library picks the
right Zeiss field or refuses a print resolution).

Known traps handled:
- Zeiss stores "Pixel Size" (AP_PIXEL_SIZE, the pixel of the monitor at the scan's display size) and "Image Pixel Size"
  (AP_IMAGE_PIXEL_SIZE, the stored image's pixel); they differ for 0.5k/2k/3k store resolutions. Only the image's is
  used; without it, the field width AP_WIDTH divided by the image width; never the monitor's.
- Zeiss values come in pm, nm, µm; Thermo Fisher/FEI `[Scan] PixelWidth` is in metres, HV in volts, WD in metres.
- TIFF resolution tags in inches or centimetres are a print resolution (72, 96, 300 dpi) in almost every file that is
  not a calibrated micrograph: they are trusted only when they imply a pixel below MAX_RESOLUTION_TAG_PIXEL_NM.
- Gatan DM3/DM4: the x axis's Scale and Units (ImageData.Calibrations), through RosettaSciIO's DigitalMicrograph
  reader; a reciprocal unit ("1/nm", a diffraction pattern) is no length.
- Hitachi writes a sidecar `NAME.txt` with `PixelSize=` in nm; JEOL a sidecar `NAME.txt` with the marker's length in
  pixels (`$$SM_MICRON_BAR`) and its label (`$$SM_MICRON_MARKER`); Tescan an INI block in TIFF tag 50431 with
  `PixelSizeX=` in metres.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import tifffile

from maemi.measure.units import parse_length, unit_to_nm

# A resolution tag that says a pixel is larger than this is a print or screen resolution, not a calibration: 72 dpi is
# 353 µm per pixel; the coarsest SEM images (a few tens of magnification over 1024 pixels) have pixels of ~5 µm.
MAX_RESOLUTION_TAG_PIXEL_NM = 20_000.0
_RESOLUTION_UNIT_NM = {2: 2.54e7, 3: 1e7}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_TESCAN_TAG = 50431


@dataclass(frozen=True)
class InstrumentScale:
    nm_per_pixel: float | None
    flavour: str  # "zeiss" | "fei" | "tescan" | "hitachi" | "jeol" | "imagej" | "ome" | "tiff-resolution" | "gatan"
    detail: str  # the field the pixel size came from, as a person would look it up
    magnification: float | None = None
    eht_kv: float | None = None
    wd_mm: float | None = None
    field_width_nm: float | None = None
    note: str | None = None  # why nm_per_pixel is None although the file has instrument metadata
    stage_tilt_deg: float | None = None  # the specimen stage's tilt (Zeiss 'Stage at T', FEI StageT), where stated
    tilt_corrected: bool | None = None  # whether the instrument's tilt correction was on (None: not stated)


def read_instrument_scale(path: str | Path) -> InstrumentScale | None:
    """The calibration the instrument stored with `path` (TIFF tags or a sidecar .txt), or None when there is none."""
    path = Path(path)
    found = None
    if path.suffix.lower() in (".dm3", ".dm4"):
        return _gatan(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        try:
            with tifffile.TiffFile(path) as tif:
                found = _from_tiff(tif)
        except Exception:  # not a TIFF tifffile reads: the image loader reports that, with its reason
            found = None
    return found or _from_sidecar(path)


# ---------------------------------------------------------------------------------------------------------- TIFF tags


def _from_tiff(tif: tifffile.TiffFile) -> InstrumentScale | None:
    page = tif.pages.first
    width = int(page.imagewidth)
    if tif.is_sem and tif.sem_metadata:
        return _zeiss(tif.sem_metadata, width)
    if tif.is_fei and tif.fei_metadata:
        return _fei(tif.fei_metadata, width)
    if _TESCAN_TAG in page.tags:
        tescan = _tescan(page.tags[_TESCAN_TAG].value)
        if tescan:
            return tescan
    if tif.is_ome and tif.ome_metadata:
        ome = _ome(tif.ome_metadata)
        if ome:
            return ome
    return _resolution_tags(page, tif.imagej_metadata if tif.is_imagej else None)


def _zeiss_number(entry) -> tuple[float, str] | None:
    """A tifffile sem_metadata entry ('Image Pixel Size', 4.961, 'nm') -> (4.961, 'nm'); strings like '4.961 nm'
    (what tifffile leaves when it cannot split) too."""
    if not isinstance(entry, tuple) or len(entry) < 2:
        return None
    if len(entry) >= 3 and isinstance(entry[1], (int, float)):
        return float(entry[1]), str(entry[2])
    match = re.match(r"\s*([-+\d.eE]+)\s*(\S+)", str(entry[1]))
    if match:
        try:
            return float(match.group(1)), match.group(2)
        except ValueError:
            return None
    return None


def _zeiss_length_nm(entry) -> float | None:
    number = _zeiss_number(entry)
    if number is None:
        return None
    per_unit = unit_to_nm(number[1])
    return number[0] * per_unit if per_unit and number[0] > 0 else None


def parse_magnification(text: str) -> float | None:
    """'25.00 K X' -> 25000; 'Mag = 500 X' -> 500; '1.2 M X' -> 1.2e6; 'x5,000' -> 5000."""
    text = text.replace("Mag", "").replace("=", "")
    match = re.search(r"(?i)(?:x\s*)?(\d[\d,]*(?:\.\d+)?)\s*([kKmM])?\s*[xX×]?", text)
    if not match:
        return None
    value = float(match.group(1).replace(",", ""))
    factor = {"k": 1e3, "m": 1e6}.get((match.group(2) or "").lower(), 1.0)
    return value * factor if value > 0 else None


def _zeiss(sem: dict, width: int) -> InstrumentScale:
    mag_entry = sem.get("ap_mag")
    magnification = parse_magnification(str(mag_entry[1])) if isinstance(mag_entry, tuple) else None
    kv = _zeiss_number(sem.get("ap_actualkv") or sem.get("ap_manualkv"))
    wd = _zeiss_length_nm(sem.get("ap_wd"))
    field_width = _zeiss_length_nm(sem.get("ap_width"))
    tilt = _zeiss_number(sem.get("ap_stage_at_t"))
    correction = sem.get("dp_tilt_correction")
    common = dict(magnification=magnification, eht_kv=kv[0] if kv else None,
                  wd_mm=wd / 1e6 if wd else None, field_width_nm=field_width,
                  stage_tilt_deg=tilt[0] if tilt else None,
                  tilt_corrected=_switch(correction[1]) if isinstance(correction, tuple) and len(correction) > 1
                  else None)
    image_pixel = _zeiss_length_nm(sem.get("ap_image_pixel_size"))
    if image_pixel:
        return InstrumentScale(image_pixel, "zeiss", f"Zeiss tag 34118 'Image Pixel Size' = "
                               f"{sem['ap_image_pixel_size'][1]} {sem['ap_image_pixel_size'][2]}", **common)
    if field_width and width > 0:
        return InstrumentScale(field_width / width, "zeiss", f"Zeiss tag 34118 'Width' / {width} pixels", **common)
    return InstrumentScale(None, "zeiss", "Zeiss tag 34118", **common,
                           note="the Zeiss tag gives no 'Image Pixel Size' or 'Width'; its 'Pixel Size' is the "
                                "monitor's pixel, not the stored image's")


def _fei(fei: dict, width: int) -> InstrumentScale:
    scan = fei.get("Scan") or fei.get("EScan") or {}
    beam = fei.get("EBeam") or fei.get("Beam") or {}
    pixel_m = _positive(scan.get("PixelWidth"))
    hv = _positive(beam.get("HV"))
    wd = _positive(beam.get("WD") or (fei.get("Stage") or {}).get("WorkingDistance"))
    hfw = _positive(beam.get("HFW") or scan.get("HorFieldsize"))
    tilt_rad = _number((fei.get("Stage") or {}).get("StageT"), beam.get("StageTa"))  # FEI angles are in radians
    common = dict(eht_kv=hv / 1e3 if hv else None, wd_mm=wd * 1e3 if wd else None,
                  field_width_nm=hfw * 1e9 if hfw else None,
                  stage_tilt_deg=math.degrees(tilt_rad) if tilt_rad is not None else None,
                  tilt_corrected=_switch(beam.get("TiltCorrectionIsOn")))
    if pixel_m:
        return InstrumentScale(pixel_m * 1e9, "fei", f"FEI/Thermo Fisher [Scan] PixelWidth = {pixel_m} m", **common)
    if hfw and width > 0:  # the horizontal field width spans the stored image's width
        return InstrumentScale(hfw * 1e9 / width, "fei", f"FEI/Thermo Fisher HFW = {hfw} m / {width} pixels", **common)
    return InstrumentScale(None, "fei", "FEI/Thermo Fisher metadata", **common,
                           note="the FEI metadata has no [Scan] PixelWidth and no HFW")


def _tescan(value) -> InstrumentScale | None:
    text = value.decode("latin-1", "replace") if isinstance(value, bytes) else str(value)
    fields = _ini_fields(text)
    pixel_m = _positive(fields.get("PixelSizeX"))
    if not pixel_m:
        return None
    hv, wd, mag = (_positive(fields.get(k)) for k in ("HV", "WD", "Magnification"))
    return InstrumentScale(pixel_m * 1e9, "tescan", f"Tescan tag 50431 PixelSizeX = {pixel_m} m", magnification=mag,
                           eht_kv=hv / 1e3 if hv else None, wd_mm=wd * 1e3 if wd else None)


def _ome(xml: str) -> InstrumentScale | None:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            size = _positive(element.get("PhysicalSizeX"))
            unit = element.get("PhysicalSizeXUnit", "µm")  # the OME schema's default unit
            per_unit = unit_to_nm(unit)
            if size and per_unit:
                return InstrumentScale(size * per_unit, "ome", f"OME-XML PhysicalSizeX = {size} {unit}")
    return None


def _resolution_tags(page, imagej: dict | None) -> InstrumentScale | None:
    """ImageJ: XResolution is pixels per `unit` of the ImageJ description. Plain TIFF: pixels per inch/centimetre."""
    tag = page.tags.get("XResolution")
    if tag is None:
        return None
    numerator, denominator = tag.value
    pixels_per_unit = numerator / denominator if denominator else 0.0
    if pixels_per_unit <= 0:
        return None
    if imagej and imagej.get("unit"):
        per_unit = unit_to_nm(str(imagej["unit"]))
        if per_unit is None:
            return None  # "pixel", "inch" in ImageJ's sense, or a unit we do not know: not a length calibration
        return InstrumentScale(per_unit / pixels_per_unit, "imagej",
                               f"ImageJ calibration: {pixels_per_unit:g} pixels per {imagej['unit']}")
    unit_tag = page.tags.get("ResolutionUnit")
    per_unit = _RESOLUTION_UNIT_NM.get(int(unit_tag.value) if unit_tag else 2)
    if per_unit is None:
        return None
    nm = per_unit / pixels_per_unit
    if nm > MAX_RESOLUTION_TAG_PIXEL_NM:
        return None  # a print resolution (module docstring)
    unit_name = "inch" if per_unit == _RESOLUTION_UNIT_NM[2] else "centimetre"
    return InstrumentScale(nm, "tiff-resolution", f"TIFF XResolution = {pixels_per_unit:g} pixels per {unit_name}")


def _gatan(path: Path) -> InstrumentScale | None:
    """A DM3/DM4 file's spatial calibration (ImageData.Calibrations.Dimension), through RosettaSciIO's reader."""
    try:
        from rsciio.digitalmicrograph import file_reader

        signals = file_reader(str(path), lazy=True)
    except Exception:  # not a DM file rsciio reads: the image loader reports that, with its reason
        return None
    for signal in signals:
        axes = [a for a in signal["axes"] if a.get("name") == "x"] or signal["axes"][-1:]
        if signal["data"].ndim != 2 or not axes:
            continue
        scale, units = float(axes[0]["scale"]), str(axes[0]["units"] or "")
        per_unit = unit_to_nm(units) if units else None
        if per_unit is None or scale <= 0:
            why = f"its unit {units!r} is not a length (a diffraction pattern?)" if units else "it is uncalibrated"
            return InstrumentScale(None, "gatan", "Gatan DM calibration", note=f"the DM file's x axis: {why}")
        return InstrumentScale(scale * per_unit, "gatan", f"Gatan DM calibration: {scale:g} {units} per pixel")
    return None


# ------------------------------------------------------------------------------------------------------ sidecar files


def _from_sidecar(path: Path) -> InstrumentScale | None:
    """Hitachi and JEOL SEMs save `NAME.txt` beside `NAME.tif`/`.bmp`/`.jpg`."""
    sidecar = path.with_suffix(".txt")
    if not sidecar.is_file() or sidecar.stat().st_size > 1_000_000:
        return None
    text = sidecar.read_text(encoding="latin-1", errors="replace")
    if "$$SM_MICRON_BAR" in text or "$CM_MAG" in text:
        return _jeol(text, sidecar.name)
    fields = _ini_fields(text)
    if "PixelSize" in fields:
        return _hitachi(fields, sidecar.name)
    return None


def _hitachi(fields: dict, name: str) -> InstrumentScale | None:
    pixel_nm = _positive(fields.get("PixelSize"))  # Hitachi writes it in nm
    if not pixel_nm:
        return None
    kv = _positive(fields.get("AcceleratingVoltage"))  # in V
    mag = _positive(fields.get("Magnification"))
    wd = _positive(fields.get("WorkingDistance"))  # in µm
    return InstrumentScale(pixel_nm, "hitachi", f"Hitachi sidecar {name}: PixelSize = {pixel_nm} nm",
                           magnification=mag, eht_kv=kv / 1e3 if kv else None, wd_mm=wd / 1e3 if wd else None)


def _jeol(text: str, name: str) -> InstrumentScale | None:
    fields = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].startswith("$"):
            fields[parts[0].lstrip("$")] = parts[1].strip()
    bar_px = _positive(fields.get("SM_MICRON_BAR"))
    marker = parse_length(fields.get("SM_MICRON_MARKER", ""))
    mag = _positive(fields.get("CM_MAG"))
    kv = _positive((fields.get("CM_ACCEL_VOLT") or "").split()[0] if fields.get("CM_ACCEL_VOLT") else None)
    common = dict(magnification=mag, eht_kv=kv)
    if bar_px and marker:
        return InstrumentScale(marker[0] / bar_px, "jeol", f"JEOL sidecar {name}: marker "
                               f"{fields['SM_MICRON_MARKER']} over {fields['SM_MICRON_BAR']} pixels", **common)
    return InstrumentScale(None, "jeol", f"JEOL sidecar {name}", **common,
                           note="the JEOL sidecar gives no marker length and label ($$SM_MICRON_BAR, "
                                "$$SM_MICRON_MARKER)")


# ------------------------------------------------------------------------------------------------------------ helpers


def _ini_fields(text: str) -> dict[str, str]:
    """key=value lines of an INI-like block; the first occurrence of a key wins."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return fields


def _number(*values) -> float | None:
    """The first of `values` that reads as a finite number (tifffile gives numbers, or strings it could not parse)."""
    for value in values:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(number):
            return number
    return None


def _switch(value) -> bool | None:
    """An on/off field as the vendors write it (True/False, "On"/"Off", "yes"/"no", 1/0); None when unreadable."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return True if text in ("on", "yes", "true", "1") else False if text in ("off", "no", "false", "0") else None


def _positive(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and number == number and number != float("inf") else None
