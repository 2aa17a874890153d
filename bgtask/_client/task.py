"""The client handle of one task: ``Task(pid)``."""

from __future__ import annotations

import os
import signal as _signal
import threading
import time
import weakref
from typing import Any

from bgtask import _process
from bgtask._client import codec as _codec
from bgtask._client import connection as _protocol
from bgtask._client.pool import TaskPool, _sweep
from bgtask._client.stream import Stream, stream_name
from bgtask._errors import BgTaskError, TaskNotFoundError
from bgtask._wire.checks import check_timeout as _check_timeout
from bgtask._wire.faults import SupervisorDeadError
from bgtask._wire.framing import Connection
from bgtask._wire.names import EXPOSED


def signal_number(sig: Any) -> int:
    """``9``, ``"KILL"``, ``"SIGKILL"``, ``"kill"`` or ``signal.SIGKILL`` -> 9.

    :raises ValueError: an unknown name or number. :raises TypeError: another type.
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
    instead of steering the newcomer (a new ``Task(pid)`` reaches the newcomer).

    :raises TypeError: *pid* is not an int. :raises ValueError: *pid* is not positive.
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
        self._local = threading.local()
        # Weak: a thread's connection lives in its thread-local slot and is closed when
        # the thread ends; a strong list here would keep one socket (and one thread in the
        # supervisor) per thread that ever used this handle, until disconnect().
        self._conns: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._conns_lock = threading.Lock()
        self._info: dict[str, Any] | None = None
        #: the token of the supervisor this handle first reached. pids are reused: once
        #: bound, the handle refuses a later supervisor that got the same pid.
        self._token: bytes | None = None

    @property
    def pid(self) -> int:
        """The supervisor's pid: the task id."""
        return self._pid

    @property
    def pool(self) -> TaskPool:
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
        except BgTaskError as exc:
            return f"<bgtask.Task {self._pid} ({type(exc).__name__})>"
        name = info["meta"].get("name")
        tail = f" {name!r}" if isinstance(name, str) else ""
        return f"<bgtask.Task {self._pid} {describe_status(info)}{tail}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython: the repr, plus a summary of ``info()`` when shown on its own."""
        from bgtask._format import pretty_task

        pretty_task(self, p, cycle)

    # -- connection --------------------------------------------------------------------------

    def _conn(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.owner_pid == os.getpid() and not conn.closed:
            return conn
        if conn is not None and conn.owner_pid != os.getpid():
            self._forget_inherited()
        try:
            conn = _protocol.open_connection(str(self._pool.path), self._pid)
        except SupervisorDeadError as exc:
            _sweep(str(self._pool.path), self._pid)
            raise TaskNotFoundError(str(exc), self._pid) from None
        self._bind(conn)
        self._local.conn = conn
        with self._conns_lock:
            self._conns.add(conn)
        return conn

    def _bind(self, conn: Connection) -> None:
        """Tie this handle to the supervisor behind *conn*, or refuse a different one.

        :raises TaskNotFoundError: the supervisor this handle knew is gone and its pid
            now belongs to another task.
        """
        with self._conns_lock:
            if self._token is None:
                self._token = conn.token
                return
            if conn.token == self._token:
                return
        conn.close()
        raise TaskNotFoundError(f"task {self._pid} is gone: its pid now belongs to a newer task "
                                f"(use bgtask.Task({self._pid}) for that one)", self._pid)

    def _forget_inherited(self) -> None:
        # After fork: the parent's connections are not ours to use. Closing our copies of
        # the fds does not disturb the parent's sockets.
        with self._conns_lock:
            for c in list(self._conns):
                if c.owner_pid != os.getpid():
                    try:
                        c.close()
                    except OSError:
                        pass
            self._conns = weakref.WeakSet(c for c in self._conns if c.owner_pid == os.getpid())
        self._conns_lock = threading.Lock()
        self._local = threading.local()

    def _drop(self, conn: Connection) -> None:
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._conns_lock:
            self._conns.discard(conn)
        try:
            conn.close()
        except OSError:
            pass

    def _call(self, method: str, *args: Any, blocks_for: float | None = 0.0, **kwds: Any) -> Any:
        conn = self._conn()
        try:
            return _protocol.call(conn, self._pid, method, args, kwds, blocks_for)
        except BaseException:
            if conn.closed:
                self._drop(conn)
            raise

    def connect(self, fail_reason: dict[str, Any] | None = None) -> bool:
        """Connect to the supervisor (in this thread).

        :param fail_reason: if a dict, a failure fills it (``error``, ``type``,
            ``message``) and returns False instead of raising.
        :raises TaskNotFoundError: no live supervisor with this pid.
        :raises AccessDeniedError: the task belongs to someone else.
        """
        try:
            self._conn()
        except BgTaskError as exc:
            if fail_reason is None:
                raise
            fail_reason.update(error=exc, type=type(exc).__name__, message=str(exc))
            return False
        return True

    def disconnect(self) -> None:
        """Close this handle's connections (in every thread of this process)."""
        with self._conns_lock:
            conns, self._conns = list(self._conns), weakref.WeakSet()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self._local = threading.local()

    def call_remote_method(self, name: str, *args: Any, **kwds: Any) -> Any:
        """Call one of the exposed ``TaskState`` methods with raw wire values."""
        if name not in EXPOSED:
            raise ValueError(f"unknown remote method {name!r}: one of {', '.join(EXPOSED)}")
        blocks = None if name in ("wait", "stream_read", "stream_write", "delete") else 0.0
        return self._call(name, *args, blocks_for=blocks, **kwds)

    # -- information ---------------------------------------------------------------------------

    def info(self, fresh: bool = False) -> dict[str, Any]:
        """The info dict (cached; ``fresh=True`` asks the supervisor again).

        :raises TaskNotFoundError: the supervisor is gone.
        """
        if fresh or self._info is None:
            return self._keep_info(self._call("info"))
        return self._info

    def _keep_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Cache an info dict from the wire, its meta decoded."""
        raw["meta"] = _codec.decode_meta(raw["meta"])
        self._info = raw
        return raw

    def _load_info_once(self) -> None:
        """Fetch info on a throw-away connection (search: many tasks, worker threads)."""
        conn = _protocol.open_connection(str(self._pool.path), self._pid)
        try:
            self._bind(conn)
            raw = _protocol.call(conn, self._pid, "info", (), {}, 0.0)
        finally:
            conn.close()
        self._keep_info(raw)

    def apply_meta(self, mapping: dict[str, Any] | None = None, /, **kw: Any) -> dict[str, Any]:
        """Merge into the task's meta (``dict.update`` semantics); returns the new meta.

        :raises TypeError: a key is not a str or a value cannot be serialized by dill
            (nothing is sent then).
        """
        update: dict[str, Any] = {}
        if mapping is not None:
            if not hasattr(mapping, "keys"):
                raise TypeError(f"apply_meta takes a mapping, not {type(mapping).__name__}")
            update.update(mapping)
        update.update(kw)
        blobs = _codec.encode_meta(update)
        meta = _codec.decode_meta(self._call("apply_meta", blobs))
        if self._info is not None:
            self._info["meta"] = meta
        return meta

    def stream(self, which: int | str) -> Stream:
        """A :class:`Stream`: 0/"stdin", 1/"stdout", 2/"stderr", "data" or "control"."""
        return Stream(self, stream_name(which))

    # -- control ---------------------------------------------------------------------------------

    def kill(self, sig: Any = "KILL") -> bool:
        """Send *sig* to the job's process group; False if the job was not running."""
        return bool(self._call("kill", signal_number(sig)))

    def pause(self, flag: bool = True) -> bool:
        """SIGSTOP the job (``pause(False)``: SIGCONT)."""
        return self.kill(_signal.SIGSTOP if flag else _signal.SIGCONT)

    def resume(self) -> bool:
        return self.kill(_signal.SIGCONT)

    def restart(self) -> bool:
        """Re-execute the job if it has ended (same argv, env, cwd).

        :returns: False if it is still running. :raises SpawnError: it cannot start.
        """
        ok = bool(self._call("restart"))
        self._info = None
        return ok

    def wait(self, timeout: float | None = None) -> int | None:
        """The job's returncode (negative: killed by that signal), or None on timeout."""
        _check_timeout(timeout)
        # COLLECT_GRACE (1 s) for the output after the exit is included in the answer wait
        return self._call("wait", timeout, blocks_for=None if timeout is None else timeout + 1.5)

    def delete(self, timeout: float = 5.0) -> None:
        """Terminate the job (TERM+CONT, KILL after *timeout*); the supervisor removes its
        files and exits. Returns when both are gone.

        :raises TaskNotFoundError: the task is already gone.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError("timeout must be a non-negative number")
        _check_timeout(timeout)  # and finite
        start_time = _process.proc_start_time(self._pid)
        conn = self._conn()
        try:
            _protocol.call(conn, self._pid, "delete", (float(timeout),), {}, timeout + 12.0)
            # The supervisor exits right after its answer: its end of the socket closes.
            if conn.wait_readable(5.0):
                try:
                    conn.recv()
                except (EOFError, OSError):
                    pass
        finally:
            self._drop(conn)
            self.disconnect()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if (_process.proc_state(self._pid) in (None, "Z")
                    or _process.proc_start_time(self._pid) != start_time):
                break
            time.sleep(0.002)
        self._info = None


def describe_status(info: dict[str, Any]) -> str:
    """``running``, ``paused``, ``exited 0`` or ``killed by SIGKILL``."""
    st = info["status"]
    if st["paused"]:
        return "paused"
    if st["running"]:
        return "running"
    if st.get("signal") is not None:
        try:
            return f"killed by {_signal.Signals(st['signal']).name}"
        except ValueError:
            return f"killed by signal {st['signal']}"
    return f"exited {st.get('exit_code')}"


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


__all__ = ["Task", "current", "describe_status", "signal_number"]
