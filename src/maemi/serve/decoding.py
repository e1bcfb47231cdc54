"""Decoding, bounded twice: uploads are decoded (and measured, and previewed) in a pool of `max_decodes` threads, and
only while the memory their headers say they will take (budget.py) fits in `memory_bytes` together. However many
requests arrive at once, the rest wait as bytes, first come first served.

The memory an upload holds is given back when its decode ends, not when its request does: a request that gives up
(its timeout, a disconnect) does not stop a decode that has started, and the decode still holds its memory. A decode
that has not started is dropped: cancelling the awaiting task cancels the pool's future, which a thread pool drops if
it has not run yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class DecodePool:
    def __init__(self, max_decodes: int, memory_bytes: int) -> None:
        if max_decodes < 1 or memory_bytes < 1:
            raise ValueError(f"DecodePool needs max_decodes >= 1 and memory_bytes >= 1, got {max_decodes}, "
                             f"{memory_bytes}")
        self.memory_bytes = memory_bytes
        self.free = memory_bytes
        self._waiting: deque[tuple[int, asyncio.Future]] = deque()
        self._threads = ThreadPoolExecutor(max_workers=max_decodes, thread_name_prefix="maemi-decode")

    async def run(self, cost: int, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a decoding thread once `cost` bytes are free (an upload the budget let through never costs
        more than all of them: it is clamped, so that it runs alone)."""
        loop = asyncio.get_running_loop()
        cost = min(max(cost, 0), self.memory_bytes)
        await self._reserve(cost, loop)
        try:
            future: Future = self._threads.submit(functools.partial(fn, *args))
        except BaseException:
            self._release(cost)
            raise
        future.add_done_callback(lambda _: self._release_from(loop, cost))  # run, failed or dropped
        return await asyncio.wrap_future(future)

    async def _reserve(self, cost: int, loop: asyncio.AbstractEventLoop) -> None:
        if not self._waiting and cost <= self.free:
            self.free -= cost
            return
        turn = loop.create_future()
        self._waiting.append((cost, turn))
        try:
            await turn  # _release hands the memory over before it resolves this
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release(cost)  # given the memory just as the request gave up
            else:
                with contextlib.suppress(ValueError):  # _wake may have dropped it already
                    self._waiting.remove((cost, turn))
                self._wake()  # it may have been first in line
            raise

    def _release_from(self, loop: asyncio.AbstractEventLoop, cost: int) -> None:
        """_release from any thread (a decoding thread calls it when a decode ends)."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the server has stopped
            loop.call_soon_threadsafe(self._release, cost)

    def _release(self, cost: int) -> None:
        self.free += cost
        self._wake()

    def _wake(self) -> None:
        """Hand memory to the waiters in order, while the first one fits (no overtaking: a large upload is not
        starved by small ones)."""
        while self._waiting and (self._waiting[0][1].cancelled() or self._waiting[0][0] <= self.free):
            cost, turn = self._waiting.popleft()
            if not turn.cancelled():
                self.free -= cost
                turn.set_result(None)

    def close(self) -> None:
        """Drops the waiting decodes and waits for the running ones, which remove their temporary files when they end
        (uvicorn ends the process by its signal right after shutdown: threads still running would leave them)."""
        self._threads.shutdown(wait=True, cancel_futures=True)
