"""The job's life: one state machine, its runs and exit status, and its deadlines.

* The states and the table of legal moves -- ``states.py`` (:class:`JobState`,
  :data:`TRANSITIONS`, :class:`SupervisorState`; re-exported here).
  :meth:`Job._set_phase` is the only writer of :attr:`Job.phase`, and a move the table
  does not list raises :class:`~bgtask._supervisor.errors.InternalError` (a
  ``RemoteError`` for the client); :meth:`Job.set_supervisor` only moves forward.
* :class:`Run` -- one execution: the job's pid and its I/O (``io.py``).
* :class:`Job` -- runs, exit status, ``kill``/``restart``/``wait``/``delete``, the
  "output collected" predicate, and the deadlines that :meth:`Job.tick` honours.
* :class:`~bgtask._supervisor.clock.Clock` -- the one thread that calls :meth:`Job.tick`
  when a deadline is due (started with the first deadline; no thread per timer).

The process side (``posix_spawn``, the reaper, signals) is behind a launcher
(``runner.ProcessLauncher``), so a :class:`Job` can be driven by a fake one in tests:
the reaper reports through :meth:`Job.run_stopped`, :meth:`Job.run_continued` and
:meth:`Job.run_exited`.

The operations (API.md, "Operations": timeouts, restart policies, slots, exit hooks)
are ``policy.Operations`` (:attr:`Job.ops`), called at a run's start and end and for
its own deadlines (``timeout``, ``kill``, ``restart``, ``slot``, ``hook``).
"""

from __future__ import annotations

import signal
import time

from bgtask._supervisor.clock import Clock  # re-exported: the clock thread lives there
from bgtask._supervisor.errors import InternalError
from bgtask._supervisor.states import (
    BACKOFF,
    DELETING,
    EXITED,
    PAUSED,
    PENDING,
    QUEUED,
    RUNNING,
    SERVING,
    SIGNALLABLE,
    STOPPING,
    SUPERVISOR_ORDER,
    TRANSITIONS,
    JobState,
    SupervisorState,
)
from bgtask._wire.names import COLLECT_GRACE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    from bgtask._supervisor.io import RunIO
    from bgtask._supervisor.lock import StateLock
    from bgtask._supervisor.policy import Operations

    class Launcher(Protocol):
        """How a :class:`Job` touches processes (``runner.ProcessLauncher``; fakes in tests)."""

        def launch(self) -> Run:
            """Start a new run (lock held). :raises SpawnError: it could not start."""

        def watch(self, job: Job, run: Run) -> None:
            """Start *run*'s threads: its I/O, and a reaper that reports to *job*."""

        def ended(self, run: Run) -> None:
            """*run* exited (lock held; not reaped yet): release what it held."""

        def signal(self, run: Run, sig: int) -> bool:
            """Send *sig* to *run*'s process group. :raises ValueError: a bad number."""

        def terminate(self, run: Run, timeout: float, alive: Callable[[], bool]) -> bool:
            """TERM+CONT, KILL after *timeout* (lock not held); True if it had to KILL."""

    class Pipes(Protocol):
        """What a :class:`Job` asks about the output pipes (``outputs.Outputs``)."""

        def pipes_open(self) -> bool:
            """Does any output pipe (of any run) still have a writer?"""

        def pipes_done(self) -> bool:
            """Nothing more to collect: every pipe at EOF, or its pump held by a full buffer."""


class Run:
    """One execution of the job: its pid (the job's process group) and its I/O."""

    __slots__ = ("cpu_charged_ns", "io", "job_pid", "rusage")

    def __init__(self, job_pid: int, io: RunIO) -> None:
        self.job_pid = job_pid
        self.io = io
        #: ``os.wait4``'s resource usage once reaped (``usage.py``'s final figures)
        self.rusage: object = None
        #: the CPU time the kernel charged the job process, read before the reap
        #: (``usage.charged_cpu_ns``: what ``RLIMIT_CPU`` counts; ``usage.limit_hint``)
        self.cpu_charged_ns: int | None = None


class _NoPipes:
    """The :class:`Pipes` of a job without output (tests)."""

    def pipes_open(self) -> bool:
        return False

    def pipes_done(self) -> bool:
        return True


class Job:
    """A job's runs and phase. One lock (:class:`~bgtask._supervisor.lock.StateLock`),
    shared with the streams; :attr:`changed` is notified on every change of phase, run,
    exit status or collection, :attr:`timers` when a deadline is set.

    Methods marked "lock held" are called by the reaper or the clock with the lock
    taken; the others take it themselves.

    :param lock: the supervisor's one lock.
    :param launcher: starts and signals runs (see :class:`Launcher`).
    :param pipes: the output side, for "collected" and delete's stragglers.
    :param wake_clock: called (lock held) when a deadline is set, so that a
        :class:`Clock` runs; ``None`` in tests, which call :meth:`tick` themselves.
    """

    def __init__(self, lock: StateLock, launcher: Launcher, pipes: Pipes | None = None,
                 wake_clock: Callable[[], None] | None = None) -> None:
        self.lock = lock
        self.launcher = launcher
        self.pipes: Pipes = pipes if pipes is not None else _NoPipes()
        self.wake_clock = wake_clock
        self.changed = lock.condition()
        self.timers = lock.condition()
        self.phase = QUEUED
        self.supervisor = SERVING
        self.run: Run | None = None
        #: the run before this one (or the ended one): its pipes may still be open.
        self.last_run: Run | None = None
        self.exit_code: int | None = None
        self.signal: int | None = None
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.ended_mono: float | None = None
        self.restarts = 0
        #: COLLECT_GRACE has passed since the exit: stop waiting for descendants.
        self.collect_expired = False
        #: kind -> ``time.monotonic()`` when :meth:`tick` acts on it (``_due_<kind>``).
        self.deadlines: dict[str, float] = {}
        #: called with the new phase on every change (lock held): the streams' eof.
        self.listeners: list[Callable[[JobState], None]] = []
        #: timeouts, restart policy, slots, hooks (``policy.py``); None in unit tests
        self.ops: Operations | None = None
        #: the current (or last) run was stopped by its ``timeout``
        self.timed_out = False
        #: why an automatic or queued start failed (the task then exited)
        self.start_error: str | None = None

    # -- the state machine -----------------------------------------------------------------

    def _set_phase(self, new: JobState) -> None:
        """The one place :attr:`phase` changes (lock held)."""
        old = self.phase
        if new not in TRANSITIONS[old]:
            raise InternalError(f"the job cannot go from {old.value!r} to {new.value!r}")
        self.phase = new
        for listener in self.listeners:
            listener(new)
        self.changed.notify_all()

    def set_supervisor(self, new: SupervisorState) -> None:
        """Move the supervisor's life forward (lock held); never back."""
        if SUPERVISOR_ORDER.index(new) < SUPERVISOR_ORDER.index(self.supervisor):
            raise InternalError(f"the supervisor cannot go from {self.supervisor.value!r} "
                                f"back to {new.value!r}")
        self.supervisor = new
        self.changed.notify_all()

    @property
    def job_pid(self) -> int | None:
        """The pid of the running job (None between runs)."""
        return self.run.job_pid if self.run is not None else None

    @property
    def returncode(self) -> int | None:
        """The last run's exit code, or minus its signal; None while not exited."""
        if self.phase is not EXITED:
            return None
        return self.exit_code if self.signal is None else -self.signal

    def collected(self) -> bool:
        """Exited, and its output is in: every pipe at EOF (or held by a full buffer), or
        COLLECT_GRACE has passed since the exit (a descendant keeps a pipe open)."""
        return self.phase is EXITED and (self.collect_expired or self.pipes.pipes_done())

    # -- runs ------------------------------------------------------------------------------

    def start(self, run: Run) -> None:
        """Adopt the first run, started by the boot (lock held)."""
        self._begin(run)

    def _begin(self, run: Run) -> None:
        self.run = run
        self.exit_code = self.signal = None
        self.started_at = time.time()
        self.ended_at = self.ended_mono = None
        self.collect_expired = False
        self.deadlines.pop("collect", None)
        self._set_phase(RUNNING)
        self.launcher.watch(self, run)
        if self.ops is not None:
            self.ops.begun()

    def run_stopped(self, run: Run) -> None:
        """The reaper saw *run* stop (lock held)."""
        if run is self.run and self.phase is RUNNING:
            self._set_phase(PAUSED)

    def run_continued(self, run: Run) -> None:
        """The reaper saw *run* continue (lock held)."""
        if run is self.run and self.phase is PAUSED:
            self._set_phase(RUNNING)

    def run_exited(self, run: Run, exit_code: int | None, sig: int | None) -> None:
        """*run* exited with *exit_code*, or was killed by *sig* (lock held; not reaped
        yet, so its pgid is still ours)."""
        self.exit_code, self.signal = exit_code, sig
        self.ended_at = time.time()
        self.ended_mono = time.monotonic()
        self.run = None
        self.last_run = run
        # The policy says whether an automatic restart is due (BACKOFF), and runs the hook.
        self._set_phase(self.ops.after_exit() if self.ops is not None else EXITED)
        if self.supervisor is not SERVING:
            # The supervisor is going away: take the job's stragglers along while the
            # zombie leader still pins the process group id.
            self.launcher.signal(run, signal.SIGKILL)
        self.launcher.ended(run)
        self.set_deadline("collect", self.ended_mono + COLLECT_GRACE)

    # -- operations --------------------------------------------------------------------------

    def kill(self, sig: int) -> bool:
        """Send *sig* to the running job's group; False if no run is signallable."""
        with self.lock:
            if self.ops is not None:
                # A queued or backing-off task is cancelled by a deadly signal; a run
                # ended by a client's signal is not restarted automatically.
                answer = self.ops.client_kill(sig)
                if answer is not None:
                    return answer
            run = self.run
            if run is None or self.phase not in SIGNALLABLE:
                return False
            self.launcher.signal(run, sig)
            # Say "paused" at once (the reaper would say it a moment later).
            if sig == signal.SIGSTOP and self.phase is RUNNING:
                self._set_phase(PAUSED)
            elif sig == signal.SIGCONT and self.phase is PAUSED:
                self._set_phase(RUNNING)
            return True

    def restart(self) -> bool:
        """Run the job again; False unless it has exited (and is not being deleted).

        :raises SpawnError: it could not start (lock held, bad cwd...).
        """
        with self.lock:
            if self.phase not in (EXITED, BACKOFF) or self.supervisor is not SERVING:
                return False
            self.start_again()
            return True

    def start_again(self, automatic: bool = False) -> None:
        """A new run after the last one: restart(), or the policy's automatic restart
        (lock held; a pending automatic restart is superseded).

        :raises SpawnError: it could not start; ``TaskLockedError``: lock or slot taken.
        """
        if self.last_run is not None:
            # What the last run left in a pipe held back by a full buffer comes
            # before the new run's output, not interleaved with it.
            self.last_run.io.drain()
        run = self.launcher.launch()
        self.deadlines.pop("restart", None)
        self.restarts += 1
        self._begin(run)

    def start_queued(self) -> None:
        """The first run of a task that waited for a slot (lock held).

        :raises TaskLockedError: every slot is still taken.
        """
        run = self.launcher.launch()
        self.deadlines.pop("slot", None)
        self._begin(run)

    def wait(self, timeout: float | None = None) -> int | None:
        """The returncode once exited and collected; None if *timeout* passed first.

        The answer is the status of the run that ended, taken when it ended: another
        client's restart() while this waits for the output (a descendant holds a pipe)
        begins a new run, which has no status yet -- that used to answer None, or fail
        on an assertion. The new run also ends the wait for the old run's output.
        """
        with self.lock:
            if not self.changed.wait_for(lambda: self.phase is EXITED, timeout):
                return None
            returncode = self.returncode
            ended = self.ended_mono if self.ended_mono is not None else time.monotonic()
            last = self.last_run

            def done() -> bool:
                return self.phase is not EXITED or self.last_run is not last or self.collected()

            # Collect the output: at most COLLECT_GRACE after the exit, whatever the
            # caller's timeout (the "collect" deadline ends it; the bound is a backstop).
            self.changed.wait_for(done, max(0.0, ended + COLLECT_GRACE - time.monotonic()))
            return returncode

    def delete(self, timeout: float) -> None:
        """Claim the supervisor's end; stop the job (TERM+CONT, KILL after *timeout*) and
        wait for its exit, or stop the stragglers that hold an ended job's pipes."""
        with self.lock:
            if self.supervisor is SERVING:
                self.set_supervisor(DELETING)
            for kind in list(self.deadlines):
                if kind != "collect":
                    del self.deadlines[kind]  # no restart, no timeout: we are going away
            if self.ops is not None:
                self.ops.cancel_pending()  # a queued start or pending restart never happens
                self.ops.stop_hooks()
            run = self.run if self.phase in SIGNALLABLE else None
            if run is not None and self.phase is not STOPPING:
                self._set_phase(STOPPING)
            last = self.last_run
            stragglers = run is None and last is not None and self.pipes.pipes_open()
        if run is not None:
            # Without the lock: the reaper needs it to report the exit.
            self.launcher.terminate(run, timeout, lambda: self.run is run)
        elif stragglers and last is not None:
            # Descendants in the ended job's group still hold its pipes: the output dies
            # with the supervisor, so they go too -- TERM+CONT, then KILL after
            # *timeout* like the job itself (TERM alone left those that ignore it).
            # The launcher signals the group only while it has members (a live member
            # pins the pgid, so it cannot have been reused).
            self.launcher.terminate(last, timeout, self.pipes.pipes_open)

    # -- timers ------------------------------------------------------------------------------

    def set_deadline(self, kind: str, at: float) -> None:
        """Have :meth:`tick` call ``_due_<kind>`` at monotonic time *at* (lock held)."""
        self.deadlines[kind] = at
        self.timers.notify_all()
        if self.wake_clock is not None:
            self.wake_clock()

    def next_deadline(self) -> float | None:
        """The earliest deadline, or None (lock held)."""
        return min(self.deadlines.values(), default=None)

    def tick(self, now: float) -> None:
        """Act on every deadline due at *now* (lock held)."""
        for kind, at in sorted(self.deadlines.items(), key=lambda item: item[1]):
            if at <= now and self.deadlines.get(kind) == at:
                del self.deadlines[kind]
                due = getattr(self, "_due_" + kind, None)
                if due is not None:
                    due(now)
                elif self.ops is not None:
                    self.ops.due(kind, now)  # the operations' deadlines (policy.py)

    def _due_collect(self, now: float) -> None:
        # COLLECT_GRACE after an exit: whoever waits for the output stops waiting for
        # descendants that still hold a pipe.
        if self.phase is EXITED:
            self.collect_expired = True
            self.changed.notify_all()


__all__ = ["BACKOFF", "EXITED", "PAUSED", "PENDING", "QUEUED", "RUNNING", "SIGNALLABLE", "STOPPING",
           "TRANSITIONS", "Clock", "Job", "JobState", "Run", "SupervisorState"]
