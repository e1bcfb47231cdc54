"""What this machine's CPU can do, where it decides how a model runs; and work spread over its cores."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import AbstractContextManager, nullcontext

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (without it, bf16 autocast on CPU is emulated and slower)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a private helper: absent from some builds
        return False


def training_attention(device: torch.device, bf16: bool) -> AbstractContextManager:
    """Where training runs bf16 autocast on a CPU, scaled_dot_product_attention's math backend instead of its flash
    kernel. Measured on the demo's text encoder (8 x 12 heads x 89 tokens x 32, padding mask, 2 threads, torch 2.13):
    forward and backward take 19 ms in the bf16 flash kernel and 8 ms in math (in fp32 the two are level), and demo
    training steps run about 10% faster (benchmarks/results/demo_runs.md). Elsewhere torch's own choice stands."""
    if device.type == "cpu" and bf16:
        return sdpa_kernel([SDPBackend.MATH])
    return nullcontext()


# Starting a spawned worker takes 1.5-4 s (torch and the measuring code imported afresh): a few images' measuring.
# With fewer items than this per worker, one process is as fast.
MIN_ITEMS_PER_WORKER = 8


def worker_count(items: int, requested: int | None = None) -> int:
    """How many processes to spread `items` over: `requested` (at most one per core and per item), else one per core
    while each gets MIN_ITEMS_PER_WORKER items; 1 means work in this process."""
    cores = os.cpu_count() or 1
    if requested is not None:
        return max(1, min(requested, cores, items))
    return max(1, min(cores, items // MIN_ITEMS_PER_WORKER))


def map_in_processes(fn: Callable, items: Iterable, workers: int, chunksize: int = 1) -> Iterator:
    """fn over items in `workers` processes of one torch thread each (they are the parallelism: N of them with N
    threads each would oversubscribe the cores), results in item order. Spawned, not forked: a child forked from a
    process whose PyTorch already ran its OpenMP threads hangs at the segmenter's first parallel region."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)
