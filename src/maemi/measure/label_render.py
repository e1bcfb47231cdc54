"""Synthetic renderer for scale-bar text labels ("100 nm", "2 µm", "0.5 um" ...).

Used to train :mod:`maemi.measure.label_reader` without any real data. The
renderer imitates how such labels look after being burnt into a micrograph,
saved, maybe resampled and JPEG-compressed, and then cropped out:

* fonts: the TTF fonts matplotlib ships (DejaVu Sans/Serif, STIX ~ Times,
  Computer Modern) plus Pillow's built-in scalable font (Aileron, ~Helvetica);
  regular and bold, with extra stroke width for heavy labels;
* text: values from the 1-2-5 series and its usual neighbours, units nm / µm
  (U+00B5, U+03BC or plain "u") / mm / pm, with the spacings seen in practice;
* appearance: either polarity, flat or micrograph-like textured backgrounds,
  label boxes, outlines, the bar itself and cut-off text fragments nearby,
  slight rotation/shear/aspect changes, low resolution, blur, noise, JPEG.

Text is drawn large as a coverage mask and then downscaled, so that thin
strokes turn into the grey, anti-aliased strokes of real low-resolution crops.
"""

from __future__ import annotations

import io
import os
from functools import lru_cache

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIR = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "fonts", "ttf")

# (file name or "default", sampling weight). Sans faces dominate because most
# microscope software labels in Arial/Helvetica; Times-like serif is next.
TRAIN_FONTS: tuple[tuple[str, float], ...] = (
    ("default", 3.0),  # Pillow's Aileron: Helvetica-like proportions
    ("DejaVuSans.ttf", 2.0),
    ("DejaVuSans-Bold.ttf", 2.0),
    ("DejaVuSans-Oblique.ttf", 0.3),
    ("cmss10.ttf", 1.0),
    ("STIXGeneral.ttf", 2.0),
    ("STIXGeneralBol.ttf", 1.0),
    ("STIXGeneralItalic.ttf", 0.2),
    ("DejaVuSerif.ttf", 1.0),
    ("DejaVuSerif-Bold.ttf", 0.5),
    ("cmr10.ttf", 0.7),
    ("cmb10.ttf", 0.3),
    ("DejaVuSansMono.ttf", 1.0),  # slashed/dotted zero: must not read as '9' or '6'
    ("DejaVuSansMono-Bold.ttf", 0.3),
    # Debian's fonts-liberation: metric clones of Arial and Times New Roman, the faces of most instrument software
    # and of the figures labels are cropped from (bold Times was the commonest misreading of the first reader)
    ("LiberationSans-Regular.ttf", 2.0),
    ("LiberationSans-Bold.ttf", 2.0),
    ("LiberationSansNarrow-Regular.ttf", 0.3),
    ("LiberationSerif-Regular.ttf", 2.0),
    ("LiberationSerif-Bold.ttf", 2.0),
)
SYSTEM_FONT_DIRS = ("/usr/share/fonts/truetype/liberation", "/usr/share/fonts/truetype/liberation2")
# Never used in training: kept for testing generalisation to an unseen face.
HELD_OUT_FONT = "DejaVuSans-BoldOblique.ttf"

MICRO_CHARS = ("\u00b5", "\u03bc", "u")  # micro sign, Greek mu, ASCII stand-in
# Fonts and look of the instrument info bars (white text on a flat near-black
# band, drawn directly at 15-22 px, no resampling), which get their own renders.
INFO_BAR_FONTS = ("default", "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf",
                  "DejaVuSansMono.ttf", "STIXGeneral.ttf")
INFO_BAR_PROB = 0.25
FRAGMENTS = ("WD", "kV", "x", "HV", "Mag", "SE", "HFW", "det", "TEM", "kx", "|", "-")
BIG = 64  # font size (px) of the large intermediate render


def font_path(name: str) -> str | None:
    """Where the font file `name` is: matplotlib's fonts, then the system's; None when it is not installed."""
    for folder in (FONT_DIR, *SYSTEM_FONT_DIRS):
        if os.path.exists(path := os.path.join(folder, name)):
            return path
    return None


def missing_fonts(fonts=TRAIN_FONTS) -> list[str]:
    return [name for name, _ in fonts if name != "default" and font_path(name) is None]


@lru_cache(maxsize=None)
def installed(fonts: tuple[tuple[str, float], ...]) -> tuple[tuple[str, float], ...]:
    """`fonts` without those not installed here (training insists on all of them: train_label_reader)."""
    return tuple((name, weight) for name, weight in fonts if name == "default" or font_path(name) is not None)


@lru_cache(maxsize=None)
def load_font(name: str, size: int = BIG) -> ImageFont.FreeTypeFont:
    if name == "default":
        return ImageFont.load_default(size=size)
    path = font_path(name)
    if path is None:
        raise FileNotFoundError(f"font {name} is not installed (the Liberation fonts: apt-get install fonts-liberation)")
    return ImageFont.truetype(path, size)


@lru_cache(maxsize=None)
def has_glyph(name: str, ch: str) -> bool:
    """True when the font draws ``ch`` itself rather than its .notdef box."""
    font = load_font(name)
    missing = np.asarray(font.getmask("\ue000"))
    mask = np.asarray(font.getmask(ch))
    return mask.shape != missing.shape or not np.array_equal(mask, missing)


# --------------------------------------------------------------------------- text

def sample_value(rng: np.random.Generator) -> str:
    """A number string as printed on scale bars (1-2-5 series mostly)."""
    r = rng.random()
    if r < 0.08:  # arbitrary integers keep every digit in the training signal
        return str(int(rng.integers(1, 1000)))
    if r < 0.14:  # decimals as printed: "0.5", "1.0", "2.00", "20.0", "50.0", "0.25"
        return str(rng.choice(["0.5", "1.0", "2.0", "5.0", "2.00", "1.00", "0.50", "10.0", "20.0",
                               "50.0", "0.2", "0.1", "0.25", "2.5", "1.5", "0.05", "100.0", "200.0"]))
    mant = rng.choice([1, 2, 5, 3, 4, 25, 15, 6, 8, 7, 9, 35, 250],
                      p=np.array([24, 20, 20, 5, 4, 4, 2, 2, 2, 1, 1, 1, 1]) / 87)
    exp = rng.choice([-2, -1, 0, 1, 2], p=[0.02, 0.13, 0.35, 0.3, 0.2])
    v = mant * 10.0 ** exp
    if v >= 1000:
        v /= 10
    if v != int(v) or rng.random() < 0.12:
        # decimals: "0.5", ".5", "1.0", "2.00", "1,5"
        decimals = max(1, len(f"{v:g}".split(".")[1]) if "." in f"{v:g}" else 1)
        if rng.random() < 0.2:
            decimals += 1
        s = f"{v:.{decimals}f}"
        if s.startswith("0.") and rng.random() < 0.1:
            s = s[1:]
        if rng.random() < 0.05:
            s = s.replace(".", ",")
        return s
    return str(int(v))


def sample_label(rng: np.random.Generator) -> tuple[list[tuple[str, int]], str]:
    """Pieces to draw as (string, spaces-before) and the canonical target text.

    The target keeps one space between number and unit when a gap is drawn and
    writes micro as 'µ' whatever glyph is drawn (the reader maps all to one).
    """
    num = sample_value(rng)
    unit = rng.choice(["nm", "um", "mm", "pm"], p=[0.45, 0.45, 0.07, 0.03])
    gap = int(rng.choice([0, 1, 2, 3], p=[0.3, 0.55, 0.1, 0.05]))
    pieces = [(num, 0)]
    if unit == "um":
        micro = MICRO_CHARS[int(rng.choice(3, p=[0.5, 0.25, 0.25]))]
        split = 1 if rng.random() < 0.08 else 0  # "10 µ m"
        pieces += [(micro, gap), ("m", split)]
        target_unit = "µm"
    else:
        pieces += [(unit, gap)]
        target_unit = unit
    return pieces, num + (" " if gap else "") + target_unit


# --------------------------------------------------------------------- background

def smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Band-limited noise in [-1, 1]: random grid upsampled bicubically."""
    gh, gw = max(2, int(cells * h / max(h, w)) + 2), max(2, int(cells * w / max(h, w)) + 2)
    g = Image.fromarray(rng.uniform(0, 255, (gh, gw)).astype(np.uint8))
    return np.asarray(g.resize((w, h), Image.BICUBIC), np.float32) / 127.5 - 1.0


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Micrograph-like background: blobs at a few scales, gradient, grain."""
    t = np.zeros((h, w), np.float32)
    for cells in rng.choice([2, 4, 8, 16, 32], size=int(rng.integers(1, 4)), replace=False):
        t += rng.uniform(0, 0.25) * smooth_noise(rng, h, w, int(cells))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t += rng.uniform(-0.2, 0.2) * (xx / w - 0.5) + rng.uniform(-0.2, 0.2) * (yy / h - 0.5)
    if rng.random() < 0.5:  # sharp-edged structures (particles, membranes)
        edge = smooth_noise(rng, h, w, int(rng.integers(3, 10))) > rng.uniform(-0.3, 0.5)
        t += rng.uniform(-0.3, 0.3) * edge
    return t


# -------------------------------------------------------------------------- draw

def _draw_pieces(draw, pieces, font_name, mu_font, x, y, stroke, fill=255):
    font = load_font(font_name)
    space = font.getlength(" ")
    for s, spaces in pieces:
        f = mu_font if s in MICRO_CHARS[:2] else font
        x += spaces * space
        draw.text((x, y), s, font=f, fill=fill, stroke_width=stroke, stroke_fill=fill)
        x += f.getlength(s) + stroke
    return x


def render_label(rng: np.random.Generator, fonts=TRAIN_FONTS) -> tuple[np.ndarray, str]:
    """Render one degraded label crop; returns (grey float32 image in [0,1], text)."""
    if fonts is TRAIN_FONTS and rng.random() < INFO_BAR_PROB:
        return render_info_bar_label(rng)
    pieces, text = sample_label(rng)
    fonts = installed(tuple(fonts))
    names = [f for f, _ in fonts]
    weights = np.array([w for _, w in fonts], float)
    font_name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    # the micro glyph sometimes comes from a different (symbol) font
    mu = next((s for s, _ in pieces if s in MICRO_CHARS[:2]), None)
    mu_name = font_name
    # (Computer Modern TTFs use TeX encodings: their 'µ' slot is not a mu)
    if mu is not None and (rng.random() < 0.15 or font_name.startswith("cm")
                           or not has_glyph(font_name, mu)):
        candidates = [n for n in ("DejaVuSans.ttf", "STIXGeneral.ttf", "DejaVuSerif.ttf", "default")
                      if has_glyph(n, mu)]
        mu_name = candidates[int(rng.integers(len(candidates)))]
    mu_font = load_font(mu_name)
    stroke = int(rng.choice([0, 1, 2, 3], p=[0.6, 0.2, 0.15, 0.05]))

    # --- large coverage masks: text, and optionally an outline halo
    pad = 3 * BIG
    width = int(_draw_pieces(ImageDraw.Draw(Image.new("L", (1, 1))), pieces, font_name, mu_font,
                             0, 0, stroke)) + 2 * pad
    height = BIG * 2 + 2 * pad
    mask = Image.new("L", (width, height), 0)
    d = ImageDraw.Draw(mask)
    x0, y0 = pad, pad
    _draw_pieces(d, pieces, font_name, mu_font, x0, y0, stroke)
    tb = mask.getbbox()  # the label itself, before extras
    if tb is None:  # cannot happen with real fonts; be safe
        tb = (pad, pad, pad + 10, pad + 10)
    th = tb[3] - tb[1]

    # neighbours: the bar above/below, and cut text fragments left/right
    if rng.random() < 0.45:  # the bar: solid, or a thin line with end ticks
        bw = int(rng.uniform(0.5, 1.6) * (tb[2] - tb[0]))
        bx = int((tb[0] + tb[2]) / 2 - bw / 2 + rng.uniform(-0.3, 0.3) * bw)
        gapy = int(rng.uniform(0.05, 0.6) * th)
        below = rng.random() < 0.7
        if rng.random() < 0.6:
            thick = int(rng.uniform(0.1, 0.5) * th)
            by = tb[3] + gapy if below else tb[1] - gapy - thick
            d.rectangle([bx, by, bx + bw, by + thick], fill=255)
        else:
            thick, tick = int(rng.uniform(0.04, 0.15) * th), int(rng.uniform(0.3, 1.2) * th)
            by = tb[3] + gapy + tick if below else tb[1] - gapy - tick
            sign = -1 if below else 1
            if rng.random() < 0.7:
                d.rectangle([bx, by, bx + bw, by + thick], fill=255)
            for tx in (bx, bx + bw):
                d.rectangle([tx, min(by, by + sign * tick), tx + thick + 1, max(by, by + sign * tick)], fill=255)
    elif rng.random() < 0.15:  # the text underlined, or a ruler's ticks above it (as some figures draw the bar)
        thick = max(2, int(rng.uniform(0.04, 0.1) * th))
        if rng.random() < 0.6:
            ux0 = tb[0] + rng.uniform(0, 0.6) * (tb[2] - tb[0])
            uy = tb[3] + rng.uniform(-0.05, 0.15) * th
            d.rectangle([ux0, uy, tb[2] + rng.uniform(0, 0.3) * th, uy + thick], fill=255)
        else:
            step, top = rng.uniform(0.25, 0.6) * th, tb[1] - rng.uniform(0.15, 0.5) * th
            for k in range(int((tb[2] - tb[0] + th) / step) + 1):
                tx, tick = tb[0] - 0.5 * th + k * step, rng.uniform(0.2, 0.5) * th
                d.rectangle([tx, top - tick, tx + thick, top], fill=255)
    if rng.random() < 0.2:
        frag = FRAGMENTS[int(rng.integers(len(FRAGMENTS)))]
        fl = load_font(font_name).getlength(frag)
        if rng.random() < 0.5:
            fx = tb[2] + rng.uniform(0.4, 1.5) * th
        else:
            fx = tb[0] - fl - rng.uniform(0.4, 1.5) * th
        d.text((fx, y0), frag, font=load_font(font_name), fill=255)

    halo = None
    if rng.random() < 0.1:  # outlined text (light text with dark rim or vice versa)
        halo = mask.filter(ImageFilter.MaxFilter(2 * int(rng.integers(1, 4)) + 1))

    # --- slight rotation / shear / aspect about the label centre
    cx, cy = (tb[0] + tb[2]) / 2, (tb[1] + tb[3]) / 2
    ang = np.deg2rad(rng.normal(0, 1.0))
    shear = rng.normal(0, 0.08)
    a = np.array([[np.cos(ang), -np.sin(ang) + shear], [np.sin(ang), np.cos(ang)]])
    inv = np.linalg.inv(a)
    off = np.array([cx, cy]) - inv @ np.array([cx, cy])
    coeffs = (inv[0, 0], inv[0, 1], off[0], inv[1, 0], inv[1, 1], off[1])
    mask = mask.transform(mask.size, Image.AFFINE, coeffs, Image.BILINEAR)
    if halo is not None:
        halo = halo.transform(halo.size, Image.AFFINE, coeffs, Image.BILINEAR)

    # --- crop with tight or loose margins (fractions of the text height)
    # the text need not be centred: bars, ticks or other marks often sit above
    # or below it inside the crop, so one vertical margin can be large
    ml, mr = rng.uniform(0.02, 1.2, 2) * th
    mt, mb = rng.uniform(0.02, 0.8, 2) * th
    if rng.random() < 0.35:
        if rng.random() < 0.6:
            mb = rng.uniform(0.5, 1.8) * th
        else:
            mt = rng.uniform(0.5, 1.8) * th
    box = (int(tb[0] - ml), int(tb[1] - mt), int(tb[2] + mr), int(tb[3] + mb))
    crop_h = box[3] - box[1]
    out_h = int(rng.integers(14, 72))
    aspect = rng.uniform(0.8, 1.2)  # font metrics differ from Arial/Helvetica
    out_w = max(8, int(round((box[2] - box[0]) * out_h / crop_h * aspect)))
    # low-resolution source that was later upsampled for display
    src_scale = rng.uniform(0.4, 1.0) if rng.random() < 0.25 else 1.0
    src_scale = max(src_scale, min(1.0, 14 / out_h))  # below ~14 px nobody could read it
    sh, sw = max(6, int(out_h * src_scale)), max(6, int(out_w * src_scale))
    cov = np.asarray(mask.crop(box).resize((sw, sh), Image.BOX), np.float32) / 255
    hal = (np.asarray(halo.crop(box).resize((sw, sh), Image.BOX), np.float32) / 255
           if halo is not None else None)

    if rng.random() < 0.15:  # a cut neighbour/frame edge along one border
        k = int(rng.integers(1, max(2, sh // 8) + 1))
        side = int(rng.integers(4))
        sl = [np.s_[:k, :], np.s_[-k:, :], np.s_[:, :k], np.s_[:, -k:]][side]
        cov = cov.copy()
        cov[sl] = rng.uniform(0.5, 1.0)

    # --- compose intensities: background (flat box or texture) and text
    dark_text = rng.random() < 0.45  # light-on-dark slightly favoured
    bg_level = rng.uniform(0.45, 1.0)
    contrast = rng.uniform(0.2, 0.95) if rng.random() < 0.8 else rng.uniform(0.5, 1.0)
    txt_level = bg_level - contrast * bg_level
    bg = np.full((sh, sw), bg_level, np.float32)
    if rng.random() < 0.75:
        tex = texture(rng, sh, sw) * rng.uniform(0.15, 0.7) * contrast  # text stays legible
        if rng.random() < 0.3:  # label sits on a flat box; texture around it
            yy, xx = np.mgrid[0:sh, 0:sw]
            by0, by1 = rng.uniform(-0.2, 0.3) * sh, rng.uniform(0.7, 1.2) * sh
            bx0, bx1 = rng.uniform(-0.3, 0.2) * sw, rng.uniform(0.8, 1.3) * sw
            tex *= ~((yy > by0) & (yy < by1) & (xx > bx0) & (xx < bx1))
        bg = bg + tex
    txt = txt_level + rng.normal(0, 0.03) * smooth_noise(rng, sh, sw, 4)
    if hal is not None:  # rim in the flat background tone, so text stands out of texture
        bg = bg * (1 - hal) + bg_level * hal
    img = bg * (1 - cov) + txt * cov
    if not dark_text:
        img = 1.0 - img

    # --- degradations: blur, resampling, noise, JPEG
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    if rng.random() < 0.6:
        pil = pil.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.2)))
    if (sh, sw) != (out_h, out_w):
        pil = pil.resize((out_w, out_h), [Image.BILINEAR, Image.BICUBIC, Image.NEAREST][int(rng.integers(3))])
    img = np.asarray(pil, np.float32) / 255
    return _noise_and_jpeg(img, rng, p_noise=0.7, max_sigma=0.06, p_jpeg=0.6, min_quality=15), text


def _noise_and_jpeg(img: np.ndarray, rng: np.random.Generator, p_noise: float, max_sigma: float, p_jpeg: float,
                    min_quality: int) -> np.ndarray:
    """Sensor noise (with probability p_noise) then JPEG compression (p_jpeg), as saved micrographs carry them."""
    if rng.random() < p_noise:
        img = img + rng.normal(0, rng.uniform(0.005, max_sigma), img.shape).astype(np.float32)
    pil = Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    if rng.random() < p_jpeg:
        buf = io.BytesIO()
        pil.save(buf, "JPEG", quality=int(rng.integers(min_quality, 95)))
        pil = Image.open(buf).convert("L")
    return np.asarray(pil, np.float32) / 255


def _info_bar_value(rng: np.random.Generator) -> tuple[str, bool]:
    """(number string, is micro) as an info bar prints a 1-2-5 length ("{value:g}")."""
    if rng.random() < 0.2:
        return sample_value(rng), bool(rng.random() < 0.5)
    nm = float(rng.choice([1, 2, 5])) * 10.0 ** int(rng.integers(-1, 6))
    if nm < 1000:
        return f"{nm:g}", False
    return f"{nm / 1000:g}", True


def render_info_bar_label(rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A label cut from a synthetic SEM info bar: white text drawn directly at 13-24 px
    on a flat near-black band, cropped with margins of about half the text height;
    sometimes the end of the bar (line, tick) pokes in, sometimes mild degradations."""
    font_name = INFO_BAR_FONTS[int(rng.integers(len(INFO_BAR_FONTS)))]
    font = load_font(font_name, int(rng.integers(13, 25)))
    num, micro = _info_bar_value(rng)
    space = rng.random() < 0.7
    if micro:
        m = "u" if font_name == "default" else MICRO_CHARS[int(rng.integers(3))]
        unit, target_unit = m + "m", "µm"
    else:
        unit = target_unit = "nm" if rng.random() < 0.93 else "mm"
    label = num + (" " if space else "") + unit
    text = num + (" " if space else "") + target_unit
    bg = int(rng.choice([12, 12, 12, int(rng.integers(0, 60))]))
    fg = 255 if rng.random() < 0.8 else int(rng.integers(150, 256))
    if rng.random() < 0.1:  # dark text on a light band
        bg, fg = 255 - bg, 255 - fg
    pad = 40
    w = int(font.getlength(label)) + 2 * pad
    im = Image.new("L", (w, 2 * pad + 30), bg)
    d = ImageDraw.Draw(im)
    d.text((pad + rng.uniform(0, 1), pad + rng.uniform(0, 1)), label, fill=fg, font=font)
    L, T, R, B = d.textbbox((pad, pad), label, font=font)
    th = B - T
    if rng.random() < 0.35:  # the scale bar ending just left of the label, on its line
        lh = max(1, int(rng.choice([1, 2, 3, 4])))
        yb = int((T + B) / 2 - lh / 2)
        xe = int(L - rng.uniform(0.3, 0.5) * th)
        d.rectangle([0, yb, xe, yb + lh - 1], fill=fg)
        if rng.random() < 0.5:
            tick = int(rng.integers(3, 10))
            d.rectangle([xe - lh + 1, yb - tick, xe, yb + lh - 1 + tick], fill=fg)
    ml, mr, mt, mb = rng.uniform(0.35, 0.7, 4) * th
    box = (int(max(0, L - ml)), int(max(0, T - mt)), int(min(w, R + mr)), int(min(im.height, B + mb)))
    crop = im.crop(box)
    if rng.random() < 0.2:  # displayed/saved at another scale
        f = rng.uniform(0.7, 1.6)
        crop = crop.resize((max(8, int(crop.width * f)), max(8, int(crop.height * f))),
                           [Image.BILINEAR, Image.BICUBIC, Image.LANCZOS][int(rng.integers(3))])
    img = np.asarray(crop, np.float32) / 255
    return _noise_and_jpeg(img, rng, p_noise=0.3, max_sigma=0.03, p_jpeg=0.25, min_quality=40), text


def render_clean(text_pieces: list[tuple[str, int]], font_name: str, height: int = 40,
                 dark_on_light: bool = True) -> np.ndarray:
    """A clean, undegraded render (for tests and quick looks)."""
    font = load_font(font_name)
    pad = BIG // 2
    width = int(_draw_pieces(ImageDraw.Draw(Image.new("L", (1, 1))), text_pieces, font_name,
                             font, 0, 0, 0)) + 2 * pad
    mask = Image.new("L", (width, BIG * 2), 0)
    _draw_pieces(ImageDraw.Draw(mask), text_pieces, font_name, font, pad, pad // 2, 0)
    box = mask.getbbox()
    box = (box[0] - pad // 3, box[1] - pad // 3, box[2] + pad // 3, box[3] + pad // 3)
    h = box[3] - box[1]
    cov = np.asarray(mask.crop(box).resize((int((box[2] - box[0]) * height / h), height), Image.BOX),
                     np.float32) / 255
    img = 0.9 - 0.8 * cov
    return img if dark_on_light else 1.0 - img


def draw_scale_bar(image: np.ndarray, text: str, bar_px: int, *, font_name: str = "DejaVuSans.ttf",
                   text_px: int = 22, thickness: int = 6, ink: int = 255, backdrop: int | None = None,
                   corner: str = "bottom right", label_above: bool = True, margin: int = 30
                   ) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int, int, int]]:
    """A scale bar and its label burnt into a corner of a uint8 grey micrograph, as microscope software and figure
    makers draw them: (the image, the bar's box, the box the whole annotation covers), boxes as (left, top, right,
    bottom) exclusive. The label is centred on the bar, above or below it, on a box of `backdrop` when given."""
    im = Image.fromarray(np.asarray(image, np.uint8))
    draw = ImageDraw.Draw(im)
    font = load_font(font_name, text_px)
    left_, top_, right_, bottom_ = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right_ - left_, bottom_ - top_
    gap = max(2, text_px // 4)
    width = max(bar_px, text_w)
    height = text_h + gap + thickness
    x = margin if "left" in corner else image.shape[1] - margin - width
    y = margin if "top" in corner else image.shape[0] - margin - height
    bar_x = x + (width - bar_px) // 2
    text_y = y if label_above else y + thickness + gap
    bar_y = y + text_h + gap if label_above else y
    pad = max(4, text_px // 3)
    covered = (x - pad, y - pad, x + width + pad, y + height + pad)
    if backdrop is not None:
        draw.rectangle([covered[0], covered[1], covered[2] - 1, covered[3] - 1], fill=backdrop)
    draw.text((x + (width - text_w) / 2 - left_, text_y - top_), text, fill=ink, font=font)
    draw.rectangle([bar_x, bar_y, bar_x + bar_px - 1, bar_y + thickness - 1], fill=ink)
    return np.asarray(im), (bar_x, bar_y, bar_x + bar_px, bar_y + thickness), covered
