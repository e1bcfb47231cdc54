"""Instrument metadata: each flavour's pixel size, read from real files written here with documented tag contents."""

import numpy as np
import pytest
import tifffile

from maemi.measure.instrument import parse_magnification, read_instrument_scale
from maemi.measure.scale import read_scale
from maemi.measure.units import parse_length, unit_to_nm

IMAGE = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)


def _zeiss_tag(fields: dict[str, str]) -> bytes:
    """Tag 34118 as SmartSEM writes it: CRLF lines, a few unnamed values, then NAME / 'Label = value unit' pairs,
    in Latin-1 (the micro sign is byte 0xB5)."""
    lines = ["0", "0", "0", "0"]
    for key, value in fields.items():
        lines += [key, value]
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def _write_zeiss(path, fields, image=IMAGE):
    tag = _zeiss_tag(fields)
    tifffile.imwrite(path, image, extratags=[(34118, 2, len(tag), tag, True)])


def test_zeiss_image_pixel_size_not_the_monitor_pixel_size(tmp_path):
    # a 2048-wide store resolution: the monitor's "Pixel Size" is twice the stored image's "Image Pixel Size"
    _write_zeiss(tmp_path / "z.tif", {
        "AP_PIXEL_SIZE": "Pixel Size = 9.922 nm", "AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 4.961 nm",
        "AP_MAG": "Mag = 25.00 K X", "AP_ACTUALKV": "EHT = 5.00 kV", "AP_WD": "WD = 5.1 mm",
        "DP_IMAGE_STORE": "Store resolution = 2048 * 1536",
    })
    s = read_instrument_scale(tmp_path / "z.tif")
    assert s.flavour == "zeiss" and s.nm_per_pixel == pytest.approx(4.961, abs=1e-9)
    assert s.magnification == 25000 and s.eht_kv == 5.0 and s.wd_mm == pytest.approx(5.1)
    assert "Image Pixel Size" in s.detail


@pytest.mark.parametrize("value, nm", [("Image Pixel Size = 496.1 pm", 0.4961),
                                       ("Image Pixel Size = 1.25 µm", 1250.0),
                                       ("Image Pixel Size = 3.5 nm", 3.5)])
def test_zeiss_units(tmp_path, value, nm):
    _write_zeiss(tmp_path / "z.tif", {"AP_IMAGE_PIXEL_SIZE": value})
    assert read_instrument_scale(tmp_path / "z.tif").nm_per_pixel == pytest.approx(nm, rel=1e-9)


def test_zeiss_without_image_pixel_size_uses_the_field_width_never_the_monitor_pixel(tmp_path):
    _write_zeiss(tmp_path / "w.tif", {"AP_PIXEL_SIZE": "Pixel Size = 9.9 nm", "AP_WIDTH": "Width = 1.28 µm"})
    assert read_instrument_scale(tmp_path / "w.tif").nm_per_pixel == pytest.approx(1280 / 128)
    _write_zeiss(tmp_path / "m.tif", {"AP_PIXEL_SIZE": "Pixel Size = 9.9 nm"})
    only_monitor = read_instrument_scale(tmp_path / "m.tif")
    assert only_monitor.nm_per_pixel is None and "monitor" in only_monitor.note
    scale = read_scale(tmp_path / "m.tif", read_bar=False)
    assert scale.nm_per_pixel is None and any("monitor" in n for n in scale.notes)


def test_zeiss_16_bit(tmp_path):
    image16 = (np.arange(96 * 128, dtype=np.uint32).reshape(96, 128) * 5).astype(np.uint16)
    _write_zeiss(tmp_path / "z16.tif", {"AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 2.233 nm"}, image=image16)
    assert read_instrument_scale(tmp_path / "z16.tif").nm_per_pixel == pytest.approx(2.233)


def test_fei_pixel_width_in_metres(tmp_path):
    fei = ("[User]\r\nDate=12/04/2026\r\n[Beam]\r\nHV=10000\r\n[EBeam]\r\nHV=10000\r\nWD=0.0051\r\nHFW=3.2e-07\r\n"
           "[Scan]\r\nPixelWidth=2.5e-09\r\nPixelHeight=2.5e-09\r\nHorFieldsize=3.2e-07\r\n")
    tifffile.imwrite(tmp_path / "f.tif", IMAGE, extratags=[(34682, "s", 0, fei, True)])
    s = read_instrument_scale(tmp_path / "f.tif")
    assert s.flavour == "fei" and s.nm_per_pixel == pytest.approx(2.5)
    assert s.eht_kv == pytest.approx(10.0) and s.wd_mm == pytest.approx(5.1) and s.field_width_nm == pytest.approx(320)
    # without PixelWidth, the horizontal field width over the image's 128 pixels
    tifffile.imwrite(tmp_path / "hfw.tif", IMAGE, extratags=[(34682, "s", 0, "[EBeam]\r\nHFW=6.4e-07\r\n", True)])
    assert read_instrument_scale(tmp_path / "hfw.tif").nm_per_pixel == pytest.approx(5.0)


def test_a_tilted_stage_is_reported_with_what_it_does_to_lengths(tmp_path):
    pixel = {"AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 4.961 nm"}
    _write_zeiss(tmp_path / "tilted.tif", {**pixel, "AP_STAGE_AT_T": "Stage at T = 52.0 \xb0",
                                           "DP_TILT_CORRECTION": "Tilt Corrn. = Off"})
    tilted = read_instrument_scale(tmp_path / "tilted.tif")
    assert (tilted.stage_tilt_deg, tilted.tilt_corrected) == (52.0, False)
    scale = read_scale(tmp_path / "tilted.tif", read_bar=False)
    assert (scale.stage_tilt_deg, scale.tilt_corrected) == (52.0, False)  # for the answers' caveat
    [note] = scale.notes
    assert "tilted 52 degrees" in note and "0.62 of their size" in note
    _write_zeiss(tmp_path / "corrected.tif", {**pixel, "AP_STAGE_AT_T": "Stage at T = 52.0 \xb0",
                                              "DP_TILT_CORRECTION": "Tilt Corrn. = On"})
    [note] = read_scale(tmp_path / "corrected.tif", read_bar=False).notes
    assert "tilt correction on" in note and "not for heights" in note
    _write_zeiss(tmp_path / "flat.tif", {**pixel, "AP_STAGE_AT_T": "Stage at T = 0.0 \xb0"})
    assert read_scale(tmp_path / "flat.tif", read_bar=False).notes == ()
    # Thermo Fisher / FEI: the stage's tilt in radians, the correction as yes / no
    fei = ("[EBeam]\r\nHV=5000\r\nTiltCorrectionIsOn=no\r\n[Scan]\r\nPixelWidth=2.5e-09\r\n"
           "[Stage]\r\nStageT=0.907571\r\n")
    tifffile.imwrite(tmp_path / "fei.tif", IMAGE, extratags=[(34682, "s", 0, fei, True)])
    s = read_instrument_scale(tmp_path / "fei.tif")
    assert s.stage_tilt_deg == pytest.approx(52.0, abs=0.01) and s.tilt_corrected is False
    assert "0.62 of their size" in read_scale(tmp_path / "fei.tif", read_bar=False).notes[0]


def test_tescan_ini_tag(tmp_path):
    tescan = "[MAIN]\r\nDevice=VEGA3\r\nHV=15000\r\nMagnification=5000\r\nPixelSizeX=1.2e-08\r\nWD=0.01\r\n"
    tifffile.imwrite(tmp_path / "t.tif", IMAGE, extratags=[(50431, "s", 0, tescan, True)])
    s = read_instrument_scale(tmp_path / "t.tif")
    assert s.flavour == "tescan" and s.nm_per_pixel == pytest.approx(12.0) and s.magnification == 5000


def test_imagej_calibration_with_its_unit(tmp_path):
    tifffile.imwrite(tmp_path / "ij.tif", IMAGE, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})
    s = read_instrument_scale(tmp_path / "ij.tif")
    assert s.flavour == "imagej" and s.nm_per_pixel == pytest.approx(250.0)
    tifffile.imwrite(tmp_path / "px.tif", IMAGE, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "pixel"})
    assert read_instrument_scale(tmp_path / "px.tif") is None


def test_ome_physical_size(tmp_path):
    tifffile.imwrite(tmp_path / "o.ome.tif", IMAGE, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.0035, "PhysicalSizeXUnit": "µm"})
    s = read_instrument_scale(tmp_path / "o.ome.tif")
    assert s.flavour == "ome" and s.nm_per_pixel == pytest.approx(3.5)


def test_resolution_tags_trusted_only_at_micrograph_scale(tmp_path):
    tifffile.imwrite(tmp_path / "cm.tif", IMAGE, resolution=(1e5, 1e5), resolutionunit="CENTIMETER")
    s = read_instrument_scale(tmp_path / "cm.tif")
    assert s.flavour == "tiff-resolution" and s.nm_per_pixel == pytest.approx(100.0)
    # 72 dpi is a print resolution (353 µm per pixel), not a calibration
    tifffile.imwrite(tmp_path / "dpi.tif", IMAGE, resolution=(72, 72), resolutionunit="INCH")
    assert read_instrument_scale(tmp_path / "dpi.tif") is None


def test_hitachi_and_jeol_sidecars(tmp_path):
    tifffile.imwrite(tmp_path / "h.tif", IMAGE)
    (tmp_path / "h.txt").write_text("[SemImageFile]\nMagnification=20000\nAcceleratingVoltage=5000\n"
                                    "PixelSize=4.9609375\nWorkingDistance=8100\n", encoding="latin-1")
    s = read_instrument_scale(tmp_path / "h.tif")
    assert s.flavour == "hitachi" and s.nm_per_pixel == pytest.approx(4.9609375) and s.eht_kv == pytest.approx(5)
    tifffile.imwrite(tmp_path / "j.tif", IMAGE)
    (tmp_path / "j.txt").write_text("$CM_FORMAT JEOL/SEM\n$CM_MAG 10000\n$CM_ACCEL_VOLT 15.00\n"
                                    "$$SM_MICRON_BAR 200\n$$SM_MICRON_MARKER 1um\n", encoding="latin-1")
    s = read_instrument_scale(tmp_path / "j.tif")
    assert s.flavour == "jeol" and s.nm_per_pixel == pytest.approx(5.0) and s.magnification == 10000


def test_plain_files_have_no_instrument_scale(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", IMAGE)
    assert read_instrument_scale(tmp_path / "plain.tif") is None
    (tmp_path / "plain.txt").write_text("sample 12, etched 30 s\nMagnification noted by hand: 5000\n")
    assert read_instrument_scale(tmp_path / "plain.tif") is None  # a sidecar of notes is no Hitachi/JEOL file
    assert read_instrument_scale(tmp_path / "missing.png") is None


def test_priority_and_disagreement(tmp_path):
    _write_zeiss(tmp_path / "z.tif", {"AP_IMAGE_PIXEL_SIZE": "Image Pixel Size = 5.0 nm"})
    s = read_scale(tmp_path / "z.tif", read_bar=False)
    assert (s.source, s.nm_per_pixel) == ("instrument", 5.0) and not s.notes
    s = read_scale(tmp_path / "z.tif", explicit_nm_per_pixel=5.1, read_bar=False)  # 2% apart: no note
    assert (s.source, s.nm_per_pixel) == ("explicit", 5.1) and not s.notes
    s = read_scale(tmp_path / "z.tif", explicit_nm_per_pixel=6.0, read_bar=False)
    assert (s.source, s.nm_per_pixel) == ("explicit", 6.0)
    assert len(s.notes) == 1 and "the instrument's metadata says 5 nm" in s.notes[0] and s.readings == {"explicit": 6.0,
                                                                                          "instrument": 5.0}
    s = read_scale(tmp_path / "z.tif", metadata={"nm_per_pixel": 5.0, "magnification": 1000}, read_bar=False)
    assert s.source == "metadata" and s.magnification == 1000 and s.magnification_source == "metadata"
    with pytest.raises(ValueError):
        read_scale(tmp_path / "z.tif", explicit_nm_per_pixel=0.0)


@pytest.mark.parametrize("text, expected", [
    ("200 nm", (200.0, "nm")), ("1 µm", (1000.0, "µm")), ("2 um", (2000.0, "µm")), ("500nm", (500.0, "nm")),
    ("0.5 μm", (500.0, "µm")), (".2 um", (200.0, "µm")), ("1,5 µm", (1500.0, "µm")), ("10 µ m", (10000.0, "µm")),
    ("1 mm", (1e6, "mm")), ("50x 200 um WD", (200000.0, "µm")), ("200 pm", (0.2, "pm")),
    ("Mag = 25 K X", None), ("200", None), ("nm", None), ("0 nm", None), ("200 nmol", None),
])
def test_parse_length(text, expected):
    assert parse_length(text) == (pytest.approx(expected[0]), expected[1]) if expected else parse_length(text) is None


def test_units_and_magnification():
    assert unit_to_nm("μm") == unit_to_nm("µm") == unit_to_nm("um") == unit_to_nm("micron") == 1000
    assert unit_to_nm("m") == 1e9 and unit_to_nm("furlong") is None
    assert parse_magnification("25.00 K X") == 25000 and parse_magnification("Mag = 500 X") == 500
    assert parse_magnification("x5,000") == 5000 and parse_magnification("1.2 M X") == 1.2e6
