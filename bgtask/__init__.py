"""bgtask: background jobs that outlive the process that started them.

Each job gets its own small supervisor process (no central daemon) that holds its
output, meta and messages until someone reads them, reachable from any process of the
same user through a Unix socket in a pool directory::

    import bgtask
    task = bgtask.spawn(["make", "-j4"], meta={"name": "build"})
    ...
    task = bgtask.Task(pid)                 # from any other process
    print(task.stream("stdout").read())

The layers (imports flow downwards only; ``tests/test_layers.py`` enforces it)::

    cli.py _cli_*.py      the outer layer: the public API below, and _format;
    web/ _bridge.py       web/ is the ASGI view, _bridge the far side of an ssh pool
    bgtask (this file)    the front door: re-exports _client and _errors (lazily)
    _client/              runs in the caller: pool, spawn, reports, sweep, backend
                          (local, ssh*), cache, connection, requests, task, stream,
                          aio* (asyncio twins), waiting, template, codec (dill lives
                          here and only here)
    _supervisor/          runs in the supervisor (never imports _client, dill or
                          filelock): boot, launch, runner; states (the one transition
                          table), job, clock, policy, slots, limits, hooks, usage; io
                          (output is buffered in buffer.py through outputs.py), stdin;
                          service, accept, server, main_loop, record, template
    _format/              presentation of info dicts (reprs, tables, status words)
    _wire/                what both sides agree on: names, framing, handshake, schema,
                          checks, faults (the one map from failures to our errors),
                          forkserver
    _errors.py _paths.py _process.py   stdlib only: exceptions, pool files and modes,
                          /proc facts and signals
"""

from __future__ import annotations

import sys as _sys

from bgtask._errors import (
    AccessDeniedError,
    BgTaskError,
    HostUnreachableError,
    OutputGoneError,
    RemoteError,
    SpawnError,
    StreamClosedError,
    TaskLockedError,
    TaskNotFoundError,
    TaskUnresponsiveError,
)

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "AsyncStream",
    "AsyncTask",
    "AsyncTaskPool",
    "BgTaskError",
    "HostUnreachableError",
    "OutputGoneError",
    "RemoteError",
    "SpawnError",
    "Stream",
    "StreamClosedError",
    "Task",
    "TaskLockedError",
    "TaskNotFoundError",
    "TaskPool",
    "TaskUnresponsiveError",
    "UndecodableValue",
    "__version__",
    "current",
    "current_async",
    "default_pool",
    "search",
    "spawn",
    "wait",
]

# ``typing`` itself costs ~2 ms: mypy treats any name TYPE_CHECKING as the real one.
TYPE_CHECKING = False
if TYPE_CHECKING:  # what the lazy names below are, for mypy and editors
    from typing import Any

    from bgtask._client.aiopool import AsyncTaskPool
    from bgtask._client.aiostream import AsyncStream
    from bgtask._client.aiotask import AsyncTask, current_async
    from bgtask._client.codec import UndecodableValue
    from bgtask._client.pool import TaskPool, default_pool, search, spawn
    from bgtask._client.stream import Stream
    from bgtask._client.task import Task, current
    from bgtask._client.waiting import wait

#: names imported on first use (PEP 562), and their module: ``bgtask ls`` on an empty
#: pool must not pay for asyncio, multiprocessing and dill (~50 ms of a ~70 ms run).
_LAZY = {
    "AsyncStream": "bgtask._client.aiostream",
    "AsyncTask": "bgtask._client.aiotask",
    "AsyncTaskPool": "bgtask._client.aiopool",
    "Stream": "bgtask._client.stream",
    "Task": "bgtask._client.task",
    "TaskPool": "bgtask._client.pool",
    "UndecodableValue": "bgtask._client.codec",
    "current": "bgtask._client.task",
    "current_async": "bgtask._client.aiotask",
    "default_pool": "bgtask._client.pool",
    "search": "bgtask._client.pool",
    "spawn": "bgtask._client.pool",
    "wait": "bgtask._client.waiting",
}


def _public(obj: Any) -> Any:
    """Public objects say bgtask.X in reprs and tracebacks, not bgtask._private.X."""
    if getattr(obj, "__module__", "").startswith("bgtask._"):
        obj.__module__ = "bgtask"
    return obj


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bgtask' has no attribute {name!r}")
    __import__(module)
    # Every lazy name whose module is loaded now (a module imports others: Task comes
    # with AsyncTask) becomes a plain attribute, so reprs say bgtask.X from here on
    # and this function is not called for it again.
    for other, where in _LAZY.items():
        loaded = _sys.modules.get(where)
        if loaded is not None and other not in globals():
            globals()[other] = _public(getattr(loaded, other))
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


for _name in __all__:
    if _name not in _LAZY:
        _public(globals()[_name])
del _name, TYPE_CHECKING
