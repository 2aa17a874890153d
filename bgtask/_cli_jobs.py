"""The command line's commands that start and steer jobs: ``spawn``, ``kill``, ``pause``,
``resume``, ``restart``, ``wait``, ``rm``, ``clean``. Each ``cmd_X`` has its
``X_arguments`` beside it; :data:`COMMANDS` lists them for the parser.
"""

from __future__ import annotations

import errno
import sys

import bgtask
from bgtask._cli_io import (
    PROG,
    Failure,
    UsageError,
    copy_streams,
    count,
    error,
    error_text,
    meta_value,
    pair,
    pid,
    seconds,
    size,
)

# typing, collections.abc and argparse for the annotations only: an empty `bgtask ls`
# imports this module, and any of them costs more than the rest of its run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

#: ``wait --timeout`` ran out, like ``timeout(1)``.
EXIT_TIMEOUT = 124
#: characters that mean a shell command line was given as one word (``-- 'ls | wc -l'``).
SHELL_SYNTAX = frozenset(" |&;<>()$`*?~'\"\\")


class Command:
    """A command: its name, what runs it (``cmd_X(args)``, returning the exit status),
    what declares its arguments (``X_arguments(p)``, on an argparse parser or on the
    recorder of ``cli``'s quick path), its one-line help and its other names."""

    __slots__ = ("aliases", "arguments", "help", "name", "run")

    def __init__(self, name: str, run: Callable[[argparse.Namespace], int],
                 arguments: Callable[[argparse.ArgumentParser], None], help: str,
                 aliases: tuple[str, ...] = ()) -> None:
        self.name = name
        self.run = run
        self.arguments = arguments
        self.help = help
        self.aliases = aliases

    def __repr__(self) -> str:
        return f"Command({self.name!r})"


def pid_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("pid", metavar="PID", type=pid, help="the task id (its supervisor's pid)")


def pids_arg(p: argparse.ArgumentParser, nargs: str = "+") -> None:
    p.add_argument("pids", metavar="PID", type=pid, nargs=nargs, help="task ids")


def pool_of(args: argparse.Namespace) -> bgtask.TaskPool:
    return bgtask.TaskPool(getattr(args, "pool", None))


def task_of(args: argparse.Namespace, task_id: int) -> bgtask.Task:
    return bgtask.Task(task_id, pool_of(args))


def exit_status(returncode: int) -> int:
    """A job's returncode as a shell reports it: 128+N for a job killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _each(pids: list[int], action: Callable[[int], None]) -> int:
    """Run *action* for every pid; report each failure on its own line, go on."""
    status = 0
    for task_id in pids:
        try:
            action(task_id)
        except (Failure, bgtask.BgTaskError, ValueError, OSError) as exc:
            status = error(error_text(exc))
    return status


# -- spawn -------------------------------------------------------------------------------------


def spawn_arguments(p: argparse.ArgumentParser) -> None:
    p.usage = f"{PROG} spawn [OPTIONS] [--] CMD [ARGS...]"
    p.add_argument("--name", help="the task's name (meta 'name')")
    p.add_argument("--meta", metavar="K=V", type=pair, action="append", default=[],
                   help="a meta value (JSON when it parses, else the string); repeatable")
    p.add_argument("--env", metavar="K=V", type=pair, action="append", default=[],
                   help="an environment variable added to ours; repeatable")
    p.add_argument("--cwd", metavar="DIR", help="the job's working directory (default: ours)")
    p.add_argument("--retain", metavar="BYTES", type=size,
                   help="bytes of each output stream kept readable after being read (default 1M)")
    p.add_argument("--max-buffer", metavar="BYTES", type=size, default=64 << 20,
                   help="most unread bytes held per output stream (default 64M)")
    p.add_argument("--on-full", choices=("block", "drop"), default="block",
                   help="when the buffer is full: block the job (default) or drop the oldest bytes")
    p.add_argument("--lock", metavar="NAME", help="hold this lock while the job runs")
    p.add_argument("--shell", action="store_true",
                   help="run CMD (its words joined by spaces) with /bin/sh -c")
    ops = p.add_argument_group("operations (see the README's 'Operations')")
    ops.add_argument("--timeout", metavar="S", type=seconds,
                     help="TERM the job after S seconds of a run, KILL after the grace")
    ops.add_argument("--grace", metavar="S", type=seconds, default=5.0,
                     help="seconds from TERM to KILL wherever bgtask stops the job (default 5)")
    ops.add_argument("--restart", choices=("never", "on-failure", "always"), default="never",
                     help="restart the job automatically when a run ends (default never)")
    ops.add_argument("--restart-delay", metavar="S", type=seconds, default=1.0,
                     help="back-off before the first automatic restart, doubling (default 1)")
    ops.add_argument("--max-restarts", metavar="N", type=count, help="at most N automatic restarts")
    ops.add_argument("--slot", metavar="NAME:N", type=_slot,
                     help="at most N of your tasks with slot NAME run at once; others queue")
    ops.add_argument("--limit", metavar="K=V", type=_limit, action="append", default=[],
                     help="a resource limit of the job: cpu, memory, nofile, nproc, fsize, core "
                          "(sizes take K/M/G); repeatable")
    ops.add_argument("--on-exit", metavar="CMD", type=_hook,
                     help="a command (split like a shell) run after each run ends")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream the output until the job ends; exit with its exit status")
    p.add_argument("--rm", action="store_true", help="with --follow: delete the task when it ends")
    p.add_argument("cmd", metavar="-- CMD ARGS", nargs="...", help="the command")  # argparse.REMAINDER


def _slot(text: str) -> tuple[str, int]:
    name, sep, n = text.rpartition(":")
    if not sep or not name:
        raise ValueError(f"a slot is NAME:N, not {text!r}")
    return name, count(n)


def _limit(text: str) -> tuple[str, int]:
    k, v = pair(text)
    return k, size(v)


def _hook(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def _operations(args: argparse.Namespace) -> dict[str, Any]:
    """spawn's operations options from the command line (checked by spawn itself)."""
    ops: dict[str, Any] = {"timeout": args.timeout, "grace": args.grace, "restart": args.restart,
                              "restart_delay": args.restart_delay, "max_restarts": args.max_restarts,
                              "slot": args.slot, "on_exit": args.on_exit}
    if args.limit:
        ops["limits"] = dict(args.limit)
    return ops


def _spawn_hint(exc: bgtask.SpawnError, command: list[str], shell: bool) -> str:
    """What to do about a job that could not start, when the cause is a common slip."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT and not shell and len(command) == 1 and SHELL_SYNTAX & set(command[0]):
        return f"; to run it with the shell: {PROG} spawn --shell -- {command[0]!r}"
    if code == errno.ENOEXEC:
        return "; a script needs a '#!' first line naming its interpreter (e.g. #!/bin/sh)"
    return ""


def cmd_spawn(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("spawn needs a command: bgtask spawn [OPTIONS] -- CMD ARGS...")
    if args.rm and not args.follow:
        raise UsageError("--rm needs --follow")
    meta = {k: meta_value(v) for k, v in args.meta}
    if args.name is not None:
        meta["name"] = args.name
    env = dict(args.env)
    argv: str | list[str] = " ".join(command) if args.shell else command
    options = {} if args.retain is None else {"retain_output": args.retain}
    try:
        task = pool_of(args).spawn(
            argv, env=env or None, cwd=args.cwd, meta=meta, max_buffer=args.max_buffer,
            on_full=args.on_full, shell=args.shell, lock=args.lock, **options, **_operations(args),
        )
    except bgtask.SpawnError as exc:
        hint = _spawn_hint(exc, command, args.shell)
        if not hint:
            raise
        raise Failure(f"{exc}{hint}") from None
    if not args.follow:
        print(task.pid)
        return 0
    # stdout stays the job's own: the id goes to stderr (needed for `bgtask send`).
    print(f"{PROG}: task {task.pid}", file=sys.stderr, flush=True)
    copy_streams(task, ["stdout", "stderr"], {"stdout": None, "stderr": None})
    code = task.wait()
    assert code is not None
    if args.rm:
        task.delete()
    return exit_status(code)


# -- signals -----------------------------------------------------------------------------------


def kill_arguments(p: argparse.ArgumentParser) -> None:
    pids_arg(p)
    p.add_argument("-s", "--signal", metavar="SIG", default="TERM",
                   help="a name (TERM, SIGKILL, hup) or number (default TERM, like kill(1); "
                        "the library's task.kill() sends KILL)")


def cmd_kill(args: argparse.Namespace) -> int:
    def kill(task_id: int) -> None:
        if not task_of(args, task_id).kill(args.signal):
            raise Failure(f"task {task_id}: the job is not running")

    return _each(args.pids, kill)


def cmd_pause(args: argparse.Namespace) -> int:
    def pause(task_id: int) -> None:
        if not task_of(args, task_id).pause():
            raise Failure(f"task {task_id}: the job is not running")

    return _each(args.pids, pause)


def cmd_resume(args: argparse.Namespace) -> int:
    def resume(task_id: int) -> None:
        if not task_of(args, task_id).resume():
            raise Failure(f"task {task_id}: the job is not running")

    return _each(args.pids, resume)


def restart_arguments(p: argparse.ArgumentParser) -> None:
    pids_arg(p)
    p.add_argument("--timeout", metavar="S", type=seconds, default=5.0,
                   help="seconds from SIGTERM to SIGKILL when stopping a running job (default 5)")


def cmd_restart(args: argparse.Namespace) -> int:
    def restart(task_id: int) -> None:
        task = task_of(args, task_id)
        if task.info(fresh=True)["status"]["running"]:
            task.stop(timeout=args.timeout)  # TERM (+CONT), KILL after the timeout
        if not task.restart():
            raise Failure(f"task {task_id}: the job is running again (restarted by someone else?)")

    return _each(args.pids, restart)


# -- wait, rm, clean ---------------------------------------------------------------------------


def wait_arguments(p: argparse.ArgumentParser) -> None:
    pids_arg(p)
    p.add_argument("--timeout", metavar="S", type=seconds,
                   help=f"give up after S seconds (exit status {EXIT_TIMEOUT})")
    p.add_argument("--any", action="store_true",
                   help="return when the first of the tasks ends (default: all of them)")


def cmd_wait(args: argparse.Namespace) -> int:
    pids = list(dict.fromkeys(args.pids))
    if len(pids) == 1:
        code = task_of(args, pids[0]).wait(timeout=args.timeout)
        if code is None:
            print(f"{PROG}: task {pids[0]} still running after {args.timeout:g} s", file=sys.stderr)
            return EXIT_TIMEOUT
        return exit_status(code)
    # Several: one event loop waits for all (bgtask.wait). The exit status is that of
    # the first task (in the order given) that ended with a non-zero status, else 0.
    tasks = [task_of(args, p) for p in pids]
    done, not_done = bgtask.wait(tasks, timeout=args.timeout,
                                 return_when="FIRST_COMPLETED" if args.any else "ALL_COMPLETED")
    if not done or (not_done and not args.any):
        print(f"{PROG}: task(s) {' '.join(str(t.pid) for t in tasks if t in not_done)} still "
              f"running after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    codes = []
    for t in tasks:
        if t in done:
            code = t.wait()
            codes.append(code)
            print(t.pid, code)  # which ended, and how (the returncode convention)
    return next((exit_status(c) for c in codes if c), 0)


def rm_arguments(p: argparse.ArgumentParser) -> None:
    pids_arg(p, "*")
    p.add_argument("--finished", action="store_true", help="every task whose job has ended")
    p.add_argument("-f", "--force", action="store_true", help="delete running tasks too")
    p.add_argument("--timeout", metavar="S", type=seconds, default=5.0,
                   help="seconds from SIGTERM to SIGKILL (default 5)")


def cmd_rm(args: argparse.Namespace) -> int:
    pids = list(args.pids)
    if args.finished:
        pids += [t.pid for t in pool_of(args).search(status={"running": False}) if t.pid not in pids]
    elif not pids:
        raise UsageError("rm needs task ids, or --finished")

    def rm(task_id: int) -> None:
        task = task_of(args, task_id)
        if not args.force and task.info(fresh=True)["status"]["running"]:
            raise Failure(f"task {task_id} is running: kill it first, or use rm -f")
        task.delete(timeout=args.timeout)

    return _each(pids, rm)


def cmd_clean(args: argparse.Namespace) -> int:
    for task_id in pool_of(args).clean():
        print(task_id)
    return 0


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


START = [
    Command("spawn", cmd_spawn, spawn_arguments, "start a job in the background and print its task id"),
]
STEER = [
    Command("kill", cmd_kill, kill_arguments, "send a signal to a job's process group (default TERM)"),
    Command("pause", cmd_pause, pids_arg, "stop a job (SIGSTOP)"),
    Command("resume", cmd_resume, pids_arg, "continue a paused job (SIGCONT)"),
    Command("restart", cmd_restart, restart_arguments,
            "run a job again (same argv, env, cwd); a running job is stopped first"),
    Command("wait", cmd_wait, wait_arguments, "wait for a job to end; exit with its exit status (128+N: signal N)"),
    Command("rm", cmd_rm, rm_arguments, "delete tasks: the job (if running), its output, the supervisor"),
    Command("clean", cmd_clean, _no_arguments, "delete every finished task; print their ids"),
]

__all__ = ["EXIT_TIMEOUT", "START", "STEER", "Command", "exit_status", "pid_arg", "pids_arg", "pool_of",
           "task_of"]
