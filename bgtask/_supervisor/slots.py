"""Slots (``spawn(slot=(name, n))``): at most *n* of a user's tasks run at once, with no
daemon to count them.

A slot is a lock file ``slot-<uid>-<name>-<i>.lock`` (``i < n``) in the pool, ``flock``'ed
by the supervisor whose job holds it, and inherited by the job (as ``spawn(lock=)``'s
lock is): the kernel is the only counter, so racing spawns from any number of processes
can never oversubscribe, and a slot frees itself when its holder dies. A task that finds
every slot taken is *queued*: its supervisor tries them again every ``policy.SLOT_POLL``
from the clock thread (a non-blocking ``flock`` per file; no thread per waiter).

Queued tasks are not started in any guaranteed order: whichever queued supervisor polls
first after a slot frees takes it.
"""

from __future__ import annotations

import errno
import os

from bgtask import _paths
from bgtask._supervisor.launch import StartError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from bgtask._supervisor.boot import Startup


def slot_path(pool: str, uid: int, name: str, index: int) -> str:
    """The lock file of slot *index* of *name* for user *uid*."""
    return os.path.join(pool, f"slot-{uid}-{name}-{index}.lock")


def take_slot(pool: str, name: str, n: int) -> int:
    """Take a free slot of *name* without waiting; returns the fd that holds it.

    :raises StartError: ``"locked"`` when all *n* are taken; ``"lockfile"`` when a slot
        file cannot be used (another user's, or the pool is not writable).
    """
    import fcntl

    uid = os.geteuid()
    # Start at a different slot per supervisor: n racing spawns then mostly try n
    # different files first, instead of all queueing up behind slot 0.
    first = os.getpid() % n
    for k in range(n):
        path = slot_path(pool, uid, name, (first + k) % n)
        try:
            fd = _paths.open_private(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StartError("lockfile", exc.errno, exc.strerror, path) from None
        try:
            if not _paths.is_mine(os.fstat(fd)):
                raise StartError("lockfile", errno.EACCES, "slot file belongs to another user", path)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        return fd
    raise StartError("locked", errno.EAGAIN, f"all {n} slots of {name!r} are taken", name)


def hold(startup: Startup) -> bool:
    """Take a slot for the next run of *startup*'s job if its spec names one and it
    holds none; False if every slot is taken (``startup.slot_fd`` then stays -1).

    :raises StartError: a slot file cannot be used.
    """
    slot = startup.config.get("slot")
    if not slot or startup.slot_fd >= 0:
        return True
    try:
        startup.slot_fd = take_slot(startup.pool, slot[0], slot[1])
    except StartError as exc:
        if exc.args[0] == "locked":
            return False
        raise
    return True


__all__ = ["hold", "slot_path", "take_slot"]
