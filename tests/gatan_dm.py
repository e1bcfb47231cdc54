"""Gatan DigitalMicrograph files written byte by byte for the tests (no package ships one to test with).

The layout is the one RosettaSciIO's reader parses (rsciio/digitalmicrograph/_api.py): a big-endian header (version,
size, byte order), then nested tag groups; each data tag is "%%%%", an info array naming its type, and the data in the
file's byte order (little endian here). DM4 widens the sizes to 64 bits and gives every tag its byte size; DM3 does
not. An image is ImageList/<group>/ImageData with Data, DataType, Dimensions and Calibrations.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_DATA_TYPE = {np.dtype("int16"): (1, 2), np.dtype("float32"): (2, 6), np.dtype("uint8"): (6, 10),
              np.dtype("uint16"): (10, 4)}  # numpy dtype -> (DM image DataType, tag element type)


class _Writer:
    def __init__(self, version: int) -> None:
        self.version = version
        self.size = ">Q" if version == 4 else ">l"  # header and info-array integers

    def _sized(self, head: bytes, body: bytes) -> bytes:
        return head + (struct.pack(">Q", len(body)) if self.version == 4 else b"") + body

    def data(self, name: str, info: list[int], payload: bytes) -> bytes:
        head = bytes([21]) + struct.pack(">h", len(name)) + name.encode()
        body = b"%%%%" + struct.pack(self.size, len(info)) + b"".join(struct.pack(self.size, i) for i in info)
        return self._sized(head, body + payload)

    def group(self, name: str, tags: list[bytes]) -> bytes:
        head = bytes([20]) + struct.pack(">h", len(name)) + name.encode()
        return self._sized(head, bytes([0, 1]) + struct.pack(self.size, len(tags)) + b"".join(tags))

    def f32(self, name: str, value: float) -> bytes:
        return self.data(name, [6], struct.pack("<f", value))

    def u32(self, name: str, value: int) -> bytes:
        return self.data(name, [5], struct.pack("<L", value))

    def text(self, name: str, value: str) -> bytes:  # DM strings: arrays of 16-bit characters
        return self.data(name, [20, 4, len(value)], b"".join(struct.pack("<H", ord(c)) for c in value))


def write_dm(path: Path, image: np.ndarray, scale: float, units: str, version: int = 4) -> None:
    """A DM3 or DM4 file holding one 2-D image with `scale` `units` per pixel on both axes."""
    w = _Writer(version)
    height, width = image.shape
    data_type, element = _DATA_TYPE[image.dtype]
    pixels = image.astype(image.dtype.newbyteorder("<")).tobytes()
    dimension = [w.group("", [w.f32("Origin", 0.0), w.f32("Scale", scale), w.text("Units", units)]) for _ in range(2)]
    calibrations = w.group("Calibrations", [
        w.group("Brightness", [w.f32("Origin", 0.0), w.f32("Scale", 1.0), w.text("Units", "")]),
        w.group("Dimension", dimension)])
    image_data = w.group("ImageData", [
        calibrations, w.data("Data", [20, element, height * width], pixels), w.u32("DataType", data_type),
        w.group("Dimensions", [w.u32("", width), w.u32("", height)]), w.u32("PixelDepth", image.dtype.itemsize)])
    tags = w.group("ImageTags", [w.group("Microscope Info", [w.f32("Voltage", 200e3)])])
    root = bytes([0, 1]) + struct.pack(w.size, 1) + w.group("ImageList", [w.group("", [image_data, tags])])
    header = struct.pack(">l", version) + struct.pack(w.size, len(root)) + struct.pack(">l", 1)  # 1: little endian
    Path(path).write_bytes(header + root + bytes(8))
