"""Server-sent events: the live task list and a task's live page.

A task page has **one** event stream carrying stdout, stderr, the data messages and
status changes: browsers allow only 6 HTTP/1.1 connections per host across all tabs,
so one stream per output would starve a third tab. Each event's ``id`` is the cursor
of all three, ``"<stdout byte>,<stderr byte>,<data message>"``, as of that event: the
browser sends it back as ``Last-Event-ID`` when it reconnects, and the stream resumes
exactly there (nothing lost, nothing repeated). A character cut by a chunk boundary
waits for its last bytes, so the cursor always sits on a character boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import bgtask
from bgtask.web import _jobs

#: how often a task page and the task list look at the tasks' state.
INFO_PERIOD = 1.0
#: a comment line this often keeps proxies from closing an idle stream, and tells us
#: when the viewer has gone.
KEEPALIVE = 15.0
#: the largest piece of output in one event (a reconnect far behind sends many).
MAX_EVENT = 256 * 1024
CURSORS = ("stdout", "stderr", "data")


def encode(event: str, data: Any, event_id: str | None = None) -> bytes:
    # One line of JSON (json.dumps escapes newlines); <, > and & escaped as well, so the
    # payload is inert even if something ever showed it as HTML.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {text}\n\n".encode()


def parse_cursor(last_event_id: str | None, query: dict[str, str]) -> dict[str, int | None]:
    """The cursor to start from: ``Last-Event-ID`` (a reconnect) wins over the query
    (a page's first connection); None means "from the end"."""
    cursor: dict[str, int | None] = dict.fromkeys(CURSORS)
    if last_event_id:
        parts = last_event_id.split(",")
        if len(parts) == len(CURSORS) and all(p.isdigit() for p in parts):
            return {k: int(p) for k, p in zip(CURSORS, parts, strict=True)}
    for k in CURSORS:
        v = query.get(k, "")
        if v.isdigit():
            cursor[k] = int(v)
    return cursor


class TaskFeed:
    """The event stream of one task page; :meth:`events` yields its bytes."""

    def __init__(self, task: Any, cursor: dict[str, int | None]) -> None:
        self.task = task
        self.start = cursor
        self.sent: dict[str, int] = {}
        # Small: a slow viewer slows its pumps (back-pressure), it does not buffer MBs.
        self.queue: asyncio.Queue[tuple[str, str | None, int, Any]] = asyncio.Queue(maxsize=16)
        self.wake = {name: asyncio.Event() for name in CURSORS}

    async def events(self) -> AsyncIterator[bytes]:
        yield b"retry: 500\n\n"  # reconnect quickly after a dropped connection
        for name in CURSORS:
            self.sent[name] = await self._initial(name)
        pumps = [asyncio.create_task(self._output("stdout")), asyncio.create_task(self._output("stderr")),
                 asyncio.create_task(self._messages()), asyncio.create_task(self._info())]
        try:
            yield encode("hello", dict(self.sent), self._id())
            while True:
                try:
                    item: tuple[str, str | None, int, Any] = await asyncio.wait_for(self.queue.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                kind, which, end, payload = item
                if which is not None:
                    self.sent[which] = end  # the id says what the viewer has, as of this event
                yield encode(kind, payload, self._id())
                if kind == "gone":
                    return
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            _jobs.disconnect(self.task)

    def _id(self) -> str:
        return ",".join(str(self.sent[k]) for k in CURSORS)

    async def _initial(self, name: str) -> int:
        first, limit = await self.task.stream(name).bounds()
        want = self.start.get(name)
        # From the end when not told; never past the end (a cursor from another task).
        return limit if want is None else min(want, limit)

    async def _idle(self, name: str) -> None:
        """After a stream's end: until the job may write again (a restart)."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake[name].wait(), 5.0)
        self.wake[name].clear()

    async def _output(self, name: str) -> None:
        stream = self.task.stream(name)
        pos = self.sent[name]
        pending = b""  # the first bytes of a character whose last bytes are still coming
        while True:
            try:
                async for chunk in stream.follow(pos + len(pending)):
                    data = pending + chunk
                    n = _jobs.complete_utf8(data)
                    pending = data[n:]
                    pos = await self._put_text(name, pos, data[:n])
            except bgtask.OutputGoneError as exc:
                # Freed (retain_output, on_full="drop") before this viewer saw it: say so.
                new = int(exc.start or pos)
                await self.queue.put(("gap", name, new, {"s": name, "a": pos, "b": new}))
                pos, pending = new, b""
                continue
            except bgtask.TaskNotFoundError:
                return  # the info pump says "gone"
            if pending:  # the stream ended inside a character: show what there is
                pos = await self._put_text(name, pos, pending)
                pending = b""
            await self._idle(name)

    async def _put_text(self, name: str, pos: int, data: bytes) -> int:
        while data:
            piece = data[:MAX_EVENT]
            if len(data) > MAX_EVENT:
                piece = piece[:_jobs.complete_utf8(piece)] or piece
            text = piece.decode("utf-8", "replace")
            end = pos + len(piece)
            await self.queue.put(("out", name, end, {"s": name, "a": pos, "b": end, "t": text}))
            pos, data = end, data[len(piece):]
        return pos

    async def _messages(self) -> None:
        stream = self.task.stream("data")
        pos = self.sent["data"]
        while True:
            try:
                async for item in stream.follow(pos):
                    await self.queue.put(("msg", "data", pos + 1, _jobs.message_items([item], pos)[0]))
                    pos += 1
            except bgtask.OutputGoneError as exc:  # read by someone else meanwhile
                pos = int(exc.start or pos)
                await self.queue.put(("gap", "data", pos, {"s": "data", "b": pos}))
                continue
            except bgtask.TaskNotFoundError:
                return
            await self._idle("data")

    async def _info(self) -> None:
        last: dict[str, Any] | None = None
        runs: tuple[Any, ...] | None = None
        while True:
            try:
                info = await self.task.info(fresh=True)
                usage = await _jobs.usage_of(self.task)
            except bgtask.TaskNotFoundError:
                await self.queue.put(("gone", None, 0, {"pid": self.task.pid}))
                return
            except bgtask.BgTaskError:  # unresponsive for now: try again
                await asyncio.sleep(INFO_PERIOD)
                continue
            now = _jobs.summary(info, usage)
            if now != last:
                await self.queue.put(("info", None, 0, now))
                last = now
            st = info.get("status") or {}
            this_run = (info.get("restarts"), info.get("started_at"), st.get("running"))
            if runs is not None and this_run != runs:
                for ev in self.wake.values():  # a new run may write again: follow it
                    ev.set()
            runs = this_run
            await asyncio.sleep(INFO_PERIOD)


class ListWatcher:
    """One poller of the pool shared by every open task list: 20 viewers cost one
    ``search()`` a second, not 20."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.viewers: set[asyncio.Queue[list[dict[str, Any]]]] = set()
        self.latest: list[dict[str, Any]] | None = None
        self._poller: asyncio.Task[None] | None = None

    async def snapshot(self) -> list[dict[str, Any]]:
        infos = []
        for task in await self.pool.search():
            try:
                infos.append(await task.info())
            except bgtask.BgTaskError:  # gone between the search and now
                continue
            finally:
                _jobs.disconnect(task)
        return infos

    async def _poll(self) -> None:
        while self.viewers:
            try:
                self.latest = await self.snapshot()
            except (bgtask.BgTaskError, OSError):
                await asyncio.sleep(INFO_PERIOD)
                continue
            for q in list(self.viewers):
                if q.full():  # a viewer that has not taken the last one needs only the newest
                    q.get_nowait()
                q.put_nowait(self.latest)
            await asyncio.sleep(INFO_PERIOD)

    async def rows(self, state: str, wanted: list[tuple[str, Any, str]]) -> AsyncIterator[bytes]:
        q: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(maxsize=1)
        self.viewers.add(q)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        elif self.latest is not None:
            q.put_nowait(self.latest)
        last: list[dict[str, Any]] | None = None
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    infos = await asyncio.wait_for(q.get(), KEEPALIVE)
                except asyncio.TimeoutError:
                    yield b": keepalive\n\n"
                    continue
                rows = [_jobs.row(i) for i in infos if _jobs.matches(i, state, wanted)]
                if rows != last:
                    yield encode("tasks", rows)
                    last = rows
        finally:
            self.viewers.discard(q)
            if not self.viewers and self._poller is not None:
                self._poller.cancel()
                self._poller = None


__all__ = ["CURSORS", "ListWatcher", "TaskFeed", "encode", "parse_cursor"]
