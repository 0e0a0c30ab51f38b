"""The dynamic batcher: concurrent items share calls, results stay in order, failures stay local."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher, BatcherClosedError


def test_concurrent_items_are_batched_and_answered_in_order() -> None:
    sizes: list[int] = []

    def double(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.01)
        return [2 * x for x in items]

    batcher = Batcher(double, max_size=4, max_wait_ms=50)
    batcher.start()
    results: dict[int, int] = {}
    start = threading.Barrier(20)

    def call(x: int) -> None:
        start.wait()
        results[x] = batcher(x)

    threads = [threading.Thread(target=call, args=(x,)) for x in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    batcher.stop()
    assert results == {x: 2 * x for x in range(20)}
    assert sum(sizes) == 20 and max(sizes) <= 4 and len(sizes) < 20


def test_a_failing_batch_fails_only_its_own_items() -> None:
    def strict(items: list[int]) -> list[int]:
        if any(x < 0 for x in items):
            raise ValueError("negative")
        return items

    seen: list[tuple[int, float]] = []
    batcher = Batcher(strict, max_size=8, max_wait_ms=0, on_batch=lambda n, s: seen.append((n, s)))
    batcher.start()
    with pytest.raises(ValueError, match="negative"):
        batcher(-1)
    assert batcher(3) == 3
    batcher.stop()
    assert [n for n, _ in seen] == [1]  # only successful batches are observed
    with pytest.raises(BatcherClosedError):
        batcher.submit(1)


def test_asyncio_callers_share_a_batch() -> None:
    sizes: list[int] = []

    def identity(items: list[str]) -> list[str]:
        sizes.append(len(items))
        return items

    batcher = Batcher(identity, max_size=16, max_wait_ms=100)
    batcher.start()

    async def main() -> list[str]:
        return list(await asyncio.gather(*(batcher.run(f"q{i}") for i in range(10))))

    assert asyncio.run(main()) == [f"q{i}" for i in range(10)]
    batcher.stop()
    assert sizes == [10]


def test_wrong_result_count_is_an_error() -> None:
    batcher = Batcher(lambda items: items[:-1], max_size=2, max_wait_ms=0)
    batcher.start()
    with pytest.raises(RuntimeError, match="results for"):
        batcher("x")
    batcher.stop()
