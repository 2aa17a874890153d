"""The supervisor's threads, reserved before it reports "started".

``spawn()`` must return only a task that answers. The supervisor needs about five
threads to serve (a reaper, two pumps, the stdin feeder, the accepter), and a thread can
fail to start (``RLIMIT_NPROC`` counts threads; the memory for a stack may be missing).
They used to be created after the report, so a spawn that had "succeeded" left a task
that died a moment later. Importing ``threading`` and the server before the report
would triple the time ``spawn()`` takes (~25 ms of imports), so the boot *reserves*
them instead: :func:`reserve` starts bare ``_thread`` threads that wait for work, and a
failure there is reported to the spawner as a ``SpawnError``. Later, :func:`start`
hands a target to a reserved thread, and creates a new ``threading.Thread`` only when
none is left (restarts, the clock, connections).

Light on purpose (``_thread``, ``errno``): the boot imports it before it reports.
"""

from __future__ import annotations

import _thread
import errno

from bgtask._supervisor.launch import StartError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: threads the supervisor needs to serve: the reaper and the pump (both output pipes;
#: ``io.py``). The main thread accepts connections, and the stdin feeder starts on the
#: first write (most jobs never get stdin): a reserved thread nobody uses would idle
#: for the task's whole life.
SERVING_THREADS = 2

# Each reserved thread waits on its own lock; its "box" receives (target, args).
_reserved: list[tuple[Any, list[Any]]] = []


def _worker(lock: Any, box: list[Any]) -> None:
    lock.acquire()  # released by start() once the box holds the work
    target, args = box
    box.clear()
    target(*args)


def reserve(n: int = SERVING_THREADS) -> None:
    """Have *n* threads waiting for :func:`start` to give them work (a fork server's
    spare reserves them before it is asked for: only the missing ones start here).

    :raises StartError: a thread could not be started (the process is about to exit:
        the reserved ones just wait).
    """
    for _ in range(n - len(_reserved)):
        lock = _thread.allocate_lock()
        lock.acquire()
        box: list[Any] = []
        try:
            _thread.start_new_thread(_worker, (lock, box))
        except RuntimeError as exc:
            raise StartError("threads", errno.EAGAIN,
                             f"the supervisor cannot start its threads ({exc})", None) from None
        _reserved.append((lock, box))


def start(target: Callable[..., object], name: str, *args: object) -> None:
    """Run ``target(*args)`` in a thread: a reserved one if any is left.

    :raises RuntimeError: no reserved thread is left and a new one cannot be started.
    """
    if _reserved:
        lock, box = _reserved.pop()
        box[:] = [target, args]
        lock.release()
        return
    import threading

    threading.Thread(target=target, name=name, args=args, daemon=True).start()


__all__ = ["SERVING_THREADS", "reserve", "start"]
