"""The wire between a client and a supervisor, and the one place that turns remote
failures into bgtask's exceptions.

The wire is ``multiprocessing.managers``' own: a ``multiprocessing.connection``
connection on the task's Unix socket, authenticated both ways with HMAC challenges using
the authkey derived from the task's token; then ``(ident, method, args, kwds)`` requests
answered by ``("#RETURN", result)``, ``("#ERROR", exception)`` or ``("#TRACEBACK",
text)``. A stock ``BaseManager`` client and proxy work against a supervisor too (see
``_server.TaskManager``). What this module does differently from the stock proxy:

* one authenticated connection per task, thread and process -- the stock "connect, call
  once, drop" opens about six (connect, create, incref, the proxy's own, decref...);
* a reply is received into one preallocated buffer and unpickled from it: the stock
  receive path copies a large reply several times;
* every wait is bounded by ``poll`` with a deadline, and a vanished supervisor (EOF,
  reset, refused) becomes :class:`~bgtask.TaskNotFoundError`, never a raw
  ``EOFError``/``ConnectionRefusedError`` from deep inside multiprocessing;
* a connection is never shared across ``fork``: its owner pid is checked on each use.
"""

from __future__ import annotations

import _socket
import errno
import multiprocessing as _mp
import os
import pickle
import select
import struct
from multiprocessing import connection as _mpc

from bgtask import _paths
from bgtask._errors import AccessDeniedError, RemoteError, TaskNotFoundError

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: the TaskState methods a client may call; nothing else is dispatched.
EXPOSED = (
    "apply_meta",
    "delete",
    "info",
    "kill",
    "restart",
    "stream_close",
    "stream_info",
    "stream_read",
    "stream_write",
    "wait",
)
#: the fixed manager ident of the one TaskState object of a supervisor.
STATE_IDENT = "task"
#: how long to wait for a supervisor to accept and authenticate a connection.
CONNECT_TIMEOUT = 10.0
#: how long a supervisor may take to answer beyond the time the call itself may block.
#: Only a stopped (SIGSTOP) or wedged supervisor gets near it: a dead one is seen at once.
ANSWER_GRACE = 30.0

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_TIMEVAL = "ll"


class Connection(_mpc.Connection):
    """A manager connection that receives a reply into one buffer.

    ``multiprocessing``'s own receive path reads a large reply chunk by chunk into a
    ``BytesIO`` and copies it out again; this one allocates the reply's size once and
    reads into it (``readv``), then unpickles from that buffer.
    """

    owner_pid: int = 0
    _poller: Any = None

    def recv(self) -> Any:
        fd = self.fileno()
        size = _HEADER.unpack(_read_exact(fd, 4, first=True))[0]
        if size == -1:
            size = _LONG_HEADER.unpack(_read_exact(fd, 8))[0]
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        readv = os.readv
        while got < size:
            n = readv(fd, [view[got:]])
            if n == 0:
                raise EOFError("connection closed in the middle of a reply")
            got += n
        view.release()
        return pickle.loads(buf)

    def wait_readable(self, timeout: float | None) -> bool:
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        return bool(self._poller.poll(ms))


def _read_exact(fd: int, n: int, first: bool = False) -> bytes:
    data = os.read(fd, n)
    if len(data) == n:
        return data
    if not data and first:
        raise EOFError
    parts = [data]
    got = len(data)
    while got < n:
        part = os.read(fd, n - got)
        if not part:
            raise EOFError("connection closed in the middle of a reply")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _set_timeouts(sock: Any, seconds: float) -> None:
    tv = struct.pack(_TIMEVAL, int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, tv)
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, tv)


class Refused(TaskNotFoundError):
    """The socket exists but nobody listens: the supervisor is proven dead."""


def open_connection(pool: str, pid: int, timeout: float = CONNECT_TIMEOUT) -> Connection:
    """Connect to and authenticate with the supervisor of task *pid*.

    :raises TaskNotFoundError: no such task, or its supervisor is dead
        (:class:`Refused` when its socket refuses connections).
    :raises AccessDeniedError: the task's files belong to another user.
    """
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
    try:
        token, _job, _start = _paths.read_token_file(pool, pid)
    except FileNotFoundError:
        raise TaskNotFoundError(f"task {pid} has no token file (it is starting or gone)", pid) from None
    except PermissionError as exc:
        raise AccessDeniedError(f"task {pid}: {exc.strerror}: {path}", pid) from None
    except ValueError as exc:
        raise TaskNotFoundError(f"task {pid}: {exc}", pid) from None
    authkey = _paths.authkey_from_token(token)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | getattr(_socket, "SOCK_CLOEXEC", 0))
    try:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except ConnectionRefusedError:
            raise Refused(f"the supervisor of task {pid} is dead (its socket refuses connections)", pid) from None
        except FileNotFoundError:
            raise TaskNotFoundError(f"task {pid} is gone", pid) from None
        except OSError as exc:
            raise TaskNotFoundError(f"cannot connect to task {pid}: {exc}", pid) from None
        sock.settimeout(None)
        _set_timeouts(sock, timeout)  # bounds the handshake below
        conn = Connection(sock.detach())
    finally:
        sock.close()
    try:
        _mpc.answer_challenge(conn, authkey)
        _mpc.deliver_challenge(conn, authkey)
        conn.send((None, "accept_connection", ("bgtask-client",), {}))
        kind, result = conn.recv()
        if kind != "#RETURN":
            raise RemoteError(f"task {pid} refused the connection: {result}", str(result))
        tmp = _socket.socket(fileno=os.dup(conn.fileno()))
        try:
            _set_timeouts(tmp, 0)
        finally:
            tmp.close()
    except _mp.AuthenticationError:
        conn.close()
        raise TaskNotFoundError(f"task {pid}: the socket's owner does not know the task's token "
                                "(a different supervisor?)", pid) from None
    except (EOFError, OSError) as exc:
        conn.close()
        raise TaskNotFoundError(f"the supervisor of task {pid} vanished while connecting: {exc!r}", pid) from None
    except BaseException:
        conn.close()
        raise
    conn.owner_pid = os.getpid()
    return conn


def call(conn: Connection, pid: int, method: str, args: tuple[Any, ...], kwds: dict[str, Any],
         blocks_for: float | None = 0.0) -> Any:
    """Call *method* on the TaskState of *conn*; the caller drops *conn* on any exception.

    :param blocks_for: how long the method itself may block on the supervisor's side
        (``None``: without limit); the answer is awaited that long plus
        :data:`ANSWER_GRACE`.
    """
    try:
        conn.send((STATE_IDENT, method, args, kwds))
        if blocks_for is None:
            while not conn.wait_readable(None):
                pass
        elif not conn.wait_readable(blocks_for + ANSWER_GRACE):
            raise TimeoutError(f"the supervisor of task {pid} did not answer {method}() "
                               f"within {blocks_for + ANSWER_GRACE:.0f} s (is it stopped?)")
        kind, result = conn.recv()
    except BaseException as exc:
        # Interrupted, timed out or broken: a reply may still arrive on this connection,
        # so it is out of step for good. The caller sees conn.closed and drops it.
        try:
            conn.close()
        except OSError:
            pass
        if isinstance(exc, (EOFError, ConnectionError)) or (
                isinstance(exc, OSError) and exc.errno in (errno.EBADF, errno.ENOTCONN)):
            raise TaskNotFoundError(f"the supervisor of task {pid} vanished during {method}() "
                                    f"({exc!r})", pid) from None
        raise
    if kind == "#RETURN":
        return result
    if kind == "#ERROR" and isinstance(result, BaseException):
        raise result
    raise RemoteError(f"task {pid}: {method}() failed in the supervisor: "
                      f"{str(result).strip().splitlines()[-1] if str(result).strip() else kind}",
                      str(result))


__all__ = ["ANSWER_GRACE", "CONNECT_TIMEOUT", "EXPOSED", "STATE_IDENT", "Connection", "Refused",
           "call", "open_connection"]
