"""Row 2: job -> supervisor -> reader, end to end, beside a raw pipe.

The same writer (1 MiB writes of the pattern) feeds a raw pipe read by this process, or
a bgtask job's stdout followed by this process. The writer has started and waits for a
go byte before the timed part begins, so interpreter start-up is not timed. Before the
timed rounds each reader follows one whole transfer and checks the CRC of every byte;
the timed rounds check the length and spot-check every chunk.

``BGTASK_BENCH_E2E_MIB`` changes the size (default 1024 MiB).

The ratio to the raw pipe depends on where the scheduler puts the writer, the
supervisor and the reader (on two CPUs a round can land anywhere from 30% to 100%); the
supervisor's own cost per GiB is steadier, and is recorded beside it: CPU time and
minor page faults (``/proc/PID/stat``) over the timed transfer, per GiB moved.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from typing import Any

import pytest
from _common import MiB, StreamCheck, interleaved, median, status_kib, writer_argv

import bgtask

pytestmark = pytest.mark.benchmark(group="e2e: job -> reader")

SIZE = int(os.environ.get("BGTASK_BENCH_E2E_MIB", "1024")) * MiB
ROUNDS = int(os.environ.get("BGTASK_BENCH_E2E_ROUNDS", "3"))
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


# -- the raw pipe ------------------------------------------------------------------------

def _pipe_setup(pipe_size: int) -> dict[str, Any]:
    r, w = os.pipe()
    if pipe_size:
        fcntl.fcntl(w, F_SETPIPE_SZ, pipe_size)
    p = subprocess.Popen(writer_argv(SIZE, wait=True), stdin=subprocess.PIPE, stdout=w,
                         stderr=subprocess.PIPE)
    os.close(w)
    assert p.stderr is not None
    assert p.stderr.read(1) == b"r"
    return {"proc": p, "fd": r}


def _pipe_read(state: dict[str, Any], full: bool = False) -> None:
    p, fd = state["proc"], state["fd"]
    check = StreamCheck(SIZE, full)
    p.stdin.write(b"g")
    p.stdin.flush()
    read = os.read
    while True:
        data = read(fd, MiB)
        if not data:
            break
        check.feed(data)
    check.done()


def _pipe_teardown(state: dict[str, Any]) -> None:
    p = state["proc"]
    os.close(state["fd"])
    p.stdin.close()
    p.stderr.close()
    assert p.wait(30) == 0


@pytest.mark.parametrize("pipe_size", [MiB, 0], ids=["1MiB-pipe", "default-pipe"])
def test_e2e_raw_pipe(benchmark, pipe_size: int) -> None:
    """Baseline: the writer into a raw pipe (1 MiB via F_SETPIPE_SZ, or the 64 KiB
    default), read here with os.read(fd, 1 MiB)."""
    state = _pipe_setup(pipe_size)
    _pipe_read(state, full=True)
    _pipe_teardown(state)

    def setup() -> tuple[tuple[dict[str, Any]], dict[str, Any]]:
        return (_pipe_setup(pipe_size),), {}

    benchmark.extra_info["bytes_per_round"] = SIZE
    benchmark.pedantic(_pipe_read, setup=setup, teardown=_pipe_teardown, rounds=ROUNDS)


# -- bgtask --------------------------------------------------------------------------------

def _task_setup(pool: bgtask.TaskPool, max_buffer: int) -> dict[str, Any]:
    task = pool.spawn(writer_argv(SIZE, wait=True), max_buffer=max_buffer)
    assert task.stream("stderr").read(timeout=30) == b"r"
    task.connect()
    return {"task": task, "rss0": status_kib(task.pid, "VmRSS")}


def _cost(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, every thread) and minor page faults of *pid* so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    # After the command: state is fields[0], so minflt (10th field) is fields[7],
    # utime and stime (14th, 15th) fields[11] and fields[12].
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def _task_read(state: dict[str, Any], full: bool = False) -> None:
    task: bgtask.Task = state["task"]
    check = StreamCheck(SIZE, full)
    task.stream("stdin").write(b"g")
    for chunk in task.stream("stdout").follow():
        check.feed(chunk)
    check.done()


def _task_teardown(state: dict[str, Any], peaks: list[int]) -> None:
    task: bgtask.Task = state["task"]
    # VmHWM: the supervisor's peak resident memory, over its whole life.
    peaks.append(status_kib(task.pid, "VmHWM") - state["rss0"])
    assert task.wait(30) == 0
    task.delete()


@pytest.mark.parametrize("max_buffer", [64 * MiB, 4 * MiB], ids=["max_buffer=64MiB", "max_buffer=4MiB"])
def test_e2e_bgtask(benchmark, pool: bgtask.TaskPool, max_buffer: int) -> None:
    """bgtask: the writer as a job; ``stream("stdout").follow()`` here."""
    peaks: list[int] = []
    state = _task_setup(pool, max_buffer)
    _task_read(state, full=True)
    _task_teardown(state, peaks)

    def setup() -> tuple[tuple[dict[str, Any]], dict[str, Any]]:
        return (_task_setup(pool, max_buffer),), {}

    benchmark.extra_info["bytes_per_round"] = SIZE
    benchmark.extra_info["max_buffer"] = max_buffer
    benchmark.pedantic(_task_read, setup=setup, teardown=lambda s: _task_teardown(s, peaks),
                       rounds=ROUNDS)
    # The supervisor's memory is bounded by max_buffer (plus the reply in flight).
    benchmark.extra_info["supervisor_peak_growth_kib"] = max(peaks)


def test_e2e_interleaved(benchmark, pool: bgtask.TaskPool) -> None:
    """The raw pipe (1 MiB) and bgtask (default max_buffer) in interleaved rounds (the
    ratio the report uses). Timed: the whole run; ``extra_info``: the median transfer of
    each."""
    peaks: list[int] = []

    def pipe() -> float:
        state = _pipe_setup(MiB)
        t0 = time.perf_counter()
        _pipe_read(state)
        elapsed = time.perf_counter() - t0
        _pipe_teardown(state)
        return elapsed

    costs: list[tuple[float, int]] = []  # the supervisor's CPU s and faults per GiB

    def task() -> float:
        state = _task_setup(pool, 64 * MiB)
        pid = state["task"].pid
        cpu0, faults0 = _cost(pid)
        t0 = time.perf_counter()
        _task_read(state)
        elapsed = time.perf_counter() - t0
        cpu1, faults1 = _cost(pid)
        costs.append(((cpu1 - cpu0) * 1024 * MiB / SIZE, (faults1 - faults0) * 1024 * MiB // SIZE))
        _task_teardown(state, peaks)
        return elapsed

    times = benchmark.pedantic(lambda: interleaved({"raw_pipe_1MiB": pipe, "bgtask": task}, ROUNDS + 2),
                               rounds=1)
    benchmark.extra_info["bytes_per_round"] = SIZE
    for name, values in times.items():
        benchmark.extra_info[f"{name}_median_s"] = median(values)
    benchmark.extra_info["supervisor_peak_growth_kib"] = max(peaks)
    benchmark.extra_info["supervisor_cpu_ms_per_gib"] = [round(c * 1000) for c, _f in costs]
    benchmark.extra_info["supervisor_faults_per_gib"] = [f for _c, f in costs]
    benchmark.extra_info["round_ratios_pct"] = [
        round(p / b * 100) for p, b in zip(times["raw_pipe_1MiB"], times["bgtask"], strict=True)]
