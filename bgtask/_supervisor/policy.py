"""Operations on a job (API.md, "Operations"): run timeouts, automatic restarts with
back-off, slots, and the exit hook -- the policy a service manager applies, living with
the job in its supervisor.

:class:`Operations` is attached to a :class:`~bgtask._supervisor.job.Job`
(``job.ops``); the job calls it at the few points of its life where policy decides:

* :meth:`Operations.begun` -- a run started: arm the ``"timeout"`` deadline;
* :meth:`Operations.after_exit` -- a run ended: start the ``on_exit`` hook, and say
  whether the job goes to BACKOFF (a ``"restart"`` deadline) or EXITED;
* :meth:`Operations.due` -- a deadline of ours is due (``timeout``, ``kill``,
  ``restart``, ``slot``, ``hook``), called by :meth:`Job.tick` from the one clock
  thread: no thread per timer, and none at all for a job without operations.

All of it runs with the state lock held.
"""

from __future__ import annotations

import signal
import time

from bgtask._supervisor import hooks
from bgtask._supervisor.states import BACKOFF, EXITED, PAUSED, PENDING, QUEUED, RUNNING, SERVING, STOPPING

TYPE_CHECKING = False
if TYPE_CHECKING:
    from bgtask._supervisor.job import Job
    from bgtask._supervisor.states import JobState
    from bgtask._wire.schema import JobSpec

#: the back-off's cap, and the uptime after which it starts again from ``restart_delay``.
BACKOFF_CAP = 60.0
BACKOFF_RESET_UPTIME = 60.0
#: how often a queued task (or a restart waiting for its slot) tries the slots again. A
#: flock cannot be waited on together with the clock's other deadlines, and 0.2 s keeps
#: "starts within about a second of a slot freeing" with room to spare for ~5 cheap
#: non-blocking flocks a second.
SLOT_POLL = 0.2
#: how often the clock looks whether a running hook has ended (to reap it).
HOOK_POLL = 0.05
#: signals a client may send a queued or backing-off task without cancelling its start
#: (they do not end a process by default).
HARMLESS_SIGNALS = frozenset({0, signal.SIGCONT, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN,
                              signal.SIGTTOU, signal.SIGWINCH, signal.SIGCHLD, signal.SIGURG})


class Operations:
    """The operations options of one job (from its :class:`JobSpec`) and their state."""

    def __init__(self, job: Job, spec: JobSpec, pool: str, pid: int) -> None:
        self.job = job
        self.env = spec["env"]
        self.pool, self.pid = pool, pid
        self.timeout: float | None = spec.get("timeout")
        self.grace: float = spec.get("grace", 5.0)
        self.restart: str = spec.get("restart", "never")
        self.restart_delay: float = spec.get("restart_delay", 1.0)
        self.max_restarts: int | None = spec.get("max_restarts")
        self.on_exit: list[str] | None = spec.get("on_exit")
        #: automatic restarts so far (``max_restarts`` caps them; restart() does not count)
        self.auto_restarts = 0
        #: consecutive failed runs: the back-off doubles with each
        self.failures = 0
        #: epoch time of the pending automatic restart (``info()["next_restart_at"]``)
        self.next_restart_at: float | None = None
        #: the run ended by a client's kill(): no automatic restart for it
        self.client_signals: set[int] = set()
        self.run_started = 0.0
        self.hooks = hooks.HookRunner()

    # -- called by the Job ---------------------------------------------------------------

    def begun(self) -> None:
        """A run started (lock held)."""
        job = self.job
        job.timed_out = False
        self.client_signals.clear()
        self.next_restart_at = None
        self.run_started = time.monotonic()
        if self.timeout is not None:
            job.set_deadline("timeout", self.run_started + self.timeout)

    def client_kill(self, sig: int) -> bool | None:
        """A client's kill(*sig*) (lock held). None: the job handles it as usual; else
        the answer for a task with no run (queued or backing off): a signal that would
        end a process cancels the pending start, and the task is exited."""
        job = self.job
        if job.phase in PENDING:
            if sig in HARMLESS_SIGNALS:
                return False
            if job.phase is QUEUED:
                job.signal = sig  # it never ran: its "returncode" is the signal that ended it
            self.cancel_pending()
            return True
        if sig not in HARMLESS_SIGNALS:
            self.client_signals.add(sig)
        return None

    def cancel_pending(self) -> None:
        """delete() or a kill of a queued or backing-off task: it never starts (lock held)."""
        job = self.job
        for kind in ("restart", "slot"):
            job.deadlines.pop(kind, None)
        self.next_restart_at = None
        if job.phase in PENDING:
            job.ended_at = job.ended_at or time.time()
            job.ended_mono = job.ended_mono or time.monotonic()
            job._set_phase(EXITED)
            job.collect_expired = True  # nothing to collect: no run is starting
            job.changed.notify_all()

    def after_exit(self) -> JobState:
        """A run ended (lock held; status set): the phase the job goes to."""
        job = self.job
        for kind in ("timeout", "kill"):
            job.deadlines.pop(kind, None)
        self._start_hook()
        failed = bool(job.exit_code or job.signal is not None or job.timed_out)
        by_client = job.signal is not None and job.signal in self.client_signals
        if (self.restart == "never" or job.supervisor is not SERVING or by_client
                or (self.restart == "on-failure" and not failed)
                or (self.max_restarts is not None and self.auto_restarts >= self.max_restarts)):
            self.failures = 0
            return EXITED
        now = time.monotonic()
        if now - self.run_started >= BACKOFF_RESET_UPTIME or not failed:
            self.failures = 0
        delay = min(self.restart_delay * (2 ** min(self.failures, 32)), BACKOFF_CAP)
        if failed:
            self.failures += 1
        self.next_restart_at = time.time() + delay
        job.set_deadline("restart", now + delay)
        return BACKOFF

    # -- deadlines -----------------------------------------------------------------------

    def due(self, kind: str, now: float) -> None:
        """Act on the deadline *kind* (lock held)."""
        getattr(self, "_due_" + kind)(now)

    def _due_timeout(self, now: float) -> None:
        # The run has lasted `timeout`: TERM (and CONT, so that a paused job sees it),
        # then KILL after `grace`. timed_out is set first: the exit it causes says so.
        job = self.job
        run = job.run
        if run is None or job.phase not in (RUNNING, PAUSED):
            return
        job.timed_out = True
        job._set_phase(STOPPING)
        job.launcher.signal(run, signal.SIGTERM)
        job.launcher.signal(run, signal.SIGCONT)
        job.set_deadline("kill", now + self.grace)

    def _due_kill(self, now: float) -> None:
        job = self.job
        if job.run is not None and job.phase is STOPPING:
            job.launcher.signal(job.run, signal.SIGKILL)

    def _due_restart(self, now: float) -> None:
        job = self.job
        if job.phase is not BACKOFF or job.supervisor is not SERVING:
            return
        if self._start(lambda: job.start_again(automatic=True)):
            self.auto_restarts += 1

    def _due_slot(self, now: float) -> None:
        job = self.job
        if job.phase is QUEUED and job.supervisor is SERVING:
            self._start(job.start_queued)

    def _start(self, start: object) -> bool:
        """Start a run, or try again in :data:`SLOT_POLL` while the slots are taken; a
        job that can no longer start at all ends (its reason is lost with the run)."""
        from bgtask._errors import SpawnError, TaskLockedError

        job = self.job
        kind = "slot" if job.phase is QUEUED else "restart"
        try:
            start()  # type: ignore[operator]
        except TaskLockedError:
            job.set_deadline(kind, time.monotonic() + SLOT_POLL)
            return False
        except SpawnError as exc:
            job.start_error = str(exc)
            self.cancel_pending()
            return False
        return True

    def _start_hook(self) -> None:
        if not self.on_exit:
            return
        job = self.job
        extra = {"BGTASK_PID": str(self.pid), "BGTASK_POOL": self.pool,
                 "BGTASK_RETURNCODE": str(job.exit_code if job.signal is None else -job.signal),
                 "BGTASK_TIMED_OUT": "1" if job.timed_out else "0"}
        if self.hooks.start(self.on_exit, dict(self.env, **extra), self.grace):
            job.set_deadline("hook", time.monotonic() + HOOK_POLL)

    def _due_hook(self, now: float) -> None:
        # Reap the hooks that ended; KILL those that outlived `grace`; look again soon
        # while any is left.
        if self.hooks.poll(now):
            self.job.set_deadline("hook", now + HOOK_POLL)

    def stop_hooks(self) -> None:
        """The supervisor is going away: hooks still running go with it."""
        self.hooks.kill_all()

    def info(self) -> dict[str, object]:
        """The info dict's operations keys (lock held)."""
        return {"grace": self.grace, "timeout": self.timeout, "restart": self.restart,
                "restart_delay": self.restart_delay, "max_restarts": self.max_restarts,
                "auto_restarts": self.auto_restarts, "next_restart_at": self.next_restart_at,
                "on_exit": self.on_exit}


__all__ = ["BACKOFF_CAP", "BACKOFF_RESET_UPTIME", "HOOK_POLL", "SLOT_POLL", "Operations"]
