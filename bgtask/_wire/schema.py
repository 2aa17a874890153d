"""The shapes of what crosses the wire, typed once for both sides.

* :class:`JobSpec`: what ``spawn`` sends a new supervisor (a ``marshal``-able dict, so
  the supervisor decodes it without importing anything); the operations options of the
  contract travel in it too.
* :class:`TaskInfo` / :class:`StreamInfo` / :class:`Status`: the info dict a supervisor
  answers ``info()`` with (``meta`` values still blobs; the client decodes them).

``TypedDict`` costs the supervisor nothing at run time: this module is only imported
for type checkers on the supervisor's side (``typing`` is not loaded there).
"""

from __future__ import annotations

from typing import Any, TypedDict


class JobSpec(TypedDict, total=False):
    """What a supervisor is asked to run (``_client.spawn`` builds it)."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    meta: dict[str, bytes]
    #: bytes of each output stream kept after they were read (``retain_output``)
    retain: int
    max_buffer: int
    #: ``on_full == "drop"``
    drop: bool
    lock: str | None
    shell: bool
    #: the str given with ``shell=True`` (``argv`` is then ``["/bin/sh", "-c", command]``)
    command: str | None
    # -- operations (all optional on the wire; absent means the default) --
    timeout: float | None
    grace: float
    restart: str
    restart_delay: float
    max_restarts: int | None
    on_exit: list[str] | None
    slot: tuple[str, int] | None
    limits: dict[str, int] | None


class StreamInfo(TypedDict, total=False):
    start: int
    limit: int
    eof: bool
    cursor: int
    unread: int
    dropped: int
    retain_output: int
    max_buffer: int
    closed: bool


class Status(TypedDict, total=False):
    running: bool
    paused: bool
    exit_code: int | None
    signal: int | None
    returncode: int | None
    timed_out: bool
    #: the ``spawn(limits=)`` name that ended the run, when the signal tells ("cpu", "fsize")
    limit: str | None


class TaskInfo(TypedDict, total=False):
    pid: int
    child_pid: int | None
    argv: list[str]
    command: str | None
    shell: bool
    cwd: str
    meta: dict[str, Any]
    owner: int
    lock: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    restarts: int
    #: a ``JobState`` value: queued, running, paused, stopping, backoff, exited (and,
    #: only from ``search()``, "unresponsive")
    state: str
    status: Status
    streams: dict[str, StreamInfo]
    protocol: int
    # -- operations (API.md, "Operations") --
    grace: float
    timeout: float | None
    restart: str
    restart_delay: float
    max_restarts: int | None
    #: automatic restarts so far (``restarts`` counts them and restart()'s)
    auto_restarts: int
    #: epoch time of the pending automatic restart (state "backoff"), else None
    next_restart_at: float | None
    on_exit: list[str] | None
    slot: list[Any] | None
    limits: dict[str, int] | None
    #: why a queued or automatic start failed (the task then exited), else None
    start_error: str | None


__all__ = ["JobSpec", "Status", "StreamInfo", "TaskInfo"]
