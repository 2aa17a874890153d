"""The fork server: supervisors forked from a prepared interpreter instead of started.

A fresh supervisor costs ~20 ms of CPU (an interpreter, then its imports) and 7-8 MB of
private memory. Children forked from one process that has imported everything a
supervisor needs (``warm.py``) start in well under a millisecond and share those pages.
This module is that process, the *template*:

* *Started on demand* by a spawn that finds none (``_client/template.py``), as
  ``python -I -S -c <boot> <package dir> <key>`` (the pool on stdin); *key* hashes what a job
  inherits from the process that starts its supervisor (ids, groups, rlimits, nice,
  affinity, cgroup, namespaces, capabilities, locale, interpreter, protocol version): a
  spawner whose conditions differ gets a template of its own, never a job with someone
  else's limits. The umask is sent with each request and set in the child.
* *Owner-only and authenticated like a supervisor*: its socket is 0600 in the pool,
  ``SO_PEERCRED`` must name our uid on both ends, and a request carries the token of the
  0600 token file (``_wire/forkserver.py`` says why not a challenge), checked before
  anything else of it is parsed. One ``flock`` per key makes it the only one; no TCP.
* *A spare ready before it is asked for*: the template keeps one child forked (into a
  session of its own) and waiting on the template's socket (:meth:`Template._spare`).
  The spare accepts a request, tells the template (which forks the next spare at once,
  on the other CPU), and becomes the supervisor (``boot.run``): no fork while a spawner
  waits. If a spare cannot be forked, the template serves requests itself, forking one
  child per request (:meth:`Template.fork`).
* *Single-threaded* (fork copies only the calling thread), and ``gc.freeze()`` before
  serving, so that children do not write to the shared pages when they collect.
* *Never needed by a running task*: a supervisor keeps nothing of the template's: the
  listening socket, the lock and the template token are closed or dropped, ``random``
  reseeds itself at fork, multiprocessing's authkey is renewed, and it makes a token of
  its own. Supervisors stay the template's children (the kernel reaps them: the template
  ignores SIGCHLD) until it exits, then are nobody's.
* *Exits by itself* when idle: after :data:`IDLE_EXIT` s with no task of ours left in
  the pool, or after :data:`IDLE_MAX` s in any case (its spare watches the clock and
  tells it; a template whose spare sees its pipe close exits too); at once when the
  pool directory or the template's socket is removed (an inotify watch,
  ``libc.watch_removal``; without one, within a second). A spawn that finds it gone
  (or killed mid-spawn, before a supervisor reported) starts a new one or falls back
  to a fresh interpreter.
"""

from __future__ import annotations

import _signal
import errno
import os
import sys

from bgtask import _paths
from bgtask._wire.forkserver import HEADER, LOCK, REQUEST, SOCK, TOKEN, TOKEN_SIZE

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

#: idle this long with no task of ours in the pool: exit.
IDLE_EXIT = 2.0
#: idle this long: exit anyway.
IDLE_MAX = 60.0
#: what a spare writes to the template when the pool has been idle long enough.
IDLE = b"i"
#: the longest request accepted (a spec with a huge environment or meta).
MAX_REQUEST = 64 << 20
#: a client must finish its request this fast.
REQUEST_TIMEOUT = 5.0


def _report(msg: tuple[Any, ...]) -> None:
    import marshal

    data = marshal.dumps(msg)
    try:
        os.write(1, len(data).to_bytes(4, "big") + data)
    except OSError:
        pass


class _Exists(Exception):
    """Another template of this key holds the lock."""


class Template:
    def __init__(self, pool: str, key: str) -> None:
        self.pool = pool
        self.uid = os.geteuid()
        self.paths = {s: _paths.template_path(pool, self.uid, key, s) for s in (SOCK, TOKEN, LOCK)}
        self.lock_fd = -1
        self.token = b""
        self.sock: socket.socket | None = None
        #: readable when the pool or our socket goes (``libc.watch_removal``); -1: none
        self.watch = -1

    def setup(self) -> None:
        import fcntl
        import socket

        fd = _paths.open_private(self.paths[LOCK], os.O_RDWR | os.O_CREAT, 0o600)
        self.lock_fd = fd
        if not _paths.is_mine(os.fstat(fd)):
            raise PermissionError(errno.EACCES, "template lock belongs to another user", self.paths[LOCK])
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _Exists() from None
        # We hold the lock: whatever socket or token is there is a dead template's.
        for s in (SOCK, TOKEN):
            _paths.remove_if_mine(self.paths[s])
        self.token = os.urandom(TOKEN_SIZE)
        tfd = _paths.open_private(self.paths[TOKEN], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fchmod(tfd, 0o600)
            os.write(tfd, self.token.hex().encode() + b"\n")
        finally:
            os.close(tfd)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is created 0600
        try:
            sock.bind(self.paths[SOCK])
        finally:
            os.umask(old)
        sock.listen(128)
        self.sock = sock
        from bgtask._supervisor import libc

        self.watch = libc.watch_removal(self.pool, self.paths[SOCK])

    def remove_files(self) -> None:
        for s in (SOCK, TOKEN):
            _paths.remove_if_mine(self.paths[s])

    def serve(self) -> None:
        """Keep a spare forked and waiting; exit when it says the pool is idle (module
        docstring).

        Between two forks we run as little as we can: one blocking ``read`` on the
        spare's pipe. Every page we write after a fork is copied, and the child is left
        the only owner of the old one -- private memory of every supervisor alive. So
        the idle checks run in the spare (:meth:`_spare`), which tells us "idle"
        (:data:`IDLE`) or closes the pipe once it took a request (or died): then the
        next spare is forked at once, on the other CPU, while this one starts its job."""
        while True:
            spare = self.fork_spare()
            if spare < 0:
                if not self.serve_alone():
                    return
                continue
            try:
                said = os.read(spare, 1)
            except OSError:
                said = b""
            os.close(spare)
            if said == IDLE:
                self.remove_files()
                return  # os._exit(0) follows

    def serve_alone(self) -> bool:
        """No spare could be forked: serve requests ourselves, forking one child per
        request (slower), until the next request (True: try a spare again) or until
        idle (False: our files are removed, exit)."""
        import select
        import time

        assert self.sock is not None
        since = time.monotonic()
        while True:
            if select.select([self.sock], [], [], 1.0)[0]:
                self.handle_one()
                return True
            if self.idle(since):
                self.remove_files()
                return False

    def idle(self, since: float) -> bool:
        """Has the pool been idle long enough (nothing asked of us since *since*) for
        the template to exit?"""
        import time

        quiet = time.monotonic() - since
        return quiet >= IDLE_MAX or not self._files_ours() or (
            quiet >= IDLE_EXIT and not _paths.has_task_of_mine(self.pool))

    def _files_ours(self) -> bool:
        """Our socket is still where clients look (not unlinked, pool not deleted)."""
        try:
            return _paths.is_mine(os.lstat(self.paths[SOCK]))
        except OSError:
            return False

    # -- the spare: a supervisor forked before it is asked for -----------------------------

    def fork_spare(self) -> int:
        """Fork a spare (:meth:`_spare`); the read end of its pipe, or -1 if fork failed.

        Forked once, before a request arrives (not while a spawner waits), into a
        session of its own. It stays our child: we ignore SIGCHLD (``main``), so the
        kernel reaps it when it ends, and it is nobody's to wait for."""
        from bgtask._supervisor.launch import small_pipe

        r, w = small_pipe()  # one page of the user's pipe budget, not 16
        try:
            pid = os.fork()
        except OSError:
            os.close(r)
            os.close(w)
            return -1
        if pid:
            os.close(w)
            return r
        try:
            os.close(r)
            os.setsid()
            self._spare(w)
        finally:
            os._exit(1)

    def _spare(self, pipe_w: int) -> None:
        """In the spare: wait for one request on the template's socket, tell the
        template (close *pipe_w*: it forks the next spare), then become its supervisor.
        Exits when the template is gone (*pipe_w* reports POLLERR)."""
        import select

        assert self.sock is not None
        os.close(self.lock_fd)  # the template's lock is the template's alone
        self.lock_fd = -1
        self.sock.setblocking(False)
        from bgtask._supervisor import libc, threads
        from bgtask._supervisor.launch import StartError

        try:
            threads.reserve()  # now rather than while a spawner waits (boot.run checks)
        except StartError:
            pass  # boot.run tries again, and reports the failure
        import time

        born = time.monotonic()  # the template's last request, or its start
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(pipe_w, 0)  # POLLERR once the template closed its end
        if self.watch >= 0:
            poller.register(self.watch, select.POLLIN)
        while True:
            events = dict(poller.poll(1000))
            if self.watch in events:
                libc.drain(self.watch)  # the pool or our socket went: look now, not in 1 s
            if ((not events or self.watch in events) and self.idle(born)
                    and not select.select([self.sock], [], [], 0)[0]):
                os.write(pipe_w, IDLE)  # the template removes its files and exits
                os._exit(0)
            conn = None
            if events.get(self.sock.fileno(), 0) & select.POLLIN:
                try:
                    conn, _ = self.sock.accept()
                except OSError:
                    conn = None  # taken by someone else, or reset: look again
            if conn is not None:
                break
            if pipe_w in events:
                os._exit(0)  # the template exited: no request will come for us
        self.sock.close()  # never accept again; the next spare does
        self._close_watch()
        os.close(pipe_w)   # the template forks it now
        request = self.read_request(conn)
        if request is None:
            os._exit(0)  # not a good request: nothing was started (the template forks another)
        self._become_supervisor(conn, request[0])
        from bgtask._supervisor import boot

        boot.run(self.pool, request[1])

    # -- one request ------------------------------------------------------------------------

    def handle_one(self) -> None:
        """Without a spare: accept one request and fork its supervisor here."""
        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        try:
            request = self.read_request(conn)
            if request is not None:
                self.fork(conn, *request)
        finally:
            conn.close()

    def read_request(self, conn: socket.socket) -> tuple[int, bytes] | None:
        """Check the client (our uid, our token: ``_wire/forkserver.py``) and read its
        request: the umask and the spec; None if it is not one."""
        import hmac
        import socket
        import struct

        try:
            conn.settimeout(REQUEST_TIMEOUT)
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", cred)
            if uid != self.uid:
                return None  # the socket is 0600: only root can get here, and root is not us
            head = _recv_exact(conn, HEADER)
            if head is None or not head.startswith(REQUEST):
                return None
            token = head[len(REQUEST):len(REQUEST) + TOKEN_SIZE]
            if not hmac.compare_digest(token, self.token):
                return None
            umask = int.from_bytes(head[-8:-4], "big")
            size = int.from_bytes(head[-4:], "big")
            if size > MAX_REQUEST or umask > 0o777:
                return None
            data = _recv_exact(conn, size)
            if data is None:
                return None
            conn.settimeout(None)
        except OSError:
            return None
        return umask, data

    def fork(self, conn: socket.socket, umask: int, data: bytes) -> None:
        if os.fork():
            return  # the kernel reaps it (SIGCHLD is ignored)
        try:
            os.setsid()  # a session of its own, as a spare's
            assert self.sock is not None
            self.sock.close()       # a supervisor never accepts for the template
            self._close_watch()     # nor holds one of the user's inotify instances
            os.close(self.lock_fd)  # or a new template could not start while we live
            self.lock_fd = -1
            self._become_supervisor(conn, umask)
            from bgtask._supervisor import boot

            boot.run(self.pool, data)
        finally:
            os._exit(1)

    def _close_watch(self) -> None:
        if self.watch >= 0:
            os.close(self.watch)
            self.watch = -1

    def _become_supervisor(self, conn: socket.socket, umask: int) -> None:
        """In the child: keep nothing of the template that matters (its socket and lock
        are closed already)."""
        self.token = b""
        os.umask(umask)
        fd = conn.detach()
        os.dup2(fd, 1)  # boot.run reports to fd 1
        os.close(fd)
        # A fresh secret in case anything multiprocessing-made ever uses it; random
        # reseeds itself in the child (os.register_at_fork), and tokens are urandom.
        mp = sys.modules.get("multiprocessing.process")
        if mp is not None:
            mp.current_process().authkey = os.urandom(32)


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    parts = []
    while n > 0:
        part = conn.recv(min(n, 1 << 20))
        if not part:
            return None
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def main(key: str) -> None:
    """Entry point (see the module docstring): the pool directory comes on stdin.
    Reports ``("ready", pid)``, ``("exists",)`` or ``("error", text)`` on stdout, then
    detaches."""
    parts = []
    while True:
        part = os.read(0, 4096)
        if not part:
            break
        parts.append(part)
    pool = os.fsdecode(b"".join(parts))
    if os.fork():
        os._exit(0)  # the starter reaps the intermediate; we are nobody's child
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    # Our children (spares, then supervisors) are reaped by the kernel when they end;
    # each resets SIGCHLD for itself (boot.run) before it starts a job.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    os.chdir("/")
    template = Template(pool, key)
    try:
        template.setup()
        from bgtask._supervisor import boot, warm

        boot.use_builtin_hashes()

        warm.prepare()
        if warm.ksm_wanted():
            warm.mark_mergeable()
    except _Exists:
        _report(("exists",))
        os._exit(0)
    except BaseException as exc:
        template.remove_files()
        _report(("error", f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    import gc

    gc.collect()
    gc.freeze()  # children never touch these objects' pages when they collect
    _report(("ready", os.getpid()))
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    os.close(null)
    try:
        template.serve()
    finally:
        os._exit(0)


__all__ = ["IDLE_EXIT", "IDLE_MAX", "Template", "main"]
