"""Pools: where tasks live, and how they are found again.

A :class:`TaskPool` is a location plus a backend (:mod:`bgtask._client.backend`) that
does everything that depends on it: spawning (options are checked in
:mod:`bgtask._client.spawn`), listing, connecting, sweeping the files of dead
supervisors (:mod:`bgtask._client.sweep`). Today the backend is always local
(:mod:`bgtask._client.local`).

The default pool is one place for ``spawn`` (``$BGTASK_POOL``, else /var/run/bgtask when
usable, else a per-user runtime directory), but *finding* through it looks in every
place the default could point to in another session (root created /var/run/bgtask
later; a login shell, ``su`` and cron see different ``$XDG_RUNTIME_DIR``s). An explicit
``$BGTASK_POOL`` is a choice, not a default: then only that directory is used.
"""

from __future__ import annotations

import os
import stat

from bgtask import _paths
from bgtask._client.local import LocalBackend
from bgtask._errors import AccessDeniedError, TaskNotFoundError, TaskUnresponsiveError
from bgtask._wire.names import DEFAULT_MAX_BUFFER, DEFAULT_RETAIN_OUTPUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from bgtask._client.backend import PoolBackend
    from bgtask._client.task import Task

SYSTEM_POOL = "/var/run/bgtask"


def _user_runtime_pool() -> Path:
    from pathlib import Path

    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg) and os.access(xdg, os.W_OK | os.X_OK):
        return Path(xdg, "bgtask")
    import tempfile  # here: with $BGTASK_POOL set, listing never needs it (~3 ms)

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


def _default_pool_path() -> str | Path:
    env = os.environ.get("BGTASK_POOL")
    if env:
        return env
    if _system_pool_usable():
        return SYSTEM_POOL
    return _user_runtime_pool()


def _default_places() -> list[str]:
    """Every place the default pool could point to, in any session of this user."""
    uid = os.geteuid()
    places = [SYSTEM_POOL]
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        places.append(os.path.join(os.path.abspath(xdg), "bgtask"))
    # where systemd puts XDG_RUNTIME_DIR, for sessions (cron, su) that had none
    places.append(f"/run/user/{uid}/bgtask")
    import tempfile

    places.append(os.path.join(tempfile.gettempdir(), f"bgtask-{uid}"))
    places.append(f"/tmp/bgtask-{uid}")
    return places


def _local_backend(path: str | os.PathLike[str] | None) -> LocalBackend:
    explicit = path is not None or bool(os.environ.get("BGTASK_POOL"))
    p = os.path.abspath(os.fspath(path) if path is not None else _default_pool_path())
    _paths.check_pool_path(p)
    shared = p == SYSTEM_POOL
    # (the names first: a path with another name cannot be the per-user default)
    per_user = path is None and os.path.basename(p) in ("bgtask", f"bgtask-{os.geteuid()}") and \
        p == str(_user_runtime_pool())
    dirs = [p] if explicit else [p, *_default_places()]
    return LocalBackend(dirs, mode=0o1777 if shared else 0o700, per_user=per_user)


class TaskPool:
    """A view of one pool.

    :param path: the directory; ``None`` resolves it like :func:`default_pool`. Nothing
        is created here: a missing directory is created (mode 0700; ``/var/run/bgtask``
        1777, like /tmp) when a task is first spawned in it, and an existing
        directory's mode is never changed.
    :raises ValueError: the path is too long to leave room for Unix socket names.
    :raises NotADirectoryError: the path exists and is not a directory.
    :raises AccessDeniedError: a per-user default directory exists but belongs to
        someone else (it could have been planted in /tmp).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *,
                 remote_python: str | None = None) -> None:
        url = path if path is not None else os.environ.get("BGTASK_POOL") or None
        backend: PoolBackend
        self._path: str | None
        if isinstance(url, str) and url.startswith("ssh://"):
            # A pool on another host (``_client/ssh.py``): nothing connects here.
            from bgtask._client.ssh import parse_url

            backend = parse_url(url, remote_python)
            self._path = None
        else:
            if remote_python is not None:
                raise ValueError("remote_python= is for ssh:// pools only")
            backend = _local_backend(path)
            self._path = str(backend)
        backend.check()
        self._backend = backend

    @property
    def path(self) -> Path:
        """The pool directory (where a spawn puts its task); of a remote pool, the
        directory on its host (asked from the host if the URL named none)."""
        from pathlib import Path

        if self._path is None:
            return Path(getattr(self._backend, "directory"))  # noqa: B009 (only SshBackend has it)
        return Path(self._path)

    @property
    def backend(self) -> PoolBackend:
        """What the pool's operations go through (see ``_client.backend``)."""
        return self._backend

    def __str__(self) -> str:
        return str(self._backend)

    def __repr__(self) -> str:
        try:
            n = len(self._backend.pids(sweep=False))
            count = f"{n} task{'s' if n != 1 else ''}"
        except OSError:
            count = "unreadable"
        return f"<bgtask.TaskPool {str(self)!r} {count}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        """IPython: the repr, plus the ``bgtask ls`` table when shown on its own."""
        from bgtask._format import pretty_pool

        pretty_pool(self, p, cycle)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TaskPool) and str(other._backend) == str(self._backend)

    def __hash__(self) -> int:
        return hash(str(self._backend))

    def __reduce__(self) -> Any:
        return (TaskPool, (str(self._backend),))

    def __dir__(self) -> list[str]:
        # tab completion: the everyday API (``backend`` still works; it is the seam)
        return ["path", "spawn", "search", "clean"]

    # -- spawn -------------------------------------------------------------------------------

    def spawn(
        self,
        argv: Sequence[str] | str,
        *,
        env: Mapping[str, str | None] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        meta: Mapping[str, Any] | None = None,
        retain_output: int = DEFAULT_RETAIN_OUTPUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        on_full: str = "block",
        shell: bool = False,
        lock: str | None = None,
        **operations: Any,
    ) -> Task:
        """Start *argv* under a new supervisor in this pool; see the contract in the README.

        Returns only when the job has really been started (exec'd).

        :raises TypeError: *argv* is not a list of str (or a str with ``shell=True``),
            a meta value cannot be serialized by dill, or an option has the wrong type.
        :raises ValueError: a negative size, an unknown ``on_full``, a bad lock name,
            a NUL character in argv, env or cwd.
        :raises SpawnError: the job could not be started (no such program, not
            executable, bad cwd); nothing is left behind.
        :raises TaskLockedError: the lock is held by another task.

        The operations options (``timeout``, ``grace``, ``restart``, ``restart_delay``,
        ``max_restarts``, ``on_exit``, ``slot``, ``limits``; see the README's
        "Operations") are keyword-only too; an unknown keyword is a ``TypeError``.
        """
        from bgtask._client.spawn import build_spec
        from bgtask._client.task import Task

        spec = build_spec(self._backend, argv, env=env, cwd=cwd, meta=meta, retain_output=retain_output,
                          max_buffer=max_buffer, on_full=on_full, shell=shell, lock=lock, **operations)
        return Task(self._backend.spawn(spec), self)

    # -- search ------------------------------------------------------------------------------

    def search(self, where: Callable[[dict[str, Any]], Any] | None = None, **pattern: Any) -> list[Task]:
        """Live tasks of the caller, sorted by pid, whose info matches.

        :param where: a callable taking the info dict; an exception in it counts as no
            match.
        :param pattern: a recursive subset match against the info dict (dicts match as
            subsets, other values with ``==``), e.g. ``status={"running": True}``.
        :raises TypeError: *where* is not callable.
        """
        if where is not None and not callable(where):
            raise TypeError("where must be a callable taking the info dict")
        out = []
        for task in self._live_tasks():
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
        pids = self._backend.pids()
        if not pids:
            return []
        # Imported here: an empty pool lists without the connection machinery
        # (multiprocessing, dill), a third of an empty ``bgtask ls``.
        from bgtask._client.task import Task

        # Status records first: a file read per task instead of a connection, a
        # handshake and a supervisor thread (0.7 ms a task). A task whose record cannot
        # be trusted (missing, stale, a stopped supervisor...) is asked below.
        known: dict[int, Task] = {}
        for pid, raw in self._backend.records(pids).items():
            task = Task(pid, self)
            task._keep_info(raw)
            known[pid] = task
        pids = [pid for pid in pids if pid not in known]

        def probe(pid: int) -> Task | None:
            task = Task(pid, self)
            try:
                task._load_info_once()
            except TaskNotFoundError:
                # Refused -- or a supervisor that died while we were connecting (the
                # connection was accepted, then reset). The backend's sweep proves
                # death itself (the socket must refuse, under the sweep lock).
                self._backend.sweep(pid)
                return None
            except TaskUnresponsiveError as exc:
                # Stopped or hung: listed, never dropped (a task that vanished from ls
                # while it still holds its job and output would be lost to its user).
                task._keep_placeholder(self._backend.unresponsive_info(pid, exc.since))
            except AccessDeniedError:
                return None
            return task

        if len(pids) <= 1:
            results = [probe(pid) for pid in pids]
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=min(8, len(pids)), thread_name_prefix="bgtask-search") as ex:
                results = list(ex.map(probe, pids))
        found = list(known.values()) + [t for t in results if t is not None]
        return sorted(found, key=lambda t: t.pid)

    def clean(self) -> list[int]:
        """Delete every finished task of the caller; returns their pids."""
        done = []
        # An unresponsive task is not known to be finished: its supervisor cannot say.
        for task in self.search(lambda info: info.get("state") != "unresponsive", status={"running": False}):
            try:
                task.delete()
            except TaskNotFoundError:
                continue
            done.append(task.pid)
        return done


def _matches(value: Any, pattern: Any) -> bool:
    from collections.abc import Mapping

    if isinstance(pattern, Mapping):
        if not isinstance(value, Mapping):
            return False
        return all(k in value and _matches(value[k], p) for k, p in pattern.items())
    try:
        return bool(value == pattern)
    except Exception:
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


__all__ = ["SYSTEM_POOL", "TaskPool", "default_pool", "search", "spawn"]
