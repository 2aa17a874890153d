"""The exception tree of bgtask.

Every error bgtask raises on purpose is one of these, or a builtin that names a bad
argument (``ValueError``/``TypeError``) or a timeout (``TimeoutError``)::

    BgTaskError
     +-- TaskNotFoundError (also LookupError)      no live supervisor with that pid
     +-- TaskUnresponsiveError (also TimeoutError) the supervisor exists but does not
     |                                             answer (stopped, hung)
     +-- HostUnreachableError (also ConnectionError)  a remote pool's host cannot be reached
     +-- AccessDeniedError (also PermissionError)  the task belongs to someone else
     +-- SpawnError                                the job could not be started
     |    +-- TaskLockedError                      the spawn(lock=...) lock is held
     +-- OutputGoneError (also LookupError)        that range is no longer held
     +-- StreamClosedError                         writing to a closed stdin / ended job
     +-- RemoteError                               the supervisor failed a call

The errors are named by who caused the failure: the caller (builtins), the task's
owner or the pool (``AccessDeniedError``), the job (``SpawnError``), the supervisor
(``TaskNotFoundError``, ``TaskUnresponsiveError``, ``RemoteError``), the network
(``HostUnreachableError``).

They cross the supervisor's socket as pickles, so each one keeps its extra attributes
through a pickle round trip (:meth:`BgTaskError.__reduce__`). This module imports
nothing but the standard library core: the supervisor imports it too.
"""

from __future__ import annotations

# The supervisor imports this module: typing is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _rebuild(cls: type[BgTaskError], args: tuple[Any, ...], attrs: dict[str, Any]) -> BgTaskError:
    # Rebuilding without calling __init__ keeps subclasses with other signatures (and
    # OSError's errno/strerror argument parsing) out of the way.
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(attrs)
    return err


class BgTaskError(Exception):
    """Base class of every error bgtask raises on purpose."""

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class TaskNotFoundError(BgTaskError, LookupError):
    """No live supervisor has that pid, or it vanished during the call.

    :ivar pid: the task id that was looked for (or ``None``).
    """

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class TaskUnresponsiveError(BgTaskError, TimeoutError):
    """The supervisor exists but does not answer: it is stopped (``SIGSTOP``, a debugger)
    or hung. Unlike :class:`TaskNotFoundError` it is no proof of death: the task may
    answer later.

    :ivar pid: the task id (or ``None``).
    :ivar since: when the unanswered wait began (``time.time()``; or ``None``).
    """

    def __init__(self, message: str, pid: int | None = None, since: float | None = None) -> None:
        BgTaskError.__init__(self, message)
        self.pid = pid
        self.since = since

    def __str__(self) -> str:  # TimeoutError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class HostUnreachableError(BgTaskError, ConnectionError):
    """The host of a remote pool cannot be reached (ssh failed, the network is down).

    :ivar host: the host (or ``None``).
    """

    def __init__(self, message: str, host: str | None = None) -> None:
        BgTaskError.__init__(self, message)
        self.host = host

    def __str__(self) -> str:  # ConnectionError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class AccessDeniedError(BgTaskError, PermissionError):
    """The task (or a file in the pool) belongs to another user.

    :ivar pid: the task id (or ``None``); :ivar owner: the uid that owns it (or ``None``).
    """

    def __init__(self, message: str, pid: int | None = None, owner: int | None = None) -> None:
        BgTaskError.__init__(self, message)
        self.pid = pid
        self.owner = owner

    def __str__(self) -> str:  # PermissionError would format (errno, strerror)
        return str(self.args[0]) if self.args else ""


class SpawnError(BgTaskError):
    """The job could not be started; the message says why.

    :ivar errno: the ``errno`` of the failing system call, when there was one.
    :ivar filename: the program or directory that failed, when known.
    """

    def __init__(self, message: str, errno: int | None = None, filename: str | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.filename = filename


class TaskLockedError(SpawnError):
    """The lock named in ``spawn(lock=...)`` is held by another live task.

    :ivar lock: the lock name.
    """

    def __init__(self, message: str, lock: str | None = None) -> None:
        super().__init__(message)
        self.lock = lock


class OutputGoneError(BgTaskError, LookupError):
    """The requested range is no longer held by the supervisor.

    :ivar start: where the stream now begins (its first held offset).
    """

    def __init__(self, message: str, start: int = 0) -> None:
        super().__init__(message)
        self.start = start


class StreamClosedError(BgTaskError):
    """Writing to a stdin that was closed, or to a job that has ended."""


class RemoteError(BgTaskError):
    """The supervisor failed a call in an unexpected way.

    :ivar text: the supervisor's own account (usually a formatted traceback).
    """

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


__all__ = [
    "AccessDeniedError",
    "BgTaskError",
    "HostUnreachableError",
    "OutputGoneError",
    "RemoteError",
    "SpawnError",
    "StreamClosedError",
    "TaskLockedError",
    "TaskNotFoundError",
    "TaskUnresponsiveError",
]
