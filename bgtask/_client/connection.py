"""The client's end of the wire: connect to and authenticate with a supervisor, and call
its exposed methods.

:func:`open_connection` is four steps, each with its own failures: :func:`_check_socket`
(is there a socket of ours?), :func:`_read_token`, :func:`_connect` (waits its turn while
the supervisor's listen backlog is full) and :func:`_handshake` (``_wire.handshake``
driven over the blocking socket). Every transport failure is mapped to our exceptions by
``_wire.faults.map_fault``, the one table. Waits are cut into slices of
:data:`SILENT_PROBE`: a supervisor that stays silent that long and is stopped (``kill
-STOP``) is reported as :class:`~bgtask.TaskUnresponsiveError` at once, instead of after
the whole :data:`~bgtask._wire.names.CONNECT_TIMEOUT` meant for a busy one.
"""

from __future__ import annotations

import _socket
import errno
import os
import time
from typing import Any

from bgtask import _paths, _process
from bgtask._errors import AccessDeniedError, TaskNotFoundError
from bgtask._wire.faults import Stopped, SupervisorDeadError, map_fault, reply_result
from bgtask._wire.framing import Connection, set_timeouts
from bgtask._wire.handshake import ClientHandshake
from bgtask._wire.names import ANSWER_GRACE, CONNECT_TIMEOUT, STATE_IDENT

#: how long a wait for the supervisor (a backlog slot, a handshake message) may last
#: before the client looks whether it is stopped, which no deadline would fix.
SILENT_PROBE = 1.0


def refuses(path: str, patience: float = 2.0) -> bool:
    """Does the socket at *path* refuse connections (nobody listens: its owner is dead)?

    A supervisor that is exiting can still accept for a moment: its main thread is
    already a zombie while another thread holds the listening socket. A live one always
    speaks first (its authentication challenge), so a connection that is reset or closed
    without a word is tried again, until it is refused or *patience* runs out.
    """
    import time

    deadline = time.monotonic() + patience
    while True:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | getattr(_socket, "SOCK_CLOEXEC", 0))
        try:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                s.connect(path)
            except ConnectionRefusedError:
                return True
            except OSError:
                return False
            try:
                if s.recv(1):
                    return False  # it spoke: alive
            except ConnectionError:
                pass  # reset without a word: going away
            except OSError:
                return False  # silent for the whole patience: alive but busy
        finally:
            s.close()
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)


def open_connection(pool: str, pid: int, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """Connect to and authenticate with the supervisor of task *pid*.

    :param timeout: the deadline for connecting and the handshake together, for a
        supervisor that is running but busy (a stopped one is reported sooner).
    :raises TaskNotFoundError: no such task, or its supervisor is dead
        (:class:`SupervisorDeadError` when its socket refuses connections).
    :raises TaskUnresponsiveError: the supervisor is stopped, or silent past *timeout*.
    :raises AccessDeniedError: the task's files belong to another user.
    :raises RemoteError: it speaks another protocol version
        (``_wire.faults.ProtocolMismatchError``).
    """
    path = _check_socket(pool, pid)
    token = _read_token(pool, pid, path)
    deadline = time.monotonic() + timeout
    since = time.time()
    return authenticate(_connect(path, pid, deadline, since), token, pid, deadline, since)


def authenticate(conn: Connection, token: bytes, pid: int, deadline: float, since: float,
                 probe: bool = True) -> Connection:
    """Run the handshake on a freshly connected *conn* (closed if it fails) and mark it
    as this process's connection to the supervisor that owns *token*. Shared by local
    sockets and ssh forwards.

    :param probe: look at /proc when the supervisor is silent (a stopped one is reported
        at once); False where its pid is not a process of this host (a forward).
    """
    try:
        _handshake(conn, _paths.authkey_from_token(token), pid, deadline, since, probe)
    except BaseException:
        conn.close()
        raise
    conn.owner_pid = os.getpid()
    conn.token = token
    conn.read_ahead = True
    return conn


def _check_socket(pool: str, pid: int) -> str:
    """The path of task *pid*'s socket, once it is known to be a socket of ours."""
    path = _paths.sock_path(pool, pid)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise TaskNotFoundError(f"no task {pid} in pool {pool}", pid) from None
    except PermissionError:
        raise AccessDeniedError(f"cannot look into pool {pool}", pid) from None
    if not _paths.is_mine(st):
        raise AccessDeniedError(f"task {pid} belongs to uid {st.st_uid}, not to you", pid, st.st_uid)
    import stat as _stat

    if not _stat.S_ISSOCK(st.st_mode):
        raise TaskNotFoundError(f"{path} is not a task socket", pid)
    return path


def _read_token(pool: str, pid: int, path: str) -> bytes:
    """Task *pid*'s token (the authkey's source)."""
    try:
        return _paths.read_token_file(pool, pid)[0]
    except FileNotFoundError:
        if refuses(path):  # a stale socket left without its token: sweepable
            raise SupervisorDeadError(f"the supervisor of task {pid} is dead "
                                      "(its socket refuses connections)", pid) from None
        raise TaskNotFoundError(f"task {pid} has no token file (it is starting or gone)", pid) from None
    except PermissionError as exc:
        raise AccessDeniedError(f"task {pid}: {exc.strerror}: {path}", pid) from None
    except ValueError as exc:
        raise TaskNotFoundError(f"task {pid}: {exc}", pid) from None


def _stopped(pid: int) -> bool:
    """Is the supervisor stopped (``kill -STOP``, a debugger)? No deadline helps then."""
    return _process.proc_state(pid) in ("T", "t")


def _connect(path: str, pid: int, deadline: float, since: float) -> Connection:
    """A connected socket to *path*, as a :class:`Connection`.

    The socket blocks with ``SO_SNDTIMEO``, so a ``connect`` that finds the listen
    backlog full waits in the kernel for a slot (a non-blocking one fails at once with
    ``EAGAIN``, which 400 concurrent clients hit): clients wait their turn up to the
    deadline.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | getattr(_socket, "SOCK_CLOEXEC", 0))
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError(errno.ETIMEDOUT, "no slot in the listen backlog")
                set_timeouts(sock, min(left, SILENT_PROBE))
                sock.connect(path)
                break
            except (BlockingIOError, InterruptedError) as exc:
                # EAGAIN: the backlog stayed full for a slice. A stopped supervisor never
                # empties it; a busy one does.
                if _stopped(pid):
                    raise map_fault(Stopped(str(exc)), pid, "connecting", True, since) from None
            except OSError as exc:
                raise map_fault(exc, pid, "connecting", True, since) from None
        return Connection(sock.detach())
    finally:
        sock.close()


def _handshake(conn: Connection, authkey: bytes, pid: int, deadline: float, since: float,
               probe: bool = True) -> None:
    """Authenticate both ways and exchange protocol versions on *conn*."""
    hs = ClientHandshake(authkey)
    fd = conn.fileno()
    try:
        while not hs.done:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "the handshake's deadline passed")
            if not conn.wait_readable(min(left, SILENT_PROBE) if probe else left):
                if probe and _stopped(pid):
                    raise Stopped(errno.ETIMEDOUT, "the supervisor is stopped")
                continue
            hs.receive_data(os.read(fd, 4096))
            out = hs.data_to_send()
            if out:
                conn.write(out)
        set_timeouts(conn.socket(), 0)  # the handshake's SO_SNDTIMEO no longer applies
    except BaseException as exc:
        if not isinstance(exc, Exception):
            raise
        try:
            out = hs.data_to_send()  # our #FAILURE#, if we refused the supervisor
            if out:
                conn.write(out)
        except OSError:
            pass
        raise map_fault(exc, pid, "connecting", True, since) from None


def call(conn: Connection, pid: int, method: str, args: tuple[Any, ...], kwds: dict[str, Any],
         blocks_for: float | None = 0.0) -> Any:
    """Call *method* on the TaskState of *conn*; the caller drops *conn* on any exception.

    :param blocks_for: how long the method itself may block on the supervisor's side
        (``None``: without limit); the answer is awaited that long plus
        :data:`ANSWER_GRACE`.
    :raises TaskNotFoundError: the supervisor vanished during the call.
    :raises TaskUnresponsiveError: it did not answer in time (stopped, hung).
    :raises RemoteError: the call failed in the supervisor.
    """
    try:
        conn.send((STATE_IDENT, method, args, kwds))
        # The deadline is the socket's receive timeout, not a poll() before the read: a
        # poll costs a second wake-up, 20-25 us of a 50 us call on an idle machine.
        conn.set_receive_timeout(0.0 if blocks_for is None else blocks_for + ANSWER_GRACE)
        kind, result = conn.recv()
    except BaseException as exc:
        # Interrupted, timed out or broken: a reply may still arrive on this connection,
        # so it is out of step for good. The caller sees conn.closed and drops it.
        try:
            conn.close()
        except OSError:
            pass
        if not isinstance(exc, Exception):
            raise
        since = None
        if isinstance(exc, BlockingIOError):
            since = time.time() - (blocks_for or 0.0) - ANSWER_GRACE
        raise map_fault(exc, pid, f"{method}()", False, since) from None
    return reply_result(kind, result, pid, method)


__all__ = ["authenticate", "call", "open_connection", "refuses"]
