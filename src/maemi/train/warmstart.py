"""Vision encoder warm start: train the ViT with a linear head on the image labels (cross-entropy), then throw the
head away and instruction-tune (MAEMI paper, appendix A.6: a ViT pretrained on the labels also picks the few-shot
demonstrations by the similarity of its cls embedding).

Labels come from the instruction records themselves: a single-image record with a string label, or a multi-image
record with one label per image. Few-shot records (several images, the query's label only) are not used. The same
augmentation as instruction tuning, drawn from its own seeded streams. Under torchrun every process runs the same
warm start on all the images (it is small next to instruction tuning): identical results, no communication.

References: Dosovitskiy et al. 2021 (ViT classification head on the cls token); Polyak & Juditsky 1992 and
Izmailov et al. 2018 (averaging the weights along the trajectory: the optional exponential moving average).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from maemi.data.images import ImageReadError
from maemi.model.vision import VisionEncoder
from maemi.seeds import derived_seed
from maemi.train.config import TrainConfig
from maemi.train.data import ImageCache, augment_image, chunks, seeded_generator


def image_labels(records: Sequence[dict]) -> dict[str, str]:
    """image path -> label. An image given two different labels is left out (its records disagree)."""
    labels: dict[str, str] = {}
    conflicting: set[str] = set()
    for record in records:
        images, label = record["images"], record.get("label")
        if isinstance(label, str) and len(images) == 1:
            pairs = [(images[0], label)]
        elif isinstance(label, list) and len(label) == len(images) and all(isinstance(x, str) for x in label):
            pairs = list(zip(images, label))
        else:
            continue
        for path, value in pairs:
            if labels.setdefault(path, value) != value:
                conflicting.add(path)
    return {path: label for path, label in labels.items() if path not in conflicting}


def _readable(labels: dict[str, str], cache: ImageCache) -> list[tuple[str, str]]:
    usable = []
    for path, label in sorted(labels.items()):
        try:
            cache.get(path)
        except ImageReadError:
            continue  # already reported by the instruction dataset
        usable.append((path, label))
    return usable


@torch.no_grad()
def label_accuracy(vision: VisionEncoder, head: nn.Linear, items: Sequence[tuple[str, int]], cache: ImageCache,
                   device: torch.device, batch_size: int) -> float | None:
    if not items:
        return None  # no figure (JSON null in metrics.jsonl, not NaN)
    was_training = vision.training
    vision.eval()
    correct = 0
    for batch in chunks(range(len(items)), batch_size):
        images = torch.stack([cache.get(items[i][0]) for i in batch]).to(device)  # [B, 3, S, S]
        targets = torch.tensor([items[i][1] for i in batch], device=device)
        correct += int((head(vision(images)[1]).argmax(-1) == targets).sum())
    vision.train(was_training)
    return correct / len(items)


def warm_start_vision(vision: VisionEncoder, train_records: Sequence[dict], val_records: Sequence[dict],
                      cache: ImageCache, config: TrainConfig, device: torch.device,
                      log: Callable[[str], None] = print) -> list[dict]:
    """Train `vision` in place for config.warmstart_epochs; returns one metrics row per epoch (epoch 0: before).
    With config.warmstart_ema_decay, `vision` ends up with the moving average of its weights, and the rows' val_acc
    is the average's."""
    train_labels = _readable(image_labels(train_records), cache)
    classes = sorted({label for _, label in train_labels})
    if len(classes) < 2:
        log(f"warm start skipped: it needs labelled images of at least two classes (found {len(classes)})")
        return []
    index = {label: i for i, label in enumerate(classes)}
    train_items = [(path, index[label]) for path, label in train_labels]
    val_items = [(path, index[label]) for path, label in _readable(image_labels(val_records), cache)
                 if label in index]

    torch.manual_seed(derived_seed("warmstart-init", config.seed))  # the head's initial weights
    head = nn.Linear(vision.config.dim, len(classes)).to(device)
    params = [p for p in vision.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=config.warmstart_lr)
    batch_size = min(config.warmstart_batch_size, len(train_items))
    # Cosine decay to zero over the warm start: a ViT trained from scratch on a few hundred images at a constant lr
    # keeps jumping between solutions (measured on the demo corpus); annealing lets it settle.
    steps = config.warmstart_epochs * -(-len(train_items) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))

    # The moving average of the weights, BatchNorm statistics included (use_buffers): the last epochs of a ViT trained
    # from scratch on NEU scatter by a few test images from one epoch to the next even as the lr nears zero; the
    # average keeps the steadier end of that (README, NEU section).
    trained = nn.ModuleDict({"vision": vision, "head": head})
    averaged = None
    if config.warmstart_ema_decay:
        averaged = AveragedModel(trained, use_buffers=True,
                                 multi_avg_fn=get_ema_multi_avg_fn(config.warmstart_ema_decay))

    # bf16 autocast where the instruction tuning uses it: 21 instead of 32 s per NEU epoch on this CPU (measured).
    bf16 = config.use_bf16(device)

    def accuracy(items: list[tuple[str, int]]) -> float:
        kept = averaged.module if averaged is not None else trained
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            return label_accuracy(kept["vision"], kept["head"], items, cache, device, config.micro_batch)

    rows = [{"phase": "warmstart", "epoch": 0, "val_acc": accuracy(val_items)}]
    log(f"warm start: {len(train_items)} labelled images, {len(classes)} classes, {len(val_items)} val images; "
        + (f"before: val accuracy {rows[0]['val_acc']:.3f}; " if val_items else "") + f"bf16 {'on' if bf16 else 'off'}")
    vision.train()
    for epoch in range(1, config.warmstart_epochs + 1):
        order = torch.randperm(len(train_items), generator=seeded_generator("warmstart-order", config.seed, epoch))
        total, correct, seen = 0.0, 0, 0
        for batch in chunks(order.tolist(), batch_size):
            images = torch.stack([augment_image(cache.get(train_items[i][0]), config.augment,
                                                seeded_generator("warmstart", config.seed, epoch, i))
                                  for i in batch]).to(device)  # [B, 3, S, S]
            targets = torch.tensor([train_items[i][1] for i in batch], device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = head(vision(images)[1])
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if averaged is not None:
                averaged.update_parameters(trained)
            total, seen = total + loss.item() * len(batch), seen + len(batch)
            correct += int((logits.argmax(-1) == targets).sum())
        # Training accuracy as the epoch saw it (augmented images, weights moving): a second pass over the training
        # images only for this figure cost a third of the warm start's time.
        row = {"phase": "warmstart", "epoch": epoch, "train_loss": total / seen, "train_acc": correct / seen,
               "val_acc": accuracy(val_items)}
        rows.append(row)
        log(f"warm start epoch {epoch}/{config.warmstart_epochs}: loss {row['train_loss']:.4f}, "
            f"train accuracy {row['train_acc']:.3f}" + (f", val accuracy {row['val_acc']:.3f}" if val_items else ""))
    if averaged is not None:
        vision.load_state_dict(averaged.module["vision"].state_dict())
    return rows
