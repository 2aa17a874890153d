"""The local pool backend: a directory (or, for the default pool, the directories the
default could point to), /proc, and supervisors started with ``sys.executable``.

See :mod:`bgtask._client.backend` for the interface and :mod:`bgtask._paths` for what is
in a pool directory. Read-only operations never create a directory: a pool that does
not exist has no tasks. Only :meth:`LocalBackend.spawn` creates one.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from bgtask import _paths, _process
from bgtask._client import records as _records
from bgtask._client import sweep as _sweep
from bgtask._errors import AccessDeniedError, SpawnError, TaskNotFoundError

# connection and spawn are imported where they are used: listing an empty pool (an
# empty ``bgtask ls``) must not load multiprocessing and subprocess for nothing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

    from bgtask._wire.framing import Connection
    from bgtask._wire.schema import JobSpec

#: how many supervisors spawn() starts before giving up on name collisions.
SPAWN_ATTEMPTS = 5


class LocalBackend:
    """A pool in local directory ``dirs[0]``.

    :param dirs: where tasks are spawned (the first) and found (all of them: the default
        pool also looks where the default could have pointed in other sessions).
    :param mode: the mode of the first directory if a spawn creates it.
    :param per_user: the first directory is a per-user default (in /tmp it could have
        been planted by someone else: it must be ours, and not a symlink).
    """

    def __init__(self, dirs: Sequence[str], mode: int = 0o700, per_user: bool = False) -> None:
        self._dirs = list(dict.fromkeys(dirs))
        self._dir = self._dirs[0]
        self._mode = mode
        self._per_user = per_user

    def __str__(self) -> str:
        return self._dir

    def __repr__(self) -> str:
        return f"LocalBackend({self._dirs!r})"

    # -- the directory -------------------------------------------------------------------------

    def check(self) -> None:
        try:
            st = os.lstat(self._dir)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return  # created by the first spawn (which reports what stands in the way)
        self._check_stat(st)

    def _check_stat(self, st: os.stat_result) -> None:
        path = self._dir
        if stat.S_ISLNK(st.st_mode):
            if self._per_user:
                raise AccessDeniedError(f"pool directory {path} is a symlink (planted?)")
            st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "pool path is not a directory", path)
        if self._per_user and st.st_uid != os.geteuid():
            raise AccessDeniedError(f"pool directory {path} belongs to uid {st.st_uid}, not to you",
                                    owner=st.st_uid)

    def _ensure(self) -> None:
        """Create the pool directory (and its parents) if it is missing."""
        try:
            st = os.lstat(self._dir)
        except FileNotFoundError:
            try:
                os.makedirs(self._dir, mode=self._mode)
                os.chmod(self._dir, self._mode)  # we created it: exact despite the umask
            except FileExistsError:
                pass
            st = os.lstat(self._dir)
        self._check_stat(st)

    def _search_dirs(self) -> list[str]:
        """The directories to look in: ours, and the other places the default could
        have pointed to, if they are trustworthy (a directory, not a symlink, ours or
        root's; every file in them is still checked for its owner)."""
        out = [self._dir]
        for d in self._dirs[1:]:
            try:
                st = os.lstat(d)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode) and st.st_uid in (os.geteuid(), 0):
                out.append(d)
        return out

    # -- finding -------------------------------------------------------------------------------

    def pids(self, sweep: bool = True) -> list[int]:
        found: set[int] = set()
        for d in self._search_dirs():
            if sweep:
                _sweep.sweep_orphan_tokens(d)
            try:
                mine, _others = _paths.task_pids(d)
            except (NotADirectoryError, PermissionError):
                continue  # not a pool, or not one we may look into: no tasks of ours
            found.update(mine)
        return sorted(found)

    def _dir_of(self, pid: int) -> str | None:
        for d in self._search_dirs():
            try:
                os.lstat(_paths.sock_path(d, pid))
            except OSError:
                continue
            return d
        return None

    def connect(self, pid: int) -> Connection:
        from bgtask._client import connection as _protocol

        where = self.locate(pid)
        try:
            return _protocol.open_connection(where, pid)
        except TaskNotFoundError as exc:
            raise self.gone(where, pid, exc) from None

    def locate(self, pid: int) -> str:
        """The directory holding task *pid*'s socket (``connect``'s first step, shared
        with the asyncio client).

        :raises TaskNotFoundError: in none of the pool's directories.
        """
        where = self._dir_of(pid)
        if where is None:
            elsewhere = [d for d in self._search_dirs() if d != self._dir]
            also = f" (nor in {', '.join(elsewhere)})" if elsewhere else ""
            raise TaskNotFoundError(f"no task {pid} in pool {self._dir}{also}", pid)
        return where

    def gone(self, where: str, pid: int, exc: TaskNotFoundError) -> TaskNotFoundError:
        """The error for a connection to task *pid* in *where* that failed with *exc*,
        after sweeping the supervisor if it is proven dead (``connect``'s last step,
        shared with the asyncio client)."""
        from bgtask._wire.faults import SupervisorDeadError

        if isinstance(exc, SupervisorDeadError):
            report = _sweep.sweep(where, pid)
        else:
            # Reset or closed while connecting: a supervisor that is dying, or dead with
            # its socket still closing. The sweep proves death itself (the socket must
            # refuse); if it does not, the error stands as it was.
            report = _sweep.sweep(where, pid)
            if report is None:
                return exc
        what = "its supervisor died (killed?)"
        if report is not None:
            what += "; its job was stopped" if report.job_stopped else "; its job had ended"
            if report.removed:
                what += " and its files were removed"
        return TaskNotFoundError(f"task {pid} is gone: {what}", pid)

    def unresponsive_info(self, pid: int, since: float | None) -> dict[str, Any]:
        # What the files and /proc say without the supervisor: enough for ls to show the
        # task (and for pattern/where to match it), never a guess at what it would say.
        where = self._dir_of(pid) or self._dir
        owner: int | None = None
        created: float | None = None
        try:
            st = os.lstat(_paths.sock_path(where, pid))
            owner, created = st.st_uid, st.st_mtime
        except OSError:
            pass
        job_pid: int | None = None
        try:
            _token, recorded, start = _paths.read_token_file(where, pid)
        except (OSError, ValueError):
            recorded = start = None
        # The job record is the job's pid and start time: a reused pid is not the job.
        if recorded and start and not _process.is_gone(recorded) and _process.proc_start_time(recorded) == start:
            job_pid = recorded
        return {
            "pid": pid, "state": "unresponsive", "since": since, "owner": owner,
            "created_at": created, "child_pid": job_pid, "argv": [], "command": None,
            "shell": False, "cwd": None, "meta": {}, "lock": None, "started_at": None,
            "ended_at": None, "restarts": None, "streams": {},
            # running: the job's process is alive (the supervisor cannot say more).
            "status": {"running": job_pid is not None, "paused": None, "exit_code": None,
                       "signal": None, "returncode": None},
        }

    def records(self, pids: list[int]) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        dirs = self._search_dirs()
        for pid in pids:
            for d in dirs:
                info = _records.read_record(d, pid)
                if info is not None:
                    out[pid] = info
                    break
        return out

    def sweep(self, pid: int) -> _sweep.SweepReport | None:
        report = None
        for d in self._search_dirs():
            report = _sweep.sweep(d, pid) or report
        return report

    # -- spawning ------------------------------------------------------------------------------

    def job_env(self, updates: Mapping[str, str | None]) -> dict[str, str]:
        env = dict(os.environ)
        for k, v in updates.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        env["BGTASK_POOL"] = self._dir
        env.pop("BGTASK_PID", None)  # the supervisor sets its own
        return env

    def default_cwd(self) -> str:
        try:
            return os.getcwd()
        except FileNotFoundError:
            raise SpawnError("cannot start the job: the current directory was deleted; pass cwd=") from None

    def spawn(self, spec: JobSpec) -> int:
        from bgtask._client import spawn as _spawn

        self._ensure()
        for _attempt in range(SPAWN_ATTEMPTS):
            pid = _spawn.start_supervisor(self._dir, spec)
            if pid is not None:
                return pid
        raise SpawnError("cannot start the job: no free task name in the pool (files of other "
                         "users hold the names of the pids we got)")

    # -- processes -----------------------------------------------------------------------------

    def start_time(self, pid: int) -> int | None:
        return _process.proc_start_time(pid)

    def wait_gone(self, pid: int, start: int | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            if _process.is_gone(pid) or _process.proc_start_time(pid) != start:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)


__all__ = ["SPAWN_ATTEMPTS", "LocalBackend"]
