"""Dynamic batching: concurrent requests wait a few milliseconds to share one forward pass.

One thread per batcher owns the model call, so the network runs one batch at a time however
many requests arrive; requests wait on futures, from threads or from asyncio.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_STOP = object()


class BatcherClosedError(RuntimeError):
    """The batcher is stopped; no more work is accepted."""


class Batcher(Generic[T, R]):
    """Gathers items into lists of at most `max_size`, waiting at most `max_wait_ms` for more.

    `fn(items) -> results` must return one result per item, in order. An exception from `fn`
    fails every request of that batch (and only that batch).
    """

    def __init__(
        self,
        fn: Callable[[list[T]], list[R]],
        max_size: int,
        max_wait_ms: float,
        name: str = "batcher",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.fn = fn
        self.max_size = max_size
        self.max_wait = max_wait_ms / 1000.0
        self.name = name
        self.on_batch = on_batch
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return self._queue.qsize()

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._closed = False
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the queued work, then stop the thread."""
        with self._lock:
            self._closed = True
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def submit(self, item: T) -> Future[R]:
        """Queue one item; the future resolves with its result."""
        if self._closed or self._thread is None:
            raise BatcherClosedError(f"{self.name} is not running")
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future

    async def run(self, item: T) -> R:
        """Await one item's result from asyncio code."""
        return await asyncio.wrap_future(self.submit(item))

    def __call__(self, item: T) -> R:
        """Blocking call from a plain thread."""
        return self.submit(item).result()

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait
            stopping = False
            while len(batch) < self.max_size:
                remaining = deadline - time.monotonic()
                try:
                    nxt = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else (self._queue.get_nowait())
                    )
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                batch.append(nxt)
            self._run_batch(batch)  # type: ignore[arg-type]
            if stopping:
                return

    def _run_batch(self, batch: list[tuple[T, Future[R]]]) -> None:
        live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
        if not live:
            return
        started = time.perf_counter()
        try:
            results = self.fn([item for item, _ in live])
            if len(results) != len(live):
                raise RuntimeError(f"{self.name}: {len(results)} results for {len(live)} items")
        except BaseException as exc:
            log.exception("%s: batch of %d failed", self.name, len(live))
            for _, fut in live:
                fut.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(live), time.perf_counter() - started)
        for (_, fut), result in zip(live, results, strict=True):
            fut.set_result(result)
