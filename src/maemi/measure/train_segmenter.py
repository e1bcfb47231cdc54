"""Train the instance segmenter on synthetic micrographs with exact instance masks (CPU).

    python -m maemi.measure.train_segmenter \
        --out src/maemi/measure/weights/segmenter.safetensors [--steps N --seed S]

Scenes are rendered on the fly by maemi.measure.scenes, in a worker process beside the training loop, from
(seed, step): a run is deterministic for a seed and thread count. Settings are judged on a fixed synthetic validation
set rendered from a separate seed; the real micrographs in benchmarks/measure_real.py are never trained on.

Loss: binary cross-entropy plus soft Dice on the foreground and on the core (maemi.measure.segmenter), the core's
cross-entropy weighted up inside objects, where the seeds come from. The runs so far:
benchmarks/results/segmenter_runs.md.

    ... --select-on FOLDER   (images/ and labels/ with experts' boxes, YOLO layout: maemi.measure.boxes)

keeps the checkpoint that detects the boxed objects best (F1 of objects matched to boxes, scored every
--select-every steps) instead of the last one: synthetic validation scenes do not rank models as real images do
(benchmarks/results/segmenter_runs.md); a few annotated images of a lab's own kind are the closer judge (run 15
there: it narrowed the spread between seeds on real STEM counts, not every row). They choose; nothing is trained on
them.

    ... --finetune-on FOLDER [FOLDER ...] --steps 2000 --lr 2e-3 [--init WEIGHTS --real-share 0.5]

fine-tunes (the steps and rate measured in benchmarks/segmenter_cv.py): starts from WEIGHTS (by default the shipped
ones) and makes --real-share of each batch crops of the annotated images (the rest scenes, so what the scenes taught
is kept), each expert's box drawn as its inscribed ellipse (boxes.box_instances). Crops are cut from the whole image
as the network reads it at inference (network_input of the reduced image), so a crop is normalised as the image is.
What it buys on specimens it did not see: benchmarks/segmenter_cv.py.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch.nn import functional as F

from maemi.cpu import cpu_has_native_bf16
from maemi.data.images import load_grey
from maemi.measure.boxes import annotated_images, box_instances, score_against_boxes
from maemi.measure.scenes import render_scene, scene_batch
from maemi.measure.segmenter import (DEFAULT_WEIGHTS, WORK_SIDE, Segmenter, SegmenterConfig, UNet, core_target,
                                     instances_from_maps, network_input)
from maemi.measure.spots import working_image

VAL_SEED = 777_001  # validation scenes never share a stream with training


@dataclass
class TrainConfig:
    steps: int = 6000
    batch: int = 8
    crop: int = 160  # more, smaller scenes learn faster than fewer large ones in the same time
    lr: float = 1e-2
    weight_decay: float = 1e-4
    warmup: int = 50
    seed: int = 0
    val_size: int = 48
    log_every: int = 100
    inside_weight: float = 4.0  # centreness loss weight inside objects, relative to the background
    # autocast to bfloat16 with channels-last convolutions where the CPU has native bf16 (None: when it does): a step
    # of 8 x 160 px takes 0.18 s instead of 0.39 s on one thread here, so the same minutes see twice the scenes
    bf16: bool | None = None
    threads: int = 1  # for the U-Net; the scenes are rendered by one worker process beside it, on the other core
    select_on: str | None = None  # a folder of annotated real images that chooses the checkpoint (module docstring)
    select_every: int = 500
    select_from: int = 1000  # the first checkpoint scored: earlier ones have not learnt the synthetic scenes yet
    # fine-tuning (module docstring): start from these weights, and train on crops of these annotated images beside
    # the scenes, this share of each batch
    init: str | None = None
    finetune_on: tuple[str, ...] = ()
    real_share: float = 0.5


def _example(seed: int, step: int, i: int, crop: int,
             sc: SegmenterConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(network input [C, H, W], foreground [1, H, W], core [1, H, W]) of one rotated or flipped training scene."""
    scene = render_scene(seed * 1_000_003 + step * 97 + i, None, (crop, crop))  # kinds in KIND_SHARES odds
    rng = np.random.default_rng([seed, step, i])
    k, flip = int(rng.integers(4)), bool(rng.integers(2))  # the physics has no preferred frame
    image, inst = np.rot90(scene.image, k), np.rot90(scene.instances, k)
    if flip:
        image, inst = image[:, ::-1], inst[:, ::-1]
    inst = np.ascontiguousarray(inst)
    # the core (centreness above one half) as a hard target: learnt faster than the soft centreness, and it is
    # all the seeds need
    foreground = (inst > 0).astype(np.float32)[None]
    return network_input(np.ascontiguousarray(image), sc), foreground, core_target(inst)[None]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - Dice over the batch (Milletari et al., V-Net 2016): blind to how few pixels are positive, so the small
    cores are not drowned by the background as with cross-entropy alone."""
    p = torch.sigmoid(logits)
    return 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)


@dataclass
class AnnotatedImage:
    """A real micrograph at the working size, as the network reads it (network_input of the whole image, so a crop
    is normalised as inference normalises it), and its boxes drawn as instances (boxes.box_instances)."""
    name: str
    inputs: np.ndarray  # [C, H, W]
    instances: np.ndarray  # [H, W] int32


def annotated_training_images(cases, sc: SegmenterConfig) -> list[AnnotatedImage]:
    """cases: (image path, boxes [M, 4] in its pixels), as boxes.annotated_images gives them."""
    out = []
    for path, boxes in cases:
        work, factor = working_image(load_grey(path), WORK_SIDE)
        out.append(AnnotatedImage(Path(path).name, network_input(work, sc), box_instances(boxes * factor, work.shape)))
    return out


def _real_example(images: list[AnnotatedImage], seed: int, step: int, i: int,
                  crop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(network input, foreground, core) of a random crop of an annotated image, rotated or flipped; images are drawn
    in proportion to their area, so every part of the set is seen alike."""
    rng = np.random.default_rng([seed, step, i, 1])
    areas = np.array([im.instances.size for im in images], float)
    im = images[int(rng.choice(len(images), p=areas / areas.sum()))]
    h, w = im.instances.shape
    pad = ((0, max(crop - h, 0)), (0, max(crop - w, 0)))  # an image smaller than the crop: mirrored out to it
    inputs = np.pad(im.inputs, ((0, 0),) + pad, mode="reflect")
    inst = np.pad(im.instances, pad, mode="constant")
    top, left = int(rng.integers(inputs.shape[1] - crop + 1)), int(rng.integers(inputs.shape[2] - crop + 1))
    x, inst = inputs[:, top:top + crop, left:left + crop], inst[top:top + crop, left:left + crop]
    k, flip = int(rng.integers(4)), bool(rng.integers(2))
    x, inst = np.rot90(x, k, axes=(1, 2)), np.rot90(inst, k)
    if flip:
        x, inst = x[:, :, ::-1], inst[:, ::-1]
    inst = np.ascontiguousarray(inst)
    return np.ascontiguousarray(x), (inst > 0).astype(np.float32)[None], core_target(inst)[None]


class SceneStream(torch.utils.data.IterableDataset):
    """Batches rendered from (seed, step), for steps start..steps-1; when fine-tuning, the first real_share of each
    batch are crops of annotated real images."""

    def __init__(self, tc: TrainConfig, sc: SegmenterConfig, start: int = 0,
                 real: list[AnnotatedImage] | None = None):
        self.tc, self.sc, self.start, self.real = tc, sc, start, real or []

    def __iter__(self):
        tc = self.tc
        n_real = round(tc.batch * tc.real_share) if self.real else 0
        for step in range(self.start, tc.steps):
            parts = [_real_example(self.real, tc.seed, step, i, tc.crop) for i in range(n_real)]
            parts += [_example(tc.seed, step, i, tc.crop, self.sc) for i in range(n_real, tc.batch)]
            yield tuple(torch.from_numpy(np.stack(p)) for p in zip(*parts))  # each [B, C, H, W]


def _match_f1(pred: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> tuple[int, int, int]:
    """(true positives, predicted, true) with objects matched one-to-one at IoU >= iou (at IoU > 0.5 a match is
    unique, so no assignment is needed)."""
    n_pred, n_true = int(pred.max()), int(truth.max())
    if n_pred == 0 or n_true == 0:
        return 0, n_pred, n_true
    both = (pred > 0) & (truth > 0)
    pairs = np.bincount(pred[both].astype(np.int64) * (n_true + 1) + truth[both], minlength=(n_pred + 1) * (n_true + 1))
    inter = pairs.reshape(n_pred + 1, n_true + 1)[1:, 1:]
    area_p = np.bincount(pred.ravel(), minlength=n_pred + 1)[1:]
    area_t = np.bincount(truth.ravel(), minlength=n_true + 1)[1:]
    union = area_p[:, None] + area_t[None, :] - inter
    return int(((inter / np.maximum(union, 1)) >= iou).sum()), n_pred, n_true


@torch.no_grad()
def evaluate(model: UNet, sc: SegmenterConfig, scenes, bf16: bool = False) -> dict[str, float]:
    """Instance F1 at IoU 0.5 and the median relative count error over synthetic validation scenes."""
    model.eval()
    seg = Segmenter(model, sc, bf16=bf16)
    tp = n_pred = n_true = 0
    count_errors = []
    for scene in scenes:
        labels = instances_from_maps(*seg.maps(scene.image))
        a, b, c = _match_f1(labels, scene.instances)
        tp, n_pred, n_true = tp + a, n_pred + b, n_true + c
        if c:
            count_errors.append(abs(b - c) / c)
    model.train()
    return {"f1": 2 * tp / max(n_pred + n_true, 1), "count_error_median": float(np.median(count_errors))}


def validation_scenes(n: int, crop: int):
    return scene_batch(VAL_SEED, n, (crop, crop))


def selection_images(folder: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(grey image at the working size, its boxes at that size) of each annotated image of `folder`: reduced once
    here, as Segmenter.instances would on every call."""
    cases = []
    for path, boxes in annotated_images(folder):
        work, factor = working_image(load_grey(path), WORK_SIDE)
        cases.append((work, boxes * factor))
    return cases


@torch.no_grad()
def score_on_boxes(model: UNet, sc: SegmenterConfig, cases, bf16: bool = False) -> dict[str, float]:
    """Detection F1 of the objects found against the experts' boxes (pooled over the images) and the median
    relative count error."""
    model.eval()
    seg = Segmenter(model, sc, bf16=bf16)
    scores = [score_against_boxes(seg.instances(image), boxes) for image, boxes in cases]
    model.train()
    matched, found, boxed = (sum(getattr(s, k) for s in scores) for k in ("matched", "measured", "boxes"))
    return {"f1": 2 * matched / max(found + boxed, 1),
            "count_error_median": float(np.median([s.count_error for s in scores]))}


def train(out: str, tc: TrainConfig, sc: SegmenterConfig) -> dict[str, float]:
    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads)
    if not 0.0 <= tc.real_share <= 1.0:
        raise ValueError(f"real_share {tc.real_share}: the share of each batch that is real crops, from 0 to 1")
    bf16 = cpu_has_native_bf16() if tc.bf16 is None else tc.bf16
    model = UNet(sc)
    if tc.init:
        start = Segmenter.load(tc.init)
        if start.cfg != sc:
            raise ValueError(f"{tc.init}: its network is {start.cfg}, this run's is {sc}")
        model.load_state_dict(start.model.state_dict())
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / tc.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, tc.steps) / tc.steps)))
    val = validation_scenes(tc.val_size, tc.crop)
    select = selection_images(tc.select_on) if tc.select_on else None
    best = None  # (score dict, step, state) of the checkpoint the annotated images prefer
    # one worker renders while the main process trains: on two cores, rendering and the U-Net overlap
    real = annotated_training_images([case for folder in tc.finetune_on for case in annotated_images(folder)], sc)
    loader = torch.utils.data.DataLoader(SceneStream(tc, sc, real=real), batch_size=None, num_workers=1,
                                         prefetch_factor=4)
    t0, running = time.time(), 0.0
    for step, (x, fg, centre) in enumerate(loader):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x.contiguous(memory_format=torch.channels_last))
        logits = logits.float()  # the losses in float32
        loss_fg = F.binary_cross_entropy_with_logits(logits[:, :1], fg) + soft_dice_loss(logits[:, :1], fg)
        weight = 1.0 + (tc.inside_weight - 1.0) * fg
        loss_centre = (F.binary_cross_entropy_with_logits(logits[:, 1:], centre, weight=weight)
                       + soft_dice_loss(logits[:, 1:], centre))
        loss = loss_fg + loss_centre
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % tc.log_every == 0:
            msg = f"step {step + 1}/{tc.steps} loss {running / tc.log_every:.4f} {time.time() - t0:.0f}s"
            if (step + 1) % (tc.log_every * 10) == 0:
                msg += " val f1 {f1:.3f} count error {count_error_median:.3f}".format(**evaluate(model, sc, val, bf16))
            print(msg, flush=True)
            running = 0.0
        if select and (step + 1) >= tc.select_from and ((step + 1) % tc.select_every == 0 or step + 1 == tc.steps):
            scored = score_on_boxes(model, sc, select, bf16)
            print(f"step {step + 1}: annotated images f1 {scored['f1']:.3f} count error "
                  f"{scored['count_error_median']:.3f}", flush=True)
            if best is None or scored["f1"] > best[0]["f1"]:
                best = (scored, step + 1, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[2])
        print(f"kept step {best[1]}: annotated images f1 {best[0]['f1']:.3f}", flush=True)
    result = evaluate(model, sc, val, bf16)
    seconds = time.time() - t0
    print("final synthetic val: f1 {f1:.3f} median count error {count_error_median:.3f}".format(**result)
          + f"; train {seconds:.0f}s", flush=True)
    model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # float16 on disk halves the file; Segmenter.load reads it back as float32
    state = {k: v.half().detach().contiguous() for k, v in model.state_dict().items()}
    meta = Segmenter.config_metadata(sc)
    meta.update(steps=str(tc.steps), seed=str(tc.seed), batch=str(tc.batch), crop=str(tc.crop), bf16=str(bf16),
                val_f1=f"{result['f1']:.4f}", val_count_error=f"{result['count_error_median']:.4f}",
                train_seconds=f"{seconds:.0f}")
    if tc.finetune_on:
        meta.update(init=os.path.basename(tc.init or "none"),
                    finetuned_on=",".join(os.path.basename(os.path.normpath(f)) for f in tc.finetune_on),
                    finetuned_images=str(len(real)), real_share=str(tc.real_share))
    if best is not None:
        meta.update(selected_step=str(best[1]), selected_on=os.path.basename(os.path.normpath(tc.select_on)),
                    selected_images=str(len(select)), selected_f1=f"{best[0]['f1']:.4f}",
                    selected_count_error=f"{best[0]['count_error_median']:.4f}")
    tmp = out + ".tmp"
    save_file(state, tmp, metadata=meta)
    os.replace(tmp, out)
    print(f"saved {out} ({os.path.getsize(out) / 1e6:.2f} MB)")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--crop", type=int, default=TrainConfig.crop)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    ap.add_argument("--in-channels", type=int, choices=(1, 2), default=SegmenterConfig.in_channels,
                    help="2: the image and its local contrast (segmenter.local_contrast)")
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 even where the CPU has native bf16")
    ap.add_argument("--select-on", help="folder of annotated real images (images/, labels/ YOLO boxes) that choose "
                                        "the checkpoint; see the module docstring")
    ap.add_argument("--select-every", type=int, default=TrainConfig.select_every)
    ap.add_argument("--init", help="weights to start from (safetensors); with --finetune-on the shipped ones by "
                                   "default")
    ap.add_argument("--finetune-on", nargs="+", default=(), help="folders of annotated real images (images/, labels/ "
                    "YOLO boxes) whose crops make --real-share of each batch; see the module docstring")
    ap.add_argument("--real-share", type=float, default=TrainConfig.real_share)
    args = ap.parse_args()
    tc = TrainConfig(steps=args.steps, seed=args.seed, batch=args.batch, crop=args.crop, lr=args.lr,
                     bf16=False if args.no_bf16 else None, select_on=args.select_on, select_every=args.select_every,
                     init=args.init or (DEFAULT_WEIGHTS if args.finetune_on else None),
                     finetune_on=tuple(args.finetune_on), real_share=args.real_share)
    train(args.out, tc, SegmenterConfig(in_channels=args.in_channels))


if __name__ == "__main__":
    main()
