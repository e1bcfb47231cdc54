"""Full training state on disk, so that a run killed at any moment resumes exactly: safetensors + JSON, no pickle.

checkpoints/last/ holds
  config.json, model.safetensors, tokenizer.json   the model, as MAEMI.save_pretrained writes it (one loader)
  training_state.safetensors                       optimizer tensors (Adam moments, step counts) and RNG states
  training_state.json                              everything else: optimizer hyper-parameters and the names of
                                                   the parameters it holds, scheduler state, progress (epoch, step,
                                                   position in the epoch, best val loss, patience), the train config,
                                                   python's random state
The folder is written under a temporary name and renamed into place: a kill leaves either the old or the new
checkpoint. Renaming over a non-empty folder is impossible, so the old one is first moved aside to last.old (which
resume falls back to if a kill lands between the two renames).

References: nanoGPT and open_flamingo (full resume: model, optimizer, scheduler, iteration); safetensors.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from maemi.fileio import atomic_write_bytes, atomic_write_json
from maemi.model import MAEMI

STATE_TENSORS, STATE_JSON = "training_state.safetensors", "training_state.json"


class ResumeError(ValueError):
    pass


def checkpoint_dir(run: str | os.PathLike) -> Path:
    return Path(run) / "checkpoints" / "last"


def find_checkpoint(run: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    last = checkpoint_dir(run)
    for candidate in (last, last.with_name("last.old")):
        if (candidate / STATE_JSON).is_file():
            return candidate
    return None


# ------------------------------------------------------------------------------------------------ optimizer


def flatten_optimizer_state(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict -> (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer/{index}/{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


# ------------------------------------------------------------------------------------------------ random state


def capture_rng(generators: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """python random, numpy, torch (CPU and each CUDA device) and named generators -> (tensors, JSON-able)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    for name, generator in generators.items():
        tensors[f"rng/generator/{name}"] = generator.get_state()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = torch.from_numpy(keys.astype(np.int64))
    version, python_state, gauss = random.getstate()
    meta = {"python": [version, list(python_state), gauss],
            "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], generators: dict[str, torch.Generator]
                ) -> None:
    torch.set_rng_state(tensors["rng/torch"])
    cuda = sorted((int(k.rsplit("/", 1)[1]), v) for k, v in tensors.items() if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state for _, state in cuda])
    for name, generator in generators.items():
        generator.set_state(tensors[f"rng/generator/{name}"])
    numpy = meta["numpy"]
    np.random.set_state((numpy["kind"], tensors["rng/numpy"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    version, python_state, gauss = meta["python"]
    random.setstate((version, tuple(python_state), gauss))


# ------------------------------------------------------------------------------------------------ save / load


def save_checkpoint(run: str | os.PathLike, model: MAEMI, optimizer: torch.optim.Optimizer, scheduler: Any,
                    param_names: list[str], progress: dict[str, Any], train_config: dict[str, Any],
                    generators: dict[str, torch.Generator]) -> Path:
    """Write checkpoints/last/ atomically (see the module docstring)."""
    final = checkpoint_dir(run)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".last.", suffix=".tmp", dir=final.parent))
    try:
        model.save_pretrained(tmp)
        optimizer_tensors, optimizer_meta = flatten_optimizer_state(optimizer.state_dict())
        rng_tensors, rng_meta = capture_rng(generators)
        atomic_write_bytes(tmp / STATE_TENSORS, save({**optimizer_tensors, **rng_tensors}))
        atomic_write_json(tmp / STATE_JSON, {
            "progress": progress, "optimizer": optimizer_meta, "param_names": param_names,
            "scheduler": scheduler.state_dict(), "rng": rng_meta, "train_config": train_config,
        }, indent=None)
        _fsync_dir(tmp)
        old = final.with_name("last.old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def read_checkpoint_meta(directory: Path) -> dict[str, Any]:
    try:
        return json.loads((directory / STATE_JSON).read_text())
    except (OSError, ValueError) as error:
        raise ResumeError(f"checkpoint {directory / STATE_JSON}: unreadable ({error})") from None


def load_checkpoint(directory: Path, optimizer: torch.optim.Optimizer, scheduler: Any, param_names: list[str],
                    generators: dict[str, torch.Generator]) -> dict[str, Any]:
    """Restore optimizer, scheduler and RNG states in place (the model comes from MAEMI.from_pretrained(directory));
    returns the progress dict."""
    meta = read_checkpoint_meta(directory)
    if meta["param_names"] != param_names:
        changed = sorted(set(meta["param_names"]) ^ set(param_names))[:8]
        raise ResumeError(f"checkpoint {directory}: the trainable parameters differ from this run's (e.g. {changed}); "
                          f"resume with the train_* settings the run was started with")
    try:
        tensors = load_file(directory / STATE_TENSORS)
    except Exception as error:  # safetensors raises its own error types for a damaged file
        raise ResumeError(f"checkpoint {directory / STATE_TENSORS}: unreadable ({error})") from None
    optimizer.load_state_dict(unflatten_optimizer_state(tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    restore_rng(tensors, meta["rng"], generators)
    return meta["progress"]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
