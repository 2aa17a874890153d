"""The client handle of one task: ``Task(pid)``."""

from __future__ import annotations

import os
import signal as _signal
from typing import Any

from bgtask import _format
from bgtask._client import codec as _codec
from bgtask._client import connection as _protocol
from bgtask._client import requests as _req
from bgtask._client.cache import ConnectionCache
from bgtask._client.pool import TaskPool
from bgtask._client.stream import Stream, stream_name
from bgtask._errors import BgTaskError, TaskNotFoundError, TaskUnresponsiveError
from bgtask._wire.checks import check_timeout as _check_timeout
from bgtask._wire.names import CLIENT_SLACK, KILL_WAIT

#: seconds from TERM to KILL when a task does not say (the contract's ``grace`` default).
DEFAULT_GRACE = _req.DEFAULT_GRACE


def signal_number(sig: Any) -> int:
    """``9``, ``"KILL"``, ``"SIGKILL"``, ``"kill"`` or ``signal.SIGKILL`` -> 9.

    :raises ValueError: an unknown name or number.
    :raises TypeError: another type.
    """
    if isinstance(sig, bool):
        raise TypeError("a signal is an int, a name or a signal.Signals, not a bool")
    if isinstance(sig, int):
        valid = getattr(_signal, "valid_signals", lambda: range(1, 65))()
        if int(sig) not in valid:
            raise ValueError(f"unknown signal number {int(sig)}")
        return int(sig)
    if isinstance(sig, str):
        name = sig.strip().upper()
        if name.isdigit():
            return signal_number(int(name))
        if not name.startswith("SIG"):
            name = "SIG" + name
        member = getattr(_signal.Signals, name, None) if not name.startswith("SIG_") else None
        if member is None:
            raise ValueError(f"unknown signal name {sig!r}")
        return int(member)
    raise TypeError(f"a signal is an int, a name or a signal.Signals, not {type(sig).__name__}")


class Task:
    """A cheap handle on the task whose supervisor has pid *pid*; it does not connect.

    Connections are made on first use, one per thread (and per process: a handle used
    after ``os.fork()`` reconnects in the child, never sharing the parent's socket).
    The first connection binds the handle to that supervisor: if it ends and a later
    task of the pool gets the same pid, this handle raises :exc:`TaskNotFoundError`
    instead of steering the newcomer (a new ``Task(pid)`` reaches the newcomer). See
    :class:`~bgtask._client.cache.ConnectionCache`.

    Everything that depends on where the pool lives goes through ``pool.backend``.

    :param pid: the supervisor's pid.
    :param pool: its pool; ``None``: the default pool, which finds the task wherever the
        default could have put it.
    :raises TypeError: *pid* is not an int, or *pool* not a TaskPool.
    :raises ValueError: *pid* is not positive.
    """

    def __init__(self, pid: int, pool: TaskPool | None = None) -> None:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"a task id is an int (the supervisor's pid), not {type(pid).__name__}")
        if pid <= 0:
            raise ValueError(f"a task id is a positive int, not {pid}")
        if pool is not None and not isinstance(pool, TaskPool):
            raise TypeError(f"pool must be a TaskPool, not {type(pool).__name__}")
        self._pid = pid
        self._pool = pool if pool is not None else TaskPool()
        backend = self._pool.backend
        self._conns = ConnectionCache(pid, lambda: backend.connect(pid))
        self._info: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        """The supervisor's pid: the task id."""
        return self._pid

    @property
    def pool(self) -> TaskPool:
        """The pool the task lives in."""
        return self._pool

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Task) and other._pid == self._pid and other._pool == self._pool

    def __hash__(self) -> int:
        return hash((self._pid, self._pool))

    def __reduce__(self) -> Any:
        return (Task, (self._pid, self._pool))

    def __repr__(self) -> str:
        try:
            info = self.info(fresh=True)
        except TaskNotFoundError:
            return f"<bgtask.Task {self._pid} gone>"
        except TaskUnresponsiveError:
            return f"<bgtask.Task {self._pid} unresponsive>"
        except BgTaskError as exc:
            return f"<bgtask.Task {self._pid} ({type(exc).__name__})>"
        return _format.task_title(self._pid, info)

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython: the repr, plus a summary of ``info()`` when shown on its own."""
        _format.pretty_task(self, p, cycle)

    #: what ``dir()`` -- and so tab completion -- offers: the everyday API. ``connect``,
    #: ``disconnect`` and ``call_remote_method`` still work; completion put them first
    #: (alphabetically) ahead of what a user looks for, so they are left out.
    _EVERYDAY = ("pid", "pool", "info", "state", "meta", "usage", "stream", "wait", "kill",
                 "pause", "resume", "restart", "stop", "delete", "apply_meta")

    def __dir__(self) -> list[str]:
        return [n for n in self._EVERYDAY if hasattr(type(self), n)]

    # -- connection --------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, blocks_for: float | None = 0.0, **kwds: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest show the public method, not this
        return self._conns.call(method, *args, blocks_for=blocks_for, **kwds)

    def connect(self, fail_reason: dict[str, Any] | None = None) -> bool:
        """Connect to the supervisor (in this thread).

        :param fail_reason: if a dict, a failure fills it (``error``, ``type``,
            ``message``) and returns False instead of raising.
        :raises TaskNotFoundError: no live supervisor with this pid.
        :raises AccessDeniedError: the task belongs to someone else.
        """
        try:
            self._conns.get()
        except BgTaskError as exc:
            if fail_reason is None:
                raise
            fail_reason.update(error=exc, type=type(exc).__name__, message=str(exc))
            return False
        return True

    def disconnect(self) -> None:
        """Close this handle's connections (in every thread of this process)."""
        self._conns.close_all()

    def call_remote_method(self, name: str, *args: Any, **kwds: Any) -> Any:
        """Call one of the exposed ``TaskState`` methods with raw wire values.

        :raises ValueError: *name* is not an exposed method.
        """
        return self._call(name, *args, blocks_for=_req.remote_blocks(name), **kwds)

    # -- information ---------------------------------------------------------------------------

    def info(self, fresh: bool = False) -> dict[str, Any]:
        """The info dict (cached; ``fresh=True`` asks the supervisor again).

        :raises TaskNotFoundError: the supervisor is gone.
        """
        if fresh or self._info is None:
            return self._keep_info(self._call("info"))
        return self._info

    @property
    def state(self) -> str:
        """Where the job stands now (asked afresh each time, unlike :meth:`info`):
        ``queued``, ``running``, ``paused``, ``stopping``, ``backoff`` or ``exited``.

        :raises TaskNotFoundError: the supervisor is gone.
        """
        info = self.info(fresh=True)
        state = info.get("state")
        if isinstance(state, str):
            return state
        st = info["status"]  # a supervisor that does not report a state yet
        return "paused" if st.get("paused") else "running" if st.get("running") else "exited"

    @property
    def meta(self) -> dict[str, Any]:
        """The task's meta, decoded (asked afresh each time, unlike :meth:`info`).

        :raises TaskNotFoundError: the supervisor is gone.
        """
        return dict(self.info(fresh=True)["meta"])

    def _keep_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Cache an info dict from the wire, its meta decoded."""
        raw["meta"] = _codec.decode_meta(raw["meta"])
        self._info = raw
        return raw

    def _keep_placeholder(self, info: dict[str, Any]) -> None:
        """Cache *info*, built without the supervisor (``search()`` of an unresponsive
        task): ``info()`` returns it; ``info(fresh=True)`` asks the supervisor again."""
        self._info = info

    def _load_info_once(self) -> None:
        """Fetch info on a throw-away connection (search: many tasks, worker threads)."""
        self._keep_info(self._conns.call_once("info"))

    def apply_meta(self, mapping: dict[str, Any] | None = None, /, **kw: Any) -> dict[str, Any]:
        """Merge into the task's meta (``dict.update`` semantics); returns the new meta.

        :raises TypeError: a key is not a str or a value cannot be serialized by dill
            (nothing is sent then).
        """
        blobs = _req.meta_update(mapping, kw)
        meta = _codec.decode_meta(self._call("apply_meta", blobs))
        if self._info is not None:
            self._info["meta"] = meta
        return meta

    def stream(self, which: int | str) -> Stream:
        """A :class:`Stream`: 0/"stdin", 1/"stdout", 2/"stderr", "data" or "control".

        :raises ValueError: an unknown stream.
        """
        return Stream._of(self, stream_name(which), self._conns.call)

    # -- control ---------------------------------------------------------------------------------

    def kill(self, sig: Any = "KILL") -> bool:
        """Send *sig* to the job's process group; False if the job was not running.

        :raises ValueError: an unknown signal.
        """
        return bool(self._call("kill", signal_number(sig)))

    def pause(self, flag: bool = True) -> bool:
        """SIGSTOP the job (``pause(False)``: SIGCONT)."""
        return self.kill(_signal.SIGSTOP if flag else _signal.SIGCONT)

    def resume(self) -> bool:
        """SIGCONT the job; False if it was not running."""
        return self.kill(_signal.SIGCONT)

    def restart(self) -> bool:
        """Re-execute the job if it has ended (same argv, env, cwd).

        :returns: False if it is still running.
        :raises SpawnError: it cannot start.
        """
        ok = bool(self._call("restart"))
        self._info = None
        return ok

    def wait(self, timeout: float | None = None) -> int | None:
        """The job's returncode (negative: killed by that signal), or None on timeout."""
        # COLLECT_GRACE (1 s) for the output after the exit is included in the answer wait
        return self._call("wait", timeout, blocks_for=_req.wait_blocks(timeout))

    def usage(self) -> dict[str, Any]:
        """CPU and memory of the job's whole process tree: ``cpu_user`` and
        ``cpu_system`` (seconds, children that exited included), ``rss`` (bytes now),
        ``max_rss`` (the peak seen) and ``processes``; after the run ended, its final
        figures (``rss`` and ``processes`` 0)."""
        return dict(self._call("usage"))

    def stop(self, timeout: float | None = None) -> int | None:
        """Stop the job and wait for it: TERM (and CONT, so that a paused job sees it),
        KILL after *timeout* seconds. The supervisor and the output stay (unlike
        :meth:`delete`).

        :param timeout: seconds from TERM to KILL (``None``: the task's ``grace``,
            default 5.0).
        :returns: the job's returncode; that of its last run if it was not running.
        :raises ValueError: a negative or non-finite *timeout*.
        """
        _check_timeout(timeout)
        if timeout is None:
            timeout = self._grace()
        if self.kill("TERM"):
            self.kill("CONT")
            code = self.wait(timeout=timeout)
            if code is not None:
                return code
            self.kill("KILL")
        return self.wait()

    def _grace(self) -> float:
        """The task's ``grace`` (seconds from TERM to KILL), asked afresh: 5.0, the
        default, from a supervisor that does not report one."""
        return _req.grace_of(self.info(fresh=True))

    def delete(self, timeout: float | None = None) -> None:
        """Terminate the job (TERM+CONT, KILL after *timeout*); the supervisor removes its
        files and exits. Returns when both are gone.

        :param timeout: seconds from TERM to KILL (``None``: the task's ``grace``,
            default 5.0).
        :raises TaskNotFoundError: the task is already gone.
        :raises TypeError: *timeout* is not a number (checked before anything is sent).
        :raises ValueError: a negative or non-finite *timeout*.
        """
        _check_timeout(timeout)
        if timeout is None:
            # Resolved here, not by the supervisor: one that predates grace refuses None.
            timeout = self._grace()
        backend = self._pool.backend
        start_time = backend.start_time(self._pid)
        conn = self._conns.get()
        try:
            _protocol.call(conn, self._pid, "delete", (float(timeout),), {}, timeout + 12.0)
            # The supervisor exits right after its answer: its end of the socket closes.
            if conn.wait_readable(5.0):
                try:
                    conn.recv()
                except (EOFError, OSError):
                    pass
        finally:
            self._conns.drop(conn)
            self._conns.close_all()
        self._info = None
        # The supervisor has answered and exits at once; on a loaded machine that can take
        # a while. "Returns when both are gone": a supervisor still there after the
        # longest it may take is reported, never passed over in silence.
        if not backend.wait_gone(self._pid, start_time, KILL_WAIT + CLIENT_SLACK):
            raise TaskUnresponsiveError(
                f"task {self._pid}: its supervisor answered delete() but has not exited "
                f"after {KILL_WAIT + CLIENT_SLACK:.0f} s", self._pid)


_current: tuple[int, Task | None] | None = None


def current() -> Task | None:
    """Inside a job (or its descendants): the job's own task. Elsewhere: None."""
    global _current
    pid_s = os.environ.get("BGTASK_PID")
    pool_s = os.environ.get("BGTASK_POOL")
    if not pid_s or not pool_s or not pid_s.isdigit():
        return None
    if _current is not None and _current[0] == os.getpid():
        task = _current[1]
        if task is not None and task.pid == int(pid_s) and str(task.pool.path) == os.path.abspath(pool_s):
            return task
    task = Task(int(pid_s), TaskPool(pool_s))
    _current = (os.getpid(), task)
    return task


__all__ = ["Task", "current", "signal_number"]
