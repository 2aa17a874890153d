"""The supervisor's one timer thread (:class:`Clock`): it sleeps until the job's next
deadline and calls :meth:`~bgtask._supervisor.job.Job.tick`."""

from __future__ import annotations

import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from bgtask._supervisor.job import Job


class Clock:
    """The supervisor's one timer thread: sleeps on :attr:`Job.timers` until the next
    deadline and calls :meth:`Job.tick`. Started by the first deadline, so a task whose
    job never ends costs no thread."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.thread: threading.Thread | None = None

    def wake(self) -> None:
        """A deadline was set (lock held): make sure the thread runs."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="clock", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        job = self.job
        with job.lock:
            while True:
                nxt = job.next_deadline()
                now = time.monotonic()
                if nxt is not None and nxt <= now:
                    job.tick(now)
                else:
                    job.timers.wait(None if nxt is None else nxt - now)


__all__ = ["Clock"]
