"""Tests for maemi.data.images: every file is written into tmp_path by the test itself."""

from __future__ import annotations

import pickle
import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageDraw, ImageFile, ImageFont
from scipy.ndimage import gaussian_filter

from maemi.data import images
from maemi.data.images import (
    IMAGE_EXTENSIONS,
    ImagePreprocessConfig,
    ImageReadError,
    crop_info_bar,
    find_info_bar,
    load_grey,
    load_image,
    load_model_input,
    read_image_info,
    to_model_input,
)

H, W = 24, 32


def _ramp(dtype=np.uint8, low=0, high=255) -> np.ndarray:
    """(H, W) with distinct values spanning low..high."""
    return np.linspace(low, high, H * W).reshape(H, W).astype(dtype)


def _colour() -> np.ndarray:
    """(H, W, 3) uint8 with channels that differ."""
    r = _ramp()
    return np.stack([r, r[::-1], np.full_like(r, 77)], axis=-1)


# ------------------------------------------------------------------------------------------------ formats and modes


def _source(mode: str) -> tuple[Image.Image, np.ndarray]:
    """A Pillow image in `mode` and the float array load_image must return for it (lossless formats)."""
    if mode == "L":
        a = _ramp()
        return Image.fromarray(a), a / 255
    if mode == "1":
        a = _ramp() > 127
        return Image.fromarray(a).convert("1"), a.astype(np.float64)
    if mode == "RGB":
        a = _colour()
        return Image.fromarray(a), a / 255
    if mode == "RGBA":
        a = _colour()
        alpha = np.linspace(0, 255, H * W).reshape(H, W).astype(np.uint8)  # varied alpha: it must be dropped
        return Image.fromarray(np.dstack([a, alpha])), a / 255
    if mode == "LA":
        a = _ramp()
        return Image.fromarray(np.dstack([a, np.full_like(a, 128)])), a / 255  # LA: grey content, alpha dropped
    if mode == "P":
        indices = (_ramp() // 64).astype(np.uint8)  # 4 palette entries
        palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [250, 250, 10]], np.uint8)
        im = Image.frombytes("P", (W, H), indices.tobytes())
        im.putpalette(palette.flatten().tolist())
        return im, palette[indices] / 255
    if mode in ("I;16", "I;16B"):
        a = _ramp(np.uint16, 1000, 3000)
        im = Image.fromarray(a if mode == "I;16" else a.astype(">u2"))
        assert im.mode == mode
        return im, (a - 1000) / 2000
    if mode == "I":
        a = _ramp(np.int32, -70000, 250000)
        return Image.fromarray(a), (a + 70000) / 320000
    if mode == "F":
        a = _ramp(np.float32, -3.5, 12.25)
        return Image.fromarray(a), (a.astype(np.float64) + 3.5) / 15.75
    raise AssertionError(mode)


LOSSLESS_CASES = [
    ("png", "L", "L", 8, 1),
    ("png", "1", "1", 1, 1),
    ("png", "RGB", "RGB", 8, 3),
    ("png", "RGBA", "RGBA", 8, 4),
    ("png", "LA", "LA", 8, 2),
    ("png", "P", "P", 8, 3),
    ("png", "I;16", "I;16", 16, 1),
    ("bmp", "L", "L", 8, 1),
    ("bmp", "RGB", "RGB", 8, 3),
    ("bmp", "P", "P", 8, 3),
    ("tif", "L", "L", 8, 1),
    ("tif", "RGB", "RGB", 8, 3),
    ("tiff", "RGBA", "RGBA", 8, 4),
    ("tif", "P", "P", 8, 3),
    ("tif", "I;16", "I;16", 16, 1),
    ("tif", "I;16B", "I;16B", 16, 1),
    ("tif", "I", "I", 32, 1),
    ("tif", "F", "F", 32, 1),
]


@pytest.mark.parametrize("ext, mode, info_mode, bit_depth, channels", LOSSLESS_CASES)
def test_lossless_round_trip(tmp_path, ext, mode, info_mode, bit_depth, channels):
    im, expected = _source(mode)
    path = tmp_path / f"image_{mode.replace(';', '_')}.{ext}"
    im.save(path)

    info = read_image_info(path)
    assert info.format == {"png": "PNG", "bmp": "BMP", "tif": "TIFF", "tiff": "TIFF"}[ext]
    assert (info.mode, info.width, info.height, info.bit_depth, info.channels) == (info_mode, W, H, bit_depth, channels)
    assert info.path == str(path)

    x = load_image(path)
    assert x.dtype == np.float32
    assert x.shape == expected.shape  # (H, W) for grey content, (H, W, 3) for colour
    assert x.min() >= 0.0 and x.max() <= 1.0
    np.testing.assert_allclose(x, expected, atol=1e-6)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_round_trip(tmp_path, mode):
    im, expected = _source(mode)
    path = tmp_path / "image.jpeg"
    im.save(path, quality=95)
    info = read_image_info(path)
    assert (info.format, info.mode, info.bit_depth, info.channels) == ("JPEG", mode, 8, len(mode))
    x = load_image(path)
    assert x.dtype == np.float32 and x.shape == expected.shape
    assert np.abs(x - expected).mean() < 0.03  # lossy


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_grey_content_stored_as_rgb_comes_back_grey(tmp_path, ext):
    grey = _ramp()
    path = tmp_path / f"grey_as_rgb.{ext}"
    Image.fromarray(np.dstack([grey] * 3)).save(path)  # as NEU-SDD JPEGs are stored
    assert read_image_info(path).mode == "RGB"
    x = load_image(path)
    assert x.shape == (H, W)
    assert np.abs(x - grey / 255).max() < (1e-6 if ext == "png" else 0.05)


def test_sixteen_bit_uses_real_range_not_65535(tmp_path):
    a = _ramp(np.uint16, 1000, 3000)
    path = tmp_path / "detector.png"
    Image.fromarray(a).save(path)
    x = load_image(path)
    assert x.min() == 0.0 and x.max() == 1.0  # not 1000/65535 .. 3000/65535
    np.testing.assert_allclose(x, (a - 1000) / 2000, atol=1e-6)


def test_hot_dead_and_cosmic_ray_pixels_do_not_set_the_range_but_a_small_feature_stays(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400]
    clean = (2000 + 1500 * np.sin(xx / 23.0) * np.cos(yy / 17.0) + rng.normal(0, 30, (300, 400))).astype(np.uint16)
    raw = clean.copy()
    rows, cols = rng.integers(5, 295, 40), rng.integers(5, 395, 40)
    raw[rows[:20], cols[:20]] = 65535  # hot pixels
    raw[rows[20:], cols[20:]] = 0  # dead ones
    raw[150:152, 200] = 60000  # a cosmic-ray hit across two pixels
    tifffile.imwrite(tmp_path / "clean.tif", clean)
    tifffile.imwrite(tmp_path / "raw.tif", raw)
    x, expected = load_image(tmp_path / "raw.tif"), load_image(tmp_path / "clean.tif")
    untouched = raw == clean
    np.testing.assert_allclose(x[untouched], expected[untouched], atol=1e-6)  # stretched as the clean frame is
    assert np.abs(x - expected).max() < 0.1  # the bad pixels now hold their neighbourhood's level
    # a feature of 6 x 6 pixels far above an otherwise flat frame is a feature, not an outlier, however sparse
    sparse = (1000 + rng.normal(0, 20, (400, 400))).astype(np.uint16)
    sparse[200:206, 200:206] = 3000
    sparse[10, 10] = 65535
    tifffile.imwrite(tmp_path / "sparse.tif", sparse)
    y = load_image(tmp_path / "sparse.tif")
    assert (y[200:206, 200:206] == 1.0).all() and y[10, 10] < 0.2


def test_float_tiff_with_nan_and_any_range(tmp_path):
    a = _ramp(np.float32, 250.0, 4250.0)
    a[0, 0] = np.nan  # a masked pixel
    path = tmp_path / "float.tif"
    tifffile.imwrite(path, a)
    x = load_image(path)
    assert x.dtype == np.float32 and x.shape == (H, W)
    assert x[0, 0] == 0.0 and x.max() == 1.0 and np.isfinite(x).all()
    np.testing.assert_allclose(x[1:], (a[1:] - np.nanmin(a)) / (np.nanmax(a) - np.nanmin(a)), atol=1e-6)


def test_colour_tiffs_pillow_cannot_read(tmp_path):
    """16-bit RGB (Pillow keeps only the high byte) and float RGB (Pillow refuses) go through tifffile."""
    rgb16 = np.stack([_ramp(np.uint16, 1000, 3000), _ramp(np.uint16, 3000, 1000), _ramp(np.uint16, 1500, 1500)], -1)
    path16 = tmp_path / "rgb16.tif"
    tifffile.imwrite(path16, rgb16, photometric="rgb")
    info = read_image_info(path16)
    assert (info.mode, info.bit_depth, info.channels) == ("RGB", 16, 3)
    np.testing.assert_allclose(load_image(path16), (rgb16 - 1000) / 2000, atol=1e-6)

    rgbf = rgb16.astype(np.float32) / 7
    pathf = tmp_path / "rgbf.tiff"
    tifffile.imwrite(pathf, np.moveaxis(rgbf, -1, 0), photometric="rgb", planarconfig="separate")  # [3, H, W]
    info = read_image_info(pathf)
    assert (info.format, info.mode, info.width, info.height, info.bit_depth) == ("TIFF", "RGB", W, H, 32)
    np.testing.assert_allclose(load_image(pathf), (rgb16 - 1000) / 2000, atol=1e-6)


def test_exif_orientation_is_honoured(tmp_path):
    a = np.zeros((40, 64), np.uint8)  # landscape, bright left half
    a[:, :32] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(a).save(path, exif=exif, quality=95)

    info = read_image_info(path)
    assert (info.width, info.height) == (40, 64)
    x = load_image(path)
    assert x.shape == (64, 40)
    expected = np.rot90(a, k=-1) / 255  # clockwise: the bright left half becomes the top
    assert np.abs(x - expected).mean() < 0.02
    assert x[:30].mean() > 0.95 and x[34:].mean() < 0.05


def test_load_grey_gives_luminance(tmp_path):
    path = tmp_path / "red.png"
    Image.new("RGB", (W, H), (255, 0, 0)).save(path)
    assert load_image(path).shape == (H, W, 3)
    g = load_grey(path)
    assert g.shape == (H, W) and g.dtype == np.float32
    assert 0.15 < g.mean() < 0.35  # red is dark in luminance (0.2125 in BT.709, 0.299 in BT.601)


def test_image_extensions():
    assert IMAGE_EXTENSIONS == frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dm3", ".dm4"})


# -------------------------------------------------------------------------------------------------------- bad input


def _png_declaring_size(path, width, height):
    """A real PNG whose header is rewritten to declare width x height (a decompression bomb's header)."""
    Image.new("L", (8, 8)).save(path)
    data = bytearray(path.read_bytes())
    data[16:24] = struct.pack(">II", width, height)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR CRC over type + data
    path.write_bytes(bytes(data))


def _empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    return path


def _truncated_jpeg(tmp_path):
    path = tmp_path / "truncated.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _text_as_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    return path


def _bomb(tmp_path):
    path = tmp_path / "bomb.png"
    _png_declaring_size(path, 20000, 20000)  # 400 MP: Pillow's own hard stop
    return path


def _over_our_limit(tmp_path):
    path = tmp_path / "huge.png"
    _png_declaring_size(path, 11000, 10000)  # 110 MP: over MAX_IMAGE_PIXELS, under Pillow's hard stop
    return path


def _corrupt_tiff(tmp_path):
    path = tmp_path / "corrupt.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 60)
    return path


def _truncated_tiff(tmp_path):
    path = tmp_path / "truncated.tif"
    Image.fromarray(_ramp(np.uint16, 0, 60000)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _unknown_extension(tmp_path):
    path = tmp_path / "image.gif"
    Image.new("L", (8, 8)).save(path, format="GIF")
    return path


def _missing(tmp_path):
    return tmp_path / "missing.png"


def _directory(tmp_path):
    path = tmp_path / "folder.png"
    path.mkdir()
    return path


BAD_INPUTS = [
    (_empty, "empty file (0 bytes)"),
    (_truncated_jpeg, "truncated"),
    (_text_as_png, "not a PNG, JPEG, BMP or TIFF image"),
    (_bomb, "decompression bomb"),
    (_over_our_limit, "11000x10000"),
    (_corrupt_tiff, "corrupt or unsupported TIFF"),
    (_truncated_tiff, "truncated"),
    (_unknown_extension, "unsupported file extension '.gif'"),
    (_missing, "file not found"),
    (_directory, "not a regular file"),
]


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # Pillow, on the corrupt TIFF
@pytest.mark.parametrize("make, cause", BAD_INPUTS, ids=[m.__name__.strip("_") for m, _ in BAD_INPUTS])
def test_bad_input_raises_clear_error(tmp_path, make, cause):
    path = make(tmp_path)
    with pytest.raises(ImageReadError) as caught:
        load_image(path)
    e = caught.value
    assert isinstance(e, ValueError)
    assert e.path == str(path) and cause in e.reason
    assert str(e) == f"{path}: {e.reason}"
    with pytest.raises(ImageReadError):
        load_model_input(path)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize(
    "make", [_empty, _text_as_png, _bomb, _over_our_limit, _corrupt_tiff, _unknown_extension, _missing]
)
def test_header_probe_refuses_bad_headers(tmp_path, make):
    path = make(tmp_path)
    with pytest.raises(ImageReadError, match=str(path).replace("\\", "\\\\")):
        read_image_info(path)


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = tmp_path / "small.png"
    Image.new("L", (20, 20)).save(path)
    assert load_image(path).shape == (20, 20)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 399)
    with pytest.raises(ImageReadError, match="20x20"):
        load_image(path)


def test_truncated_images_stay_refused_by_pillow():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_error_pickles_with_its_fields():
    e = pickle.loads(pickle.dumps(ImageReadError("/data/a.png", "empty file (0 bytes)")))
    assert (e.path, e.reason, str(e)) == ("/data/a.png", "empty file (0 bytes)", "/data/a.png: empty file (0 bytes)")


# --------------------------------------------------------------------------------------------------------- info bar


def _micrograph(height: int, width: int, seed: int = 0, low: float = 0.2, high: float = 0.9) -> np.ndarray:
    """uint8 SEM-like content: smooth structures plus shot noise, values in low..high."""
    rng = np.random.default_rng(seed)
    structure = gaussian_filter(rng.random((height, width)), sigma=4)
    structure = (structure - structure.min()) / (structure.max() - structure.min())
    x = low + (high - low) * structure + rng.normal(0, 0.03, (height, width))
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _draw_info_bar(content: np.ndarray, rows: int, background: int = 0, ink: int = 255, separator: bool = False):
    """Draw a Zeiss-style bar over the bottom `rows` rows: flat background, text, a scale bar and its length."""
    im = Image.fromarray(content)
    draw = ImageDraw.Draw(im)
    height, width = content.shape
    top = height - rows
    draw.rectangle([0, top, width - 1, height - 1], fill=background)
    if separator:
        draw.line([0, top, width - 1, top], fill=ink)
    font = ImageFont.load_default(size=max(8, rows // 4))
    draw.text((width // 40, top + rows // 5), "EHT = 5.00 kV   WD = 8.5 mm", fill=ink, font=font)
    draw.text((width // 40, top + rows // 2), "Mag = 11.00 K X", fill=ink, font=font)
    x0 = int(width * 0.6)
    draw.text((x0, top + rows // 5), "200 nm", fill=ink, font=font)
    draw.rectangle([x0, top + rows // 2, x0 + width // 6, top + rows // 2 + max(1, rows // 12)], fill=ink)
    return np.asarray(im)


@pytest.mark.parametrize("fraction", [0.05, 0.08, 0.12, 0.15])
@pytest.mark.parametrize("height, width", [(240, 320), (768, 1024)])
def test_info_bar_found_at_its_first_row(height, width, fraction):
    rows = int(height * fraction)
    image = _draw_info_bar(_micrograph(height, width), rows) / 255
    assert find_info_bar(image) == height - rows
    assert crop_info_bar(image).shape == (height - rows, width)


@pytest.mark.parametrize(
    "name, background, ink, separator",
    [("light bar, dark text", 235, 10, False), ("separator line", 0, 255, True), ("grey bar", 60, 255, False)],
)
def test_info_bar_variants(name, background, ink, separator):
    image = _draw_info_bar(_micrograph(240, 320, seed=1), 30, background, ink, separator) / 255
    assert find_info_bar(image) == 210, name


def test_info_bar_above_dark_content_and_in_a_jpeg(tmp_path):
    content = _micrograph(240, 320, seed=2, low=0.05, high=0.6)  # dark areas touch the bar
    path = tmp_path / "sem.jpg"
    Image.fromarray(_draw_info_bar(content, 24)).save(path, quality=85)
    grey = load_image(path)
    assert grey.ndim == 2
    assert find_info_bar(grey) in (215, 216, 217)  # JPEG blurs the edge by a row at most
    colour = np.dstack([grey] * 3)
    assert crop_info_bar(colour).shape[0] == find_info_bar(grey) and crop_info_bar(colour).shape[2] == 3


def _dark_bottom_with_particles():
    image = _micrograph(240, 320, seed=3) / 255
    rng = np.random.default_rng(3)
    bottom = np.clip(0.04 + rng.normal(0, 0.03, (36, 320)), 0, 1)  # noisy dark substrate, sharp horizontal edge
    for _ in range(12):  # bright particles that could pass for text
        r, c = rng.integers(2, 32), rng.integers(2, 316)
        bottom[r - 2 : r + 2, c - 2 : c + 2] = 0.95
    image[-36:] = bottom
    return image


def _bright_bottom():
    image = _micrograph(240, 320, seed=4) / 255
    image[-30:] = np.clip(0.97 + np.random.default_rng(4).normal(0, 0.02, (30, 320)), 0, 1)  # charging glare
    image[-20:-17, 40:60] = 0.1  # a dark speck
    return image


def _flat_black_bottom_no_text():
    image = _micrograph(240, 320, seed=5) / 255
    image[-30:] = 0.0
    return image


def _gradual_shadow():
    image = _micrograph(240, 320, seed=6) / 255
    fade = np.clip(np.linspace(1.5, -0.5, 240), 0, 1)[:, None]  # darkens smoothly to black towards the bottom
    return image * fade


def _clipped_dark_pore():
    """Content that clips to exact black at the bottom (flat, like a bar) under an irregular edge, with specks."""
    image = _micrograph(240, 320, seed=10) / 255
    image = np.clip(image - np.clip(np.linspace(-2.4, 0.8, 240), 0, None)[:, None], 0, 1)
    image[-20:-17, 100:104] = image[-12:-10, 250:256] = 0.9
    return image


def _partial_width_label():
    """A black caption box over the left 70% of the bottom, image content beside it."""
    image = _draw_info_bar(_micrograph(240, 320, seed=11), 30) / 255
    image[-30:, 224:] = _micrograph(30, 96, seed=12) / 255
    return image


def _black_lower_half_with_caption():
    """A panel taller than any info bar: content, not an instrument overlay."""
    return _draw_info_bar(_micrograph(240, 320, seed=13), 120) / 255


def _neu_texture():
    rng = np.random.default_rng(7)
    return np.clip(0.5 + gaussian_filter(rng.normal(0, 0.3, (200, 200)), sigma=(1, 6)), 0, 1)


NO_BAR = {
    "random noise": lambda: np.random.default_rng(8).random((240, 320)),
    "NEU-like texture": _neu_texture,
    "micrograph": lambda: _micrograph(768, 1024, seed=9) / 255,
    "dark bottom with particles": _dark_bottom_with_particles,
    "bright bottom": _bright_bottom,
    "flat black bottom, no text": _flat_black_bottom_no_text,
    "gradual shadow": _gradual_shadow,
    "clipped dark pore with specks": _clipped_dark_pore,
    "label box over part of the width": _partial_width_label,
    "black lower half with caption": _black_lower_half_with_caption,
    "all black": lambda: np.zeros((240, 320)),
    "all white": lambda: np.ones((240, 320)),
    "tiny": lambda: np.zeros((8, 8)),
}


@pytest.mark.parametrize("name", list(NO_BAR))
def test_no_info_bar_false_positive(name):
    image = NO_BAR[name]().astype(np.float32)
    assert find_info_bar(image) is None
    assert crop_info_bar(image) is image


def test_find_info_bar_wants_grey():
    with pytest.raises(ValueError, match="grey"):
        find_info_bar(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match="uint8"):
        find_info_bar(np.zeros((10, 10), np.uint8))


# ------------------------------------------------------------------------------------------------------ model input


def test_to_model_input_grey():
    image = np.zeros((300, 400), np.float32)
    image[:, 200:] = 1.0
    x = to_model_input(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0  # [0, 1] -> [-1, 1]
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert x[:, :, :100].max() == -1.0 and x[:, :, 124:].min() == 1.0


def test_to_model_input_colour_size_and_standardisation():
    image = np.zeros((50, 60, 3), np.float32)
    image[..., 0] = 1.0  # pure red
    x = to_model_input(image, ImagePreprocessConfig(size=32, mean=0.25, std=0.25))
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[0], torch.full((32, 32), 3.0))  # (1 - 0.25) / 0.25
    torch.testing.assert_close(x[1], torch.full((32, 32), -1.0))


def test_to_model_input_crops_the_bar():
    content = np.full((240, 320), 153, np.uint8)  # 0.6 grey
    content[::7] = 140  # a little structure so the content is not flat
    image = _draw_info_bar(content, 30) / 255
    assert find_info_bar(image) == 210
    cropped = to_model_input(image, ImagePreprocessConfig(size=64))
    assert cropped.min() > 0.0  # no black bar pixels left: content is 0.55..0.6 -> 0.1..0.2
    kept = to_model_input(image, ImagePreprocessConfig(size=64, crop_info_bar=False))
    assert kept[:, -3:].mean() < -0.5  # the bar's black rows


def test_to_model_input_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        to_model_input(np.zeros((10, 10, 4), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="size"):
        ImagePreprocessConfig(size=0)


def test_load_model_input_from_a_16_bit_tiff(tmp_path):
    path = tmp_path / "detector.tif"
    Image.fromarray(_ramp(np.uint16, 1000, 3000)).save(path)
    x = load_model_input(path, ImagePreprocessConfig(size=16))
    assert x.shape == (3, 16, 16)
    torch.testing.assert_close(x, to_model_input(load_image(path), ImagePreprocessConfig(size=16)))
    assert -1.0 <= x.min() < -0.9 and 0.9 < x.max() <= 1.0  # the real range spans [-1, 1]
