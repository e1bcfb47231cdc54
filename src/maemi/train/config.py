"""Training configuration: the paper's recipe as defaults, overridable from a TOML/JSON file and `--key=value` flags.

Precedence: dataclass defaults < the config file < flags. Nested sections use dotted keys on the command line
(`--model.vision.dim=128`, `--augment.flips=false`) and tables in a file (`[model.vision]`). An unknown key is an
error that lists the valid ones; flag values are parsed by the field's type (`true`/`false`, numbers, `none`,
comma-separated tuples).

References: Srinivas et al. 2024 (MAEMI: Adam, lr 1e-3, batch 32, up to 50 epochs, early stopping, lr halved after
5 epochs without improvement); nanoGPT's `--batch_size=32` overrides (without its exec-based configurator).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from maemi.cpu import cpu_has_native_bf16
from maemi.model.config import MAEMIConfig, dataclass_in


class ConfigError(ValueError):
    pass


@dataclass
class AugmentConfig:
    """Per-sample augmentation of the [3, S, S] model inputs (training only; a pure function of seed, epoch, index).

    Micrographs have no canonical orientation, so flips and quarter turns are the safe ones. Crops zoom in (at most
    1/sqrt(crop_min_scale)) and jitter shifts grey levels: both move what a measured answer says (sizes in pixels,
    mean brightness) a little, so they stay mild by default."""

    flips: bool = True  # horizontal and vertical, each with probability 1/2
    rotations: bool = True  # a random multiple of 90 degrees
    crop_min_scale: float = 0.8  # random resized square crop of this area fraction or more; 1.0: no crops
    brightness: float = 0.05  # add a uniform shift in [-b, b] (inputs live in [-1, 1]); 0: off
    contrast: float = 0.05  # scale around the image mean by a factor in [1-c, 1+c]; 0: off

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_min_scale <= 1.0:
            raise ConfigError(f"augment.crop_min_scale must be in (0, 1], got {self.crop_min_scale}")
        if self.brightness < 0 or not 0 <= self.contrast < 1:
            raise ConfigError(f"augment: need brightness >= 0 and 0 <= contrast < 1, got {self.brightness}, "
                              f"{self.contrast}")


@dataclass
class TrainConfig:
    model: MAEMIConfig = field(default_factory=MAEMIConfig)  # model.vocab_size is set from the trained vocabulary
    vocab_size: int = 2048  # size asked of the answer BPE (smaller when the answers have fewer distinct pieces)

    # Optimisation: the paper's recipe.
    lr: float = 1e-3  # Adam
    gate_lr_scale: float = 1.0  # the fusion gates learn at lr * this (see trainer.param_groups)
    # The ViT learns at lr * this during instruction tuning (not in its warm start). At 1.0 the demo's instruction
    # tuning wiped out what the warm start had learnt (linear probe 0.80 -> 0.41, measured); LLaVA freezes its
    # vision encoder outright. 0 keeps the warm-started ViT as it is (frozen, in eval mode, no backward through it).
    vision_lr_scale: float = 1.0
    # Loss averaging: "sample" weighs every answer alike; "token" (LLaVA's) lets long descriptions drown the one-word
    # class answers, and the decoder then learnt the answer templates but not to read the image (measured).
    loss_average: Literal["sample", "token"] = "sample"
    classify_repeat: int = 1  # classification examples appear this many times per epoch (oversampling)
    weight_decay: float = 0.0
    batch_size: int = 32  # samples per optimizer step, over all processes
    micro_batch: int = 32  # samples per forward pass; gradients accumulate up to batch_size
    epochs: int = 50
    early_stopping_patience: int = 10  # validations without improvement before stopping (the paper gives none)
    # The validation loss over at most this many validation records, evenly spaced through the file (which holds
    # each image's questions together); 0: all. The warm start still uses every validation image.
    val_loss_records: int = 0
    # "plateau": the paper's, lr * lr_factor after lr_patience epochs without improvement. "cosine": linear warm-up
    # over warmup_steps, then cosine decay to zero at the last step (LLaVA, nanoGPT): what a run of one or two epochs
    # needs, since a plateau schedule never acts before the end of it.
    lr_schedule: Literal["plateau", "cosine"] = "plateau"
    warmup_steps: int = 0  # cosine only
    lr_patience: int = 5  # epochs without improvement before the learning rate is multiplied by lr_factor
    lr_factor: float = 0.5
    grad_clip: float = 1.0  # max global gradient norm; 0: off (the paper is silent; it keeps lr 1e-3 stable)
    max_steps: int = 0  # stop after this many optimizer steps; 0: no limit

    # Warm start (paper appendix A.6): the ViT and a linear head trained with cross-entropy on the image labels first.
    warmstart_epochs: int = 0
    warmstart_lr: float = 1e-3
    warmstart_batch_size: int = 32  # its own: the demo's ViT came out weaker at 16 (linear probe 0.925 vs 0.975)
    warmstart_ema_decay: float = 0.0  # keep the moving average of the ViT's weights, updated every step; 0: off
    # The few-shot records' demonstrations: "teacher", as `maemi teach` chose them (by a handcrafted embedding, before
    # there is a model); "vision", chosen again after the warm start by the ViT's cls embedding, as inference chooses
    # them, so the decoder learns how far to trust demonstrations as good as those it will be given (train/demos.py).
    few_shot_demos: Literal["teacher", "vision"] = "teacher"
    # A new model's input side: model.vision.image_size, or the training images' median shorter side rounded up to the
    # patch size where that is smaller. Resizing a 48-pixel crop up to 128 adds compute (7x the pixels), not detail.
    image_size_from_images: bool = False

    # What moves. All of it from scratch; under --init a lab may freeze parts (e.g. the vision encoder).
    train_vision: bool = True
    train_adapters: bool = True  # the DyLoRA-FA B columns of the text encoder
    train_decoder: bool = True
    train_special_tokens: bool = True  # the <image> and <Encode> embeddings

    augment: AugmentConfig = field(default_factory=AugmentConfig)

    seed: int = 0
    device: str = "auto"  # auto: CUDA when available (cuda:LOCAL_RANK under torchrun), else CPU
    # bf16 autocast. auto: on for CUDA with bf16 support, and on CPUs with native bf16 (AVX512-BF16/AMX), where the
    # default model trained 1.2x faster (0.29 vs 0.34 s per step of 16 samples, 2 threads, measured Nov 2026).
    bf16: Literal["auto", "on", "off"] = "auto"
    num_threads: int = 0  # torch CPU threads; 0: torch's default

    log_every: int = 10  # optimizer steps between metrics.jsonl rows
    eval_interval: int = 1  # epochs between validations (and best-model checks)
    checkpoint_every_steps: int = 0  # also checkpoint every N optimizer steps (mid-epoch); 0: at epoch ends only
    progress: bool = True  # tqdm bar on stderr

    def __post_init__(self) -> None:
        positive = {"batch_size": self.batch_size, "micro_batch": self.micro_batch, "epochs": self.epochs,
                    "log_every": self.log_every, "eval_interval": self.eval_interval, "vocab_size": self.vocab_size,
                    "warmstart_batch_size": self.warmstart_batch_size}
        bad = {name: value for name, value in positive.items() if value < 1}
        if bad:
            raise ConfigError(f"these settings must be at least 1: {bad}")
        if self.micro_batch > self.batch_size:
            raise ConfigError(f"micro_batch {self.micro_batch} is larger than batch_size {self.batch_size}")
        if self.lr <= 0 or not 0 < self.lr_factor < 1:
            raise ConfigError(f"need lr > 0 and 0 < lr_factor < 1, got lr={self.lr}, lr_factor={self.lr_factor}")
        if min(self.max_steps, self.warmstart_epochs, self.checkpoint_every_steps, self.num_threads,
               self.early_stopping_patience, self.lr_patience, self.warmup_steps, self.val_loss_records) < 0 \
                or self.grad_clip < 0:
            raise ConfigError("max_steps, warmstart_epochs, checkpoint_every_steps, num_threads, patience settings, "
                              "warmup_steps, val_loss_records and grad_clip must not be negative")
        if self.lr_schedule not in ("plateau", "cosine"):
            raise ConfigError(f"lr_schedule must be plateau or cosine, got {self.lr_schedule!r}")
        if self.loss_average not in ("sample", "token"):
            raise ConfigError(f"loss_average must be sample or token, got {self.loss_average!r}")
        if self.vision_lr_scale < 0 or self.gate_lr_scale < 0:
            raise ConfigError("vision_lr_scale and gate_lr_scale must not be negative")
        if not 0 <= self.warmstart_ema_decay < 1:
            raise ConfigError(f"warmstart_ema_decay must be in [0, 1), got {self.warmstart_ema_decay}")
        if self.classify_repeat < 1:
            raise ConfigError(f"classify_repeat must be at least 1, got {self.classify_repeat}")
        if self.few_shot_demos not in ("teacher", "vision"):
            raise ConfigError(f"few_shot_demos must be teacher or vision, got {self.few_shot_demos!r}")
        if self.bf16 not in ("auto", "on", "off"):
            raise ConfigError(f"bf16 must be auto, on or off, got {self.bf16!r}")

    @property
    def image_size(self) -> int:
        return self.model.vision.image_size

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def vision_fixed(self) -> bool:
        """Whether the ViT stays as it is during instruction tuning (not trained, or warm-started then kept)."""
        return not self.train_vision or self.vision_lr_scale == 0

    def use_bf16(self, device: torch.device) -> bool:
        if self.bf16 != "auto":
            return self.bf16 == "on"
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and cpu_has_native_bf16()


# ------------------------------------------------------------------------------------------------ loading


def load_train_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = (),
                      base: dict[str, Any] | None = None) -> TrainConfig:
    """Defaults (or `base`, e.g. a resumed run's saved config) < the TOML/JSON file at `path` < `--key=value` flags."""
    data: dict[str, Any] = {}
    if base:
        _merge(data, base)
    if path is not None:
        _merge(data, read_config_file(path))
    for key, value in parse_overrides(overrides):
        _set_dotted(data, key, value)
    return build_config(TrainConfig, data, "config")


SHIPPED_CONFIGS = Path(__file__).resolve().parent.parent / "configs"  # src/maemi/configs/NAME.toml


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A config file's path, or the name of one the package ships (`demo`, `neu`: src/maemi/configs/NAME.toml)."""
    path = Path(path)
    shipped = SHIPPED_CONFIGS / f"{path}.toml"
    # a folder of that name (`maemi demo --out demo` makes one) is not a config file: the shipped one is meant
    if not path.is_file() and not path.suffix and len(path.parts) == 1 and shipped.is_file():
        return shipped
    return path


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    path = resolve_config_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"config file {path}: cannot read it ({error.strerror or error})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as error:
        kind = "JSON" if path.suffix.lower() == ".json" else "TOML"
        raise ConfigError(f"config file {path}: not valid {kind} ({error})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a table/object at the top, got {type(data).__name__}")
    return data


def parse_overrides(args: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """["--lr=3e-4", "--model.vision.dim", "128"] -> [("lr", "3e-4"), ("model.vision.dim", "128")]."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; settings are given as --key=value")
        key, sep, value = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"--{key} needs a value: --{key}=VALUE")
            value, i = args[i + 1], i + 1
        pairs.append((key.replace("-", "_"), value))
        i += 1
    return pairs


def config_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """Every settable dotted key, e.g. "lr", "model.vision.dim", "augment.flips"."""
    keys = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = dataclass_in(hints[f.name])
        keys += config_keys(sub, f"{prefix}{f.name}.") if sub else [prefix + f.name]
    return keys


def build_config(cls: type, data: dict[str, Any], where: str) -> Any:
    """A dataclass from a (partial) nested dict: missing keys keep their defaults, values are checked and parsed."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = "" if where == "config" else where.removeprefix("config.") + "."
        raise ConfigError(f"unknown setting(s) {[prefix + k for k in unknown]}; valid settings: "
                          f"{', '.join(config_keys(cls, prefix))}")
    kwargs = {name: _coerce(value, hints[name], f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a value against a field's type hint; strings (from flags) are parsed into that type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        inner = [arg for arg in args if arg is not type(None)]
        return _coerce(value, inner[0], key)
    sub = dataclass_in(hint)
    if sub is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table of settings, got {value!r}")
        return build_config(sub, value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(item, args[0], key) for item in items)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        if isinstance(value, bool):
            return value
    elif hint is int:
        try:
            if isinstance(value, str):
                return int(value)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        except ValueError:
            pass
    elif hint is float:
        try:
            if isinstance(value, str):
                return float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        except ValueError:
            pass
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        return value
    raise ConfigError(f"{key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _set_dotted(data: dict[str, Any], key: str, value: str) -> None:
    *parents, leaf = key.split(".")
    node = data
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}  # "--lr.x=1" then fails to build: "config.lr: expected float, got {'x': '1'}"
        node = node[part]
    node[leaf] = value
