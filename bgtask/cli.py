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
talk); moving output, the argument types and the errors are ``_cli_io``; the argparse
parser is ``_cli_args``. A command line made only of option flags (``ls``, ``ps -q``,
``--pool DIR ls --running``) is parsed here without argparse (:func:`quick_args`), from
the same ``X_arguments`` declarations: argparse (with re and gettext) and building its
parser were most of an empty ``bgtask ls``'s run. Anything else goes to argparse.
"""

from __future__ import annotations

import sys

import bgtask
from bgtask._cli_io import EXIT_PIPE, PROG, Failure, PipeClosed, UsageError, error, error_text, quiet_output
from bgtask._cli_jobs import START, STEER, Command
from bgtask._cli_show import COMMANDS as SHOW

# argparse for the annotations only (see quick_args); typing is not imported either.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from argparse import Namespace
    from typing import Any
else:

    class Namespace:
        """What argparse's parse gives the commands (attributes), without argparse."""

        def __init__(self, **values: Any) -> None:
            self.__dict__.update(values)

        def __repr__(self) -> str:
            return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"

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
    args = quick_args(argv)
    if args is None:
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


def _command_of(word: str) -> Command | None:
    for command in COMMANDS:
        if word == command.name or word in command.aliases:
            return command
    return None


def _command_word(argv: list[str]) -> str | None:
    """The command *argv* names, if it names one after the top-level options; else None
    (no command, ``--help``, ``--version``, a mistake: the whole parser answers those)."""
    args = iter(argv)
    for arg in args:
        if arg == "--pool":
            next(args, None)
        elif not arg.startswith("--pool="):
            return arg if _command_of(arg) is not None else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser of the whole command line (see ``_cli_args.build_parser``);
    *only*: just this command's (a name or alias)."""
    from bgtask._cli_args import build_parser as build

    return build(COMMANDS, bgtask.__version__, only)


# -- the quick path: option flags only, without argparse ---------------------------------------


class _Declared:
    """Stands in for the parser a command's ``X_arguments(p)`` declares its arguments on,
    and keeps what was declared: ``(options, group)`` for each argument (*group*: its
    mutually exclusive group, or None)."""

    usage: str | None = None

    def __init__(self, arguments: list[tuple[tuple[str, ...], dict[str, Any], object]] | None = None,
                 group: object = None) -> None:
        self.arguments = [] if arguments is None else arguments
        self.group = group

    def add_argument(self, *names: str, **options: Any) -> None:
        self.arguments.append((names, options, self.group))

    def add_argument_group(self, *args: Any, **kwargs: Any) -> _Declared:
        return _Declared(self.arguments, self.group)

    def add_mutually_exclusive_group(self, *args: Any, **kwargs: Any) -> _Declared:
        return _Declared(self.arguments, object())


def _pool_option(argv: list[str], i: int, pools: list[str]) -> int:
    """``--pool X`` or ``--pool=X`` at ``argv[i]``: appends X to *pools*, returns how many
    words it took (0: not one, or one argparse must judge, e.g. ``--pool -x``)."""
    arg = argv[i]
    if arg.startswith("--pool="):
        pools.append(arg[len("--pool="):])
        return 1
    if arg == "--pool" and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
        pools.append(argv[i + 1])
        return 2
    return 0


def quick_args(argv: list[str]) -> Namespace | None:
    """What ``build_parser().parse_args(argv)`` gives, for the command lines made of
    ``--pool`` options, a command, and the command's option flags (``store_true``) and
    ``--pool`` options: read from the command's own ``X_arguments``, the one definition.
    None for anything else (help, an option taking a value, a positional, an
    abbreviation, a mistake): argparse answers, and words the errors.
    """
    top: list[str] = []
    i = 0
    while i < len(argv) and (took := _pool_option(argv, i, top)):
        i += took
    command = _command_of(argv[i]) if i < len(argv) else None
    if command is None:
        return None
    declared = _Declared()
    command.arguments(declared)  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    flags: dict[str, tuple[str, object]] = {}
    for names, options, group in declared.arguments:
        action = options.get("action", "store")
        if not names[0].startswith("-") or options.get("required"):
            return None  # a positional, a required option: argparse
        dest = options.get("dest") or next(
            (n for n in names if n.startswith("--")), names[0]).lstrip("-").replace("-", "_")
        default = options.get("default")
        if action == "store_true":
            default = options.get("default", False)
            flags.update((n, (dest, group)) for n in names)
        elif isinstance(default, str) and options.get("type") is not None:
            return None  # argparse would convert it
        values[dest] = default
    sub: list[str] = []
    given: dict[object, str] = {}
    i += 1
    while i < len(argv):
        took = _pool_option(argv, i, sub)
        if not took:
            dest, group = flags.get(argv[i], ("", None))
            if not dest:
                return None  # not a flag of this command (a value, a mistake, --help...)
            if group is not None and given.setdefault(group, dest) != dest:
                return None  # excludes a flag given before: argparse says so
            values[dest] = True
            took = 1
        i += took
    pools = sub or top  # as argparse: the command's own --pool options replace the others
    if pools:
        values.update(pools=pools, pool=pools[-1])
    return Namespace(**values, command=command.name, func=command.run)


__all__ = ["COMMANDS", "build_parser", "main", "quick_args"]
