"""Row 5: the memory of idle supervisors (PSS, with 15 of them running), beside idle
naive manager servers (a fresh Python + ``multiprocessing.managers`` each).

PSS (proportional set size) charges each shared page to its sharers in equal parts, so
it depends on how many run at once: both sides are measured with the same number
running. The timed part is only the reading of /proc; the numbers are in
``extra_info``. The imports check spawns one supervisor under ``strace`` and lists the
Python files it opens from its start to its first answer.

After a burst (issue 12): RSS of supervisors 5 s after their job's 64 MiB of output was
read, beside an idle supervisor started the same way, forked from the template and as a
fresh interpreter (the bar: <= 16 MB every time).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Iterator

import pytest
from _common import PY, Peers, kill_and_wait, median, pss_kib

import bgtask

pytestmark = pytest.mark.benchmark(group="memory: idle supervisors")

COUNT = int(os.environ.get("BGTASK_BENCH_IDLE_COUNT", "15"))
#: modules a supervisor must not load (what it does not need). Not ``enum``: ``socket`` and
#: ``signal``, which the manager needs, import it.
FORBIDDEN = ("dill", "filelock", "typing", "shared_memory", "secrets", "cli", "_task", "_pool", "_codec",
             "_format")


@pytest.fixture(scope="module")
def idle_tasks(pool: bgtask.TaskPool) -> Iterator[list[bgtask.Task]]:
    tasks: list[bgtask.Task] = []
    try:
        for _ in range(COUNT):
            tasks.append(pool.spawn(["sleep", "600"]))
        for t in tasks:  # each has served a connection, as after a search
            t.info()
            t.disconnect()
        time.sleep(0.5)
        yield tasks
    finally:
        for t in tasks:
            t.delete()


def _pss_all(pids: list[int]) -> list[int]:
    return [pss_kib(pid) for pid in pids]


def _record(benchmark, pids: list[int]) -> None:
    values = benchmark.pedantic(_pss_all, (pids,), rounds=3)
    benchmark.extra_info["count"] = len(pids)
    benchmark.extra_info["pss_kib_median"] = median(values)
    benchmark.extra_info["pss_kib_max"] = max(values)
    benchmark.extra_info["pss_kib_total"] = sum(values)


def test_memory_idle_naive_managers(benchmark, peers: Peers, sock_dir: str) -> None:
    """Baseline: COUNT idle BaseManager servers, each a fresh ``python`` process."""
    pids = []
    for i in range(COUNT):
        p, _line = peers.peer("idle-manager", os.path.join(sock_dir, f"m{i}"))
        pids.append(p.pid)
    time.sleep(0.5)
    _record(benchmark, pids)


def test_memory_idle_supervisors(benchmark, idle_tasks: list[bgtask.Task]) -> None:
    """bgtask: COUNT idle supervisors (each has answered one info())."""
    _record(benchmark, [t.pid for t in idle_tasks])


def _supervisor_modules(pool: bgtask.TaskPool, tmp: str) -> set[str]:
    """The Python modules a real supervisor loads from its start until it has served a
    call: a task spawned under ``strace -f -e openat`` (``sys.executable`` is pointed at a
    wrapper for that one spawn)."""
    log = os.path.join(tmp, "openat.log")
    wrapper = os.path.join(tmp, "python-under-strace")
    with open(wrapper, "w") as f:
        # -D: strace runs as a detached grandchild, so that the process spawn() waits for
        # is the interpreter itself (which exits after its fork), not strace.
        f.write(f'#!/bin/sh\nexec strace -D -f -qq -e trace=openat -o {log} {PY} "$@"\n')
    os.chmod(wrapper, 0o700)
    real, sys.executable = sys.executable, wrapper
    try:
        task = pool.spawn(["sleep", "600"])
    finally:
        sys.executable = real
    try:
        task.info()
    finally:
        task.delete()
        for pid in _pids_with_arg(log):  # strace ends with its tracee; make sure
            kill_and_wait(pid, 2.0)
    modules = set()
    with open(log) as f:
        for line in f:
            m = re.search(r'"([^"]+\.pyc?)"', line)
            if m is None or "= -1" in line:
                continue
            path = m.group(1)
            parts = [p for p in path.split("/") if p != "__pycache__"]
            name = parts[-1].split(".")[0]
            modules.add(parts[-2] if name == "__init__" else name)
            if len(parts) > 1:
                modules.add(parts[-2] + "." + name)
    return modules


def _pids_with_arg(arg: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if os.fsencode(arg) in f.read().split(b"\0"):
                    found.append(int(name))
        except (OSError, ValueError):
            continue
    return found


def test_supervisor_imports_nothing_it_does_not_need(benchmark, pool: bgtask.TaskPool, sock_dir: str) -> None:
    """A real supervisor, from exec to its first answer, loads no dill, filelock, typing,
    shared_memory... (what it does not need)."""
    if shutil.which("strace") is None:
        pytest.skip("needs strace")
    modules = benchmark.pedantic(_supervisor_modules, (pool, sock_dir), rounds=1)
    found = sorted(m for m in FORBIDDEN if m in modules)
    benchmark.extra_info["supervisor_modules_not_needed"] = found
    benchmark.extra_info["supervisor_python_modules"] = sorted(m for m in modules if "." not in m)
    assert not found, f"the supervisor imports {found}"


BURST = 64 << 20


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def _after_burst(pool: bgtask.TaskPool, n: int) -> dict[str, list[int]]:
    idle = pool.spawn(["sleep", "600"])
    tasks = [pool.spawn(["head", "-c", str(BURST), "/dev/zero"]) for _ in range(n)]
    try:
        idle.info()
        for t in tasks:
            out = t.stream("stdout")
            got = 0
            while got < BURST:
                got += len(out.read(timeout=5))
        time.sleep(5)
        return {"idle": [_rss_kib(idle.pid)], "after_burst": [_rss_kib(t.pid) for t in tasks]}
    finally:
        for t in [idle, *tasks]:
            t.delete()


@pytest.mark.parametrize("template", ["1", "0"], ids=["template", "fresh"])
def test_memory_after_burst(benchmark, pool: bgtask.TaskPool, monkeypatch: pytest.MonkeyPatch,
                            template: str) -> None:
    """RSS (kB) of 3 supervisors 5 s after each job's 64 MiB were read, and of an idle one."""
    monkeypatch.setenv("BGTASK_TEMPLATE", template)
    found = benchmark.pedantic(_after_burst, (pool, 3), rounds=1)
    benchmark.extra_info["idle_rss_kib"] = found["idle"]
    benchmark.extra_info["after_burst_rss_kib"] = found["after_burst"]
    benchmark.extra_info["growth_kib"] = [r - found["idle"][0] for r in found["after_burst"]]
