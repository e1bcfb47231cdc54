"""torchrun support: one process per device, DistributedDataParallel, rank 0 alone writes files.

Without torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) everything here is a no-op on one process. Backend:
nccl for CUDA, gloo for CPU (which is how the multi-process path is tested on a laptop or CI).

References: PyTorch "Getting Started with Distributed Data Parallel"; nanoGPT train.py (ddp setup, rank-0 logging).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel


@dataclass
class DistributedEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def pick_device(setting: str, env: DistributedEnv) -> torch.device:
    """"auto": cuda:LOCAL_RANK when CUDA is there, else CPU; anything else is taken as a torch device name."""
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(setting)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def init_distributed(device_setting: str = "auto") -> tuple[DistributedEnv, torch.device]:
    """Join the torchrun process group if launched by torchrun; returns the environment and this process's device."""
    if not launched_by_torchrun():
        env = DistributedEnv()
        return env, pick_device(device_setting, env)
    env = DistributedEnv(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    device = pick_device(device_setting, env)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return env, device


def wrap_ddp(model: nn.Module, env: DistributedEnv, device: torch.device) -> nn.Module:
    """DDP for several processes, the model itself for one.

    find_unused_parameters: a DyLoRA step at rank b leaves B columns b..r_max-1 unused. broadcast_buffers=False:
    the frozen int8 text weights are buffers, and re-broadcasting them before every forward would dominate the step
    (every process already holds the same ones). So the conv stem's BatchNorm running statistics stay per process,
    each from its own micro-batches, and rank 0's are the ones saved: close to, not equal to, one process's."""
    if not env.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=True, broadcast_buffers=False)


def all_reduce_sum(values: list[float], env: DistributedEnv, device: torch.device) -> list[float]:
    """Element-wise sum of `values` over all processes (float64, so sums of losses stay exact enough)."""
    if not env.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def barrier(env: DistributedEnv) -> None:
    if env.enabled:
        dist.barrier()


def shutdown(env: DistributedEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()
