"""Who gets in: the listening socket, the pending handshakes, and authentication.

* :class:`Listener` -- the socket the boot bound before it reported, made non-blocking:
  the main thread (``main_loop.py``) ``select()``\\ s on it and accepts, so an idle
  supervisor has no accepter thread (pid_max counts threads).
* :class:`Pending` -- the connections whose handshake is under way. At most
  :data:`MAX_PENDING` at once: silent connections cannot take all the supervisor's fds
  (the oldest, if older than :data:`EVICT_AFTER`, is dropped for a newcomer).
* :class:`Acceptor` -- accepts one connection, gives it a thread, and runs the HMAC
  handshake (``_wire.handshake``) there with one deadline for the whole handshake,
  before anything is unpickled: a client with a wrong authkey, or one that never
  answers (or answers a byte at a time), only loses its own connection. What an
  authenticated client asked first goes to the server (``server.TaskServer.handle``).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time

from bgtask._wire.framing import Connection
from bgtask._wire.handshake import HANDSHAKE_DEADLINE, ServerHandshake

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: handshakes pending at once. Each holds an fd and a thread; 600 silent connections
#: used to exhaust a 1024-fd limit, and then the owner's own clients failed.
MAX_PENDING = 256
#: a pending handshake this old may be dropped to make room for a new connection; a
#: younger one is not, so a burst of real clients waits in the backlog instead.
EVICT_AFTER = 1.0
#: the send buffer of a client's connection. Linux' default (~200 KiB) makes a 1 MiB
#: reply take several sleep/wake rounds between supervisor and reader: 4 MiB read 1 MiB
#: ranges ~8% faster and followed a fast job ~30% faster. It costs nothing while idle
#: (it is a limit, filled only by bytes in flight).
SEND_BUFFER = 4 << 20


class Listener:
    """A ``multiprocessing.connection.Listener`` stand-in over the pre-bound socket."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self._sock = sock
        self.address = address

    def fileno(self) -> int:
        return self._sock.fileno()

    def set_nonblocking(self) -> None:
        self._sock.setblocking(False)  # the main thread select()s on it

    def accept(self) -> Connection:
        s, _ = self._sock.accept()
        s.setblocking(True)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        except OSError:
            pass
        conn = Connection(s.detach())
        conn.socket()  # made here, once: Pending.make_room() may shut it down from this thread
        return conn

    def close(self) -> None:
        self._sock.close()


class Pending:
    """The connections whose handshake is under way, and when each was accepted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[Connection, float] = {}

    def add(self, conn: Connection) -> None:
        with self._lock:
            self._since[conn] = time.monotonic()

    def discard(self, conn: Connection) -> None:
        """*conn* is done with its handshake (or about to be closed): never evict it."""
        with self._lock:
            self._since.pop(conn, None)

    def make_room(self) -> bool:
        """Is there room for one more? Drops the oldest handshake if that makes room."""
        with self._lock:
            if len(self._since) < MAX_PENDING:
                return True
            conn = min(self._since, key=self._since.__getitem__)
            if time.monotonic() - self._since[conn] < EVICT_AFTER:
                return False
            del self._since[conn]
            # Under the lock: its thread closes the fd only after discard(), so this fd
            # is still that connection's. Its thread wakes up to EOF and closes it.
            try:
                conn.socket().shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return True


class Acceptor:
    """Accepts connections on *listener* and authenticates each in its own thread.

    :param authkey: the task's key (from its token file).
    :param handle: called in the connection's thread with the connection and its first
        request once the handshake succeeded; the connection is closed after it returns.
    """

    def __init__(self, listener: Listener, authkey: bytes,
                 handle: Callable[[Connection, Any], None]) -> None:
        self.listener = listener
        self.authkey = authkey
        self.handle = handle
        self.pending = Pending()

    def start(self) -> None:
        """Accept from now on (the main thread). Until it polls, a client waits in the
        listen backlog."""
        self.listener.set_nonblocking()

    def fileno(self) -> int:
        """The listener's fd to ``select()`` on; -1 once delete() closed it."""
        return self.listener.fileno()

    def readable(self) -> None:
        """The listener is readable: accept one connection if there is room for it."""
        if not self.pending.make_room():
            time.sleep(0.02)  # a burst: the next connections wait in the backlog
        else:
            # Closed by delete(): its thread ends the process once its reply is out;
            # returning here would end it before (os._exit in the boot).
            self.accept_one()

    def accept_one(self) -> bool:
        """Accept one connection and give it a thread; False if the listener is closed."""
        try:
            c = self.listener.accept()
        except BlockingIOError:
            return True  # gone between select() and accept()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                time.sleep(0.05)  # out of fds: let connections finish, do not spin
            return exc.errno not in (errno.EBADF, errno.EINVAL)
        self.pending.add(c)
        t = threading.Thread(target=self.handle_request, args=(c,), daemon=True)
        try:
            t.start()
        except RuntimeError:
            # No thread for it (RLIMIT_NPROC, memory): serve this one connection
            # here. Slow for the others, who wait in the backlog (or time out as
            # "unresponsive"), but the task still answers.
            self.handle_request(c)
        return True

    def handle_request(self, conn: Connection) -> None:
        """A connection's thread: authenticate, then hand its first request over."""
        try:
            request = self.authenticate(conn)
            if request is not None:
                self.handle(conn, request)
        except Exception:
            pass
        finally:
            self.pending.discard(conn)  # before the fd is closed (see Pending.make_room)
            conn.close()

    def authenticate(self, conn: Connection) -> Any:
        """Run the handshake on *conn*; its first request, or ``None`` if it failed.

        One deadline for the whole handshake: a client that sends one byte every few
        seconds is cut off like a silent one (a timeout per read never would be).
        """
        hs = ServerHandshake(self.authkey)
        deadline = time.monotonic() + HANDSHAKE_DEADLINE
        fd = conn.fileno()
        try:
            conn.write(hs.data_to_send())
            while not hs.done:
                left = deadline - time.monotonic()
                if left <= 0 or not conn.wait_readable(left):
                    return None
                hs.receive_data(os.read(fd, 4096))
                out = hs.data_to_send()
                if out:
                    conn.write(out)
        except Exception:
            try:
                out = hs.data_to_send()  # a #FAILURE#: tell the client before hanging up
                if out:
                    conn.write(out)
            except OSError:
                pass
            return None
        finally:
            self.pending.discard(conn)
        return hs.request


__all__ = ["EVICT_AFTER", "MAX_PENDING", "SEND_BUFFER", "Acceptor", "Listener", "Pending"]
