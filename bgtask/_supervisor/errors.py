"""Who caused a failure inside the supervisor, decided where it is raised.

The server sends an exception back as itself (``#ERROR``, re-raised in the caller) only
when the *caller* caused it; anything else is the supervisor's own failure and travels
as text (``#TRACEBACK``), which the client raises as :class:`~bgtask.RemoteError`. So a
``KeyError`` from a bug here never looks like the caller's mistake.

* :data:`CALLER_CHECKS` -- ``with CALLER_CHECKS:`` around argument validation tags the
  ``TypeError``/``ValueError`` it raises as the caller's;
* :func:`caller_error` -- tags one exception raised on purpose (a full stdin's
  ``TimeoutError``);
* :func:`is_caller_error` / :func:`untag` -- the server's side of it;
* :class:`InternalError` -- "this cannot happen" (an impossible transition): our bug.

Our own :class:`~bgtask.BgTaskError` subclasses are always raised on purpose, so they
need no tag.
"""

from __future__ import annotations

from bgtask._errors import BgTaskError

#: the attribute that marks an exception as the caller's; removed before it is sent.
_TAG = "_bgtask_by_caller"


class InternalError(Exception):
    """The supervisor reached a state its own rules forbid: a bug, never the caller's."""


def caller_error(exc: BaseException) -> BaseException:
    """Mark *exc* as caused by the caller's request; returns it, for ``raise``."""
    setattr(exc, _TAG, True)
    return exc


def is_caller_error(exc: BaseException) -> bool:
    """Did the caller cause *exc* (so it goes back as itself)?"""
    return isinstance(exc, BgTaskError) or getattr(exc, _TAG, False)


def untag(exc: BaseException) -> BaseException:
    """*exc* without the mark, as it is pickled to the client."""
    exc.__dict__.pop(_TAG, None)
    return exc


class _CallerChecks:
    """``with CALLER_CHECKS:``: a ``TypeError``/``ValueError`` raised inside is the
    caller's (argument checks only: nothing else belongs in the block)."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, (TypeError, ValueError)):
            caller_error(exc)  # and it propagates: None never swallows


CALLER_CHECKS = _CallerChecks()

__all__ = ["CALLER_CHECKS", "InternalError", "caller_error", "is_caller_error", "untag"]
