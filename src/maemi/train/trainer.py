"""Instruction-tune MAEMI: `maemi train --data train.jsonl --val val.jsonl --images DIR --out runs/NAME`.

One optimizer step takes the next batch_size examples of the epoch's shuffled order, runs them in micro-batches
(gradient accumulation; under torchrun the micro-batches are dealt out to the processes), samples one DyLoRA rank
for the whole step, and updates only the trainable parts. Each epoch ends with the validation loss, the learning-rate
schedule, early stopping, a checkpoint and the loss curve; the best model so far sits at the run root, adapters at
r_max, for MAEMI.from_pretrained(run).

Exact resume. Everything random is a pure function of the seed and the position in training: the data order of an
epoch and the augmentation of a sample (data.py), the dropout masks of micro-batch j of step s (the global RNG is
re-seeded from (seed, s, j) before it), and the DyLoRA rank (one generator, checkpointed). A checkpoint saves the
model, Adam's moments, the scheduler, the position (epoch, step, step within the epoch, running sums) and the RNG
states, so a run killed at any moment and resumed from its last checkpoint ends with the same weights, bit for bit on
the same machine and thread count, as one that was never interrupted.

References: Srinivas et al. 2024 (MAEMI's recipe); nanoGPT train.py (loop, gradient accumulation under DDP with
no_sync, full resume, a throughput printout); Valipour et al. 2023 (DyLoRA: a rank per step).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import get_cosine_schedule_with_warmup

from maemi.cpu import training_attention
from maemi.data.images import ImageReadError, read_image_info
from maemi.fileio import atomic_write_json, atomic_write_text
from maemi.model import MAEMI, AnswerVocab
from maemi.seeds import derived_seed
from maemi.teachers.records import read_records
from maemi.train.checkpoint import ResumeError, find_checkpoint, load_checkpoint, save_checkpoint
from maemi.train.config import ConfigError, TrainConfig
from maemi.train.data import (ImageCache, InstructionDataset, answer_text, chunks, epoch_order, epoch_pool,
                              plan_step)
from maemi.train.demos import few_shot_demos_by_vision
from maemi.train.distributed import (DistributedEnv, all_reduce_sum, barrier, init_distributed, shutdown,
                                     wrap_ddp)
from maemi.train.plots import plot_loss
from maemi.train.warmstart import warm_start_vision

RUN_FILE, METRICS_FILE, LOSS_PLOT = "run.json", "metrics.jsonl", "loss.png"


class TrainingDataError(ValueError):
    pass


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed, in all
    step_in_epoch: int = 0  # optimizer steps completed in epoch `epoch`
    samples: int = 0  # training samples seen, in all
    answer_tokens: int = 0  # their target tokens
    epoch_loss_sum: float = 0.0  # sum over this epoch's steps of step loss x step samples
    epoch_samples: int = 0
    window_loss_sum: float = 0.0  # the same since the last metrics row
    window_samples: int = 0
    best_val_loss: float | None = None
    best_epoch: int | None = None  # epochs completed at the best validation (0: within the first, as max_steps stops)
    best_step: int | None = None
    bad_validations: int = 0  # validations in a row without a new best (early stopping)
    finished: str | None = None  # why training ended: "epochs", "early_stopping", "max_steps"
    train_seconds: float = 0.0


class MetricsLog:
    """metrics.jsonl: one JSON object per line, appended by rank 0. On resume, rows past the checkpoint's step (and a
    line cut by a kill) are dropped, so the file reads as if the run had never been interrupted."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None) -> None:
        self.path, self.enabled = path, enabled
        self.rows: list[dict] = []
        if keep_until_step is not None and path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the partial last line of a killed run
                if row.get("step", 0) <= keep_until_step:
                    self.rows.append(row)
        if enabled:
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in self.rows))

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------ pieces


def select_trainable(model: MAEMI, config: TrainConfig) -> list[tuple[str, torch.nn.Parameter]]:
    """Freeze everything, then unfreeze what the config trains. Returns the trainable (name, parameter) pairs."""
    model.requires_grad_(False)
    model.vision.requires_grad_(config.train_vision)
    model.decoder.requires_grad_(config.train_decoder)
    model.text.special_embeddings.requires_grad_(config.train_special_tokens)
    if not model.config.text.pretrained:  # random weights: nothing to keep, the whole encoder trains
        model.text.model.requires_grad_(True)
    if config.train_adapters:
        for param in model.text.adapter_parameters():
            param.requires_grad_(True)
    named = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    if not named:
        raise ConfigError("nothing to train: train_vision, train_adapters, train_decoder and train_special_tokens "
                          "are all off (or the text encoder has no adapters)")
    return named


def keep_vision_fixed(model: MAEMI, config: TrainConfig) -> None:
    """A fixed ViT (config.vision_fixed) gets no gradient, so no backward runs through it (and Adam skips a parameter
    whose grad is None)."""
    if config.vision_fixed:
        model.vision.requires_grad_(False)


def set_train_mode(model: MAEMI, config: TrainConfig) -> None:
    """Train mode, except frozen parts: they run as at inference (BatchNorm statistics of a frozen conv stem must not
    drift, and a frozen part's dropout would only add noise)."""
    model.train()
    if config.vision_fixed:
        model.vision.eval()
    if not config.train_decoder:
        model.decoder.eval()


def param_groups(named_params: Sequence[tuple[str, torch.nn.Parameter]], config: TrainConfig) -> list[dict]:
    """Adam groups: everything at lr, the fusion gates at lr * gate_lr_scale, the vision encoder at lr *
    vision_lr_scale. Adam moves a parameter by about lr a step whatever its gradient's size, so a tanh gate that starts
    at 0 (Flamingo's gate_init) needs ~1/lr steps to open: at lr 1e-3 the image gates were still below 0.05 after a
    demo's few hundred steps (measured)."""
    def scale(name: str) -> float:
        if name.rsplit(".", 1)[-1].endswith("_gate"):
            return config.gate_lr_scale
        return config.vision_lr_scale if name.startswith("vision.") else 1.0

    groups = [{"params": [p for name, p in named_params if scale(name) == 1.0], "lr": config.lr}]  # group 0: logged
    for factor in sorted({scale(name) for name, _ in named_params} - {1.0}):
        groups.append({"params": [p for name, p in named_params if scale(name) == factor], "lr": config.lr * factor})
    return groups


def run_info(records: Sequence[dict], config: TrainConfig, images_root: Path, data: Path, val: Path | None,
             init: Path | None) -> dict[str, Any]:
    """The run.json fields that inference and evaluation read (see the run-directory contract)."""
    labels: set[str] = set()
    for record in records:
        label = record.get("label")
        labels.update([label] if isinstance(label, str) else [x for x in label or [] if isinstance(x, str)])

    def prompt_of(record: dict) -> str:
        return re.sub(r"<image>\s*", "", record["conversations"][0]["value"]).strip()

    classify = [r for r in records if r["task"] == "classify" and r["family"] != "few_shot" and len(r["images"]) == 1]
    classify.sort(key=lambda r: r["length"] != "short")  # the short answer is the label text
    class_answers = {}
    for record in classify:
        if isinstance(record.get("label"), str):
            class_answers.setdefault(record["label"], record["conversations"][1]["value"])
    captions = sorted((r for r in records if r["task"] == "caption"), key=lambda r: r["length"] != "short")
    return {
        # absolute: a relative path would mean something else from another working directory
        "images_root": str(Path(images_root).absolute()), "train_data": str(Path(data).absolute()),
        "val_data": str(Path(val).absolute()) if val else None,
        "image_size": config.image_size, "classes": sorted(labels),
        "class_answers": {label: class_answers.get(label, label) for label in sorted(labels)},
        "classify_prompt": prompt_of(classify[0]) if classify else None,
        "caption_prompt": prompt_of(captions[0]) if captions else None,
        "init": str(init) if init else None,
        # Answers learnt as templates with the measurement in the prompt: the assistant measures each image it
        # answers about and fills the slots (maemi.measure.slots).
        "measured_answers": any("template" in turn for r in records for turn in r["conversations"][1::2]),
        "train_config": config.to_dict(), "best": None,
    }


@torch.no_grad()
def validation_loss(model: MAEMI, val_set: InstructionDataset, config: TrainConfig, env: DistributedEnv,
                    device: torch.device, bf16: bool) -> float:
    """The training loss (averaged as config.loss_average says: per answer token, or per answer) over the whole
    validation set, each process taking a shard; early stopping and loss.png then compare like with like."""
    model.eval()
    model.text.use_full_rank()
    total, count = 0.0, 0
    for indices in chunks(range(env.rank, len(val_set), env.world_size), config.micro_batch):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(val_set.batch(indices, epoch=0), average=config.loss_average)
        n = val_set.target_tokens(indices) if config.loss_average == "token" else len(indices)
        total, count = total + loss.item() * n, count + n
    total, count = all_reduce_sum([total, count], env, device)
    set_train_mode(model, config)
    return total / count


def prepare_out_dir(out: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from, if any. A fresh run refuses a folder that already holds a run."""
    checkpoint = find_checkpoint(out)
    if not resume and (checkpoint is not None or (out / RUN_FILE).exists()):
        raise ResumeError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    return checkpoint if resume else None


# ------------------------------------------------------------------------------------------------ training


def evenly_spaced(records: Sequence[dict], limit: int) -> list[dict]:
    """At most `limit` of `records` (0: all), spread evenly through them, in their order."""
    if not limit or len(records) <= limit:
        return list(records)
    return [records[i * len(records) // limit] for i in range(limit)]


def image_size_for(records: Sequence[dict], images_root: Path, largest: int, multiple: int) -> int:
    """The training images' median shorter side rounded up to a multiple of `multiple`, at most `largest` (which is
    returned when no image can be read: those are reported when the dataset loads them)."""
    sides = []
    for path in sorted({path for record in records for path in record["images"]}):
        try:
            info = read_image_info(images_root / path)
        except (ImageReadError, OSError):
            continue
        sides.append(min(info.width, info.height))
    if not sides:
        return largest
    return min(largest, max(multiple, math.ceil(statistics.median_low(sides) / multiple) * multiple))


def train(config: TrainConfig, data: str | os.PathLike, val: str | os.PathLike | None,
          images_root: str | os.PathLike, out: str | os.PathLike, resume: bool = False,
          init: str | os.PathLike | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume, or fine-tune from `init`) and return a summary. Under torchrun, call it in every process."""
    env, device = init_distributed(config.device)
    try:
        with training_attention(device, config.use_bf16(device)):
            return _train(copy.deepcopy(config), Path(data), Path(val) if val else None, Path(images_root), Path(out),
                          resume, Path(init) if init else None, env, device, log or tqdm.write)
    finally:
        shutdown(env)


def _train(config: TrainConfig, data: Path, val: Path | None, images_root: Path, out: Path, resume: bool,
           init: Path | None, env: DistributedEnv, device: torch.device, log: Callable[[str], None]) -> dict:
    say = log if env.is_main else (lambda message: None)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    checkpoint = prepare_out_dir(out, resume)
    if resume and checkpoint is None:
        say(f"{out}: no checkpoint to resume from; starting from the beginning")
    barrier(env)  # every process has checked the folder before rank 0 writes into it
    train_records = read_records(data)
    val_records = read_records(val) if val else []

    # The model: from the checkpoint, from --init, or new with an answer vocabulary trained on these answers.
    if checkpoint is not None:
        model = MAEMI.from_pretrained(checkpoint, map_location=device)
        say(f"resuming from {checkpoint}")
    elif init is not None:
        model = MAEMI.from_pretrained(init, map_location=device)
        say(f"fine-tuning {init} (its model config and answer vocabulary)")
    else:
        answers = [answer_text(turn) for record in train_records for turn in record["conversations"][1::2]]
        vocab = AnswerVocab.train(answers, config.vocab_size)
        config.model.vocab_size = vocab.size
        if config.image_size_from_images:
            config.model.vision.image_size = image_size_for(train_records, images_root, config.model.vision.image_size,
                                                            config.model.vision.patch_size)
            say(f"image size {config.model.vision.image_size} (image_size_from_images: the training images' median "
                "shorter side, rounded up to the patch size, at most the configured size)")
        torch.manual_seed(derived_seed("init", config.seed))
        model = MAEMI(config.model, vocab).to(device)
    config.model = model.config

    cache = ImageCache(images_root, config.image_size)
    warmstart_rows: list[dict] = []
    if checkpoint is None and config.warmstart_epochs and config.train_vision:
        warmstart_rows = warm_start_vision(model.vision, train_records, val_records, cache, config, device, say)
    if config.few_shot_demos == "vision":
        if checkpoint is None and init is None and not warmstart_rows:
            raise ConfigError("few_shot_demos = 'vision' needs a trained ViT to choose by: a warm start "
                              "(warmstart_epochs > 0, with labelled images) or --init")
        train_records = few_shot_demos_by_vision(train_records, model.vision, cache, device, config.micro_batch, out,
                                                 resuming=checkpoint is not None, write=env.is_main, log=say)
    train_set = InstructionDataset(train_records, cache, model.processor, config.augment, config.seed, say, "train")
    val_set = InstructionDataset(evenly_spaced(val_records, config.val_loss_records), cache, model.processor, None,
                                 config.seed, say, "val")
    if not len(train_set):
        raise TrainingDataError(f"{data}: no usable training examples (see the skipped ones above)")
    has_val = len(val_set) > 0

    named_params = select_trainable(model, config)
    param_names = [name for name, _ in named_params]
    # Fused Adam: one kernel over all parameters. DyLoRA keeps B as one tensor per rank slice (~600 small tensors for
    # MiniLM), and the per-tensor loop of the default CPU implementation cost ~20 ms a step against ~4 (measured).
    optimizer = torch.optim.Adam(param_groups(named_params, config), lr=config.lr, weight_decay=config.weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    pool = epoch_pool(train_set, config.classify_repeat)
    steps_per_epoch = math.ceil(len(pool) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    if config.lr_schedule == "cosine":  # stepped after every optimizer step
        scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, total_steps)
    else:  # stepped on each validation
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.lr_factor,
                                                               patience=config.lr_patience)
    rank_generator = torch.Generator().manual_seed(derived_seed("dylora", config.seed))
    generators = {"dylora": rank_generator}
    progress = Progress()
    if checkpoint is not None:
        progress = Progress(**load_checkpoint(checkpoint, optimizer, scheduler, param_names, generators))
    keep_vision_fixed(model, config)

    out.mkdir(parents=True, exist_ok=True)
    info = run_info(train_records, config, images_root, data, val, init)
    if checkpoint is not None and (out / RUN_FILE).is_file():
        info["init"] = json.loads((out / RUN_FILE).read_text()).get("init")  # the run's start, not this resume's
    metrics = MetricsLog(out / METRICS_FILE, env.is_main, progress.step if checkpoint is not None else None)
    for row in warmstart_rows:
        metrics.write({"kind": "warmstart", "step": 0, **row})
    info["best"] = best_info(progress, has_val)
    if env.is_main:
        atomic_write_json(out / RUN_FILE, info)
    # A finished run resumed with more epochs or steps goes on; one that reached its limits has nothing to do.
    if progress.finished == "epochs" and progress.epoch < config.epochs or \
            progress.finished == "max_steps" and (not config.max_steps or progress.step < config.max_steps):
        progress.finished = None
    if progress.finished is None and progress.epoch >= config.epochs:
        progress.finished = "epochs"
    if progress.finished:
        say(f"{out}: training already finished ({progress.finished}); nothing to do")
        return summary(progress, out, env)

    bf16 = config.use_bf16(device)
    ddp_model = wrap_ddp(model, env, device)
    say(f"training {sum(p.numel() for _, p in named_params):,} parameters on {len(train_set)} examples "
        f"({len(pool)} per epoch with classify_repeat {config.classify_repeat}; {len(val_set)} val) for up to "
        f"{config.epochs} epochs of {steps_per_epoch} steps; device {device}, {env.world_size} process(es), "
        f"bf16 {'on' if bf16 else 'off'}")

    clock = time.perf_counter()

    def tick() -> None:  # training time so far, kept in the checkpoint
        nonlocal clock
        now = time.perf_counter()
        progress.train_seconds += now - clock
        clock = now

    def checkpoint_now() -> None:
        tick()
        if env.is_main:
            save_checkpoint(out, model, optimizer, scheduler, param_names, dataclasses.asdict(progress),
                            config.to_dict(), generators)

    bar = tqdm(total=total_steps, initial=progress.step, desc="train", dynamic_ncols=True,
               disable=not (env.is_main and config.progress))
    session_started = window_started = time.perf_counter()
    session_samples = 0
    set_train_mode(model, config)
    while progress.finished is None:
        epoch = progress.epoch
        steps = chunks([pool[i] for i in epoch_order(len(pool), config.seed, epoch)], config.batch_size)
        for step_indices in steps[progress.step_in_epoch:]:
            # ---- one optimizer step
            model.text.sample_rank(rank_generator)
            plan = plan_step(step_indices, config.micro_batch, env.rank, env.world_size)
            share, tokens = 0.0, 0  # this process's part of the step loss: sum of (n_j / N) x loss_j
            for j, (indices, weight) in enumerate(zip(plan.micro_batches, plan.weights)):
                torch.manual_seed(derived_seed("step", config.seed, progress.step, env.rank + j * env.world_size))
                last = j == len(plan.micro_batches) - 1
                with ddp_model.no_sync() if env.enabled and not last else nullcontext():
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        loss = ddp_model(train_set.batch(indices, epoch), average=config.loss_average)
                    (loss * weight).backward()
                share += loss.item() * weight / env.world_size
                tokens += train_set.target_tokens(indices) if weight else 0
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_([p for _, p in named_params], config.grad_clip)
            lr = optimizer.param_groups[0]["lr"]  # this step's (a cosine schedule moves it after the step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)  # None, not zero: unused DyLoRA columns must get no Adam update
            if config.lr_schedule == "cosine":
                scheduler.step()
            step_loss, tokens = all_reduce_sum([share, tokens], env, device)

            n = len(step_indices)
            progress.step += 1
            progress.step_in_epoch += 1
            progress.samples += n
            progress.answer_tokens += int(tokens)
            session_samples += n
            progress.epoch_loss_sum += step_loss * n
            progress.epoch_samples += n
            progress.window_loss_sum += step_loss * n
            progress.window_samples += n
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}",
                            samples_per_s=f"{session_samples / (time.perf_counter() - session_started):.1f}")
            if progress.step % config.log_every == 0:
                now = time.perf_counter()
                metrics.write({"kind": "step", "epoch": epoch + 1, "step": progress.step,
                               "train_loss": progress.window_loss_sum / progress.window_samples, "lr": lr,
                               "samples_per_s": progress.window_samples / max(now - window_started, 1e-9)})
                progress.window_loss_sum, progress.window_samples, window_started = 0.0, 0, now
            if config.max_steps and progress.step >= config.max_steps:
                progress.finished = "max_steps"
                break
            # (not on the epoch's last step: the end-of-epoch checkpoint follows at once)
            if config.checkpoint_every_steps and progress.step % config.checkpoint_every_steps == 0 and \
                    progress.step_in_epoch < len(steps):
                checkpoint_now()

        # ---- end of the epoch (or of training by max_steps)
        if progress.step_in_epoch == len(steps):
            progress.epoch, progress.step_in_epoch = progress.epoch + 1, 0
        train_loss = progress.epoch_loss_sum / max(progress.epoch_samples, 1)
        progress.epoch_loss_sum, progress.epoch_samples = 0.0, 0
        validate = progress.epoch % config.eval_interval == 0 or progress.finished is not None
        val_loss = validation_loss(model, val_set, config, env, device, bf16) if has_val and validate else None
        if validate:
            monitored = val_loss if has_val else train_loss
            if config.lr_schedule == "plateau":
                scheduler.step(monitored)
            improved = progress.best_val_loss is None or monitored < progress.best_val_loss
            if improved:
                progress.best_val_loss, progress.best_epoch, progress.bad_validations = monitored, progress.epoch, 0
                progress.best_step = progress.step
                model.text.use_full_rank()
                if env.is_main:
                    model.save_pretrained(out)  # the best model so far, adapters at r_max
                info["best"] = best_info(progress, has_val)
            else:
                progress.bad_validations += 1
                if has_val and config.early_stopping_patience and \
                        progress.bad_validations >= config.early_stopping_patience:
                    progress.finished = "early_stopping"
        if progress.finished is None and progress.epoch >= config.epochs:
            progress.finished = "epochs"
        metrics.write({"kind": "epoch", "epoch": progress.epoch, "step": progress.step, "train_loss": train_loss,
                       "val_loss": val_loss, "lr": optimizer.param_groups[0]["lr"],
                       "best": bool(validate and progress.best_epoch == progress.epoch)})
        say(f"epoch {progress.epoch}: train loss {train_loss:.4f}"
            + (f", val loss {val_loss:.4f}" if val_loss is not None else "")
            + (f" (best {progress.best_val_loss:.4f} at epoch {progress.best_epoch})" if has_val else ""))
        checkpoint_now()
        if env.is_main:
            atomic_write_json(out / RUN_FILE, info)
            plot_loss(metrics.rows, out / LOSS_PLOT)
    bar.close()

    model.text.use_full_rank()
    if env.is_main and not (out / "model.safetensors").is_file():
        model.save_pretrained(out)  # no validation ran: the last model is the run's model
    barrier(env)
    result = summary(progress, out, env)
    if env.is_main:
        seconds = progress.train_seconds
        tqdm.write(f"done ({progress.finished}): {progress.step} steps, {progress.samples} samples in {seconds:.1f} s: "
                   f"{result['samples_per_s']:.1f} samples/s, {result['answer_tokens_per_s']:.0f} answer tokens/s "
                   f"over {env.world_size} process(es) on {device}; best epoch {progress.best_epoch}; model in {out}")
    return result


def best_info(progress: Progress, has_val: bool) -> dict[str, Any] | None:
    if progress.best_epoch is None:
        return None
    return {"epoch": progress.best_epoch, "step": progress.best_step,
            "val_loss": progress.best_val_loss if has_val else None}


def summary(progress: Progress, out: Path, env: DistributedEnv) -> dict[str, Any]:
    """What train() returns: where things are and how fast it went (throughput only, no MFU: there is no peak
    figure worth quoting for a shared CPU)."""
    seconds = progress.train_seconds
    return {
        "out": str(out), "finished": progress.finished, "epochs": progress.epoch, "steps": progress.step,
        "samples": progress.samples, "best_epoch": progress.best_epoch,
        "best_step": progress.best_step, "best_val_loss": progress.best_val_loss,
        "train_seconds": round(seconds, 3),
        "samples_per_s": progress.samples / seconds if seconds else 0.0,
        "answer_tokens_per_s": progress.answer_tokens / seconds if seconds else 0.0,
        "world_size": env.world_size,
    }
