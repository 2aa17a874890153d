"""The fork server: supervisors forked from a prepared interpreter instead of started.

A fresh supervisor costs ~20 ms of CPU (an interpreter, then its imports) and 7-8 MB of
private memory. Children forked from one process that has imported everything a
supervisor needs start in about a millisecond and share those pages (measured: 1.3 MB
PSS each instead of 7.4). This module is that process:

* *Started on demand* by a spawn that finds none (``_client/template.py``), as
  ``python -I -S -c <boot> <package dir> <key>`` (the pool on stdin); *key* hashes what a job
  inherits from the process that starts its supervisor (ids, groups, rlimits, nice,
  affinity, cgroup, namespaces, capabilities, locale, interpreter): a spawner whose
  conditions differ gets a template of its own, never a job with someone else's limits.
  The umask is sent with each request and set in the child.
* *Owner-only and authenticated like a supervisor*: its socket is 0600 in the pool,
  ``SO_PEERCRED`` must name our uid, and the client proves it knows the token in the
  0600 token file (HMAC-SHA256 of a fresh nonce) before anything it sends is parsed.
  One ``flock`` per key makes it the only one; no TCP.
* *Single-threaded* (fork copies only the calling thread), and ``gc.freeze()`` before
  serving, so that children do not write to the shared pages when they collect.
* *Never needed by a running task*: each child double-forks into a session of its own
  and is the supervisor from then on (``boot.run``), with a fresh token and nothing of
  the template's: the listening socket, the lock and the template token are closed or
  dropped, ``random`` reseeds itself at fork, multiprocessing's authkey is renewed.
* *Exits by itself* when idle: after :data:`IDLE_EXIT` s with no task of ours left in
  the pool, or after :data:`IDLE_MAX` s in any case. A spawn that finds it gone (or
  killed mid-spawn, before it forked) starts a new one or falls back to a fresh
  interpreter.
"""

from __future__ import annotations

import _signal
import errno
import os
import sys

from bgtask import _paths
from bgtask._wire.forkserver import HELLO, LOCK, NONCE, SOCK, TOKEN, proof

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

#: idle this long with no task of ours in the pool: exit.
IDLE_EXIT = 2.0
#: idle this long: exit anyway.
IDLE_MAX = 60.0
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
        self.token = os.urandom(32)
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

    def remove_files(self) -> None:
        for s in (SOCK, TOKEN):
            _paths.remove_if_mine(self.paths[s])

    def serve(self) -> None:
        import select
        import time

        assert self.sock is not None
        last = time.monotonic()
        while True:
            ready, _, _ = select.select([self.sock], [], [], 1.0)
            now = time.monotonic()
            if ready:
                self.handle_one()
                last = time.monotonic()
                continue
            idle = now - last
            if idle >= IDLE_MAX or not self._files_ours() or (
                    idle >= IDLE_EXIT and not _paths.task_pids(self.pool)[0]):
                self.remove_files()
                return

    def _files_ours(self) -> bool:
        """Our socket is still where clients look (not unlinked, pool not deleted)."""
        try:
            return _paths.is_mine(os.lstat(self.paths[SOCK]))
        except OSError:
            return False

    def handle_one(self) -> None:
        import hmac
        import socket
        import struct

        assert self.sock is not None
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            _pid, uid, _gid = struct.unpack("3i", cred)
            if uid != self.uid:
                return  # the socket is 0600: only root can get here, and root is not us
            nonce = os.urandom(NONCE)
            conn.sendall(HELLO + nonce)
            head = _recv_exact(conn, 32 + 4 + 4)
            if head is None or not hmac.compare_digest(head[:32], proof(self.token, nonce)):
                return
            umask = int.from_bytes(head[32:36], "big")
            size = int.from_bytes(head[36:40], "big")
            if size > MAX_REQUEST or umask > 0o777:
                return
            data = _recv_exact(conn, size)
            if data is None:
                return
            conn.settimeout(None)
            self.fork(conn, umask, data)
        except OSError:
            pass
        finally:
            conn.close()

    def fork(self, conn: socket.socket, umask: int, data: bytes) -> None:
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)  # the intermediate exits at once
            return
        try:
            # The intermediate: a new session (as a spawner's start_new_session gave
            # the fresh supervisor), then the supervisor is its child, not ours.
            os.setsid()
            if os.fork():
                os._exit(0)
            self._become_supervisor(conn, umask)
            from bgtask._supervisor import boot

            boot.run(self.pool, data)
        finally:
            os._exit(1)

    def _become_supervisor(self, conn: socket.socket, umask: int) -> None:
        """In the child: keep nothing of the template that matters."""
        assert self.sock is not None
        self.sock.close()       # a supervisor never accepts for the template
        os.close(self.lock_fd)  # or a new template could not start while we live
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
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    os.chdir("/")
    template = Template(pool, key)
    try:
        template.setup()
        from bgtask._supervisor import warm

        warm.prepare()
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
