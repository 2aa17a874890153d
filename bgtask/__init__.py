"""bgtask: background jobs that outlive the process that started them.

Each job gets its own small supervisor process (no central daemon) that holds its
output, meta and messages until someone reads them, reachable from any process of the
same user through a Unix socket in a pool directory::

    import bgtask
    task = bgtask.spawn(["make", "-j4"], meta={"name": "build"})
    ...
    task = bgtask.Task(pid)                 # from any other process
    print(task.stream("stdout").read())
"""

from __future__ import annotations

from bgtask._client.codec import UndecodableValue
from bgtask._client.pool import TaskPool, default_pool, search, spawn
from bgtask._client.stream import Stream
from bgtask._client.task import Task, current
from bgtask._errors import (
    AccessDeniedError,
    BgTaskError,
    OutputGoneError,
    RemoteError,
    SpawnError,
    StreamClosedError,
    TaskLockedError,
    TaskNotFoundError,
)

__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "BgTaskError",
    "OutputGoneError",
    "RemoteError",
    "SpawnError",
    "Stream",
    "StreamClosedError",
    "Task",
    "TaskLockedError",
    "TaskNotFoundError",
    "TaskPool",
    "UndecodableValue",
    "__version__",
    "current",
    "default_pool",
    "search",
    "spawn",
]

# Public objects say bgtask.X in reprs and tracebacks, not bgtask._private.X.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("bgtask._"):
        _obj.__module__ = "bgtask"
del _name, _obj
