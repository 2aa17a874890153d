"""The supervisor's state of one task: the job's life and its five streams.

:class:`TaskState` is the object the supervisor's manager serves; its methods named in
``_protocol.EXPOSED`` are the only ones a client can call. One lock guards everything;
one condition (``changed``) is notified on every change, and every blocking call waits
on it with a deadline. Taking the lock marks the encoded ``info()`` reply stale (see
:class:`StateLock`): an idle task answers ``info()`` from that cache, the cost of a bare
call (building and pickling the dict was 40% of a call).

The job's life is one explicit state machine (:data:`TRANSITIONS`)::

    running <-> paused
    running/paused -> exited -> running (restart)

Threads, per run of the job: a *reaper* (``waitid``: stops, continues, exit), one *pump*
per output pipe (pipe -> :class:`~bgtask._buffer.ByteBuffer`) and a *feeder* for stdin.
A run's threads only touch their own run's fds, so a restart never mixes them up.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import signal
import threading
import time
from collections import deque

from bgtask import _paths, _process
from bgtask._errors import OutputGoneError, StreamClosedError
from bgtask._supervisor.buffer import ByteBuffer, MessageBuffer
from bgtask._supervisor.launch import StartError, launch, take_lock
from bgtask._wire.checks import check_timeout as _check_timeout
from bgtask._wire.faults import start_error_to_exception
from bgtask._wire.names import COLLECT_GRACE, MESSAGE_STREAMS, OUTPUT_STREAMS, STREAMS

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bgtask._supervisor.boot import Startup

TRANSITIONS = {
    "running": {"paused", "exited"},
    "paused": {"running", "exited"},
    "exited": {"running"},
}
#: most bytes (or bytes of messages) one reply carries; clients loop for more.
MAX_REPLY = 32 << 20
#: bytes of stdin accepted but not yet delivered to the job, at most.
STDIN_BUFFER = 1 << 20
_PIPE_BIG = 1 << 20
_FEED_CHUNK = 64 * 1024


class _Run:
    """One execution of the job: its pid and fds, owned by this run's threads."""

    def __init__(self, pid: int, stdin_w: int, stdout_r: int, stderr_r: int) -> None:
        self.pid = pid
        self.pgid = pid
        self.stdin_w = stdin_w
        self.out_fds = {"stdout": stdout_r, "stderr": stderr_r}
        #: byte streams whose pump is waiting for room (so its fd is open and idle)
        self.held: set[str] = set()


class _Stdin:
    """The stdin stream: bytes accepted from clients, fed to the job's pipe in order."""

    def __init__(self) -> None:
        self.pending: deque[bytes] = deque()
        self.pending_bytes = 0
        self.head_off = 0     # bytes of pending[0] already written to the pipe
        self.accepted = 0   # limit
        self.delivered = 0
        self.discarded = 0
        self.closing = False  # close() asked: deliver what is pending, then close
        self.closed = True    # the pipe is closed (no job yet, closed, or job ended)

    @property
    def start(self) -> int:
        return self.delivered + self.discarded

    def info(self) -> dict[str, Any]:
        return {"start": self.start, "limit": self.accepted, "cursor": self.start,
                "unread": self.pending_bytes, "delivered": self.delivered,
                "discarded": self.discarded, "eof": self.closed or self.closing}


class StateLock:
    """The state's one lock. Each time it is taken, :attr:`gen` grows.

    Nothing a client can see changes without this lock, so a reply encoded while
    :attr:`gen` had a value is still exact while it has that value: the cache of
    :meth:`TaskState.info_reply`, which takes :attr:`raw` itself so as not to count.
    Every other taking counts, reads too: a needless rebuild is cheap, a stale answer is
    a bug. Works under ``threading.Condition`` like a plain lock.
    """

    __slots__ = ("gen", "raw")

    def __init__(self) -> None:
        self.raw = threading.Lock()
        self.gen = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.raw.acquire(blocking, timeout):
            self.gen += 1  # under the lock: no update is lost
            return True
        return False

    def release(self) -> None:
        self.raw.release()

    def locked(self) -> bool:
        return self.raw.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.raw.release()


class TaskState:
    """Everything the supervisor knows about its task, served to clients."""

    def __init__(self, startup: Startup) -> None:
        cfg = startup.config
        self.startup = startup
        self.pid = startup.pid
        self.pool = startup.pool
        self.argv: list[str] = list(cfg["argv"])
        self.env: dict[str, str] = cfg["env"]
        self.cwd: str = cfg["cwd"]
        self.lock_name: str | None = cfg["lock"]
        self.shell: bool = cfg.get("shell", False)
        self.command: str | None = cfg.get("command")
        self.meta: dict[str, bytes] = dict(cfg["meta"])
        self.owner = os.geteuid()
        self.lock = StateLock()
        self.changed = threading.Condition(self.lock)  # type: ignore[arg-type]
        self._info_reply: tuple[int, bytes] | None = None
        self.out = {name: ByteBuffer(cfg["retain"], cfg["max_buffer"], cfg["drop"])
                    for name in OUTPUT_STREAMS}
        self.open_pipes = {name: 0 for name in OUTPUT_STREAMS}
        self.msgs = {name: MessageBuffer() for name in MESSAGE_STREAMS}
        self.stdin = _Stdin()
        self.state = "exited"
        self.run: _Run | None = None
        self.prev_run: _Run | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.ended_mono: float | None = None
        self.restarts = 0
        self.created_at = time.time()
        self.deleting = False
        self.exit_requested = False
        self._tls = threading.local()
        assert startup.job is not None
        with self.lock:
            self._begin_run(*startup.job)

    # -- the state machine ---------------------------------------------------------------

    def _transition(self, new: str) -> None:
        if new not in TRANSITIONS[self.state]:
            raise AssertionError(f"bad job transition {self.state} -> {new}")
        self.state = new
        self.changed.notify_all()

    def _begin_run(self, pid: int, stdin_w: int, stdout_r: int, stderr_r: int) -> None:
        """Record a freshly started job and start its threads (lock held)."""
        run = _Run(pid, stdin_w, stdout_r, stderr_r)
        self.run = run
        self.exit_code = self.signal = None
        self.started_at = time.time()
        self.ended_at = self.ended_mono = None
        self.stdin.closed = self.stdin.closing = False
        self._transition("running")
        for name in OUTPUT_STREAMS:
            self.open_pipes[name] += 1
            _thread(self._pump, f"pump-{name}", run, name)
        _thread(self._feed, "feed-stdin", run)
        _thread(self._reap, "reaper", run)

    def _end_run(self, run: _Run, status: Any) -> None:
        """The job exited (lock held, not yet reaped, so its pgid is still ours)."""
        if status.si_code == os.CLD_EXITED:
            self.exit_code, self.signal = status.si_status, None
        else:
            self.exit_code, self.signal = None, status.si_status
        self.ended_at = time.time()
        self.ended_mono = time.monotonic()
        self._transition("exited")
        self.run = None
        self.prev_run = run
        if self.deleting:
            # The supervisor is going away: take the job's stragglers along while the
            # zombie leader still pins the process group id.
            _killpg(run.pgid, signal.SIGKILL)
        # stdin ends with the job: pending bytes can no longer be delivered.
        st = self.stdin
        st.discarded += st.pending_bytes
        st.pending.clear()
        st.pending_bytes = 0
        st.head_off = 0
        st.closed = True
        _paths.write_job_record(self.startup.token_fd, None, None)
        if self.startup.lock_fd >= 0:
            os.close(self.startup.lock_fd)  # releases the spawn(lock=...) lock
            self.startup.lock_fd = -1

    # -- threads -------------------------------------------------------------------------

    def _reap(self, run: _Run) -> None:
        flags = os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOWAIT
        while True:
            try:
                status = os.waitid(os.P_PID, run.pid, flags)
            except ChildProcessError:
                return
            if status is None:
                continue
            with self.lock:
                if status.si_code in (os.CLD_STOPPED, os.CLD_TRAPPED, os.CLD_CONTINUED):
                    # Consume the notification so the next waitid sees the next one, and
                    # act on the one consumed, not the one peeked at: a pause() + resume()
                    # in between replaces "stopped" by "continued", and acting on the stale
                    # "stopped" would leave the task paused for good while the job runs.
                    try:
                        status = os.waitid(os.P_PID, run.pid, os.WSTOPPED | os.WCONTINUED | os.WNOHANG)
                    except ChildProcessError:
                        # It has exited since (a pause() then a kill or delete): a zombie
                        # is not waitable without WEXITED, and Linux says ECHILD. The
                        # next waitid sees the exit; dying here would hide it for good.
                        status = None
                    if status is None:
                        continue
                    if status.si_code == os.CLD_CONTINUED and self.state == "paused":
                        self._transition("running")
                    elif status.si_code != os.CLD_CONTINUED and self.state == "running":
                        self._transition("paused")
                    continue
                self._end_run(run, status)
                os.waitpid(run.pid, 0)  # reap under the lock: kill() never sees a freed pid
                self.changed.notify_all()
                return

    def _pump(self, run: _Run, name: str) -> None:
        buf = self.out[name]
        fd = run.out_fds[name]
        size = 64 * 1024
        grown = False
        try:
            while True:
                with self.lock:
                    while not buf.drop and buf.room() <= 0:
                        run.held.add(name)
                        self.changed.wait()
                    run.held.discard(name)
                    n = size if buf.drop else min(size, buf.room())
                try:
                    data = os.read(fd, n)
                except OSError:
                    data = b""
                if not data:
                    return
                if not grown and len(data) == size:
                    # The pipe was full: this job writes a lot. A bigger pipe buffer
                    # halves the context switches (idle jobs keep the default, so that a
                    # user with many tasks does not exhaust the per-user pipe budget).
                    grown = True
                    try:
                        size = fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _PIPE_BIG)
                    except OSError:
                        pass
                with self.lock:
                    buf.append(data)
                    self.changed.notify_all()
        finally:
            os.close(fd)
            with self.lock:
                self.open_pipes[name] -= 1
                self.changed.notify_all()

    def _feed(self, run: _Run) -> None:
        st = self.stdin
        fd = run.stdin_w
        try:
            while True:
                with self.lock:
                    while self.run is run and not st.pending and not st.closing:
                        self.changed.wait()
                    if self.run is not run or (st.closing and not st.pending):
                        if self.run is run:
                            st.closed = True
                            self.changed.notify_all()
                        return
                    data = st.pending[0]
                    off = st.head_off
                try:
                    # At most 64 KiB per write: a blocking write of a whole 1 MiB chunk
                    # would report nothing delivered until the job had read all of it.
                    with memoryview(data) as view:
                        n = os.write(fd, view[off:off + _FEED_CHUNK])
                except OSError:
                    with self.lock:
                        if self.run is run:  # the job closed its stdin: nothing more goes in
                            st.discarded += st.pending_bytes
                            st.pending.clear()
                            st.pending_bytes = 0
                            st.head_off = 0
                            st.closed = True
                            self.changed.notify_all()
                    return
                with self.lock:
                    if self.run is run and st.pending and st.pending[0] is data and st.head_off == off:
                        st.delivered += n
                        st.pending_bytes -= n
                        st.head_off += n
                        if st.head_off == len(data):
                            st.pending.popleft()
                            st.head_off = 0
                        self.changed.notify_all()
        finally:
            os.close(fd)

    # -- exposed: information ------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with self.lock:
            return self._info()

    def info_reply(self) -> bytes:
        """``("#RETURN", info())`` pickled, as the server sends it; encoded again only
        when the lock was taken since the last time (:class:`StateLock`)."""
        with self.lock.raw:
            cached = self._info_reply
            if cached is not None and cached[0] == self.lock.gen:
                return cached[1]
            data = pickle.dumps(("#RETURN", self._info()), pickle.DEFAULT_PROTOCOL)
            self._info_reply = (self.lock.gen, data)
            return data

    def _info(self) -> dict[str, Any]:
        """The info dict (lock held)."""
        run = self.run
        rc = self.exit_code if self.signal is None else -self.signal
        streams: dict[str, Any] = {"stdin": self.stdin.info()}
        for name in OUTPUT_STREAMS:
            d = self.out[name].info()
            d["eof"] = self.open_pipes[name] == 0
            streams[name] = d
        ended = self.state == "exited"
        for name in MESSAGE_STREAMS:
            d = self.msgs[name].info()
            d["eof"] = ended
            streams[name] = d
        return {
            "pid": self.pid,
            "child_pid": run.pid if run is not None else None,
            "argv": list(self.argv),
            "command": self.command,
            "shell": self.shell,
            "cwd": self.cwd,
            "meta": dict(self.meta),
            "owner": self.owner,
            "lock": self.lock_name,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "restarts": self.restarts,
            "state": self.state,
            "status": {
                "running": self.state != "exited",
                "paused": self.state == "paused",
                "exit_code": self.exit_code,
                "signal": self.signal,
                "returncode": None if self.state != "exited" else rc,
            },
            "streams": streams,
        }

    def apply_meta(self, blobs: dict[str, bytes]) -> dict[str, bytes]:
        if not isinstance(blobs, dict):
            raise TypeError("apply_meta takes a dict of str -> dill blob")
        for key, value in blobs.items():
            if not isinstance(key, str) or not isinstance(value, bytes):
                raise TypeError("apply_meta takes a dict of str -> dill blob")
        with self.lock:
            self.meta.update(blobs)
            self.changed.notify_all()
            return dict(self.meta)

    def stream_info(self, name: str) -> dict[str, Any]:
        _check_stream(name)
        return self.info()["streams"][name]

    # -- exposed: reading ------------------------------------------------------------------

    def stream_read(self, name: str, start: int | None, end: int | None, consume: bool,
                    timeout: float | None, max_bytes: int = MAX_REPLY) -> tuple[int, int, Any, int, bool]:
        """Read ``[start, end)`` (``start=None``: from the read cursor).

        Waits up to *timeout* seconds (``None``: without limit) for at least one item
        after *start*, or the end of the stream.

        :returns: ``(start, next, data, limit, eof)``; *eof* means nothing more will
            arrive after *next* (until a restart).
        :raises OutputGoneError: *start* is before the first held offset.
        """
        _check_stream(name)
        if name == "stdin":
            raise ValueError("stdin cannot be read: it is written by clients and read by the job")
        if start is not None and (not isinstance(start, int) or start < 0):
            raise ValueError(f"start must be a non-negative int, not {start!r}")
        if end is not None and (not isinstance(end, int) or end < 0):
            raise ValueError(f"end must be a non-negative int, not {end!r}")
        _check_timeout(timeout)
        if not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError("max_bytes must be a positive int")
        deadline = None if timeout is None else time.monotonic() + timeout
        is_msg = name in MESSAGE_STREAMS
        buf: Any = self.msgs[name] if is_msg else self.out[name]
        with self.lock:
            while True:
                pos = buf.cursor if start is None else start
                if pos < buf.start:
                    if start is None:
                        pos = buf.start
                    else:
                        raise OutputGoneError(
                            f"{name} offsets before {buf.start} are no longer held "
                            f"(asked for {pos})", start=buf.start)
                stop = buf.limit if end is None else min(end, buf.limit)
                ended = self._stream_ended(name)
                if pos < stop or ended or (end is not None and pos >= end):
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self.changed.wait(remaining)
            if is_msg:
                data = buf.get(pos, stop, max_bytes) if pos < stop else []
                nxt = pos + len(data)
            else:
                stop = min(stop, pos + max_bytes) if pos < stop else pos
                # The held chunks, not joined: the server writes them out as they are.
                data = buf.parts(pos, stop) if pos < stop else b""
                nxt = stop
            if consume and nxt > buf.cursor:
                self._tls.rollback = (name, buf.cursor, data, nxt, buf.start)
                if not is_msg:
                    buf.inflight += nxt - buf.cursor  # until reply_sent() or rollback()
                buf.consume(nxt)
                self.changed.notify_all()  # a blocked pump may go on
            eof = ended and nxt >= buf.limit
            return pos, nxt, data, buf.limit, eof

    def _stream_ended(self, name: str) -> bool:
        if name in MESSAGE_STREAMS:
            return self.state == "exited"
        return self.open_pipes[name] == 0

    def take_rollback(self) -> Any:
        """The last consuming read of this thread, for :meth:`rollback` (server use)."""
        rb = getattr(self._tls, "rollback", None)
        self._tls.rollback = None
        return rb

    def rollback(self, rb: Any) -> None:
        """Undo a consuming read whose reply never reached the client."""
        name, old_cursor, data, nxt, old_start = rb
        with self.lock:
            if name in MESSAGE_STREAMS:
                self.msgs[name].unconsume(data, nxt)
            else:
                buf = self.out[name]
                buf.inflight -= nxt - old_cursor
                if buf.cursor == nxt:
                    buf.unconsume(old_cursor, data, old_start)
                self.changed.notify_all()

    def stream_putback(self, name: str, blobs: list[bytes], consumed_end: int) -> bool:
        """Return messages a client consumed but never handed on (``follow()`` left early).

        They go back in front of the unread ones only if nothing was consumed since
        (the read cursor is still *consumed_end*); otherwise putting them back would
        reorder the stream, so they stay consumed. :returns: whether they went back.
        """
        _check_stream(name)
        if name not in MESSAGE_STREAMS:
            raise ValueError(f"only messages can be put back, not {name}")
        if (not isinstance(blobs, list) or not all(type(b) is bytes for b in blobs)
                or not isinstance(consumed_end, int) or isinstance(consumed_end, bool)):
            raise TypeError("stream_putback takes a list of bytes and an int offset")
        with self.lock:
            back = self.msgs[name].unconsume(blobs, consumed_end)
            if back:
                self.changed.notify_all()
            return back

    def reply_sent(self, rb: Any) -> None:
        """The reply of a consuming read is out: its bytes no longer count as held."""
        name, old_cursor, _data, nxt, _old_start = rb
        if name in OUTPUT_STREAMS:
            with self.lock:
                self.out[name].inflight -= nxt - old_cursor
                self.changed.notify_all()  # a pump waiting for room may go on

    # -- exposed: writing ------------------------------------------------------------------

    def stream_write(self, name: str, data: bytes, timeout: float | None = None) -> int:
        """Append *data*; returns the stream's new limit.

        stdin: blocks while the stdin buffer is full (``TimeoutError`` after *timeout*).
        data/control: one message blob, or a list of them (``Stream.write_many``),
        appended together: no other writer's message comes between them.
        """
        _check_stream(name)
        if name in OUTPUT_STREAMS:
            raise ValueError(f"{name} cannot be written: it is the job's output")
        if name in MESSAGE_STREAMS and type(data) is list:
            if not all(type(b) is bytes for b in data):
                raise TypeError("stream_write takes a message blob (bytes) or a list of them")
        elif not isinstance(data, bytes):
            raise TypeError(f"stream_write takes bytes, not {type(data).__name__}")
        _check_timeout(timeout)
        with self.lock:
            if name in MESSAGE_STREAMS:
                buf = self.msgs[name]
                for blob in (data if type(data) is list else (data,)):
                    buf.append(blob)
                self.changed.notify_all()
                return buf.limit
            st = self.stdin
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if st.closing or st.closed:
                    # Say what the writer can act on: an ended job can be restarted.
                    if self.state == "exited":
                        why = "the job has ended"
                    elif st.closing:
                        why = "stdin was closed"
                    else:
                        # EPIPE: the job closed its stdin, or it is exiting and the
                        # reaper has not seen it yet (a blocked writer wakes first)
                        why = "the job closed its stdin or has ended"
                    raise StreamClosedError(f"cannot write to stdin of task {self.pid}: {why}")
                if not st.pending_bytes or st.pending_bytes + len(data) <= STDIN_BUFFER:
                    break
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"stdin of task {self.pid} is full (the job is not reading); "
                        f"{st.accepted} bytes accepted so far")
                self.changed.wait(remaining)
            if data:
                st.pending.append(data)
                st.pending_bytes += len(data)
                st.accepted += len(data)
                self.changed.notify_all()
            return st.accepted

    def stream_close(self, name: str) -> None:
        _check_stream(name)
        if name != "stdin":
            raise ValueError(f"only stdin can be closed, not {name}")
        with self.lock:
            self.stdin.closing = True
            self.changed.notify_all()

    # -- exposed: control ------------------------------------------------------------------

    def kill(self, sig: int) -> bool:
        if not isinstance(sig, int) or isinstance(sig, bool):
            raise TypeError("kill takes a signal number")
        with self.lock:
            run = self.run
            if run is None or self.state == "exited":
                return False
            _killpg(run.pgid, sig)  # raises ValueError for a bad number (EINVAL)
            if sig == signal.SIGSTOP and self.state == "running":
                self._transition("paused")
            elif sig == signal.SIGCONT and self.state == "paused":
                self._transition("running")
            return True

    def restart(self) -> bool:
        with self.lock:
            if self.state != "exited" or self.deleting:
                return False
            prev = self.prev_run
            if prev is not None:
                for name in list(prev.held):
                    self._drain_held(prev, name)
            startup = self.startup
            if self.lock_name:
                try:
                    startup.lock_fd = take_lock(self.pool, self.lock_name)
                except StartError as exc:
                    raise start_error_to_exception(exc.args) from None
            try:
                job = launch(self.argv, self.env, self.cwd)
            except StartError as exc:
                if startup.lock_fd >= 0:
                    os.close(startup.lock_fd)
                    startup.lock_fd = -1
                raise start_error_to_exception(exc.args) from None
            self.restarts += 1
            _paths.write_job_record(startup.token_fd, job[0], _process.proc_start_time(job[0]))
            self._begin_run(*job)
            return True

    def _drain_held(self, run: _Run, name: str) -> None:
        """Before a restart: take what the ended *run* left in its *name* pipe, held back by
        a full buffer (``on_full="block"``), into the buffer now -- past ``max_buffer`` by
        at most the pipe's size -- so that it comes before the new run's output instead
        of being interleaved with it. Lock held; that run's pump is waiting for room, so
        it is not reading its fd."""
        fd = run.out_fds[name]
        try:
            left = fcntl.fcntl(fd, getattr(fcntl, "F_GETPIPE_SZ", 1032))
        except OSError:
            left = _PIPE_BIG
        os.set_blocking(fd, False)
        try:
            while left > 0:
                try:
                    data = os.read(fd, min(left, 1 << 16))
                except OSError:  # BlockingIOError: empty (a straggler holds it open)
                    break
                if not data:
                    break
                self.out[name].append(data)
                left -= len(data)
        finally:
            os.set_blocking(fd, True)
        self.changed.notify_all()

    def wait(self, timeout: float | None = None) -> int | None:
        _check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.lock:
            while self.state != "exited":
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self.changed.wait(remaining)
            # Collect the output: wait (at most COLLECT_GRACE after the exit) for the
            # pipes to reach end of file; a descendant may still hold them open.
            while any(self.open_pipes.values()) and not self._blocked_pumps():
                assert self.ended_mono is not None
                remaining = self.ended_mono + COLLECT_GRACE - time.monotonic()
                if remaining <= 0:
                    break
                self.changed.wait(remaining)
            return self.exit_code if self.signal is None else -self.signal

    def _blocked_pumps(self) -> bool:
        # Full of unread output (not merely waiting for a reply in flight to be sent).
        return all(self.out[n].unread >= self.out[n].max_unread
                   for n in OUTPUT_STREAMS if self.open_pipes[n])

    def delete(self, timeout: float = 5.0) -> None:
        """Terminate the job (TERM+CONT, KILL after *timeout*), then end the supervisor.

        The files are removed before the reply; the process exits right after it.
        """
        if timeout is None:
            raise ValueError("delete() needs a timeout: seconds from TERM to KILL")
        _check_timeout(timeout)
        with self.lock:
            self.deleting = True
            if self.run is not None and self.state != "exited":
                _killpg(self.run.pgid, signal.SIGTERM)
                _killpg(self.run.pgid, signal.SIGCONT)
                deadline = time.monotonic() + timeout
                while self.state != "exited" and time.monotonic() < deadline:
                    self.changed.wait(deadline - time.monotonic())
                if self.run is not None and self.state != "exited":
                    _killpg(self.run.pgid, signal.SIGKILL)
                    deadline = time.monotonic() + 10
                    while self.state != "exited" and time.monotonic() < deadline:
                        self.changed.wait(deadline - time.monotonic())
            elif self.prev_run is not None and any(self.open_pipes.values()):
                # The job has ended but descendants in its process group still hold its
                # pipes: the output dies with the supervisor, so they go too. (A live
                # member pins the pgid, so it cannot have been reused.)
                _killpg(self.prev_run.pgid, signal.SIGTERM)
                _killpg(self.prev_run.pgid, signal.SIGCONT)
            self.exit_requested = True
            self.startup.remove_files()
            self.changed.notify_all()


def _check_stream(name: object) -> None:
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}: expected one of {', '.join(STREAMS)}")


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise ValueError(f"invalid signal number {sig}") from None
        raise


def _thread(target: Any, name: str, *args: Any) -> threading.Thread:
    t = threading.Thread(target=target, name=name, args=args, daemon=True)
    t.start()
    return t


__all__ = ["StateLock", "TaskState"]
