"""The connections of one task handle: one per thread and per process, bound to one
supervisor.

* *one per thread*: a connection carries one call at a time; threads of a process each
  get their own (as ``multiprocessing.managers.BaseProxy`` does);
* *one per process*: after ``os.fork()`` the child never uses the parent's socket (two
  processes interleaving frames on one socket would corrupt both); it closes its copies
  of the parent's fds, which does not disturb the parent, and reconnects;
* *bound*: the first connection binds the cache to that supervisor's token. pids are
  reused: if the supervisor ends and a later task gets the same pid, the cache refuses
  the newcomer (:exc:`TaskNotFoundError`) instead of steering it.

:class:`ConnectionCache` knows nothing of where the pool lives: it is given a function
that opens a connection (the pool backend's ``connect``). ``Task`` owns one; an
``AsyncTask`` will own its own.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from bgtask._client import connection as _protocol
from bgtask._errors import BgTaskError, TaskNotFoundError
from bgtask._wire.framing import Connection


class ConnectionCache:
    """The per-thread, per-process connections to the supervisor of task *pid*.

    :param pid: the task id (for messages and calls).
    :param opener: opens and authenticates a new connection to that supervisor.
    """

    def __init__(self, pid: int, opener: Callable[[], Connection]) -> None:
        self._pid = pid
        self._open = opener
        self._local = threading.local()
        # Weak: a thread's connection lives in its thread-local slot and is closed when
        # the thread ends; a strong list here would keep one socket (and one thread in the
        # supervisor) per thread that ever used this handle, until disconnect().
        self._conns: weakref.WeakSet[Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        #: the token of the supervisor first reached. Once bound, a later supervisor
        #: that got the same pid is refused.
        self._token: bytes | None = None

    def peek(self) -> Connection | None:
        """This thread's connection, if it has one (for tests and diagnostics)."""
        return getattr(self._local, "conn", None)

    def get(self) -> Connection:
        """This thread's connection, opened (and bound) on first use.

        :raises TaskNotFoundError: no live supervisor, or a newer one under this pid.
        :raises AccessDeniedError: the task belongs to someone else.
        """
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and conn.owner_pid == os.getpid() and not conn.closed:
            return conn
        if conn is not None and conn.owner_pid != os.getpid():
            self._forget_inherited()
        conn = self._open()
        self.bind(conn)
        self._local.conn = conn
        with self._lock:
            self._conns.add(conn)
        return conn

    def bind(self, conn: Connection) -> None:
        """Tie the cache to the supervisor behind *conn*, or refuse a different one.

        :raises TaskNotFoundError: the supervisor first reached is gone and its pid now
            belongs to another task (*conn* is closed then).
        """
        with self._lock:
            if self._token is None:
                self._token = conn.token
                return
            if conn.token == self._token:
                return
        conn.close()
        raise TaskNotFoundError(f"task {self._pid} is gone: its pid now belongs to a newer task "
                                f"(use bgtask.Task({self._pid}) for that one)", self._pid)

    def call(self, method: str, *args: Any, blocks_for: float | None = 0.0, **kwds: Any) -> Any:
        """Call *method* on the supervisor over this thread's connection.

        :param blocks_for: how long the method may block in the supervisor (``None``:
            without limit).
        """
        __tracebackhide__ = True  # IPython and pytest: the user's frames, not ours
        try:
            conn = self.get()
            try:
                return _protocol.call(conn, self._pid, method, args, kwds, blocks_for)
            except BaseException:
                if conn.closed:  # out of step for good: the next call opens a new one
                    self.drop(conn)
                raise
        except (BgTaskError, KeyboardInterrupt) as exc:
            # Our own errors (mapped once, in _wire.faults) and Ctrl-C start their
            # traceback here: the frames below (connecting, framing, the socket read)
            # are bgtask's business, and a user's traceback showed five of them.
            raise exc.with_traceback(None)  # noqa: B904 (the same exception, re-raised)

    def call_once(self, method: str, *args: Any) -> Any:
        """Call *method* on a connection of its own, closed afterwards (search: many
        tasks from worker threads, each asked once)."""
        conn = self._open()
        try:
            self.bind(conn)
            return _protocol.call(conn, self._pid, method, args, {}, 0.0)
        finally:
            conn.close()

    def drop(self, conn: Connection) -> None:
        """Forget and close *conn*."""
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None
        with self._lock:
            self._conns.discard(conn)
        try:
            conn.close()
        except OSError:
            pass

    def close_all(self) -> None:
        """Close every connection of this process (in every thread)."""
        with self._lock:
            conns, self._conns = list(self._conns), weakref.WeakSet()
        for c in conns:
            try:
                c.close()
            except OSError:
                pass
        self._local = threading.local()

    def _forget_inherited(self) -> None:
        # After fork: the parent's connections are not ours to use. Closing our copies of
        # the fds does not disturb the parent's sockets. The lock is new as well: another
        # thread of the parent may have held it at the fork, and no thread here will
        # ever release it.
        self._lock = threading.Lock()
        me = os.getpid()
        for c in list(self._conns):
            if c.owner_pid != me:
                try:
                    c.close()
                except OSError:
                    pass
        self._conns = weakref.WeakSet(c for c in self._conns if c.owner_pid == me)
        self._local = threading.local()


__all__ = ["ConnectionCache"]
