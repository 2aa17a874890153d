"""Shared pieces of the benchmarks: the test pattern, peer processes, /proc readings.

The output every benchmark reads is the same pattern, written by :data:`WRITER` (as a
bgtask job, or into a raw pipe for the baseline): blocks of ``BLOCK`` bytes of seeded
random bytes, each block starting with its index (8 bytes, little endian). A lost,
repeated or misplaced block changes the CRC of the stream, and any single byte can be
checked against its offset (:func:`spot_check`).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from functools import lru_cache
from typing import Any

MiB = 1 << 20
BLOCK = MiB
SEED = 5
PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))

#: writes SIZE bytes of the pattern to stdout in 1 MiB writes. With WAIT=1 it first writes
#: "r" to stderr (ready: the interpreter has started) and waits for one byte on stdin, so
#: that the timed part of a benchmark starts with the first byte, not with Python's start.
WRITER = r"""
import os, random, sys
SEED = {seed}
size, wait = int(sys.argv[1]), sys.argv[2] == "1"
P = 1 << 20
buf = bytearray(random.Random(SEED).randbytes(P))
if wait:
    os.write(2, b"r")
    os.read(0, 1)
i = 0
left = size
while left > 0:
    buf[:8] = i.to_bytes(8, "little")
    n = min(P, left)
    mv = memoryview(buf)[:n]
    while mv:
        mv = mv[os.write(1, mv):]
    left -= n
    i += 1
""".replace("{seed}", str(SEED))


def writer_argv(size: int, wait: bool) -> list[str]:
    return [PY, "-I", "-S", "-c", WRITER, str(size), "1" if wait else "0"]


@lru_cache(maxsize=1)
def _pattern() -> bytes:
    return random.Random(SEED).randbytes(BLOCK)


def block(i: int, n: int = BLOCK) -> bytes:
    """Block *i* of the pattern (its first *n* bytes)."""
    return (i.to_bytes(8, "little") + _pattern()[8:])[:n]


def expected_byte(offset: int) -> int:
    i, k = divmod(offset, BLOCK)
    return i.to_bytes(8, "little")[k] if k < 8 else _pattern()[k]


@lru_cache(maxsize=8)
def expected_crc(size: int) -> int:
    crc = 0
    for i in range((size + BLOCK - 1) // BLOCK):
        crc = zlib.crc32(block(i, min(BLOCK, size - i * BLOCK)), crc)
    return crc


def spot_check(offset: int, chunk: bytes) -> None:
    """Cheap check of a chunk read at *offset*: its first, middle and last byte."""
    n = len(chunk)
    for k in (0, n // 2, n - 1) if n else ():
        if chunk[k] != expected_byte(offset + k):
            raise AssertionError(f"wrong byte at offset {offset + k}")


class StreamCheck:
    """Follows a stream chunk by chunk: length, spot checks, and (``full``) the CRC."""

    def __init__(self, size: int, full: bool) -> None:
        self.size = size
        self.full = full
        self.offset = 0
        self.crc = 0

    def feed(self, chunk: bytes) -> None:
        spot_check(self.offset, chunk)
        if self.full:
            self.crc = zlib.crc32(chunk, self.crc)
        self.offset += len(chunk)

    def done(self) -> None:
        assert self.offset == self.size, f"read {self.offset} bytes, expected {self.size}"
        if self.full:
            assert self.crc == expected_crc(self.size), "the bytes read are not the bytes written"


# -- processes ---------------------------------------------------------------------------

class Peers:
    """Processes a benchmark starts; :meth:`close` ends every one of them, by pid."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []  # detached processes (double-forked servers)

    def start(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(argv, **kw)
        self.procs.append(p)
        return p

    def peer(self, *args: str) -> tuple[subprocess.Popen[bytes], str]:
        """Start ``_peers.py ARGS``; returns it and its first line (it is ready then)."""
        p = self.start([PY, os.path.join(HERE, "_peers.py"), *args], stdout=subprocess.PIPE,
                       stdin=subprocess.DEVNULL)
        assert p.stdout is not None
        line = p.stdout.readline().decode().strip()
        if not line:
            raise RuntimeError(f"peer {args} did not start")
        return p, line

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()
        self.procs.clear()
        for pid in self.pids:
            kill_and_wait(pid)
        self.pids.clear()


def delete_all(tasks: Iterable[Any], timeout: float = 1.0) -> None:
    """Delete every task of *tasks* (``bgtask.Task``), whatever became of each: a
    benchmark's cleanup, which must not stop at the first task that is gone already."""
    import bgtask

    for task in tasks:
        try:
            task.delete(timeout=timeout)
        except bgtask.BgTaskError:
            pass


def save_results(name: str, r: dict[str, Any]) -> None:
    """A benchmark's results: ``benchmarks/.<name>.json`` (for BENCHMARKS.rst) and stderr."""
    import json

    with open(os.path.join(HERE, f".{name}.json"), "w") as f:
        json.dump(r, f, indent=1)
    print(json.dumps(r, indent=1), file=sys.stderr)


def tsp_100(tmp: str) -> float | None:
    """Milliseconds task-spooler takes to enqueue 100 jobs (None without ``tsp``): the
    baseline of issue 12's "100 spawns" bar. Its server is started first, untimed (as
    our fork server is warm when the 100 spawns are timed), its files in new dir *tmp*;
    the jobs end at once, one at a time (a running job outlives ``tsp -K``), and
    enqueuing costs the same whatever the job."""
    import shutil

    tsp = shutil.which("tsp") or shutil.which("ts")
    if tsp is None:
        return None
    os.mkdir(tmp)
    env = dict(os.environ, TS_SOCKET=os.path.join(tmp, "ts.sock"), TS_SLOTS="1", TS_MAXFINISHED="1000",
               TMPDIR=tmp)
    subprocess.run([tsp, "true"], env=env, capture_output=True, check=True)
    subprocess.run([tsp, "-w"], env=env, capture_output=True)
    t0 = time.perf_counter()
    for _ in range(100):
        subprocess.run([tsp, "true"], env=env, capture_output=True, check=True)
    took = time.perf_counter() - t0
    subprocess.run([tsp, "-w"], env=env, capture_output=True)  # the last job is done
    subprocess.run([tsp, "-K"], env=env, capture_output=True)  # the server
    return took * 1000


def kill_and_wait(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after *timeout*, a process that is not our child."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc_state(pid) in (None, "Z"):
                return
            time.sleep(0.01)


def proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2:data.rfind(b")") + 3].decode()


def pss_kib(pid: int) -> int:
    """Proportional set size of *pid* (its share of pages it shares with others)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError(f"no Pss in smaps_rollup of {pid}")


def status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM, ...)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in the status of {pid}")


def pids_of_pool(pool: str) -> list[int]:
    """Live processes of *pool*: supervisors (the pool in their command line) and jobs
    (``BGTASK_POOL=<pool>`` in their environment)."""
    me = os.getpid()
    env_needle = b"BGTASK_POOL=" + os.fsencode(pool) + b"\0"
    cmd_needle = os.fsencode(pool)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if cmd_needle in cmd.split(b"\0") or env_needle in env or env.endswith(env_needle[:-1]):
            if proc_state(int(name)) not in (None, "Z"):
                found.append(int(name))
    return found


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not met within {timeout} s: {predicate}")
        time.sleep(0.005)


def median(values: Iterable[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def interleaved(variants: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each variant once per round, in turn, *rounds* times; each returns the
    seconds it measured. On a shared machine the load changes from second to second:
    a ratio of two benchmarks run one after the other can be off by 2x, a ratio of
    interleaved rounds is much steadier."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(fn())
    return times


def pin(pids: Iterable[int], cpus: set[int]) -> None:
    """Pin every thread of *pids* to *cpus* (threads they start later inherit it)."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except (ProcessLookupError, FileNotFoundError):
                pass
