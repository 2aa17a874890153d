"""The states: what a job and its supervisor can be, and every legal move between them.

* :class:`JobState` -- the job's phase; its values are the wire's ``info()["state"]``.
  :data:`SIGNALLABLE` and :data:`PENDING` replace scattered ``state != "exited"`` tests.
* :data:`TRANSITIONS` -- every legal move of a job, each commented. The table is the
  whole rule: :meth:`~bgtask._supervisor.job.Job._set_phase` (``job.py``), the only
  writer of a job's phase, refuses any other move with an
  :class:`~bgtask._supervisor.errors.InternalError` (a ``RemoteError`` for the client).
* :class:`SupervisorState` -- the supervisor's own life (serving, deleting, exiting),
  which only moves forward (:data:`SUPERVISOR_ORDER`, checked by
  :meth:`~bgtask._supervisor.job.Job.set_supervisor`).

Data only, no behaviour: who moves a job from one state to another, and when, is
``job.py`` (runs, kill, restart, delete, deadlines) and ``policy.py`` (timeouts,
automatic restarts, slots).
"""

from __future__ import annotations

import enum


class JobState(str, enum.Enum):
    """The job's phase; ``.value`` is what ``info()["state"]`` says."""

    # Nothing has run yet. Today only between the supervisor's start and the first run
    # (clients never see it); with ``slot=`` a task waits here for a free slot.
    QUEUED = "queued"
    # A run's process is alive and not stopped.
    RUNNING = "running"
    # The run is stopped (SIGSTOP/SIGTSTP...), by pause() or by anyone else.
    PAUSED = "paused"
    # A stop is under way: TERM was sent, KILL follows after ``grace`` (not used yet:
    # delete() escalates inline; run timeouts will use it).
    STOPPING = "stopping"
    # The run ended and an automatic restart is due at ``next_restart_at`` (not used yet).
    BACKOFF = "backoff"
    # The run ended and nothing starts it again by itself; wait() returns only here.
    EXITED = "exited"


QUEUED, RUNNING, PAUSED = JobState.QUEUED, JobState.RUNNING, JobState.PAUSED
STOPPING, BACKOFF, EXITED = JobState.STOPPING, JobState.BACKOFF, JobState.EXITED
#: a run exists whose process group may be signalled.
SIGNALLABLE = frozenset({RUNNING, PAUSED, STOPPING})
#: no run now, but one will start by itself (delete() cancels it).
PENDING = frozenset({QUEUED, BACKOFF})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    # the first run starts; or (slots, later) a queued task is deleted or killed
    QUEUED: frozenset({RUNNING, EXITED}),
    # stopped by a signal; a stop begins; the run ends (for good, or a restart is due)
    RUNNING: frozenset({PAUSED, STOPPING, EXITED, BACKOFF}),
    # continued; a stop begins (TERM+CONT); the run ends (a KILL needs no CONT)
    PAUSED: frozenset({RUNNING, STOPPING, EXITED, BACKOFF}),
    # the stopped run ends (a timed-out run may still be restarted by policy)
    STOPPING: frozenset({EXITED, BACKOFF}),
    # the automatic restart starts; or it is cancelled (delete, kill, max_restarts)
    BACKOFF: frozenset({RUNNING, EXITED}),
    # restart()
    EXITED: frozenset({RUNNING}),
}


class SupervisorState(str, enum.Enum):
    """The supervisor's own life; it only moves forward."""

    # Answering clients; the job may be restarted.
    SERVING = "serving"
    # delete() (or the loss of our files) claimed the end: no more restarts, and a run
    # that ends takes its process group's stragglers along.
    DELETING = "deleting"
    # The files are removed: the process exits once the delete() reply is out.
    EXITING = "exiting"


SERVING, DELETING, EXITING = SupervisorState.SERVING, SupervisorState.DELETING, SupervisorState.EXITING
#: the supervisor's states in the only order it may take them.
SUPERVISOR_ORDER = (SERVING, DELETING, EXITING)


__all__ = ["BACKOFF", "DELETING", "EXITED", "EXITING", "PAUSED", "PENDING", "QUEUED", "RUNNING", "SERVING",
           "SIGNALLABLE", "STOPPING", "SUPERVISOR_ORDER", "TRANSITIONS", "JobState", "SupervisorState"]
