"""Sweeping: the files of a supervisor proven dead are removed and its orphaned job stopped.

A supervisor killed by SIGKILL (or the OOM killer) leaves its socket and token file in
the pool, and its job running in a process group of its own. Whoever finds that first
(a ``search``, a ``Task(pid)`` call, a spawn that got the same pid) sweeps:

* *proof of death*: the socket refuses connections (nobody listens on it), or -- for a
  supervisor that never bound one -- there is no socket at all (``force_if_silent``);
* *the sweep lock* (``.bgtask-<uid>.lock``): a new supervisor takes it while creating
  its files, so a sweeper never removes the fresh files of a supervisor that just got
  the same pid;
* *orphan stopping*: the job recorded in the token file (pid and start time, so a
  reused pid is never signalled), or -- with no job recorded -- the caller's processes
  whose environment names this supervisor and pool; both through
  :func:`bgtask._process.escalate`, the one TERM -> CONT -> wait -> KILL escalation.

Only the caller's own files are ever touched, never another user's, not even by root.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from bgtask import _paths, _process
from bgtask._wire.names import SUPERVISOR_MARKER

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: a token file without a socket is left alone this long (its supervisor may be starting).
STARTING_GRACE = 30.0
#: how long an orphaned job gets between TERM and KILL (a sweep runs inside a search).
ORPHAN_GRACE = 1.0


class SweepReport(tuple):
    """What a sweep did, for the message of the error that follows it."""

    __slots__ = ()

    def __new__(cls, removed: bool, job_stopped: bool) -> SweepReport:
        return tuple.__new__(cls, (removed, job_stopped))

    removed = property(lambda self: self[0])
    job_stopped = property(lambda self: self[1])


def is_supervisor(pid: int) -> bool:
    """Does *pid* run a bgtask supervisor (by its command line)?

    A supervisor started fresh has the boot line on its command line; one forked from
    the fork server keeps the server's, which names ``bgtask._supervisor.template``:
    both carry the marker. So does the fork server itself, and another pool's
    supervisor: this alone does not say *whose* supervisor a pid is (see
    :func:`_token_held`).
    """
    return _process.proc_cmdline_has(pid, SUPERVISOR_MARKER)


def _token_held(pool: str, pid: int) -> bool:
    """Is ``<pid>.token`` in *pool* flock'd? Its supervisor takes the lock right after
    creating the file and holds it for life (the kernel drops it when it dies), so a
    free lock on an old token file proves that nobody stands behind it, whatever
    process has that pid now (a reused pid can be another supervisor, or the fork
    server, with the same marker on its command line)."""
    try:
        fd = _paths.open_private(_paths.token_path(pool, pid), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # also releases our shared lock, if we got it
    return False


def sweep(pool: str, pid: int, force_if_silent: bool = False) -> SweepReport | None:
    """Remove the files of dead supervisor *pid* of ours in *pool*; stop its orphaned job.

    :param force_if_silent: a missing socket proves death too (the supervisor died
        before binding it: the spawner saw it, or its token file is old).
    :returns: what was done, or None if death was not proven (or the files are not
        ours, or another sweeper holds the lock): nothing was touched then.
    """
    lock = _sweep_lock(pool)
    try:
        sock = _paths.sock_path(pool, pid)
        try:
            st: os.stat_result | None = os.lstat(sock)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not _paths.is_mine(st) or not stat.S_ISSOCK(st.st_mode):
                return None
            from bgtask._client.connection import refuses as _refuses  # not for an empty pool

            if not _refuses(sock):
                return None
        elif not force_if_silent:
            return None
        try:
            _token, job_pid, job_start = _paths.read_token_file(pool, pid)
        except (OSError, ValueError):
            job_pid = job_start = None
        if job_pid and job_start:
            stopped = _stop_orphan(job_pid, job_start)
        else:
            # No job recorded: the supervisor died in the moment between starting its
            # job and recording it (or after the job ended, leaving descendants). Its
            # processes still carry its BGTASK_PID and BGTASK_POOL in their environment.
            stopped = _stop_by_environment(pool, pid)
        try:
            if st is not None:
                _paths.remove_if_mine(sock, st)
            _paths.remove_if_mine(_paths.record_path(pool, pid))
            _paths.remove_if_mine(_paths.token_path(pool, pid))
        except OSError:
            return SweepReport(False, stopped)  # a pool we may not write to (any more)
        return SweepReport(True, stopped)
    finally:
        if lock is not None:
            lock.release()


def sweep_orphan_tokens(pool: str) -> None:
    """Sweep our token files that have no socket beside them, once death is proven."""
    for pid in _paths.orphan_token_pids(pool):
        path = _paths.token_path(pool, pid)
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if not _paths.is_mine(st):
            continue
        # No socket beside the token: the supervisor died while starting -- or is
        # starting right now. Only a pid that is gone, or (after the grace time) one
        # that is not a supervisor or does not hold this token's lock, proves it dead.
        if _process.is_gone(pid) or (time.time() - st.st_mtime > STARTING_GRACE
                                     and not (is_supervisor(pid) and _token_held(pool, pid))):
            sweep(pool, pid, force_if_silent=True)


def _sweep_lock(pool: str) -> Any:
    path = _paths.sweep_lock_path(pool, os.geteuid())
    try:
        st = os.lstat(path)
        if not _paths.is_mine(st) or not stat.S_ISREG(st.st_mode):
            return None  # planted by someone else: never open it
    except FileNotFoundError:
        pass
    import filelock

    lock = filelock.FileLock(path, mode=0o600, timeout=10, thread_local=False)
    try:
        lock.acquire()
    except (filelock.Timeout, OSError):
        return None
    return lock


def _stop_orphan(job_pid: int, job_start: int) -> bool:
    """TERM (then KILL) the process group of a job whose supervisor died.

    :returns: True if something of the job was still running.
    """
    if not _orphan_group_is_ours(job_pid, job_start):
        return False

    def leader_too(sig: int) -> None:
        # The job may have left its process group: signal the leader itself, while it
        # is still the recorded process.
        if _process.proc_start_time(job_pid) == job_start:
            try:
                os.kill(job_pid, sig)
            except OSError:
                pass

    def alive() -> bool:
        if _process.proc_start_time(job_pid) == job_start and not _process.is_gone(job_pid):
            return True
        return bool(_process.group_members(job_pid)) and _orphan_group_is_ours(job_pid, job_start)

    _process.terminate_group(job_pid, ORPHAN_GRACE, alive, also=leader_too, kill_wait=ORPHAN_GRACE)
    return True


def _stop_by_environment(pool: str, pid: int) -> bool:
    """TERM (then KILL) our processes whose environment names supervisor *pid* of *pool*.

    :returns: True if there were any.
    """
    # os.fsencode: a pool path that is not UTF-8 (byte 0xff) is held as surrogates, and
    # the environment holds the raw bytes.
    needles = (f"BGTASK_PID={pid}".encode(), b"BGTASK_POOL=" + os.fsencode(pool))
    found = _process.processes_with_environ(needles, os.geteuid())
    if not found:
        return False

    def same(p: int, start: int | None) -> bool:
        return _process.proc_start_time(p) == start and not _process.is_gone(p)

    def send(sig: int) -> None:
        for p, start in found.items():
            if _process.proc_start_time(p) == start:  # still that process: not a reused pid
                try:
                    os.kill(p, sig)
                except OSError:
                    pass

    _process.escalate(send, ORPHAN_GRACE, lambda: any(same(p, t) for p, t in found.items()),
                      kill_wait=ORPHAN_GRACE)
    return True


def _orphan_group_is_ours(job_pid: int, job_start: int) -> bool:
    """Is process group *job_pid* the orphaned job's?

    Yes if its leader is the recorded job (same pid *and* start time). Also if the
    leader is gone but the group still has members -- children the job left behind when
    it died of the SIGTERM (or SIGPIPE) that they ignore: the kernel does not hand out a
    pid while a process group of that id exists, so no unrelated process can lead it.
    """
    start = _process.proc_start_time(job_pid)
    if start is not None:
        return start == job_start
    return _process.group_alive(job_pid)


__all__ = ["STARTING_GRACE", "SweepReport", "is_supervisor", "sweep", "sweep_orphan_tokens"]
