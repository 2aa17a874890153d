"""A run's I/O: how bytes get from clients into the job and from the job into buffers.

:class:`RunIO` is what a run's I/O must provide; :class:`PipeIO` implements it with
three pipes (today's only kind). A pty (``pty.py``, later) implements the same protocol
-- one fd for both directions, :meth:`RunIO.resize` -- so nothing else branches on it.

Threads, per run: one *pump* that polls both output fds (fd -> :class:`~bgtask._supervisor.outputs.Outputs`),
and a *feeder* (:class:`~bgtask._supervisor.stdin.StdinQueue` -> fd) started only when a
client first writes or closes stdin: most jobs never get stdin, and an idle supervisor
should cost few threads (pid_max counts threads; 4,000 tasks used to need 28,000). A
run's threads touch only that run's fds, so a restart never mixes them up; each closes
its fds when it ends.

Pipe sizes: the per-user pipe budget (``/proc/sys/fs/pipe-user-pages-soft``, 16384
pages) is shared by every task of a user. Three default 64 KiB pipes per task used it up
at ~340 live tasks, after which new jobs got 8 KiB pipes that could not grow and their
output slowed 3-6x. So a job's pipes start at one page each (``launch.py``: 3 pages a
task), an output pipe is grown to 1 MiB the first time the pump finds it full, and shrunk
back to one page after :data:`SHRINK_AFTER` seconds without output.
"""

from __future__ import annotations

import fcntl
import os
import select
import time

from bgtask._supervisor import threads

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    from bgtask._supervisor.outputs import Outputs
    from bgtask._supervisor.stdin import StdinQueue

    class RunIO(Protocol):
        """The I/O of one run."""

        #: output streams whose pump waits for room in a full buffer (fd open, idle)
        held: set[str]

        def start(self) -> None:
            """Start the pumps and the feeder (lock held)."""

        def drain(self) -> None:
            """Before a restart (lock held; the run has ended): move what the held
            pumps left unread into the buffers, so it comes before the next run's."""

        def close(self) -> None:
            """Close the fds of a run whose threads never started."""

        def ended(self) -> None:
            """The run exited (lock held): let go of stdin if nothing feeds it."""

        def resize(self, rows: int, cols: int) -> None:
            """Set the terminal size (a pty; pipes ignore it)."""

#: a pump's read size (at least; a grown pipe is read whole).
_READ = 64 * 1024
#: the most one ``os.read`` asks for: a grown pipe is read in pieces of this size, each
#: its own ``bytes``. Supervisors run with ``MALLOC_MMAP_THRESHOLD_=131072``
#: (``_client/template.py``: a burst's memory is given back), so a 1 MiB read was a fresh
#: ``mmap`` that the kernel faulted in page by page as it copied the pipe into it (256
#: faults a MiB, twice the pump's CPU: end-to-end throughput 34% of a raw pipe). Pieces
#: under the threshold come from the heap, reused from the pieces already sent.
_PIECE = 128 * 1024 - 128
#: the size a busy job's output pipe is grown to.
_PIPE_BIG = 1 << 20
#: the size of an output pipe nobody is busy with (``launch.OUTPUT_PIPE``).
PIPE_SMALL = 4096
#: a grown output pipe quiet this long goes back to one page (budget for other tasks).
SHRINK_AFTER = 10.0
#: the job's stdin pipe once a client feeds it.
_STDIN_PIPE = 64 * 1024
#: most bytes per write to the job's stdin: a blocking write of a whole 1 MiB chunk
#: would report nothing delivered until the job had read all of it.
_FEED_CHUNK = 64 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)

#: runs whose pump is alive (changed with the state lock held): a buffer that has room
#: again wakes them all (restarts may leave an old run's pump reading a pipe that a
#: descendant still holds).
_LIVE: set[PipeIO] = set()


def _wake_pumps(name: str) -> None:
    """``Outputs.on_room`` (lock held): a pump that stopped polling a full stream may
    go on. Only pumps holding *name* back are woken: every consuming read calls this
    (twice), and waking a busy pump each time cost it a poll, a read of its eventfd and
    a GIL hand-off per reply (a pump marks a stream held under the lock before it stops
    polling it, so none is missed)."""
    for io in _LIVE:
        if name in io.held:
            io.wake()


def set_pipe_size(fd: int, size: int) -> int:
    """Resize pipe *fd*; returns its size (unchanged if the kernel refuses: over the
    per-user budget, or more data in it than fits)."""
    try:
        return int(fcntl.fcntl(fd, _F_SETPIPE_SZ, size))
    except OSError:
        try:
            return int(fcntl.fcntl(fd, _F_GETPIPE_SZ))
        except OSError:
            return size


class PipeIO:
    """A run's stdin, stdout and stderr as three pipes.

    :param stdin_w: the write end of the job's stdin.
    :param out_fds: the read ends of its output pipes, by stream name.
    :param outputs: where output goes.
    :param stdin: where stdin comes from.
    :param on_output: called after output was delivered (the status record is dirty).
    """

    def __init__(self, stdin_w: int, out_fds: dict[str, int], outputs: Outputs, stdin: StdinQueue,
                 on_output: Callable[[], None] | None = None) -> None:
        self.stdin_w = stdin_w
        self.out_fds = out_fds
        self.outputs = outputs
        self.stdin = stdin
        self.on_output = on_output
        self.held: set[str] = set()
        self._feeding = False      # the feeder thread was started (lock held to change)
        self._stdin_closed = False  # stdin_w was closed without a feeder
        self._wake_r = self._wake_w = -1

    def start(self) -> None:
        for name in self.out_fds:
            self.outputs.pipe_opened(name)
        self._wake_r, self._wake_w = _wake_fds()
        _LIVE.add(self)
        self.outputs.on_room = _wake_pumps
        _thread(self.pump, "pump")
        self.stdin.attach(self)

    def close(self) -> None:
        for fd in (self.stdin_w, *self.out_fds.values()):
            os.close(fd)

    def resize(self, rows: int, cols: int) -> None:
        return None  # pipes have no terminal size

    def wake(self) -> None:
        """Make the pump look at its held streams again (lock held)."""
        try:
            os.write(self._wake_w, _WAKE_TOKEN if self._wake_w == self._wake_r else b"x")
        except OSError:
            pass  # wake-ups pending already

    def kick(self) -> None:
        """Stdin has work (a write or a close; lock held): start the feeder if it is
        not running. Called by :class:`~bgtask._supervisor.stdin.StdinQueue`."""
        if self._feeding or self._stdin_closed or self.stdin.feeder is not self:
            return
        self._feeding = True
        # A job that is fed gets a pipe that holds a chunk: with one page, every
        # write would wait for the job to read.
        set_pipe_size(self.stdin_w, _STDIN_PIPE)
        _thread(self.feed, "feed-stdin")

    def ended(self) -> None:
        """The run exited (lock held): close stdin if no feeder ever took it."""
        if not self._feeding and not self._stdin_closed:
            self._stdin_closed = True
            os.close(self.stdin_w)

    # -- threads ---------------------------------------------------------------------------

    def _room(self, name: str, size: int) -> int:
        """How many bytes the pump may read from *name* now; 0: its buffer is full (the
        stream is marked held until a reader makes room)."""
        buf = self.outputs.bytes[name]
        with self.outputs.lock:
            if not buf.drop and buf.room() <= 0:
                self.held.add(name)
                return 0
            self.held.discard(name)
            return size if buf.drop else min(size, buf.room())

    def pump(self) -> None:
        """Read both output pipes into their buffers until EOF (the pump thread)."""
        outputs = self.outputs
        names = {fd: name for name, fd in self.out_fds.items()}
        sizes = {fd: set_pipe_size(fd, PIPE_SMALL) for fd in names}
        quiet_since: dict[int, float] = {}  # grown pipes: when output last came
        paused: set[int] = set()  # full buffers: not polled until a reader makes room
        poller = select.poll()
        for fd in names:
            os.set_blocking(fd, False)  # read in pieces until the pipe is empty
            poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while names:
                timeout = None
                if quiet_since:
                    due = min(quiet_since.values()) + SHRINK_AFTER - time.monotonic()
                    timeout = max(0, int(due * 1000) + 1)
                try:
                    events = poller.poll(timeout)
                except InterruptedError:
                    continue
                now = time.monotonic()
                for fd, _ev in events:
                    if fd == self._wake_r:
                        _clear(fd)
                        for held in list(paused):
                            if self._room(names[held], 1):
                                paused.discard(held)
                                poller.register(held, select.POLLIN)
                        continue
                    if fd not in names or fd in paused:
                        continue
                    name = names[fd]
                    n = self._room(name, max(_READ, sizes[fd]))
                    if n == 0:
                        paused.add(fd)
                        poller.unregister(fd)
                        continue
                    pieces = _read(fd, n)
                    if pieces is None:
                        continue  # nothing there (a drain() took it)
                    if not pieces:
                        poller.unregister(fd)
                        del names[fd]
                        quiet_since.pop(fd, None)
                        os.close(fd)
                        outputs.pipe_closed(name)
                        continue
                    got = sum(map(len, pieces))
                    if got >= sizes[fd] and sizes[fd] < _PIPE_BIG and n >= _READ:
                        # The pipe was full: this job writes a lot. A bigger pipe
                        # buffer halves the context switches. Not when the buffer is
                        # nearly full (n < _READ): the pipe would only hold more
                        # unread output past max_buffer, and keep the job from blocking.
                        sizes[fd] = set_pipe_size(fd, _PIPE_BIG)
                    if sizes[fd] > PIPE_SMALL:
                        quiet_since[fd] = now
                    outputs.deliver(name, *pieces)
                    if self.on_output is not None:
                        self.on_output()
                for fd, since in list(quiet_since.items()):
                    if now - since >= SHRINK_AFTER:
                        # Quiet: give the pages back to the user's pipe budget (the
                        # kernel refuses while more than a page is unread: try later).
                        sizes[fd] = set_pipe_size(fd, PIPE_SMALL)
                        if sizes[fd] <= PIPE_SMALL:
                            del quiet_since[fd]
                        else:
                            quiet_since[fd] = now
        finally:
            with outputs.lock:
                _LIVE.discard(self)
                os.close(self._wake_r)
                if self._wake_w != self._wake_r:
                    os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
            for fd, name in names.items():  # only after an unexpected error
                os.close(fd)
                outputs.pipe_closed(name)

    def feed(self) -> None:
        """Write stdin's pending bytes to the job, in order (the feeder thread)."""
        stdin = self.stdin
        fd = self.stdin_w
        try:
            while True:
                work = stdin.next_chunk(self)
                if work is None:
                    return
                data, off = work
                try:
                    with memoryview(data) as view:
                        n = os.write(fd, view[off:off + _FEED_CHUNK])
                except OSError:
                    stdin.broken(self)  # the job closed its stdin: nothing more goes in
                    return
                stdin.delivered_to(self, data, off, n)
        finally:
            os.close(fd)

    def drain(self) -> None:
        for name in list(self.held):
            fd = self.out_fds[name]
            try:
                left = fcntl.fcntl(fd, _F_GETPIPE_SZ)
            except OSError:
                left = _PIPE_BIG
            blocking = os.get_blocking(fd)
            os.set_blocking(fd, False)
            try:
                while left > 0:
                    try:
                        data = os.read(fd, min(left, _READ))
                    except OSError:  # BlockingIOError: empty (a straggler holds it open)
                        break
                    if not data:
                        break
                    # Past max_buffer by at most the pipe's size.
                    self.outputs.append_held(name, data)
                    left -= len(data)
            finally:
                os.set_blocking(fd, blocking)  # the pump's fds stay non-blocking


def _read(fd: int, n: int) -> list[bytes] | None:
    """Up to *n* bytes from the non-blocking pipe *fd*, in pieces of at most
    :data:`_PIECE`: ``None`` if it is empty, ``[]`` at EOF (or an error, read as EOF
    once what came before it was delivered)."""
    pieces: list[bytes] = []
    while n > 0:
        try:
            data = os.read(fd, min(n, _PIECE))
        except BlockingIOError:
            break
        except OSError:
            data = b""
        if not data:
            if pieces:
                break  # EOF (or the error) again on the next poll
            return []
        pieces.append(data)
        n -= len(data)
        if len(data) < _PIECE:
            break  # the pipe is empty
    return pieces or None


_WAKE_TOKEN = (1).to_bytes(8, "little")


def _wake_fds() -> tuple[int, int]:
    """An eventfd (read and write end the same), or a non-blocking pipe without one."""
    eventfd = getattr(os, "eventfd", None)
    if eventfd is not None:
        fd = eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        return fd, fd
    r, w = os.pipe()  # pragma: no cover - not Linux
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _clear(fd: int) -> None:
    try:
        os.read(fd, 4096)
    except OSError:
        pass


def _thread(target: Callable[..., object], name: str, *args: object) -> None:
    threads.start(target, name, *args)  # a thread reserved at boot, if one is left


__all__ = ["PipeIO"]
