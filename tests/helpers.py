"""Helpers for tests: real processes, bounded waits, and finding what a test left alive."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

PY = sys.executable
#: the checkout holding the package under test (for jobs that ``import bgtask``).
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def py(code: str) -> list[str]:
    """argv running *code* in this interpreter (not the slow pyenv shim)."""
    return [PY, "-c", code]


class Point:
    """A class importable both here and in jobs and clients that have ``tests`` on their
    path: dill pickles its instances by reference (``helpers.Point``)."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (other.x, other.y) == (self.x, self.y)


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.01) -> Any:
    """Poll *predicate* until it returns something true; fail after *timeout*."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def template_pids(pool: str) -> list[int]:
    """Pids of the fork servers of *pool*: the holders of its ``.tpl-*.lock`` flocks
    (``/proc/locks``), found without connecting (a connection would use up a spare)."""
    inodes = set()
    try:
        names = os.listdir(pool)
    except OSError:
        return []
    for name in names:
        if name.startswith(".tpl-") and name.endswith(".lock"):
            try:
                inodes.add(os.lstat(os.path.join(pool, name)).st_ino)
            except OSError:
                pass
    pids = []
    for line in _read("/proc/locks").decode().splitlines():
        fields = line.split()  # "1: FLOCK ADVISORY WRITE <pid> <maj>:<min>:<inode> 0 EOF"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[4].isdigit():
            if int(fields[5].rsplit(":", 1)[-1]) in inodes:
                pids.append(int(fields[4]))
    return pids


def task_files(pool: Any) -> list[str]:
    """The files of *pool*'s tasks (tokens, sockets), without those that come and go
    beside them: lock files (which may stay), status records (``.info``, and the
    ``.info.tmp`` a supervisor writes one under before renaming it) and the fork
    server's ``.tpl-*`` files."""
    return sorted(n for n in os.listdir(pool.path)
                  if not n.endswith((".lock", ".info", ".info.tmp")) and not n.startswith(".tpl-"))


def pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    data = _read(f"/proc/{pid}/stat")
    if not data:
        return False
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3] != b"Z"


def _holds_a_file_in(pid: int, pool: str) -> bool:
    """Does *pid* hold a file of *pool* open, and none of a fork server's (``.tpl-*``)?

    A supervisor forked from the template (``_supervisor/template.py``) keeps the
    template's command line, which names no pool; but it holds its token file (flock'd
    for life) or, while it makes its files, the pool's sweep lock. The template itself
    holds its ``.tpl-*`` files: it is nobody's task and exits by itself when idle.
    """
    prefix = os.path.join(pool, "")
    held = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(prefix):
                held.append(os.path.basename(target))
    except OSError:
        return False
    return bool(held) and not any(name.startswith(".tpl-") for name in held)


def processes_of_pool(pool: str) -> list[tuple[int, str]]:
    """Live processes that belong to *pool*, except us: supervisors (started fresh, the
    pool path is in their command line; forked from the template, they hold a file of
    the pool: see :func:`_holds_a_file_in`) and jobs (BGTASK_POOL=<pool> in their
    environment)."""
    from bgtask._wire.names import SUPERVISOR_MARKER

    me = os.getpid()
    needle_env = b"BGTASK_POOL=" + os.fsencode(pool) + b"\0"
    needle_cmd = os.fsencode(pool)
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        cmd = _read(f"/proc/{pid}/cmdline")
        env = _read(f"/proc/{pid}/environ")
        if ((needle_cmd in cmd.split(b"\0")) or (needle_env in env) or env.endswith(needle_env[:-1])
                or (SUPERVISOR_MARKER in cmd and _holds_a_file_in(pid, pool))):
            if pid_alive(pid):
                found.append((pid, cmd.replace(b"\0", b" ").decode(errors="replace")[:150]))
    return found


def fork_servers(roots: list[str]) -> list[int]:
    """Pids of the fork servers of pools under *roots* (each holds its ``.tpl-*`` files
    there: ``_supervisor/template.py``) and of their spares (their children that hold
    no file of a pool yet: a child holding its token is a task, :func:`processes_of_pool`
    finds it)."""
    from bgtask._wire.names import SUPERVISOR_MARKER

    prefixes = tuple(os.path.join(os.path.realpath(r), "") for r in roots)
    marked: dict[int, tuple[int, list[str]]] = {}  # pid: (parent, files held)
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        if SUPERVISOR_MARKER not in _read(f"/proc/{pid}/cmdline"):
            continue
        stat = _read(f"/proc/{pid}/stat")
        try:
            parent = int(stat[stat.rfind(b")") + 2 :].split()[1])
            fds = os.listdir(f"/proc/{pid}/fd")
        except (IndexError, ValueError, OSError):
            continue
        held = []
        for fd in fds:
            with contextlib.suppress(OSError):
                held.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        marked[pid] = (parent, held)
    servers = [pid for pid, (_, held) in marked.items()
               if any(h.startswith(prefixes) and os.path.basename(h).startswith(".tpl-") for h in held)]
    spares = [pid for pid, (parent, held) in marked.items()
              if parent in servers and not any(h.startswith(prefixes) for h in held)]
    return [pid for pid in servers + spares if pid_alive(pid)]


def end_fork_servers(roots: list[str]) -> None:
    """End the fork servers of pools under *roots* and their spares, by pid: a test
    reaps what it started, rather than leave them to exit by themselves (at once when
    their pool is removed, a second later without inotify, at most 60 s after its last
    spawn otherwise)."""
    pids = fork_servers(roots)
    kill_all(pids)  # a spare also exits by itself once its fork server is gone
    with contextlib.suppress(AssertionError):
        wait_for(lambda: not any(pid_alive(pid) for pid in pids), timeout=3.0)


def kill_all(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def end_pool(path: str) -> list[tuple[int, str]]:
    """Tear down a test pool: end whatever of it is still alive and remove it.

    :returns: the processes that outlived the test (after a 3 s grace for supervisors
        exiting on their own), for the caller to fail on.
    """
    import shutil

    import bgtask

    leftovers: list[tuple[int, str]] = []
    if processes_of_pool(path):
        try:
            wait_for(lambda: not processes_of_pool(path), timeout=3.0)
        except AssertionError:
            leftovers = processes_of_pool(path)
            try:
                for task in bgtask.TaskPool(path).search():
                    task.delete(timeout=1.0)
            except Exception:
                pass
            kill_all([pid for pid, _ in processes_of_pool(path)])
    end_fork_servers([path])
    shutil.rmtree(path, ignore_errors=True)
    return leftovers

def supervisor_pools(since: float) -> dict[int, str]:
    """Supervisors of ours started after *since* (``time.time()``), by pid, with the
    pool each one serves (the directory of the token file it holds open) -- whatever
    pool a test made, with or without the ``pool`` fixture."""
    from bgtask._wire.names import SUPERVISOR_MARKER

    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    ticks = os.sysconf("SC_CLK_TCK")
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        pid = int(name)
        if SUPERVISOR_MARKER not in _read(f"/proc/{pid}/cmdline") or not pid_alive(pid):
            continue
        stat = _read(f"/proc/{pid}/stat")
        try:
            started = boot + int(stat[stat.rfind(b")") + 2 :].split()[19]) / ticks
            fds = os.listdir(f"/proc/{pid}/fd")
        except (IndexError, ValueError, OSError):
            continue
        if started < since:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.endswith(f"/{pid}.token"):
                found[pid] = os.path.dirname(target)
    return found


def fork() -> int:
    """``os.fork()`` without the 3.12+ warning about forking a threaded process (the
    tests fork on purpose; pytest turns warnings into errors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return os.fork()


def start_in_child(body: Callable[[], bytes]) -> tuple[int, int]:
    """Run *body* in a forked child that never returns into pytest.

    :returns: ``(pid, fd)``: pass them to :func:`child_result` once the parent's part
        is done (the child runs concurrently).
    """
    r, w = os.pipe()
    pid = fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            os.write(w, body())
            code = 0
        except BaseException as exc:  # report, never return into pytest
            os.write(w, repr(exc).encode()[:500])
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def child_result(pid: int, fd: int) -> tuple[int, bytes]:
    """The exit code of a :func:`start_in_child` child and what it wrote (its body's
    bytes, or the repr of what it raised)."""
    report = b""
    while True:
        part = os.read(fd, 4096)
        if not part:
            break
        report += part
    os.close(fd)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), report


@contextlib.contextmanager
def stopped(pid: int) -> Iterator[None]:
    """``kill -STOP`` process *pid* (waiting until every thread is stopped) for the body,
    ``kill -CONT`` after it, whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _proc_state(pid) == "T")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _proc_state(pid: int) -> str:
    data = _read(f"/proc/{pid}/stat")
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode()
