"""The supervisor's ``BaseManager`` server: who may call what, and what they get back.

:class:`TaskManager` registers one typeid, ``TaskState``, whose only instance is the
supervisor's :class:`~bgtask._supervisor.service.TaskService`, under the fixed ident
``_protocol.STATE_IDENT``. A stock ``TaskManager(address, authkey).connect()`` client and
its proxies work; bgtask's own client (``_protocol``) speaks the same wire with one
connection. :class:`TaskServer` is ``multiprocessing.managers.Server`` with the parts
that would let a client stop or confuse the supervisor removed:

* server commands are limited to ``accept_connection``, ``create``, ``incref``,
  ``decref``, ``dummy`` and ``get_methods`` (no ``shutdown``, no ``debug_info``), and
  ``decref`` can never drop the one shared object;
* only the names in ``_protocol.EXPOSED`` are dispatched -- no ``#GETVALUE`` fallback;
* only authenticated clients get here: accepting, the bound on pending handshakes and
  the HMAC handshake itself are ``accept.py``'s (:class:`~bgtask._supervisor.accept.Acceptor`
  calls :meth:`TaskServer.handle` with a connection's first request);
* the first request says the client's protocol version (bgtask's clients do); the
  answer is the supervisor's, and a client of another version is hung up on after it;
* errors the caller caused travel back as exceptions (``#ERROR``); anything else as
  text (``#TRACEBACK``), which clients raise as ``RemoteError`` (``errors.py``);
* ``info()`` is answered from a pickled reply kept while nothing changed (:class:`InfoReply`);
* a consuming read whose reply cannot be delivered (the client died) is undone
  (:meth:`TaskServer.serve_client`: ``Outputs.rollback``, else ``reply_sent``);
* each call marks the status record (``record.py``) dirty, or writes it before the
  reply when a reader must see the change at once (:data:`_RECORD_NOW`).

Building the server and the main thread's loop (accepting, signals, the files check)
are ``main_loop.py``'s.
"""

from __future__ import annotations

import os
import pickle
import threading
from multiprocessing import managers
from multiprocessing import process as _mp_process

from bgtask._supervisor.accept import Acceptor, Listener
from bgtask._supervisor.buffer import Chunks
from bgtask._supervisor.errors import caller_error, is_caller_error, untag
from bgtask._supervisor.record import StatusRecord
from bgtask._supervisor.states import SERVING
from bgtask._wire.framing import encode_read_reply
from bgtask._wire.handshake import hello_version
from bgtask._wire.names import EXPOSED, PROTOCOL_VERSION, STATE_IDENT

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

    from bgtask._supervisor.service import TaskService
    from bgtask._wire.framing import Connection

#: the kind of a reply that is already a whole pickled message (never on the wire).
_ENCODED = "#ENCODED"


def _format_exc() -> str:
    import traceback

    return traceback.format_exc()


class TaskManager(managers.BaseManager):
    """The manager class of a supervisor (see the module docstring)."""


TaskManager.register("TaskState", exposed=EXPOSED)


class TaskServer(managers.Server):
    public = ["accept_connection", "create", "decref", "dummy", "get_methods", "incref"]

    def __init__(self, service: TaskService, sock: socket.socket, address: str, authkey: bytes) -> None:
        # Not calling Server.__init__: it would bind a new socket; ours is bound already.
        self.registry = TaskManager._registry  # type: ignore[attr-defined]
        self.authkey = _mp_process.AuthenticationString(authkey)  # type: ignore[attr-defined]
        self.listener = Listener(sock, address)
        self.address = address
        self.service = service
        self.info_reply = InfoReply(service)
        self.exposed = frozenset(EXPOSED)
        self.id_to_obj = {"0": (None, ()), STATE_IDENT: (service, self.exposed, None)}  # type: ignore[dict-item]
        self.id_to_refcount = {STATE_IDENT: 1}
        self.id_to_local_proxy_obj: dict[str, Any] = {}
        self.mutex = threading.Lock()
        self.stop_event = threading.Event()
        startup = service.startup
        self.record = StatusRecord(startup.pool, startup.pid, startup.token_fd, self._record_info)
        # Who gets in (accept.py): the main loop (main_loop.py) accepts, and each
        # connection's thread authenticates, then calls handle().
        self.acceptor = Acceptor(self.listener, self.authkey, self.handle)

    def _record_info(self) -> Any:
        """The status record's content (lock held); None once we are going away."""
        service = self.service
        return service.build_info() if service.job.supervisor is SERVING else None

    def flush_record(self) -> None:
        """Write the status record if it is dirty and due (the main thread)."""
        if self.record.due_in() == 0:
            with self.service.lock:
                self.record.write()

    def start(self) -> None:
        """Get ready to serve, before the boot reports "started" (the main loop accepts)."""
        _mp_process.current_process()._manager_server = self  # type: ignore[attr-defined]
        self.acceptor.start()

    # -- a client's first request --------------------------------------------------------

    def handle(self, conn: Connection, request: Any) -> None:
        """The first request of an authenticated connection (its thread): a server
        command, or ``accept_connection`` and then :meth:`serve_client`."""
        try:
            _ignore, funcname, args, kwds = request
            if funcname not in self.public:
                raise AttributeError(f"{funcname!r} is not a server command of a bgtask supervisor")
            func = getattr(self, funcname)
        except Exception:
            conn.send(("#TRACEBACK", _format_exc()))
            return
        if funcname == "accept_connection":
            # A stock client sends no version and gets the stock answer; bgtask's client
            # gets ours, checks it and names both versions if they differ, and a client
            # of another version is hung up on after the answer.
            well_formed, version = hello_version(request)
            conn.send(("#RETURN", None if version is None else PROTOCOL_VERSION))
            if well_formed and version in (None, PROTOCOL_VERSION):
                self.serve_client(conn)
            return
        try:
            msg: tuple[str, Any] = ("#RETURN", func(conn, *args, **kwds))
        except Exception:
            msg = ("#TRACEBACK", _format_exc())
        conn.send(msg)

    # -- server commands (stock clients) ------------------------------------------------

    def create(self, c: Any, typeid: str, /, *args: Any, **kwds: Any) -> tuple[str, tuple[str, ...]]:
        if typeid != "TaskState" or args or kwds:
            raise ValueError(f"a bgtask supervisor serves only TaskState(), not {typeid!r}")
        self.incref(c, STATE_IDENT)
        return STATE_IDENT, tuple(EXPOSED)

    def decref(self, c: Any, ident: str) -> None:
        if ident == STATE_IDENT:
            with self.mutex:
                self.id_to_refcount[ident] = max(1, self.id_to_refcount[ident] - 1)
            return
        super().decref(c, ident)

    # -- calls -----------------------------------------------------------------------------

    def serve_client(self, conn: Any) -> None:
        outputs = self.service.outputs
        recv = conn.recv

        def send(msg: tuple[str, Any]) -> None:
            kind, result = msg
            if kind is _ENCODED:
                conn.send_parts([result])  # a whole reply, already pickled
            elif type(result) is tuple and len(result) == 5 and type(result[2]) is Chunks:
                # A byte read: its chunks go to the socket as they are (never joined).
                pos, nxt, data, limit, eof = result
                conn.send_parts(encode_read_reply(pos, nxt, data, data.nbytes, limit, bool(eof)))
            else:
                conn.send(msg)

        while True:
            try:
                request = recv()
            except (EOFError, OSError):
                return
            except Exception:
                msg: tuple[str, Any] = ("#TRACEBACK", _format_exc())  # an unpicklable request
                deleted = False
            else:
                msg = self.dispatch(request)
                # Only the thread that answers delete() ends the process, after its
                # answer is sent: another client's thread finishing a call meanwhile
                # must not cut that answer off (delete() would see the supervisor
                # vanish and raise TaskNotFoundError).
                deleted = msg[0] == "#RETURN" and _method_of(request) == "delete"
                # Not kept while this client is idle: a written message is in the
                # buffer now, and once another client consumes it, this reference
                # would be the only one left (a 200 MiB message stayed 200 MiB).
                del request
            claim = outputs.take_claim()
            try:
                try:
                    send(msg)
                except (OSError, EOFError):
                    raise
                except Exception:
                    send(("#UNSERIALIZABLE", _format_exc()))
            except (OSError, EOFError):
                if claim is not None:
                    outputs.rollback(claim)  # the client is gone: its read never happened
                if deleted:
                    self.finish()
                return
            if claim is not None:
                outputs.reply_sent(claim)
            # Do not hold a read's data while waiting for the next request: it has left
            # the buffer and no longer counts against max_buffer.
            del msg, claim
            if deleted:
                self.finish()

    def dispatch(self, request: Any) -> tuple[str, Any]:
        """The reply to one request ``(ident, method, args, kwds)``: ``("#RETURN",
        result)``, ``("#ERROR", exc)`` for an error the caller caused, or
        ``("#TRACEBACK", text)`` for a failure of the supervisor."""
        try:
            try:
                ident, methodname, args, kwds = request
            except (TypeError, ValueError) as exc:
                raise caller_error(exc) from None
            if type(methodname) is not str or methodname not in self.exposed:
                raise caller_error(AttributeError(f"{methodname!r} is not a method of a bgtask task"))
            if ident != STATE_IDENT:
                raise caller_error(LookupError(f"no object {ident!r} in this supervisor"))
            if methodname == "info" and not args and not kwds:
                return _ENCODED, self.info_reply.get()  # cached while nothing changes
            method = getattr(self.service, methodname)
            try:
                result = method(*args, **kwds)
                if methodname in _RECORD_NOW:
                    # Before the reply: a search() right after apply_meta() finds it.
                    with self.service.lock:
                        self.record.write()
                elif methodname not in _RECORD_SAME:
                    self.record.touch()  # a read or a write moved a stream's offsets
                return "#RETURN", result
            except TypeError as exc:
                if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                    # Raised by the call itself, not inside the method: the arguments do
                    # not fit its signature.
                    caller_error(exc)
                raise
        except Exception as exc:
            if is_caller_error(exc):
                return "#ERROR", untag(exc)
            return "#TRACEBACK", _format_exc()

    def finish(self) -> None:
        """End the supervisor (after ``delete``): files are gone, the job is reaped."""
        os._exit(0)


class InfoReply:
    """``("#RETURN", info())`` pickled, as the server sends it; encoded again only when
    the lock was taken since the last time (see :class:`~bgtask._supervisor.lock.StateLock`).
    An idle task answers ``info()`` from it: building and pickling the dict was 40% of
    the cost of a bare call."""

    def __init__(self, service: TaskService) -> None:
        self.service = service
        self._cached: tuple[int, bytes] | None = None

    def get(self) -> bytes:
        lock = self.service.lock
        with lock.raw:  # not counted: reading the cache changes nothing
            cached = self._cached
            if cached is not None and cached[0] == lock.gen:
                return cached[1]
            data = pickle.dumps(("#RETURN", self.service.build_info()), pickle.DEFAULT_PROTOCOL)
            self._cached = (lock.gen, data)
            return data


#: calls after which the status record is written before the reply.
_RECORD_NOW = frozenset({"apply_meta"})
#: calls that change nothing a record shows.
_RECORD_SAME = frozenset({"info", "stream_info", "wait"})


def _method_of(request: Any) -> object:
    try:
        return request[1]
    except Exception:
        return None


__all__ = ["InfoReply", "TaskManager", "TaskServer"]
