"""Reaching the fork server (``_supervisor/template.py``) from ``spawn()``.

:func:`request` hands a spec to the pool's template for this caller's conditions,
starting one if there is none, and returns the connection on which the forked
supervisor reports (exactly as a fresh one reports on its stdout). ``None`` means "no
template": the caller starts a fresh interpreter instead, which always works.

On by default; ``$BGTASK_TEMPLATE=0`` (or ``off``, ``no``, ``false``) turns it off for
this caller, and every spawn then starts a fresh interpreter. A forked supervisor's
command line is the template's, which names no pool: tools that recognise a supervisor
by the pool path on its command line must look at the pool's files instead (the test
suite's leak checks do: ``tests/helpers.py``).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import subprocess
import sys
import time
from typing import Any

from bgtask import _paths
from bgtask._wire.forkserver import REQUEST, SOCK, TOKEN, TOKEN_SIZE

#: how long starting a template may take before we give up on it (and start fresh).
START_TIMEOUT = 10.0
#: environment variables the template gets from its starter (and that are in its key):
#: the locale decides how the supervisor encodes paths and arguments; ``BGTASK_KSM``
#: whether its memory is offered to the kernel's same-page merging (``_supervisor/warm.py``).
_KEPT_ENV = ("LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "PATH", "BGTASK_KSM")
#: glibc: allocations of 128 KiB and more are mmap'd and given back when freed, and the
#: heap is trimmed past 128 KiB. The default raises the threshold after the first large
#: free, after which a 64 MiB burst stayed resident (40-73 MB, 7 of 9 supervisors).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072",
              "MALLOC_ARENA_MAX": "2"}


def enabled() -> bool:
    return os.environ.get("BGTASK_TEMPLATE", "1").lower() not in ("0", "off", "no", "false")


def conditions_key(exe: str, pkg_dir: str) -> str:
    """A hash of what a job inherits from the process that starts its supervisor.

    Everything is read again on every call (another process can move us to another
    cgroup, renice us or change our limits with ``prlimit``); only the hash is reused
    while what it hashes is unchanged (it was half the cost: ~0.25 ms a spawn)."""
    import resource

    parts: list[Any] = [os.geteuid(), os.getegid(), os.getuid(), os.getgid(), sorted(os.getgroups()),
                        [os.environ.get(k) for k in _KEPT_ENV]]
    parts.append([resource.getrlimit(n) for n in _rlimits()])
    try:
        parts.append(os.getpriority(os.PRIO_PROCESS, 0))
        parts.append(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        pass
    for path in ("/proc/self/cgroup", "/proc/self/oom_score_adj"):
        parts.append(_read(path))
    status = _read(path="/proc/self/status")
    parts.append([line for line in status.splitlines()
                  if line.startswith((b"Cap", b"NoNewPrivs", b"Seccomp"))])
    for ns in ("mnt", "pid", "net", "ipc", "uts", "user", "cgroup"):
        try:
            parts.append(os.stat(f"/proc/self/ns/{ns}").st_ino)
        except OSError:
            parts.append(None)
    # What cannot change in this process (the interpreter, its version, the package).
    parts += [REQUEST, exe, pkg_dir, sys.version, sys.getfilesystemencoding()]
    global _last_key
    last = _last_key  # one tuple, replaced whole: consistent whichever thread wrote it
    if last is not None and last[0] == parts:
        return last[1]
    import hashlib

    key = hashlib.sha256(repr(parts).encode()).hexdigest()[:12]
    _last_key = (parts, key)
    return key


#: the parts :func:`conditions_key` hashed last, and its hash.
_last_key: tuple[list[Any], str] | None = None
_rlimit_ids: list[int] = []


def _rlimits() -> list[int]:
    if not _rlimit_ids:
        import resource

        _rlimit_ids.extend(getattr(resource, n) for n in sorted(dir(resource)) if n.startswith("RLIMIT_"))
    return _rlimit_ids


def _read(path: str) -> bytes:
    """A small /proc file of ours, whole (b"" if it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        parts = []
        while part := os.read(fd, 65536):
            parts.append(part)
        return b"".join(parts)
    except OSError:
        return b""
    finally:
        os.close(fd)


#: a template that did not answer in time is not asked again for this long (seconds).
SHUN = 10.0
_shunned: dict[str, float] = {}


def request(pool: str, data: bytes, exe: str, pkg_dir: str, boot: str) -> socket.socket | None:
    """Send spec *data* to the template (started if needed); the connection on which
    the supervisor reports, or None: use a fresh interpreter."""
    key = conditions_key(exe, pkg_dir)
    sock_path = _paths.template_path(pool, os.geteuid(), key, SOCK)
    if len(os.fsencode(sock_path)) > _paths.MAX_SOCKET_PATH:
        return None  # a long pool path: no room for the template's socket name
    if _shunned and _shunned.get(sock_path, 0.0) > time.monotonic():
        return None
    conn = _send(pool, key, data)
    if conn is None and _start(pool, key, exe, pkg_dir, boot):
        conn = _send(pool, key, data)
    return conn


def shun(conn: socket.socket) -> None:
    """The template behind *conn* did not answer in time (stopped? hung?): spawns of
    this process start fresh interpreters instead for :data:`SHUN` seconds."""
    try:
        path = conn.getpeername()
    except OSError:
        return
    if isinstance(path, str):
        _shunned[path] = time.monotonic() + SHUN


def _send(pool: str, key: str, data: bytes) -> socket.socket | None:
    uid = os.geteuid()
    path = _paths.template_path(pool, uid, key, SOCK)
    try:
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or not _paths.is_mine(st):
            return None
        token = _read_token(_paths.template_path(pool, uid, key, TOKEN))
    except (OSError, ValueError):
        return None
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.settimeout(START_TIMEOUT)
        conn.connect(path)
        cred = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        if struct.unpack("3i", cred)[1] != uid:
            raise PermissionError(errno.EACCES, "the template is not ours")
        umask = os.umask(0o022)
        os.umask(umask)
        conn.sendall(REQUEST + token + umask.to_bytes(4, "big") + len(data).to_bytes(4, "big") + data)
    except (OSError, ValueError):
        conn.close()
        return None  # gone, killed, or refusing: a fresh interpreter will do
    conn.settimeout(None)
    return conn


def _read_token(path: str) -> bytes:
    fd = _paths.open_private(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not _paths.is_mine(st) or st.st_mode & 0o077:
            raise PermissionError(errno.EACCES, "template token is not private", path)
        token = bytes.fromhex(os.read(fd, 200).decode().strip())
        if len(token) != TOKEN_SIZE:
            raise ValueError("not a template token")
        return token
    finally:
        os.close(fd)


def _start(pool: str, key: str, exe: str, pkg_dir: str, boot: str) -> bool:
    """Start a template for *key*; True once one (ours or a concurrent spawner's) serves."""
    from bgtask._client.spawn import read_reports

    env = {k: v for k in _KEPT_ENV if (v := os.environ.get(k)) is not None}
    env.update(MALLOC_ENV)
    try:
        # The pool travels on stdin: the template is nobody's task, and its command
        # line (which its children, the supervisors, keep) names no pool.
        proc = subprocess.Popen([exe, "-I", "-S", "-c", boot, pkg_dir, key],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True,
                                cwd="/", env=env)
    except OSError:
        return False
    try:
        assert proc.stdout is not None and proc.stdin is not None
        try:
            proc.stdin.write(os.fsencode(pool))
            proc.stdin.close()
        except OSError:
            pass
        msg = next(read_reports(proc.stdout.fileno(), START_TIMEOUT), None)
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
        proc.wait()
    return msg is not None and msg[0] in ("ready", "exists")


__all__ = ["MALLOC_ENV", "SHUN", "conditions_key", "enabled", "request", "shun"]
