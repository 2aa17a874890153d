"""The supervisor's start: from ``exec`` to "the job is running" as fast as possible.

``spawn`` runs ``python -I -S -c <BOOT> <package dir> <pool>`` in a new session (see
``_pool.py``). The boot line registers an empty ``bgtask`` package object, so that this
module and the few light modules it needs are imported *without* ``bgtask/__init__``
(which would pull in dill and filelock: the supervisor never needs them; meta values and
messages are opaque blobs to it). Then :func:`main`:

1. reads the spawn configuration (a ``marshal`` blob) from stdin;
2. forks once more and lets the intermediate exit, so that the supervisor is not a child
   of the caller (no zombie in the caller; it survives the caller's exit);
3. creates ``<pid>.token`` (0600) and binds ``<pid>.sock`` (0600), takes the lock of
   ``spawn(lock=...)``, and starts the job with ``posix_spawn`` (own process group, pipes
   on 0/1/2, nothing else inherited);
4. reports ``("ok", pid, job_pid)`` -- or the real reason it failed, after removing its
   files -- on stdout, which the caller of ``spawn`` reads, and detaches from the caller's
   pipes;
5. only then imports threading and ``multiprocessing.managers`` and serves
   (``main_loop.py``: the service, the server, the main thread's loop). A client that
   connects earlier waits in the listen backlog: the socket is bound before ``spawn``
   returns.

Nothing here imports more than ``os``, ``marshal``, ``fcntl``, ``_socket`` and ``signal``
before the report: the caller of ``spawn`` is waiting.
"""

from __future__ import annotations

import _signal  # not `signal`: it imports enum, and the spawner is waiting
import errno
import marshal
import os
import sys

from bgtask import _paths, _process
from bgtask._supervisor import threads
from bgtask._supervisor.launch import StartError, catch_signals, launch, take_lock, wait_sweep_lock

# The supervisor imports this module: typing costs it ~2.5 ms and memory at start-up,
# so it is only imported for type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from bgtask._wire.schema import JobSpec

# -- status reports to the spawner -------------------------------------------------------

def report(msg: tuple[Any, ...], fd: int = 1) -> bool:
    """Send *msg* to the spawner; False if it is gone (it gave up on us)."""
    data = marshal.dumps(msg)
    data = len(data).to_bytes(4, "big") + data
    while data:
        try:
            n = os.write(fd, data)
        except OSError:
            return False  # EPIPE: the spawner closed its end
        data = data[n:]
    return True


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    while True:
        part = os.read(fd, 1 << 20)
        if not part:
            return b"".join(parts)
        parts.append(part)


# -- start-up ----------------------------------------------------------------------------

class Startup:
    """What the fast path made, handed to the serving phase."""

    def __init__(self, pool: str, config: JobSpec) -> None:
        self.pool = pool
        self.config = config
        self.pid = os.getpid()
        self.token_fd = -1
        self.token = b""
        self.sock: Any = None
        self.lock_fd = -1
        #: the fd holding the ``spawn(slot=)`` slot of the running job (``slots.py``)
        self.slot_fd = -1
        #: None after start(): queued, waiting for a slot (the service starts it later)
        self.job: tuple[int, int, int, int] | None = None
        #: where the numbers of the signals to forward to the job arrive (catch_signals)
        self.signal_fd = -1

    def make_files(self) -> None:
        import _socket
        import fcntl

        pool, pid = self.pool, self.pid
        # Serialise with a sweeper that is removing a dead supervisor's files under this
        # very pid, so that it cannot remove ours by mistake.
        lock_fd = -1
        try:
            lock_fd = _paths.open_private(_paths.sweep_lock_path(pool, os.geteuid()),
                                          os.O_RDWR | os.O_CREAT, 0o600)
            if _paths.is_mine(os.fstat(lock_fd)):
                wait_sweep_lock(lock_fd, _paths.sweep_lock_path(pool, os.geteuid()))
        except OSError:
            pass  # a planted or unwritable lock file: go on without it
        try:
            try:
                self.token_fd, self.token = _paths.create_token_file(pool, pid)
            except FileExistsError as exc:
                raise StartError("collision", exc.errno, "task files of another user", pool) from None
            except OSError as exc:
                # The pool was deleted, or is not writable: say so, not with a traceback.
                raise StartError("pool", exc.errno, exc.strerror, pool) from None
            # Held for our whole life (the kernel drops it when we die): readers of the
            # status record believe it only while this lock is held.
            fcntl.flock(self.token_fd, fcntl.LOCK_EX)
            # A record left by a dead supervisor that had our pid is not ours.
            _paths.remove_if_mine(_paths.record_path(pool, pid))
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
            path = _paths.sock_path(pool, pid)
            old_umask = os.umask(0o177)  # the socket file is created 0600; single-threaded here
            try:
                try:
                    sock.bind(path)
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise StartError("pool", exc.errno, exc.strerror, pool) from None
                    if not _paths.remove_if_mine(path):
                        raise StartError("collision", exc.errno, exc.strerror, path) from None
                    sock.bind(path)  # a stale socket of ours with our pid: its owner is dead
            finally:
                os.umask(old_umask)
            sock.listen(1024)  # 400 clients at once wait in it rather than fail
            self.sock = sock
        finally:
            if lock_fd >= 0:
                os.close(lock_fd)

    def start(self) -> None:
        cfg = self.config
        # The job (and its descendants) find their supervisor through these:
        # bgtask.current() and default_pool() inside the job.
        cfg["env"]["BGTASK_PID"] = str(self.pid)
        cfg["env"]["BGTASK_POOL"] = self.pool
        self.make_files()
        if cfg["lock"]:
            self.lock_fd = take_lock(self.pool, cfg["lock"])
        if cfg.get("slot"):
            from bgtask._supervisor import slots

            if not slots.hold(self):
                return  # queued: the service starts the job when a slot frees
        if _spawner_gone():
            # It gave up while we waited for a lock: starting the job now would leave a
            # job nobody asked for any more behind its SpawnError.
            raise StartError("gone", errno.EPIPE, "the spawner gave up", None)
        self.job = launch(cfg["argv"], cfg["env"], cfg["cwd"], self.lock_fd, (self.slot_fd,),
                          cfg.get("limits"))
        _paths.write_job_record(self.token_fd, self.job[0], _process.proc_start_time(self.job[0]))

    def remove_files(self) -> None:
        if self.sock is not None:
            _paths.remove_if_mine(_paths.sock_path(self.pool, self.pid))
            self.sock.close()
            self.sock = None
        if self.token_fd >= 0:
            _paths.remove_if_mine(_paths.record_path(self.pool, self.pid))
            _paths.remove_if_mine(_paths.token_path(self.pool, self.pid))
            os.close(self.token_fd)
            self.token_fd = -1


def _spawner_gone(fd: int = 1) -> bool:
    """Has the spawner closed its end of our report channel (fd 1: a pipe, or the fork
    server's connection)? A closed reader shows as POLLERR on a pipe's write end, and as
    POLLHUP on a Unix stream socket; poll reports both whatever was asked."""
    import select  # a built-in module: no cost worth deferring further

    poller = select.poll()
    poller.register(fd, 0)
    return bool(poller.poll(0))


def _detach_stdio() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def use_builtin_hashes() -> None:
    """Have ``hashlib`` and ``hmac`` use CPython's built-in SHA-256 and MD5, not OpenSSL.

    The handshake's HMAC is all a supervisor hashes (a few per connection). Through
    ``_hashlib`` it mapped libcrypto and touched 1.2 MB of it in every supervisor: RSS
    that stayed (issue 12's bar is RSS). The built-in modules are small and as correct;
    ``hmac`` then computes the HMAC in Python and compares with
    ``_operator._compare_digest`` (constant time). Kept as it was if the interpreter
    was built without the built-in SHA-256 (``--with-builtin-hashlib-hashes``), or if
    ``_hashlib`` is already imported."""
    if "_hashlib" in sys.modules:
        return
    try:
        import _sha256  # noqa: F401  (3.11; hashlib imports it next in any case)
    except ImportError:
        try:
            import _sha2  # noqa: F401  (3.12 on)
        except ImportError:
            return
    sys.modules["_hashlib"] = None  # type: ignore[assignment]  # "import _hashlib" fails


#: modules a supervisor never uses that its imports would load: ``multiprocessing.managers``
#: falls back cleanly without ``shared_memory`` (``HAS_SHMEM = False``: secrets,
#: resource_tracker, mmap... ~1 MB), and ``shutil`` (through ``multiprocessing.connection``
#: and ``tempfile``) without the compressors it only archives with.
UNUSED_MODULES = ("multiprocessing.shared_memory", "bz2", "lzma", "zlib")


def skip_unused_modules() -> None:
    """Make ``import`` of :data:`UNUSED_MODULES` fail in this process (a supervisor or
    the fork server; never a job, which is exec'd), unless one is imported already.
    Measured on the fork server after its warm-up (Debian's and pyenv's 3.11): bz2, lzma
    and zlib were 350-450 kB of RSS (200 kB of heap, every supervisor's RSS too, and
    their libraries)."""
    for name in UNUSED_MODULES:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]


def main(pool: str) -> None:
    """Entry point of the supervisor process (see the module docstring)."""
    use_builtin_hashes()
    skip_unused_modules()
    data = _read_all(0)
    if os.fork():
        os._exit(0)  # the intermediate: the spawner reaps it at once
    run(pool, data)


def run(pool: str, data: bytes) -> None:
    """The supervisor from its spec (*data*, marshal) on; never returns. Reports go to
    fd 1: the spawner's pipe, or -- in a child of the fork server (``template.py``) --
    the spawner's connection."""
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)
    # A caller that ignores SIGCHLD (servers do, to avoid zombies) passes that on through
    # exec: the kernel would then reap the job by itself, and the reaper's waitid() would
    # never see it exit -- the task would stay "running" for good.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
    startup = Startup(pool, {})
    try:
        startup.config = marshal.loads(data)
        if not report(("pid", startup.pid)):
            os._exit(1)  # the spawner gave up already: start nothing
        # The threads needed to serve, before anything is made: a task that spawn()
        # returned must answer, not die when its first thread cannot start.
        threads.reserve()
        startup.signal_fd = catch_signals()
        startup.start()
    except StartError as exc:
        startup.remove_files()
        report(("error",) + exc.args)
        os._exit(1)
    except BaseException:
        startup.remove_files()
        import traceback

        report(("error", "internal", 0, traceback.format_exc(), None))
        os._exit(1)
    job_pid = startup.job[0] if startup.job is not None else None  # None: queued
    if not report(("ok", startup.pid, job_pid)):
        # The spawner gave up and raised SpawnError: that leaves nothing behind, ever.
        for kill in (os.killpg, os.kill):
            try:
                if job_pid is not None:
                    kill(job_pid, 9)
            except OSError:
                pass
        startup.remove_files()
        os._exit(1)
    _detach_stdio()
    try:
        skip_unused_modules()  # main() did; the fork server too, before its warm-up
        from bgtask._supervisor import main_loop

        main_loop.serve(startup)
    finally:
        os._exit(0)


__all__ = ["Startup", "main", "report", "run"]
