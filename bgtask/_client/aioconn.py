"""The asyncio end of the wire: connect to and authenticate with a supervisor, and call
its exposed methods, on the event loop's own non-blocking sockets (no thread per call).

The protocol itself is the sans-I/O one of ``_wire`` (:class:`ClientHandshake`,
:class:`FrameDecoder`, ``map_fault``, ``reply_result``), the very pieces the blocking
client drives over its blocking socket (``_client/connection.py``): only the I/O is
written twice. A connection owns its non-blocking socket, whose reader stays registered
with the loop for its whole life (a call costs one write and one wake-up, not an
``add_reader``/``remove_reader`` pair per ``sock_recv``), and closes it at once when
told to, whatever the state of its loop (:class:`~bgtask._client.aiowire.Wire`).

Waits are probed every :data:`~bgtask._client.connection.SILENT_PROBE` seconds: a
supervisor that is stopped (``kill -STOP``) is reported as
:class:`~bgtask.TaskUnresponsiveError` instead of hanging the await; one that dies
closes the socket, which fails the await with :class:`~bgtask.TaskNotFoundError`.

A call interrupted by a cancellation leaves its connection out of step: it is closed,
never reused (:class:`AioConnection` knows it is *broken*). What the supervisor did with
the call then depends on the call, and the caller picks how to end it
(:meth:`AioConnection.call`'s *on_cancel*):

* ``"close"`` -- hang up at once (info, kill, a non-consuming read...);
* ``"settle"`` -- wait briefly for the answer first, so that what the supervisor did is
  final when the cancellation propagates (a write to stdin: its ``limit`` then tells
  exactly what was accepted);
* ``"reclaim"`` -- a consuming read: wait briefly for its reply (it answers at once),
  which the caller then puts back; see :meth:`AioConnection._cancelled` and, if none
  comes, :meth:`AioConnection.reclaim`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import socket
import time
from collections.abc import Callable
from typing import Any

from bgtask import _paths
from bgtask._client.aiowire import Disconnected, Wire
from bgtask._client.connection import SILENT_PROBE, _check_socket, _read_token, _stopped
from bgtask._wire.faults import Stopped, map_fault, reply_result
from bgtask._wire.framing import ProtocolError, frame
from bgtask._wire.handshake import ClientHandshake
from bgtask._wire.names import ANSWER_GRACE, CONNECT_TIMEOUT, STATE_IDENT

#: how long a cancelled call waits for the supervisor's answer with ``on_cancel="settle"``
#: or ``"reclaim"``.
SETTLE_GRACE = 2.0
#: calls answered at once (without a wait) in a row before one yields to the loop.
FAST_STREAK = 16
_fast_streak = 0
#: the first pause between connect attempts while the listen backlog is full.
_BACKLOG_PAUSE = 0.001


class AioConnection:
    """One authenticated connection to the supervisor of task *pid*, in one event loop.

    Made by :func:`open_connection` (or :func:`adopt`). ``token`` identifies the
    supervisor (see :class:`~bgtask._client.cache.ConnectionCache`).
    """

    def __init__(self, pid: int, wire: Wire, token: bytes) -> None:
        self.pid = pid
        self.token = token
        self.owner_pid = os.getpid()
        self._wire = wire
        self._loop = asyncio.get_running_loop()
        #: out of step for good (a cancelled or failed call): never reused.
        self.broken = False
        self._fd = wire.fd
        #: for a connection through an ssh forward: what a loss means (the supervisor
        #: hung up, or the ssh connection is gone: ``HostUnreachableError``); blocking.
        self.why_lost: Callable[[BaseException], BaseException] | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self.broken or self._wire.closed

    def close(self) -> None:
        """Close the socket now (a pending request is dropped, not flushed)."""
        self.broken = True
        self._wire.close()

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to *timeout* s for the supervisor to close its end; whether it did."""
        try:
            await asyncio.wait_for(asyncio.shield(self._wire.gone), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def call(self, method: str, args: tuple[Any, ...], kwds: dict[str, Any],
                   blocks_for: float | None = 0.0, on_cancel: str = "close") -> Any:
        """Call *method*; the result, or its exception (mapped by ``map_fault``).

        :param blocks_for: how long the method may block in the supervisor (``None``:
            without limit); the answer is awaited that long plus ``ANSWER_GRACE``, and a
            stopped supervisor is noticed after ``SILENT_PROBE``.
        :param on_cancel: ``"close"``, ``"settle"`` or ``"reclaim"`` (module docstring).
            With ``"reclaim"``, a cancellation whose call's whole reply arrives (before
            it, or while it waits briefly for it) raises :class:`Reclaimed` carrying it,
            instead of CancelledError.
        """
        if self.closed:
            raise map_fault(EOFError("the connection is closed"), self.pid, f"{method}()", False)
        global _fast_streak
        if _fast_streak >= FAST_STREAK:
            # A call answered at once never yields: a loop of them would starve the
            # event loop's other tasks. Now and then, yield -- before the request is
            # sent, where a cancellation loses nothing (after the reply, it would lose
            # the reply).
            _fast_streak = 0
            await asyncio.sleep(0)
            if self.closed:
                raise map_fault(EOFError("the connection is closed"), self.pid, f"{method}()", False)
        wire = self._wire
        waiter: asyncio.Future[bytes | None] = self._loop.create_future()
        wire.waiter = waiter
        payload = pickle.dumps((STATE_IDENT, method, args, kwds), pickle.HIGHEST_PROTOCOL)
        wire.write(frame(payload))
        if not wire.closed:
            # On a busy CPU the supervisor often answers while our send() is still in
            # the kernel: the reply is already here. Taking it now saves the event
            # loop's poll and the task's wake-up, half the cost of an await.
            try:
                data = os.read(self._fd, 1 << 18)
            except OSError:
                pass  # not yet (EAGAIN), or a failure the reader will report
            else:
                if data:
                    wire.data_received(data)
                else:
                    wire.connection_lost(None)
        if waiter.done() and not waiter.exception():
            wire.waiter = None
            msg = waiter.result()
            assert msg is not None
            _fast_streak += 1
            return self._result(msg, method)
        started = time.monotonic()
        deadline = None if blocks_for is None else started + blocks_for + ANSWER_GRACE
        timer = self._loop.call_later(SILENT_PROBE, self._probe, waiter, deadline)
        try:
            msg = await waiter
        except asyncio.CancelledError:
            _fast_streak = 0
            timer.cancel()
            reply = await self._cancelled(waiter, on_cancel)
            if reply is not None:
                try:
                    result = self._result(reply, method)
                except Exception:
                    pass  # it failed in the supervisor: nothing was read
                else:
                    raise Reclaimed(result) from None
            raise
        except Disconnected:
            raise  # disconnect() during the call: the caller's doing, not the task's
        except Exception as exc:
            self.close()
            since = None
            if isinstance(exc, TimeoutError):
                since = time.time() - (time.monotonic() - started)
            raise map_fault(exc, self.pid, f"{method}()", False, since) from None
        finally:
            timer.cancel()
            wire.waiter = None
        assert msg is not None
        return self._result(msg, method)

    def _result(self, msg: bytes, method: str) -> Any:
        try:
            kind, result = pickle.loads(msg)
        except Exception as exc:
            self.close()
            raise map_fault(ProtocolError(f"an unreadable reply: {exc!r}"), self.pid,
                            f"{method}()", False) from None
        return reply_result(kind, result, self.pid, method)

    def _probe(self, waiter: asyncio.Future[bytes | None], deadline: float | None) -> None:
        """Every SILENT_PROBE of a wait: is the supervisor stopped, or past its deadline?"""
        if waiter.done():
            return
        if _stopped(self.pid):
            waiter.set_exception(Stopped(errno.ETIMEDOUT, "the supervisor is stopped"))
        elif deadline is not None and time.monotonic() >= deadline:
            waiter.set_exception(TimeoutError(errno.ETIMEDOUT, "no answer within the call's deadline"))
        else:
            self._loop.call_later(SILENT_PROBE, self._probe, waiter, deadline)

    async def _cancelled(self, waiter: asyncio.Future[bytes | None], on_cancel: str) -> bytes | None:
        """End a call interrupted by a cancellation; the connection is closed after.

        The cancellation normally lands on ``await waiter``, and a task's ``cancel()``
        cancels the future it waits on: *waiter* is then cancelled and cannot take the
        reply any more. The reply, whether it came before the task ran again (the wire
        keeps it in its decoder) or comes later, is awaited by :meth:`_settle`.
        """
        try:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                msg = waiter.result()  # the answer came before the cancellation took effect
                return msg if on_cancel == "reclaim" else None
            if on_cancel == "close":
                return None
            msg = await self._settle(SETTLE_GRACE)
            if on_cancel == "settle":
                return None
            # A consuming read (it answers at once): its reply, so that the caller puts
            # it back -- the supervisor has finished with the read, and no later read can
            # overtake its rollback. Only if none came whole in time (a stopped
            # supervisor, a second cancellation): hang up the read side.
            return msg if msg is not None else self.reclaim()
        finally:
            self.close()

    async def _settle(self, grace: float) -> bytes | None:
        """After a cancelled wait: the call's reply, awaited up to *grace* seconds more on
        a waiter of its own; None if it did not come whole (the connection failed,
        *grace* passed, or a second cancellation came)."""
        wire = self._wire
        try:
            msg = wire.decoder.next_message()  # it came after the cancellation
        except ProtocolError:
            return None
        if msg is not None or wire.closed:
            return msg
        waiter: asyncio.Future[bytes | None] = self._loop.create_future()
        wire.waiter = waiter
        try:
            return await asyncio.wait_for(asyncio.shield(waiter), grace)
        except (Exception, asyncio.CancelledError):
            # It may have come as the wait ended: it is no longer in the decoder then.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                return waiter.result()
            return None
        finally:
            wire.waiter = None

    def reclaim(self) -> bytes | None:
        """After a cancelled consuming read whose reply did not come in time (see
        :meth:`_cancelled`): the whole reply if it has arrived after all (the read
        happened), else None -- and then the read is undone by the supervisor.

        ``shutdown(SHUT_RD)`` on our end makes every later send of the supervisor fail
        (``EPIPE``): a reply not yet sent, or sent only in part, is rolled back by it
        (``_supervisor/server.py``: a claim whose reply could not be delivered). Bytes
        that arrived before the shutdown stay readable: if they make the whole reply,
        it was sent, and the caller must put it back or hand it on. (The rollback
        happens in the supervisor's own time: a read made meanwhile can come before it,
        which is why this is the fallback, not the rule.)
        """
        sock = self._wire.sock
        if not self._wire.closed:
            try:
                sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
            else:
                while True:
                    try:
                        data = sock.recv(1 << 20)
                    except OSError:
                        break
                    if not data:
                        break
                    self._wire.decoder.feed(data)
        try:
            return self._wire.decoder.next_message()
        except ProtocolError:
            return None


class Reclaimed(Exception):
    """A cancelled consuming read whose reply had fully arrived: *result* is what it
    read (the caller puts it back, then re-raises the cancellation)."""

    def __init__(self, result: Any) -> None:
        super().__init__("a cancelled read's reply")
        self.result = result


async def open_connection(pool: str, pid: int, timeout: float = CONNECT_TIMEOUT) -> AioConnection:
    """Connect to and authenticate with the supervisor of task *pid* in local pool
    directory *pool*: :func:`bgtask._client.connection.open_connection`, awaitable.

    :raises TaskNotFoundError: no such task, or its supervisor is dead
        (``SupervisorDeadError`` when its socket refuses connections).
    :raises TaskUnresponsiveError: the supervisor is stopped, or silent past *timeout*.
    :raises AccessDeniedError: the task's files belong to another user.
    """
    path = _check_socket(pool, pid)
    token = _read_token(pool, pid, path)
    deadline = time.monotonic() + timeout
    since = time.time()
    sock = await _connect(path, pid, deadline, since)
    wire = Wire(sock, ClientHandshake(_paths.authkey_from_token(token)))
    loop = wire.loop
    conn = AioConnection(pid, wire, token)
    waiter: asyncio.Future[bytes | None] = loop.create_future()
    wire.waiter = waiter
    timer = loop.call_later(SILENT_PROBE, conn._probe, waiter, deadline)
    try:
        await waiter
    except BaseException as exc:
        conn.close()
        if not isinstance(exc, Exception):
            raise
        raise map_fault(exc, pid, "connecting", True, since) from None
    finally:
        timer.cancel()
        wire.waiter = None
    return conn


async def _connect(path: str, pid: int, deadline: float, since: float) -> Any:
    """A connected non-blocking socket to *path*.

    A non-blocking ``connect`` to a Unix socket whose listen backlog is full fails at
    once with ``EAGAIN`` (it is not "in progress", and asyncio's ``sock_connect`` would
    wait for a writability that says nothing): try again after a pause, up to the
    deadline, looking whether the supervisor is stopped once a SILENT_PROBE has passed.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | getattr(socket, "SOCK_CLOEXEC", 0))
    sock.setblocking(False)
    pause = _BACKLOG_PAUSE
    probe_at = time.monotonic() + SILENT_PROBE
    try:
        while True:
            try:
                sock.connect(path)
                return sock
            except (BlockingIOError, InterruptedError):
                now = time.monotonic()
                if now >= deadline:
                    raise map_fault(TimeoutError(errno.ETIMEDOUT, "no slot in the listen backlog"),
                                    pid, "connecting", True, since) from None
                if now >= probe_at:
                    if _stopped(pid):
                        raise map_fault(Stopped("the supervisor is stopped"), pid, "connecting",
                                        True, since) from None
                    probe_at = now + SILENT_PROBE
                await asyncio.sleep(pause)
                pause = min(pause * 2, 0.05)
            except OSError as exc:
                raise map_fault(exc, pid, "connecting", True, since) from None
    except BaseException:
        sock.close()
        raise


def adopt(conn: Any, pid: int) -> AioConnection:
    """An :class:`AioConnection` (of the running loop) over an already authenticated
    blocking connection *conn* (a backend's, e.g. a remote pool's) whose descriptor is a
    stream socket; *conn* is closed."""
    try:
        fd = os.dup(conn.fileno())
    finally:
        conn.close()
    sock = socket.socket(fileno=fd)
    try:
        sock.setblocking(False)
        wire = Wire(sock, None)
    except BaseException:
        sock.close()
        raise
    aconn = AioConnection(pid, wire, conn.token)
    # A forward's connection (_client/ssh.py) tells a dropped ssh connection from a
    # supervisor that hung up.
    aconn.why_lost = getattr(conn, "_why", None)
    return aconn


__all__ = ["SETTLE_GRACE", "AioConnection", "Disconnected", "Reclaimed", "adopt", "open_connection"]
