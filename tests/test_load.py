"""Load: many clients on one supervisor, many tasks in one pool, a job that writes far
faster than anyone reads."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from helpers import py, wait_for

import bgtask

LINES = 20000
LINE = 9  # b"%08d\n"
#: a client: consuming reads via the raw method (which reports the offsets, so that the
#: test can check how the reads tile the stream), and info, meta, peeks and messages.
_CLIENT = r'''
import json, sys, bgtask
from bgtask import OutputGoneError

def client(task, ident, out):
    reads = []
    out["reads"] = reads
    stdout = task.stream("stdout")
    data = task.stream("data")
    i = 0
    while True:
        pos, nxt, chunk, limit, eof = task.call_remote_method("stream_read", "stdout", None, None, True, 0.2)
        if chunk:
            reads.append((pos, chunk.decode()))
        info = task.info(fresh=True)
        assert info["pid"] == task.pid
        meta = task.apply_meta({"c%d" % ident: i})
        assert meta["c%d" % ident] == i
        try:
            peek = stdout.read(max(0, limit - 18), limit)
            assert len(peek) <= 18
        except OutputGoneError:
            pass  # consumed meanwhile by another client: expected
        if i < 10:
            data.write((ident, i))
        i += 1
        if eof and not chunk and i >= 10:
            break
    out["iterations"] = i

if __name__ == "__main__":
    out = {}
    client(bgtask.Task(int(sys.argv[1])), int(sys.argv[2]), out)
    print(json.dumps(out))
'''


@pytest.mark.timeout(60)
def test_64_clients_threads_and_processes_on_one_supervisor(pool: bgtask.TaskPool) -> None:
    code = ("import sys\n"
            "w = sys.stdout.write\n"
            f"for i in range({LINES}):\n"
            "    w(f'{i:08d}\\n')\n"
            "    if i % 50 == 0: sys.stdout.flush()\n")
    # A small max_buffer: the job is paced by the readers, and reads race for the output.
    task = pool.spawn(py(code), max_buffer=4096)
    try:
        ns: dict[str, Any] = {}
        exec(compile(_CLIENT, "<client>", "exec"), ns)
        env = {**os.environ, "BGTASK_POOL": str(pool.path)}
        procs = [subprocess.Popen(py(_CLIENT) + [str(task.pid), str(i)], stdout=subprocess.PIPE, env=env)
                 for i in range(32)]
        results: list[dict[str, Any]] = [{} for _ in range(32)]
        errors: list[BaseException] = []

        def run(i: int) -> None:
            try:
                ns["client"](bgtask.Task(task.pid, pool), 32 + i, results[i])
            except BaseException as exc:  # noqa: BLE001 -- reported below
                errors.append(exc)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(32)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(50)
        for p in procs:
            out, _ = p.communicate(timeout=50)
            assert p.returncode == 0
            results.append(json.loads(out))
        elapsed = time.monotonic() - t0
        assert not errors, errors[:3]
        # Every consuming read got a distinct range; together they are the whole output,
        # each byte exactly once.
        reads = sorted((pos, chunk) for r in results for pos, chunk in r["reads"])
        offset = 0
        for pos, chunk in reads:
            assert pos == offset, "a gap or an overlap between consuming reads"
            offset += len(chunk)
        assert offset == LINES * LINE
        assert "".join(chunk for _, chunk in reads) == "".join(f"{i:08d}\n" for i in range(LINES))
        # Every message arrived once, every client's last meta value is there.
        messages = task.stream("data").read()
        assert sorted(messages) == sorted((c, i) for c in range(64) for i in range(10))
        meta = task.info(fresh=True)["meta"]
        assert meta == {f"c{c}": r["iterations"] - 1 for c, r in
                                              zip(list(range(32, 64)) + list(range(32)), results, strict=True)}
        assert task.wait(timeout=10) == 0
        assert elapsed < 45
    finally:
        task.delete()


@pytest.mark.timeout(120)
def test_200_live_tasks_in_one_pool(pool: bgtask.TaskPool) -> None:
    n = 200
    tasks: list[bgtask.Task] = []
    try:
        t0 = time.monotonic()
        for i in range(n):
            tasks.append(pool.spawn(["sleep", "60"], meta={"group": i % 4, "i": i}))
        spawn_time = time.monotonic() - t0
        t0 = time.monotonic()
        found = pool.search()
        search_time = time.monotonic() - t0
        assert found == sorted(tasks, key=lambda t: t.pid)
        assert [t.info()["meta"]["i"] for t in found] == [t.info()["meta"]["i"] for t in sorted(
            tasks, key=lambda t: t.pid)]
        group1 = pool.search(meta={"group": 1})
        assert sorted(t.info()["meta"]["i"] for t in group1) == list(range(1, n, 4))
        assert len(pool.search(where=lambda info: info["meta"]["i"] < 10)) == 10
        assert len(pool.search(status={"running": True})) == n
        # A few end: search still tells them apart.
        for t in tasks[:5]:
            t.kill()
            t.wait(timeout=10)
        assert len(pool.search(status={"running": False})) == 5
        print(f"\n200 tasks: spawn {spawn_time:.2f} s ({spawn_time / n * 1000:.1f} ms each), "
              f"search {search_time:.2f} s")
        assert spawn_time < 60
        assert search_time < 10
    finally:
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as ex:
            list(ex.map(lambda t: t.delete(timeout=1.0), tasks))
        print(f"delete {time.monotonic() - t0:.2f} s")
    assert pool.search() == []


def _kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("on_full", ["block", "drop"])
def test_a_job_writing_far_faster_than_anyone_reads(pool: bgtask.TaskPool, on_full: str) -> None:
    """Memory stays within max_buffer (plus retention and the pipe's chunk): the job
    blocks ("block") or the oldest bytes go ("drop")."""
    max_buffer, retain = 4 << 20, 1 << 20
    # yes writes "y\n" as fast as the pipe takes it: byte k is "y" for even k.
    task = pool.spawn(["yes"], max_buffer=max_buffer, retain_output=retain, on_full=on_full)
    try:
        out = task.stream("stdout")
        out.info()  # the supervisor has loaded its server by now
        base = _kib(task.pid, "VmRSS")
        time.sleep(1.0)
        task.pause()  # (a still picture: under "drop" the window moves at GB/s)
        time.sleep(0.2)
        info = task.info(fresh=True)["streams"]["stdout"]
        if on_full == "block":
            assert info["unread"] == max_buffer and info["dropped"] == 0
        else:
            assert info["limit"] > 10 * max_buffer, "the job was not writing fast"
            assert info["dropped"] == info["limit"] - info["unread"] and info["unread"] <= max_buffer
        # read some, peek some: the bytes are the job's, at their offsets
        pattern = {0: b"y\n", 1: b"\ny"}
        chunk = out.read()
        assert len(chunk) == info["unread"]
        assert chunk == pattern[info["cursor"] % 2] * (len(chunk) // 2)
        first = out.start
        assert out.read(first, first + 1000) == pattern[first % 2] * 500
        task.resume()
        time.sleep(0.3)
        info = task.info(fresh=True)["streams"]["stdout"]
        assert info["limit"] - info["start"] <= max_buffer + retain
        peak = _kib(task.pid, "VmHWM")
        # The supervisor's peak memory: its size when idle plus a few times what it may
        # hold (allocator slack) -- not the gigabytes the job wrote ("drop").
        bound = base + 4 * (max_buffer + retain) // 1024 + 16 * 1024
        assert peak < bound, (peak, base, info)
    finally:
        task.delete()


def test_many_clients_connect_and_disconnect_quickly(pool: bgtask.TaskPool) -> None:
    """Connection churn: each call on a fresh handle (connect, authenticate, call, drop)
    from 8 threads; the supervisor's threads and fds do not pile up."""
    task = pool.spawn(["sleep", "60"])
    try:
        task.info()
        fds_before = len(os.listdir(f"/proc/{task.pid}/fd"))

        def churn(_: int) -> None:
            for _ in range(40):
                h = bgtask.Task(task.pid, pool)
                assert h.info()["pid"] == task.pid
                h.disconnect()

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(churn, range(8)))
        wait_for(lambda: len(os.listdir(f"/proc/{task.pid}/fd")) <= fds_before + 2, timeout=5)
        assert len(os.listdir(f"/proc/{task.pid}/task")) < 20
    finally:
        task.delete()
