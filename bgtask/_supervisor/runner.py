"""The real processes behind a :class:`~bgtask._supervisor.job.Job`: its launcher.

:class:`ProcessLauncher` starts runs (``launch.launch``, with the ``spawn(lock=...)``
lock), gives each a :class:`~bgtask._supervisor.io.PipeIO`, watches it with a *reaper*
thread (``waitid``: stops, continues, exit) that reports to the job, and signals and
terminates its process group (``_process.killpg`` / ``_process.terminate_group``).
"""

from __future__ import annotations

import os

from bgtask import _paths, _process
from bgtask._supervisor import slots, threads
from bgtask._supervisor.errors import caller_error
from bgtask._supervisor.io import PipeIO
from bgtask._supervisor.job import Run
from bgtask._supervisor.launch import StartError, launch, take_lock
from bgtask._supervisor.usage import charged_cpu_ns
from bgtask._wire.faults import start_error_to_exception
from bgtask._wire.names import KILL_WAIT, OUTPUT_STREAMS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from bgtask._supervisor.boot import Startup
    from bgtask._supervisor.job import Job
    from bgtask._supervisor.outputs import Outputs
    from bgtask._supervisor.stdin import StdinQueue

_STOP_CODES = (os.CLD_STOPPED, os.CLD_TRAPPED, os.CLD_CONTINUED)


class ProcessLauncher:
    """Runs of the job described by *startup*'s spec, wired to *outputs* and *stdin*."""

    def __init__(self, startup: Startup, outputs: Outputs, stdin: StdinQueue) -> None:
        self.startup = startup
        self.outputs = outputs
        self.stdin = stdin
        #: the pids of runs not reaped yet (changed under the lock): only these may be
        #: signalled by pid, never a pid the kernel may have handed to someone else.
        self.unreaped: set[int] = set()
        #: called after each delivery of output (the server marks its status record)
        self.on_output: Callable[[], None] = _nothing

    def adopt(self, fds: tuple[int, int, int, int]) -> Run:
        """The run the boot started: ``(job pid, stdin_w, stdout_r, stderr_r)``."""
        job_pid, stdin_w, stdout_r, stderr_r = fds
        self.unreaped.add(job_pid)
        out = dict(zip(OUTPUT_STREAMS, (stdout_r, stderr_r), strict=True))
        return Run(job_pid, PipeIO(stdin_w, out, self.outputs, self.stdin,
                                   on_output=lambda: self.on_output()))

    def launch(self) -> Run:
        startup = self.startup
        spec = startup.config
        try:
            if spec["lock"]:
                startup.lock_fd = take_lock(startup.pool, spec["lock"])
            if not slots.hold(startup):
                raise StartError("locked", 11, "every slot is taken", spec["slot"][0])  # type: ignore[index]
        except StartError as exc:
            self._release_lock()
            raise start_error_to_exception(exc.args) from None
        try:
            # The job inherits the lock's fd: it stays held if we die (see launch.launch).
            fds = launch(spec["argv"], spec["env"], spec["cwd"], startup.lock_fd,
                         (startup.slot_fd,), spec.get("limits"))
        except StartError as exc:
            self._release_lock()
            raise start_error_to_exception(exc.args) from None
        _paths.write_job_record(startup.token_fd, fds[0], _process.proc_start_time(fds[0]))
        return self.adopt(fds)

    def watch(self, job: Job, run: Run) -> None:
        run.io.start()
        threads.start(self._reap, "reaper", job, run)  # reserved at boot for the first run

    def ended(self, run: Run) -> None:
        run.io.ended()
        _paths.write_job_record(self.startup.token_fd, None, None)
        self._release_lock()

    def signal(self, run: Run, sig: int) -> bool:
        """*sig* to the run's process group, and to the job itself if it left the group
        (lock held)."""
        try:
            sent = _process.killpg(run.job_pid, sig)
        except ValueError as exc:  # EINVAL: a number the kernel does not know
            raise caller_error(exc) from None
        return self._signal_leader(run.job_pid, sig) or sent

    def terminate(self, run: Run, timeout: float, alive: Callable[[], bool]) -> bool:
        """TERM+CONT, KILL after *timeout* (lock not held). For a run already reaped
        (its stragglers), only while its group has members: they pin the pgid, which
        could otherwise have been reused."""
        pgid = run.job_pid
        if pgid in self.unreaped:
            def leader(sig: int) -> None:
                with self.outputs.lock:  # the reaper reaps under it: the pid stays ours
                    self._signal_leader(pgid, sig)

            return _process.terminate_group(pgid, timeout, alive, also=leader, kill_wait=KILL_WAIT)

        def group_alive() -> bool:
            return alive() and _process.group_alive(pgid)

        if not group_alive():
            return False
        return _process.terminate_group(pgid, timeout, group_alive, kill_wait=KILL_WAIT)

    def _signal_leader(self, pid: int, sig: int) -> bool:
        """*sig* to job *pid* itself if it moved to another process group (lock held).
        Such a job escaped kill() and delete(); its pid is safe to signal while we have
        not reaped it. Not when it is in its group: killpg reached it already, and a
        second USR1 would be a second signal."""
        if pid not in self.unreaped:
            return False
        try:
            if os.getpgid(pid) == pid:
                return False
            os.kill(pid, sig)
        except OSError:
            return False
        return True

    def _release_lock(self) -> None:
        # Closing the fd releases the spawn(lock=...) lock, and the spawn(slot=) slot.
        if self.startup.lock_fd >= 0:
            os.close(self.startup.lock_fd)
            self.startup.lock_fd = -1
        if self.startup.slot_fd >= 0:
            os.close(self.startup.slot_fd)
            self.startup.slot_fd = -1

    def _reap(self, job: Job, run: Run) -> None:
        """The reaper thread of *run*: report its stops, continues and exit to *job*."""
        pid = run.job_pid
        flags = os.WEXITED | os.WSTOPPED | os.WCONTINUED | os.WNOWAIT
        while True:
            try:
                status = os.waitid(os.P_PID, pid, flags)
            except ChildProcessError:
                return
            if status is None:
                continue
            with job.lock:
                if status.si_code in _STOP_CODES:
                    # Consume the notification so the next waitid sees the next one, and
                    # act on the one consumed, not the one peeked at: a pause() + resume()
                    # in between replaces "stopped" by "continued", and acting on the
                    # stale "stopped" would leave the task paused for good while it runs.
                    try:
                        status = os.waitid(os.P_PID, pid, os.WSTOPPED | os.WCONTINUED | os.WNOHANG)
                    except ChildProcessError:
                        # It has exited since (a pause() then a kill or delete): a zombie
                        # is not waitable without WEXITED, and Linux says ECHILD. The
                        # next waitid sees the exit; dying here would hide it for good.
                        status = None
                    if status is None:
                        continue
                    if status.si_code == os.CLD_CONTINUED:
                        job.run_continued(run)
                    else:
                        job.run_stopped(run)
                    continue
                if status.si_code == os.CLD_EXITED:
                    job.run_exited(run, status.si_status, None)
                else:
                    job.run_exited(run, None, status.si_status)
                self.unreaped.discard(pid)
                # Still a zombie (waitid's WNOWAIT): its CPU clock can still be read.
                run.cpu_charged_ns = charged_cpu_ns(pid)
                # Reap under the lock: kill() never sees a freed pid. wait4's rusage is
                # the run's final usage, its waited-for descendants included.
                run.rusage = os.wait4(pid, 0)[2]
                return


def _nothing() -> None:
    return None


__all__ = ["ProcessLauncher"]
