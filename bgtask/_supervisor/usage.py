"""``task.usage()``: CPU and memory of the job's whole process tree, read from /proc.

The tree is walked from the job's pid through ``/proc/<pid>/task/<tid>/children``, so a
call costs a few reads per process of the tree, not per process on the host (a scan
of every ``/proc/*/stat`` grows with the machine). CPU is ``utime + cutime`` (and
``stime + cstime``) summed over the tree: a descendant that has exited and was waited
for is in its parent's ``cutime``, and the job's own exit brings the rest through
``os.wait4``'s rusage (``runner.py``), which are the figures kept once the run has ended.

psutil was measured (``Process.children(recursive=True)`` plus ``cpu_times``/
``memory_info`` of each): several times slower for 50 processes, and it does not
count the children that exited; so it is not used, and the supervisor imports nothing
new at boot (this module is imported with the service, and reads files only).

Limits: a descendant re-parented away from the tree (its parent exited without waiting
for it) is no longer found, and its CPU is lost when it exits.
"""

from __future__ import annotations

import os
import signal
import time

#: clock ticks per second (``utime`` & co. are in ticks) and the page size (``rss``).
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
#: the per-process CPU clock that counts utime + stime as charged per tick
_CPUCLOCK_PROF = 0


def _read(path: str) -> bytes:
    try:
        with open(path, "rb", buffering=0) as f:
            return f.read()
    except OSError:
        return b""


class UsageMeter:
    """Samples of one job's tree; remembers the peak RSS of the current run."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.peak = 0

    def sample(self, pid: int) -> dict[str, float | int]:
        """The usage of the tree under job *pid* now."""
        if pid != self.pid:
            self.pid, self.peak = pid, 0
        user = system = rss = count = 0
        todo = [pid]
        while todo:
            p = todo.pop()
            stat = _read(f"/proc/{p}/stat")
            if not stat:
                continue  # gone meanwhile
            fields = stat[stat.rfind(b")") + 2:].split()
            # fields[0] is the state (field 3 of proc(5)): utime is field 14, so [11].
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
            rss += int(fields[21])
            count += 1
            threads = int(fields[17])
            tids = [str(p)] if threads == 1 else _listdir(f"/proc/{p}/task")
            for tid in tids:
                todo += [int(c) for c in _read(f"/proc/{p}/task/{tid}/children").split()]
        rss *= _PAGE
        self.peak = max(self.peak, rss)
        return {"cpu_user": user / _TICKS, "cpu_system": system / _TICKS, "rss": rss,
                "max_rss": self.peak, "processes": count}

    def final(self, rusage: object) -> dict[str, float | int]:
        """The figures of a run that ended (*rusage*: ``os.wait4``'s; None: no run yet)."""
        if rusage is None:
            return {"cpu_user": 0.0, "cpu_system": 0.0, "rss": 0, "max_rss": 0, "processes": 0}
        # ru_maxrss is the largest single process (KiB on Linux); the peak we sampled is
        # of the whole tree at once: the larger one is the better lower bound.
        max_rss = max(self.peak, int(rusage.ru_maxrss) * 1024)  # type: ignore[attr-defined]
        return {"cpu_user": float(rusage.ru_utime), "cpu_system": float(rusage.ru_stime),  # type: ignore[attr-defined]
                "rss": 0, "max_rss": max_rss, "processes": 0}


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def charged_cpu_ns(pid: int) -> int | None:
    """The CPU time the kernel has *charged* to process *pid* (all its threads, not its
    children), in ns: its ``CPUCLOCK_PROF`` clock, the figure ``RLIMIT_CPU`` is compared
    with. Read it after the exit and before the reap (a zombie still has its clock).
    None if it cannot be read (the pid is gone)."""
    # clockid of a process's CPU clock: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_PROF) in
    # linux/posix-timers.h; clock_getcpuclockid(3) would give the SCHED clock instead.
    try:
        return time.clock_gettime_ns(((~pid) << 3) | _CPUCLOCK_PROF)
    except (OSError, OverflowError):
        return None


def limit_hint(sig: int | None, limits: dict[str, int] | None,
               charged_ns: int | None = None) -> str | None:
    """Which of ``spawn(limits=)`` killed a run that died of *sig*, when that can be told:
    SIGXFSZ is the fsize limit; the cpu limit is SIGXCPU, or SIGKILL once the kernel had
    charged the run the limit's seconds (*charged_ns*: :func:`charged_cpu_ns`).
    Memory, nofile and nproc make calls fail instead: the job dies of its own error.

    Why not the run's rusage: with soft = hard (the contract), Linux sends SIGKILL (and
    no SIGXCPU) at the tick where the process's ``utime + stime`` *as charged per tick*
    reaches the limit (``check_process_timers``: the hard limit is checked first).
    Those tick samples charge a whole tick to whoever is running when it fires, while
    ``wait4``'s ``ru_utime + ru_stime`` (and ``/proc``'s figures) are scaled to the
    precise scheduler runtime; on a loaded machine the two part by far more than a tick
    (measured here: killed at a charged 1.000 s of a 1 s limit with a runtime of 0.878 s),
    so no margin on the rusage is safe. The charged figure is the kernel's own one: at
    a limit-kill it is >= the limit, exactly; any other SIGKILL (kill(), a timeout's
    KILL, delete, the OOM killer, ``kill -9``) comes before it got there, or the kernel
    would have killed the run first (a race of one tick aside). It also leaves out the CPU of waited-for children,
    which the rusage counts and the limit (per process) does not."""
    if not limits or sig is None:
        return None
    if "cpu" in limits:
        if sig == signal.SIGXCPU:
            return "cpu"
        if sig == signal.SIGKILL and charged_ns is not None \
                and charged_ns >= limits["cpu"] * 1_000_000_000:
            return "cpu"
    if sig == signal.SIGXFSZ and "fsize" in limits:
        return "fsize"
    return None


__all__ = ["UsageMeter", "charged_cpu_ns", "limit_hint"]
