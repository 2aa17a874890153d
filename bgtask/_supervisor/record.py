"""The status record: ``<pid>.info`` in the pool, what ``info()`` would answer, as a file.

Listing 1000 tasks by asking each supervisor cost a connection, a two-way HMAC and a
supervisor thread per task (0.7 s). Each supervisor therefore keeps its info dict in a
file that ``search()`` and ``bgtask ls`` read instead (``_client/records.py``);
``info(fresh=True)`` still asks the supervisor.

* *Owner-only, never followed*: created 0600 with ``O_EXCL | O_NOFOLLOW`` under a
  temporary name and renamed over ``<pid>.info``, so a reader sees a whole old or a
  whole new record, never a torn one, and a file planted by another user in a shared
  pool is never written through.
* *Bound to this supervisor*: the record carries the inode of our token file; a record
  left by a dead supervisor whose pid we got again is not ours, and readers ignore it.
* *Liveness* is not in the record: the supervisor holds an exclusive ``flock`` on its
  token file, which the kernel drops when the process dies, however it dies.
* *Current*: a change of phase, run or meta is written at once (under the state lock,
  before anyone waiting for that change is woken), so ``search(status=...)`` right
  after ``wait()`` sees it. Output and reads are frequent: they only mark the record
  dirty and wake the main thread, which writes at most every :data:`MIN_INTERVAL`.

marshal, not pickle: the boot never imports pickle, the info dict is plain data, and a
reader of another Python 3 version reads it the same way.
"""

from __future__ import annotations

import marshal
import os
import time

from bgtask import _paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: the first element of a record: its layout.
RECORD_VERSION = 1
#: output changes the record at most this often (phase and meta changes at once).
MIN_INTERVAL = 0.1
_TMP = ".tmp"


class StatusRecord:
    """The record of supervisor *pid* in *pool*.

    :param build: returns the info dict, or None once the supervisor is going away;
        called with the state lock held.
    :param token_fd: our token file (its inode binds the record to us).
    """

    def __init__(self, pool: str, pid: int, token_fd: int, build: Callable[[], Any]) -> None:
        self.path = _paths.record_path(pool, pid)
        self.build = build
        st = os.fstat(token_fd)
        self.ident = (st.st_ino, st.st_dev)
        self.dirty = False
        self.last = 0.0
        self.broken = False
        self._wake: Callable[[], None] | None = None

    def set_waker(self, wake: Callable[[], None]) -> None:
        """*wake* makes the main thread look at :attr:`dirty` soon."""
        self._wake = wake

    def touch(self) -> None:
        """Something a reader can see changed (output, a read): write it soon."""
        if not self.dirty:
            self.dirty = True
            wake = self._wake
            if wake is not None:
                wake()

    def due_in(self) -> float | None:
        """Seconds until a dirty record may be written (None: it is clean)."""
        if not self.dirty:
            return None
        return max(0.0, self.last + MIN_INTERVAL - time.monotonic())

    def write(self) -> None:
        """Write the record now (state lock held)."""
        self.dirty = False
        self.last = time.monotonic()
        if self.broken:
            return
        info = self.build()
        if info is None:
            return  # going away: the files are (being) removed, do not make one again
        try:
            data = marshal.dumps((RECORD_VERSION, self.ident, info))
        except ValueError:
            # Something in the info dict marshal cannot write: readers fall back to
            # asking the supervisor, which is slower but right.
            self.broken = True
            self.remove()
            return
        tmp = self.path + _TMP
        try:
            fd = _create(tmp)
        except OSError:
            return  # a full or read-only pool: readers ask the supervisor
        try:
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError:
            _paths.remove_if_mine(tmp)

    def remove(self) -> None:
        _paths.remove_if_mine(self.path)
        _paths.remove_if_mine(self.path + _TMP)


def _create(path: str) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = _paths.open_private(path, flags, 0o600)
    except FileExistsError:
        # A temporary file left by a supervisor that died while writing (ours), or
        # planted (another user's: it stays, and this write fails).
        if not _paths.remove_if_mine(path):
            raise
        fd = _paths.open_private(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # exact, whatever the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


__all__ = ["MIN_INTERVAL", "RECORD_VERSION", "StatusRecord"]
