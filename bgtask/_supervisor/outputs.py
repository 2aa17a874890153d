"""What clients read: the output buffers and message streams, and consuming them.

* byte streams (stdout, stderr): a :class:`~bgtask._supervisor.buffer.ByteBuffer` each,
  filled by the run's pumps (``io.py``); *eof* when no pipe of any run has a writer;
* message streams (data, control): a :class:`~bgtask._supervisor.buffer.MessageBuffer`
  each, filled by clients; *eof* when the job has exited;
* :meth:`Outputs.read` -- ``[start, end)``, waiting for the first item, consuming or not;
* a consuming read whose reply never reached its client is undone: the read leaves a
  :class:`Claim` for the server (:meth:`Outputs.take_claim`), which hands it back to
  :meth:`Outputs.reply_sent` or :meth:`Outputs.rollback`;
* consuming reads of one stream are a queue: while one's reply is on its way (its claim
  not yet settled), the next consuming read of that stream waits, so a rollback always
  finds the cursor where the claim left it and puts the bytes back in order (without
  the wait, a reader that consumed meanwhile made the rollback impossible and the dead
  client's bytes were lost);
* :meth:`Outputs.putback` -- messages a client consumed but never handed on.

Conditions on the one lock: ``arrived[name]`` (readers: an item or the stream's end) and
``room[name]`` (a byte stream's pump: the buffer has room again).
"""

from __future__ import annotations

import threading

from bgtask._errors import OutputGoneError
from bgtask._supervisor.buffer import ByteBuffer, MessageBuffer
from bgtask._supervisor.errors import caller_error
from bgtask._supervisor.states import EXITED
from bgtask._wire.names import MESSAGE_STREAMS, OUTPUT_STREAMS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from bgtask._supervisor.buffer import Chunks
    from bgtask._supervisor.lock import StateLock
    from bgtask._supervisor.states import JobState
    from bgtask._wire.schema import JobSpec, StreamInfo

    #: ``(start, next, data, limit, eof)``: the wire's answer to ``stream_read``
    ReadReply = tuple[int, int, Chunks | list[bytes] | bytes, int, bool]

#: most bytes (or bytes of messages) one reply carries; clients loop for more.
MAX_REPLY = 32 << 20


class Claim:
    """A consuming read on its way to the client: enough to undo it."""

    __slots__ = ("data", "name", "next", "old_cursor", "old_start")

    def __init__(self, name: str, old_cursor: int, data: Any, nxt: int, old_start: int) -> None:
        self.name = name
        self.old_cursor = old_cursor
        self.data = data
        self.next = nxt
        self.old_start = old_start


class Outputs:
    """The four readable streams of a task.

    :param lock: the supervisor's one lock.
    :param spec: the job spec (``retain``, ``max_buffer``, ``drop``).
    """

    def __init__(self, lock: StateLock, spec: JobSpec) -> None:
        self.lock = lock
        self.bytes = {name: ByteBuffer(spec["retain"], spec["max_buffer"], spec["drop"])
                      for name in OUTPUT_STREAMS}
        self.msgs = {name: MessageBuffer() for name in MESSAGE_STREAMS}
        #: writers of each output stream: pipes of this run and of earlier runs whose
        #: descendants still hold them
        self.open_pipes = dict.fromkeys(OUTPUT_STREAMS, 0)
        self.arrived = {name: lock.condition() for name in OUTPUT_STREAMS + MESSAGE_STREAMS}
        self.room = {name: lock.condition() for name in OUTPUT_STREAMS}
        #: called (lock held) with a stream's name when its buffer may have room again:
        #: the one pump thread of a run polls, it does not wait on :attr:`room`
        self.on_room: Callable[[str], None] = _nothing_named
        #: output bytes consumed by readers so far (the main loop gives their memory
        #: back to the system once reads stop: :func:`~bgtask._supervisor.main_loop.trim`)
        self.consumed = 0
        self.job_ended = False
        #: streams with a consuming read's reply on its way (see :meth:`take_claim`)
        self.claimed: set[str] = set()
        #: called (lock held) when "is the output collected?" may have a new answer
        self.on_collect: Callable[[], None] = _nothing
        self._tls = threading.local()

    # -- the job's side ----------------------------------------------------------------------

    def phase_changed(self, phase: JobState) -> None:
        """A :class:`~bgtask._supervisor.job.Job` listener (lock held): message streams
        end with the job."""
        self.job_ended = phase is EXITED
        for name in MESSAGE_STREAMS:
            self.arrived[name].notify_all()

    def pipe_opened(self, name: str) -> None:
        """A run's *name* pipe got a pump (lock held)."""
        self.open_pipes[name] += 1

    def pipe_closed(self, name: str) -> None:
        """A pump reached EOF and closed its fd."""
        with self.lock:
            self.open_pipes[name] -= 1
            self.arrived[name].notify_all()
            self.on_collect()

    def wait_room(self, name: str, held: set[str], size: int) -> int:
        """Wait until the *name* buffer has room (marking it in *held* meanwhile); returns
        how many bytes the pump may read."""
        buf = self.bytes[name]
        with self.lock:
            if not buf.drop and buf.room() <= 0:
                held.add(name)
                self.room[name].wait_for(lambda: buf.room() > 0)
                held.discard(name)
            return size if buf.drop else min(size, buf.room())

    def deliver(self, name: str, *pieces: bytes) -> None:
        """A pump read *pieces* (in order)."""
        with self.lock:
            self.append_held(name, *pieces)

    def append_held(self, name: str, *pieces: bytes) -> None:
        """Append output *pieces* (lock held)."""
        buf = self.bytes[name]
        for data in pieces:
            buf.append(data)
        self.arrived[name].notify_all()
        if buf.unread >= buf.max_unread:
            self.on_collect()  # full: its pump stops, so nothing more is collected

    def pipes_open(self) -> bool:
        """Does any output pipe still have a writer? (lock held)"""
        return any(self.open_pipes.values())

    def pipes_done(self) -> bool:
        """Nothing more will be collected: every pipe is at EOF or full of unread output
        (not merely waiting for a reply in flight to be sent). Lock held."""
        return all(self.bytes[n].unread >= self.bytes[n].max_unread
                   for n in OUTPUT_STREAMS if self.open_pipes[n])

    def ended(self, name: str) -> bool:
        """Will nothing more arrive on *name* (until a restart)? Lock held."""
        if name in MESSAGE_STREAMS:
            return self.job_ended
        return self.open_pipes[name] == 0

    def info(self, name: str) -> StreamInfo:
        """One stream's info (lock held)."""
        d: Any = (self.msgs[name] if name in MESSAGE_STREAMS else self.bytes[name]).info()
        d["eof"] = self.ended(name)
        return d

    # -- the clients' side -------------------------------------------------------------------

    def write_messages(self, name: str, blobs: list[bytes]) -> int:
        """Append message blobs together (no other writer's come between); the new limit."""
        with self.lock:
            buf = self.msgs[name]
            for blob in blobs:
                buf.append(blob)
            self.arrived[name].notify_all()
            return buf.limit

    def read(self, name: str, start: int | None, end: int | None, consume: bool,
             timeout: float | None, max_bytes: int) -> ReadReply:
        """Read ``[start, end)`` (``start=None``: from the read cursor), waiting up to
        *timeout* seconds (``None``: without limit) for at least one item after *start*,
        or the end of the stream. Arguments are checked by the caller.

        :returns: ``(start, next, data, limit, eof)``; *eof* means nothing more will
            arrive after *next* (until a restart).
        :raises OutputGoneError: *start* is before the first held offset.
        """
        is_msg = name in MESSAGE_STREAMS
        buf: Any = self.msgs[name] if is_msg else self.bytes[name]

        def position() -> int:
            return max(buf.cursor, buf.start) if start is None else start

        def ready() -> bool:
            if consume and name in self.claimed:
                return False  # the reply before it may still be rolled back
            pos = position()
            if pos < buf.start:
                return True  # gone: raised below
            stop = buf.limit if end is None else min(end, buf.limit)
            return pos < stop or self.ended(name) or (end is not None and pos >= end)

        with self.lock:
            if consume and start is not None and start > buf.limit:
                # It would consume the unread items before *start* without returning
                # them, and name a next offset past the end.
                raise caller_error(ValueError(
                    f"a consuming read of {name} cannot start past its limit {buf.limit} "
                    f"(asked for {start})"))
            self.arrived[name].wait_for(ready, timeout)
            pos = position()
            if consume and name in self.claimed:
                # Timed out behind another consuming read: nothing read, nothing consumed.
                return pos, pos, [] if is_msg else b"", buf.limit, False
            if pos < buf.start:
                raise OutputGoneError(f"{name} offsets before {buf.start} are no longer held "
                                      f"(asked for {pos})", start=buf.start)
            stop = buf.limit if end is None else min(end, buf.limit)
            ended = self.ended(name)
            data: Any
            if is_msg:
                data = buf.get(pos, stop, max_bytes) if pos < stop else []
                nxt = pos + len(data)
            else:
                stop = min(stop, pos + max_bytes) if pos < stop else pos
                # The held chunks, not joined: the server writes them out as they are.
                data = buf.parts(pos, stop) if pos < stop else b""
                nxt = stop
            if consume and nxt > buf.cursor:
                self._tls.claim = Claim(name, buf.cursor, data, nxt, buf.start)
                self.claimed.add(name)
                if not is_msg:
                    buf.inflight += nxt - buf.cursor  # until reply_sent() or rollback()
                    self.consumed += nxt - buf.cursor
                buf.consume(nxt)
                if not is_msg:
                    self.room[name].notify_all()  # a blocked pump may go on
                    self.on_room(name)
            return pos, nxt, data, buf.limit, ended and nxt >= buf.limit

    def putback(self, name: str, blobs: list[bytes], consumed_end: int) -> bool:
        """Return messages a client consumed but never handed on (``follow()`` left
        early), in front of the unread ones, if nothing was consumed since (the cursor
        is still *consumed_end*); otherwise they stay consumed (no reordering).

        :returns: whether they went back.
        """
        with self.lock:
            buf = self.msgs[name]
            if len(blobs) > consumed_end or consumed_end > buf.limit:
                # More than were ever consumed up to *consumed_end*: the offsets would go
                # below 0 (start -4, unread 5 of a limit of 1).
                raise caller_error(ValueError(
                    f"cannot put back {len(blobs)} messages consumed before offset "
                    f"{consumed_end} of {name} (limit {buf.limit})"))
            back = buf.unconsume(blobs, consumed_end)
            if back:
                self.arrived[name].notify_all()
            return back

    # -- a consuming read's reply (server use) -----------------------------------------------

    def take_claim(self) -> Claim | None:
        """The last consuming read of this thread, if any; forgets it."""
        claim: Claim | None = getattr(self._tls, "claim", None)
        self._tls.claim = None
        return claim

    def reply_sent(self, claim: Claim) -> None:
        """The reply of a consuming read is out: its bytes no longer count as held."""
        with self.lock:
            self._settle(claim.name)
            if claim.name in OUTPUT_STREAMS:
                self.bytes[claim.name].inflight -= claim.next - claim.old_cursor
                self.room[claim.name].notify_all()  # a pump waiting for room may go on
                self.on_room(claim.name)

    def rollback(self, claim: Claim) -> None:
        """Undo a consuming read whose reply never reached the client."""
        name = claim.name
        with self.lock:
            self._settle(name)
            if name in MESSAGE_STREAMS:
                if self.msgs[name].unconsume(claim.data, claim.next):
                    self.arrived[name].notify_all()
            else:
                buf = self.bytes[name]
                buf.inflight -= claim.next - claim.old_cursor
                if buf.cursor == claim.next:
                    buf.unconsume(claim.old_cursor, claim.data, claim.old_start)
                self.arrived[name].notify_all()
                self.room[name].notify_all()
                self.on_room(name)

    def _settle(self, name: str) -> None:
        """A claim on *name* is settled (lock held): the next consuming read may go."""
        self.claimed.discard(name)
        self.arrived[name].notify_all()


def _nothing_named(name: str) -> None:
    pass


def _nothing() -> None:
    return None


__all__ = ["MAX_REPLY", "Claim", "Outputs"]
