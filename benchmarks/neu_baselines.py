"""Supervised baselines for the NEU-SDD benchmark (benchmarks/neu.py): image classifiers trained from scratch on the
same split as MAEMI, scored with MAEMI's own classification metrics.

- `cnn`: a plain 8-layer CNN (pairs of 3x3 conv + BatchNorm + ReLU, max-pooled between pairs, global average pool),
  1.17 M parameters: the strong baseline (it reached 1.000 on this split in a calibration run, see
  ../shared/notes/dependencies.md).
- `resnet`: transformers' ResNetForImageClassification from a ResNetConfig (basic blocks, one per stage, widths 32 to
  256, 1.23 M parameters): the paper's ResNet row, sized like the others.
- `vit`: transformers' ViTForImageClassification from a ViTConfig (patch 16, dim 128, 6 blocks, 1.30 M parameters):
  the paper's "vanilla ViT" row.

All three see 128x128 inputs (the product's loader, ImagePreprocessConfig) with the product's training augmentation
(maemi.train.data.augment_image: flips, quarter turns, crops, brightness/contrast), AdamW, label smoothing and a linear
warm-up then cosine decay to zero over the planned epochs. The plan is a fixed number of epochs (reproducible); when
the first epoch shows that it would overrun the time budget, the remaining epochs are cut to fit and the row says so.

References: He et al. 2016 (ResNet); Dosovitskiy et al. 2021 (ViT); Loshchilov & Hutter 2019 (AdamW, cosine
schedule); Szegedy et al. 2016 (label smoothing); Song & Yan 2013 (NEU surface defect database).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from maemi.evaluate.classification import classification_metrics
from maemi.seeds import derived_seed
from maemi.cpu import cpu_has_native_bf16
from maemi.train.config import AugmentConfig
from maemi.train.data import ImageCache, augment_image, chunks, seeded_generator

BASELINES = ("cnn", "resnet", "vit")


def stronger_augment() -> AugmentConfig:
    # Labels do not move under crops or grey-level shifts (unlike MAEMI's measured answers), so classifiers can take
    # wider ones than the product's defaults.
    return AugmentConfig(crop_min_scale=0.5, brightness=0.1, contrast=0.1)


@dataclass
class BaselineConfig:
    image_size: int = 128  # NEU images are 200x200; 128 keeps the defects and a CPU epoch short
    epochs: int = 40
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    budget_minutes: float = 30.0  # training wall time allowed; fewer epochs when the first one shows it won't fit
    augment: AugmentConfig = field(default_factory=stronger_augment)
    seed: int = 0
    bf16: bool | None = None  # None: on where the CPU runs bf16 natively (2.5x for the CNN here, measured)


# Per-model settings. Epochs are sized from one timed epoch over the 1,439 training images on the 2-core CPU, one
# thread, the other core busy with another job (cnn 12 s, resnet 6 s, vit 13 s per epoch): about 16, 15 and 22 minutes.
DEFAULT_CONFIGS: dict[str, BaselineConfig] = {
    "cnn": BaselineConfig(epochs=80, lr=2e-3),
    "resnet": BaselineConfig(epochs=150, lr=2e-3),
    "vit": BaselineConfig(epochs=100, lr=1e-3, warmup_epochs=5.0),  # a ViT from scratch needs a gentler start
}


class PlainCNN(nn.Module):
    """Four stages of two 3x3 conv + BatchNorm + ReLU, 2x2 max-pool between stages, global average pool, linear. The
    first conv has stride 2: with the first stage at full 128x128 resolution a step of 32 images took 4x as long
    (1.2 s instead of 0.29 s, bf16, one thread, measured)."""

    def __init__(self, num_classes: int, widths: Sequence[int] = (32, 64, 128, 256), channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            for j in range(2):
                stride = 2 if i == j == 0 else 1
                layers += [nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU(inplace=True)]
                channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).mean(dim=(-2, -1)))  # [B, classes]


class HFImageClassifier(nn.Module):
    """A transformers *ForImageClassification model as images -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=images).logits


def build_baseline(name: str, num_classes: int, image_size: int) -> nn.Module:
    """A freshly initialised classifier (the caller seeds torch first)."""
    if name == "cnn":
        return PlainCNN(num_classes)
    if name == "resnet":
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(num_channels=3, embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1],
                              layer_type="basic", num_labels=num_classes)
        return HFImageClassifier(ResNetForImageClassification(config))
    if name == "vit":
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=image_size, patch_size=16, num_channels=3, hidden_size=128, num_hidden_layers=6,
                           num_attention_heads=4, intermediate_size=512, num_labels=num_classes)
        return HFImageClassifier(ViTForImageClassification(config))
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up to 1 over `warmup` steps, then cosine decay to 0 at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def batch_images(cache: ImageCache, paths: Sequence[str], indices: Sequence[int]) -> torch.Tensor:
    return torch.stack([cache.get(paths[i]) for i in indices])  # [B, 3, S, S]


@torch.no_grad()
def rank_classes(model: nn.Module, cache: ImageCache, paths: Sequence[str], classes: Sequence[str], bf16: bool,
                 batch_size: int = 64) -> list[list[str]]:
    """Class names by descending predicted probability, per image."""
    model.eval()
    ranked = []
    for batch in chunks(list(range(len(paths))), batch_size):
        images = batch_images(cache, paths, batch).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images).float()
        ranked += [[classes[j] for j in row] for row in logits.argsort(dim=-1, descending=True).tolist()]
    return ranked


def train_and_evaluate(name: str, config: BaselineConfig, train: Sequence[tuple[str, str]],
                       test: Sequence[tuple[str, str]], cache: ImageCache, log: Callable[[str], None] = print
                       ) -> dict:
    """Train baseline `name` on (relpath, label) pairs, score it on `test`; one benchmark row (metrics, times)."""
    if cache.preprocess.size != config.image_size:
        raise ValueError(f"image cache at {cache.preprocess.size} px, config wants {config.image_size} px")
    classes = sorted({label for _, label in train})
    index = {label: i for i, label in enumerate(classes)}
    paths, targets = [p for p, _ in train], torch.tensor([index[label] for _, label in train])
    bf16 = cpu_has_native_bf16() if config.bf16 is None else config.bf16

    torch.manual_seed(derived_seed("baseline-init", name, config.seed))
    model = build_baseline(name, len(classes), config.image_size).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(paths) / config.batch_size)
    epochs = config.epochs
    warmup = round(config.warmup_epochs * steps_per_epoch)
    log(f"{name}: {params:,} parameters, {len(paths)} training images, {len(classes)} classes, up to {epochs} "
        f"epochs of {steps_per_epoch} steps, bf16 {'on' if bf16 else 'off'}")

    started, step, losses = time.perf_counter(), 0, []
    epoch = 0
    while epoch < epochs:
        model.train()
        order = torch.randperm(len(paths), generator=seeded_generator("baseline-order", name, config.seed, epoch))
        total_loss = 0.0
        for batch in chunks(order.tolist(), config.batch_size):
            images = torch.stack([augment_image(cache.get(paths[i]), config.augment,
                                                seeded_generator("baseline-aug", config.seed, epoch, i))
                                  for i in batch]).contiguous(memory_format=torch.channels_last)  # [B, 3, S, S]
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(step, epochs * steps_per_epoch, warmup)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), targets[batch], label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(batch)
            step += 1
        epoch += 1
        losses.append(total_loss / len(paths))
        elapsed = time.perf_counter() - started
        if epoch == 1:
            fits = max(1, int(config.budget_minutes * 60 / elapsed))
            if fits < epochs:  # the schedule is re-planned once, so it still decays to zero at the end
                log(f"{name}: one epoch took {elapsed:.1f} s; {epochs} epochs would overrun the {config.budget_minutes}"
                    f"-minute budget: cutting to {fits}")
                epochs = fits
        log(f"{name}: epoch {epoch}/{epochs}: loss {losses[-1]:.4f} ({elapsed:.0f} s)")
    train_seconds = time.perf_counter() - started

    started = time.perf_counter()
    test_paths, y_true = [p for p, _ in test], [label for _, label in test]
    metrics = classification_metrics(y_true, rank_classes(model, cache, test_paths, classes, bf16), classes)
    return {"model": name, "params": params, "top1": metrics["top1"], "top5": metrics["top5"],
            "train_seconds": round(train_seconds, 1), "eval_seconds": round(time.perf_counter() - started, 1),
            "epochs": epoch, "epochs_planned": config.epochs, "loss_per_epoch": [round(x, 4) for x in losses],
            "bf16": bf16, "config": asdict(config), "classification": metrics}
