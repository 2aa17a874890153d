"""A run's I/O: how bytes get from clients into the job and from the job into buffers.

:class:`RunIO` is what a run's I/O must provide; :class:`PipeIO` implements it with
three pipes (today's only kind). A pty (``pty.py``, later) implements the same protocol
-- one fd for both directions, :meth:`RunIO.resize` -- so nothing else branches on it.

Threads, per run: one *pump* per output fd (fd -> :class:`~bgtask._supervisor.outputs.Outputs`)
and one *feeder* (:class:`~bgtask._supervisor.stdin.StdinQueue` -> fd). A run's threads
touch only that run's fds, so a restart never mixes them up; each thread closes its fd
when it ends.
"""

from __future__ import annotations

import fcntl
import os

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

        def resize(self, rows: int, cols: int) -> None:
            """Set the terminal size (a pty; pipes ignore it)."""

#: a pump's read size; also the pipe size below which a pipe is not grown.
_READ = 64 * 1024
#: the size a busy job's output pipe is grown to (idle jobs keep the default, so that a
#: user with many tasks does not exhaust the per-user pipe budget).
_PIPE_BIG = 1 << 20
#: most bytes per write to the job's stdin: a blocking write of a whole 1 MiB chunk
#: would report nothing delivered until the job had read all of it.
_FEED_CHUNK = 64 * 1024
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


class PipeIO:
    """A run's stdin, stdout and stderr as three pipes.

    :param stdin_w: the write end of the job's stdin.
    :param out_fds: the read ends of its output pipes, by stream name.
    :param outputs: where output goes.
    :param stdin: where stdin comes from.
    """

    def __init__(self, stdin_w: int, out_fds: dict[str, int], outputs: Outputs, stdin: StdinQueue) -> None:
        self.stdin_w = stdin_w
        self.out_fds = out_fds
        self.outputs = outputs
        self.stdin = stdin
        self.held: set[str] = set()

    def start(self) -> None:
        for name in self.out_fds:
            self.outputs.pipe_opened(name)
            _thread(self.pump, f"pump-{name}", name)
        self.stdin.attach(self)
        _thread(self.feed, "feed-stdin")

    def close(self) -> None:
        for fd in (self.stdin_w, *self.out_fds.values()):
            os.close(fd)

    def resize(self, rows: int, cols: int) -> None:
        return None  # pipes have no terminal size

    # -- threads ---------------------------------------------------------------------------

    def pump(self, name: str) -> None:
        """Read the *name* pipe into its buffer until EOF (the pump thread)."""
        outputs = self.outputs
        fd = self.out_fds[name]
        size = _READ
        grown = False
        try:
            while True:
                n = outputs.wait_room(name, self.held, size)
                try:
                    data = os.read(fd, n)
                except OSError:
                    data = b""
                if not data:
                    return
                if not grown and len(data) == size:
                    # The pipe was full: this job writes a lot. A bigger pipe buffer
                    # halves the context switches.
                    grown = True
                    try:
                        size = fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_BIG)
                    except OSError:
                        pass
                outputs.deliver(name, data)
        finally:
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
                os.set_blocking(fd, True)


def _thread(target: Callable[..., object], name: str, *args: object) -> None:
    threads.start(target, name, *args)  # a thread reserved at boot, if one is left


__all__ = ["PipeIO"]
