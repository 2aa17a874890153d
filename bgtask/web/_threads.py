"""A stand-in for ``bgtask.AsyncTaskPool`` while the asyncio API is not in this
checkout: the same awaitable surface, each call in a worker thread.

Only :func:`bgtask.web._jobs.async_pool` uses it, and only when ``bgtask`` has no
``AsyncTaskPool``; it goes away once the asyncio API is everywhere the web view runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import bgtask

#: how long one blocking read in a worker thread waits for new output; a cancelled
#: follow leaves its thread at most this long.
_POLL = 0.2


class ThreadStream:
    def __init__(self, stream: bgtask.Stream) -> None:
        self.sync = stream

    async def read(self, *args: Any, **kw: Any) -> Any:
        return await asyncio.to_thread(self.sync.read, *args, **kw)

    async def write(self, data: Any, timeout: float | None = None) -> None:
        await asyncio.to_thread(self.sync.write, data, timeout=timeout)

    async def close(self) -> None:
        await asyncio.to_thread(self.sync.close)

    async def bounds(self) -> tuple[int, int]:
        def both() -> tuple[int, int]:
            info = self.sync.info()
            return int(info["start"]), int(info["limit"])
        return await asyncio.to_thread(both)

    async def follow(self, start: int | None = None) -> AsyncIterator[Any]:
        assert start is not None  # the web view always follows from an offset
        pos = start
        message = self.sync.is_messages
        while True:
            got = await asyncio.to_thread(self.sync.read, pos, None, timeout=_POLL)
            if got:
                if message:
                    for item in got:
                        yield item
                else:
                    yield got
                pos += len(got)
            elif await asyncio.to_thread(lambda: self.sync.eof):
                return


class ThreadTask:
    def __init__(self, pid: int, pool: Any = None) -> None:
        self.sync = bgtask.Task(pid, pool.sync if isinstance(pool, ThreadPool) else pool)
        self.pid = pid

    async def info(self, fresh: bool = False) -> dict[str, Any]:
        return await asyncio.to_thread(self.sync.info, fresh)

    def stream(self, which: str) -> ThreadStream:
        return ThreadStream(self.sync.stream(which))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.sync, name)

        async def call(*args: Any, **kw: Any) -> Any:
            return await asyncio.to_thread(method, *args, **kw)
        return call


class ThreadPool:
    def __init__(self, path: Any = None) -> None:
        self.sync = bgtask.TaskPool(path)

    async def search(self, where: Any = None, **pattern: Any) -> list[ThreadTask]:
        tasks = await asyncio.to_thread(self.sync.search, where, **pattern)
        out = []
        for t in tasks:
            a = ThreadTask(t.pid, self)
            a.sync = t  # keeps the info search fetched
            out.append(a)
        return out


__all__ = ["ThreadPool", "ThreadStream", "ThreadTask"]
