"""Learned instance segmentation of micrographs: a small U-Net, then a seeded watershed.

The network (Ronneberger et al., U-Net, MICCAI 2015) reads a grey image and its local contrast (local_contrast) and
predicts two maps: the probability that a pixel
belongs to an object, and the probability that it belongs to an object's core, where its "centreness" (the distance to
its own object's border over that object's largest distance: 1 on the ridge, 0 at the edge) is above one half. Centreness is the distance-map idea of StarDist (Schmidt et al.,
MICCAI 2018) and Cellpose (Stringer et al., Nat. Methods 2021) in its simplest form: where two particles touch, the
centreness falls to 0 at the shared border even though the foreground does not, so the cores give one seed per
object, a disk's centre or a wire's axis, and a watershed from those seeds (Beucher & Meyer 1993, scikit-
image) hands every foreground pixel to an object. Trained on synthetic micrographs with exact instance masks
(maemi.measure.scenes, maemi.measure.train_segmenter) and shipped as safetensors.

Why not cellpose or stardist: cellpose 3 pins numpy < 2.1 (this stack runs numpy 2.4), cellpose 4 is a 300M-parameter
SAM encoder that needs torchvision (which breaks transformers here) and cannot measure a 1024x768 image in a second on
two CPU cores; stardist runs on TensorFlow. Both are built around the same two maps as this one, so we keep their
idea and a network small enough for a lab's CPU.

Scale: the network sees objects from about 3 to 60 px across. An image is first reduced so its long side is at most
WORK_SIDE px; when the objects it then finds are still large (median equivalent diameter above LARGE_OBJECT_PX), it
is halved again and segmented anew, so a 4k image of big grains is measured as a 1k image of mid-sized ones. Labels
come back at the input's resolution.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import watershed
from skimage.transform import resize
from torch import nn
from torch.nn import functional as F

from maemi.cpu import cpu_has_native_bf16
from maemi.measure.spots import working_image

DEFAULT_WEIGHTS = os.path.join(os.path.dirname(__file__), "weights", "segmenter.safetensors")
# A lab's own weights (fine-tuned on its annotated images, or the checkpoint they chose: train_segmenter) in place of
# the shipped ones, for every command and the server alike
WEIGHTS_ENV = "MAEMI_SEGMENTER_WEIGHTS"

WORK_SIDE = 1024  # long side the network works at: a 1024x768 image in about a second on two CPU cores
LARGE_OBJECT_PX = 48  # objects larger than this (median, at the working size) are segmented again at half size
MIN_WORK_SIDE = 128
FOREGROUND_P = 0.5
SEED_CENTRENESS = 0.5  # a touching neighbour's border is at 0; one object's core stays one component above 1/2
MIN_OBJECT_PX = 6  # at the working size: below this an "object" is a noise speck (the smallest trained is ~7 px)


def weights_path() -> str:
    """The weights the learned segmenter loads: $MAEMI_SEGMENTER_WEIGHTS when set, else the shipped ones."""
    return os.environ.get(WEIGHTS_ENV) or DEFAULT_WEIGHTS


@dataclass
class SegmenterConfig:
    channels: tuple[int, ...] = (8, 16, 32, 64, 96)  # per U-Net level; each halves the resolution (receptive field ~140 px)
    in_channels: int = 2  # 1: the normalised image; 2: and its local contrast (local_contrast)
    out_channels: int = 2  # foreground logit, core logit


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    # BatchNorm: trains markedly faster here than GroupNorm (measured); inference uses its running statistics
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
    )


class UNet(nn.Module):
    def __init__(self, cfg: SegmenterConfig):
        super().__init__()
        ch = cfg.channels
        self.down = nn.ModuleList([_conv_block(cfg.in_channels, ch[0])] +
                                  [_conv_block(ch[i - 1], ch[i]) for i in range(1, len(ch))])
        self.up = nn.ModuleList([nn.Conv2d(ch[i + 1], ch[i], 1) for i in range(len(ch) - 1)])
        self.merge = nn.ModuleList([_conv_block(2 * ch[i], ch[i]) for i in range(len(ch) - 1)])
        self.head = nn.Conv2d(ch[0], cfg.out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, in_channels, H, W] (network_input), H and W multiples of 2^(levels-1) -> [B, 2, H, W] logits."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for i in reversed(range(len(self.up))):
            x = self.up[i](F.interpolate(x, scale_factor=2, mode="nearest"))
            x = self.merge[i](torch.cat([skips[i], x], dim=1))
        return self.head(x)


def normalise(grey: np.ndarray) -> np.ndarray:
    """Robust contrast: median to 0, the 0.5-99.5 percentile range to 1. Same for training and inference."""
    grey = grey.astype(np.float32)
    lo, mid, hi = np.percentile(grey, [0.5, 50, 99.5])
    return ((grey - float(mid)) / max(float(hi - lo), 1e-3)).astype(np.float32)


LOCAL_SIGMA = 16.0  # px at the working size: the support's structure beyond a particle's scale


def local_contrast(grey: np.ndarray, normalised: np.ndarray | None = None) -> np.ndarray:
    """The image less its Gaussian local mean, over the local RMS of that difference (both at LOCAL_SIGMA): a particle
    stands out of its own surroundings whatever the support's brightness or the image's range, which differ most
    between synthetic scenes and real micrographs. Computed on normalise(grey) (pass it when already made), so the
    spread's floor, a thousandth, is of the image's range and a flat image stays 0."""
    x = normalise(grey) if normalised is None else normalised
    detail = x - ndimage.gaussian_filter(x, LOCAL_SIGMA)
    spread = np.sqrt(ndimage.gaussian_filter(detail * detail, LOCAL_SIGMA))
    return (detail / np.maximum(spread, 1e-3)).astype(np.float32)


def network_input(grey: np.ndarray, cfg: SegmenterConfig) -> np.ndarray:
    """[in_channels, H, W] float32: what the U-Net reads, the same in training and inference."""
    x = normalise(grey)
    return np.stack([x] + ([local_contrast(grey, x)] if cfg.in_channels == 2 else []))


def centreness(instances: np.ndarray) -> np.ndarray:
    """Each object's distance to its own border over its largest distance: the training target. [H, W] in [0, 1]."""
    out = np.zeros(instances.shape, np.float32)
    for i, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)  # one pixel of margin: the border counts
        own = instances[box] == i
        d = ndimage.distance_transform_edt(own)
        out[box][own] = d[own] / d.max()
    return out


def core_target(instances: np.ndarray) -> np.ndarray:
    """1 where the centreness is above one half (every object's core, at least its innermost pixel), else 0."""
    return (centreness(instances) >= SEED_CENTRENESS).astype(np.float32)


def instances_from_maps(foreground: np.ndarray, centre: np.ndarray, min_object_px: int = MIN_OBJECT_PX) -> np.ndarray:
    """Seeded watershed: seeds are the connected cores (core probability, or centreness, above 1/2), flooded over its
    negative within the foreground. Objects smaller than min_object_px are dropped and the rest relabelled 1..n."""
    mask = foreground > FOREGROUND_P
    seeds, n = ndimage.label(mask & (centre > SEED_CENTRENESS), structure=np.ones((3, 3)))
    if n == 0:
        return np.zeros(mask.shape, np.int32)
    labels = watershed(-centre, seeds, mask=mask)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_object_px
    keep[0] = False
    relabel = np.zeros(n + 1, np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels]


class Segmenter:
    """A trained U-Net and its config; `instances(grey)` is the whole inference."""

    def __init__(self, model: UNet, cfg: SegmenterConfig, metadata: dict[str, str] | None = None,
                 bf16: bool | None = None):
        # channels-last convolutions, in bfloat16 where the CPU has it natively: the network's pass over a 1024x768
        # image 3.2x faster than in float32 here (one thread, AVX512-BF16; 0.30 s instead of 0.52 s for the whole
        # segmentation), and the maps' 1/2 thresholds do not need more bits (counts move by at most 2%)
        self.model, self.cfg = model.eval().to(memory_format=torch.channels_last), cfg
        self.metadata = metadata or {}
        self.multiple = 2 ** (len(cfg.channels) - 1)
        self.bf16 = cpu_has_native_bf16() if bf16 is None else bf16

    @classmethod
    def load(cls, path: str | None = None) -> "Segmenter":
        """path, else $MAEMI_SEGMENTER_WEIGHTS, else the shipped weights. FileNotFoundError when there is no such
        file, ValueError naming it when it is not a segmenter's weights."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = path or weights_path()
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no segmenter weights (train them: python -m "
                                    "maemi.measure.train_segmenter)")
        try:
            with safe_open(path, framework="pt") as f:
                meta = f.metadata() or {}
            cfg = SegmenterConfig(**{k: tuple(v) if isinstance(v, list) else v
                                     for k, v in json.loads(meta.get("config", "{}")).items()})
            model = UNet(cfg)
            model.load_state_dict({k: v.float() for k, v in load_file(path).items()})
        except Exception as e:  # safetensors' own error, a bad config, tensors of another network
            raise ValueError(f"{path}: not segmenter weights ({type(e).__name__}: {e})") from e
        return cls(model, cfg, meta)

    @staticmethod
    def config_metadata(cfg: SegmenterConfig) -> dict[str, str]:
        return {"config": json.dumps(asdict(cfg))}

    @torch.no_grad()
    def maps(self, grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(foreground probability, core probability), both [H, W] float32, for a grey image at the size given."""
        h, w = grey.shape
        m = self.multiple
        ph, pw = -h % m, -w % m
        x = np.pad(network_input(grey, self.cfg), ((0, 0), (0, ph), (0, pw)), mode="reflect")
        x = torch.from_numpy(x)[None].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(x)
        out = torch.sigmoid(logits.float())[0, :, :h, :w].numpy()
        return out[0], out[1]

    def instances(self, grey: np.ndarray) -> np.ndarray:
        """Instance labels [H, W] int32 (0 background) of a grey image (float in [0, 1], info bar cropped)."""
        h, w = grey.shape
        side = min(max(h, w), WORK_SIDE)
        while True:
            work, _ = working_image(grey, side)
            labels = instances_from_maps(*self.maps(work))
            sizes = np.bincount(labels.ravel())[1:]
            large = len(sizes) and np.median(np.sqrt(4 * sizes / np.pi)) > LARGE_OBJECT_PX
            if not large or side // 2 < MIN_WORK_SIDE:
                break
            side //= 2
        if labels.shape != (h, w):
            labels = resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        return labels
