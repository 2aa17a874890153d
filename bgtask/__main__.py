"""``python -m bgtask``: the command line (see ``bgtask.cli``)."""

from bgtask.cli import main

raise SystemExit(main())
