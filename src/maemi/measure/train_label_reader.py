"""Train the scale-bar label CRNN on synthetic renders (CPU, one thread).

    python -m maemi.measure.train_label_reader \
        --out src/maemi/measure/weights/scalebar_label.safetensors [--steps N --seed S]

Every batch is rendered on the fly from ``numpy.random.default_rng([seed, step])``,
in a worker process beside the training loop, so a run is deterministic for a seed
(and the fonts: training needs Debian's fonts-liberation). Settings are chosen on a
fixed synthetic validation set rendered from a separate seed and on the development
half of the real label crops (benchmarks/scale.py); the test half is read once per
reported row. References: CRNN (Shi et al. 2015), CTC (Graves et al. 2006), AdamW
(Loshchilov & Hutter 2019).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import save_file

from maemi.measure.label_reader import (ALPHABET, CRNN, LabelReader, ReaderConfig, batch_tensor,
                                        canonical_text, greedy_decode, normalise, parse_length_label)
from maemi.measure.label_render import HELD_OUT_FONT, missing_fonts, render_label

VAL_SEED = 987_654  # validation renders never share a stream with training


@dataclass
class TrainConfig:
    steps: int = 12000
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup: int = 100
    seed: int = 0
    val_size: int = 600
    log_every: int = 100


def make_batch(rng: np.random.Generator, n: int, cfg: ReaderConfig, fonts=None):
    images, targets = [], []
    for _ in range(n):
        img, text = render_label(rng) if fonts is None else render_label(rng, fonts)
        images.append(normalise(img, cfg))
        targets.append(canonical_text(text))
    return images, targets


class LabelStream(torch.utils.data.IterableDataset):
    """Training batches (images, targets) for steps start.., rendered in a DataLoader worker."""

    def __init__(self, tc: "TrainConfig", rc: ReaderConfig):
        self.tc, self.rc = tc, rc

    def __iter__(self):
        for step in range(self.tc.steps):
            images, targets = make_batch(np.random.default_rng([self.tc.seed, step]), self.tc.batch, self.rc)
            yield batch_tensor(images), targets


def encode(targets: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [[ALPHABET.index(c) + 1 for c in t] for t in targets]
    return torch.tensor([i for t in ids for i in t]), torch.tensor([len(t) for t in ids])


def same_text(a: str, b: str) -> bool:
    return a.replace(" ", "") == b.replace(" ", "")


def same_label(a: str, b: str) -> bool:
    pa, pb = parse_length_label(a), parse_length_label(b)
    return pa is not None and pb is not None and pa[1] == pb[1] and math.isclose(pa[0], pb[0])


@torch.no_grad()
def evaluate(model: CRNN, images, targets) -> tuple[float, float]:
    """(exact text ignoring spaces, value+unit) accuracy."""
    model.eval()
    preds = []
    for s in range(0, len(images), 100):
        preds += [p for p, _ in greedy_decode(model(batch_tensor(images[s: s + 100])))]
    model.train()
    text = np.mean([same_text(p, t) for p, t in zip(preds, targets)])
    label = np.mean([same_label(p, t) for p, t in zip(preds, targets)])
    return float(text), float(label)


def train(out: str, tc: TrainConfig, rc: ReaderConfig) -> None:
    if missing := missing_fonts():
        raise SystemExit(f"training fonts not installed: {', '.join(missing)} (apt-get install fonts-liberation)")
    torch.set_num_threads(1)  # one thread trains, one renders
    torch.manual_seed(tc.seed)
    model = CRNN(rc)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / tc.warmup) * 0.5 * (1 + math.cos(math.pi * min(s, tc.steps) / tc.steps)))
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)

    val = make_batch(np.random.default_rng(VAL_SEED), tc.val_size, rc)
    val_font = make_batch(np.random.default_rng(VAL_SEED + 1), 200, rc, fonts=((HELD_OUT_FONT, 1.0),))
    t0, running = time.time(), 0.0
    loader = torch.utils.data.DataLoader(LabelStream(tc, rc), batch_size=None, num_workers=1, prefetch_factor=4)
    for step, (x, targets) in enumerate(loader):
        lp = model(x)  # (B, T, C)
        tgt, tgt_len = encode(targets)
        in_len = torch.full((len(targets),), lp.shape[1], dtype=torch.long)
        loss = ctc(lp.transpose(0, 1), tgt, in_len, tgt_len)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        running += loss.item()
        if (step + 1) % tc.log_every == 0:
            msg = f"step {step + 1}/{tc.steps} loss {running / tc.log_every:.3f} lr {sched.get_last_lr()[0]:.2e} " \
                  f"{time.time() - t0:.0f}s"
            if (step + 1) % (tc.log_every * 5) == 0:
                msg += " val text/label %.3f/%.3f" % evaluate(model, *val)
            print(msg, flush=True)
            running = 0.0

    text_acc, label_acc = evaluate(model, *val)
    font_text, font_label = evaluate(model, *val_font)
    print(f"final synthetic val: text {text_acc:.3f} label {label_acc:.3f}; held-out font "
          f"{HELD_OUT_FONT}: text {font_text:.3f} label {font_label:.3f}; train {time.time() - t0:.0f}s")
    model.eval()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    # float16 on disk (1.1 MB instead of 2.2): LabelReader.load reads it back as float32; the benchmark figures
    # (benchmarks/results/scale.md) are measured with the float16 file that ships.
    state = {k: (v.half() if v.is_floating_point() else v).detach().contiguous() for k, v in model.state_dict().items()}
    meta = LabelReader.config_metadata(rc)
    meta.update(steps=str(tc.steps), seed=str(tc.seed), val_text_acc=f"{text_acc:.4f}",
                val_label_acc=f"{label_acc:.4f}")
    save_file(state, out, metadata=meta)
    print(f"saved {out} ({os.path.getsize(out) / 1e6:.2f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=TrainConfig.steps)
    ap.add_argument("--seed", type=int, default=TrainConfig.seed)
    ap.add_argument("--batch", type=int, default=TrainConfig.batch)
    ap.add_argument("--lr", type=float, default=TrainConfig.lr)
    args = ap.parse_args()
    train(args.out, TrainConfig(steps=args.steps, seed=args.seed, batch=args.batch, lr=args.lr), ReaderConfig())


if __name__ == "__main__":
    main()
