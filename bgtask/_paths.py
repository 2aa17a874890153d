"""Every path and file mode in a pool directory, in one place.

A pool directory holds, per task (``<pid>`` is the supervisor's pid):

* ``<pid>.sock`` -- the supervisor's Unix socket, mode 0600, owned by the task's owner;
* ``<pid>.token`` -- mode 0600: a random token (the manager's authkey is derived from it)
  and the job's pid and start time, so that an orphaned job can be found again. The
  supervisor holds an exclusive ``flock`` on it for its whole life: a free lock proves
  that no supervisor stands behind the file (see ``_client/records.py``);
* ``<pid>.info`` -- mode 0600: the status record (the info dict, marshal), rewritten
  atomically (``<pid>.info.tmp`` + rename) by the supervisor whenever it changes, so that
  listing reads files instead of opening a connection per task;

and per user:

* ``.tpl-<uid>-<key>.sock`` / ``.token`` / ``.lock`` -- the fork server that starts
  supervisors (``_supervisor/template.py``): 0600, authenticated like a supervisor;
* ``lock-<uid>-<name>.lock`` -- the locks of ``spawn(lock=...)`` (they may stay);
* ``.bgtask-<uid>.lock`` -- serialises stale-file removal against a new supervisor that
  got the same pid, so a sweeper never removes a live task's fresh files.

Ownership is the access control: a file not owned by the caller's effective uid is
never trusted, never followed and never removed (not even by root). Every open uses
``O_NOFOLLOW`` and every check is made on the opened descriptor, so a symlink planted in
a shared (1777) pool cannot redirect us.

The supervisor imports this module: it must stay light (``os``, ``stat`` only).
"""

from __future__ import annotations

import errno
import os
import stat

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
#: the longest name a task file can have: a 7-digit pid plus ".token", with the slash.
_LONGEST_NAME = len("/4194304.token")
MAX_POOL_PATH = MAX_SOCKET_PATH - _LONGEST_NAME

SOCK_SUFFIX = ".sock"
TOKEN_SUFFIX = ".token"
RECORD_SUFFIX = ".info"
TOKEN_VERSION = b"bgtask-token-1"
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: offset of the job record inside the token file (after the fixed-size token line).
JOB_RECORD_OFFSET = len(TOKEN_VERSION) + 1 + 64 + 1
JOB_RECORD_SIZE = 64


def sock_path(pool: str, pid: int) -> str:
    return f"{pool}/{pid}{SOCK_SUFFIX}"


def token_path(pool: str, pid: int) -> str:
    return f"{pool}/{pid}{TOKEN_SUFFIX}"


def record_path(pool: str, pid: int) -> str:
    return f"{pool}/{pid}{RECORD_SUFFIX}"


def template_path(pool: str, uid: int, key: str, suffix: str) -> str:
    """A file of the fork server of user *uid* whose start-up conditions hash to *key*."""
    return f"{pool}/.tpl-{uid}-{key}{suffix}"


def lock_path(pool: str, uid: int, name: str) -> str:
    return f"{pool}/lock-{uid}-{name}.lock"


def sweep_lock_path(pool: str, uid: int) -> str:
    return f"{pool}/.bgtask-{uid}.lock"


def check_pool_path(path: str) -> None:
    """:raises ValueError: if socket names under *path* would not fit in sun_path."""
    if len(os.fsencode(path)) > MAX_POOL_PATH:
        raise ValueError(
            f"pool path {path!r} is too long ({len(os.fsencode(path))} bytes): Unix socket "
            f"paths are limited to {MAX_SOCKET_PATH} bytes, so a pool path may have at most "
            f"{MAX_POOL_PATH}"
        )


def authkey_from_token(token: bytes) -> bytes:
    """The manager's authkey: the token's 32 random bytes, domain-separated."""
    import hashlib  # not at import time: the supervisor's fast path does not need it

    return hashlib.sha256(b"bgtask authkey\0" + token).digest()


def open_private(path: str, flags: int, mode: int = 0o600) -> int:
    """Open *path* without following a symlink; the caller owns the returned fd."""
    return os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC, mode)


def is_mine(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid()


def create_token_file(pool: str, pid: int) -> tuple[int, bytes]:
    """Create ``<pid>.token`` (0600, exclusively) with a fresh token.

    A stale file of ours under that name (a dead supervisor that had the same pid) is
    removed first; a file of another user cannot be removed in a sticky directory and
    raises ``FileExistsError`` so that the spawner retries with a new supervisor.

    :returns: the open fd (kept by the supervisor to update the job record) and the token.
    """
    path = token_path(pool, pid)
    token = os.urandom(32)
    body = TOKEN_VERSION + b" " + token.hex().encode() + b"\n"
    assert len(body) == JOB_RECORD_OFFSET
    for _attempt in range(3):
        try:
            fd = open_private(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            remove_if_mine(path)
            continue
        try:
            # The mode given to open() is filtered by the umask; make it exact.
            os.fchmod(fd, 0o600)
            os.write(fd, body + b" " * (JOB_RECORD_SIZE - 1) + b"\n")
        except BaseException:
            os.close(fd)
            _unlink_quiet(path)
            raise
        return fd, token
    raise FileExistsError(errno.EEXIST, "a file of another user holds this task's name", path)


def write_job_record(fd: int, job_pid: int | None, start_time: int | None) -> None:
    """Record the running job (or none) in the token file, for orphan clean-up."""
    line = f"job {job_pid or 0} {start_time or 0}".encode().ljust(JOB_RECORD_SIZE - 1) + b"\n"
    os.pwrite(fd, line, JOB_RECORD_OFFSET)


def read_token_file(pool: str, pid: int) -> tuple[bytes, int | None, int | None]:
    """Read the token and job record of task *pid*, trusting only a private file of ours.

    :returns: ``(token, job_pid, job_start_time)``.
    :raises FileNotFoundError: no such file.
    :raises PermissionError: the file is another user's, or readable by others.
    :raises ValueError: the file is not a bgtask token file.
    """
    path = token_path(pool, pid)
    try:
        fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ValueError(f"{path} is a symlink, not a bgtask token file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path} is not a regular file")
        if not is_mine(st):
            raise PermissionError(errno.EACCES, "token file belongs to another user", path)
        if st.st_mode & 0o077:
            raise PermissionError(errno.EACCES, "token file is accessible to other users", path)
        data = os.read(fd, JOB_RECORD_OFFSET + JOB_RECORD_SIZE)
    finally:
        os.close(fd)
    head, _, rest = data.partition(b"\n")
    version, _, hex_token = head.partition(b" ")
    if version != TOKEN_VERSION or len(hex_token) != 64:
        raise ValueError(f"{path} is not a bgtask token file")
    job_pid = job_start = None
    parts = rest.split()
    if len(parts) == 3 and parts[0] == b"job" and parts[1].isdigit() and parts[2].isdigit():
        job_pid, job_start = int(parts[1]) or None, int(parts[2]) or None
    return bytes.fromhex(hex_token.decode()), job_pid, job_start


def remove_if_mine(path: str, expect: os.stat_result | None = None) -> bool:
    """Unlink *path* if it is ours (and, given *expect*, still the same inode)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not is_mine(st):
        return False
    if expect is not None and (st.st_ino, st.st_dev) != (expect.st_ino, expect.st_dev):
        return False
    return _unlink_quiet(path)


def _unlink_quiet(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def task_pids(pool: str) -> tuple[list[int], list[int]]:
    """The pids of task sockets in *pool*: ``(mine, other users')``.

    Decided on ``lstat`` alone: nothing is opened or followed.
    """
    mine: list[int] = []
    others: list[int] = []
    euid = os.geteuid()
    try:
        entries = list(os.scandir(pool))
    except FileNotFoundError:
        return mine, others
    for entry in entries:
        name = entry.name
        if not name.endswith(SOCK_SUFFIX) or not name[: -len(SOCK_SUFFIX)].isdigit():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISSOCK(st.st_mode):
            continue
        (mine if st.st_uid == euid else others).append(int(name[: -len(SOCK_SUFFIX)]))
    return sorted(mine), sorted(others)


def has_task_of_mine(pool: str) -> bool:
    """Has *pool* a task socket of ours? (:func:`task_pids` stopping at the first.)

    For the fork server's spare, which asks every second once the pool has been quiet:
    one directory entry at a time, so that the answer costs no memory that grows with
    the pool. (A list of 4,000 tasks' entries was 1-3 MB of heap in the spare, and the
    spare becomes the next supervisor: its pages stayed dirty in it.)"""
    euid = os.geteuid()
    try:
        with os.scandir(pool) as entries:
            for entry in entries:
                name = entry.name
                if not name.endswith(SOCK_SUFFIX) or not name[: -len(SOCK_SUFFIX)].isdigit():
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISSOCK(st.st_mode) and st.st_uid == euid:
                    return True
    except FileNotFoundError:
        pass
    return False


def orphan_token_pids(pool: str) -> list[int]:
    """Pids of our token files that have no socket beside them."""
    pids: list[int] = []
    try:
        names = os.listdir(pool)
    except FileNotFoundError:
        return pids
    present = set(names)
    for name in names:
        stem = name[: -len(TOKEN_SUFFIX)]
        if name.endswith(TOKEN_SUFFIX) and stem.isdigit() and stem + SOCK_SUFFIX not in present:
            pids.append(int(stem))
    return pids


__all__ = [
    "MAX_POOL_PATH",
    "MAX_SOCKET_PATH",
    "authkey_from_token",
    "check_pool_path",
    "create_token_file",
    "has_task_of_mine",
    "lock_path",
    "open_private",
    "orphan_token_pids",
    "read_token_file",
    "record_path",
    "remove_if_mine",
    "sock_path",
    "sweep_lock_path",
    "task_pids",
    "template_path",
    "token_path",
    "write_job_record",
]
