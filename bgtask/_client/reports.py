"""A starting supervisor's reports: reading them, and what they mean for ``spawn()``.

A supervisor (``_supervisor/boot.py``), or the fork server (``_supervisor/template.py``),
writes length-prefixed marshal reports to a pipe or socket: ``("pid", n)`` as soon as it
has forked, then one final report -- ``("ok", pid, job_pid)`` once the job runs, or
``("error", kind, ...)``.

* :func:`read_reports` -- yields them until EOF or a deadline (poll(), any fd number);
* :func:`collect` -- the pid and the final report (``spawn.start_supervisor``);
* :func:`outcome` -- the final report as ``start_supervisor``'s answer: the pid, None for
  a name collision, or the exception (``_wire.faults.start_error_to_exception``, the one
  map from a supervisor's reason to our errors). No report at all: the half-started
  supervisor is swept (``sweep.py``) and the caller gets a :class:`SpawnError`.
"""

from __future__ import annotations

import marshal
import os
import select
import time
from collections.abc import Iterator
from typing import Any

from bgtask._errors import SpawnError
from bgtask._wire.faults import start_error_to_exception


def collect(fd: int, timeout: float, first: float | None = None) -> tuple[int | None, tuple[Any, ...] | None]:
    """The reported pid (None: none yet) and the final report (None: none came within
    *timeout* seconds, or no report at all within *first* seconds)."""
    pid = None
    if first is not None and not readable(fd, first):
        return None, None
    for msg in read_reports(fd, timeout):
        if msg[0] == "pid":
            pid = msg[1]
        else:
            return pid, msg
    return pid, None


def outcome(pool: str, pid: int | None, final: tuple[Any, ...] | None, err: bytes) -> int | None:
    """What ``spawn.start_supervisor`` returns or raises for these reports (*err*: what
    the supervisor said on stderr, if it died without a report).

    :raises SpawnError: it could not start the job (also ``TaskLockedError``, see
        ``_wire.faults``).
    """
    if final is not None and final[0] == "ok":
        return int(final[1])
    if final is not None:
        if final[1] == "collision":
            return None
        raise start_error_to_exception(final[1:])
    # No report: the supervisor died or hung while starting. Leave nothing behind.
    if pid is not None:
        from bgtask._client.sweep import sweep

        sweep(pool, pid, force_if_silent=True)
    text = err.decode(errors="replace").strip()
    raise SpawnError("cannot start the job: the supervisor " +
                     (f"failed: {text.splitlines()[-1]}" if text else "did not report in time"))


def read_reports(fd: int, timeout: float) -> Iterator[Any]:
    """Yield the supervisor's length-prefixed marshal reports until EOF or *timeout*."""
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            n = int.from_bytes(buf[:4], "big")
            yield marshal.loads(buf[4 : 4 + n])
            buf = buf[4 + n :]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if not readable(fd, remaining):
            return
        try:
            part = os.read(fd, 65536)
        except ConnectionResetError:
            return  # the fork server died with our request unread: nothing was started
        if not part:
            return
        buf += part


def read_stderr(fd: int) -> bytes:
    """What a supervisor that died without a report said (waits at most 1 s for it)."""
    return os.read(fd, 65536) if readable(fd, 1.0) else b""


def readable(fd: int, timeout: float) -> bool:
    """Wait up to *timeout* s until *fd* is readable (or at EOF). poll(), not select():
    select() raises ValueError for an fd above 1023, and a client following hundreds of
    tasks has that many open."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000) + 1)))


__all__ = ["collect", "outcome", "read_reports", "read_stderr", "readable"]
