"""The ``bgtask`` command line: a thin layer over the public API (``import bgtask``).

Conventions borrowed from pueue, supervisorctl, pm2, docker and the shell:

* ``bgtask spawn ... -- CMD ARGS`` prints the task id; ``--follow`` streams the output
  and exits with the job's status, like running the command in the foreground.
* A job's stdout goes to our stdout and its stderr to our stderr (``cat``, ``tail``,
  ``--follow``), as ``docker logs`` does; ``--stdout``/``--stderr`` pick one.
* ``wait`` and ``spawn --follow`` exit with the job's exit status as their own; a job
  killed by signal N gives 128+N, as in a shell. ``wait --timeout`` gives 124 on
  timeout, like ``timeout(1)``.
* ``kill`` sends SIGTERM unless told otherwise (``-s``), like ``kill(1)``; ``rm``
  refuses a running task unless ``-f``, like ``docker rm``; ``restart`` stops a running
  job first (TERM, KILL after ``--timeout``), like supervisorctl and pm2.
* Errors are one line on stderr: exit status 2 for a usage error, 1 for anything else.
  Ctrl-C exits quietly with 130, and an output pipe closed by its reader (``| head``)
  with 141, as the shell reports for a command killed by SIGINT or SIGPIPE.

The commands live in ``_cli_jobs`` (start and steer) and ``_cli_show`` (look and
talk); moving output is ``_cli_io``; the parser and argument types ``_cli_args``.
"""

from __future__ import annotations

import argparse
import sys

import bgtask
from bgtask._cli_args import PROG, Failure, Parser, PoolAction, UsageError
from bgtask._cli_io import EXIT_PIPE, PipeClosed, error, error_text, quiet_output
from bgtask._cli_jobs import START, STEER, Command
from bgtask._cli_show import COMMANDS as SHOW

#: Ctrl-C: 128 + SIGINT, what a shell reports for a command it interrupted.
EXIT_INTERRUPTED = 130


def _web_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default: 127.0.0.1; anything else is reachable "
                        "from elsewhere, and said so loudly)")
    p.add_argument("--port", type=int, default=0, help="the port (default: a free one)")


def _cmd_web(args: argparse.Namespace) -> int:
    try:  # imported here: `bgtask ls` must not pay for (or need) starlette and uvicorn
        from bgtask.web._serve import serve
    except ImportError as exc:
        raise Failure(f"the web view needs its extra: pip install 'bgtask[web]' ({exc.name} is missing)") \
            from None
    return serve(getattr(args, "pool", None), args.host, args.port)


WEB = Command("web", _cmd_web, _web_arguments,
              "serve a web view of the tasks on this host (prints a URL with an access token)")

#: every command, in the order ``--help`` lists them.
COMMANDS: list[Command] = [*START, *SHOW, *STEER, WEB]


def main(argv: list[str] | None = None) -> int:
    """Run the command line *argv* (default: ``sys.argv[1:]``); returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(_command_word(argv))
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
        return error(f"{exc} (see '{PROG} {args.command} --help')", 2)
    except (PipeClosed, BrokenPipeError):
        quiet_output()  # `bgtask cat 42 | head`: the reader has had enough
        return EXIT_PIPE
    except KeyboardInterrupt:
        # The user asked for it: no message (the job itself is left alone).
        return EXIT_INTERRUPTED
    except (Failure, bgtask.BgTaskError, ValueError, TypeError, OSError) as exc:
        return error(error_text(exc))
    except Exception as exc:  # a bug: still one line, but say what it was
        return error(f"unexpected {type(exc).__name__}: {exc}")


def _command_word(argv: list[str]) -> str | None:
    """The command *argv* names, if it names one after the top-level options; else None
    (no command, ``--help``, ``--version``, a mistake: the whole parser answers those)."""
    names = {n for c in COMMANDS for n in (c.name, *c.aliases)}
    args = iter(argv)
    for arg in args:
        if arg == "--pool":
            next(args, None)
        elif not arg.startswith("--pool="):
            return arg if arg in names else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of the whole command line; each command adds its own arguments.

    :param only: build just this command's parser (a command name or alias): building
        all 17 was a third of an empty ``bgtask ls``'s run.
    """
    common = Parser(add_help=False)
    common.add_argument("--pool", metavar="POOL", default=argparse.SUPPRESS, action=PoolAction,
                        help="the pool: a directory or ssh://[user@]host[:port][/dir] (default: "
                        "$BGTASK_POOL, else the default pool); ls takes several and merges them")
    parser = Parser(prog=PROG, parents=[common],
                    description="Background jobs that outlive the process that started them.",
                    epilog=f"'{PROG} COMMAND --help' tells more about each command.")
    parser.add_argument("--version", action="version", version=f"{PROG} {bgtask.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in COMMANDS:
        if only is not None and only != command.name and only not in command.aliases:
            continue
        p = sub.add_parser(command.name, aliases=list(command.aliases), parents=[common],
                           help=command.help, description=command.help)
        assert isinstance(p, Parser)
        p.set_defaults(func=command.run, command=command.name)
        p.is_command = True
        command.arguments(p)
        # Options after a list of positionals (``kill 1 -s INT 2``) need the intermixed
        # parse, which formats the usage first (~9 regular expressions compiled): only
        # where a list is taken; spawn's options end where the command begins.
        p.intermixed = command.name != "spawn" and any(
            a.nargs in ("*", "+") for a in p._get_positional_actions())
    return parser


__all__ = ["COMMANDS", "build_parser", "main"]
