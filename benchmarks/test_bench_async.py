"""The asyncio API beside the blocking one (issue 16): ``await task.info(fresh=True)``
against ``task.info(fresh=True)`` and against ``asyncio.to_thread`` of it, interleaved in
the same run, on one CPU and on two; and ``search()`` over 100 tasks, async and blocking.
Timed: the whole run; ``extra_info``: the median call of each, and the ratios."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
from _common import interleaved, median, pin

import bgtask

pytestmark = pytest.mark.benchmark(group="async: the asyncio API beside the blocking one")

PLACEMENTS = {"same-cpu": (0, 0), "two-cpus": (0, 1)}
BLOCK = 200


@pytest.fixture(scope="module")
def idle_task(pool: bgtask.TaskPool) -> Iterator[bgtask.Task]:
    task = pool.spawn(["sleep", "600"], meta={"name": "bench-async"})
    try:
        yield task
    finally:
        task.delete()


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_async_info_interleaved(benchmark: Any, idle_task: bgtask.Task, placement: str) -> None:
    """Blocks of 200 ``info(fresh=True)`` calls: blocking, awaited on the loop, and
    ``await asyncio.to_thread(task.info, fresh=True)``, taking turns."""
    mine, theirs = PLACEMENTS[placement]
    if max(mine, theirs) >= (os.cpu_count() or 1):
        pytest.skip("needs two CPUs")
    loop = asyncio.new_event_loop()
    atask = bgtask.AsyncTask(idle_task.pid, idle_task.pool)
    idle_task.connect()
    assert loop.run_until_complete(atask.info(fresh=True))["meta"] == {"name": "bench-async"}

    def sync_block() -> float:
        t0 = time.perf_counter()
        for _ in range(BLOCK):
            idle_task.info(fresh=True)
        return (time.perf_counter() - t0) / BLOCK

    async def async_calls() -> float:
        t0 = time.perf_counter()
        for _ in range(BLOCK):
            await atask.info(fresh=True)
        return (time.perf_counter() - t0) / BLOCK

    async def thread_calls() -> float:
        t0 = time.perf_counter()
        for _ in range(BLOCK):
            await asyncio.to_thread(idle_task.info, fresh=True)
        return (time.perf_counter() - t0) / BLOCK

    def run() -> dict[str, list[float]]:
        return interleaved({"blocking": sync_block,
                            "async": lambda: loop.run_until_complete(async_calls()),
                            "to_thread": lambda: loop.run_until_complete(thread_calls())}, rounds=15)

    everything = os.sched_getaffinity(0)
    pin([os.getpid()], {mine})
    pin([idle_task.pid], {theirs})
    try:
        times = benchmark.pedantic(run, rounds=1, warmup_rounds=1)
    finally:
        pin([os.getpid()], everything)
        pin([idle_task.pid], everything)
        atask.disconnect()  # closes its sockets at once
        loop.close()
    med = {name: median(values) for name, values in times.items()}
    for name, value in med.items():
        benchmark.extra_info[f"{name}_median_s"] = value
    benchmark.extra_info["async_vs_blocking"] = med["async"] / med["blocking"]
    benchmark.extra_info["to_thread_vs_blocking"] = med["to_thread"] / med["blocking"]


def test_async_search_100(benchmark: Any, pool: bgtask.TaskPool) -> None:
    """``search()`` over 100 tasks whose status records are not used (every task is
    asked over a connection): async in one loop vs blocking, interleaved."""
    tasks = [pool.spawn(["sleep", "600"], meta={"i": i}) for i in range(100)]
    apool = bgtask.AsyncTaskPool(pool)
    loop = asyncio.new_event_loop()
    backend = pool.backend
    real_records = backend.records
    backend.records = lambda pids: {}  # type: ignore[method-assign]
    try:
        def sync_search() -> float:
            t0 = time.perf_counter()
            assert len(pool.search()) >= 100
            return time.perf_counter() - t0

        def async_search() -> float:
            t0 = time.perf_counter()
            assert len(loop.run_until_complete(apool.search())) >= 100
            return time.perf_counter() - t0

        times = benchmark.pedantic(lambda: interleaved({"blocking": sync_search, "async": async_search},
                                                       rounds=5), rounds=1, warmup_rounds=1)
    finally:
        backend.records = real_records  # type: ignore[method-assign]
        loop.close()
        for t in tasks:
            t.delete(timeout=1)
    med = {name: median(values) for name, values in times.items()}
    for name, value in med.items():
        benchmark.extra_info[f"{name}_median_s"] = value
    benchmark.extra_info["async_vs_blocking"] = med["async"] / med["blocking"]
