"""Argument checks shared by the client (before anything is sent) and the supervisor
(before anything is done), so both sides agree on what a valid argument is."""

from __future__ import annotations

import threading


def check_timeout(timeout: object) -> None:
    """A timeout is None (no limit) or seconds: a finite number >= 0 that the
    supervisor's waits can take (``Condition.wait`` overflows past
    ``threading.TIMEOUT_MAX``; with NaN a wait loop would spin for ever). Both sides check
    it: the client before anything is sent, the supervisor before anything is done
    (``delete(nan)`` must not TERM the job and then fail).

    :raises TypeError: not a number. :raises ValueError: negative, NaN, infinite or huge.
    """
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not 0 <= timeout <= threading.TIMEOUT_MAX:
        raise ValueError(f"timeout must be a finite number of seconds >= 0 (or None: no limit), "
                         f"not {timeout!r}")

__all__ = ["check_timeout"]
