"""Starting the job: ``posix_spawn`` into its own process group with pipes on 0/1/2, and
taking the per-user lock of ``spawn(lock=...)``. Used by the boot (first run) and by
restarts. Also the boot's two waits and catches that must not import anything heavy:
the sweep lock (:func:`wait_sweep_lock`) and the signals forwarded to the job
(:func:`catch_signals`).

Light on purpose (os, errno, _signal): the boot imports it before it reports.
"""

from __future__ import annotations

import _signal  # not `signal`: it imports enum, and the spawner is waiting
import errno
import os

from bgtask import _paths

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: signals a job must not inherit as ignored (Python ignores SIGPIPE and SIGXFSZ; the
#: supervisor ignores SIGHUP; a caller that ignores SIGCHLD would make the job's own
#: children vanish from its wait()).
RESET_SIGNALS = tuple(
    s for s in (getattr(_signal, n, None) for n in ("SIGPIPE", "SIGXFSZ", "SIGHUP", "SIGINT", "SIGCHLD"))
    if s is not None
)


class StartError(Exception):
    """The job could not be started; ``args`` is the report sent to the spawner."""


# -- the job -----------------------------------------------------------------------------

def resolve_program(argv0: str, env: dict[str, str]) -> list[str]:
    """Candidate paths for *argv0*, searched in the job's ``PATH`` like ``execvpe``."""
    if "/" in argv0:
        return [argv0]
    path = env.get("PATH", os.defpath)
    return [os.path.join(d or ".", argv0) for d in path.split(os.pathsep)]


def launch(argv: list[str], env: dict[str, str], cwd: str, lock_fd: int = -1,
           keep: tuple[int, ...] = (), limits: dict[str, int] | None = None) -> tuple[int, int, int, int]:
    """Start the job; returns ``(pid, stdin_w, stdout_r, stderr_r)``.

    The job gets its own process group (so signals reach its children too), pipes on
    0/1/2 and nothing else: every other fd of the supervisor is close-on-exec -- except
    *lock_fd*, the ``spawn(lock=...)`` lock, which the job inherits under the same
    number. A ``flock`` belongs to the open file description, so the job (and whatever
    it leaves running) keeps the lock held when the supervisor dies (SIGKILL, OOM):
    otherwise the next ``spawn(lock=...)`` would succeed beside the orphaned job.

    The fds in *keep* (a ``spawn(slot=)`` slot) are inherited the same way. A run with
    ``spawn(limits=)`` is forked instead (``limits.fork_exec``: rlimits need a child).

    :raises StartError: with the real reason (bad cwd, no such program, not executable).
    """
    fds: list[int] = []
    try:
        r0, w0 = small_pipe()
        fds += (r0, w0)
        r1, w1 = small_pipe(OUTPUT_PIPE)
        fds += (r1, w1)
        r2, w2 = small_pipe(OUTPUT_PIPE)
        fds += (r2, w2)
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise StartError("cwd", exc.errno, exc.strerror, cwd) from None
        try:
            if limits:
                from bgtask._supervisor.limits import fork_exec

                pid = fork_exec(argv, env, r0, w1, w2, (lock_fd, *keep), limits)
            else:
                pid = _spawn_path(argv, env, r0, w1, w2, lock_fd, keep)
        finally:
            os.chdir("/")  # do not keep the job's directory busy
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (r0, w1, w2):
        os.close(fd)
    return pid, w0, r1, r2


#: the size of a new job's output pipes: one page. The pump grows a pipe it finds
#: full to 1 MiB at once (``io.py``), so only an idle job keeps the small one.
OUTPUT_PIPE = 4096


def small_pipe(size: int = 4096) -> tuple[int, int]:
    """``os.pipe()`` of *size* bytes (one page by default). Pipes count against a
    per-user budget of pages (``pipe-user-pages-soft``, 16384) shared by every task:
    past it, a non-root user's new pipes get 2 pages and cannot grow, and a new job's
    output flows ~6x slower. At 16 pages a pipe, 340 idle tasks used it up; an idle
    task now holds 3 pages (stdin, stdout, stderr; its other wake-ups are an eventfd
    and a socketpair), which leaves room for ~5,000 idle tasks and for busy pipes
    (measured: ``benchmarks/test_bench_pipes.py``). The pump grows a busy output pipe
    (``io.py``)."""
    import fcntl  # already imported by the boot (make_files): free here

    r, w = os.pipe()
    try:
        fcntl.fcntl(w, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except OSError:
        pass  # not Linux, or refused: a default pipe works too
    return r, w


def _spawn_path(argv: list[str], env: dict[str, str], r0: int, w1: int, w2: int, lock_fd: int,
                keep: tuple[int, ...] = ()) -> int:
    actions = [
        (os.POSIX_SPAWN_DUP2, r0, 0),
        (os.POSIX_SPAWN_DUP2, w1, 1),
        (os.POSIX_SPAWN_DUP2, w2, 2),
    ]
    if lock_fd > 2:
        # dup2 onto itself clears close-on-exec in posix_spawn (POSIX 2024; glibc >= 2.29).
        actions.append((os.POSIX_SPAWN_DUP2, lock_fd, lock_fd))
    actions += [(os.POSIX_SPAWN_DUP2, fd, fd) for fd in keep if fd > 2]
    first_error: OSError | None = None
    for path in resolve_program(argv[0], env):
        try:
            # A stat is ~1 us; a spawn that fails in exec is a whole vfork (~100 us):
            # with a long PATH, the failed ones were a third of spawn()'s time.
            if not _could_exec(path):
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
            return os.posix_spawn(path, argv, env, file_actions=actions, setpgroup=0,
                                  setsigdef=RESET_SIGNALS, setsigmask=())
        except OSError as exc:
            # Like execvpe: keep looking after ENOENT/ENOTDIR/EACCES, report EACCES
            # (found but not executable) in preference to "not found".
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                raise StartError("exec", exc.errno, exc.strerror, argv[0]) from None
            if first_error is None or (exc.errno == errno.EACCES and first_error.errno != errno.EACCES):
                first_error = exc
    assert first_error is not None
    raise StartError("exec", first_error.errno, first_error.strerror, argv[0])


def _could_exec(path: str) -> bool:
    """Is *path* worth an exec: an executable regular file (as ``execve`` sees it, for
    our effective ids)? Raises ``OSError`` (ENOENT, ENOTDIR, ...) like ``execve`` would."""
    import stat

    st = os.stat(path)
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


def take_lock(pool: str, name: str) -> int:
    """Take the per-user lock *name* without waiting; returns the fd that holds it."""
    import fcntl

    path = _paths.lock_path(pool, os.geteuid(), name)
    try:
        fd = _paths.open_private(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise StartError("lockfile", exc.errno, exc.strerror, path) from None
    try:
        st = os.fstat(fd)
        if not _paths.is_mine(st):
            raise StartError("lockfile", errno.EACCES, "lock file belongs to another user", path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StartError("locked", errno.EAGAIN, f"lock {name!r} is held", name) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- the boot's waits and catches ------------------------------------------------------------

#: how long a new supervisor waits for the sweep lock (a sweeper holds it for a second or
#: two; a stopped process may hold it for ever). Shorter than spawn()'s own patience, so
#: that the spawner hears the real reason.
SWEEP_LOCK_WAIT = 20.0


def wait_sweep_lock(fd: int, path: str, report_fd: int = 1) -> None:
    """Take the sweep lock on *fd*, waiting while the spawner waits for us.

    A blocking ``flock`` used to wait for ever: a spawner that gave up ("did not report
    in time") was followed, once the lock was freed, by a job nobody had asked for any
    more. So: give up when the spawner closes its end of the report pipe *report_fd*
    (``POLLERR`` on our write end), or after :data:`SWEEP_LOCK_WAIT`.

    :raises StartError: the spawner is gone, or the wait was too long.
    """
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    import select  # only here, off the fast path
    import time

    poller = select.poll()
    poller.register(report_fd, select.POLLERR)
    deadline = time.monotonic() + SWEEP_LOCK_WAIT
    while True:
        if poller.poll(20):
            raise StartError("gone", errno.EPIPE, "the spawner gave up", None)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if time.monotonic() > deadline:
            raise StartError("sweeplock", errno.EAGAIN,
                             f"the pool's sweep lock {path!r} is held by another process", path)


def catch_signals() -> int:
    """Catch the signals a supervisor forwards to its job (TERM, INT, HUP, QUIT, USR1,
    USR2); returns the read end of the socketpair their numbers arrive on (the server reads
    it). Done before the boot reports, so that a ``kill <task id>`` right after
    ``spawn()`` returned is forwarded, never the supervisor's death."""
    import _socket

    # A socketpair, not a pipe: it costs nothing of the per-user pipe budget.
    a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM)
    r, w = a.detach(), b.detach()  # both close-on-exec (sockets are made so)
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    _signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    for sig in FORWARDED_SIGNALS:
        _signal.signal(sig, _caught)
    return r


def _caught(signum: int, frame: Any) -> None:
    """Replaces the default action (death; KeyboardInterrupt for SIGINT). The C handler
    has written the number to the wakeup fd already: the server forwards it from there,
    not from here -- a Python handler runs in the main thread between any two bytecodes,
    maybe while that thread holds the state's (non-reentrant) lock."""


#: the signals :func:`catch_signals` catches (API.md, "Signals sent to a supervisor by
#: hand"): only delete() or SIGKILL end a supervisor.
FORWARDED_SIGNALS = (_signal.SIGTERM, _signal.SIGINT, _signal.SIGHUP, _signal.SIGQUIT,
                     _signal.SIGUSR1, _signal.SIGUSR2)


__all__ = ["FORWARDED_SIGNALS", "RESET_SIGNALS", "SWEEP_LOCK_WAIT", "StartError", "catch_signals",
           "launch", "resolve_program", "take_lock", "wait_sweep_lock"]
