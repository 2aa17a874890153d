"""The client's end of the wire: connect to and authenticate with a supervisor, and call
its exposed methods.
"""

from __future__ import annotations

import _socket
import errno
import multiprocessing as _mp
import os
from multiprocessing import connection as _mpc
from typing import Any

from bgtask import _paths
from bgtask._errors import AccessDeniedError, RemoteError, TaskNotFoundError
from bgtask._wire.faults import SupervisorDeadError
from bgtask._wire.framing import Connection, set_timeouts
from bgtask._wire.names import ANSWER_GRACE, CONNECT_TIMEOUT, STATE_IDENT


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

    :raises TaskNotFoundError: no such task, or its supervisor is dead
        (:class:`SupervisorDeadError` when its socket refuses connections).
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
        if refuses(path):  # a stale socket left without its token: sweepable
            raise SupervisorDeadError(f"the supervisor of task {pid} is dead (its socket refuses connections)",
                          pid) from None
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
            raise SupervisorDeadError(f"the supervisor of task {pid} is dead (its socket refuses connections)", pid) from None
        except FileNotFoundError:
            raise TaskNotFoundError(f"task {pid} is gone", pid) from None
        except OSError as exc:
            raise TaskNotFoundError(f"cannot connect to task {pid}: {exc}", pid) from None
        sock.settimeout(None)
        set_timeouts(sock, timeout)  # bounds the handshake below
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
            set_timeouts(tmp, 0)
        finally:
            tmp.close()
    except _mp.AuthenticationError:
        conn.close()
        raise TaskNotFoundError(f"task {pid}: the socket's owner does not know the task's token "
                                "(a different supervisor?)", pid) from None
    except (AssertionError, ValueError):
        # multiprocessing asserts on a malformed challenge: whoever listens there does not
        # speak the manager protocol at all (not a supervisor).
        conn.close()
        raise TaskNotFoundError(f"task {pid}: its socket does not answer like a bgtask supervisor",
                                pid) from None
    except (EOFError, OSError) as exc:
        conn.close()
        raise TaskNotFoundError(f"the supervisor of task {pid} vanished while connecting: {exc!r}", pid) from None
    except BaseException:
        conn.close()
        raise
    conn.owner_pid = os.getpid()
    conn.token = token
    conn.read_ahead = True
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
        # The deadline is the socket's receive timeout, not a poll() before the read: a
        # poll costs a second wake-up, 20-25 us of a 50 us call on an idle machine.
        conn.set_receive_timeout(0.0 if blocks_for is None else blocks_for + ANSWER_GRACE)
        try:
            kind, result = conn.recv()
        except BlockingIOError:
            raise TimeoutError(f"the supervisor of task {pid} did not answer {method}() "
                               f"within {(blocks_for or 0) + ANSWER_GRACE:.0f} s (is it stopped?)") from None
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



__all__ = ["call", "open_connection", "refuses"]
