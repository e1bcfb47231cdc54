"""The decoded-size budget: what decoding an upload will hold in memory, read from its header before any pixel is
decoded, and refused (413) when over the server's budget.

A file's size says little: a 290 KB PNG can hold 100 megapixels, and a 50 KB TIFF can declare 10000 samples per
pixel. So the count is the decoder's: width x height x samples per pixel x bytes per sample (the first page or frame,
the only one the loader decodes; a tile per decoding thread for tiled TIFFs), held a few times over (decoded, converted,
as an array), plus the float copies the pipeline makes of the channels it keeps, plus what measuring the grey image
takes: the memory of the costliest path, /v1/measure (constants below).

The budget is `maemi serve --max-image-megapixels N`: an image over N megapixels is refused, and so is one whose
decoding would hold more than an N-megapixel 8-bit RGB image does (many samples per pixel, 16/32-bit colour).

Headers are read with Pillow (opening reads the header only; pixels are decoded on `load`) and tifffile
(`TiffFile` parses the IFDs; pixels are read on `asarray`), the libraries the loader decodes with.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import tifffile
from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin

# Peak bytes per pixel = RAW_COPIES x the decoder's bytes + FLOAT32_COPIES x 4 x kept channels (+ STRETCH_BYTES per
# kept channel for non-8-bit data) + MEASURE_BYTES (segmentation and measurement of the grey image). Fitted from above
# to the peak RSS of the worst serving path, /v1/measure, on 6 MP images (VmHWM; 8-bit grey 97 B/px, 8-bit RGB 114,
# 16-bit grey 102, 16-bit RGB 114, float32 grey 97); model input alone takes 12-69 B/px, a preview 20-84.
RAW_COPIES = 3  # decoded, converted (palette, orientation), as a numpy array
FLOAT32_COPIES = 2  # unit range, the grey check
STRETCH_BYTES = 8  # the float64 range stretch of 16/32-bit data (images._to_unit_range)
MEASURE_BYTES = 88

# Pillow's bytes per pixel in memory by mode (multi-band modes are stored 4 bytes a pixel); every other mode: 4.
_PILLOW_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
_PILLOW_CLASSES = {".png": PngImagePlugin.PngImageFile, ".jpg": JpegImagePlugin.JpegImageFile,
                   ".bmp": BmpImagePlugin.BmpImageFile}
DECODED_FORMATS = frozenset({*_PILLOW_CLASSES, ".tif"})  # the suffixes decoded_size reads
_PILLOW_ONE_CHANNEL = frozenset({"1", "L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"})


@dataclass(frozen=True)
class DecodedSize:
    """What decoding an image holds, from its header."""

    width: int
    height: int
    samples: int  # per pixel, as decoded (TIFF: as stored; Pillow: its mode's bands)
    sample_bytes: int
    raw_bytes_per_pixel: int  # the decoder's array: samples x sample_bytes (Pillow: 4 for every multi-band mode)
    kept_channels: int  # of the float image the pipeline works on: 1 (grey) or 3 (colour)
    stretched: bool  # not 8-bit: stretched to [0, 1] through float64
    extra_bytes: int = 0  # not per pixel: decoding buffers (TIFF tiles)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def held_bytes(self) -> int:
        per_pixel = RAW_COPIES * self.raw_bytes_per_pixel + self.kept_channels * (
            4 * FLOAT32_COPIES + (STRETCH_BYTES if self.stretched else 0)) + MEASURE_BYTES
        return self.pixels * per_pixel + self.extra_bytes

    def describe(self) -> str:
        return f"{self.width}x{self.height} pixels x {self.samples} sample(s) of {8 * self.sample_bytes} bits"


def budget_bytes(max_megapixels: float) -> int:
    """The memory one decode may hold: that of a `max_megapixels` 8-bit RGB image (module docstring)."""
    reference = DecodedSize(1, 1, 3, 1, 4, 3, False)  # Pillow holds RGB as 4 bytes a pixel
    return int(max_megapixels * 1e6 * reference.held_bytes)


def decoded_size(data: bytes | Path, suffix: str) -> DecodedSize | None:
    """From the header of the bytes or the file (suffix: the format, .png .jpg .bmp or .tif); None when the header
    cannot be parsed (the loader then refuses the file with its own reason)."""
    try:
        with io.BytesIO(data) if isinstance(data, bytes) else open(data, "rb") as f:
            return _tiff_size(f) if suffix == ".tif" else _pillow_size(f, suffix)
    except MemoryError:
        raise
    except Exception:  # a broken header: the loader's message is the better one
        return None


def file_suffix(path: Path) -> str:
    """The format suffix decoded_size takes, from a file's extension; '' for one it does not read (Gatan DM)."""
    return {".jpeg": ".jpg", ".tiff": ".tif"}.get(path.suffix.lower(), path.suffix.lower())


def _pillow_size(f: BinaryIO, suffix: str) -> DecodedSize:
    # The format's own class parses the header without Image.open's decompression-bomb check, which would hide the
    # size we want to report (and changing Image.MAX_IMAGE_PIXELS would disarm it for the threads decoding now).
    with _PILLOW_CLASSES[suffix](f) as im:
        width, height, mode, bands = *im.size, im.mode, len(im.getbands())
    one_channel = mode in _PILLOW_ONE_CHANNEL
    sample_bytes = _PILLOW_PIXEL_BYTES[mode] if one_channel else 1
    return DecodedSize(width, height, bands, sample_bytes, _PILLOW_PIXEL_BYTES.get(mode, 4), 1 if one_channel else 3,
                       stretched=sample_bytes > 1)


def _tiff_size(f: BinaryIO) -> DecodedSize:
    with tifffile.TiffFile(f) as tif:
        page = tif.pages.first
        width, height, depth = page.imagewidth, page.imagelength, max(1, page.imagedepth)
        samples = max(1, page.samplesperpixel)
        sample_bytes = page.dtype.itemsize if page.dtype is not None else max(1, -(-page.bitspersample // 8))
        tile = page.tilewidth * page.tilelength * max(1, page.tiledepth) if page.is_tiled else 0
    # tifffile decodes tiles in parallel, one buffer per worker (up to half the cores)
    workers = max(1, (os.cpu_count() or 2) // 2)
    return DecodedSize(width, height * depth, samples, sample_bytes, samples * sample_bytes, 1 if samples < 3 else 3,
                       stretched=sample_bytes > 1, extra_bytes=tile * samples * sample_bytes * workers)
