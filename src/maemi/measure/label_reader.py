"""Learned OCR for scale-bar labels ("100 nm", "2 µm", "0.5 um", ...).

A small CRNN (Shi, Bai & Yao 2015, "An End-to-End Trainable Neural Network for
Image-based Sequence Recognition") trained with CTC (Graves et al. 2006,
"Connectionist Temporal Classification") on synthetic renders only
(:mod:`maemi.measure.label_render`, :mod:`maemi.measure.train_label_reader`).

The alphabet is tiny: digits, '.', ',', ' ', 'n', 'm', 'p' and one micro symbol
'µ' that stands for U+00B5, U+03BC and the ASCII 'u' alike, so the reader never
has to tell the three apart.

``parse_length_label`` turns any label text (prediction or ground truth) into
(value, unit) so that predictions are judged on what matters for measurement.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from maemi.measure.units import NM_PER_UNIT, parse_length

ALPHABET = " .,0123456789nmµp"  # CTC class k+1 is ALPHABET[k]; 0 is the blank
MICRO = "µ"
DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "scalebar_label.safetensors")


def canonical_text(text: str) -> str:
    """Map label text onto the reader's alphabet (micro variants -> 'µ')."""
    return text.replace("\u03bc", MICRO).replace("u", MICRO)


# --------------------------------------------------------------------- parsing

def parse_length_label(text: str) -> tuple[float, str] | None:
    """First "number [spaces] length-unit" in ``text`` as (value, unit), unit 'nm', 'µm', 'mm', 'pm' or 'Å'; the
    one parser of maemi.measure.units, in the label's own unit rather than nm."""
    parsed = parse_length(text)
    if parsed is None:
        return None
    return round(parsed[0] / NM_PER_UNIT[parsed[1]], 9), parsed[1]


# ----------------------------------------------------------------------- model

@dataclass
class ReaderConfig:
    height: int = 32            # input height after resizing
    max_width: int = 384        # wider crops are squeezed to this
    channels: tuple[int, ...] = (32, 64, 96, 96, 128)
    hidden: int = 96            # BiLSTM hidden size per direction
    n_classes: int = len(ALPHABET) + 1


def _block(cin, cout, pool):
    layers = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(pool))
    return layers


class CRNN(nn.Module):
    """conv stack (H 32 -> 2, W -> W/4) -> BiLSTM -> per-column class logits."""

    def __init__(self, cfg: ReaderConfig):
        super().__init__()
        c = cfg.channels
        # pools: (2,2),(2,2) halve width twice -> one CTC step per 4 px, enough
        # for the ~3 px-per-character density of tight labels at height 32;
        # later pools shrink only the height.
        self.conv = nn.Sequential(
            *_block(1, c[0], (2, 2)), *_block(c[0], c[1], (2, 2)),
            *_block(c[1], c[2], None), *_block(c[2], c[3], (2, 1)),
            *_block(c[3], c[4], (2, 1)))
        feat = c[4] * (cfg.height // 16)
        self.rnn = nn.LSTM(feat, cfg.hidden, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * cfg.hidden, cfg.n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 1, H, W) in [0,1], text dark -> log-probs (B, W/4, classes)."""
        f = self.conv(x - 0.5)
        b, c, h, w = f.shape
        f = f.permute(0, 3, 1, 2).reshape(b, w, c * h)
        f, _ = self.rnn(f)
        return self.head(f).log_softmax(-1)


# --------------------------------------------------------------- preprocessing

def _otsu(x: np.ndarray) -> float:
    hist, edges = np.histogram(x, bins=64, range=(0.0, 1.0))
    p = hist / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    between = (mu[-1] * w0 - mu) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(centres[int(np.argmax(between))])


def normalise(crop: np.ndarray, cfg: ReaderConfig) -> np.ndarray:
    """Contrast-stretch, make text dark on light, resize to cfg.height.

    Polarity: text covers less area than its background, so if the darker Otsu
    class is the majority the label is light-on-dark and gets inverted. The
    same function runs on training renders, so the network also sees (and learns
    to cope with) the cases where this rule guesses wrong.
    """
    x = np.asarray(crop, np.float32)
    if x.ndim == 3:
        x = x[..., :3].mean(-1) if x.shape[-1] >= 3 else x[..., 0]
    lo, hi = np.percentile(x, [1, 99])
    x = np.clip((x - lo) / max(hi - lo, 1e-3), 0, 1)
    if (x < _otsu(x)).mean() > 0.5:
        x = 1.0 - x
    h, w = x.shape
    new_w = int(min(cfg.max_width, max(8, round(w * cfg.height / h))))
    img = Image.fromarray((x * 255).astype(np.uint8)).resize((new_w, cfg.height), Image.BILINEAR)
    return np.asarray(img, np.float32) / 255


def batch_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Right-pad normalised images to a common width (multiple of 4) with white."""
    w = max(im.shape[1] for im in images)
    w = int(math.ceil(w / 4) * 4)
    out = np.ones((len(images), 1, images[0].shape[0], w), np.float32)
    for i, im in enumerate(images):
        out[i, 0, :, : im.shape[1]] = im
    return torch.from_numpy(out)


def greedy_decode(log_probs: torch.Tensor) -> list[tuple[str, float]]:
    """Best path: collapse repeats, drop blanks; confidence = mean peak prob."""
    probs, idx = log_probs.exp().max(-1)
    results = []
    for p, k in zip(probs.tolist(), idx.tolist()):
        chars, confs, prev = [], [], 0
        for pi, ki in zip(p, k):
            if ki != prev and ki != 0:
                chars.append(ALPHABET[ki - 1])
                confs.append(pi)
            elif ki == prev and ki != 0 and confs:
                confs[-1] = max(confs[-1], pi)
            prev = ki
        text = " ".join("".join(chars).split())
        results.append((text, float(np.mean(confs)) if confs else 0.0))
    return results


# ---------------------------------------------------------------------- reader

class LabelReader:
    """Reads a scale-bar label crop (grey float (H, W) in [0,1], any polarity)."""

    def __init__(self, model: CRNN, cfg: ReaderConfig):
        self.model = model.eval()
        self.cfg = cfg

    @classmethod
    def load(cls, path: str | None = None) -> "LabelReader":
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = path or DEFAULT_WEIGHTS
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        cfg_dict = json.loads(meta.get("config", "{}"))
        if "channels" in cfg_dict:
            cfg_dict["channels"] = tuple(cfg_dict["channels"])
        cfg = ReaderConfig(**cfg_dict)
        model = CRNN(cfg)
        state = {k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()}
        model.load_state_dict(state)
        return cls(model, cfg)

    @staticmethod
    def config_metadata(cfg: ReaderConfig) -> dict[str, str]:
        return {"config": json.dumps(asdict(cfg)), "alphabet": ALPHABET}

    @torch.no_grad()
    def read_batch(self, crops: list[np.ndarray], batch_size: int = 64) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        # sort by width so padding stays small, then restore order
        normed = [normalise(c, self.cfg) for c in crops]
        order = sorted(range(len(normed)), key=lambda i: normed[i].shape[1])
        res: dict[int, tuple[str, float]] = {}
        for s in range(0, len(order), batch_size):
            ids = order[s: s + batch_size]
            lp = self.model(batch_tensor([normed[i] for i in ids]))
            for i, r in zip(ids, greedy_decode(lp)):
                res[i] = r
        out = [res[i] for i in range(len(crops))]
        return out

    def read(self, crop: np.ndarray) -> tuple[str, float]:
        return self.read_batch([crop])[0]
