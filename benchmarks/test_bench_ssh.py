"""Remote pools over OpenSSH: each figure beside its baseline through the same ssh
connection, in the same run (the ratios are the contract of issue 14). Run alone::

    python -m pytest -q -s benchmarks/test_bench_ssh.py
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
import sshd  # noqa: E402

import bgtask  # noqa: E402
from bgtask._client import sshmux  # noqa: E402

if sshd.available():
    pytest.skip(f"ssh benchmarks: {sshd.available()}", allow_module_level=True)

RESULTS: dict[str, float] = {}


def median(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[sshd.Server, bgtask.TaskPool]]:
    srv = sshd.start()
    old = dict(os.environ)
    os.environ.update(srv.env())
    pool = bgtask.TaskPool(f"{srv.url}/tmp/bgtb{uuid.uuid4().hex[:6]}?python={srv.python}")
    try:
        yield srv, pool
    finally:
        for t in pool.search():
            t.delete()
        pool.backend.close()  # type: ignore[attr-defined]
        os.environ.clear()
        os.environ.update(old)
        srv.stop()
        print("\nRemote pools:", {k: round(v, 6) for k, v in RESULTS.items()})


def _read_exact(fd: int, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = os.read(fd, n - len(buf))
        assert part
        buf += part
    return buf


def test_info_vs_raw_round_trip(env: tuple[sshd.Server, bgtask.TaskPool]) -> None:
    _srv, pool = env
    target = pool.backend.target  # type: ignore[attr-defined]
    sshmux.ensure_master(target)
    echo = sshmux.Session(target, "cat")  # a raw channel of the same master
    msg = b"x" * 64

    def raw() -> None:
        os.write(echo.stdin, msg)
        _read_exact(echo.stdout, 64)

    task = pool.spawn(["sleep", "60"])
    task.info(fresh=True)
    for _ in range(50):
        raw()
        task.info(fresh=True)
    RESULTS["raw_rtt"] = median(raw, 400)
    RESULTS["info"] = median(lambda: task.info(fresh=True), 400)
    echo.close()
    ratio = RESULTS["info"] / RESULTS["raw_rtt"]
    print(f"\ninfo {RESULTS['info'] * 1e6:.0f} us, raw 64-byte RTT {RESULTS['raw_rtt'] * 1e6:.0f} us: {ratio:.2f}x")
    assert ratio <= 2.5  # contract 2x; slack for a loaded machine
    task.delete()


def test_read_vs_raw_stream(env: tuple[sshd.Server, bgtask.TaskPool]) -> None:
    _srv, pool = env
    target = pool.backend.target  # type: ignore[attr-defined]
    size = 64 << 20
    task = pool.spawn(["head", "-c", str(size), "/dev/zero"], max_buffer=size, retain_output=size)
    task.wait(30)
    stream = task.stream("stdout")

    def read_all() -> None:
        pos = 0
        while pos < size:
            pos += len(stream.read(pos, pos + (1 << 20)))

    def raw() -> None:
        s = sshmux.Session(target, f"head -c {size} /dev/zero")
        n = 0
        while True:
            part = os.read(s.stdout, 1 << 20)
            if not part:
                break
            n += len(part)
        s.close()
        assert n == size

    RESULTS["read_MBps"] = size / median(read_all, 3) / 1e6
    RESULTS["raw_stream_MBps"] = size / median(raw, 3) / 1e6
    ratio = RESULTS["read_MBps"] / RESULTS["raw_stream_MBps"]
    print(f"\nread {RESULTS['read_MBps']:.0f} MB/s, raw stream {RESULTS['raw_stream_MBps']:.0f} MB/s: {ratio:.2f}")
    assert ratio >= 0.4  # contract 0.5
    task.delete()


def test_first_call(env: tuple[sshd.Server, bgtask.TaskPool], tmp_path_factory: pytest.TempPathFactory) -> None:
    _srv, pool = env
    target = pool.backend.target  # type: ignore[attr-defined]
    rtask = pool.spawn(["sleep", "60"])
    local_dir = f"/tmp/bgtl{uuid.uuid4().hex[:6]}"
    local = bgtask.TaskPool(local_dir)
    ltask = local.spawn(["sleep", "60"])
    try:
        bgtask.Task(rtask.pid, pool).info()  # the bridge and the forward exist
        sock = pool.backend._call("token", rtask.pid)[1]  # type: ignore[attr-defined]
        fwd = sshmux.forward_path(target, sock)

        def new_channel() -> None:  # connect through the forward, get the first bytes
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(fwd)
                s.recv(1)

        RESULTS["new_channel"] = median(new_channel, 50)
        RESULTS["first_local"] = median(lambda: bgtask.Task(ltask.pid, local).info(), 50)
        RESULTS["first_remote"] = median(lambda: bgtask.Task(rtask.pid, pool).info(), 50)
        budget = RESULTS["first_local"] + 2 * RESULTS["new_channel"]
        print(f"\nfirst call remote {RESULTS['first_remote'] * 1e3:.2f} ms, local "
              f"{RESULTS['first_local'] * 1e3:.2f} ms, new channel {RESULTS['new_channel'] * 1e3:.2f} ms "
              f"(budget {budget * 1e3:.2f} ms)")
        assert RESULTS["first_remote"] <= 2 * budget
    finally:
        ltask.delete()
        rtask.delete()
        import shutil

        shutil.rmtree(local_dir, ignore_errors=True)


def test_cold_start(env: tuple[sshd.Server, bgtask.TaskPool]) -> None:
    srv, pool = env
    target = pool.backend.target  # type: ignore[attr-defined]
    base = [*sshmux.ssh_command(), "-o", "ControlPath=none", "-l", sshd.USER, "-p", str(srv.port),
            "127.0.0.1", "true"]

    def fresh_ssh() -> None:
        subprocess.run(base, check=True, stdin=subprocess.DEVNULL, timeout=30)

    def cold() -> None:
        pool.backend.close()  # type: ignore[attr-defined]
        sshmux.stop_master(target)
        deadline = time.monotonic() + 5
        while sshmux.master_alive(target) and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.perf_counter()
        p = bgtask.TaskPool(str(pool))
        p.search()
        times.append(time.perf_counter() - t0)
        p.backend.close()  # type: ignore[attr-defined]

    times: list[float] = []
    RESULTS["fresh_ssh_true"] = median(fresh_ssh, 7)
    for _ in range(7):
        cold()
    RESULTS["cold_search"] = statistics.median(times)
    ratio = RESULTS["cold_search"] / RESULTS["fresh_ssh_true"]
    print(f"\ncold search {RESULTS['cold_search'] * 1e3:.0f} ms, fresh ssh true "
          f"{RESULTS['fresh_ssh_true'] * 1e3:.0f} ms: {ratio:.2f}x")
    assert ratio <= 1.6  # contract 1.2
