"""Dynamic batching: requests that arrive together share one forward pass.

Each request submits one item under a key (what can be batched together: e.g. "answer with this generation
config"). A worker takes the first waiting item, collects more for up to `max_wait_ms` or until `max_batch`, groups
them by key and runs each group as one call in a single model thread (so calls never overlap on the model), then
answers every request. While a batch runs, new requests queue up and form the next batch without waiting.

Back-pressure: the queue is bounded (BatcherBusy when full: the server answers 503) and each request waits at most
`timeout_s` (BatcherTimeout: 504); an item whose caller gave up (timed out, cancelled because its request failed or
its client left) is dropped before it costs a forward pass. If a batch
call fails, its items are run one by one, so one bad request fails alone.

References: the dynamic batching of NVIDIA Triton ("max_queue_delay_microseconds", "preferred batch size") and of
TorchServe ("batch_size", "max_batch_delay").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# run(key, items) -> one result per item, in order; called in the model thread.
RunBatch = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class BatcherConfig:
    max_batch: int = 16  # items per model call (the Assistant's batch size)
    max_wait_ms: float = 5.0  # how long the first item of a batch waits for company
    max_queue: int = 256  # waiting items beyond which requests are refused (503)
    timeout_s: float = 120.0  # a request's wait, queue and model time included (504 after)

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or self.max_wait_ms < 0 or self.timeout_s <= 0:
            raise ValueError(f"BatcherConfig needs max_batch, max_queue >= 1, max_wait_ms >= 0 and timeout_s > 0, got "
                             f"{self}")


class BatcherBusy(RuntimeError):
    """The queue is full."""


class BatcherTimeout(TimeoutError):
    """The request was not answered within timeout_s."""


@dataclass
class _Job:
    key: Hashable
    item: Any
    future: asyncio.Future


@dataclass
class BatcherStats:
    requests: int = 0  # items run by the model
    batches: int = 0  # model calls
    largest_batch: int = 0


class Batcher:
    def __init__(self, run: RunBatch, config: BatcherConfig | None = None) -> None:
        self.run, self.config = run, config or BatcherConfig()
        self.stats = BatcherStats()
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maemi-model")

    async def start(self) -> None:
        self._queue = asyncio.Queue(maxsize=self.config.max_queue)
        self._worker = asyncio.create_task(self._work(), name="maemi-batcher")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._model_thread.shutdown(wait=True)

    @property
    def waiting(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def submit(self, key: Hashable, item: Any) -> Any:
        """The result for `item`; raises what the run raised for it, BatcherBusy or BatcherTimeout."""
        if self._queue is None:
            raise RuntimeError("Batcher.submit before start()")
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait(_Job(key, item, future))
        except asyncio.QueueFull:
            raise BatcherBusy(f"the server is busy: {self.config.max_queue} requests are already waiting; retry "
                              "shortly") from None
        try:
            return await asyncio.wait_for(future, self.config.timeout_s)  # cancels the future on timeout
        except TimeoutError:
            raise BatcherTimeout(f"no answer within the server's {self.config.timeout_s:g} s request timeout") from None

    async def _collect(self) -> list[_Job]:
        jobs = [await self._queue.get()]
        deadline = time.monotonic() + self.config.max_wait_ms / 1000
        while len(jobs) < self.config.max_batch:
            try:
                jobs.append(self._queue.get_nowait())  # those that queued while the last batch ran: no wait
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [job for job in jobs if not job.future.done()]  # a caller that timed out has cancelled its future

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            groups: dict[Hashable, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                group = [job for job in group if not job.future.done()]  # callers gone while an earlier group ran
                if not group:
                    continue
                outcomes = await loop.run_in_executor(self._model_thread, self._run_group, key,
                                                      [job.item for job in group])
                for job, (ok, value) in zip(group, outcomes):
                    if not job.future.done():
                        job.future.set_result(value) if ok else job.future.set_exception(value)

    def _run_group(self, key: Hashable, items: list[Any]) -> list[tuple[bool, Any]]:
        """(ok, result or exception) per item. In the model thread."""
        try:
            results = self.run(key, items)
            self._count(len(items))
            if len(results) != len(items):
                raise RuntimeError(f"batch run returned {len(results)} results for {len(items)} items")
            return [(True, r) for r in results]
        except Exception as error:
            if len(items) == 1:
                return [(False, error)]
        return [self._run_group(key, [item])[0] for item in items]  # find the bad item(s); the rest succeed

    def _count(self, n: int) -> None:
        self.stats.requests += n
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, n)
