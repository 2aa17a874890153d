"""Row 1: reading a job's output in 1 MiB reads, beside a raw connection and a naive proxy.

Every reader reads the same 64 blocks of the pattern, cycling through them. Before the
timed part, each reads all 64 blocks once and compares them with the expected bytes;
the timed reads check the length and spot-check bytes of every block.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from multiprocessing import connection
from multiprocessing.managers import BaseManager

import pytest
from _common import MiB, Peers, block, interleaved, median, spot_check, writer_argv
from _peers import AUTHKEY, NBLOCKS

import bgtask
from bgtask import _paths
from bgtask._supervisor.server import TaskManager

pytestmark = pytest.mark.benchmark(group="read: 1 MiB reads")


@pytest.fixture(scope="module")
def held_task(pool: bgtask.TaskPool) -> Iterator[bgtask.Task]:
    """A finished job whose 64 MiB of output the supervisor holds."""
    task = pool.spawn(writer_argv(NBLOCKS * MiB, wait=False), max_buffer=2 * NBLOCKS * MiB)
    try:
        assert task.wait(120) == 0
        assert task.stream("stdout").limit == NBLOCKS * MiB
        yield task
    finally:
        task.delete()


def _run(benchmark, read_block: Callable[[int], bytes]) -> None:
    for i in range(NBLOCKS):  # untimed: every byte once
        assert read_block(i) == block(i), f"block {i} differs"
    blocks = itertools.cycle(range(NBLOCKS))

    def one() -> None:
        i = next(blocks)
        data = read_block(i)
        if len(data) != MiB:
            raise AssertionError(f"read {len(data)} bytes, expected {MiB}")
        spot_check(i * MiB, data)

    benchmark.extra_info["bytes_per_round"] = MiB
    benchmark(one)


@pytest.mark.parametrize("kind", ["raw-conn", "raw-conn-4m"])
def test_read_raw_connection(benchmark, peers: Peers, sock_dir: str, kind: str) -> None:
    """Baseline: multiprocessing.connection send_bytes/recv_bytes over AF_UNIX (and, for
    reference, the same with the 4 MiB send buffer that a supervisor sets)."""
    address = os.path.join(sock_dir, "raw")
    peers.peer(kind, address)
    conn = connection.Client(address, "AF_UNIX", authkey=AUTHKEY)
    try:
        def read_block(i: int) -> bytes:
            conn.send_bytes(i.to_bytes(8, "little"))
            return conn.recv_bytes()

        _run(benchmark, read_block)
    finally:
        conn.close()


def test_read_naive_manager(benchmark, peers: Peers, sock_dir: str) -> None:
    """Baseline: a BaseManager proxy whose method returns the bytes."""
    address = os.path.join(sock_dir, "mgr")
    peers.peer("manager", address)

    class Manager(BaseManager):
        pass

    Manager.register("Blobs")
    m = Manager(address=address, authkey=AUTHKEY)
    m.connect()
    proxy = m.Blobs()  # type: ignore[attr-defined]
    _run(benchmark, proxy.read)


def test_read_bgtask(benchmark, held_task: bgtask.Task) -> None:
    """bgtask: ``stream.read(start, start + 1 MiB)`` on a connected task."""
    stream = held_task.stream("stdout")
    held_task.connect()
    _run(benchmark, lambda i: stream.read(i * MiB, (i + 1) * MiB))


def test_read_stock_proxy_on_supervisor(benchmark, held_task: bgtask.Task) -> None:
    """For reference: a stock BaseManager proxy calling a bgtask supervisor's stream_read."""
    pool = str(held_task.pool.path)
    token = _paths.read_token_file(pool, held_task.pid)[0]
    m = TaskManager(address=_paths.sock_path(pool, held_task.pid), authkey=_paths.authkey_from_token(token))
    m.connect()
    proxy = m.TaskState()  # type: ignore[attr-defined]
    _run(benchmark, lambda i: proxy.stream_read("stdout", i * MiB, (i + 1) * MiB, False, 0.0)[2])


def test_read_interleaved(benchmark, peers: Peers, sock_dir: str, held_task: bgtask.Task) -> None:
    """The raw connection and bgtask in interleaved blocks of 64 reads (the ratio the
    report uses). Timed: the whole run; ``extra_info``: the median read of each."""
    address = os.path.join(sock_dir, "raw")
    peers.peer("raw-conn", address)
    conn = connection.Client(address, "AF_UNIX", authkey=AUTHKEY)
    stream = held_task.stream("stdout")
    held_task.connect()

    def raw(i: int) -> bytes:
        conn.send_bytes(i.to_bytes(8, "little"))
        return conn.recv_bytes()

    def ours(i: int) -> bytes:
        return stream.read(i * MiB, (i + 1) * MiB)

    def block_of(read_block: Callable[[int], bytes]) -> Callable[[], float]:
        def run() -> float:
            t0 = time.perf_counter()
            for i in range(NBLOCKS):
                data = read_block(i)
                if len(data) != MiB:
                    raise AssertionError(f"read {len(data)} bytes, expected {MiB}")
                spot_check(i * MiB, data)
            return (time.perf_counter() - t0) / NBLOCKS
        return run

    try:
        for i in range(NBLOCKS):  # untimed: every byte once
            assert raw(i) == block(i) and ours(i) == block(i)
        times = benchmark.pedantic(lambda: interleaved({"raw_connection": block_of(raw),
                                                        "bgtask": block_of(ours)}, rounds=30), rounds=1)
    finally:
        conn.close()
    benchmark.extra_info["bytes_per_round"] = MiB
    for name, values in times.items():
        benchmark.extra_info[f"{name}_median_s"] = median(values)
