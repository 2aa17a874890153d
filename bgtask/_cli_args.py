"""The command line's argument parsing: the parser class, the argument types, and the
two exceptions every command raises for the user.

Usage errors are the caller's mistakes (exit status 2) and are worded by the parser of
the command that was given, so that ``bgtask ls --bogus`` says ``bgtask ls: ...`` and
points at ``bgtask ls --help``, not at the top-level help.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, NoReturn

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


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class Failure(Exception):
    """A one-line error already worded for the user (exit status 1)."""


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


# -- argument types --------------------------------------------------------------------------


def pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a task id: {text!r}")
    return value


def count(text: str) -> int:
    """A number of lines: 0 or more (``tail -n -2`` is a mistake, not "nothing")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def size(text: str) -> int:
    """``4096``, ``64K``, ``1M``, ``2G`` (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    if t and t[-1] in "KMG":
        factor = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r} (e.g. 4096, 64K, 1M)") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    if not value < 1 << 62:  # also nan and inf
        raise argparse.ArgumentTypeError(f"too large a size: {text!r}")
    return int(value)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    if not value < 1e9:  # also nan and inf (no clock waits that long)
        raise argparse.ArgumentTypeError(f"too long a time: {text!r} seconds")
    return value


def pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def meta_value(text: str) -> Any:
    """A ``--meta`` value: JSON when it parses (``3``, ``true``, ``[1, 2]``), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


__all__ = ["PROG", "Failure", "Formatter", "Parser", "PoolAction", "UsageError", "count", "meta_value", "pair", "pid", "seconds",
           "size", "unknown_command"]
