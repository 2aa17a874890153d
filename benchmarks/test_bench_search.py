"""Row 6: ``search(status=...)`` over 100 live tasks, beside a naive serial search with
stock proxies and one with one connection per supervisor in 4 threads.

Every search must find exactly the 100 tasks. The PSS of the 100 supervisors is
recorded too (``extra_info``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from _common import median, pss_kib

import bgtask
from bgtask import _paths
from bgtask._client import connection as _protocol
from bgtask._supervisor.server import TaskManager

pytestmark = pytest.mark.benchmark(group="search: 100 live tasks")

COUNT = int(os.environ.get("BGTASK_BENCH_SEARCH_COUNT", "100"))


@pytest.fixture(scope="module")
def many_tasks(pool: bgtask.TaskPool) -> Iterator[list[int]]:
    tasks: list[bgtask.Task] = []
    try:
        for _ in range(COUNT):
            tasks.append(pool.spawn(["sleep", "900"]))
        yield sorted(t.pid for t in tasks)
    finally:
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda t: t.delete(), tasks))


def _running(infos: list[dict]) -> list[int]:
    return sorted(i["pid"] for i in infos if i["status"]["running"])


def test_search_naive_serial_stock_proxies(benchmark, pool: bgtask.TaskPool, many_tasks: list[int]) -> None:
    """Baseline: for each task, a stock manager connect + proxy + ``info()``, one after
    the other (a stock proxy opens several connections)."""
    path = str(pool.path)

    def search() -> list[int]:
        infos = []
        for pid in _paths.task_pids(path)[0]:
            token = _paths.read_token_file(path, pid)[0]
            m = TaskManager(address=_paths.sock_path(path, pid), authkey=_paths.authkey_from_token(token))
            m.connect()
            proxy = m.TaskState()  # type: ignore[attr-defined]
            infos.append(proxy.info())
            del proxy
        return _running(infos)

    assert benchmark.pedantic(search, rounds=3, warmup_rounds=1) == many_tasks


def test_search_one_connection_4_threads(benchmark, pool: bgtask.TaskPool, many_tasks: list[int]) -> None:
    """Baseline: one authenticated connection per supervisor, ``info()``, 4 threads."""
    path = str(pool.path)

    def one(pid: int) -> dict:
        conn = _protocol.open_connection(path, pid)
        try:
            return _protocol.call(conn, pid, "info", (), {})
        finally:
            conn.close()

    def search() -> list[int]:
        with ThreadPoolExecutor(4) as ex:
            return _running(list(ex.map(one, _paths.task_pids(path)[0])))

    assert benchmark.pedantic(search, rounds=10, warmup_rounds=1) == many_tasks


def test_search_bgtask(benchmark, pool: bgtask.TaskPool, many_tasks: list[int]) -> None:
    """bgtask: ``pool.search(status={"running": True})``."""

    def search() -> list[int]:
        return [t.pid for t in pool.search(status={"running": True})]

    assert benchmark.pedantic(search, rounds=10, warmup_rounds=1) == many_tasks
    values = [pss_kib(pid) for pid in many_tasks]
    benchmark.extra_info["supervisors"] = len(values)
    benchmark.extra_info["pss_kib_median"] = median(values)
