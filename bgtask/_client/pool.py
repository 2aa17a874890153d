"""Pools: where tasks live, how a job is spawned, how tasks are found again.

A pool is a directory (see ``_paths`` for what is in it). ``spawn`` starts a supervisor
(``_supervisor``) and waits for its report; ``search`` connects to every supervisor of
the caller's concurrently; a supervisor proven dead (its socket refuses connections) has
its files swept and its orphaned job, if still running, terminated.
"""

from __future__ import annotations

import errno
import marshal
import os
import re
import select
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bgtask import _paths, _process
from bgtask._client import codec as _codec
from bgtask._client.connection import refuses as _refuses
from bgtask._errors import AccessDeniedError, SpawnError, TaskNotFoundError
from bgtask._wire.faults import start_error_to_exception

if TYPE_CHECKING:
    from bgtask._client.task import Task

DEFAULT_MAX_BUFFER = 64 << 20
SYSTEM_POOL = "/var/run/bgtask"
#: how long spawn() waits for a supervisor to report before giving up on it.
SPAWN_TIMEOUT = 30.0
#: a token file without a socket is left alone this long (its supervisor may be starting).
_STARTING_GRACE = 30.0
_LOCK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,99}\Z")
_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The supervisor's command line: an isolated interpreter (-I -S: no site, no user
# paths, no PYTHON* variables) that imports bgtask's supervisor modules without
# bgtask/__init__ (and so without dill and filelock). See _supervisor.py.
_BOOT = ("import sys;m=type(sys)('bgtask');m.__path__=[sys.argv[1]];sys.modules['bgtask']=m;"
         "import bgtask._supervisor.boot as s;s.main(sys.argv[2])")


def _user_runtime_pool() -> Path:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg, "bgtask")
    return Path(tempfile.gettempdir(), f"bgtask-{os.geteuid()}")


def _system_pool_usable() -> bool:
    try:
        st = os.stat(SYSTEM_POOL)
    except FileNotFoundError:
        parent = os.path.dirname(SYSTEM_POOL)
        return os.geteuid() == 0 and os.access(parent, os.W_OK | os.X_OK)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and os.access(SYSTEM_POOL, os.W_OK | os.X_OK)


def _default_pool_path() -> Path:
    env = os.environ.get("BGTASK_POOL")
    if env:
        return Path(env)
    if _system_pool_usable():
        return Path(SYSTEM_POOL)
    return _user_runtime_pool()


class TaskPool:
    """A view of one pool directory.

    :param path: the directory; ``None`` resolves it like :func:`default_pool`. A missing
        directory is created with mode 0700 (``/var/run/bgtask`` with 1777, like /tmp);
        an existing directory's mode is never changed.
    :raises ValueError: the path is too long to leave room for Unix socket names.
    :raises NotADirectoryError: the path exists and is not a directory.
    :raises AccessDeniedError: a per-user default directory exists but belongs to
        someone else (it could have been planted in /tmp).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        explicit = path is not None
        p = Path(os.path.abspath(os.fspath(path))) if explicit else _default_pool_path()  # type: ignore[arg-type]
        p = Path(os.path.abspath(p))
        _paths.check_pool_path(str(p))
        self._path = p
        self._ensure(shared=str(p) == SYSTEM_POOL, per_user=not explicit and p == _user_runtime_pool())

    def _ensure(self, shared: bool, per_user: bool) -> None:
        path = str(self._path)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            mode = 0o1777 if shared else 0o700
            try:
                os.makedirs(path, mode=mode)
                os.chmod(path, mode)  # we created it: make the mode exact despite the umask
            except FileExistsError:
                pass
            st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            if per_user:
                raise AccessDeniedError(f"pool directory {path} is a symlink (planted?)")
            st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "pool path is not a directory", path)
        if per_user and st.st_uid != os.geteuid():
            raise AccessDeniedError(f"pool directory {path} belongs to uid {st.st_uid}, not to you",
                                    owner=st.st_uid)

    @property
    def path(self) -> Path:
        return self._path

    def __repr__(self) -> str:
        try:
            mine, _ = _paths.task_pids(str(self._path))
            n = f"{len(mine)} task{'s' if len(mine) != 1 else ''}"
        except OSError:
            n = "unreadable"
        return f"<bgtask.TaskPool {str(self._path)!r} {n}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython: the repr, plus the ``bgtask ls`` table when shown on its own."""
        from bgtask._format import pretty_pool

        pretty_pool(self, p, cycle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskPool) and other._path == self._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __reduce__(self) -> Any:
        return (TaskPool, (str(self._path),))

    # -- spawn -------------------------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str] | str,
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        retain_output: int = 0,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        on_full: str = "block",
        shell: bool = False,
        lock: str | None = None,
    ) -> Task:
        """Start *argv* under a new supervisor in this pool; see the contract in the README.

        Returns only when the job has really been started (exec'd).

        :raises TypeError: *argv* is not a list of str (or a str with ``shell=True``),
            a meta value cannot be serialized by dill, or an option has the wrong type.
        :raises ValueError: a negative size, an unknown ``on_full``, a bad lock name.
        :raises SpawnError: the job could not be started (no such program, not
            executable, bad cwd); nothing is left behind.
        :raises TaskLockedError: the lock is held by another task.
        """
        from bgtask._client.task import Task

        cfg = self._spawn_config(argv, env, cwd, meta, retain_output, max_buffer, on_full, shell, lock)
        for _attempt in range(5):
            pid, job_env = self._start_supervisor(cfg)
            if pid is not None:
                return Task(pid, self)
        raise SpawnError("cannot start the job: no free task name in the pool (files of other "
                         "users hold the names of the pids we got)")

    def _spawn_config(self, argv: Any, env: Any, cwd: Any, meta: Any, retain_output: Any,
                      max_buffer: Any, on_full: Any, shell: Any, lock: Any) -> dict[str, Any]:
        if not isinstance(shell, bool):
            raise TypeError("shell must be a bool")
        command = None
        if shell:
            if not isinstance(argv, str):
                raise TypeError("with shell=True, argv must be a str (a shell command line)")
            command = argv
            args = ["/bin/sh", "-c", argv]
        else:
            if isinstance(argv, (str, bytes)):
                raise TypeError("argv must be a list of str (exec form); pass shell=True to run a "
                                "command line through /bin/sh")
            if not isinstance(argv, Sequence):
                raise TypeError(f"argv must be a list of str, not {type(argv).__name__}")
            args = [os.fspath(a) if isinstance(a, os.PathLike) else a for a in argv]
            if not args:
                raise ValueError("argv must not be empty")
            if args[0] == "":
                # posix_spawn refuses it in the supervisor, after the files were made.
                raise ValueError("argv[0] (the program) must not be an empty string")
            for a in args:
                if not isinstance(a, str):
                    raise TypeError(f"argv must be a list of str, found {type(a).__name__} {a!r}")
        for a in args:
            if "\0" in a:
                raise ValueError("argv must not contain NUL characters")
        job_env = dict(os.environ)
        if env is not None:
            if not isinstance(env, Mapping):
                raise TypeError(f"env must be a mapping, not {type(env).__name__}")
            for k, v in env.items():
                if not isinstance(k, str) or not k or "=" in k or "\0" in k:
                    raise ValueError(f"bad environment variable name {k!r}")
                if v is None:
                    job_env.pop(k, None)
                elif isinstance(v, str) and "\0" not in v:
                    job_env[k] = v
                else:
                    raise TypeError(f"env value of {k!r} must be a str or None, not {v!r}")
        job_env["BGTASK_POOL"] = str(self._path)
        job_env.pop("BGTASK_PID", None)  # the supervisor sets its own
        if cwd is None:
            try:
                cwd = os.getcwd()
            except FileNotFoundError:
                raise SpawnError("cannot start the job: the current directory was deleted; pass cwd=") from None
        else:
            cwd = os.path.abspath(os.fspath(cwd))
        for name, value, minimum in (("retain_output", retain_output, 0), ("max_buffer", max_buffer, 1)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, not {type(value).__name__}")
            if value < minimum:
                raise ValueError(f"{name} must be >= {minimum}, not {value}")
        if on_full not in ("block", "drop"):
            raise ValueError(f"on_full must be 'block' or 'drop', not {on_full!r}")
        if lock is not None:
            if not isinstance(lock, str):
                raise TypeError(f"lock must be a str, not {type(lock).__name__}")
            if not _LOCK_NAME.match(lock):
                raise ValueError(f"bad lock name {lock!r}: use letters, digits and _.@+- (at most 100)")
        blobs = _codec.encode_meta({} if meta is None else dict(meta) if isinstance(meta, Mapping) else meta)
        return {"argv": args, "env": job_env, "cwd": cwd, "meta": blobs, "retain": retain_output,
                "max_buffer": max_buffer, "drop": on_full == "drop", "lock": lock, "shell": shell,
                "command": command}

    def _start_supervisor(self, cfg: dict[str, Any]) -> tuple[int | None, dict[str, str]]:
        """Start one supervisor; ``(pid, env)``, or ``(None, env)`` on a name collision."""
        exe = sys.executable
        if not exe:
            raise SpawnError("cannot start a supervisor: sys.executable is unknown")
        data = marshal.dumps(cfg)
        try:
            proc = subprocess.Popen(
                [exe, "-I", "-S", "-c", _BOOT, _PKG_DIR, str(self._path)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                close_fds=True, start_new_session=True, cwd="/", env=cfg["env"],
            )
        except OSError as exc:
            raise SpawnError(f"cannot start a supervisor ({exe}): {exc.strerror}", exc.errno, exe) from None
        pid = None
        final: tuple[Any, ...] | None = None
        try:
            assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
            try:
                proc.stdin.write(data)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            for msg in _read_reports(proc.stdout.fileno(), SPAWN_TIMEOUT):
                if msg[0] == "pid":
                    pid = msg[1]
                else:
                    final = msg
                    break
            if final is None:
                err = _read_nonblocking(proc.stderr.fileno())
        finally:
            for f in (proc.stdin, proc.stdout, proc.stderr):
                if f is not None:
                    f.close()
            proc.wait()  # the intermediate exits right after its fork
        if final is not None and final[0] == "ok":
            return final[1], cfg["env"]
        if final is not None:
            if final[1] == "collision":
                return None, cfg["env"]
            raise start_error_to_exception(final[1:])
        # No report: the supervisor died or hung while starting. Leave nothing behind.
        if pid is not None:
            _sweep(str(self._path), pid, force_if_silent=True)
        text = err.decode(errors="replace").strip()
        raise SpawnError("cannot start the job: the supervisor " +
                         (f"failed: {text.splitlines()[-1]}" if text else "did not report in time"))

    # -- search ------------------------------------------------------------------------------

    def search(self, where: Callable[[dict[str, Any]], Any] | None = None, **pattern: Any) -> list[Task]:
        """Live tasks of the caller, sorted by pid, whose info matches.

        :param where: a callable taking the info dict; an exception in it counts as no
            match.
        :param pattern: a recursive subset match against the info dict (dicts match as
            subsets, other values with ``==``), e.g. ``status={"running": True}``.
        """
        if where is not None and not callable(where):
            raise TypeError("where must be a callable taking the info dict")
        tasks = self._live_tasks()
        out = []
        for task in tasks:
            info = task.info()
            if pattern and not _matches(info, pattern):
                continue
            if where is not None:
                try:
                    if not where(info):
                        continue
                except Exception:
                    continue
            out.append(task)
        return out

    def _live_tasks(self) -> list[Task]:
        from bgtask._client.task import Task

        pool = str(self._path)
        self._sweep_orphan_tokens()
        mine, _others = _paths.task_pids(pool)
        if not mine:
            return []

        def probe(pid: int) -> Task | None:
            task = Task(pid, self)
            try:
                task._load_info_once()
            except TaskNotFoundError:
                # Refused -- or a supervisor that died while we were connecting (the
                # connection was accepted, then reset). _sweep proves death itself (the
                # socket must refuse, under the sweep lock) before removing anything.
                _sweep(pool, pid)
                return None
            except (AccessDeniedError, TimeoutError):
                return None
            return task

        if len(mine) == 1:
            results = [probe(mine[0])]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(8, len(mine)), thread_name_prefix="bgtask-search") as ex:
                results = list(ex.map(probe, mine))
        return [t for t in results if t is not None]

    def _sweep_orphan_tokens(self) -> None:
        pool = str(self._path)
        for pid in _paths.orphan_token_pids(pool):
            path = _paths.token_path(pool, pid)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not _paths.is_mine(st):
                continue
            # No socket beside the token: the supervisor died while starting -- or is
            # starting right now. Only a pid that is gone, or that is (after the grace
            # time) some other program than a supervisor, proves it dead.
            state = _process.proc_state(pid)
            if state in (None, "Z") or (time.time() - st.st_mtime > _STARTING_GRACE
                                        and not _is_supervisor(pid)):
                _sweep(pool, pid, force_if_silent=True)

    def clean(self) -> list[int]:
        """Delete every finished task of the caller; returns their pids."""
        done = []
        for task in self.search(status={"running": False}):
            try:
                task.delete()
            except TaskNotFoundError:
                continue
            done.append(task.pid)
        return done


def _is_supervisor(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"bgtask._supervisor" in f.read()
    except OSError:
        return False


def _matches(value: Any, pattern: Any) -> bool:
    if isinstance(pattern, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(k in value and _matches(value[k], p) for k, p in pattern.items())
    try:
        return bool(value == pattern)
    except Exception:
        return False


def _read_reports(fd: int, timeout: float) -> Any:
    """Yield the supervisor's length-prefixed marshal reports until EOF or *timeout*."""
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            n = int.from_bytes(buf[:4], "big")
            yield marshal.loads(buf[4 : 4 + n])
            buf = buf[4 + n :]
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        r, _, _ = select.select([fd], [], [], remaining)
        if not r:
            return
        part = os.read(fd, 65536)
        if not part:
            return
        buf += part


def _read_nonblocking(fd: int) -> bytes:
    r, _, _ = select.select([fd], [], [], 1.0)
    return os.read(fd, 65536) if r else b""


def _sweep(pool: str, pid: int, force_if_silent: bool = False) -> bool:
    """Remove the files of a dead supervisor of ours and stop its orphaned job.

    Dead is proven by the socket refusing connections, or -- for a supervisor that never
    bound one (``force_if_silent``) -- by the missing socket. Runs under the user's sweep
    lock, which a new supervisor takes while creating its files, so that a supervisor
    that just got the same pid never loses its fresh files.
    """
    lock = _sweep_lock(pool)
    try:
        sock = _paths.sock_path(pool, pid)
        try:
            st = os.lstat(sock)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not _paths.is_mine(st) or not stat.S_ISSOCK(st.st_mode):
                return False
            if not _refuses(sock):
                return False
        elif not force_if_silent:
            return False
        try:
            _token, job_pid, job_start = _paths.read_token_file(pool, pid)
        except (OSError, ValueError):
            job_pid = job_start = None
        if job_pid and job_start:
            _stop_orphan(job_pid, job_start)
        else:
            # No job recorded: the supervisor died in the moment between starting its
            # job and recording it (or after the job ended, leaving descendants). Its
            # processes still carry its BGTASK_PID and BGTASK_POOL in their environment.
            _stop_by_environment(pool, pid)
        try:
            if st is not None:
                _paths.remove_if_mine(sock, st)
            _paths.remove_if_mine(_paths.token_path(pool, pid))
        except OSError:
            return False  # a pool we may not write to (any more): the files stay
        return True
    finally:
        if lock is not None:
            lock.release()


def _sweep_lock(pool: str) -> Any:
    path = _paths.sweep_lock_path(pool, os.geteuid())
    try:
        st = os.lstat(path)
        if not _paths.is_mine(st) or not stat.S_ISREG(st.st_mode):
            return None  # planted by someone else: never open it
    except FileNotFoundError:
        pass
    import filelock

    lock = filelock.FileLock(path, mode=0o600, timeout=10, thread_local=False)
    try:
        lock.acquire()
    except (filelock.Timeout, OSError):
        return None
    return lock




def _stop_orphan(job_pid: int, job_start: int) -> None:
    """TERM (then KILL) the process group of a job whose supervisor died."""
    if not _orphan_group_is_ours(job_pid, job_start):
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):
        try:
            os.killpg(job_pid, sig)
        except OSError:
            if _process.proc_start_time(job_pid) == job_start:
                try:
                    os.kill(job_pid, sig)  # the job left its process group
                except OSError:
                    pass
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if _process.proc_state(job_pid) in (None, "Z") and not _live_members(job_pid):
            return
        time.sleep(0.02)
    if _orphan_group_is_ours(job_pid, job_start):
        try:
            os.killpg(job_pid, signal.SIGKILL)
        except OSError:
            pass


def _stop_by_environment(pool: str, pid: int) -> None:
    """TERM (then KILL) our processes whose environment names supervisor *pid* of *pool*."""
    needles = (f"BGTASK_PID={pid}".encode(), f"BGTASK_POOL={pool}".encode())
    me, euid = os.getpid(), os.geteuid()
    found: dict[int, int | None] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if not name.isdigit() or int(name) == me:
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != euid:
                continue
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if all(n in env for n in needles):
            found[int(name)] = _process.proc_start_time(int(name))
    if not found:
        return
    for sig in (signal.SIGTERM, signal.SIGCONT):
        for p in found:
            try:
                os.kill(p, sig)
            except OSError:
                pass
    deadline = time.monotonic() + 1.0
    alive = dict(found)
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = {p: t for p, t in alive.items()
                 if _process.proc_start_time(p) == t and _process.proc_state(p) not in (None, "Z")}
    for p, t in alive.items():
        if _process.proc_start_time(p) == t:  # still the same process: not a reused pid
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass


def _orphan_group_is_ours(job_pid: int, job_start: int) -> bool:
    """Is process group *job_pid* the orphaned job's?

    Yes if its leader is the recorded job (same pid *and* start time). Also if the
    leader is gone but the group still has members -- children the job left behind when
    it died of the SIGTERM (or SIGPIPE) that they ignore: the kernel does not hand out a
    pid while a process group of that id exists, so no unrelated process can lead it.
    """
    start = _process.proc_start_time(job_pid)
    if start is not None:
        return start == job_start
    return _group_alive(job_pid)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except OSError:
        return False
    return True


def _live_members(pgid: int) -> bool:
    """Does process group *pgid* have a member that is not a zombie? (Orphans' zombies
    wait for init, which may be slow to reap them: they must not hold up a sweep.)"""
    if not _group_alive(pgid):
        return False
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _process.proc_stat(int(name))
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


def default_pool() -> TaskPool:
    """``$BGTASK_POOL``, else /var/run/bgtask when usable, else a per-user runtime
    directory (``$XDG_RUNTIME_DIR/bgtask`` or ``<tmp>/bgtask-<uid>``)."""
    return TaskPool()


def spawn(argv: Sequence[str] | str, **options: Any) -> Task:
    """``default_pool().spawn(argv, **options)``."""
    return default_pool().spawn(argv, **options)


def search(where: Callable[[dict[str, Any]], Any] | None = None, **pattern: Any) -> list[Task]:
    """``default_pool().search(where, **pattern)``."""
    return default_pool().search(where, **pattern)


__all__ = ["TaskPool", "default_pool", "search", "spawn"]
