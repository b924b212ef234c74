"""Batching concurrent requests in front of one model.

Requests put their images on a queue; one worker takes the first waiting request, then whatever else
arrives within ``max_wait_ms`` (up to ``max_batch`` images), runs them as one forward pass in a single
inference thread, and hands each request its rows. One thread keeps the model's own threads from
competing with each other; one batch per pass amortises the fc layers' weight reads, which dominate
at small batches. ``max_batch=1`` runs requests one at a time (no batching), for comparison.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["Batcher", "BatchInfo"]


@dataclass
class BatchInfo:
    """How a request's images were run: the batch they were part of and its forward pass's time."""

    batch_size: int
    inference_ms: float


@dataclass
class _Job:
    images: Tensor
    future: asyncio.Future = field(repr=False)


class Batcher:
    """``await batcher.submit(images)`` -> (outputs for those images, :class:`BatchInfo`).

    ``fn`` maps a float (N, 3, H, W) batch to (N, ...) outputs; it runs in one dedicated thread.
    Start with :meth:`start` inside the event loop, stop with :meth:`stop`.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], *, max_batch: int = 16, max_wait_ms: float = 2.0) -> None:
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch}, {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._carry: _Job | None = None  # a job too big to join the last batch: it starts the next one
        self.batches = 0
        self.images = 0

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="alexnet-inference")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        while self._queue is not None and not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, images: Tensor) -> tuple[Tensor, BatchInfo]:
        if self._queue is None:
            raise RuntimeError("Batcher.start() has not been called")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(images, future))
        return await future

    async def _gather(self, first: _Job) -> list[_Job]:
        """The first job, plus those that arrive within the wait, up to ``max_batch`` images."""
        jobs, n = [first], len(first.images)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if n + len(job.images) > self.max_batch:
                self._carry = job
                break
            jobs.append(job)
            n += len(job.images)
        return jobs

    def _forward(self, x: Tensor) -> tuple[Tensor, float]:
        start = time.perf_counter()
        with torch.inference_mode():
            out = self.fn(x)
        return out, (time.perf_counter() - start) * 1000

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first, self._carry = self._carry or await self._queue.get(), None
            jobs = await self._gather(first)
            jobs = [j for j in jobs if not j.future.done()]  # a client that went away
            if not jobs:
                continue
            try:
                x = torch.cat([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
                out, ms = await loop.run_in_executor(self._executor, self._forward, x)
            except Exception as e:  # noqa: BLE001 - the error goes to every waiting request, the server goes on
                for j in jobs:
                    if not j.future.done():
                        j.future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(x)
            info, start = BatchInfo(len(x), ms), 0
            for j in jobs:
                rows = out[start : start + len(j.images)]
                start += len(j.images)
                if not j.future.done():
                    j.future.set_result((rows, info))
