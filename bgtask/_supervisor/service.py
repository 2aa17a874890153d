"""The methods a client can call (``_wire.names.EXPOSED``): check, then delegate.

:class:`TaskService` is the object the supervisor's manager serves. Each exposed method
first checks its wire arguments inside ``with CALLER_CHECKS:`` (so a bad one goes back
to the caller as its own ``TypeError``/``ValueError``), then hands over to the part that
owns the answer:

* the job's life -- :class:`~bgtask._supervisor.job.Job` (kill, restart, wait, delete);
* reading output and messages -- :class:`~bgtask._supervisor.outputs.Outputs`;
* writing stdin -- :class:`~bgtask._supervisor.stdin.StdinQueue`;
* meta and the info dict -- here: :meth:`TaskService.build_info` is the one place that
  names things the public way (``child_pid``, ``retain_output``, ``state``).

Anything else that goes wrong is the supervisor's failure and reaches the client as a
``RemoteError`` (see ``errors.py``).
"""

from __future__ import annotations

import os
import signal
import time

from bgtask._supervisor.errors import CALLER_CHECKS
from bgtask._supervisor.job import Clock, Job
from bgtask._supervisor.lock import StateLock
from bgtask._supervisor.outputs import MAX_REPLY, Outputs
from bgtask._supervisor.policy import SLOT_POLL, Operations
from bgtask._supervisor.runner import ProcessLauncher
from bgtask._supervisor.states import EXITED, EXITING, PAUSED
from bgtask._supervisor.stdin import StdinQueue
from bgtask._supervisor.usage import UsageMeter, limit_hint
from bgtask._wire.checks import check_timeout
from bgtask._wire.names import MESSAGE_STREAMS, OUTPUT_STREAMS, STREAMS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from bgtask._supervisor.boot import Startup
    from bgtask._supervisor.outputs import ReadReply
    from bgtask._wire.schema import Status, StreamInfo, TaskInfo


class TaskService:
    """Everything a client can ask of one task (see the module docstring)."""

    def __init__(self, startup: Startup) -> None:
        spec = startup.config
        self.startup = startup
        self.pid = startup.pid
        self.owner = os.geteuid()
        self.created_at = time.time()
        self.meta: dict[str, bytes] = dict(spec["meta"])
        self.lock = StateLock()
        self.outputs = Outputs(self.lock, spec)
        self.stdin = StdinQueue(self.lock, self.pid)
        self.launcher = ProcessLauncher(startup, self.outputs, self.stdin)
        self.job = job = Job(self.lock, self.launcher, self.outputs)
        self.clock = Clock(job)
        self.usage_meter = UsageMeter()
        job.wake_clock = self.clock.wake
        job.listeners += [self.outputs.phase_changed, self.stdin.phase_changed]
        self.outputs.on_collect = job.changed.notify_all
        job.ops = Operations(job, spec, startup.pool, self.pid)
        with self.lock:
            if startup.job is not None:
                job.start(self.launcher.adopt(startup.job))
            else:
                # Queued: every slot was taken at boot; the clock tries them again.
                job.set_deadline("slot", time.monotonic() + SLOT_POLL)

    # -- information ---------------------------------------------------------------------------

    def info(self) -> TaskInfo:
        """The task's info dict (see ``_wire.schema.TaskInfo``)."""
        with self.lock:
            return self.build_info()

    def build_info(self) -> TaskInfo:
        """The info dict (lock held): the one translation to the public names."""
        job, spec = self.job, self.startup.config
        phase = job.phase
        status: Status = {"running": phase is not EXITED, "paused": phase is PAUSED,
                          "exit_code": job.exit_code, "signal": job.signal,
                          "returncode": job.returncode}
        # Only for tasks that have them, so that the status of a plain task stays the
        # five keys it always had.
        if spec.get("timeout") is not None:
            status["timed_out"] = job.timed_out
        if spec.get("limits"):
            status["limit"] = limit_hint(job.signal, spec.get("limits"),
                                         job.last_run.cpu_charged_ns if job.last_run is not None else None)
        streams: dict[str, StreamInfo] = {"stdin": self.stdin.info()}
        for name in OUTPUT_STREAMS + MESSAGE_STREAMS:
            streams[name] = self.outputs.info(name)
        return {
            "pid": self.pid,
            "child_pid": job.job_pid,
            "argv": list(spec["argv"]),
            "command": spec.get("command"),
            "shell": spec.get("shell", False),
            "cwd": spec["cwd"],
            "meta": dict(self.meta),
            "owner": self.owner,
            "lock": spec["lock"],
            "created_at": self.created_at,
            "started_at": job.started_at,
            "ended_at": job.ended_at,
            "restarts": job.restarts,
            "state": phase.value,
            "status": status,
            "streams": streams,
            "slot": list(spec["slot"]) if spec.get("slot") else None,
            "limits": spec.get("limits"),
            "start_error": job.start_error,
            **job.ops.info(),  # type: ignore[union-attr, typeddict-item]
        }

    def usage(self) -> dict[str, float | int]:
        """CPU and memory of the job's whole process tree (``usage.py``); after the
        run ended, its final figures."""
        with self.lock:
            run = self.job.run
            if run is not None:
                pid = run.job_pid
            else:
                last = self.job.last_run
                return self.usage_meter.final(last.rusage if last is not None else None)
        # Read /proc without the lock: the job may exit meanwhile (figures of a gone
        # process are simply missing; the next call gives the final ones).
        return self.usage_meter.sample(pid)

    def apply_meta(self, blobs: dict[str, bytes]) -> dict[str, bytes]:
        """``meta.update(blobs)`` (values are dill blobs); returns the new meta."""
        with CALLER_CHECKS:
            if not isinstance(blobs, dict) or not all(
                    isinstance(k, str) and isinstance(v, bytes) for k, v in blobs.items()):
                raise TypeError("apply_meta takes a dict of str -> dill blob")
        with self.lock:
            self.meta.update(blobs)
            return dict(self.meta)

    def stream_info(self, name: str) -> StreamInfo:
        """The info of one stream (as in ``info()["streams"]``)."""
        with CALLER_CHECKS:
            _check_stream(name)
        with self.lock:
            return self.stdin.info() if name == "stdin" else self.outputs.info(name)

    # -- reading ------------------------------------------------------------------------------

    def stream_read(self, name: str, start: int | None, end: int | None, consume: bool,
                    timeout: float | None, max_bytes: int = MAX_REPLY) -> ReadReply:
        """Read ``[start, end)`` of an output or message stream (see ``Outputs.read``).

        :raises OutputGoneError: *start* is before the first held offset.
        """
        with CALLER_CHECKS:
            _check_stream(name)
            if name == "stdin":
                raise ValueError("stdin cannot be read: it is written by clients and read by the job")
            _check_offset("start", start)
            _check_offset("end", end)
            check_timeout(timeout)
            if not _is_int(max_bytes) or max_bytes <= 0:
                raise ValueError("max_bytes must be a positive int")
        return self.outputs.read(name, start, end, bool(consume), timeout, max_bytes)

    def stream_putback(self, name: str, blobs: list[bytes], consumed_end: int) -> bool:
        """Return messages a client consumed but never handed on; whether they went back."""
        with CALLER_CHECKS:
            _check_stream(name)
            if name not in MESSAGE_STREAMS:
                raise ValueError(f"only messages can be put back, not {name}")
            if (not isinstance(blobs, list) or not all(type(b) is bytes for b in blobs)
                    or not _is_int(consumed_end)):
                raise TypeError("stream_putback takes a list of bytes and an int offset")
        return self.outputs.putback(name, blobs, consumed_end)

    # -- writing ------------------------------------------------------------------------------

    def stream_write(self, name: str, data: bytes | list[bytes], timeout: float | None = None) -> int:
        """Append *data*; returns the stream's new limit.

        stdin: blocks while the stdin buffer is full (``TimeoutError`` after *timeout*).
        data/control: one message blob, or a list of them (``Stream.write_many``),
        appended together: no other writer's message comes between them.

        :raises StreamClosedError: stdin is closed, or the job has ended.
        """
        with CALLER_CHECKS:
            _check_stream(name)
            if name in OUTPUT_STREAMS:
                raise ValueError(f"{name} cannot be written: it is the job's output")
            if name in MESSAGE_STREAMS and type(data) is list:
                if not all(type(b) is bytes for b in data):
                    raise TypeError("stream_write takes a message blob (bytes) or a list of them")
            elif not isinstance(data, bytes):
                raise TypeError(f"stream_write takes bytes, not {type(data).__name__}")
            check_timeout(timeout)
        if name in MESSAGE_STREAMS:
            return self.outputs.write_messages(name, data if type(data) is list else [data])  # type: ignore[list-item]
        assert isinstance(data, bytes)
        return self.stdin.write(data, timeout)

    def stream_close(self, name: str) -> None:
        """Close stdin: the job sees EOF once what is pending is delivered."""
        with CALLER_CHECKS:
            _check_stream(name)
            if name != "stdin":
                raise ValueError(f"only stdin can be closed, not {name}")
        self.stdin.close()

    # -- control ------------------------------------------------------------------------------

    def kill(self, sig: int) -> bool:
        """Send signal number *sig* to the job's process group; False if not running."""
        with CALLER_CHECKS:
            if not _is_int(sig):
                raise TypeError("kill takes a signal number")
            if not 0 <= sig < signal.NSIG:
                raise ValueError(f"invalid signal number {sig}")
        return self.job.kill(sig)

    def restart(self) -> bool:
        """Run the job again if it has exited (same argv, env, cwd).

        :raises SpawnError: it could not start.
        """
        return self.job.restart()

    def wait(self, timeout: float | None = None) -> int | None:
        """The job's returncode once it has exited and its output is collected; None if
        *timeout* seconds passed first."""
        with CALLER_CHECKS:
            check_timeout(timeout)
        return self.job.wait(timeout)

    def forward_signal(self, sig: int) -> None:
        """A signal sent to the supervisor by hand (``kill <task id>``): on to the job,
        like tini does. Not exposed: clients call :meth:`kill`."""
        self.job.kill(sig)

    def delete(self, timeout: float = 5.0) -> None:
        """Terminate the job (TERM+CONT, KILL after *timeout*), then end the supervisor.

        The files are removed before the reply; the process exits right after it.
        """
        with CALLER_CHECKS:
            if timeout is None:
                raise ValueError("delete() needs a timeout: seconds from TERM to KILL")
            check_timeout(timeout)
        self.job.delete(timeout)
        with self.lock:
            self.job.set_supervisor(EXITING)
            self.startup.remove_files()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_stream(name: object) -> None:
    if name not in STREAMS:
        raise ValueError(f"unknown stream {name!r}: expected one of {', '.join(STREAMS)}")


def _check_offset(what: str, value: object) -> None:
    if value is not None and (not _is_int(value) or value < 0):  # type: ignore[operator]
        raise ValueError(f"{what} must be a non-negative int, not {value!r}")


__all__ = ["TaskService"]
