"""The ``bgtask`` command line: a thin layer over the public API (``import bgtask``).

Conventions borrowed from pueue, supervisorctl, pm2 and the shell:

* ``bgtask spawn ... -- CMD ARGS`` prints the task id; ``--follow`` streams the output
  and exits with the job's status, like running the command in the foreground.
* ``wait`` and ``spawn --follow`` exit with the job's exit status as their own; a job
  killed by signal N gives 128+N, as in a shell. ``wait --timeout`` gives 124 on
  timeout, like ``timeout(1)``.
* ``kill`` sends SIGTERM unless told otherwise (``-s``), like ``kill(1)``; ``rm``
  refuses a running task unless ``-f``, like ``docker rm``; ``restart`` stops a running
  job first (TERM, KILL after ``--timeout``), like supervisorctl and pm2.
* Errors are one line on stderr: exit status 2 for a usage error, 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, NoReturn

import bgtask
from bgtask import _format

PROG = "bgtask"
#: ``wait --timeout`` ran out, like ``timeout(1)``.
EXIT_TIMEOUT = 124
#: bytes read at a time from our stdin (``send -``) and looked at by ``tail``.
CHUNK = 64 * 1024


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class Failure(Exception):
    """A one-line error already worded for the user (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    #: options may come after positionals (``send 42 hi -n``, ``kill 1 -s INT 2``).
    intermixed = False
    _parsing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # Plain argparse stops filling a list positional at the first option after it.
        # Subparsers are parsed through this method, so this is where to mix them; the
        # flag stops the recursion (the intermixed parse calls back in here).
        if self.intermixed and not self._parsing:
            self._parsing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._parsing = False
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        # One line, as every other error: the usage is one --help away.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# -- entry point -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Run the command line *argv* (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    if getattr(args, "func", None) is None:  # no command: what are the commands?
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except UsageError as exc:
        return _error(f"{exc} (see '{PROG} {args.command} --help')", 2)
    except BrokenPipeError:
        _quiet_stdout()  # `bgtask cat 42 | head`: the reader has had enough
        return 1
    except KeyboardInterrupt:
        return _error("interrupted")
    except (Failure, bgtask.BgTaskError, ValueError, TypeError, OSError) as exc:
        return _error(str(exc) or type(exc).__name__)
    except Exception as exc:  # a bug: still one line, but say what it was
        return _error(f"unexpected {type(exc).__name__}: {exc}")


def _error(message: str, status: int = 1) -> int:
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    print(f"{PROG}: error: {'; '.join(lines) or 'failed'}", file=sys.stderr)
    return status


def _quiet_stdout() -> None:
    # Python flushes stdout again at exit; on a closed pipe that would print a warning.
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


# -- argument types --------------------------------------------------------------------------


def _pid(text: str) -> int:
    try:
        pid = int(text)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise argparse.ArgumentTypeError(f"not a task id: {text!r}")
    return pid


def _size(text: str) -> int:
    """``4096``, ``64K``, ``1M``, ``2G`` (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    if t and t[-1] in "KMG":
        factor = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        value = -1
    if not 0 <= value < 1 << 62:  # also nan and inf
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 4096, 64K, 1M)")
    return int(value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1e9:  # also nan and inf (no clock waits that long)
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}")
    return value


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def _meta_value(text: str) -> Any:
    """A ``--meta`` value: JSON when it parses (``3``, ``true``, ``[1, 2]``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- helpers ---------------------------------------------------------------------------------


def _pool(args: argparse.Namespace) -> bgtask.TaskPool:
    return bgtask.TaskPool(getattr(args, "pool", None))


def _task(args: argparse.Namespace, pid: int) -> bgtask.Task:
    return bgtask.Task(pid, _pool(args))


def _exit_status(returncode: int) -> int:
    """A job's returncode as a shell reports it: 128+N for a job killed by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def _write(data: bytes, stream: IO[str] | None = None) -> None:
    out = sys.stdout if stream is None else stream
    buf = getattr(out, "buffer", None)
    if buf is None:
        out.write(data.decode(errors="replace"))
        out.flush()
        return
    out.flush()  # text printed before must come first
    buf.write(data)
    buf.flush()


def _follow_from(stream: bgtask.Stream, pos: int) -> Iterator[bytes]:
    """``stream.follow(pos)`` (not consuming) that survives a consuming reader elsewhere
    freeing the bytes ahead of us: it says how much was skipped and goes on."""
    while True:
        try:
            for chunk in stream.follow(pos):
                pos += len(chunk)
                yield chunk
            return
        except bgtask.OutputGoneError as exc:
            print(f"{PROG}: [{exc.start - pos} bytes skipped: read and freed by another client]",
                  file=sys.stderr, flush=True)
            pos = exc.start


def _stream_info(task: bgtask.Task, name: str) -> dict[str, Any]:
    return dict(task.info(fresh=True)["streams"][name])


def _each(pids: list[int], action: Callable[[int], None]) -> int:
    """Run *action* for every pid; report each failure on its own line, go on."""
    status = 0
    for pid in pids:
        try:
            action(pid)
        except (Failure, bgtask.BgTaskError, ValueError, OSError) as exc:
            status = _error(str(exc))
    return status


# -- commands --------------------------------------------------------------------------------


def cmd_spawn(args: argparse.Namespace) -> int:
    command = list(args.cmd)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise UsageError("spawn needs a command: bgtask spawn [OPTIONS] -- CMD ARGS...")
    if args.rm and not args.follow:
        raise UsageError("--rm needs --follow")
    meta = {k: _meta_value(v) for k, v in args.meta}
    if args.name is not None:
        meta["name"] = args.name
    env = dict(args.env)
    argv: str | list[str] = " ".join(command) if args.shell else command
    task = _pool(args).spawn(
        argv, env=env or None, cwd=args.cwd, meta=meta, retain_output=args.retain,
        max_buffer=args.max_buffer, on_full=args.on_full, shell=args.shell, lock=args.lock,
    )
    if not args.follow:
        print(task.pid)
        return 0
    # stdout stays the job's own: the id goes to stderr (needed for `bgtask send`).
    print(f"{PROG}: task {task.pid}", file=sys.stderr, flush=True)
    try:
        code = _follow_job(task)
    except KeyboardInterrupt:
        raise Failure(f"interrupted; task {task.pid} keeps running") from None
    if args.rm:
        task.delete()
    return _exit_status(code)


def _follow_job(task: bgtask.Task) -> int:
    """Copy the job's stdout and stderr to ours until both end; the job's returncode."""
    errors: list[BaseException] = []

    def pump_stderr() -> None:
        try:
            for chunk in task.stream("stderr").follow():
                _write(chunk, sys.stderr)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    t = threading.Thread(target=pump_stderr, name="bgtask-stderr", daemon=True)
    t.start()
    for chunk in task.stream("stdout").follow():
        _write(chunk)
    while t.is_alive():
        t.join(0.2)  # a bounded join stays interruptible by Ctrl-C
    if errors:
        raise errors[0]
    code = task.wait()
    assert code is not None
    return code


def cmd_ls(args: argparse.Namespace) -> int:
    pattern: dict[str, Any] = {}
    if args.running:
        pattern["status"] = {"running": True}
    elif args.finished:
        pattern["status"] = {"running": False}
    wanted = [(k, _meta_value(v), v) for k, v in args.meta]

    def where(info: dict[str, Any]) -> bool:
        meta = info["meta"]
        # `--meta n=3` finds both the number 3 and the string "3".
        return all(k in meta and (meta[k] == parsed or meta[k] == raw) for k, parsed, raw in wanted)

    tasks = _pool(args).search(where if wanted else None, **pattern)
    infos = [t.info() for t in tasks]
    if args.json:
        print(json.dumps([_format.jsonable_info(i) for i in infos], indent=2))
    elif args.quiet:
        for info in infos:
            print(info["pid"])
    else:
        width = 1 << 30 if args.wide else _format.terminal_width()
        print("\n".join(_format.task_table(infos, width)))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    info = _task(args, args.pid).info(fresh=True)
    if args.json:
        print(json.dumps(_format.jsonable_info(info), indent=2))
    else:
        print("\n".join(_format.info_lines(info)))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    task = _task(args, args.pid)
    name = "stderr" if args.stderr else "stdout"
    stream = task.stream(name)
    if args.start is None and args.end is None and not args.peek:
        data = stream.read()  # consumes
    else:
        held = _stream_info(task, name)
        start, end = args.start, args.end
        if start is None:
            start = held["cursor"]
        elif start < 0:  # from the end, like tail -c
            start = max(held["limit"] + start, held["start"])
        if end is not None and end < 0:
            end = max(held["limit"] + end, 0)
        data = stream.read(start, end)
    _write(data)
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    task = _task(args, args.pid)
    name = "stderr" if args.stderr else "stdout"
    stream = task.stream(name)
    held = _stream_info(task, name)
    limit = held["limit"]
    if args.lines > 0:
        _write(_last_lines(stream, held["start"], limit, args.lines))
    if args.follow:
        for chunk in _follow_from(stream, limit):
            _write(chunk)
    return 0


def _last_lines(stream: bgtask.Stream, start: int, limit: int, n: int) -> bytes:
    """The last *n* lines held in ``[start, limit)``, read backwards without consuming
    (in pieces that double in size: output without newlines costs few round trips)."""
    parts: list[bytes] = []
    newlines = 0
    end, size = limit, CHUNK
    while end > start and newlines <= n:
        begin = max(start, end - size)
        try:
            part = stream.read(begin, end)
        except bgtask.OutputGoneError as exc:  # freed meanwhile: what is left is enough
            start = exc.start
            continue
        parts.append(part)
        newlines += part.count(b"\n")
        end, size = begin, size * 2
    data = b"".join(reversed(parts))
    return b"".join(data.splitlines(keepends=True)[-n:])


def cmd_send(args: argparse.Namespace) -> int:
    stdin = _task(args, args.pid).stream("stdin")
    if args.text == ["-"]:
        reader = sys.stdin.buffer
        read = getattr(reader, "read1", reader.read)
        while True:
            chunk = read(CHUNK)
            if not chunk:
                break
            stdin.write(chunk, timeout=args.timeout)
    elif args.text:
        stdin.write(" ".join(args.text) + ("" if args.no_newline else "\n"), timeout=args.timeout)
    elif not args.eof:
        raise UsageError("nothing to send: give TEXT, - (to send our stdin) or --eof")
    if args.eof:
        stdin.close()
    return 0


def cmd_msg(args: argparse.Namespace) -> int:
    task = _task(args, args.pid)
    data = task.stream("data")
    if args.follow:
        for obj in data.follow():
            print(_format.value_text(obj), flush=True)
        return 0
    if args.peek:
        objs = data.read(_stream_info(task, "data")["cursor"])
    else:
        objs = data.read()
    for obj in objs:
        print(_format.value_text(obj))
    return 0


def cmd_meta(args: argparse.Namespace) -> int:
    task = _task(args, args.pid)
    if args.pairs:
        meta = task.apply_meta({k: _meta_value(v) for k, v in args.pairs})
    else:
        meta = task.info(fresh=True)["meta"]
    if args.json:
        print(json.dumps({k: _format.jsonable(v) for k, v in meta.items()}, indent=2))
    else:
        for key in sorted(meta):
            print(f"{key}={_format.value_text(meta[key])}")
    return 0


def cmd_kill(args: argparse.Namespace) -> int:
    def kill(pid: int) -> None:
        if not _task(args, pid).kill(args.signal):
            raise Failure(f"task {pid}: the job is not running")

    return _each(args.pids, kill)


def cmd_pause(args: argparse.Namespace) -> int:
    def pause(pid: int) -> None:
        if not _task(args, pid).pause():
            raise Failure(f"task {pid}: the job is not running")

    return _each(args.pids, pause)


def cmd_resume(args: argparse.Namespace) -> int:
    def resume(pid: int) -> None:
        if not _task(args, pid).resume():
            raise Failure(f"task {pid}: the job is not running")

    return _each(args.pids, resume)


def cmd_restart(args: argparse.Namespace) -> int:
    def restart(pid: int) -> None:
        task = _task(args, pid)
        if task.info(fresh=True)["status"]["running"]:
            task.kill("TERM")
            task.kill("CONT")  # a paused job must run to see its TERM
            if task.wait(timeout=args.timeout) is None:
                task.kill("KILL")
                task.wait()
        if not task.restart():
            raise Failure(f"task {pid}: the job is running again (restarted by someone else?)")

    return _each(args.pids, restart)


def cmd_wait(args: argparse.Namespace) -> int:
    code = _task(args, args.pid).wait(timeout=args.timeout)
    if code is None:
        print(f"{PROG}: task {args.pid} still running after {args.timeout:g} s", file=sys.stderr)
        return EXIT_TIMEOUT
    return _exit_status(code)


def cmd_rm(args: argparse.Namespace) -> int:
    pids = list(args.pids)
    if args.finished:
        pids += [t.pid for t in _pool(args).search(status={"running": False}) if t.pid not in pids]
    elif not pids:
        raise UsageError("rm needs task ids, or --finished")

    def rm(pid: int) -> None:
        task = _task(args, pid)
        if not args.force and task.info(fresh=True)["status"]["running"]:
            raise Failure(f"task {pid} is running: kill it first, or use rm -f")
        task.delete(timeout=args.timeout)

    return _each(pids, rm)


def cmd_clean(args: argparse.Namespace) -> int:
    for pid in _pool(args).clean():
        print(pid)
    return 0


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--pool", metavar="DIR", default=argparse.SUPPRESS,
                        help="the pool directory (default: $BGTASK_POOL, else the default pool)")
    parser = _Parser(prog=PROG, parents=[common],
                     description="Background jobs that outlive the process that started them.",
                     epilog=f"'{PROG} COMMAND --help' tells more about each command.")
    parser.add_argument("--version", action="version", version=f"{PROG} {bgtask.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, aliases=list(aliases), parents=[common], help=help, description=help)
        p.set_defaults(func=func, command=name)
        p.intermixed = name != "spawn"  # spawn's options end where the command begins
        return p

    def pid_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("pid", metavar="PID", type=_pid, help="the task id (its supervisor's pid)")

    def pids_arg(p: argparse.ArgumentParser, nargs: str = "+") -> None:
        p.add_argument("pids", metavar="PID", type=_pid, nargs=nargs, help="task ids")

    p = command("spawn", cmd_spawn, "start a job in the background and print its task id")
    p.usage = f"{PROG} spawn [OPTIONS] [--] CMD [ARGS...]"
    p.add_argument("--name", help="the task's name (meta 'name')")
    p.add_argument("--meta", metavar="K=V", type=_pair, action="append", default=[],
                   help="a meta value (JSON when it parses, else the string); repeatable")
    p.add_argument("--env", metavar="K=V", type=_pair, action="append", default=[],
                   help="an environment variable added to ours; repeatable")
    p.add_argument("--cwd", metavar="DIR", help="the job's working directory (default: ours)")
    p.add_argument("--retain", metavar="BYTES", type=_size, default=0,
                   help="bytes of each output stream kept readable after being read (e.g. 1M)")
    p.add_argument("--max-buffer", metavar="BYTES", type=_size, default=64 << 20,
                   help="most unread bytes held per output stream (default 64M)")
    p.add_argument("--on-full", choices=("block", "drop"), default="block",
                   help="when the buffer is full: block the job (default) or drop the oldest bytes")
    p.add_argument("--lock", metavar="NAME", help="hold this lock while the job runs")
    p.add_argument("--shell", action="store_true",
                   help="run CMD (its words joined by spaces) with /bin/sh -c")
    p.add_argument("-f", "--follow", action="store_true",
                   help="stream the output until the job ends; exit with its exit status")
    p.add_argument("--rm", action="store_true", help="with --follow: delete the task when it ends")
    p.add_argument("cmd", metavar="-- CMD ARGS", nargs=argparse.REMAINDER, help="the command")

    p = command("ls", cmd_ls, "list tasks", aliases=("ps",))
    which = p.add_mutually_exclusive_group()
    which.add_argument("--running", action="store_true", help="only jobs still running (or paused)")
    which.add_argument("--finished", action="store_true", help="only jobs that have ended")
    p.add_argument("--meta", metavar="K=V", type=_pair, action="append", default=[],
                   help="only tasks with this meta value; repeatable")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the info of each task, as JSON")
    shape.add_argument("-q", "--quiet", action="store_true", help="only the task ids")
    p.add_argument("-w", "--wide", action="store_true", help="do not cut commands to the terminal width")

    p = command("info", cmd_info, "show everything about a task")
    pid_arg(p)
    p.add_argument("--json", action="store_true", help="the info dict, as JSON")

    p = command("cat", cmd_cat, "print a job's output (consuming it, unless --peek/--from/--to)")
    pid_arg(p)
    p.add_argument("--stderr", action="store_true", help="stderr instead of stdout")
    p.add_argument("--peek", action="store_true", help="print the unread output without consuming it")
    p.add_argument("--from", dest="start", metavar="N", type=int,
                   help="from byte offset N (negative: N bytes before the end), without consuming")
    p.add_argument("--to", dest="end", metavar="M", type=int,
                   help="up to byte offset M (exclusive), without consuming")

    p = command("tail", cmd_tail, "print the last lines of a job's output (without consuming it)")
    pid_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="then follow the output until the job ends")
    p.add_argument("-n", "--lines", metavar="N", type=int, default=10, help="how many lines (default 10)")
    p.add_argument("--stderr", action="store_true", help="stderr instead of stdout")

    p = command("send", cmd_send, "write to a job's stdin")
    pid_arg(p)
    p.add_argument("text", metavar="TEXT", nargs="*",
                   help="the text, a newline added; '-' sends our own stdin as it is")
    p.add_argument("-n", "--no-newline", action="store_true", help="do not add a newline to TEXT")
    p.add_argument("--eof", action="store_true", help="then close the job's stdin")
    p.add_argument("--timeout", metavar="S", type=_seconds, help="give up if the job does not read")

    p = command("msg", cmd_msg, "print a job's data messages, one per line (JSON where possible)")
    pid_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="wait for more until the job ends")
    p.add_argument("--peek", action="store_true", help="do not consume them")

    p = command("meta", cmd_meta, "show a task's meta, or set values (K=V, JSON when it parses)")
    pid_arg(p)
    p.add_argument("pairs", metavar="K=V", type=_pair, nargs="*", help="values to set")
    p.add_argument("--json", action="store_true", help="print the meta as JSON")

    p = command("kill", cmd_kill, "send a signal to a job's process group")
    pids_arg(p)
    p.add_argument("-s", "--signal", metavar="SIG", default="TERM",
                   help="a name (TERM, SIGKILL, hup) or number (default TERM)")

    p = command("pause", cmd_pause, "stop a job (SIGSTOP)")
    pids_arg(p)
    p = command("resume", cmd_resume, "continue a paused job (SIGCONT)")
    pids_arg(p)

    p = command("restart", cmd_restart,
                "run a job again (same argv, env, cwd); a running job is stopped first")
    pids_arg(p)
    p.add_argument("--timeout", metavar="S", type=_seconds, default=5.0,
                   help="seconds from SIGTERM to SIGKILL when stopping a running job (default 5)")

    p = command("wait", cmd_wait, "wait for a job to end; exit with its exit status (128+N: signal N)")
    pid_arg(p)
    p.add_argument("--timeout", metavar="S", type=_seconds,
                   help=f"give up after S seconds (exit status {EXIT_TIMEOUT})")

    p = command("rm", cmd_rm, "delete tasks: the job (if running), its output, the supervisor")
    pids_arg(p, "*")
    p.add_argument("--finished", action="store_true", help="every task whose job has ended")
    p.add_argument("-f", "--force", action="store_true", help="delete running tasks too")
    p.add_argument("--timeout", metavar="S", type=_seconds, default=5.0,
                   help="seconds from SIGTERM to SIGKILL (default 5)")

    command("clean", cmd_clean, "delete every finished task; print their ids")
    return parser


__all__ = ["build_parser", "main"]
