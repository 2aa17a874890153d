"""``python -m bgtask``: the command line (see ``bgtask.cli``)."""

from bgtask.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
