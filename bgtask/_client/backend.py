"""The pool backend seam: everything ``Task`` and ``TaskPool`` need from "where the pool
lives", and nothing else.

``Task`` and ``TaskPool`` never touch a pool directory, /proc or a local interpreter
themselves: they ask their backend. :class:`~bgtask._client.local.LocalBackend`
implements it with files, /proc and ``sys.executable``; an ssh backend will implement
it on the far side of one multiplexed connection. So the methods are coarse (one
round trip each: a whole spawn, a whole sweep, a whole wait), take and return plain
values (no file descriptors, no local paths a caller would open), and a connection is
an object the client owns (:class:`~bgtask._wire.framing.Connection` or one with its
methods), however its bytes travel.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bgtask._client.sweep import SweepReport
    from bgtask._wire.framing import Connection
    from bgtask._wire.schema import JobSpec


class PoolBackend(Protocol):
    """Where a pool lives, and the operations that depend on it."""

    def __str__(self) -> str:
        """The pool as the user names it: a directory, or later ``ssh://host/dir``."""
        ...

    def check(self) -> None:
        """Refuse a pool that cannot be one (called by ``TaskPool()``; creates nothing).

        :raises NotADirectoryError: the path exists and is not a directory.
        :raises AccessDeniedError: a per-user directory belongs to someone else.
        """
        ...

    def pids(self, sweep: bool = True) -> list[int]:
        """The caller's task ids in the pool, sorted; a pool that does not exist has
        none. With *sweep*, token files of supervisors that died while starting are
        swept first."""
        ...

    def connect(self, pid: int) -> Connection:
        """A new authenticated connection to the supervisor of task *pid*.

        A supervisor proven dead is swept here (its orphaned job stopped, its files
        removed) and the error says so.

        :raises TaskNotFoundError: no live supervisor with that pid.
        :raises AccessDeniedError: the task belongs to someone else.
        """
        ...

    def records(self, pids: list[int]) -> dict[int, dict[str, Any]]:
        """The raw info dicts (meta as blobs) of those of *pids* whose status record
        can be trusted (``_client/records.py``); the others are asked for by a
        connection. A backend without records returns ``{}``."""
        ...

    def sweep(self, pid: int) -> SweepReport | None:
        """Sweep task *pid* if its supervisor is proven dead; None if it is not."""
        ...

    def unresponsive_info(self, pid: int, since: float | None) -> dict[str, Any]:
        """The info placeholder ``search()`` lists for task *pid* whose supervisor does
        not answer (stopped, hung): ``state`` ``"unresponsive"``, ``since`` (when the
        unanswered wait began), and what can be known without the supervisor (``pid``,
        ``owner``, ``child_pid`` when its job is alive; ``meta`` empty). It has every key
        of an info dict so that ``pattern`` and ``where`` run on it as on any other."""
        ...

    def job_env(self, updates: Mapping[str, str | None]) -> dict[str, str]:
        """The environment a new job gets: the backend's base environment (the caller's
        locally; the remote login's over ssh) with *updates* applied (None removes),
        and ``BGTASK_POOL`` naming the pool where the job runs."""
        ...

    def default_cwd(self) -> str:
        """The working directory of a job spawned with ``cwd=None``.

        :raises SpawnError: there is none (the caller's directory was deleted).
        """
        ...

    def spawn(self, spec: JobSpec) -> int:
        """Start a supervisor for *spec* (creating the pool directory if needed); return
        its pid once the job runs.

        :raises SpawnError: the job could not be started; nothing is left behind.
        :raises TaskLockedError: the spec's lock is held.
        """
        ...

    def start_time(self, pid: int) -> int | None:
        """An identity of process *pid* that a reused pid does not share (None: gone)."""
        ...

    def wait_gone(self, pid: int, start: int | None, timeout: float) -> bool:
        """Wait up to *timeout* s until process *pid* (with identity *start*) has exited;
        True if it has."""
        ...


__all__ = ["PoolBackend"]
