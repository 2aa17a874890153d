"""The asyncio connections of one task handle (:class:`AioConnectionCache`), and how the
async API runs a pool backend's blocking, pool-level calls (:func:`off_loop`).

Connections are kept per event loop (a socket is registered with one loop), per process
(never used across ``fork``), several per loop (each carries one call at a time, and
coroutines of one loop call concurrently), bound to the supervisor first reached like
the blocking cache; a connection left mid-call by a cancellation or a failure is closed
at once, never handed out again, and every open one is known, so that
``disconnect()`` and the handle's end close them all.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any, TypeVar

from bgtask._client.aioconn import AioConnection, adopt, open_connection
from bgtask._client.local import LocalBackend
from bgtask._client.pool import TaskPool
from bgtask._errors import TaskNotFoundError

_T = TypeVar("_T")

#: idle connections kept per event loop and task (more concurrent calls open more, and
#: close them after).
KEEP_IDLE = 4


class AioConnectionCache:
    """The asyncio connections of one task handle (see the module docstring).

    Every open connection of this process is known here, busy or idle, so that
    :meth:`close_loop` and :meth:`close_all` (``AsyncTask.disconnect()``) and the
    handle's end (``__del__``) close them all, not just the idle ones.
    """

    def __init__(self, pid: int, pool: TaskPool) -> None:
        self._pid = pid
        self._pool = pool
        self._idle: dict[asyncio.AbstractEventLoop, list[AioConnection]] = {}
        #: every connection this handle opened and has not seen closed (busy and idle).
        self._all: set[AioConnection] = set()
        self._token: bytes | None = None

    async def _open(self) -> AioConnection:
        backend = self._pool.backend
        pid = self._pid
        if isinstance(backend, LocalBackend):
            where = backend.locate(pid)
            try:
                return await open_connection(where, pid)
            except TaskNotFoundError as exc:
                # Proving death and sweeping wait on the socket and take a file lock:
                # rare, and not worth a second, asynchronous copy.
                raise await asyncio.to_thread(backend.gone, where, pid, exc) from None
        # Another backend (a remote pool): its own connect (and handshake), in a thread;
        # the calls then run on the loop over the same socket.
        return adopt(await _in_thread(backend.connect, pid), pid)

    async def get(self) -> AioConnection:
        """An idle connection of this loop and process, or a new (bound) one."""
        loop = asyncio.get_running_loop()
        idle = self._idle.get(loop)
        me = os.getpid()
        while idle:
            conn = idle.pop()
            if conn.owner_pid == me and not conn.closed:
                return conn
            self._all.discard(conn)
            if conn.owner_pid == me:
                conn.close()
            # a forked child's copy of the parent's connection: not ours to close
        if len(self._all) > 2 * KEEP_IDLE:
            self._all = {c for c in self._all if not c.closed}
        conn = await self._open()
        self._all.add(conn)
        self._bind(conn)
        return conn

    def _bind(self, conn: AioConnection) -> None:
        if self._token is None:
            self._token = conn.token
        elif conn.token != self._token:
            self._all.discard(conn)
            conn.close()
            raise TaskNotFoundError(f"task {self._pid} is gone: its pid now belongs to a newer task "
                                    f"(use bgtask.AsyncTask({self._pid}) for that one)", self._pid)

    def put(self, conn: AioConnection) -> None:
        """Hand back *conn* after a call (kept only if in step)."""
        if conn.owner_pid != os.getpid():
            return
        if conn.closed:
            self._all.discard(conn)
            return
        idle = self._idle.setdefault(conn.loop, [])
        if len(idle) < KEEP_IDLE:
            idle.append(conn)
        else:
            self._all.discard(conn)
            conn.close()

    async def call(self, method: str, *args: Any, blocks_for: float | None = 0.0,
                   on_cancel: str = "close", **kwds: Any) -> Any:
        """Call *method* on the supervisor (see :meth:`AioConnection.call`)."""
        conn = await self.get()
        try:
            return await conn.call(method, args, kwds, blocks_for, on_cancel)
        except TaskNotFoundError as exc:
            if conn.why_lost is None or not conn.closed:
                raise
            # Through an ssh forward, a lost connection may be the host's, not the task's.
            why = await asyncio.to_thread(conn.why_lost, exc)
            if why is exc:
                raise
            raise why from None
        finally:
            # In step (an answer, or an error the supervisor answered with): kept.
            # Interrupted (a cancellation, a failure): the call closed it; forgotten.
            self.put(conn)

    def close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Close this process's connections of *loop* (busy ones too: their calls fail
        with ``ConnectionAbortedError``) and its idle ones of every other loop."""
        me = os.getpid()
        for conn in list(self._all):
            if conn.owner_pid == me and (conn.loop is loop or not conn.closed and _is_idle(self._idle, conn)):
                conn.close()
        self._forget_closed()

    def close_all(self) -> None:
        """Close every connection of this process, busy or idle, in every loop."""
        me = os.getpid()
        for conn in list(self._all):
            if conn.owner_pid == me:
                conn.close()
        self._forget_closed()

    def _forget_closed(self) -> None:
        self._all = {c for c in self._all if not c.closed}
        self._idle = {loop: [c for c in conns if not c.closed]
                      for loop, conns in self._idle.items() if not loop.is_closed()}

    def __del__(self) -> None:
        # A handle dropped with connections: close them, quietly (a socket left to the
        # garbage collector warns; one registered with a loop would never be collected).
        try:
            me = os.getpid()
            for conn in self._all:
                if conn.owner_pid == me:
                    conn.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def is_local(backend: object) -> bool:
    """A pool on this host: its pool-level calls are a few syscalls, made in the loop."""
    return isinstance(backend, LocalBackend)


async def off_loop(backend: object, func: Callable[..., _T], *args: Any) -> _T:
    """``func(*args)``, a pool-level call of *backend*: in the loop for a local pool, in a
    thread for another (a remote pool's is a round trip to its host)."""
    if is_local(backend):
        return func(*args)
    return await asyncio.to_thread(func, *args)


def _is_idle(idle: dict[asyncio.AbstractEventLoop, list[AioConnection]], conn: AioConnection) -> bool:
    return conn in idle.get(conn.loop, ())


async def _in_thread(func: Any, *args: Any) -> Any:
    """``asyncio.to_thread(func, *args)`` for a *func* that returns a connection: if the
    await is cancelled, the connection the thread still makes is closed, not dropped."""
    fut = asyncio.get_running_loop().run_in_executor(None, func, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        def close(f: asyncio.Future[Any]) -> None:
            if not f.cancelled() and f.exception() is None:
                f.result().close()
        fut.add_done_callback(close)
        raise


__all__ = ["KEEP_IDLE", "AioConnectionCache", "is_local", "off_loop"]
