"""The supervisor after its report: build the server, then the main thread's loop.

The boot (``boot.py``) imports this module only once the spawner has its report, and
calls :func:`serve`, which never returns normally: the process ends by ``os._exit``
(after ``delete()``'s reply, or in the boot).

* :func:`prepare` -- the :class:`~bgtask._supervisor.service.TaskService` for what the
  boot started, its :class:`~bgtask._supervisor.server.TaskServer`, and the hooks that
  keep the status record (``record.py``) current; on failure the job is killed and the
  files removed (nobody could ever reach them).
* :class:`MainLoop` -- the main thread. One ``select()`` over the listening socket
  (``accept.py``: each connection gets a thread), the signal pipe (signals sent to the
  supervisor by hand go on to the job, like tini does) and a :class:`Waker` (the record
  is dirty); it writes the record when due, and every :data:`FILES_CHECK_INTERVAL`
  checks that our socket and token file are still in the pool -- if not, no client can
  ever find us again, and the task ends as if deleted.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time

from bgtask import _paths
from bgtask._supervisor import libc
from bgtask._supervisor.launch import catch_signals
from bgtask._supervisor.server import TaskServer
from bgtask._supervisor.service import TaskService
from bgtask._supervisor.states import DELETING, SERVING

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from bgtask._supervisor.boot import Startup

#: how often the supervisor checks that its socket and token file are still in the pool.
#: The only periodic wake-up of an idle supervisor: ~100 us of CPU each (measured), so
#: every 2 s made 4,000 idle tasks cost 5% of a 2-CPU machine; every 5 s, 2%.
FILES_CHECK_INTERVAL = 5.0
#: memory is given back after at least this much output was consumed ...
TRIM_AFTER_BYTES = 8 << 20
#: ... and no reader consumed any for this long (seconds).
TRIM_QUIET = 1.0

#: (path, (inode, device)) of one of our files; ``None``: gone already.
_Files = list[tuple[str, tuple[int, int] | None]]


class Waker:
    """Wakes the main thread out of its ``select()``: an eventfd (a pipe where there is
    none: pipes count against the per-user pipe budget every task shares)."""

    def __init__(self) -> None:
        eventfd = getattr(os, "eventfd", None)
        if eventfd is not None:
            self.fd = self._w = eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._token = (1).to_bytes(8, "little")
        else:  # pragma: no cover - not Linux
            self.fd, self._w = os.pipe()
            os.set_blocking(self.fd, False)
            os.set_blocking(self._w, False)
            self._token = b"x"

    def wake(self) -> None:
        try:
            os.write(self._w, self._token)
        except OSError:
            pass  # wake-ups pending already: the main thread will look

    def clear(self) -> None:
        try:
            os.read(self.fd, 4096)
        except OSError:
            pass


class MainLoop:
    """The main thread of a serving supervisor (see the module docstring)."""

    def __init__(self, server: TaskServer) -> None:
        self.server = server
        self.service = service = server.service
        startup = service.startup
        # Which files are ours is settled before the first client is answered: a client
        # may unlink the socket right after its first answer (the test suite does).
        self.files = _our_files(startup)
        # Signals by hand (`kill <task id>`) are forwarded to the job, like tini does;
        # the boot caught them before it reported (launch.catch_signals).
        if startup.signal_fd < 0:
            startup.signal_fd = catch_signals()
        self.signal_fd = startup.signal_fd
        self.waker = Waker()
        server.record.set_waker(self.waker.wake)

    def run(self) -> None:
        """Accept connections (each gets a thread), forward signals, keep the status
        record current, and check our files now and then; until the process exits."""
        server = self.server
        acceptor = server.acceptor
        record = server.record
        next_check = time.monotonic() + FILES_CHECK_INTERVAL
        waker = self.waker
        outputs = self.service.outputs
        trimmed = seen = 0  # outputs.consumed at the last trim, at the last look
        trim_at = None
        while not server.stop_event.is_set():
            now = time.monotonic()
            consumed = outputs.consumed  # an int read without the lock: a hint
            if consumed != seen:
                seen = consumed
                if consumed - trimmed >= TRIM_AFTER_BYTES:
                    trim_at = now + TRIM_QUIET
            elif trim_at is not None and now >= trim_at:
                trim_at = None
                trimmed = consumed
                trim()
            left = next_check - now
            if trim_at is not None:
                left = min(left, max(trim_at - now, 0.0))
            due = record.due_in()
            if due is not None and due < left:
                left = max(due, 0.0)
                if due <= 0:
                    server.flush_record()
                    continue
            if left <= 0:
                next_check = time.monotonic() + FILES_CHECK_INTERVAL
                if self._unreachable():
                    # Our socket or token file was removed (the pool directory was
                    # deleted, or someone unlinked them): no client can ever find us
                    # again. End like delete() rather than keep a job running that
                    # nobody can reach.
                    _on_term(self.service, server)
                continue
            listen_fd = acceptor.fileno()  # -1 once delete() closed it
            fds = [self.signal_fd, waker.fd] + ([listen_fd] if listen_fd >= 0 else [])
            try:
                ready, _, _ = select.select(fds, [], [], left)
            except (OSError, ValueError):
                continue  # the listener was closed meanwhile (delete): look again
            if waker.fd in ready:
                waker.clear()
                ready.remove(waker.fd)
            if listen_fd in ready:
                ready.remove(listen_fd)
                acceptor.readable()
            if ready:
                try:
                    numbers = os.read(self.signal_fd, 256)
                except BlockingIOError:
                    continue
                for signum in numbers:
                    self.service.forward_signal(signum)

    def _unreachable(self) -> bool:
        """Is our socket or token file gone from the pool (or replaced)? Claims the
        supervisor's end if so."""
        job = self.service.job
        with job.lock:  # delete() removes the files under it: never mistake that for this
            if job.supervisor is not SERVING:
                return False
            for path, ident in self.files:
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue  # cannot look (the pool was made unsearchable): no proof
                else:
                    if ident is not None and (st.st_ino, st.st_dev) == ident:
                        continue
                job.set_supervisor(DELETING)  # claimed: the supervisor is going away (no restart)
                return True
        return False


def trim() -> None:
    """Give the free memory of the heaps back to the system (glibc ``malloc_trim``).

    The pump reads output in pieces under the mmap threshold (``io._PIECE``): heap
    memory, reused from piece to piece with no page faults, but a burst's pieces stay
    resident after they are sent (85 MB 5 s after 64 MiB were read, instead of 20). So
    once readers consumed a burst and paused, the main thread trims (through ``_ctypes``'
    primitives, not the ``ctypes`` package: ``libc.py``). Without glibc this does
    nothing."""
    malloc_trim = libc.function("malloc_trim", "L")
    if malloc_trim is not None:
        malloc_trim(0)


def _our_files(startup: Startup) -> _Files:
    """(path, (inode, device)) of our socket and token file; ``None``: already gone."""
    files: _Files = []
    st = os.fstat(startup.token_fd)
    files.append((_paths.token_path(startup.pool, startup.pid), (st.st_ino, st.st_dev)))
    sock = _paths.sock_path(startup.pool, startup.pid)
    try:
        st = os.lstat(sock)
    except FileNotFoundError:
        files.append((sock, None))  # unlinked between spawn and here
    except OSError:
        pass  # cannot look (the pool was made unsearchable): no proof either way
    else:
        files.append((sock, (st.st_ino, st.st_dev)))
    return files


def _on_term(service: TaskService, server: TaskServer) -> None:
    try:
        service.delete(5.0)
    finally:
        server.finish()


def prepare(startup: Startup) -> MainLoop:
    """Build the server for what the boot started, ready to serve (see
    :meth:`TaskServer.start` and :class:`MainLoop`). On failure the job is stopped and
    the files are removed: nobody could ever reach them.

    :raises Exception: what went wrong (the boot reports it to the spawner).
    """
    try:
        service = TaskService(startup)
        sock = socket.socket(fileno=startup.sock.detach())
        startup.sock = sock
        server = TaskServer(service, sock, _paths.sock_path(startup.pool, startup.pid),
                            _paths.authkey_from_token(startup.token))
        server.start()
        loop = MainLoop(server)
        record = server.record
        # Phase and run changes are written at once, before waiters are woken (a search
        # right after wait() sees the exit); output only marks the record dirty.
        service.job.listeners.append(lambda _phase: record.write())
        service.launcher.on_output = record.touch
        # "Output collected" (a pipe's EOF, a full buffer) is what wait() waits for:
        # written before those waiters wake, like a phase change.
        collected = service.outputs.on_collect

        def on_collect() -> None:
            record.write()
            collected()

        service.outputs.on_collect = on_collect
        with service.lock:
            record.write()
    except BaseException:
        if startup.job is not None:
            job_pid = startup.job[0]
            for kill in (os.killpg, os.kill):  # the job may have left its group already
                try:
                    kill(job_pid, signal.SIGKILL)
                except OSError:
                    pass
        startup.remove_files()
        raise
    return loop


def serve(startup: Startup) -> None:
    """Serve the task until it is deleted (or its files are removed)."""
    prepare(startup).run()


__all__ = ["FILES_CHECK_INTERVAL", "MainLoop", "Waker", "prepare", "serve"]
