"""The stdin stream: bytes accepted from clients, fed to the job in order.

Offsets: ``accepted`` (the stream's limit) = ``delivered`` + ``discarded`` + pending.
Bytes that can no longer reach the job (it closed its stdin, or ended) are *discarded*,
never silently lost: :meth:`StdinQueue.discard` counts them.

Two conditions on the supervisor's one lock: :attr:`StdinQueue.space` (writers wait for
room, or for the stream to close) and :attr:`StdinQueue.work` (the feeder waits for
bytes, a close, or the end of its run).
"""

from __future__ import annotations

from collections import deque

from bgtask._errors import StreamClosedError
from bgtask._supervisor.errors import caller_error
from bgtask._supervisor.states import EXITED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from bgtask._supervisor.lock import StateLock
    from bgtask._supervisor.states import JobState
    from bgtask._wire.schema import StreamInfo

#: bytes of stdin accepted but not yet delivered to the job, at most.
STDIN_BUFFER = 1 << 20


class StdinQueue:
    """Pending stdin bytes and the offsets of the stream.

    :param lock: the supervisor's one lock.
    :param pid: the task's pid, for messages.
    """

    def __init__(self, lock: StateLock, pid: int) -> None:
        self.lock = lock
        self.pid = pid
        self.space = lock.condition()
        self.work = lock.condition()
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.head_off = 0      # bytes of pending[0] already written to the pipe
        self.accepted = 0      # the stream's limit
        self.delivered = 0
        self.discarded = 0
        self.closing = False   # close() asked: deliver what is pending, then close
        self.closed = True     # the pipe is closed (no job yet, closed, or job ended)
        self.job_ended = False
        #: the run I/O now feeding the job (its feeder's token), None between runs
        self.feeder: object | None = None

    @property
    def start(self) -> int:
        return self.delivered + self.discarded

    def info(self) -> StreamInfo:
        """The stream's info (lock held)."""
        return {"start": self.start, "limit": self.accepted, "cursor": self.start,  # type: ignore[typeddict-unknown-key]
                "unread": self.pending_bytes, "delivered": self.delivered,
                "discarded": self.discarded, "eof": self.closed or self.closing}

    # -- the job's side ----------------------------------------------------------------------

    def attach(self, feeder: object) -> None:
        """A run starts with a fresh pipe fed by *feeder* (lock held)."""
        self.feeder = feeder
        self.closed = self.closing = False
        self.work.notify_all()

    def phase_changed(self, phase: JobState) -> None:
        """A :class:`~bgtask._supervisor.job.Job` listener (lock held): stdin ends with the
        job, and pending bytes can no longer be delivered."""
        self.job_ended = phase is EXITED
        if self.job_ended:
            self.feeder = None
            self.discard()

    def discard(self) -> None:
        """Drop what is pending (counted as discarded) and close the stream (lock held)."""
        self.discarded += self.pending_bytes
        self.pending.clear()
        self.pending_bytes = 0
        self.head_off = 0
        self.closed = True
        self.space.notify_all()
        self.work.notify_all()

    def next_chunk(self, feeder: object) -> tuple[bytes, int] | None:
        """The feeder's next work: ``(chunk, offset in it)``, or None to stop (its run
        ended, or a close with nothing pending: the pipe is closed then)."""
        with self.lock:
            self.work.wait_for(lambda: self.feeder is not feeder or bool(self.pending) or self.closing)
            if self.feeder is not feeder:
                return None
            if not self.pending:  # closing, and all delivered
                self.closed = True
                self.space.notify_all()
                return None
            return self.pending[0], self.head_off

    def delivered_to(self, feeder: object, data: bytes, off: int, n: int) -> None:
        """*n* bytes of *data* from *off* reached the job."""
        with self.lock:
            if self.feeder is feeder and self.pending and self.pending[0] is data and self.head_off == off:
                self.delivered += n
                self.pending_bytes -= n
                self.head_off += n
                if self.head_off == len(data):
                    self.pending.popleft()
                    self.head_off = 0
                self.space.notify_all()

    def broken(self, feeder: object) -> None:
        """The job closed its stdin (EPIPE): nothing more goes in."""
        with self.lock:
            if self.feeder is feeder:
                self.discard()

    # -- the clients' side -------------------------------------------------------------------

    def write(self, data: bytes, timeout: float | None) -> int:
        """Queue *data* for the job; returns the new limit. Blocks while the queue is full.

        :raises StreamClosedError: closed, or the job has ended.
        :raises TimeoutError: still full after *timeout* seconds.
        """
        with self.lock:
            fits = self.space.wait_for(
                lambda: self.closing or self.closed or not self.pending_bytes
                or self.pending_bytes + len(data) <= STDIN_BUFFER, timeout)
            if self.closing or self.closed:
                # Say what the writer can act on: an ended job can be restarted.
                if self.job_ended:
                    why = "the job has ended"
                elif self.closing:
                    why = "stdin was closed"
                else:
                    # EPIPE: the job closed its stdin, or it is exiting and the reaper
                    # has not seen it yet (a blocked writer wakes first)
                    why = "the job closed its stdin or has ended"
                raise StreamClosedError(f"cannot write to stdin of task {self.pid}: {why}")
            if not fits:
                raise caller_error(TimeoutError(
                    f"stdin of task {self.pid} is full (the job is not reading); "
                    f"{self.accepted} bytes accepted so far"))
            if data:
                self.pending.append(data)
                self.pending_bytes += len(data)
                self.accepted += len(data)
                self.work.notify_all()
                self._kick()
            return self.accepted

    def close(self) -> None:
        """The job sees EOF once what is pending is delivered."""
        with self.lock:
            self.closing = True
            self.work.notify_all()
            self.space.notify_all()
            self._kick()

    def _kick(self) -> None:
        # The feeder thread is started on the first write or close (lock held): most
        # jobs never get stdin, and an idle supervisor should cost few threads.
        kick = getattr(self.feeder, "kick", None)
        if kick is not None:
            kick()


__all__ = ["STDIN_BUFFER", "StdinQueue"]
