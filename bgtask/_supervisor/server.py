"""The supervisor's ``BaseManager`` server: who may call what, and nothing more.

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
* authentication (``_wire.handshake``) runs in the connection's own thread with one
  deadline for the whole handshake, before anything is unpickled: a client with a wrong
  authkey, or one that never answers (or answers a byte at a time), only loses its own
  connection; at most :data:`MAX_PENDING` handshakes are pending at once, so silent
  connections cannot take all the supervisor's fds (the oldest is dropped for a newcomer);
* the first request says the client's protocol version (bgtask's clients do); the
  answer is the supervisor's, and a client of another version is hung up on after it;
* errors the caller caused travel back as exceptions (``#ERROR``); anything else as
  text (``#TRACEBACK``), which clients raise as ``RemoteError`` (``errors.py``);
* ``info()`` is answered from a pickled reply kept while nothing changed (:class:`InfoReply`);
* a consuming read whose reply cannot be delivered (the client died) is undone.
"""

from __future__ import annotations

import errno
import os
import pickle
import select
import signal
import socket
import threading
import time
from multiprocessing import managers
from multiprocessing import process as _mp_process

from bgtask import _paths
from bgtask._supervisor.buffer import Chunks
from bgtask._supervisor.errors import caller_error, is_caller_error, untag
from bgtask._supervisor.job import DELETING, SERVING
from bgtask._supervisor.launch import catch_signals
from bgtask._supervisor.record import StatusRecord
from bgtask._supervisor.service import TaskService
from bgtask._wire.framing import Connection, encode_read_reply
from bgtask._wire.handshake import HANDSHAKE_DEADLINE, ServerHandshake, hello_version
from bgtask._wire.names import EXPOSED, PROTOCOL_VERSION, STATE_IDENT

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bgtask._supervisor.boot import Startup

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
#: how often the supervisor checks that its socket and token file are still in the pool.
FILES_CHECK_INTERVAL = 2.0
#: the kind of a reply that is already a whole pickled message (never on the wire).
_ENCODED = "#ENCODED"


def _format_exc() -> str:
    import traceback

    return traceback.format_exc()


class TaskManager(managers.BaseManager):
    """The manager class of a supervisor (see the module docstring)."""


TaskManager.register("TaskState", exposed=EXPOSED)


class _Listener:
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
        conn.socket()  # made here, once: _Pending.make_room() may shut it down from this thread
        return conn

    def close(self) -> None:
        self._sock.close()


class _Pending:
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


class TaskServer(managers.Server):
    public = ["accept_connection", "create", "decref", "dummy", "get_methods", "incref"]

    def __init__(self, service: TaskService, sock: socket.socket, address: str, authkey: bytes) -> None:
        # Not calling Server.__init__: it would bind a new socket; ours is bound already.
        self.registry = TaskManager._registry  # type: ignore[attr-defined]
        self.authkey = _mp_process.AuthenticationString(authkey)  # type: ignore[attr-defined]
        self.listener = _Listener(sock, address)
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
        self.waker = _Waker()
        self.record.set_waker(self.waker.wake)

    def _record_info(self) -> Any:
        """The status record's content (lock held); None once we are going away."""
        service = self.service
        return service.build_info() if service.job.supervisor is SERVING else None

    def flush_record(self) -> None:
        """Write the status record if it is dirty and due (the main thread)."""
        if self.record.due_in() == 0:
            with self.service.lock:
                self.record.write()

    # -- accepting -------------------------------------------------------------------------

    def start(self) -> None:
        """Get ready to serve, before the boot reports "started": the accepter runs (in a
        thread reserved at boot) and the signals to forward are caught."""
        _mp_process.current_process()._manager_server = self  # type: ignore[attr-defined]
        # Which files are ours is settled before the first client is answered: a client
        # may unlink the socket right after its first answer (the test suite does).
        self.files = self._our_files()
        # Signals by hand (`kill <task id>`) are forwarded to the job, like tini does;
        # the boot caught them before it reported (launch.catch_signals).
        startup = self.service.startup
        if startup.signal_fd < 0:
            startup.signal_fd = catch_signals()
        self.signal_fd = startup.signal_fd
        # Connections are accepted by the main thread (serve_forever): no accepter
        # thread, since an idle supervisor should cost few (pid_max counts threads).
        # Until the main thread polls, a client waits in the listen backlog.
        self._pending = _Pending()
        self.listener.set_nonblocking()

    def serve_forever(self) -> None:
        """The main thread: accept connections (each gets a thread), forward signals,
        keep the status record current, and check our files now and then."""
        next_check = time.monotonic() + FILES_CHECK_INTERVAL
        waker = self.waker
        while not self.stop_event.is_set():
            left = next_check - time.monotonic()
            due = self.record.due_in()
            if due is not None and due < left:
                left = max(due, 0.0)
                if due <= 0:
                    self.flush_record()
                    continue
            if left <= 0:
                next_check = time.monotonic() + FILES_CHECK_INTERVAL
                if self._unreachable(self.files):
                    # Our socket or token file was removed (the pool directory was
                    # deleted, or someone unlinked them): no client can ever find us
                    # again. End like delete() rather than keep a job running that
                    # nobody can reach.
                    _on_term(self.service, self)
                continue
            listen_fd = self.listener.fileno()  # -1 once delete() closed it
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
                if not self._pending.make_room():
                    time.sleep(0.02)  # a burst: the next connections wait in the backlog
                else:
                    # Closed by delete(): its thread ends the process once its reply is
                    # out; returning here would end it before (os._exit in the boot).
                    self.accept_one()
            if ready:
                try:
                    numbers = os.read(self.signal_fd, 256)
                except BlockingIOError:
                    continue
                for signum in numbers:
                    self.service.forward_signal(signum)

    def _our_files(self) -> list[tuple[str, tuple[int, int] | None]]:
        """(path, (inode, device)) of our socket and token file; ``None``: already gone."""
        startup = self.service.startup
        files: list[tuple[str, tuple[int, int] | None]] = []
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

    def _unreachable(self, files: list[tuple[str, tuple[int, int] | None]]) -> bool:
        job = self.service.job
        with job.lock:  # delete() removes the files under it: never mistake that for this
            if job.supervisor is not SERVING:
                return False
            for path, ident in files:
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
        self._pending.add(c)
        t = threading.Thread(target=self.handle_request, args=(c,), daemon=True)
        try:
            t.start()
        except RuntimeError:
            # No thread for it (RLIMIT_NPROC, memory): serve this one connection
            # here. Slow for the others, who wait in the backlog (or time out as
            # "unresponsive"), but the task still answers.
            self.handle_request(c)
        return True

    def handle_request(self, conn: Any) -> None:
        try:
            self._handle(conn)
        except Exception:
            pass
        finally:
            self._pending.discard(conn)  # before the fd is closed (see _Pending.make_room)
            conn.close()

    def _authenticate(self, conn: Connection) -> Any:
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
            self._pending.discard(conn)
        return hs.request

    def _handle(self, conn: Any) -> None:
        request = self._authenticate(conn)
        if request is None:
            return
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


class _Waker:
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


def _method_of(request: Any) -> object:
    try:
        return request[1]
    except Exception:
        return None


def _on_term(service: TaskService, server: TaskServer) -> None:
    try:
        service.delete(5.0)
    finally:
        server.finish()


def prepare(startup: Startup) -> TaskServer:
    """Build the server for what the boot started, and start serving in the background
    (see :meth:`TaskServer.start`). On failure the job is stopped and the files are
    removed: nobody could ever reach them.

    :raises Exception: what went wrong (the boot reports it to the spawner).
    """
    try:
        service = TaskService(startup)
        sock = socket.socket(fileno=startup.sock.detach())
        startup.sock = sock
        server = TaskServer(service, sock, _paths.sock_path(startup.pool, startup.pid),
                            _paths.authkey_from_token(startup.token))
        server.start()
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
    return server


def serve(startup: Startup) -> None:
    """Serve the task until it is deleted (or its files are removed)."""
    prepare(startup).serve_forever()


__all__ = ["InfoReply", "TaskManager", "TaskServer", "prepare", "serve"]
