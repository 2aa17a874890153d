"""The byte level of an asyncio connection to a supervisor (``_client/aioconn.py``):
a non-blocking socket owned outright, its reader registered with the event loop for the
connection's whole life, whole frames handed to the one waiting call, and a close that
takes effect at once whatever the state of the loop.
"""

from __future__ import annotations

import asyncio
import errno
import socket

from bgtask._wire.framing import FrameDecoder, ProtocolError
from bgtask._wire.handshake import ClientHandshake


class Wire:
    """Bytes in, whole messages out; one waiter at a time (one call per connection).

    It owns its non-blocking socket and keeps a reader registered with the loop for its
    whole life (one wake-up per reply, no ``add_reader``/``remove_reader`` pair per call).
    Not an asyncio transport on purpose: a transport closes its socket only in a callback
    of a *running* loop, so a connection dropped after its loop stopped (a web server
    shutting down, an ``asyncio.run`` that ended) could only be left to the garbage
    collector and its ResourceWarning. :meth:`close` here closes the socket at once.
    """

    def __init__(self, sock: socket.socket, hs: ClientHandshake | None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.loop = asyncio.get_running_loop()
        self.hs = hs
        self.decoder = FrameDecoder()
        self.waiter: asyncio.Future[bytes | None] | None = None
        self.lost: BaseException | None = None
        self.gone = self.loop.create_future()  # set when the connection ends
        self.closed = False
        self._out = bytearray()  # what the kernel did not take yet
        self.loop.add_reader(self.fd, self._readable)

    # -- events ----------------------------------------------------------------------------

    def _readable(self) -> None:
        try:
            data = self.sock.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.connection_lost(exc)
            return
        if not data:
            self.connection_lost(None)
            return
        self.data_received(data)

    def data_received(self, data: bytes) -> None:
        hs = self.hs
        if hs is not None:
            try:
                hs.receive_data(data)
            except Exception as exc:
                self.write(hs.data_to_send())  # our #FAILURE#, if we refused the peer
                self._fail(exc)
                return
            self.write(hs.data_to_send())
            if hs.done:
                self.hs = None
                self._deliver(None)
            return
        self.decoder.feed(data)
        waiter = self.waiter
        if waiter is not None and waiter.cancelled():
            # The call's await was cancelled (a task's cancel() cancels the future it
            # waits on) and the task has not run since: this is that call's reply, and
            # its cancellation handling takes it from the decoder (AioConnection's
            # _cancelled). Failing here would throw away a consuming read's reply that
            # the supervisor delivered, and the items it consumed with it.
            return
        if waiter is None or waiter.done():
            if self.decoder.buffered:  # nobody asked: the peer is out of step
                self._fail(ProtocolError("the supervisor sent data out of turn"))
            return
        try:
            msg = self.decoder.next_message()
        except ProtocolError as exc:
            self._fail(exc)
            return
        if msg is not None:
            if self.decoder.buffered:
                self._fail(ProtocolError("a second message arrived before the first was answered"))
                return
            self._deliver(msg)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._fail(exc if exc is not None else EOFError("the supervisor closed the connection"))

    def write(self, data: bytes) -> None:
        if not data or self.closed:
            return
        if self._out:
            self._out += data
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._fail(exc)
            return
        if n < len(data):
            self._out += data[n:]
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(exc)
            return
        del self._out[:n]
        if not self._out:
            self.loop.remove_writer(self.fd)

    def _deliver(self, msg: bytes | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(msg)

    def _fail(self, exc: BaseException) -> None:
        if self.lost is None:
            self.lost = exc
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)
        self.close()

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Unregister and close the socket, now: in the loop's thread, or with the loop
        stopped or closed (no callback needed); from another thread while the loop runs,
        the loop is asked to do it (its selector is not ours to touch from here)."""
        if self.closed:
            return
        loop = self.loop
        if not loop.is_closed() and loop.is_running() and not in_loop(loop):
            try:
                loop.call_soon_threadsafe(self.close)
                return
            except RuntimeError:
                pass  # closed meanwhile: nothing is registered any more
        self.closed = True
        if self.lost is None:
            self.lost = Disconnected(errno.ECONNABORTED, "the connection was closed on this side")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)
        if not loop.is_closed():
            loop.remove_reader(self.fd)
            if self._out:
                loop.remove_writer(self.fd)
        self._out.clear()
        self.sock.close()
        if not self.gone.done() and not loop.is_closed():
            self.gone.set_result(None)


def in_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


class Disconnected(ConnectionAbortedError):
    """A call whose connection this side closed (``AsyncTask.disconnect()`` during it)."""


__all__ = ["Disconnected", "Wire", "in_loop"]
