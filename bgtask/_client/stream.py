"""A task's streams as seen by a client: ``task.stream(which)``.

Byte streams (stdin, stdout, stderr) count bytes; message streams (data, control) count
messages, each a Python object encoded with dill by the writer and decoded by the
reader. Offsets are absolute and keep growing across restarts. See ``_buffer`` for the
offset rules (``start <= cursor <= limit``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from bgtask._client import codec as _codec
from bgtask._client import requests as _req
from bgtask._errors import BgTaskError, HostUnreachableError, OutputGoneError
from bgtask._wire.names import MESSAGE_STREAMS, STREAMS

if TYPE_CHECKING:
    from bgtask._client.task import Task

_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}
#: how long one follow() call waits on the supervisor before asking again.
FOLLOW_SLICE = 10.0
#: the largest chunk follow() asks for. A chunk of a few MiB is reused heap memory, still
#: in the CPU's cache on both sides; a 32 MiB one (the supervisor's cap) is a fresh
#: memory mapping each time with a page fault on every page: following a fast job was
#: 1.2x faster with 4 MiB than with 32 MiB chunks, and 1.4x faster than with 1 MiB.
FOLLOW_CHUNK = 4 << 20
#: how many times in a row follow() reconnects to a remote pool whose ssh connection
#: dropped before it gives up (about 6 s of backing off in all).
FOLLOW_RECONNECTS = 6
#: largest piece of stdin sent in one call (the supervisor buffers 1 MiB).
STDIN_CHUNK = 1 << 20


def stream_name(which: object) -> str:
    """0/1/2 or a name -> the stream's name.

    :raises ValueError: an unknown stream.
    :raises TypeError: neither an int nor a str.
    """
    if isinstance(which, bool):
        raise TypeError("a stream is 0, 1, 2 or a name, not a bool")
    if isinstance(which, int):
        if which in _NAMES:
            return _NAMES[which]
        raise ValueError(f"unknown stream {which}: use 0, 1, 2 or one of {', '.join(STREAMS)}")
    if isinstance(which, str) and which in STREAMS:
        return which
    if isinstance(which, str):
        raise ValueError(f"unknown stream {which!r}: one of {', '.join(STREAMS)} (or 0, 1, 2)")
    raise TypeError(f"a stream is 0, 1, 2 or a name, not {type(which).__name__}")


_check_offset = _req.check_offset  # the shared check (``_client/requests.py``)


#: how a stream calls its supervisor: ``call(method, *args, blocks_for=...)``.
Caller = Callable[..., Any]


class Stream:
    """One stream of a task. ``start``/``limit``/``eof`` ask the supervisor on each access.

    ``Stream(task, which)`` is ``task.stream(which)``.

    :param task: the task.
    :param which: 0/"stdin", 1/"stdout", 2/"stderr", "data" or "control".
    :raises TypeError: *task* is not a :class:`~bgtask.Task`, or *which* has the wrong type.
    :raises ValueError: an unknown stream.
    """

    def __init__(self, task: Task, which: int | str) -> None:
        from bgtask._client.task import Task

        if not isinstance(task, Task):
            raise TypeError(f"a Stream belongs to a bgtask.Task, not {type(task).__name__}")
        made = task.stream(which)  # checks *which*; the task hands over its call function
        self._setup(task, made._name, made._call)

    @classmethod
    def _of(cls, task: Task, name: str, call: Caller) -> Stream:
        """The stream *name* (already checked) of *task*, calling through *call*."""
        self = cls.__new__(cls)
        self._setup(task, name, call)
        return self

    def _setup(self, task: Task, name: str, call: Caller) -> None:
        self._task = task
        self._name = name
        self._call = call

    @property
    def name(self) -> str:
        """The stream's name: stdin, stdout, stderr, data or control."""
        return self._name

    @property
    def task(self) -> Task:
        """The task whose stream this is."""
        return self._task

    @property
    def is_messages(self) -> bool:
        """A message stream (data, control): it counts and returns Python objects."""
        return self._name in MESSAGE_STREAMS

    def __dir__(self) -> list[str]:
        # tab completion: the everyday API, not the machinery of the handle
        return ["name", "task", "is_messages", "start", "limit", "eof", "info", "read", "follow",
                "write", "write_many", "close"]

    def info(self) -> dict[str, Any]:
        """The stream's part of the info dict (start, limit, cursor, unread, eof, ...)."""
        return dict(self._call("stream_info", self._name))

    @property
    def start(self) -> int:
        """The first offset still held."""
        return int(self.info()["start"])

    @property
    def limit(self) -> int:
        """The end offset (one past the last byte or message)."""
        return int(self.info()["limit"])

    @property
    def eof(self) -> bool:
        """Nothing more will arrive until a restart (unread items may remain)."""
        return bool(self.info()["eof"])

    def __repr__(self) -> str:
        try:
            i = self.info()
        except Exception as exc:
            return f"<bgtask.Stream {self._task.pid}/{self._name} ({type(exc).__name__})>"
        unit = "messages" if self.is_messages else "bytes"
        extra = " eof" if i.get("eof") else ""
        if i.get("dropped"):
            extra += f" dropped={i['dropped']}"
        return (f"<bgtask.Stream {self._task.pid}/{self._name} start={i['start']} "
                f"limit={i['limit']} unread={i['unread']} {unit}{extra}>")

    # -- reading ---------------------------------------------------------------------------

    def read(self, start: int | None = None, end: int | None = None, *,
             timeout: float | None = 0.0) -> Any:
        """Read output (bytes) or messages (a list of decoded objects).

        ``read()`` returns everything unread and consumes it; ``read(start, end)`` returns
        ``[start, end)`` without consuming (``end`` past the limit is cut at the limit).
        With *timeout*, wait up to that long (``None``: without limit) for at least one
        new item, or the end of the stream.

        :raises OutputGoneError: *start* is before :attr:`start`.
        :raises ValueError: reading stdin, or ``end < start``.
        """
        consume = _req.check_read(self._name, start, end, timeout)
        _pos, nxt, data, limit, _eof = self._read_once(start, end, consume, timeout)
        if not data:
            return _req.empty_read(self.is_messages)
        parts = [data]
        goal = _req.read_goal(limit, end)
        while nxt < goal:  # the supervisor caps one reply: fetch the rest of the range
            _pos, nxt, more, _limit, _eof = self._read_once(None if consume else nxt, end, consume, 0.0)
            if not more:
                break
            parts.append(more)
        return _req.decode_read(self.is_messages, parts)

    def _read_once(self, start: int | None, end: int | None, consume: bool,
                   timeout: float | None, max_bytes: int | None = None) -> tuple[int, int, Any, int, bool]:
        __tracebackhide__ = True  # IPython and pytest show read()/follow(), not this
        return self._call("stream_read", *_req.read_args(self._name, start, end, consume, timeout, max_bytes),
                          blocks_for=timeout)

    def follow(self, start: int | None = None) -> Iterator[Any]:
        """Yield output until the end of the stream: bytes chunks, or single messages.

        ``follow()`` consumes like ``read()``; ``follow(start)`` reads from *start*
        without consuming. Arguments are checked here, not at the first ``next()``.

        A consuming ``follow()`` of messages fetches them in batches; if the loop stops
        early (``break``, an exception, the iterator closed), the messages of the batch
        it never yielded are put back in front of the unread ones, so the next reader
        gets them -- unless another client consumed from the stream in the meantime
        (putting them back would then reorder it).

        :raises ValueError: following stdin.
        """
        _req.check_follow(self._name, start)
        return self._follow(start)

    def _follow(self, pos: int | None) -> Iterator[Any]:
        consume = pos is None
        last: int | None = None  # where the last read ended
        drops = 0
        while True:
            # After a dropped ssh connection (a remote pool; the job goes on), read on
            # from where the last read ended: a consuming read whose reply was lost had
            # consumed it, and the retained output still holds it.
            start = pos if pos is not None else last if drops else None
            try:
                _p, nxt, data, _limit, eof = self._read_once(start, None, consume, FOLLOW_SLICE,
                                                             FOLLOW_CHUNK)
            except HostUnreachableError:
                drops += 1
                if drops > FOLLOW_RECONNECTS:
                    raise
                time.sleep(min(1.0, 0.05 * 2 ** drops))
                continue
            except OutputGoneError:
                if not (drops and pos is None):
                    raise
                drops = 0  # no longer retained: on from the read cursor
                continue
            drops = 0
            last = nxt
            if pos is not None:
                pos = nxt
            if data:
                if not self.is_messages:
                    yield data
                elif not consume:
                    for blob in data:
                        yield _codec.decode(blob)
                else:
                    yield from self._hand_on(data, nxt)
            elif eof:
                return

    def _hand_on(self, blobs: list[bytes], consumed_end: int) -> Iterator[Any]:
        """Yield consumed messages; put back the ones never yielded if the loop stops."""
        done = 0
        reader = os.getpid()
        try:
            for blob in blobs:
                obj = _codec.decode(blob)
                done += 1
                yield obj
        finally:
            # A forked child that drops its copy of the iterator must not put back what
            # the parent is still yielding.
            if done < len(blobs) and os.getpid() == reader:
                try:
                    self._call("stream_putback", self._name, blobs[done:], consumed_end)
                except (BgTaskError, OSError):
                    pass  # the supervisor is gone, and the messages with it

    def __iter__(self) -> Iterator[Any]:
        return self.follow()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data: Any, timeout: float | None = None) -> int:
        """Write to stdin (bytes or str, UTF-8) or send one message (data/control).

        stdin blocks while the job's pipe and the supervisor's buffer are full.

        :returns: the stream's limit after the write.
        :raises TimeoutError: stdin stayed full for *timeout* seconds (the bytes sent
            before stay sent: see the stream's ``limit``).
        :raises StreamClosedError: stdin was closed, or the job has ended.
        :raises TypeError: the data has the wrong type, or a message cannot be
            serialized by dill (nothing is sent then).
        :raises ValueError: writing stdout/stderr.
        """
        payload = _req.check_write(self._name, data, timeout)
        if self.is_messages:
            return int(self._call("stream_write", self._name, payload, None))
        deadline = None if timeout is None else time.monotonic() + timeout
        limit = 0
        for i in range(0, max(len(payload), 1), STDIN_CHUNK):
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            limit = int(self._call("stream_write", "stdin", payload[i:i + STDIN_CHUNK], remaining,
                                         blocks_for=remaining))
        return limit

    def write_many(self, objects: Iterable[Any]) -> int:
        """Send several messages (data/control) in one call.

        Every object is encoded before anything is sent; the messages arrive in order,
        with no other writer's message between them, however many there are (they
        travel in one call, so the caller and the supervisor each hold all of them
        once). One round trip instead of one per message: for many small messages, 10x
        or more faster than :meth:`write` in a loop.

        :returns: the stream's limit after the last message.
        :raises TypeError: *objects* is not iterable, or one of them cannot be serialized
            by dill (its index is named; nothing is sent then).
        :raises ValueError: a byte stream (use :meth:`write` for stdin).
        """
        blobs = _req.encode_many(self._name, objects)
        # One call, whatever the size: the supervisor appends a call's messages under its
        # lock, so nothing can come between them; split into several calls, another
        # writer's message could land between two of them.
        return int(self._call("stream_write", self._name, blobs, None))

    def close(self) -> None:
        """stdin: the job sees end of file once everything written is delivered."""
        _req.check_close(self._name)
        self._call("stream_close", "stdin")


__all__ = ["Stream", "stream_name"]
