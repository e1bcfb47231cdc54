"""Decoding, bounded: uploads are decoded (and measured, and previewed) in a pool of `max_decodes` threads, so that
however many requests arrive at once, at most that many images are in memory as pixels; the others wait as bytes.

A request that gives up while waiting (its timeout, a disconnect) cancels its decode before it starts: cancelling the
awaiting task cancels the pool's future, which a thread pool drops if it has not run yet.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DecodePool:
    def __init__(self, max_decodes: int) -> None:
        if max_decodes < 1:
            raise ValueError(f"max_decodes must be 1 or more, got {max_decodes}")
        self._threads = ThreadPoolExecutor(max_workers=max_decodes, thread_name_prefix="maemi-decode")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._threads, functools.partial(fn, *args))

    def close(self) -> None:
        """Drops the waiting decodes and waits for the running ones, which remove their temporary files when they end
        (uvicorn ends the process by its signal right after shutdown: threads still running would leave them)."""
        self._threads.shutdown(wait=True, cancel_futures=True)
