"""Row 3: one ``info()`` call on a connected task, beside a bare BaseManager proxy call."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from multiprocessing.managers import BaseManager

import pytest
from _common import Peers, interleaved, median, pin, wait_until
from _peers import AUTHKEY

import bgtask
from bgtask import _paths
from bgtask._supervisor.server import TaskManager

pytestmark = pytest.mark.benchmark(group="calls: one call on a connected task")


@pytest.fixture(scope="module")
def idle_task(pool: bgtask.TaskPool) -> Iterator[bgtask.Task]:
    task = pool.spawn(["sleep", "600"], meta={"name": "bench"})
    try:
        yield task
    finally:
        task.delete()


def _bare_proxy(peers: Peers, sock_dir: str) -> object:
    address = os.path.join(sock_dir, "mgr")
    peers.peer("manager", address)

    class Manager(BaseManager):
        pass

    Manager.register("Blobs")
    m = Manager(address=address, authkey=AUTHKEY)
    m.connect()
    proxy = m.Blobs()  # type: ignore[attr-defined]
    assert proxy.ping() is None
    return proxy


def test_call_bare_proxy(benchmark, peers: Peers, sock_dir: str) -> None:
    """Baseline: a stock BaseManager proxy calling a method that returns None."""
    benchmark(_bare_proxy(peers, sock_dir).ping)  # type: ignore[attr-defined]


def test_call_bgtask_info(benchmark, idle_task: bgtask.Task) -> None:
    """bgtask: ``task.info(fresh=True)`` (the whole info dict, meta decoded)."""
    idle_task.connect()
    info = idle_task.info(fresh=True)
    assert info["pid"] == idle_task.pid and info["meta"] == {"name": "bench"}
    assert info["status"]["running"] is True
    result = benchmark(idle_task.info, fresh=True)
    assert result["pid"] == idle_task.pid


def test_call_stock_proxy_info_on_supervisor(benchmark, idle_task: bgtask.Task) -> None:
    """For reference: a stock BaseManager proxy calling a supervisor's info()."""
    pool = str(idle_task.pool.path)
    token = _paths.read_token_file(pool, idle_task.pid)[0]
    m = TaskManager(address=_paths.sock_path(pool, idle_task.pid), authkey=_paths.authkey_from_token(token))
    m.connect()
    proxy = m.TaskState()  # type: ignore[attr-defined]
    assert proxy.info()["pid"] == idle_task.pid
    benchmark(proxy.info)


PLACEMENTS = {"same-cpu": (0, 0), "two-cpus": (0, 1)}


@pytest.mark.parametrize("placement", list(PLACEMENTS))
def test_call_interleaved(benchmark, peers: Peers, sock_dir: str, idle_task: bgtask.Task, placement: str) -> None:
    """The bare proxy call, a bare proxy call returning an info-shaped dict, and
    ``info(fresh=True)``, in interleaved blocks of 200 calls, with this process and the
    servers pinned: on one CPU (a call costs the Python code on both sides and two
    context switches) or on two (it costs waking the other CPU, which dominates when it
    idles). Left to the scheduler, a run lands in either regime by chance, and a ratio of
    two benchmarks run one after the other compares the regimes, not the code. Timed:
    the whole run; ``extra_info``: the median call of each."""
    mine, theirs = PLACEMENTS[placement]
    if max(mine, theirs) >= (os.cpu_count() or 1):
        pytest.skip("needs two CPUs")
    proxy = _bare_proxy(peers, sock_dir)
    idle_task.connect()
    assert proxy.info()["streams"]["stdout"]["max_buffer"] == idle_task.info(fresh=True)["streams"][  # type: ignore[attr-defined]
        "stdout"]["max_buffer"]
    servers = [peers.procs[-1].pid, idle_task.pid]
    everything = os.sched_getaffinity(0)

    def block(fn: object, *args: object, **kw: object) -> float:
        t0 = time.perf_counter()
        for _ in range(200):
            fn(*args, **kw)  # type: ignore[operator]
        return (time.perf_counter() - t0) / 200

    def run() -> dict[str, list[float]]:
        return interleaved({"bare_proxy": lambda: block(proxy.ping),  # type: ignore[attr-defined]
                            "bare_proxy_info_dict": lambda: block(proxy.info),  # type: ignore[attr-defined]
                            "bgtask_info": lambda: block(idle_task.info, fresh=True)}, rounds=20)

    pin([os.getpid()], {mine})
    pin(servers, {theirs})
    try:
        times = benchmark.pedantic(run, rounds=1, warmup_rounds=1)
    finally:
        pin([os.getpid()], everything)
        pin(servers, everything)
    for name, values in times.items():
        benchmark.extra_info[f"{name}_median_s"] = median(values)


def test_call_usage_of_a_fifty_process_tree(benchmark, pool: bgtask.TaskPool) -> None:
    """``task.usage()`` of a job whose tree has 50 processes (the operations bar: 2 ms),
    beside, in interleaved blocks of 20 calls: ``info(fresh=True)`` on the same task (one
    call returning a dict, no /proc) and psutil walking the same tree from this process
    (``children(recursive=True)`` plus ``cpu_times``/``memory_info`` of each: what a user
    would write without ``usage()``). Timed: the whole run; ``extra_info``: the medians
    and the ratios."""
    import psutil

    task = pool.spawn(["/bin/sh", "-c", "for i in $(seq 49); do sleep 600 & done; echo ok; wait"])
    try:
        wait_until(lambda: task.usage()["processes"] == 50, timeout=30)
        assert task.stream("stdout").read(0) == b"ok\n"

        def psutil_walk() -> None:
            root = psutil.Process(task.pid)
            for p in [root, *root.children(recursive=True)]:
                p.cpu_times()
                p.memory_info()

        def block(fn: object, *args: object, **kw: object) -> float:
            t0 = time.perf_counter()
            for _ in range(20):
                fn(*args, **kw)  # type: ignore[operator]
            return (time.perf_counter() - t0) / 20

        def run() -> dict[str, list[float]]:
            return interleaved({"usage": lambda: block(task.usage),
                                "info_fresh": lambda: block(task.info, fresh=True),
                                "psutil_walk": lambda: block(psutil_walk)}, rounds=15)

        times = benchmark.pedantic(run, rounds=1, warmup_rounds=1)
        medians = {name: median(values) for name, values in times.items()}
        for name, value in medians.items():
            benchmark.extra_info[f"{name}_median_s"] = value
        benchmark.extra_info["usage_over_info"] = medians["usage"] / medians["info_fresh"]
        benchmark.extra_info["usage_over_psutil"] = medians["usage"] / medians["psutil_walk"]
    finally:
        task.delete()
