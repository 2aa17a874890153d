"""Pools, awaitable: ``AsyncTaskPool(path=None)``, the twin of :class:`~bgtask.TaskPool`.

Options are checked and the job's spec is built by the same code as the blocking
``spawn`` (``_client/spawn.build_spec``); ``search`` matches with the same functions
(``_client/requests.py``), and asks every task whose status record cannot be trusted
concurrently, in the loop: one connection each, no thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bgtask._client import requests as _req
from bgtask._client.aiotask import AsyncTask, is_local, off_loop
from bgtask._client.pool import TaskPool
from bgtask._client.spawn import DEFAULT_MAX_BUFFER, DEFAULT_RETAIN_OUTPUT, build_spec
from bgtask._errors import AccessDeniedError, TaskNotFoundError, TaskUnresponsiveError

#: connections ``search()`` opens at once (each is a thread in its supervisor for the
#: call; the blocking search asks 8 at a time from 8 threads).
SEARCH_CONCURRENCY = 64
#: deletes ``clean()`` runs at once (each holds a connection until its supervisor exits:
#: all of them at once would be one fd and one supervisor thread per task, unbounded).
CLEAN_CONCURRENCY = 32


class AsyncTaskPool:
    """The awaitable twin of :class:`~bgtask.TaskPool`.

    :param path: the directory (``None``: the default pool), or a :class:`TaskPool`.
    :raises ValueError: the path is too long for Unix socket names.
    """

    def __init__(self, path: str | os.PathLike[str] | TaskPool | None = None) -> None:
        self._sync = path if isinstance(path, TaskPool) else TaskPool(path)

    @property
    def sync(self) -> TaskPool:
        """The blocking :class:`~bgtask.TaskPool` for the same pool."""
        return self._sync

    @property
    def path(self) -> Any:
        """The pool directory (``TaskPool.path``)."""
        return self._sync.path

    def __str__(self) -> str:
        return str(self._sync)

    def __repr__(self) -> str:
        return f"<bgtask.AsyncTaskPool {str(self._sync)!r}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncTaskPool) and other._sync == self._sync

    def __hash__(self) -> int:
        return hash(("async", self._sync))

    def __reduce__(self) -> Any:
        return (AsyncTaskPool, (self._sync,))

    async def spawn(
        self,
        argv: Sequence[str] | str,
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        retain_output: int = DEFAULT_RETAIN_OUTPUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        on_full: str = "block",
        shell: bool = False,
        lock: str | None = None,
        **options: Any,
    ) -> AsyncTask:
        """Start *argv* under a new supervisor; see :meth:`bgtask.TaskPool.spawn`.

        Options are checked here, before anything starts (the same checks as the
        blocking spawn). The start itself -- an intermediate process that forks the
        supervisor and reports once the job was exec'd, a few ms -- runs in one
        short-lived thread: asyncio's own subprocess support needs a child-watcher
        thread per child on Python 3.11 too, and the pool's backend (a template fork
        server, an ssh host) owns how supervisors start.
        """
        backend = self._sync.backend
        if options or not is_local(backend):
            # Options of a newer spawn (operations) are checked by the blocking one; a
            # remote pool's spec needs the far side's environment and home (its bridge,
            # an ssh session started on first need): all of it in the thread, not the loop.
            task = await asyncio.to_thread(
                self._sync.spawn, argv, env=env, cwd=cwd, meta=meta, retain_output=retain_output,
                max_buffer=max_buffer, on_full=on_full, shell=shell, lock=lock, **options)
            return AsyncTask(task.pid, self._sync)
        spec = build_spec(backend, argv, env=env, cwd=cwd, meta=meta, retain_output=retain_output,
                          max_buffer=max_buffer, on_full=on_full, shell=shell, lock=lock)
        return AsyncTask(await asyncio.to_thread(backend.spawn, spec), self._sync)

    async def search(self, where: Callable[[dict[str, Any]], Any] | None = None,
                     **pattern: Any) -> list[AsyncTask]:
        """Live tasks of the caller, sorted by pid, whose info matches; see
        :meth:`bgtask.TaskPool.search`."""
        _req.check_where(where)
        return [t for t in await self._live_tasks() if _req.selected(await t.info(), where, pattern)]

    async def _live_tasks(self) -> list[AsyncTask]:
        backend = self._sync.backend
        pids = await off_loop(backend, backend.pids)
        if not pids:
            return []
        known: list[AsyncTask] = []
        for pid, raw in (await off_loop(backend, backend.records, pids)).items():
            task = AsyncTask(pid, self._sync)
            task._keep_info(raw)
            known.append(task)
        recorded = {t.pid for t in known}
        gate = asyncio.Semaphore(SEARCH_CONCURRENCY)

        async def probe(pid: int) -> AsyncTask | None:
            task = AsyncTask(pid, self._sync)
            async with gate:
                try:
                    await task.info(fresh=True)
                except TaskNotFoundError:
                    await asyncio.to_thread(backend.sweep, pid)
                    return None
                except TaskUnresponsiveError as exc:
                    task._info = await off_loop(backend, backend.unresponsive_info, pid, exc.since)
                except AccessDeniedError:
                    return None
                finally:
                    task.disconnect()  # asked once: no idle connection (and supervisor thread) kept
            return task

        asked = await asyncio.gather(*(probe(pid) for pid in pids if pid not in recorded))
        found = known + [t for t in asked if t is not None]
        return sorted(found, key=lambda t: t.pid)

    async def clean(self) -> list[int]:
        """Delete every finished task of the caller; returns their pids.

        The deletes run concurrently in the loop, :data:`CLEAN_CONCURRENCY` at a time.
        """
        finished = [t for t in await self._live_tasks() if _req.cleanable(await t.info())]
        gate = asyncio.Semaphore(CLEAN_CONCURRENCY)

        async def delete(task: AsyncTask) -> int | None:
            async with gate:
                try:
                    await task.delete()
                except TaskNotFoundError:
                    return None
                finally:
                    task.disconnect()
            return task.pid

        done = await asyncio.gather(*(delete(t) for t in finished))
        return [pid for pid in done if pid is not None]


__all__ = ["CLEAN_CONCURRENCY", "SEARCH_CONCURRENCY", "AsyncTaskPool"]
