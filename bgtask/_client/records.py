"""Reading status records: a task's info without a connection to its supervisor.

Each supervisor keeps ``<pid>.info`` current (``_supervisor/record.py``). A record is
believed only when all of these hold, and otherwise the caller asks the supervisor
(which is slower but never wrong):

* the token file is ours, private, and *locked*: the supervisor holds an exclusive
  ``flock`` on it for its whole life and the kernel drops it when the process dies, so
  a lock we could take ourselves means no supervisor stands behind the files (dead, or
  one too old to keep records: either way the connection path sorts it out);
* the record is ours, private, a regular file, and names the same token file (inode):
  a record left by a dead supervisor whose pid a new one got is someone else's;
* the supervisor is not stopped (``kill -STOP``): a stopped one is listed as
  "unresponsive" by the connection path, as the contract says.

Not from ``/proc/locks`` (one read for every task's lock instead of a probe each):
reading it takes the kernel's ``file_rwsem`` for writing, which waits for an RCU grace
period (measured: 6-16 ms for the first read, and every ``flock`` on the machine takes
the slow path meanwhile).
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import stat

from bgtask import _paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: without /proc (macOS) a stopped supervisor cannot be told apart here.
_HAVE_PROC = os.path.isdir("/proc/self")
#: the record layout this client reads (``_supervisor.record.RECORD_VERSION``).
RECORD_VERSION = 1
_MAX_RECORD = 1 << 24


def read_record(pool: str, pid: int) -> dict[str, Any] | None:
    """The raw info dict (meta still as blobs) of live task *pid* in *pool*, from its
    status record; None if the record cannot be trusted (ask the supervisor then)."""
    try:
        tfd = _paths.open_private(_paths.token_path(pool, pid), os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(tfd)
        if not stat.S_ISREG(st.st_mode) or not _paths.is_mine(st) or st.st_mode & 0o077:
            return None
        try:
            fcntl.flock(tfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            # Held: a supervisor is alive behind these files.
        else:
            return None  # nobody holds it (closing our fd releases our lock)
        ident = (st.st_ino, st.st_dev)
        data = _read_private(_paths.record_path(pool, pid))
    finally:
        os.close(tfd)
    if data is None:
        return None
    try:
        version, rec_ident, info = marshal.loads(data)
    except (ValueError, TypeError, EOFError):
        return None
    if version != RECORD_VERSION or tuple(rec_ident) != ident or not isinstance(info, dict):
        return None
    if _stopped_or_gone(pid):
        return None  # the connection path says what it is ("unresponsive", or swept)
    return info


def _stopped_or_gone(pid: int) -> bool:
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return _HAVE_PROC
    except OSError:
        return True
    try:
        data = os.read(fd, 512)
    finally:
        os.close(fd)
    # comm may hold spaces and parentheses: the state follows the last ')'.
    state = data[data.rfind(b")") + 2 : data.rfind(b")") + 3]
    return state in (b"T", b"t", b"Z", b"X", b"")


def _read_private(path: str) -> bytes | None:
    try:
        fd = _paths.open_private(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or not _paths.is_mine(st) or st.st_mode & 0o077
                or st.st_size > _MAX_RECORD):
            return None
        # One read: a record is renamed in whole and never written again, so more than
        # st_size bytes means this is not one (the caller asks the supervisor then).
        data = os.read(fd, st.st_size + 1)
        return data if len(data) <= st.st_size else None
    except OSError:
        return None
    finally:
        os.close(fd)


__all__ = ["RECORD_VERSION", "read_record"]
