"""A task's streams, awaitable: ``async_task.stream(which)``, the twin of
:class:`~bgtask.Stream` (checks and decoding shared through ``_client/requests.py``).

Cancelling is safe at every await:

* a consuming ``read()``/``follow()`` waits for data with a *non-consuming* read (a
  cancelled one leaves nothing behind but a supervisor thread that ends with its
  slice), then consumes with a read that answers at once. If that one is cancelled,
  its reply is awaited briefly all the same (``on_cancel="reclaim"``) and given back:
  messages are put back (``stream_putback``, over before the cancellation propagates),
  and what is not -- bytes (the wire has no put-back for them), messages the
  supervisor refused (another consumer read meanwhile) -- is held by the
  :class:`~bgtask.AsyncTask` and handed on by its next consuming read. Only a reply
  that does not come in time (a stopped supervisor) is left to the supervisor: the
  connection's read side is shut down, the reply cannot be delivered, and the read is
  rolled back there;
* a write to stdin waits on the supervisor in short slices, and a cancelled one waits
  for its slice's answer: what was accepted is final when the cancellation propagates,
  and ``limit`` says exactly how much that was;
* ``wait()``/``follow()``/non-consuming reads only hang up: the job is left alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from bgtask._client import codec as _codec
from bgtask._client import requests as _req
from bgtask._client.aioconn import Reclaimed
from bgtask._client.stream import FOLLOW_CHUNK, FOLLOW_RECONNECTS, FOLLOW_SLICE, STDIN_CHUNK, Stream
from bgtask._errors import BgTaskError, HostUnreachableError, OutputGoneError
from bgtask._wire.names import MESSAGE_STREAMS

if TYPE_CHECKING:
    from bgtask._client.aiotask import AsyncTask

#: the longest a stdin write waits on the supervisor in one call: a cancelled write
#: waits for that call's answer, so this is how late a cancellation can take effect.
STDIN_SLICE = 0.2


class AsyncStream:
    """One stream of an :class:`~bgtask.AsyncTask`; ``AsyncStream(task, which)`` is
    ``task.stream(which)``. :meth:`bounds` stands for the blocking ``start``/``limit``.

    :raises TypeError: *task* is not an AsyncTask.
    :raises ValueError: an unknown stream.
    """

    def __init__(self, task: AsyncTask, which: int | str) -> None:
        from bgtask._client.aiotask import AsyncTask

        if not isinstance(task, AsyncTask):
            raise TypeError(f"an AsyncStream belongs to a bgtask.AsyncTask, not {type(task).__name__}")
        made = task.stream(which)
        self._task: AsyncTask = task
        self._name: str = made.name

    @classmethod
    def _of(cls, task: AsyncTask, name: str) -> AsyncStream:
        self = cls.__new__(cls)
        self._task, self._name = task, name
        return self

    @property
    def name(self) -> str:
        """stdin, stdout, stderr, data or control."""
        return self._name

    @property
    def task(self) -> AsyncTask:
        return self._task

    @property
    def is_messages(self) -> bool:
        """A message stream (data, control): it counts and returns Python objects."""
        return self._name in MESSAGE_STREAMS

    @property
    def sync(self) -> Stream:
        """The blocking :class:`~bgtask.Stream` for the same stream."""
        return self._task.sync.stream(self._name)

    def __repr__(self) -> str:
        return f"<bgtask.AsyncStream {self._task.pid}/{self._name}>"

    async def _call(self, method: str, *args: Any, blocks_for: float | None = 0.0,
                    on_cancel: str = "close") -> Any:
        return await self._task._conns.call(method, *args, blocks_for=blocks_for, on_cancel=on_cancel)

    # -- state -----------------------------------------------------------------------------

    async def info(self) -> dict[str, Any]:
        """The stream's part of the info dict (start, limit, cursor, unread, eof, ...)."""
        return dict(await self._call("stream_info", self._name))

    async def bounds(self) -> tuple[int, int]:
        """``(start, limit)``: the first offset still held, and the end offset."""
        i = await self.info()
        return int(i["start"]), int(i["limit"])

    async def eof(self) -> bool:
        """Nothing more will arrive until a restart (unread items may remain)."""
        return bool((await self.info())["eof"])

    # -- reading ---------------------------------------------------------------------------

    async def read(self, start: int | None = None, end: int | None = None, *,
                   timeout: float | None = 0.0) -> Any:
        """Read output (bytes) or messages (a list); see :meth:`bgtask.Stream.read`.

        A cancelled consuming read consumes nothing (module docstring).
        """
        consume = _req.check_read(self._name, start, end, timeout)
        if consume:
            return _req.decode_read(self.is_messages, (await self._consume(timeout, None))[0])
        pos, nxt, data, limit, _eof = await self._call(
            "stream_read", *_req.read_args(self._name, start, end, False, timeout), blocks_for=timeout)
        if not data:
            return _req.empty_read(self.is_messages)
        parts = [data]
        goal = _req.read_goal(limit, end)
        while nxt < goal:  # the supervisor caps one reply: fetch the rest of the range
            _p, nxt, more, _l, _e = await self._call(
                "stream_read", *_req.read_args(self._name, nxt, end, False, 0.0))
            if not more:
                break
            parts.append(more)
        return _req.decode_read(self.is_messages, parts)

    async def _consume(self, timeout: float | None, max_bytes: int | None,
                       start: int | None = None) -> tuple[list[Any], int, bool]:
        """Consume what is unread (waiting up to *timeout* for it): the replies' data,
        where the consumed range ends, and whether the stream has ended there.

        :param start: read from there, not from the read cursor (follow() after a
            dropped ssh connection: a reply lost with it had consumed its range).
        """
        name = self._name
        held = self._task._held.pop(name, None)  # what a cancelled read handed on
        parts: list[Any] = [held] if held else []
        fresh = len(parts)  # parts[fresh:] come from the supervisor's replies
        end_at = 0
        waited = False
        try:
            while True:
                try:
                    _p, end_at, data, limit, eof = await self._call(
                        "stream_read", *_req.read_args(name, start, None, True, 0.0, max_bytes),
                        on_cancel="reclaim")
                    start = None
                except Reclaimed as rec:
                    _p, end_at, data, _l, _e = rec.result
                    if data:
                        parts.append(data)
                    raise asyncio.CancelledError from None
                if data:
                    parts.append(data)
                    if max_bytes is not None or end_at >= limit:
                        return parts, end_at, eof
                    continue  # the supervisor caps one reply: the rest now, without waiting
                if parts or eof or waited or timeout == 0:
                    return parts, end_at, eof
                waited = True
                # Nothing yet: wait without consuming, then consume what came.
                if not await self._wait_data(timeout):
                    return parts, end_at, eof
        except asyncio.CancelledError:
            await self._undo(parts[fresh:], end_at, held)
            raise

    async def _wait_data(self, timeout: float | None) -> bool:
        """Wait (up to *timeout*) until an unread item or the end of the stream is there,
        without consuming; whether one is."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = FOLLOW_SLICE if deadline is None else min(FOLLOW_SLICE, max(0.0, deadline - loop.time()))
            _p, _n, data, _l, eof = await self._call(
                "stream_read", *_req.read_args(self._name, None, None, False, left, 1), blocks_for=left)
            if data or eof:
                return True
            if deadline is not None and loop.time() >= deadline:
                return False

    async def _undo(self, parts: list[Any], consumed_end: int, held: Any = None) -> None:
        """A cancelled consuming read had received *parts* (its replies' data, consumed
        up to *consumed_end*) and taken *held* (what the task held for this stream):
        give them back, in that order, in front of what is still unread.

        Messages go back to the supervisor (``stream_putback``); the ones it refuses
        (another consumer read meanwhile: they cannot go back in front of what it read)
        are held by the task, as bytes always are, and handed on by its next consuming
        read.
        """
        name = self._name
        if not self.is_messages:
            back = (held or b"") + b"".join(bytes(p) for p in parts)
            if back:
                self._task._held[name] = back + self._task._held.get(name, b"")
            return
        keep: list[bytes] = list(held or [])
        blobs = [blob for part in parts for blob in part]
        again: asyncio.CancelledError | None = None
        if blobs:
            # Over before this returns, even if cancelled (again) meanwhile: a putback
            # still on its way could come after the next read and be refused, losing
            # the messages. The cancellation is raised once it is over.
            call = asyncio.ensure_future(self._call("stream_putback", name, blobs, consumed_end))
            while not call.done():
                try:
                    await asyncio.wait((call,))
                except asyncio.CancelledError as exc:
                    again = exc
            if not _went_back(call):
                keep += blobs
        if keep:
            self._task._held[name] = keep + self._task._held.get(name, [])
        if again is not None:
            raise again

    def follow(self, start: int | None = None) -> AsyncIterator[Any]:
        """``async for`` over the output until the end of the stream: bytes chunks, or
        single messages; see :meth:`bgtask.Stream.follow`. Arguments are checked here.

        :raises ValueError: following stdin.
        """
        _req.check_follow(self._name, start)
        return self._follow(start)

    async def _follow(self, pos: int | None) -> AsyncIterator[Any]:
        consume = pos is None
        last: int | None = None  # where the last read ended
        drops = 0
        while True:
            try:
                if consume:
                    # After a dropped ssh connection (a remote pool; the job goes on), on
                    # from where the last read ended, as the blocking follow() does.
                    parts, end_at, eof = await self._consume(FOLLOW_SLICE, FOLLOW_CHUNK,
                                                             last if drops else None)
                    if self.is_messages:
                        data: Any = [blob for part in parts for blob in part]
                    else:
                        data = parts[0] if len(parts) == 1 else b"".join(parts)
                else:
                    _p, end_at, data, _l, eof = await self._call(
                        "stream_read", *_req.read_args(self._name, pos, None, False, FOLLOW_SLICE,
                                                       FOLLOW_CHUNK), blocks_for=FOLLOW_SLICE)
                    pos = end_at
            except HostUnreachableError:
                drops += 1
                if drops > FOLLOW_RECONNECTS:
                    raise
                await asyncio.sleep(min(1.0, 0.05 * 2 ** drops))
                continue
            except OutputGoneError:
                if not (drops and consume):
                    raise
                drops = 0  # no longer retained: on from the read cursor
                continue
            drops = 0
            last = end_at
            if not data:
                if eof:
                    return
                continue
            if not self.is_messages:
                yield data
            elif not consume:
                for blob in data:
                    yield _codec.decode(blob)
            else:
                async for obj in self._hand_on(data, end_at):
                    yield obj

    async def _hand_on(self, blobs: list[bytes], consumed_end: int) -> AsyncIterator[Any]:
        """Yield consumed messages; put back the ones never yielded if the loop stops."""
        done = 0
        reader = os.getpid()
        try:
            for blob in blobs:
                obj = _codec.decode(blob)
                done += 1
                yield obj
        finally:
            # A forked child that drops its copy of the generator must not put back what
            # the parent is still yielding.
            if done < len(blobs) and os.getpid() == reader:
                await self._undo([blobs[done:]], consumed_end)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self.follow()

    # -- writing ---------------------------------------------------------------------------

    async def write(self, data: Any, timeout: float | None = None) -> int:
        """Write to stdin (bytes or str) or send one message; see :meth:`bgtask.Stream.write`.

        :returns: the stream's limit after the write.
        :raises TimeoutError: stdin stayed full for *timeout* seconds.
        """
        payload = _req.check_write(self._name, data, timeout)
        if self.is_messages:
            return int(await self._call("stream_write", self._name, payload, None, on_cancel="settle"))
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        limit = 0
        for i in range(0, max(len(payload), 1), STDIN_CHUNK):
            chunk = payload[i:i + STDIN_CHUNK]
            while True:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                part = STDIN_SLICE if left is None else min(left, STDIN_SLICE)
                try:
                    limit = int(await self._call("stream_write", "stdin", chunk, part,
                                                 blocks_for=part, on_cancel="settle"))
                    break
                except TimeoutError as exc:
                    if isinstance(exc, BgTaskError) or (left is not None and left <= part):
                        raise
        return limit

    async def write_many(self, objects: Iterable[Any]) -> int:
        """Send several messages in one call; see :meth:`bgtask.Stream.write_many`."""
        blobs = _req.encode_many(self._name, objects)
        return int(await self._call("stream_write", self._name, blobs, None, on_cancel="settle"))

    async def close(self) -> None:
        """stdin: the job sees end of file once everything written is delivered."""
        _req.check_close(self._name)
        await self._call("stream_close", "stdin", on_cancel="settle")


def _went_back(call: asyncio.Future[Any]) -> bool:
    """Whether a finished ``stream_putback`` call leaves nothing to keep: the messages
    went back, or the supervisor is gone and they with it. False: it refused them."""
    if call.cancelled():
        return False
    exc = call.exception()
    if exc is None:
        return bool(call.result())
    if isinstance(exc, (BgTaskError, OSError)):
        return True  # the supervisor is gone, and the messages with it
    raise exc


__all__ = ["STDIN_SLICE", "AsyncStream"]
