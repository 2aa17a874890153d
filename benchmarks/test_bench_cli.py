"""Issue 12's bar "``bgtask ls``, empty pool, whole process <= 2.5x ``python -I -S -c
pass``", measured as a user runs it: the ``bgtask`` console script of this interpreter's
environment (a normal interpreter: ``site``, and with it whatever ``.pth`` files the
environment has), beside both baselines in the same run, interleaved round by round:

* ``python -I -S -c pass``: the issue's baseline (no ``site`` at all);
* ``python -c pass``: the floor of any console script in this environment (``site``);
* ``bgtask ls`` with ``$BGTASK_POOL`` naming a directory that does not exist;
* ``bgtask --pool DIR ls`` on an existing, empty directory.

Bytecode is written first (one warm-up run without ``PYTHONDONTWRITEBYTECODE``), as an
installed package has it. The modules an empty ``ls`` imports are listed too (the heavy
ones it must not need: dill, filelock, threading, multiprocessing, asyncio...). Results
go to ``benchmarks/.scale-cli.json`` and the terminal; nothing is asserted about time.

:func:`test_quick_path_parses_as_argparse` checks the quick path (command lines of flags
parsed without argparse) against argparse itself, over random command lines.
"""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from typing import Any

import pytest
from _common import PY, save_results

ROUNDS = int(os.environ.get("BGTASK_BENCH_CLI_ROUNDS", "31"))
_SCRIPT = os.path.join(os.path.dirname(PY), "bgtask")
#: what an empty ``ls`` should not import: argparse (with re, gettext, locale) is only for
#: command lines the quick path of ``bgtask.cli`` leaves to it; re, enum (signal), typing,
#: json and pathlib each cost more than a tenth of the whole run.
HEAVY = ("dill", "filelock", "threading", "concurrent.futures", "multiprocessing", "asyncio",
         "subprocess", "socket", "tempfile", "shutil", "json", "typing", "argparse", "gettext",
         "locale", "re", "enum", "signal", "pathlib", "collections")


def _imported(env: dict[str, str]) -> list[str]:
    """The HEAVY modules an empty ``ls`` imports itself (not those ``site`` had loaded:
    an editable install's finder imports pathlib, re... before any of ours)."""
    code = ("import sys\nbefore = set(sys.modules)\nimport bgtask.cli\nbgtask.cli.main(['ls'])\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules and m not in before), file=sys.stderr)")
    out = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stderr.split()


def _environment(env: dict[str, str]) -> dict[str, Any]:
    """What this environment adds before any of our code runs: the console script's own
    imports (pip < 25 generates one that imports re: ~4 ms here), and the modules
    ``site`` loads (an editable install's finder alone took python -c pass from ~7 to
    ~15 ms here; ``pip install -e . --config-settings editable_mode=strict`` has none)."""
    with open(_SCRIPT) as f:
        script = f.read()
    code = "import sys; print(' '.join(sorted(sys.modules)))"
    bare = subprocess.run([PY, "-I", "-S", "-c", code], env=env, capture_output=True, text=True, check=True)
    site = subprocess.run([PY, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {"script_imports_re": "import re" in script,
            "site_adds_modules": sorted(set(site.stdout.split()) - set(bare.stdout.split()))}


@pytest.mark.benchmark(group="scale")
@pytest.mark.skipif(not os.path.exists(_SCRIPT), reason="no bgtask console script beside this python")
def test_ls_empty_pool() -> None:
    tmp = tempfile.mkdtemp(prefix="bgc", dir="/tmp")
    empty = os.path.join(tmp, "empty")
    os.mkdir(empty)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["BGTASK_POOL"] = os.path.join(tmp, "missing")
    env.pop("BGTASK_TEMPLATE", None)
    commands = {
        "bare_isolated_ms": [PY, "-I", "-S", "-c", "pass"],
        "bare_site_ms": [PY, "-c", "pass"],
        "ls_missing_ms": [_SCRIPT, "ls"],
        "ls_empty_dir_ms": [_SCRIPT, "--pool", empty, "ls"],
    }
    try:
        for argv in commands.values():  # bytecode written, caches warm
            subprocess.run(argv, env=env, check=True, capture_output=True)
        times: dict[str, list[float]] = {k: [] for k in commands}
        r: dict[str, Any] = {"rounds": ROUNDS, "load_before": os.getloadavg()}
        for _ in range(ROUNDS):
            for key, argv in commands.items():
                t0 = time.perf_counter()
                subprocess.run(argv, env=env, check=True, capture_output=True)
                times[key].append(time.perf_counter() - t0)
        r.update({k: statistics.median(v) * 1000 for k, v in times.items()})
        for ls in ("ls_missing_ms", "ls_empty_dir_ms"):
            r[ls.replace("_ms", "_vs_isolated")] = r[ls] / r["bare_isolated_ms"]
            r[ls.replace("_ms", "_vs_site")] = r[ls] / r["bare_site_ms"]
        r["site_vs_isolated"] = r["bare_site_ms"] / r["bare_isolated_ms"]
        r["heavy_imported"] = _imported(env)
        r.update(_environment(env))
        r["load_after"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save_results("scale-cli", r)


#: words the random command lines of the check below are made of.
_WORDS = ("ls", "ps", "clean", "web", "info", "spawn", "kill", "rm", "wait", "bogus", "--help", "-h",
          "--version", "--pool", "--pool=", "--pool=/x", "/y", "-x", "--running", "--finished", "-q",
          "--quiet", "--json", "-w", "--wide", "-u", "--meta", "a=b", "--run", "-qw", "--", "--host",
          "--port", "--any", "-f", "--force", "1", "--timeout")


def test_quick_path_parses_as_argparse() -> None:
    """Every command line the quick path answers gives the namespace argparse gives."""
    from bgtask import cli

    rng = random.Random(12)
    cases = [["ls"], ["ps"], ["--pool", "/a", "ls"], ["--pool=/a", "--pool", "/b", "ls", "--pool", "/c"],
             ["ls", "--running", "--running"], ["ls", "-q", "-w", "--running"], ["clean"], ["web"]]
    cases += [[rng.choice(_WORDS) for _ in range(n)] for n in range(1, 7) for _ in range(2000)]
    quick = 0
    for argv in cases:
        got = cli.quick_args(argv)
        if got is None:
            continue
        quick += 1
        parser = cli.build_parser(cli._command_word(argv))
        with contextlib.redirect_stderr(io.StringIO()) as err:
            try:
                expected = parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"quick path answered {argv}, argparse says: {err.getvalue()}")
        assert vars(got) == vars(expected), argv
    assert quick > 100
