"""The command line's commands that look at tasks and talk to them: ``ls``, ``info``,
``cat``, ``tail``, ``send``, ``msg``, ``meta``. Each ``cmd_X`` has its ``X_arguments``
beside it; :data:`COMMANDS` lists them for the parser.
"""

from __future__ import annotations

import sys

import bgtask
from bgtask import _format
from bgtask._cli_io import (
    UsageError,
    copy_streams,
    count,
    drain,
    is_terminal,
    last_lines,
    meta_value,
    output_of,
    pair,
    seconds,
    stream_info,
    wants_colour,
    write,
)
from bgtask._cli_jobs import Command, pid_arg, pool_of, task_of

# argparse and typing for the annotations only, json where it is used: an empty
# `bgtask ls` imports this module, and each of them costs more than the rest of its run.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

#: bytes read at a time from our stdin (``send -``).
CHUNK = 64 * 1024


def _streams_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--stdout", action="store_true", help="only the job's stdout")
    which.add_argument("--stderr", action="store_true", help="only the job's stderr")


def _streams(args: argparse.Namespace) -> list[str]:
    """The job's streams a command shows: both unless told (stdout to our stdout, stderr
    to our stderr, like ``docker logs``)."""
    if args.stdout:
        return ["stdout"]
    if args.stderr:
        return ["stderr"]
    return ["stdout", "stderr"]


# -- ls, info ----------------------------------------------------------------------------------


def ls_arguments(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument("--running", action="store_true", help="only jobs still running (or paused)")
    which.add_argument("--finished", action="store_true", help="only jobs that have ended")
    p.add_argument("--meta", metavar="K=V", type=pair, action="append", default=[],
                   help="only tasks with this meta value; repeatable")
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="the info of each task, as JSON")
    shape.add_argument("-q", "--quiet", action="store_true", help="only the task ids")
    p.add_argument("-w", "--wide", action="store_true",
                   help="cut nothing to the terminal's width (nothing is cut when not on a terminal)")
    p.add_argument("-u", "--usage", action="store_true",
                   help="add the CPU seconds, memory (RSS now) and process count of each job's tree")


def cmd_ls(args: argparse.Namespace) -> int:
    pattern: dict[str, Any] = {}
    if args.running:
        pattern["status"] = {"running": True}
    elif args.finished:
        pattern["status"] = {"running": False}
    wanted = [(k, meta_value(v), v) for k, v in args.meta]

    def where(info: dict[str, Any]) -> bool:
        meta = info["meta"]
        # `--meta n=3` finds both the number 3 and the string "3".
        return all(k in meta and (meta[k] == parsed or meta[k] == raw) for k, parsed, raw in wanted)

    pools = [bgtask.TaskPool(p) for p in getattr(args, "pools", None) or []]
    hosts: list[str] | None = None
    if len(pools) > 1:
        # Several pools, one table: queried concurrently (a remote one costs a round
        # trip or a login), merged in the order given, a HOST column telling them apart.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(pools), thread_name_prefix="bgtask-ls") as ex:
            found = list(ex.map(lambda p: p.search(where if wanted else None, **pattern), pools))
        tasks = [t for ts in found for t in ts]
        hosts = [getattr(p.backend, "host", "") for p, ts in zip(pools, found, strict=True) for _ in ts]
    else:
        tasks = pool_of(args).search(where if wanted else None, **pattern)
    infos = [t.info() for t in tasks]
    if args.json:
        import json

        print(json.dumps([_format.jsonable_info(i) for i in infos], indent=2))
    elif args.quiet:
        for info in infos:
            print(info["pid"])
    else:
        # Cut to fit only what a person reads on a terminal: a pipe gets it all.
        width = _format.terminal_width() if is_terminal(sys.stdout) and not args.wide else None
        lines = _format.task_table(infos, width, colour=wants_colour(sys.stdout), hosts=hosts)
        if getattr(args, "usage", False):
            lines = _with_usage(lines, tasks)
        print("\n".join(lines))
    return 0


def _with_usage(lines: list[str], tasks: list[bgtask.Task]) -> list[str]:
    """``ls --usage``: CPU, RSS and PROCS in front of each line (one usage() call a
    task, ~0.5 ms each; a task that cannot say shows "-")."""
    cells = [("CPU", "RSS", "PROCS")]
    for t in tasks:
        try:
            u = t.usage()
        except (bgtask.BgTaskError, NotImplementedError):
            cells.append(("-", "-", "-"))
            continue
        cells.append((f"{u['cpu_user'] + u['cpu_system']:.1f}s", _format.size_text(u["rss"]),
                      str(u["processes"])))
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return ["  ".join(c[i].rjust(widths[i]) for i in range(3)) + "  " + ln
            for c, ln in zip(cells, lines, strict=False)]


def info_arguments(p: argparse.ArgumentParser) -> None:
    pid_arg(p)
    p.add_argument("--json", action="store_true", help="the info dict, as JSON")


def cmd_info(args: argparse.Namespace) -> int:
    info = task_of(args, args.pid).info(fresh=True)
    if args.json:
        import json

        print(json.dumps(_format.jsonable_info(info), indent=2))
        return 0
    lines = _format.info_lines(info, style="json")
    if wants_colour(sys.stdout):
        state = _format.printable(_format.status_text(info))
        lines = [_format.colour_state(state, line) if line.split()[:1] == ["state"] else line
                 for line in lines]
    print("\n".join(lines))
    return 0


# -- cat, tail -----------------------------------------------------------------------------------


def cat_arguments(p: argparse.ArgumentParser) -> None:
    pid_arg(p)
    _streams_arguments(p)
    p.add_argument("--peek", action="store_true", help="print the unread output without consuming it")
    p.add_argument("--from", dest="start", metavar="N", type=int,
                   help="from byte offset N (negative: N bytes before the end), without consuming")
    p.add_argument("--to", dest="end", metavar="M", type=int,
                   help="up to byte offset M (exclusive), without consuming")


def cmd_cat(args: argparse.Namespace) -> int:
    task = task_of(args, args.pid)
    names = _streams(args)
    if args.start is None and args.end is None and not args.peek:
        drain(task, names)  # consumes exactly what got out, until caught up with the job
        return 0
    for name in names:
        held = stream_info(task, name)
        start, end = args.start, args.end
        if start is None:
            start = held["cursor"]
        elif start < 0:  # from the end, like tail -c
            start = max(held["limit"] + start, held["start"])
        if end is not None and end < 0:
            end = max(held["limit"] + end, 0)
        write(task.stream(name).read(start, end), output_of(name))
    return 0


def tail_arguments(p: argparse.ArgumentParser) -> None:
    pid_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="then follow the output until the job ends")
    p.add_argument("-n", "--lines", metavar="N", type=count, default=10, help="how many lines (default 10)")
    _streams_arguments(p)


def cmd_tail(args: argparse.Namespace) -> int:
    task = task_of(args, args.pid)
    names = _streams(args)
    limits: dict[str, int | None] = {}
    for name in names:
        held = stream_info(task, name)
        limits[name] = held["limit"]
        if args.lines > 0:
            write(last_lines(task.stream(name), held["start"], held["limit"], args.lines), output_of(name))
    if args.follow:
        copy_streams(task, names, limits)
    return 0


# -- send, msg, meta -----------------------------------------------------------------------------


def send_arguments(p: argparse.ArgumentParser) -> None:
    pid_arg(p)
    p.add_argument("text", metavar="TEXT", nargs="*",
                   help="the text, a newline added; '-' sends our own stdin as it is")
    p.add_argument("-n", "--no-newline", action="store_true", help="do not add a newline to TEXT")
    p.add_argument("--eof", action="store_true", help="then close the job's stdin")
    p.add_argument("--timeout", metavar="S", type=seconds, help="give up if the job does not read")


def cmd_send(args: argparse.Namespace) -> int:
    stdin = task_of(args, args.pid).stream("stdin")
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


def msg_arguments(p: argparse.ArgumentParser) -> None:
    pid_arg(p)
    p.add_argument("-f", "--follow", action="store_true", help="wait for more until the job ends")
    p.add_argument("--peek", action="store_true", help="do not consume them")


def cmd_msg(args: argparse.Namespace) -> int:
    task = task_of(args, args.pid)
    data = task.stream("data")
    if args.follow:
        for obj in data.follow():
            print(_format.value_text(obj), flush=True)
        return 0
    if args.peek:
        objs = data.read(stream_info(task, "data")["cursor"])
    else:
        objs = data.read()
    for obj in objs:
        print(_format.value_text(obj))
    return 0


def meta_arguments(p: argparse.ArgumentParser) -> None:
    pid_arg(p)
    p.add_argument("pairs", metavar="K=V", type=pair, nargs="*", help="values to set")
    p.add_argument("--json", action="store_true", help="print the meta as JSON")


def cmd_meta(args: argparse.Namespace) -> int:
    task = task_of(args, args.pid)
    if args.pairs:
        meta = task.apply_meta({k: meta_value(v) for k, v in args.pairs})
    else:
        meta = task.info(fresh=True)["meta"]
    if args.json:
        import json

        print(json.dumps({k: _format.jsonable(v) for k, v in meta.items()}, indent=2))
    else:
        for key in sorted(meta):
            print(f"{_format.printable(str(key))}={_format.value_text(meta[key])}")
    return 0


COMMANDS = [
    Command("ls", cmd_ls, ls_arguments, "list tasks", ("ps",)),
    Command("info", cmd_info, info_arguments, "show everything about a task"),
    Command("cat", cmd_cat, cat_arguments,
            "print a job's unread stdout and stderr, consuming what was printed "
            "(not with --peek/--from/--to)"),
    Command("tail", cmd_tail, tail_arguments,
            "print the last lines of a job's stdout and stderr (without consuming them)"),
    Command("send", cmd_send, send_arguments, "write to a job's stdin"),
    Command("msg", cmd_msg, msg_arguments, "print a job's data messages, one per line (JSON where possible)"),
    Command("meta", cmd_meta, meta_arguments, "show a task's meta, or set values (K=V, JSON when it parses)"),
]

__all__ = ["COMMANDS"]
