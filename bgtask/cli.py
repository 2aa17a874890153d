"""The ``bgtask`` command line (placeholder until the CLI lands)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("usage: bgtask COMMAND ...", file=sys.stderr if argv else sys.stdout)
    return 0


__all__ = ["main"]
