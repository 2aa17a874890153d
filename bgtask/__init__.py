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

    cli.py, web/          the outer layer: the public API below, and _format
    bgtask (this file)    the front door: re-exports _client and _errors
    _client/              runs in the caller: pool, spawn, sweep, task, stream,
                          connection, codec (dill lives here and only here)
    _supervisor/          runs in the supervisor: boot, launch, job, io, buffer,
                          service, server (never imports _client, dill or filelock)
    _format/              presentation of info dicts (reprs, tables, status words)
    _wire/                what both sides agree on: names, framing, handshake, schema,
                          checks, faults (the one map from failures to our errors)
    _errors.py _paths.py _process.py   stdlib only: exceptions, pool files and modes,
                          /proc facts and signals
"""

from __future__ import annotations

from bgtask._client.aiopool import AsyncTaskPool
from bgtask._client.aiostream import AsyncStream
from bgtask._client.aiotask import AsyncTask, current_async
from bgtask._client.codec import UndecodableValue
from bgtask._client.pool import TaskPool, default_pool, search, spawn
from bgtask._client.stream import Stream
from bgtask._client.task import Task, current
from bgtask._client.waiting import wait
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

# Public objects say bgtask.X in reprs and tracebacks, not bgtask._private.X.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("bgtask._"):
        _obj.__module__ = "bgtask"
del _name, _obj
