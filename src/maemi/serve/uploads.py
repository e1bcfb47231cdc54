"""Uploaded images: from request bytes (a multipart file or a base64 data: URL) to pixels, with the limits a server
needs. Nothing a client sends is used as a path.

- Size: an upload over the byte limit, or whose header declares more pixels or more decoded memory than the budget
  (budget.py), is refused (413) before decoding; running out of memory while decoding anyway is a 413 too.
- Format: the first bytes must be a PNG, JPEG, BMP or TIFF signature (415 otherwise); the client's file name is only
  quoted in messages, never trusted for the format.
- Decoding: the package's one loader (`maemi.data.images.load_image`), so uploads get exactly the handling files get
  (16-bit stretch, EXIF orientation, grey detection) and its refusals (decompression bombs, truncated data), as 422.
  The loader reads paths only, so the bytes go to a private temporary file that the server names, in RAM
  (/dev/shm) where the system has it, removed as soon as it is read.

References: the data: URL scheme (RFC 2397); OpenAI's vision input ("image_url" parts with base64 data URLs).
"""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maemi.data.images import ImageReadError, load_image
from maemi.serve.budget import budget_bytes, decoded_size
from maemi.serve.errors import RequestError

# The file signatures of the formats the loader reads (Pillow's and tifffile's own checks, done before writing).
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": ".png",
    b"\xff\xd8\xff": ".jpg",
    b"BM": ".bmp",
    b"II*\x00": ".tif", b"MM\x00*": ".tif", b"II+\x00": ".tif", b"MM\x00+": ".tif",  # TIFF and BigTIFF
}
_RAM_DIR = Path("/dev/shm")


class UploadError(RequestError):
    """A request's image that cannot be used; `status` is the HTTP status to answer with."""


@dataclass(frozen=True)
class UploadLimits:
    max_bytes: int  # of the file
    max_megapixels: float  # of the image, and the decoded-memory budget (budget.py)


def upload_name(name: str | None) -> str:
    """How a client's file name is quoted in messages: short and printable (it is never a path to us)."""
    name = (name or "upload").strip() or "upload"
    return repr(name[:80] + ("..." if len(name) > 80 else ""))


def image_suffix(data: bytes, name: str | None) -> str:
    """The loader's suffix for the bytes' format, from their signature; UploadError 415 if none matches."""
    for signature, suffix in _SIGNATURES.items():
        if data.startswith(signature):
            return suffix
    raise UploadError(415, f"upload {upload_name(name)}: not a PNG, JPEG, BMP or TIFF image (its first bytes are "
                           f"{data[:8]!r})")


def check_upload(data: bytes, name: str | None, limits: UploadLimits) -> str:
    """Size, format and decoded-size checks; returns the suffix the bytes will be decoded as."""
    if not data:
        raise UploadError(400, f"upload {upload_name(name)}: empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise UploadError(413, f"upload {upload_name(name)}: {len(data) / 2**20:.1f} MiB is over the server's limit of "
                               f"{limits.max_bytes / 2**20:.1f} MiB (maemi serve --max-upload-mb)")
    suffix = image_suffix(data, name)
    check_decoded_size(data, suffix, name, limits.max_megapixels)
    return suffix


def upload_cost(data: bytes, name: str | None, limits: UploadLimits) -> int:
    """check_upload, then the bytes decoding the upload will hold (0 for a header the loader will refuse at once):
    what the decoding pool reserves for it (decoding.py)."""
    size = decoded_size(data, check_upload(data, name, limits))
    return 0 if size is None else size.held_bytes


def check_decoded_size(data: bytes, suffix: str, name: str | None, max_megapixels: float) -> None:
    """UploadError 413 when the header declares more pixels, or more decoded memory, than the budget allows."""
    size = decoded_size(data, suffix)
    if size is None:
        return  # an unparsable header: the loader refuses it with the reason
    if size.pixels > max_megapixels * 1e6:
        raise UploadError(413, f"upload {upload_name(name)}: {size.width}x{size.height} = {size.pixels / 1e6:.1f} "
                               f"megapixels is over the server's limit of {max_megapixels:g} megapixels (maemi serve "
                               "--max-image-megapixels)")
    budget = budget_bytes(max_megapixels)
    if size.held_bytes > budget:
        raise UploadError(413, f"upload {upload_name(name)}: decoding it would take about {size.held_bytes / 2**30:.1f} "
                               f"GiB of memory ({size.describe()}), over the server's budget of {budget / 2**30:.1f} "
                               f"GiB, what a {max_megapixels:g}-megapixel 8-bit RGB image takes (maemi serve "
                               "--max-image-megapixels)")


@contextmanager
def upload_as_file(data: bytes, name: str | None, limits: UploadLimits) -> Iterator[Path]:
    """The checked bytes in a temporary file named by us (in RAM where possible), removed on exit."""
    suffix = check_upload(data, name, limits)
    folder = _RAM_DIR if _RAM_DIR.is_dir() and os.access(_RAM_DIR, os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix="maemi-upload-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(path)
    except MemoryError:  # the budget counts from the header; the machine may still be short of memory now
        raise UploadError(413, f"upload {upload_name(name)}: not enough free memory on the server to process it now; "
                               "retry later or send a smaller image") from None
    finally:
        Path(path).unlink(missing_ok=True)


def read_upload(path: Path, name: str | None) -> np.ndarray:
    """load_image on an upload's file; its refusals become UploadError 422 naming the upload, not our temp file."""
    try:
        return load_image(path)
    except ImageReadError as e:
        raise UploadError(422, f"upload {upload_name(name)}: {e.reason}") from None


def decode_upload(data: bytes, name: str | None, limits: UploadLimits) -> np.ndarray:
    """float32 pixels in [0, 1], (H, W) or (H, W, 3), as load_image returns them."""
    with upload_as_file(data, name, limits) as path:
        return read_upload(path, name)


def data_url_bytes(url: str, what: str) -> bytes:
    """The bytes of a base64 data: URL. Web URLs and file paths are refused: the server fetches and opens nothing."""
    url = url.strip()
    if url.lower().startswith(("http://", "https://", "ftp://")):
        raise UploadError(400, f"{what}: MAEMI does not fetch images from URLs ({url[:60]!r}); send the image inline "
                               "as a base64 data URL, data:image/png;base64,...")
    if not url.lower().startswith("data:"):
        raise UploadError(400, f"{what}: {url[:60]!r} is not a data URL; file paths and other references are not "
                               "read: send the image inline as data:image/png;base64,...")
    header, comma, payload = url.partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise UploadError(400, f"{what}: expected a base64 data URL, data:<type>;base64,<data>, got {header[:60]!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError(400, f"{what}: the data URL's payload is not valid base64") from None
