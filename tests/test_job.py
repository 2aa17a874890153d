"""Unit tests of the supervisor's job state machine (``_supervisor/job.py``), driven by a
fake launcher: no process is started, the reaper's reports are calls."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest

from bgtask._supervisor.errors import InternalError, is_caller_error
from bgtask._supervisor.job import (
    EXITED,
    PAUSED,
    QUEUED,
    RUNNING,
    SIGNALLABLE,
    STOPPING,
    TRANSITIONS,
    Clock,
    Job,
    JobState,
    Run,
    SupervisorState,
)
from bgtask._supervisor.lock import StateLock
from bgtask._wire.names import COLLECT_GRACE


class FakeIO:
    def __init__(self) -> None:
        self.held: set[str] = set()
        self.started = self.drained = False

    def start(self) -> None:
        self.started = True

    def drain(self) -> None:
        self.drained = True

    def close(self) -> None:
        pass

    def resize(self, rows: int, cols: int) -> None:
        pass


class FakeLauncher:
    def __init__(self) -> None:
        self.next_pid = 100
        self.signals: list[tuple[int, int]] = []
        self.ended_runs: list[Run] = []
        self.fail: Exception | None = None
        self.on_terminate: Callable[[Run], object] | None = None

    def launch(self) -> Run:
        if self.fail is not None:
            raise self.fail
        self.next_pid += 1
        return Run(self.next_pid, FakeIO())

    def watch(self, job: Job, run: Run) -> None:
        run.io.start()

    def ended(self, run: Run) -> None:
        self.ended_runs.append(run)

    def signal(self, run: Run, sig: int) -> bool:
        self.signals.append((run.job_pid, sig))
        return True

    def terminate(self, run: Run, timeout: float, alive: Callable[[], bool]) -> bool:
        self.signals.append((run.job_pid, signal.SIGTERM))
        if self.on_terminate is not None:
            self.on_terminate(run)
        return alive()


class FakePipes:
    def __init__(self) -> None:
        self.open = False

    def pipes_open(self) -> bool:
        return self.open

    def pipes_done(self) -> bool:
        return not self.open


def started_job(pipes: FakePipes | None = None) -> tuple[Job, FakeLauncher]:
    launcher = FakeLauncher()
    job = Job(StateLock(), launcher, pipes)
    assert job.phase is QUEUED, "nothing has run yet: not 'exited'"
    with job.lock:
        job.start(launcher.launch())
    return job, launcher


def exit_run(job: Job, code: int | None = 0, sig: int | None = None) -> Run:
    run = job.run
    assert run is not None
    with job.lock:
        job.run_exited(run, code, sig)
    return run


def test_states_are_the_wire_strings() -> None:
    assert [s.value for s in JobState] == ["queued", "running", "paused", "stopping", "backoff", "exited"]
    assert JobState("exited") is EXITED and EXITED == "exited"
    assert SIGNALLABLE == {RUNNING, PAUSED, STOPPING}
    assert set(TRANSITIONS) == set(JobState), "every state has its row"


def test_first_run_starts_the_job() -> None:
    job, _ = started_job()
    assert job.phase is RUNNING and job.job_pid == 101
    assert job.run is not None and job.run.io.started  # type: ignore[attr-defined]
    assert job.returncode is None and job.started_at is not None


def test_impossible_transition_is_an_internal_error_not_the_callers() -> None:
    job, _ = started_job()
    with job.lock, pytest.raises(InternalError, match="'running' to 'queued'"):
        job._set_phase(QUEUED)
    assert job.phase is RUNNING
    assert not is_caller_error(InternalError("x"))


def test_stop_continue_and_exit() -> None:
    job, launcher = started_job()
    run = job.run
    assert run is not None
    with job.lock:
        job.run_stopped(run)
    assert job.phase is PAUSED
    with job.lock:
        job.run_continued(run)
    assert job.phase is RUNNING
    exit_run(job, None, 9)
    assert job.phase is EXITED and job.returncode == -9 and job.job_pid is None
    assert launcher.ended_runs == [run] and job.last_run is run
    # a report about a run that is not the current one changes nothing
    with job.lock:
        job.run_continued(run)
    assert job.phase is EXITED


def test_kill_pause_resume() -> None:
    job, launcher = started_job()
    assert job.kill(signal.SIGSTOP) is True and job.phase is PAUSED
    assert job.kill(signal.SIGCONT) is True and job.phase is RUNNING
    assert launcher.signals == [(101, signal.SIGSTOP), (101, signal.SIGCONT)]
    exit_run(job)
    assert job.kill(signal.SIGTERM) is False, "not running: nothing sent"
    assert len(launcher.signals) == 2


def test_listeners_see_every_phase() -> None:
    job, _ = started_job()
    seen: list[JobState] = []
    job.listeners.append(seen.append)
    job.kill(signal.SIGSTOP)
    exit_run(job, 3)
    assert seen == [PAUSED, EXITED]


def test_restart_only_after_exit_and_counts() -> None:
    job, launcher = started_job()
    assert job.restart() is False
    first = exit_run(job, 1)
    assert job.restart() is True
    assert job.phase is RUNNING and job.restarts == 1 and job.job_pid == 102
    assert first.io.drained, "the ended run's held output comes first"  # type: ignore[attr-defined]
    assert job.exit_code is None and job.returncode is None


def test_a_failed_restart_leaves_the_job_exited() -> None:
    job, launcher = started_job()
    exit_run(job, 0)
    launcher.fail = RuntimeError("no such program")
    with pytest.raises(RuntimeError):
        job.restart()
    assert job.phase is EXITED and job.restarts == 0 and job.returncode == 0


def test_no_restart_once_deleting() -> None:
    job, _ = started_job()
    exit_run(job)
    job.delete(0.1)
    assert job.supervisor is SupervisorState.DELETING
    assert job.restart() is False
    with job.lock, pytest.raises(InternalError):
        job.set_supervisor(SupervisorState.SERVING)


def test_delete_terminates_a_running_job() -> None:
    job, launcher = started_job()
    launcher.on_terminate = lambda run: exit_run(job, None, 15)
    job.delete(1.0)
    assert job.phase is EXITED and job.returncode == -15
    # the run ended while deleting: its stragglers were killed with it
    assert (101, signal.SIGKILL) in launcher.signals


def test_delete_stops_stragglers_holding_the_pipes() -> None:
    pipes = FakePipes()
    job, launcher = started_job(pipes)
    pipes.open = True
    exit_run(job)
    job.delete(1.0)
    # the one escalation (TERM+CONT, KILL after the timeout): TERM alone left those
    # that ignore it alive (issue 11 #7)
    assert launcher.signals == [(101, signal.SIGTERM)]


def test_wait_returns_when_exited_and_collected() -> None:
    pipes = FakePipes()
    job, _ = started_job(pipes)
    assert job.wait(0) is None
    t = threading.Timer(0.05, exit_run, (job, 7))
    t.start()
    assert job.wait(5) == 7
    t.join()


def test_collected_waits_for_the_pipes_then_the_grace_tick() -> None:
    pipes = FakePipes()
    job, _ = started_job(pipes)
    pipes.open = True
    exit_run(job, 0)
    assert not job.collected(), "a descendant still holds a pipe"
    assert "collect" in job.deadlines
    with job.lock:
        job.tick(time.monotonic())  # not due yet
        assert not job.collected()
        job.tick(time.monotonic() + COLLECT_GRACE + 0.1)
    assert job.collected() and not job.deadlines


def test_a_restart_cancels_the_collect_deadline() -> None:
    job, _ = started_job()
    exit_run(job)
    assert job.restart()
    assert "collect" not in job.deadlines and not job.collect_expired


def test_clock_honours_deadlines_on_one_thread() -> None:
    job, _ = started_job()
    clock = Clock(job)
    job.wake_clock = clock.wake
    fired: list[float] = []
    job._due_probe = fired.append  # type: ignore[attr-defined]
    with job.lock:
        job.set_deadline("probe", time.monotonic() + 0.05)
        job.set_deadline("collect", time.monotonic() + 10)
    thread = clock.thread
    assert thread is not None
    deadline = time.monotonic() + 5
    while not fired and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fired and "probe" not in job.deadlines and "collect" in job.deadlines
    with job.lock:
        job.set_deadline("probe", time.monotonic())
    assert clock.thread is thread, "one thread for every timer"
