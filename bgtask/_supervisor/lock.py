"""The supervisor's one lock, and the generation count that keeps ``info()`` cheap.

Every object of the supervisor (job, outputs, stdin) shares this one lock; each event
has its own ``threading.Condition`` on it, so that a chunk of output wakes its readers
and not every waiter in the process.
"""

from __future__ import annotations

import threading


class StateLock:
    """The state's one lock. Each time it is taken, :attr:`gen` grows.

    Nothing a client can see changes without this lock, so a reply encoded while
    :attr:`gen` had a value is still exact while it has that value: the info-reply cache
    of ``server.py``, which takes :attr:`raw` itself so as not to count. Every other
    taking counts, reads too: a needless rebuild is cheap, a stale answer is a bug.
    Works under ``threading.Condition`` like a plain lock.
    """

    __slots__ = ("gen", "raw")

    def __init__(self) -> None:
        self.raw = threading.Lock()
        self.gen = 0

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self.raw.acquire(blocking, timeout):
            self.gen += 1  # under the lock: no update is lost
            return True
        return False

    def release(self) -> None:
        self.raw.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.raw.release()

    def condition(self) -> threading.Condition:
        """A new condition on this lock (one per event)."""
        return threading.Condition(self)  # type: ignore[arg-type]


__all__ = ["StateLock"]
