"""The one place where failures become bgtask's exceptions.

Every transport failure of a client, while connecting or during a call, goes through
:func:`map_fault`, in the spirit of httpx's ``map_httpcore_exceptions``: one table, read
top to bottom, first match wins.

==========================================  ===============================================
what happened                               what the caller gets
==========================================  ===============================================
one of ours, already mapped                 itself
connect: the socket refuses connections     :class:`SupervisorDeadError` (proven dead:
                                            sweepable), a private ``TaskNotFoundError``
connect: the socket file is gone            ``TaskNotFoundError`` ("gone")
connect: not allowed to connect             ``AccessDeniedError``
the peer is stopped (:class:`Stopped`)      ``TaskUnresponsiveError`` saying so, since when,
                                            and how to resume it
the peer is silent past its deadline        ``TaskUnresponsiveError`` (stopped, hung)
(``TimeoutError``, ``EAGAIN``)
the authkey is refused either way           ``TaskNotFoundError`` (a different supervisor)
the two ends' protocol versions differ      :class:`ProtocolMismatchError`, a
                                            ``RemoteError`` naming both versions
the peer breaks the protocol                connect: ``TaskNotFoundError`` (not a
                                            supervisor); call: ``RemoteError``
EOF, reset, broken pipe, a closed socket    ``TaskNotFoundError`` ("vanished")
any other ``OSError``                       connect: ``TaskNotFoundError``; call: itself
==========================================  ===============================================

Replies: ``#RETURN`` is the result, ``#ERROR`` an exception object raised as is,
``#TRACEBACK`` (and anything else) a :class:`~bgtask.RemoteError` (:func:`reply_result`).
Start reports (what the supervisor sends its spawner when the job cannot start) become
:class:`~bgtask.SpawnError` / :class:`~bgtask.TaskLockedError`
(:func:`start_error_to_exception`).
"""

from __future__ import annotations

import errno as _errno

from bgtask._errors import (
    AccessDeniedError,
    BgTaskError,
    RemoteError,
    SpawnError,
    TaskLockedError,
    TaskNotFoundError,
    TaskUnresponsiveError,
)
from bgtask._wire.framing import ProtocolError
from bgtask._wire.handshake import AuthenticationFailed, VersionMismatch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: errnos of a connection whose peer is gone (besides ConnectionError's own).
_GONE_ERRNOS = frozenset({_errno.EBADF, _errno.ENOTCONN, _errno.EPIPE, _errno.ECONNRESET})


class SupervisorDeadError(TaskNotFoundError):
    """The socket exists but nobody listens: the supervisor is proven dead."""


class Stopped(TimeoutError):
    """The supervisor is stopped (``kill -STOP``, a debugger): no deadline would help."""


class ProtocolMismatchError(RemoteError):
    """The client and the supervisor speak different protocol versions.

    :ivar ours: the client's version.
    :ivar theirs: the supervisor's.
    """

    def __init__(self, message: str, ours: int = 0, theirs: object = None) -> None:
        super().__init__(message, message)
        self.ours = ours
        self.theirs = theirs


def _since_text(since: float | None) -> str:
    if since is None:
        return ""
    import time

    return (f" since {time.strftime('%H:%M:%S', time.localtime(since))}"
            f" ({max(0.0, time.time() - since):.1f} s)")


def map_fault(exc: BaseException, pid: int, doing: str, connecting: bool,
              since: float | None = None) -> BaseException:
    """The exception to raise instead of *exc*, a failure while *doing* something with
    task *pid* (the table in the module docstring).

    :param doing: what was being done, for the message ("connecting", "info()").
    :param connecting: the connection was not yet established (no call was sent).
    :param since: when the unanswered wait began (``time.time()``), for a timeout.
    """
    if isinstance(exc, BgTaskError):
        return exc
    if connecting and isinstance(exc, ConnectionRefusedError):
        return SupervisorDeadError(f"the supervisor of task {pid} is dead "
                                   "(its socket refuses connections)", pid)
    if connecting and isinstance(exc, FileNotFoundError):
        return TaskNotFoundError(f"task {pid} is gone", pid)
    if connecting and isinstance(exc, PermissionError):
        return AccessDeniedError(f"task {pid}: cannot connect: {exc.strerror}", pid)
    if isinstance(exc, Stopped):
        # The user stopped it by hand, most likely: say what it is and how to undo it.
        return TaskUnresponsiveError(f"task {pid} does not answer: its supervisor is stopped "
                                     f"(SIGSTOP or a debugger; kill -CONT {pid} resumes it); "
                                     f"waited{_since_text(since)}", pid, since)
    if isinstance(exc, (TimeoutError, BlockingIOError)):
        return TaskUnresponsiveError(f"the supervisor of task {pid} exists but does not answer "
                                     f"({doing}){_since_text(since)}: is it stopped or hung?",
                                     pid, since)
    if isinstance(exc, VersionMismatch):
        return ProtocolMismatchError(f"task {pid}: {exc.strerror}", exc.ours, exc.theirs)
    if isinstance(exc, AuthenticationFailed):
        return TaskNotFoundError(f"task {pid}: the socket's owner does not know the task's token "
                                 "(a different supervisor?)", pid)
    if isinstance(exc, ProtocolError):
        if connecting:
            return TaskNotFoundError(f"task {pid}: its socket does not answer like a bgtask "
                                     f"supervisor ({exc.strerror})", pid)
        return RemoteError(f"task {pid}: the supervisor broke the protocol during {doing}: "
                           f"{exc.strerror}", str(exc.strerror))
    if isinstance(exc, (EOFError, ConnectionError)) or (
            isinstance(exc, OSError) and exc.errno in _GONE_ERRNOS):
        return TaskNotFoundError(f"the supervisor of task {pid} vanished during {doing} ({exc!r})", pid)
    if connecting and isinstance(exc, OSError):
        return TaskNotFoundError(f"cannot connect to task {pid}: {exc}", pid)
    return exc


def reply_result(kind: str, result: Any, pid: int, method: str) -> Any:
    """The result of a reply ``(kind, result)`` to *method*, or raise what it reports."""
    if kind == "#RETURN":
        return result
    if kind == "#ERROR" and isinstance(result, BaseException):
        raise result
    text = str(result).strip()
    raise RemoteError(f"task {pid}: {method}() failed in the supervisor: "
                      f"{text.splitlines()[-1] if text else kind}", str(result))


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


__all__ = ["ProtocolMismatchError", "Stopped", "SupervisorDeadError", "map_fault", "reply_result",
           "start_error_to_exception"]
