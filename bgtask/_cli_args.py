"""The command line's argparse parser: the parser class, ``--pool``, and the parser of
the whole command line built from each command's ``X_arguments``.

Only imported when ``cli``'s quick path cannot answer (help, a value, a positional, a
mistake): argparse, with re and gettext, is most of what an empty ``bgtask ls`` would
cost. The argument types and the two exceptions every command raises live in
``_cli_io``, which the commands import anyway.

Usage errors are the caller's mistakes (exit status 2) and are worded by the parser of
the command that was given, so that ``bgtask ls --bogus`` says ``bgtask ls: ...`` and
points at ``bgtask ls --help``, not at the top-level help.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from bgtask._cli_jobs import Command

PROG = "bgtask"

#: commands people type from other tools, and ours that do the job.
SUGGESTIONS = {
    "logs": ("cat", "tail"),
    "log": ("cat", "tail"),
    "output": ("cat", "tail"),
    "stop": ("kill",),
    "terminate": ("kill",),
    "status": ("info",),
    "show": ("info",),
    "list": ("ls",),
    "start": ("spawn",),
    "run": ("spawn",),
    "exec": ("spawn",),
    "delete": ("rm",),
    "remove": ("rm",),
    "continue": ("resume",),
    "cont": ("resume",),
    "stdin": ("send",),
    "write": ("send",),
    "messages": ("msg",),
}


class PoolAction(argparse.Action):
    """``--pool``: a directory or an ``ssh://`` URL. The last one given is *the* pool
    (``args.pool``) of a command; ``ls`` lists all of them (``args.pools``), merged."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        pools = list(getattr(namespace, "pools", None) or [])
        pools.append(values)
        namespace.pools = pools
        namespace.pool = values


def terminal_columns() -> int:
    """``shutil.get_terminal_size().columns`` without importing shutil (and with it
    bz2, lzma, zlib: ~2 ms of an empty ``bgtask ls``): ``$COLUMNS``, else our stdout's
    terminal, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


class Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized as argparse sizes it. argparse makes one for
    every ``add_argument`` (to check the argument), and each imports shutil to ask the
    terminal's width."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         terminal_columns() - 2 if width is None else width)


class Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    #: options may come after positionals (``send 42 hi -n``, ``kill 1 -s INT 2``).
    intermixed = False
    #: a command's own parser: it reports the arguments it does not know itself.
    is_command = False
    _parsing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        # Plain argparse stops filling a list positional at the first option after it.
        # Subparsers are parsed through this method, so this is where to mix them; the
        # flag stops the recursion (the intermixed parse calls back in here).
        if self._parsing:
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            if self.intermixed:
                namespace, extras = self.parse_known_intermixed_args(args, namespace)
            else:
                namespace, extras = super().parse_known_args(args, namespace)
        finally:
            self._parsing = False
        if self.is_command and extras:
            # Left to argparse, the top-level parser would report these, with its own
            # name and help: the user would look for `--bogus` in the wrong place.
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)'", message)
        if m and not self.is_command:
            message = unknown_command(m.group(1), self._command_names())
        # One line, as every other error: the usage is one --help away.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def _command_names(self) -> list[str]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return list(action.choices)
        return []


def unknown_command(word: str, commands: list[str]) -> str:
    """``unknown command 'logs' (did you mean 'cat' or 'tail'?)``."""
    text = f"unknown command {word!r}"
    import difflib  # here: only a mistyped command needs it

    near = list(SUGGESTIONS.get(word.lower(), ())) or difflib.get_close_matches(word, commands, n=2)
    if near:
        text += f" (did you mean {' or '.join(repr(c) for c in near)}?)"
    return text


def build_parser(commands: Sequence[Command], version: str, only: str | None = None) -> argparse.ArgumentParser:
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
    parser.add_argument("--version", action="version", version=f"{PROG} {version}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for command in commands:
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



__all__ = ["PROG", "Formatter", "Parser", "PoolAction", "build_parser", "terminal_columns", "unknown_command"]
