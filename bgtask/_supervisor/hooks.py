"""The ``on_exit`` hook: a program the supervisor starts after each run of the job.

A hook is started with ``posix_spawn`` (as the job is: ~1 ms, so within the contract's
100 ms of the end), in its own process group, with its output on ``/dev/null``; it is
never waited for by anything a client calls -- the clock reaps it (``HookRunner.poll``,
every ``policy.HOOK_POLL``) and KILLs its group once it has outlived ``grace``.
"""

from __future__ import annotations

import errno
import os

from bgtask._supervisor.launch import RESET_SIGNALS, resolve_program


class HookRunner:
    """The hooks of one supervisor that have not been reaped yet."""

    def __init__(self) -> None:
        #: hook pid -> monotonic time after which its group is KILLed
        self.running: dict[int, float] = {}

    def start(self, argv: list[str], env: dict[str, str], grace: float) -> bool:
        """Start *argv*; False if it could not start (that is not the job's failure, and
        the hook's output is discarded anyway)."""
        import time

        fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        try:
            actions = [(os.POSIX_SPAWN_DUP2, fd, 0), (os.POSIX_SPAWN_DUP2, fd, 1),
                       (os.POSIX_SPAWN_DUP2, fd, 2)]
            for path in resolve_program(argv[0], env):
                try:
                    pid = os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0,
                                         setsigdef=RESET_SIGNALS, setsigmask=())
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                        continue
                    return False
                self.running[pid] = time.monotonic() + grace
                return True
            return False
        finally:
            os.close(fd)

    def poll(self, now: float) -> bool:
        """Reap the hooks that ended, KILL those past their time; True while any is left."""
        for pid, deadline in list(self.running.items()):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                del self.running[pid]
            elif now >= deadline:
                _killpg(pid)
        return bool(self.running)

    def kill_all(self) -> None:
        """KILL every hook still running and reap it (the supervisor is going away)."""
        for pid in list(self.running):
            _killpg(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            del self.running[pid]


def _killpg(pid: int) -> None:
    # The hook is our unreaped child: its pid (and the group it leads) cannot have been
    # reused, so KILLing the group cannot hit a stranger.
    for kill in (os.killpg, os.kill):
        try:
            kill(pid, 9)
        except OSError:
            pass


__all__ = ["HookRunner"]
