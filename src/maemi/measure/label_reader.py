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
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from maemi.measure.units import NM_PER_UNIT, parse_length

ALPHABET = " .,0123456789nmµp"  # CTC class k+1 is ALPHABET[k]; 0 is the blank
MICRO = "µ"
# two networks of one recipe, trained from seeds 0 and 1 (train_label_reader --seed)
DEFAULT_WEIGHTS = tuple(os.path.join(os.path.dirname(__file__), "weights", name)
                        for name in ("scalebar_label.safetensors", "scalebar_label_seed1.safetensors"))


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


# A label is "number [one space] unit": the states of that grammar over the reader's alphabet. Decoding only along it
# turns the network's commonest slips on real crops (a dropped "n" in "500 nm", a stray character) into the likeliest
# well-formed label, which then stands or falls by its probability; greedy decoding would return "500 m".
_DIGITS = "0123456789"
_GRAMMAR: dict[str, dict[str, str]] = {
    "start": {**dict.fromkeys(_DIGITS, "integer"), ".": "point", ",": "point"},
    "integer": {**dict.fromkeys(_DIGITS, "integer"), ".": "point", ",": "point", " ": "space",
                **dict.fromkeys("nµmp", "prefix")},
    "point": dict.fromkeys(_DIGITS, "fraction"),
    "fraction": {**dict.fromkeys(_DIGITS, "fraction"), " ": "space", **dict.fromkeys("nµmp", "prefix")},
    "space": dict.fromkeys("nµmp", "prefix"),
    "prefix": {"m": "label"},
    "label": {},
}
BEAM_WIDTH = 16


def label_decode(log_probs: np.ndarray, beam_width: int = BEAM_WIDTH) -> tuple[str, float]:
    """The likeliest well-formed label under one crop's CTC output (T, classes), and its probability.

    CTC prefix beam search (Graves 2012, "Supervised Sequence Labelling", 7.5; Hannun et al. 2014) restricted to
    _GRAMMAR: written by hand because no maintained PyTorch-side decoder takes a character grammar (torchaudio's
    ctc_decoder wants a word lexicon and a KenLM build). The probability summed over every spelling of the same
    length ("500 nm", "500nm") is the confidence: the network's own belief in the label it returns, which a
    grammar-forced reading of an unreadable crop does not reach. ("", 0.0) when no well-formed label is in the beam.
    """
    neg_inf = -np.inf
    beam: dict[str, tuple[float, float]] = {"": (0.0, neg_inf)}  # prefix -> log P(ends in blank), log P(ends in char)
    states = {"": "start"}
    for frame in log_probs:
        nxt: dict[str, list[float]] = {}

        def add(prefix: str, slot: int, value: float) -> None:
            entry = nxt.setdefault(prefix, [neg_inf, neg_inf])
            entry[slot] = np.logaddexp(entry[slot], value)

        for prefix, (p_blank, p_char) in beam.items():
            total = np.logaddexp(p_blank, p_char)
            add(prefix, 0, total + frame[0])
            if prefix:  # the last character held for one more frame
                add(prefix, 1, p_char + frame[ALPHABET.index(prefix[-1]) + 1])
            for ch, state in _GRAMMAR[states[prefix]].items():
                score = frame[ALPHABET.index(ch) + 1]
                if score < -20.0:
                    continue
                extended = prefix + ch
                states[extended] = state
                # a repeated character needs a blank between: "00" cannot come from one run of '0' frames
                add(extended, 1, (p_blank if prefix.endswith(ch) else total) + score)
        ranked = sorted(nxt.items(), key=lambda kv: -np.logaddexp(*kv[1]))[:beam_width]
        beam = {k: (v[0], v[1]) for k, v in ranked}
    by_label: dict[tuple[float, str], list] = {}
    for prefix, (p_blank, p_char) in beam.items():
        if states[prefix] != "label":
            continue
        parsed = parse_length_label(prefix)
        if parsed is None:
            continue
        entry = by_label.setdefault(parsed, [neg_inf, prefix, neg_inf])
        score = np.logaddexp(p_blank, p_char)
        entry[0] = np.logaddexp(entry[0], score)
        if score > entry[2]:
            entry[1], entry[2] = prefix, score
    if not by_label:
        return "", 0.0
    log_p, text, _ = max(by_label.values(), key=lambda e: e[0])
    return text, float(np.exp(log_p))


# ---------------------------------------------------------------------- reader

def label_probability(log_probs: torch.Tensor, text: str) -> float:
    """CTC probability of the label `text` under one crop's output (T, classes), summed over its spellings with and
    without the space before the unit (the forward algorithm of torch's ctc_loss)."""
    packed = text.replace(" ", "")
    unit_at = next(i for i, ch in enumerate(packed) if ch in "nµmp")
    total = 0.0
    for spelling in (packed, packed[:unit_at] + " " + packed[unit_at:]):
        target = torch.tensor([[ALPHABET.index(ch) + 1 for ch in spelling]])
        nll = F.ctc_loss(log_probs[:, None], target, torch.tensor([log_probs.shape[0]]), torch.tensor([len(spelling)]),
                         reduction="sum")  # infinite where the spelling cannot fit in the frames: probability 0
        total += math.exp(-nll.item()) if torch.isfinite(nll) else 0.0
    return min(total, 1.0)


class LabelReader:
    """Reads a scale-bar label crop (grey float (H, W) in [0,1], any polarity) with one or more CRNNs.

    Several networks (the shipped ones differ only in their training seed) form a deep ensemble (Lakshminarayanan et
    al. 2017): each candidate label's probability is the mean of the networks' probabilities for it. Measured on
    1,000 synthetic renders of a seed training never saw, at the trust threshold 0.7 (maemi.measure.ocr): one network
    right on 91.2% or 89.9% (the two seeds) and wrong on 0.8% or 0.4%, the pair 90.5% and 0.2%
    (benchmarks/results/scale.md has the published crops).
    """

    def __init__(self, models: list[CRNN], cfg: ReaderConfig):
        self.models = [m.eval() for m in models]
        self.cfg = cfg

    @classmethod
    def load(cls, paths: str | Sequence[str] | None = None) -> "LabelReader":
        from safetensors import safe_open
        from safetensors.torch import load_file

        paths = [paths] if isinstance(paths, str) else list(paths or DEFAULT_WEIGHTS)
        models, configs = [], []
        for path in paths:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            cfg_dict = json.loads(meta.get("config", "{}"))
            if "channels" in cfg_dict:
                cfg_dict["channels"] = tuple(cfg_dict["channels"])
            configs.append(ReaderConfig(**cfg_dict))
            if configs[-1] != configs[0]:
                raise ValueError(f"{path}: its network's config differs from {paths[0]}'s; an ensemble reads one input")
            model = CRNN(configs[-1])
            model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(path).items()})
            models.append(model)
        return cls(models, configs[0])

    @staticmethod
    def config_metadata(cfg: ReaderConfig) -> dict[str, str]:
        return {"config": json.dumps(asdict(cfg)), "alphabet": ALPHABET}

    @torch.no_grad()
    def read_batch(self, crops: list[np.ndarray], batch_size: int = 64) -> list[tuple[str, float]]:
        """(label text, its probability) per crop; ("", 0.0) where no network reads a well-formed label.

        Each network reads the crop as normalise gives it and inverted, and keeps the view in which its label is more
        probable: normalise's polarity rule (text is the minority class) guesses wrong where a label sits on a dark,
        textured patch of the micrograph, and the wrong polarity reads as noise with a low probability. The
        candidates are the networks' labels; each is scored by every network on its kept view (label_probability)."""
        normed = [normalise(c, self.cfg) for c in crops]
        views = normed + [1.0 - x for x in normed]
        per_model = []  # per network, per crop: (the kept view's log-probs, its decoded label, probability)
        for model in self.models:
            outputs = self._forward(model, views, batch_size)
            kept = []
            for upright, inverted in zip(outputs[: len(crops)], outputs[len(crops):]):
                readings = [(lp, *label_decode(lp.numpy())) for lp in (upright, inverted)]
                kept.append(max(readings, key=lambda r: r[2]))
            per_model.append(kept)
        if len(self.models) == 1:
            return [(text, probability) for _, text, probability in per_model[0]]
        results = []
        for i in range(len(crops)):
            candidates = {canonical_text(kept[i][1]) for kept in per_model if kept[i][1]}
            scored = [(text, float(np.mean([label_probability(kept[i][0], text) for kept in per_model])))
                      for text in sorted(candidates)]
            results.append(max(scored, key=lambda r: r[1]) if scored else ("", 0.0))
        return results

    @staticmethod
    def _forward(model: CRNN, normed: list[np.ndarray], batch_size: int) -> list[torch.Tensor]:
        """Per image, the (T, classes) log-probs; batches padded to a common width (sorted by width, so little)."""
        order = sorted(range(len(normed)), key=lambda i: normed[i].shape[1])
        out: dict[int, torch.Tensor] = {}
        for s in range(0, len(order), batch_size):
            ids = order[s: s + batch_size]
            # all frames, padding included: the BiLSTM, trained on padded batches, emits into the padding
            for i, lp in zip(ids, model(batch_tensor([normed[i] for i in ids]))):
                out[i] = lp
        return [out[i] for i in range(len(normed))]

    def read(self, crop: np.ndarray) -> tuple[str, float]:
        return self.read_batch([crop])[0]
