"""The asyncio handle of one task: ``AsyncTask(pid)``, the awaitable twin of
:class:`~bgtask.Task` (same names, arguments and semantics; checks, request building
and reply decoding shared through ``_client/requests.py``).

Its connections live in an :class:`~bgtask._client.aiocache.AioConnectionCache`
(per event loop and process, several per loop, closed at once when a call is
interrupted, all of them by :meth:`AsyncTask.disconnect` or when the handle is dropped).
"""

from __future__ import annotations

import asyncio
import signal as _signal
from typing import TYPE_CHECKING, Any

from bgtask._client import codec as _codec
from bgtask._client import requests as _req
from bgtask._client.aiocache import AioConnectionCache, is_local, off_loop
from bgtask._client.pool import TaskPool
from bgtask._client.stream import stream_name
from bgtask._client.task import Task, signal_number
from bgtask._wire.names import EXPOSED

if TYPE_CHECKING:
    from bgtask._client.aiopool import AsyncTaskPool
    from bgtask._client.aiostream import AsyncStream

class AsyncTask:
    """The awaitable twin of :class:`~bgtask.Task`: a cheap handle on the task whose
    supervisor has pid *pid*; it does not connect.

    :param pid: the supervisor's pid.
    :param pool: a :class:`~bgtask.AsyncTaskPool` or a :class:`~bgtask.TaskPool`;
        ``None``: the default pool.
    :raises TypeError: *pid* is not an int, or *pool* not a pool.
    :raises ValueError: *pid* is not positive.
    """

    def __init__(self, pid: int, pool: AsyncTaskPool | TaskPool | None = None) -> None:
        from bgtask._client.aiopool import AsyncTaskPool

        if isinstance(pool, AsyncTaskPool):
            pool = pool.sync
        self._sync = Task(pid, pool)  # checks pid and pool
        self._pid = pid
        self._conns = AioConnectionCache(pid, self._sync.pool)
        self._info: dict[str, Any] | None = None
        #: per stream, what a cancelled consuming read had received and could not give
        #: back to the supervisor (bytes; or a list of message blobs it refused to take
        #: back): handed on, first, by the next consuming read.
        self._held: dict[str, Any] = {}

    @property
    def pid(self) -> int:
        """The supervisor's pid: the task id."""
        return self._pid

    @property
    def pool(self) -> AsyncTaskPool:
        """The pool the task lives in."""
        from bgtask._client.aiopool import AsyncTaskPool

        return AsyncTaskPool(self._sync.pool)

    @property
    def sync(self) -> Task:
        """The blocking :class:`~bgtask.Task` for the same task."""
        return self._sync

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTask) and other._sync == self._sync

    def __hash__(self) -> int:
        return hash(("async", self._sync))

    def __reduce__(self) -> Any:
        return (AsyncTask, (self._pid, self._sync.pool))

    def __repr__(self) -> str:
        # A repr cannot await: it says what is known without asking.
        state = (self._info or {}).get("state")
        return f"<bgtask.AsyncTask {self._pid}{' ' + state if isinstance(state, str) else ''}>"

    async def _call(self, method: str, *args: Any, blocks_for: float | None = 0.0, **kwds: Any) -> Any:
        return await self._conns.call(method, *args, blocks_for=blocks_for, **kwds)

    # -- connection ----------------------------------------------------------------------------

    async def connect(self, fail_reason: dict[str, Any] | None = None) -> bool:
        """Connect to the supervisor (in this event loop); see :meth:`bgtask.Task.connect`."""
        from bgtask._errors import BgTaskError

        try:
            self._conns.put(await self._conns.get())
        except BgTaskError as exc:
            if fail_reason is None:
                raise
            fail_reason.update(error=exc, type=type(exc).__name__, message=str(exc))
            return False
        return True

    def disconnect(self) -> None:
        """Close this handle's connections, at once: in an event loop, all of that
        loop's (a call still running on one fails with ``ConnectionAbortedError``) and
        the idle ones of other loops; outside a loop, all of them. A call interrupted
        by a cancellation closes its own connection, and a handle dropped with
        connections closes them: this is for ending what is still open, earlier."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._conns.close_all()
        else:
            self._conns.close_loop(loop)

    async def call_remote_method(self, name: str, *args: Any, **kwds: Any) -> Any:
        """Call one of the exposed ``TaskState`` methods with raw wire values.

        :raises ValueError: *name* is not an exposed method.
        """
        return await self._call(name, *args, blocks_for=_req.remote_blocks(name), **kwds)

    # -- information -----------------------------------------------------------------------------

    async def info(self, fresh: bool = False) -> dict[str, Any]:
        """The info dict (cached; ``fresh=True`` asks the supervisor again).

        :raises TaskNotFoundError: the supervisor is gone.
        """
        if fresh or self._info is None:
            return self._keep_info(await self._call("info"))
        return self._info

    def _keep_info(self, raw: dict[str, Any]) -> dict[str, Any]:
        raw["meta"] = _codec.decode_meta(raw["meta"])
        self._info = raw
        return raw

    async def state(self) -> str:
        """Where the job stands now (``Task.state``, asked afresh)."""
        info = await self.info(fresh=True)
        state = info.get("state")
        if isinstance(state, str):
            return state
        st = info["status"]
        return "paused" if st.get("paused") else "running" if st.get("running") else "exited"

    async def meta(self) -> dict[str, Any]:
        """The task's meta, decoded (``Task.meta``, asked afresh)."""
        return dict((await self.info(fresh=True))["meta"])

    async def apply_meta(self, mapping: dict[str, Any] | None = None, /, **kw: Any) -> dict[str, Any]:
        """Merge into the task's meta (``dict.update`` semantics); returns the new meta.

        :raises TypeError: a key is not a str or a value cannot be serialized by dill
            (nothing is sent then).
        """
        blobs = _req.meta_update(mapping, kw)
        meta = _codec.decode_meta(await self._call("apply_meta", blobs))
        if self._info is not None:
            self._info["meta"] = meta
        return meta

    def stream(self, which: int | str) -> AsyncStream:
        """An :class:`~bgtask.AsyncStream`: 0/"stdin", 1/"stdout", 2/"stderr", "data" or
        "control".

        :raises ValueError: an unknown stream.
        """
        from bgtask._client.aiostream import AsyncStream

        return AsyncStream._of(self, stream_name(which))

    # -- control ---------------------------------------------------------------------------------

    async def kill(self, sig: Any = "KILL") -> bool:
        """Send *sig* to the job's process group; False if the job was not running.

        :raises ValueError: an unknown signal.
        """
        return bool(await self._call("kill", signal_number(sig)))

    async def pause(self, flag: bool = True) -> bool:
        """SIGSTOP the job (``pause(False)``: SIGCONT)."""
        return await self.kill(_signal.SIGSTOP if flag else _signal.SIGCONT)

    async def resume(self) -> bool:
        """SIGCONT the job; False if it was not running."""
        return await self.kill(_signal.SIGCONT)

    async def restart(self) -> bool:
        """Re-execute the job if it has ended; False if it is still running.

        :raises SpawnError: it cannot start.
        """
        ok = bool(await self._call("restart"))
        self._info = None
        return ok

    async def wait(self, timeout: float | None = None) -> int | None:
        """The job's returncode (negative: killed by that signal), or None on timeout.

        Cancelling it leaves the job alone (the supervisor's wait ends by itself).
        """
        _req.wait_blocks(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            # In slices: a cancelled wait leaves a waiting thread in the supervisor until
            # its own timeout; a slice bounds how long.
            left = None if deadline is None else max(0.0, deadline - loop.time())
            part = _WAIT_SLICE if left is None else min(left, _WAIT_SLICE)
            code = await self._call("wait", part, blocks_for=_req.wait_blocks(part))
            if code is not None or (left is not None and left <= part):
                return code

    async def stop(self, timeout: float | None = None) -> int | None:
        """TERM (and CONT), KILL after *timeout*; the job's returncode (``Task.stop``)."""
        _req.wait_blocks(timeout)
        if timeout is None:
            timeout = _req.grace_of(await self.info(fresh=True))
        if await self.kill("TERM"):
            await self.kill("CONT")
            code = await self.wait(timeout=timeout)
            if code is not None:
                return code
            await self.kill("KILL")
        return await self.wait()

    async def delete(self, timeout: float | None = None) -> None:
        """Terminate the job (TERM+CONT, KILL after *timeout*: ``None``, the task's
        grace); the supervisor removes its files and exits. Returns when both are gone.

        :raises TaskNotFoundError: the task is already gone.
        """
        _req.wait_blocks(timeout)
        if timeout is None:
            timeout = _req.grace_of(await self.info(fresh=True))
        backend = self._sync.pool.backend
        start_time = await off_loop(backend, backend.start_time, self._pid)
        conn = await self._conns.get()
        try:
            await conn.call("delete", (float(timeout),), {}, timeout + 12.0, "settle")
            # The supervisor exits right after its answer: its end of the socket closes.
            await conn.wait_closed(5.0)
        finally:
            conn.close()
            self._conns.close_all()
        loop = asyncio.get_running_loop()
        if not is_local(backend):  # one round trip that waits there, not a poll from here
            await asyncio.to_thread(backend.wait_gone, self._pid, start_time, 5.0)
        else:
            until = loop.time() + 5.0
            while not backend.wait_gone(self._pid, start_time, 0.0) and loop.time() < until:
                await asyncio.sleep(0.005)
        self._info = None

    async def usage(self) -> dict[str, Any]:
        """The job's resource usage (``Task.usage``)."""
        if "usage" in EXPOSED:
            return dict(await self._call("usage"))
        usage = getattr(self._sync, "usage", None)
        if usage is None:
            raise NotImplementedError("usage() needs a bgtask whose Task has it")
        return dict(await asyncio.to_thread(usage))


#: how long one wait() call waits on the supervisor before asking again.
_WAIT_SLICE = 10.0


def current_async() -> AsyncTask | None:
    """Inside a job (or its descendants): the job's own task as an
    :class:`~bgtask.AsyncTask`, for jobs that are asyncio programs. Elsewhere: None."""
    from bgtask._client.task import current

    task = current()
    return None if task is None else AsyncTask(task.pid, task.pool)


__all__ = ["AsyncTask", "current_async"]
