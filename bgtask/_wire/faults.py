"""The one place where failures become bgtask's exceptions.

* a start report (what the supervisor sends its spawner when the job cannot start) ->
  :class:`~bgtask.SpawnError` / :class:`~bgtask.TaskLockedError`
  (:func:`start_error_to_exception`);
* a supervisor proven dead (its socket refuses connections) ->
  :class:`SupervisorDeadError`, a private :class:`~bgtask.TaskNotFoundError` that tells the
  client it may sweep the task's files.
"""

from __future__ import annotations

from bgtask._errors import SpawnError, TaskLockedError, TaskNotFoundError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SupervisorDeadError(TaskNotFoundError):
    """The socket exists but nobody listens: the supervisor is proven dead."""


def start_error_to_exception(args: tuple[Any, ...]) -> SpawnError:
    """Turn a :class:`StartError` report into the exception ``spawn`` raises."""
    kind, err, text, filename = (tuple(args) + (None, None, None, None))[:4]
    if kind == "locked":
        return TaskLockedError(f"cannot start the job: lock {filename!r} is held by another task",
                               lock=filename)
    if kind == "cwd":
        msg = f"cannot start the job: bad working directory {filename!r}: {text}"
    elif kind == "exec":
        msg = f"cannot start the job: cannot execute {filename!r}: {text}"
    elif kind == "lockfile":
        msg = f"cannot start the job: cannot use lock file {filename!r}: {text}"
    elif kind == "collision":
        msg = f"cannot start the job: the task's file names are taken ({text})"
    elif kind == "pool":
        msg = f"cannot start the job: cannot create the task's files in pool {filename!r}: {text}"
    else:
        msg = f"cannot start the job: the supervisor failed: {text}"
    return SpawnError(msg, errno=err or None, filename=filename)


__all__ = ["SupervisorDeadError", "start_error_to_exception"]
