"""Every code block of README.rst runs as it is written, and the reference in docs/
builds with Sphinx, warnings as errors.

A block is pasted, not paraphrased: each one is claimed below by what it contains, and a
block that no test claims fails ``test_every_block_is_run``. Each runs against the
test's own short pool (``BGTASK_POOL``), and the pool fixture fails the test if
anything it started outlives it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.rst").read_text()
MARK = "@@ end of command @@"


def blocks() -> list[str]:
    """The code blocks of the README: ``::`` literal blocks and ``.. code-block::``."""
    found = []
    lines = README.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".. ") or \
                line.startswith(".. code-block::"):
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                body.append(lines[i])
                i += 1
            text = textwrap.dedent("\n".join(body)).strip("\n")
            if text:
                found.append(text + "\n")
            continue
        i += 1
    return found


def claimed(*needles: str) -> str:
    """The one block holding every one of *needles*."""
    hits = [b for b in blocks() if all(n in b for n in needles)]
    assert len(hits) == 1, f"{len(hits)} README blocks hold {needles!r}"
    return hits[0]


QUICK_START = ('"$d/venv/bin/pip" install -q .', "mktemp -d")
ACTIVATE = ('. "$d/venv/bin/activate"',)
TEST_COMMAND = ("pip install -q -e '.[test,docs,web]'", "pytest -q")
TOUR = ("task = bgtask.spawn(", "task.restart()")
WORKER = ("# worker.py",)
CLIENT = ("# client.py",)
STDIN = ('bgtask.spawn(["sort"])',)
SESSION = ("$ bgtask ls",)
OPERATIONS = ("# operations.py",)
ALL = [QUICK_START, ACTIVATE, TEST_COMMAND, TOUR, WORKER, CLIENT, STDIN, SESSION, OPERATIONS]


def test_every_block_is_run() -> None:
    for block in blocks():
        owners = [needles for needles in ALL if all(n in block for n in needles)]
        assert len(owners) == 1, f"no test runs (or several claim) this README block:\n{block}"


def _env(pool_dir: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["BGTASK_POOL"] = pool_dir
    env.update(extra)
    return env


def _run(argv: list[str], cwd: Path | str, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.timeout(600)
def test_quick_start_installs_and_runs_a_job(pool_dir: str, tmp_path: Path) -> None:
    # On a copy of the checkout: `pip install .` builds in the source tree.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info",
                                                             "__pycache__", "_build", ".*cache"))
    script = claimed(*QUICK_START) + claimed(*ACTIVATE)
    shown = _run(["/bin/bash", "-c", script], src, _env(pool_dir, TMPDIR=str(tmp_path)), timeout=540)
    assert shown == "exit status 0\nhello from a job\nbye\nhi\n"


def test_the_test_command_is_what_ci_runs() -> None:
    command = claimed(*TEST_COMMAND).strip()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci]


def _python_env(pool_dir: str) -> dict[str, str]:
    return _env(pool_dir, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_the_python_tour(pool_dir: str, tmp_path: Path) -> None:
    (tmp_path / "tour.py").write_text(claimed(*TOUR))
    proc = subprocess.run([sys.executable, "tour.py"], cwd=tmp_path, env=_python_env(pool_dir),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "b'importing\\n'\n0 10\nexit status -15\n"
    assert proc.stderr == "a warning\n"


def test_the_operations_example(pool_dir: str, tmp_path: Path) -> None:
    (tmp_path / "operations.py").write_text(claimed(*OPERATIONS))
    proc = subprocess.run([sys.executable, "operations.py"], cwd=tmp_path, env=_python_env(pool_dir),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "1\nTrue -15 2 True\n"


def test_worker_and_client(pool_dir: str, tmp_path: Path) -> None:
    (tmp_path / "worker.py").write_text(claimed(*WORKER))
    (tmp_path / "client.py").write_text(claimed(*CLIENT))
    env = _python_env(pool_dir)
    # run by hand, the worker says what it is for
    proc = subprocess.run([sys.executable, "worker.py"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "worker.py runs as a bgtask job: start it with client.py\n"
    shown = _run([sys.executable, "client.py"], tmp_path, env).splitlines()
    assert shown[0] == "step 1: 1 (1% done)"
    assert "step 5: 25 (5% done)" in shown
    assert shown[-3] == "exit status 0"
    assert re.fullmatch(r"result (25|36)", shown[-2])
    assert re.fullmatch(r"stopped at step (5|6)", shown[-1])


def test_stdin_example(pool_dir: str, tmp_path: Path) -> None:
    (tmp_path / "stdin.py").write_text(claimed(*STDIN))
    assert _run([sys.executable, "stdin.py"], tmp_path, _python_env(pool_dir)) == \
        "apple\nbanana\ncherry\n20 20\n"


def _normal(text: str) -> list[str]:
    """Lines with what changes from run to run (ids, times, sizes) made alike."""
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    return [" ".join(line.split()) for line in text.strip().splitlines()]


@pytest.mark.timeout(120)
def test_the_command_line_session(pool_dir: str, tmp_path: Path) -> None:
    session = claimed(*SESSION)
    steps: list[tuple[str, str]] = []
    for line in session.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], ""))
        else:
            command, shown = steps[-1]
            steps[-1] = (command, shown + line + "\n")
    # `bgtask` as the activated virtual environment would have it: this checkout's
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "bgtask"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m bgtask "$@"\n')
    wrapper.chmod(0o755)
    script = "exec 2>&1\n" + "".join(f"{command}\necho '{MARK}'\n" for command, _ in steps)
    env = _python_env(pool_dir)
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", TMPDIR=str(tmp_path), COLUMNS="100")
    env.pop("NO_COLOR", None)
    proc = subprocess.run(["/bin/bash", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=100, stdin=subprocess.DEVNULL)
    outputs = proc.stdout.split(MARK + "\n")
    assert len(outputs) == len(steps) + 1, proc.stdout
    for (command, expected), got in zip(steps, outputs, strict=False):
        assert _normal(got) == _normal(expected), f"$ {command}\n{got}"


@pytest.mark.timeout(300)
def test_the_reference_builds_without_warnings(tmp_path: Path) -> None:
    pytest.importorskip("sphinx", reason="the docs extra: pip install -e '.[docs]'")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs"), str(tmp_path / "html")], capture_output=True, text=True,
                          timeout=280, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "html" / "index.html").exists()
