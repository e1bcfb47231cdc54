"""Micrograph I/O: the one loader every part of MAEMI uses.

Reads PNG, JPEG, BMP and TIFF (8/16-bit integer and float) into float32 arrays in [0, 1], finds and crops the
instrument info bar at the bottom of SEM images, and turns an image into the model's input tensor.

Decisions (the paper leaves them open):
- Alpha is dropped, not composited: micrographs are opaque; an alpha channel comes from export tools, and the colour
  samples are what the detector measured.
- Grey content comes back as (H, W): a colour file whose channels agree within GREY_TOLERANCE (NEU-SDD JPEGs, grey
  PNGs saved as RGB) is returned as its luminance; true colour comes back as (H, W, 3).
- 8-bit data is divided by 255; 16-bit, 32-bit and float data are stretched by their real range (min..max of the data):
  a 12-bit detector stored in 16 bits would otherwise use 1/16 of [0, 1]. A raw camera frame (16-bit TIFF, DM3/DM4) also
  holds hot and dead pixels and cosmic-ray hits, single pixels far outside the image's range: stretched by its min..max,
  a few dozen hot pixels squeeze the image into a few per cent of [0, 1], which the model then sees as almost uniform
  and the segmentation as another image (tests/test_images.py builds such a frame). So isolated outliers (groups of up
  to 4 pixels far beyond the range of all but the data's 0.5% extremes on either side: _isolated_outliers) are replaced
  by their 3x3 neighbourhood's median before the stretch, as DigitalMicrograph's X-ray removal does; a feature of more
  pixels, however sparse, stays whole, and a frame without such pixels is stretched as it was.

References:
- Pillow: ImageOps.exif_transpose, its decompression-bomb guard, ImageFile.LOAD_TRUNCATED_IMAGES (kept False).
- tifffile (C. Gohlke) for the TIFFs Pillow cannot read: float, multi-sample 16-bit.
- The info bar of Zeiss/FEI SEM images: the SEM dataset of Aversa et al., Scientific Data 5:180172 (2018).
- Srinivas et al. (2024), MAEMI: images resized to 224x224x3 and standardised to [-1, 1].
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dm3", ".dm4"})
GATAN_EXTENSIONS: frozenset[str] = frozenset({".dm3", ".dm4"})  # Gatan DigitalMicrograph, read with RosettaSciIO

# Refuse images whose header declares more pixels than this (decompression bombs). Read at call time, so it can be
# changed at run time; Pillow's own hard stop (2 * PIL.Image.MAX_IMAGE_PIXELS, about 179 MP) still applies above it.
MAX_IMAGE_PIXELS = 100_000_000

# Channels within two 8-bit levels of each other are grey: JPEG's YCbCr round trip moves grey pixels by one level.
GREY_TOLERANCE = 2 / 255

_PIL_FORMATS = ("PNG", "JPEG", "BMP", "TIFF")
_FORMAT_NAMES = {"MPO": "JPEG"}  # Pillow opens camera JPEGs with extra frames as MPO
_MODE_BITS = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}  # every other mode: 8
_SINGLE_CHANNEL_MODES = frozenset({"L", "I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic TIFF and BigTIFF, both byte orders


class ImageReadError(ValueError):
    """A file that cannot be read as an image; str(e) is "<path>: <reason>"."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # pickles across DataLoader workers with both fields
        return type(self), (self.path, self.reason)


@dataclass(frozen=True)
class ImageInfo:
    """What the header says. mode is Pillow's mode; for TIFFs Pillow cannot represent (float or 16-bit colour) it is
    the nearest Pillow name ("F", "I;16", "RGB", "RGBA") and bit_depth carries the real sample size. width and height
    are those of the loaded array, after EXIF orientation."""

    path: str
    format: str  # "PNG" | "JPEG" | "BMP" | "TIFF" | "DM3" | "DM4"
    mode: str
    width: int
    height: int
    bit_depth: int  # bits per sample: 8, 16 or 32 (1 for bilevel)
    channels: int  # samples per pixel after palette expansion, alpha included


# ----------------------------------------------------------------------------------------------------------- reading


def read_image_info(path: str | os.PathLike) -> ImageInfo:
    """Probe the header only (cheap); a truncated body is found by load_image, not here."""
    p = _check_file(path)
    if p.suffix.lower() in GATAN_EXTENSIONS:
        data = _gatan_image(p)
        bits = data.dtype.itemsize * 8
        mode = "F" if data.dtype.kind == "f" else {8: "L", 16: "I;16"}.get(bits, "I")
        return ImageInfo(str(p), p.suffix[1:].upper(), mode, data.shape[1], data.shape[0], bits, 1)
    im = _open_pillow(p)
    if im is None:
        return _tiff_info(p)
    with im:
        width, height = im.size
        _check_pixel_count(p, width, height)
        bit_depth = max(_MODE_BITS.get(im.mode, 8), _tiff_bits(im))
        if im.mode == "P":
            channels = len(im.palette.mode) if im.palette else 3
        else:
            channels = len(im.getbands())
        if _exif_orientation(im) in (5, 6, 7, 8):  # these orientations turn the image by 90 degrees
            width, height = height, width
        return ImageInfo(str(p), _FORMAT_NAMES.get(im.format, im.format), im.mode, width, height, bit_depth, channels)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """float32 in [0, 1]: (H, W) for grey content, (H, W, 3) for colour. Raises ImageReadError for a bad file."""
    p = _check_file(path)
    pixels = None
    im = _open_pillow(p) if p.suffix.lower() not in GATAN_EXTENSIONS else None
    if p.suffix.lower() in GATAN_EXTENSIONS:
        pixels = _decode_gatan(p)
    elif im is not None:
        with im:
            _check_pixel_count(p, *im.size)
            # Pillow opens multi-sample 16-bit TIFFs as 8-bit RGB and keeps only the high byte: tifffile reads those.
            if _tiff_bits(im) <= _MODE_BITS.get(im.mode, 8):
                pixels = _decode_pillow(p, im)
    if pixels is None:
        pixels = _decode_tifffile(p)  # a TIFF that Pillow cannot represent
    image = _to_unit_range(p, pixels)
    if image.ndim == 3 and np.abs(image - image[..., :1]).max() <= GREY_TOLERANCE:
        image = _luminance(image)
    return np.ascontiguousarray(image, dtype=np.float32)


def load_grey(path: str | os.PathLike) -> np.ndarray:
    """float32 (H, W) in [0, 1]: the luminance of the image."""
    image = load_image(path)
    return _luminance(image) if image.ndim == 3 else image


def _check_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    extension = p.suffix.lower()
    if extension not in IMAGE_EXTENSIONS:
        expected = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ImageReadError(p, f"unsupported file extension {extension or '(none)'!r}; expected one of {expected}")
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageReadError(p, "file not found") from None
    except OSError as e:
        raise ImageReadError(p, f"cannot access the file: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ImageReadError(p, "not a regular file (a directory?)")
    if st.st_size == 0:
        raise ImageReadError(p, "empty file (0 bytes)")
    return p


def _check_pixel_count(p: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            p,
            f"image too large: {width}x{height} = {width * height / 1e6:.0f} megapixels exceeds the limit of "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} (maemi.data.images.MAX_IMAGE_PIXELS); refused as a possible "
            "decompression bomb",
        )


def _open_pillow(p: Path) -> Image.Image | None:
    """Open the header with Pillow; None for a TIFF that Pillow does not recognise (tifffile may)."""
    try:
        with warnings.catch_warnings():
            # Our MAX_IMAGE_PIXELS, checked right after, is the rule; Pillow's warning below its hard stop is noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(p, formats=_PIL_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageReadError(p, f"image too large, refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        if _has_tiff_magic(p):
            return None
        raise ImageReadError(p, "not a PNG, JPEG, BMP or TIFF image (content not recognised)") from None
    except MemoryError:
        raise
    except Exception as e:  # Pillow's plugins raise many types on a broken header
        raise ImageReadError(p, f"corrupt image header ({type(e).__name__}: {e})") from None


def _has_tiff_magic(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(4) in _TIFF_MAGIC


def _tiff_bits(im: Image.Image) -> int:
    """Largest BitsPerSample a TIFF declares; 0 for other formats."""
    bits = im.tag_v2.get(258) if im.format == "TIFF" else None
    if bits is None:
        return 0
    return max(bits) if isinstance(bits, tuple) else int(bits)


def _exif_orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:  # a corrupt EXIF block: exif_transpose ignores it too
        return 1


def _decode_pillow(p: Path, im: Image.Image) -> np.ndarray:
    """Raw samples in the file's dtype, (H, W) or (H, W, 3), EXIF orientation applied."""
    file_format = im.format
    try:
        # Full decode now: with ImageFile.LOAD_TRUNCATED_IMAGES False (Pillow's default, which we keep), truncated
        # data raises here instead of coming back grey-filled.
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode == "1":
            im = im.convert("L")
        elif im.mode not in _SINGLE_CHANNEL_MODES:
            im = im.convert("RGB")  # expands palettes, drops alpha (module docstring), converts CMYK/YCbCr
        return np.asarray(im)
    except MemoryError:
        raise
    except Exception as e:
        raise ImageReadError(p, f"corrupt or truncated {file_format} data ({type(e).__name__}: {e})") from None


def _decode_tifffile(p: Path) -> np.ndarray:
    """First page of a TIFF that Pillow cannot read, as (H, W) or (H, W, 3). TIFF orientation tags are not applied:
    the scientific software that writes float or 16-bit colour TIFFs does not set them."""
    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages.first
            _check_pixel_count(p, page.imagewidth, page.imagelength)
            pixels, axes = page.asarray(), page.axes
    except ImageReadError:
        raise
    except MemoryError:
        raise
    except Exception as e:
        raise ImageReadError(p, f"corrupt or unsupported TIFF ({type(e).__name__}: {e})") from None
    if axes == "SYX":  # planar configuration: samples first
        pixels = np.moveaxis(pixels, 0, -1)  # [S, H, W] -> [H, W, S]
    elif axes not in ("YX", "YXS"):
        raise ImageReadError(p, f"unsupported TIFF layout: axes {axes}, shape {pixels.shape}")
    if pixels.ndim == 3:
        # 1 sample: grey; 2: grey + alpha; 3 or more: RGB + alpha or extra samples, all dropped
        pixels = pixels[..., 0] if pixels.shape[2] < 3 else pixels[..., :3]
    return pixels


def _gatan_image(p: Path):
    """The first 2-D image of a DM3/DM4 file as a lazy (dask) array, its size checked; ImageReadError otherwise."""
    try:
        from rsciio.digitalmicrograph import file_reader

        signals = file_reader(str(p), lazy=True)
    except MemoryError:
        raise
    except Exception as e:  # the reader raises many types on a damaged file
        raise ImageReadError(p, f"corrupt or unsupported Gatan DM file ({type(e).__name__}: {e})") from None
    images = [s["data"] for s in signals if s["data"].ndim == 2]
    if not images:
        shapes = ", ".join(str(tuple(s["data"].shape)) for s in signals) or "none"
        raise ImageReadError(p, f"the DM file holds no 2-D image (datasets: {shapes}): spectra and stacks are not "
                                "micrographs")
    _check_pixel_count(p, images[0].shape[1], images[0].shape[0])
    return images[0]


def _decode_gatan(p: Path) -> np.ndarray:
    data = _gatan_image(p)
    try:
        pixels = np.asarray(data.compute())
    except MemoryError:
        raise
    except Exception as e:
        raise ImageReadError(p, f"truncated or corrupt Gatan DM image data ({type(e).__name__}: {e})") from None
    if pixels.dtype.kind == "c":
        pixels = np.abs(pixels)  # a complex (FFT) image: its magnitude
    return pixels


def _tiff_info(p: Path) -> ImageInfo:
    try:
        with tifffile.TiffFile(p) as tif:
            page = tif.pages.first
            width, height = page.imagewidth, page.imagelength
            samples, bits, is_float = page.samplesperpixel, page.bitspersample, page.dtype.kind == "f"
    except Exception as e:
        raise ImageReadError(p, f"corrupt or unsupported TIFF ({type(e).__name__}: {e})") from None
    _check_pixel_count(p, width, height)
    if samples >= 3:
        mode = "RGBA" if samples == 4 else "RGB"
    else:
        mode = "F" if is_float else {8: "L", 16: "I;16"}.get(bits, "I")
    return ImageInfo(str(p), "TIFF", mode, width, height, bits, samples)


def _to_unit_range(p: Path, pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    x = pixels.astype(np.float64)
    finite = np.isfinite(x)
    if not finite.any():
        raise ImageReadError(p, "no finite pixel values (all NaN or infinite)")
    low, high = x[finite].min(), x[finite].max()
    x[~finite] = low  # NaN/inf (masked or failed pixels in float TIFFs) become the darkest value
    if x.ndim == 2 and high > low:
        integer = np.iinfo(pixels.dtype) if pixels.dtype.kind in "iu" else None
        rows, cols, medians = _isolated_outliers(x, (integer.min, integer.max) if integer else None)
        if rows.size:
            x[rows, cols] = medians
            low, high = x.min(), x.max()
    if high == low:
        return np.zeros(x.shape, np.float32)  # a flat image has no range to stretch
    return ((x - low) / (high - low)).astype(np.float32)


OUTLIER_TAIL = 0.005  # the share of pixels on each side that may be outliers: the bulk lies between these quantiles
# an outlier lies beyond the bulk by more than this share of the bulk's range (on Gaussian noise: 5 sigma)
OUTLIER_MARGIN = 0.5
OUTLIER_MAX_PX = 4  # ... in a group of at most this many pixels: a hot pixel or a cosmic-ray hit, not a feature
# ... or, at the integer type's extremes (a dead pixel reads 0, a hot one saturates), beyond it by this share
OUTLIER_EXTREME_MARGIN = 0.1


def _isolated_outliers(x: np.ndarray, extremes: tuple[float, float] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, 3x3 neighbourhood medians) of the pixels beyond the bulk (OUTLIER_TAIL, OUTLIER_MARGIN), or at
    one of the integer type's `extremes` beyond it by OUTLIER_EXTREME_MARGIN, in groups of at most OUTLIER_MAX_PX
    (8-connected): hot, dead and cosmic-ray pixels; a feature of more pixels, however sparse, is kept whole, and the
    noise's own extremes lie within the margin. Such a group leaves its pixels' 3x3 medians in the bulk. Hand-written:
    scipy's median_filter over a 4-megapixel frame takes about half a second, and only these few pixels need one."""
    low, high = np.quantile(x, [OUTLIER_TAIL, 1 - OUTLIER_TAIL])
    margin = OUTLIER_MARGIN * (high - low)
    beyond = (x < low - margin) | (x > high + margin)
    if extremes is not None:
        near = OUTLIER_EXTREME_MARGIN * (high - low)
        beyond |= ((x == extremes[0]) & (x < low - near)) | ((x == extremes[1]) & (x > high + near))
    groups, _ = ndimage.label(beyond, structure=np.ones((3, 3), bool))
    rows, cols = np.nonzero(beyond)
    small = np.bincount(groups.ravel())[groups[rows, cols]] <= OUTLIER_MAX_PX
    rows, cols = rows[small], cols[small]
    padded = np.pad(x, 1, mode="reflect")
    neighbourhood = np.stack([padded[rows + 1 + dy, cols + 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    return rows, cols, np.median(neighbourhood, axis=0)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    from skimage.color import rgb2gray  # imported here: skimage adds ~0.3 s to start-up

    return np.clip(rgb2gray(rgb), 0.0, 1.0).astype(np.float32)  # weights sum to 1 up to rounding


# ---------------------------------------------------------------------------------------------------------- info bar

INFO_BAR_MAX_FRACTION = 0.3  # bars are 5-15% of the height on Zeiss/FEI images; a taller uniform band is content
INFO_BAR_MIN_ROWS = 6  # one line of the smallest legible text
_BAR_BACKGROUND_TOLERANCE = 0.05  # |pixel - bar background| within this: bar background
_BAR_TEXT_CONTRAST = 0.35  # |pixel - bar background| at least this: text or scale bar
_BAR_FLATNESS = 0.01  # median |background pixel - level|: an instrument overlay is flat, micrograph content is noisy
_BAR_MAX_GAP = 2  # rows inside the bar that may be mostly text


def find_info_bar(grey: np.ndarray) -> int | None:
    """First row of the instrument info bar at the bottom of an (H, W) image in [0, 1], or None.

    A bar is a band at the bottom whose rows are mostly one flat background level (dark or light), that holds sparse
    high-contrast text or a scale-bar line, covers the full width and begins with a sharp change from the image above
    (optionally through a 1-3 row separator line).
    """
    if grey.ndim != 2 or not np.issubdtype(grey.dtype, np.floating):
        raise ValueError(f"find_info_bar expects an (H, W) float grey image in [0, 1], got {grey.dtype} {grey.shape}")
    height, width = grey.shape
    max_rows = int(height * INFO_BAR_MAX_FRACTION)
    if width < 16 or max_rows <= INFO_BAR_MIN_ROWS:
        return None
    g = np.asarray(grey, dtype=np.float32)
    # The bar's background is what dominates its bottom rows; a 1-px frame at the very bottom cannot outvote it.
    background = float(np.median(g[height - max(4, height // 50) :]))
    near = np.abs(g - background) <= _BAR_BACKGROUND_TOLERANCE  # [H, W]
    row_near = near.mean(axis=1)  # [H]

    # Walk up from the bottom over rows that are mostly background, stepping over a few text-heavy rows.
    band_top, gap = height, 0
    for row in range(height - 1, height - max_rows - 1, -1):
        if row_near[row] >= 0.5:
            band_top, gap = row, 0
        else:
            gap += 1
            if gap > _BAR_MAX_GAP:
                break
    else:
        return None  # the background band reaches past the largest bar: a dark or bright region of the image
    if height - band_top < INFO_BAR_MIN_ROWS:
        return None

    # A separator line above the band (FEI draws one) belongs to the bar: 1-3 flat rows of one level that stands out
    # from the background and from the image row above it (else it is flat image content).
    top, line_level = band_top, None
    while band_top - top < 3:
        line = g[top - 1]
        level = float(np.median(line))
        flat = (np.abs(line - level) <= 0.05).mean() >= 0.95
        if not flat or abs(level - background) <= _BAR_BACKGROUND_TOLERANCE:
            break
        if line_level is not None and abs(level - line_level) > 0.05:
            break
        top, line_level = top - 1, level
    if line_level is not None and (np.abs(g[top - 1] - line_level) <= 0.05).mean() >= 0.5:
        top = band_top

    band, band_near = g[band_top:], near[band_top:]
    if np.median(np.abs(band[band_near] - background)) > _BAR_FLATNESS:
        return None  # noisy: dark or bright micrograph content, not an overlay
    text_fraction = (np.abs(band - background) >= _BAR_TEXT_CONTRAST).mean()
    if not 0.002 <= text_fraction <= 0.4:
        return None  # no text (a blank region) or too much of it (content)
    if (band_near.mean(axis=0) >= 0.5).mean() < 0.9:
        return None  # does not span the full width
    step = np.median(row_near[band_top : band_top + 3]) - row_near[top - 3 : top].max()
    if step < 0.3:
        return None  # a gradual transition into a dark/bright region, not an overlay's edge
    return top


def crop_info_bar(image: np.ndarray) -> np.ndarray:
    """The image above the info bar (a view), or the image unchanged if no bar is found. (H, W) or (H, W, 3)."""
    top = find_info_bar(_luminance(image) if image.ndim == 3 else image)
    return image if top is None else image[:top]


# ------------------------------------------------------------------------------------------------------- model input


@dataclass
class ImagePreprocessConfig:
    size: int = 224  # the paper's 224x224x3 input
    mean: float = 0.5  # (x - 0.5) / 0.5 maps [0, 1] to [-1, 1], as in the paper
    std: float = 0.5
    crop_info_bar: bool = True

    def __post_init__(self):
        if self.size < 1 or self.std <= 0:
            raise ValueError(f"ImagePreprocessConfig needs size >= 1 and std > 0, got size={self.size}, std={self.std}")


def to_model_input(image: np.ndarray, config: ImagePreprocessConfig | None = None) -> torch.Tensor:
    """float32 [3, size, size], standardised: crop the info bar, resize (bicubic, antialiased), grey -> 3 channels.

    The image is resized to a square without keeping the aspect ratio, as the paper does (1024x768 -> 224x224).
    """
    config = config or ImagePreprocessConfig()
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"to_model_input expects an (H, W) or (H, W, 3) image, got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):  # uint8 pixels would all clip to 1
        raise ValueError(f"to_model_input expects a float image in [0, 1] as load_image returns, got {image.dtype}")
    if config.crop_info_bar:
        image = crop_info_bar(image)
    channels = [image] if image.ndim == 2 else [image[..., c] for c in range(3)]
    # Each channel as a float32 "F" image: Pillow resizes it without rounding to 8 bits, with an antialiasing filter
    # whose support grows with the downscale factor.
    resized = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(c, dtype=np.float32)).resize(
                (config.size, config.size), Image.Resampling.BICUBIC
            )
        )
        for c in channels
    ]
    if len(resized) == 1:
        resized = resized * 3
    x = np.clip(np.stack(resized), 0.0, 1.0)  # [3, size, size]; bicubic overshoots at edges
    return (torch.from_numpy(x) - config.mean) / config.std


def load_model_input(path: str | os.PathLike, config: ImagePreprocessConfig | None = None) -> torch.Tensor:
    """load_image + to_model_input."""
    return to_model_input(load_image(path), config)
