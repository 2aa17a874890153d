"""Framing: how one message travels between a client and a supervisor.

The wire is ``multiprocessing.managers``' own: a ``multiprocessing.connection``
connection on the task's Unix socket, authenticated both ways with HMAC challenges using
the authkey derived from the task's token; then ``(ident, method, args, kwds)`` requests
answered by ``("#RETURN", result)``, ``("#ERROR", exception)`` or ``("#TRACEBACK",
text)``. A stock ``BaseManager`` client and proxy work against a supervisor too (see
``_server.TaskManager``). What this module does differently from the stock proxy:

* one authenticated connection per task, thread and process -- the stock "connect, call
  once, drop" opens about six (connect, create, incref, the proxy's own, decref...);
* a large message is neither joined nor copied in user space on either side: the
  stock path copies a 1 MiB read reply about four times (see :class:`Connection`);
* every wait is bounded by ``poll`` with a deadline, and a vanished supervisor (EOF,
  reset, refused) becomes :class:`~bgtask.TaskNotFoundError` (``_wire.faults``), never a
  raw ``EOFError``/``ConnectionRefusedError`` from deep inside multiprocessing;
* writes use ``sendmsg(MSG_NOSIGNAL)``: a peer that died between two calls is an
  ``EPIPE``, not a ``SIGPIPE`` that kills a client whose SIGPIPE is at ``SIG_DFL``;
* a connection is never shared across ``fork``: its owner pid is checked on each use.

The framing itself is also here without any I/O (:func:`encode_header`,
:func:`parse_header`, :class:`FrameDecoder`): the handshake (``_wire.handshake``) and a
non-blocking client feed it bytes from whatever transport they have.
"""

from __future__ import annotations

import _socket
import copyreg
import errno
import os
import pickle
import select
import struct
from collections import ChainMap
from multiprocessing import connection as _mpc
from multiprocessing.reduction import ForkingPickler as _ForkingPickler

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_HEADER = struct.Struct("!i")
_LONG_HEADER = struct.Struct("!Q")
_TIMEVAL = "ll"
#: a message up to this size is read whole and unpickled; a larger one is unpickled from
#: the socket (see Connection.recv).
_SMALL = 64 * 1024
_PREFETCH = 64 * 1024
#: the longest wait poll() takes, in ms (a C int).
_POLL_MAX_MS = 2**31 - 1
#: pieces per sendmsg call (Linux' IOV_MAX is 1024).
_IOV_MAX = 1024
#: a write to a peer that is gone fails with EPIPE instead of raising SIGPIPE.
_MSG_NOSIGNAL = getattr(_socket, "MSG_NOSIGNAL", 0)


class ProtocolError(OSError):
    """The peer broke the wire protocol (a bad length, an unexpected message): whoever
    is at the other end is not a bgtask peer, or a broken one. Its errno is ``EPROTO``."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPROTO, message)


# -- sans-I/O framing ------------------------------------------------------------------------


def encode_header(n: int) -> bytes:
    """The header of an *n*-byte message: 4-byte big-endian length, or -1 and 8 bytes."""
    return _HEADER.pack(n) if n <= 0x7FFFFFFF else _HEADER.pack(-1) + _LONG_HEADER.pack(n)


def frame(payload: bytes) -> bytes:
    """*payload* as one message on the wire (header + payload)."""
    return encode_header(len(payload)) + payload


def parse_header(data: Any, pos: int = 0) -> tuple[int, int] | None:
    """``(size, header_length)`` of the message starting at *data[pos:]*, or ``None``
    while the header is incomplete.

    :raises ProtocolError: a negative length other than the -1 marker.
    """
    if len(data) - pos < 4:
        return None
    size = _HEADER.unpack_from(data, pos)[0]
    if size >= 0:
        return size, 4
    if size != -1:
        raise ProtocolError(f"bad message length {size}")
    if len(data) - pos < 12:
        return None
    return _LONG_HEADER.unpack_from(data, pos + 4)[0], 12


class FrameDecoder:
    """Feed it bytes as they arrive; take whole messages out. No I/O, no pickle.

    :param max_size: the largest message accepted (``None``: any); the handshake bounds
        its messages as ``multiprocessing`` does (256 bytes), so a peer cannot make it
        allocate before it is authenticated.
    """

    __slots__ = ("_buf", "max_size")

    def __init__(self, max_size: int | None = None) -> None:
        self._buf = bytearray()
        self.max_size = max_size

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> bytes | None:
        """The next whole message's payload, or ``None`` until more bytes are fed.

        :raises ProtocolError: a bad length, or one above *max_size*.
        """
        head = parse_header(self._buf)
        if head is None:
            return None
        size, hlen = head
        if self.max_size is not None and size > self.max_size:
            raise ProtocolError(f"a {size}-byte message where at most {self.max_size} are expected")
        end = hlen + size
        if len(self._buf) < end:
            return None
        payload = bytes(self._buf[hlen:end])
        del self._buf[:end]
        return payload

    @property
    def buffered(self) -> int:
        """Bytes fed but not yet taken out as messages."""
        return len(self._buf)


class Connection(_mpc.Connection):
    """A manager connection whose large messages are not copied in user space.

    The framing is ``multiprocessing.connection``'s (a 4-byte big-endian length, or -1
    and an 8-byte length) and the payload one pickle, so either end may be stock.

    * :meth:`recv` unpickles a large message straight from the socket: the unpickler
      allocates each large ``bytes`` object and the kernel fills it (``readinto``). The
      stock path reads a large message chunk by chunk into a ``BytesIO``, copies it out,
      and the unpickler copies the payload once more; on 1 MiB reads that is half the
      time of a call.
    * :meth:`send` pickles into a list, in which a large ``bytes`` object stays itself,
      and writes header and pieces with one ``writev``; :meth:`send_parts` does the same
      for an already encoded message (:func:`encode_read_reply`).
    """

    owner_pid: int = 0
    #: the token of the supervisor this connection authenticated with: it tells one
    #: supervisor from a later one that got the same pid (see ``Task._conn``).
    token: bytes = b""
    _poller: Any = None
    _sock: Any = None
    _rcvtimeo = 0.0  # the socket's SO_RCVTIMEO, as last set (0: none)
    #: the peer sends nothing after a message until it is answered (a client's
    #: connection: one reply per request), so a read may ask for more than the header
    #: and get a small message in one system call instead of two.
    read_ahead = False

    def recv(self) -> Any:
        fd = self.fileno()
        data = os.read(fd, _PREFETCH if self.read_ahead else 4)
        if not data:
            raise EOFError
        head = parse_header(data)
        while head is None:  # rare: a header split across reads
            data += _read_exact(fd, (4 if len(data) < 4 else 12) - len(data))
            head = parse_header(data)
        size, pos = head
        have = len(data) - pos
        if have > size:
            raise ProtocolError("a second message arrived before the first was answered")
        if size <= _SMALL:
            if have == size:
                return pickle.loads(memoryview(data)[pos:])
            return pickle.loads(data[pos:] + _read_exact(fd, size - have))
        reader = _MessageReader(fd, size - have, data[pos:])
        obj = pickle.Unpickler(reader).load()
        if reader.left or reader.buffered:
            raise ProtocolError("a message's pickle ended before the message")
        return obj

    def send(self, obj: Any) -> None:
        sink = _Sink()
        _Pickler(sink).dump(obj)  # raises before anything is written
        self.send_parts(sink)

    def send_parts(self, parts: list[Any]) -> None:
        """Send one message made of *parts* (bytes-like pieces of a pickle)."""
        n = 0
        for part in parts:
            n += len(part)
        header = encode_header(n)
        _write_all(self.socket(), [header, *parts], len(header) + n)

    def write(self, data: bytes) -> None:
        """Write bytes that are already framed (the handshake's)."""
        _write_all(self.socket(), [data], len(data))

    def socket(self) -> Any:
        """A socket object over this connection's fd, for ``sendmsg``/``setsockopt``;
        made once, and detached (never closing the fd) when the connection closes."""
        sock = self._sock
        if sock is None:
            sock = self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, self.fileno())
        return sock

    def _close(self) -> None:  # multiprocessing's close() and __del__ call this
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.detach()  # the fd is closed once, below, never by the socket object
        os.close(self._handle)  # type: ignore[attr-defined]

    def set_receive_timeout(self, seconds: float) -> None:
        """Bound each blocking read (``SO_RCVTIMEO``; 0: none): a read that waits longer
        raises ``BlockingIOError``."""
        if seconds != self._rcvtimeo:
            set_timeouts(self.socket(), seconds, send=False)
            self._rcvtimeo = seconds

    def wait_readable(self, timeout: float | None) -> bool:
        if self._poller is None:
            self._poller = select.poll()
            self._poller.register(self.fileno(), select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        while ms is not None and ms > _POLL_MAX_MS:  # poll() takes at most ~24.8 days
            if self._poller.poll(_POLL_MAX_MS):
                return True
            ms -= _POLL_MAX_MS
        return bool(self._poller.poll(ms))


class _Pickler(pickle.Pickler):
    """``ForkingPickler``'s reducers, without its copy of the whole dispatch table for
    every message (a third of the pickling time of a small call); the chain sees later
    registrations in either table."""

    dispatch_table = ChainMap(_ForkingPickler._extra_reducers, copyreg.dispatch_table)  # type: ignore[attr-defined, arg-type]


class _Sink(list[object]):
    """A pickler's file: keeps what it is given, and a large ``bytes`` is given as itself."""

    __slots__ = ()
    write = list.append


class _MessageReader:
    """The unpickler's file over the rest of one message: *buffered*, then *left* bytes on
    *fd*; it never reads past them.

    Small reads (opcodes, frames) are served from a prefetched piece; ``readinto``, which
    the unpickler uses for a large ``bytes`` object it has allocated, reads from the
    socket straight into that object.
    """

    __slots__ = ("_buf", "_fd", "_pos", "left")

    def __init__(self, fd: int, left: int, buffered: bytes = b"") -> None:
        self._fd = fd
        self.left = left  # not yet read from the socket
        self._buf = buffered
        self._pos = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def read(self, n: int) -> bytes:
        have = len(self._buf) - self._pos
        if n > have:
            want = min(self.left, max(n - have, _PREFETCH))
            more = _read_exact(self._fd, want)
            self.left -= want
            self._buf = self._buf[self._pos:] + more if have else more
            self._pos = 0
            n = min(n, len(self._buf))
        out = self._buf[self._pos:self._pos + n]
        self._pos += n
        return out

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = len(view)
        take = min(n, len(self._buf) - self._pos)
        if take:
            view[:take] = memoryview(self._buf)[self._pos:self._pos + take]
            self._pos += take
        got = take
        while got < n and self.left:
            k = os.readv(self._fd, [view[got:got + min(n - got, self.left)]])
            if k == 0:
                raise EOFError("connection closed in the middle of a message")
            got += k
            self.left -= k
        view.release()
        return got

    def readline(self) -> bytes:  # only text pickles (protocol 0) use it
        out = []
        while True:
            c = self.read(1)
            out.append(c)
            if c in (b"\n", b""):
                return b"".join(out)


def _read_exact(fd: int, n: int) -> bytes:
    data = os.read(fd, n)
    if len(data) == n:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        part = os.read(fd, n - got)
        if not part:
            raise EOFError("connection closed in the middle of a message")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _write_all(sock: Any, parts: list[Any], total: int = -1) -> None:
    """Send all of *parts*, *total* bytes if known (a blocking socket can still write
    short on a signal). ``sendmsg`` rather than ``writev`` for ``MSG_NOSIGNAL``: a client
    whose SIGPIPE is at ``SIG_DFL`` must get ``EPIPE``, not die, when its supervisor has
    died between two calls."""
    sendmsg = sock.sendmsg
    i = 0
    while i < len(parts):
        batch = parts if i == 0 and len(parts) <= _IOV_MAX else parts[i:i + _IOV_MAX]
        n = sendmsg(batch, (), _MSG_NOSIGNAL)
        if n == total:
            return  # the common case: all of it at once
        total = -1
        for part in batch:
            size = len(part)
            if n < size:
                # A short write: go on from the rest of this part.
                parts[i] = memoryview(part)[n:]
                break
            n -= size
            i += 1


# Hand-encoded pickle opcodes of a read reply (protocol 3; see encode_read_reply).
_OP_HEAD = b"\x80\x03X\x07\x00\x00\x00#RETURN("  # PROTO 3, BINUNICODE '#RETURN', MARK
_OP_LONG8 = b"\x8a\x08"  # LONG1 with 8 bytes
_OP_BINBYTES = b"B"  # + 4-byte little-endian length
_OP_BINBYTES8 = b"\x8e"  # + 8-byte little-endian length
_OP_TRUE, _OP_FALSE = b"\x88", b"\x89"
_OP_TAIL = b"t\x86."  # TUPLE (to the MARK), TUPLE2, STOP


def encode_read_reply(pos: int, nxt: int, parts: list[Any], nbytes: int, limit: int,
                      eof: bool) -> list[Any]:
    """``("#RETURN", (pos, nxt, data, limit, eof))`` pickled, with *data* (the
    concatenation of *parts*, *nbytes* long) left in its pieces.

    A byte read's data is held as the chunks the job's output arrived in; a read across
    them would otherwise be joined (copied) and then pickled (copied again). Any
    unpickler reads the result as ``bytes``.
    """
    head = (_OP_HEAD + _OP_LONG8 + pos.to_bytes(8, "little", signed=True)
            + _OP_LONG8 + nxt.to_bytes(8, "little", signed=True)
            + (_OP_BINBYTES + nbytes.to_bytes(4, "little") if nbytes <= 0xFFFFFFFF
               else _OP_BINBYTES8 + nbytes.to_bytes(8, "little")))
    tail = (_OP_LONG8 + limit.to_bytes(8, "little", signed=True)
            + (_OP_TRUE if eof else _OP_FALSE) + _OP_TAIL)
    return [head, *parts, tail]


def set_timeouts(sock: Any, seconds: float, send: bool = True) -> None:
    tv = struct.pack(_TIMEVAL, int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO, tv)
    if send:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO, tv)

__all__ = ["Connection", "FrameDecoder", "ProtocolError", "encode_header", "encode_read_reply", "frame",
           "parse_header", "set_timeouts"]
