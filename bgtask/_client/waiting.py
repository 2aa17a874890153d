"""``bgtask.wait(tasks, timeout=None, return_when="ALL_COMPLETED")``: waiting on many tasks
at once, modelled on :func:`concurrent.futures.wait`.

No thread per task: every task's ``wait()`` is one awaitable on the asyncio client's
non-blocking sockets (``AsyncTask.wait``), and one event loop waits for all of them --
in the calling thread, or, when that thread already runs a loop, in one helper thread.
A ``wait()`` cancelled because the answer is in leaves its job alone (API.md).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bgtask._errors import BgTaskError

if TYPE_CHECKING:
    from bgtask._client.task import Task

ALL_COMPLETED = "ALL_COMPLETED"
FIRST_COMPLETED = "FIRST_COMPLETED"
#: a task counts as failed when its returncode is not 0, or it vanished
FIRST_EXCEPTION = "FIRST_EXCEPTION"
_RETURN_WHEN = (ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION)


def wait(tasks: Iterable[Task], timeout: float | None = None,
         return_when: str = ALL_COMPLETED) -> tuple[set[Task], set[Task]]:
    """Wait until *tasks* have exited (``state == "exited"``: a task waiting for an
    automatic restart has not), like :func:`concurrent.futures.wait`.

    :param timeout: seconds at most (``None``: no limit); then whatever is not done yet
        is in the second set.
    :param return_when: ``"ALL_COMPLETED"``, ``"FIRST_COMPLETED"`` or
        ``"FIRST_EXCEPTION"`` (the first task with a non-zero returncode, or gone).
    :returns: ``(done, not_done)``, sets of the given tasks. A task that no longer
        exists is done.
    :raises TypeError: *tasks* holds something that is not a ``Task``.
    :raises ValueError: an unknown *return_when*, or a negative or NaN *timeout*.
    """
    from bgtask._client.task import Task

    todo = set(tasks)
    for t in todo:
        if not isinstance(t, Task):
            raise TypeError(f"wait() takes Task objects, not {type(t).__name__}")
    if return_when not in _RETURN_WHEN:
        raise ValueError(f"return_when must be one of {', '.join(_RETURN_WHEN)}, not {return_when!r}")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("timeout must be a number of seconds or None")
        if math.isnan(timeout) or timeout < 0:
            raise ValueError(f"timeout must be >= 0, not {timeout}")
    if not todo:
        return set(), set()
    coro = _wait_all(todo, timeout, return_when)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from a coroutine (a blocking call in a loop): one helper thread, not the
    # caller's loop, which this call blocks anyway.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _wait_all(tasks: set[Task], timeout: float | None,
                    return_when: str) -> tuple[set[Task], set[Task]]:
    from bgtask._client.aiotask import AsyncTask

    deadline = None if timeout is None else time.monotonic() + timeout
    handles = {t: AsyncTask(t.pid, t.pool) for t in tasks}
    pending: dict[asyncio.Future[Any], Task] = {
        asyncio.ensure_future(handles[t].wait()): t for t in tasks}
    done: set[Task] = set()
    try:
        while pending:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            finished, _ = await asyncio.wait(pending, timeout=remaining,
                                             return_when=asyncio.FIRST_COMPLETED)
            if not finished:
                break  # the timeout
            failed = False
            for fut in finished:
                task = pending.pop(fut)
                done.add(task)
                try:
                    code = fut.result()
                except BgTaskError:
                    failed = True  # it vanished (or cannot be asked): done, and a failure
                    continue
                failed = failed or code != 0
            if return_when == FIRST_COMPLETED or (return_when == FIRST_EXCEPTION and failed):
                break
    finally:
        for fut in pending:
            fut.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for handle in handles.values():
            handle.disconnect()
    return done, set(tasks) - done


__all__ = ["ALL_COMPLETED", "FIRST_COMPLETED", "FIRST_EXCEPTION", "wait"]
