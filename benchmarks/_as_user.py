"""Run a benchmark as a non-root user (issue 12: the per-user pipe budget,
``/proc/sys/fs/pipe-user-pages-soft``, binds only users without ``CAP_SYS_RESOURCE``;
root never sees it).

From root::

    python benchmarks/_as_user.py -- -m pytest benchmarks/test_bench_scale.py -s
    BGTASK_BENCH_SCALE_N=1000 python benchmarks/_as_user.py -- -m pytest benchmarks/test_bench_scale.py -s
    python benchmarks/_as_user.py --remove      # the user and the cache go

What it does (each step idempotent, so a second run reuses the first's work):

* the user: ``$BGTASK_BENCH_USER``, else ``bgbench``, a system user made here with
  ``useradd --system --user-group --no-create-home --home-dir /nonexistent
  --shell /usr/sbin/nologin`` if it does not exist. A user of its own, not ``nobody``:
  the pipe budget is per user, and other services run as ``nobody``. ``--remove``
  deletes it (only if this module made it: the passwd entry's comment says so);
* the interpreter: ``$BGTASK_BENCH_BASE_PYTHON``, else the ``python3`` of the system
  path (``os.defpath``): an interpreter the user can run, unlike one under root's
  home. A virtual environment of it, root-owned and world-readable, is kept in
  ``<tmp>/bgtask-asuser/venv`` with the benchmarks' dependencies (the versions of the
  calling interpreter's when it has them);
* the project: the working tree (uncommitted changes too, not ``.git``, ``build``, caches)
  is copied to ``<tmp>/bgtask-asuser/src`` and ``pip install``-ed (not editable) into
  that environment whenever its ``bgtask/`` or ``pyproject.toml`` changed. The copy's
  ``benchmarks/`` belongs to the user: the benchmarks write their JSON there;
* the run: the given arguments after the environment's ``python``, as that user
  (``setpriv``, else ``runuser``), in the copy, with a clean environment (``PATH``,
  ``HOME`` in the cache, ``LANG``, ``PYTEST_ADDOPTS=-p no:cacheprovider`` (the copy is
  not the user's to write), every ``BGTASK_*`` variable of the caller, and
  ``--env K=V``). The JSON files the run wrote in the copy's ``benchmarks/`` are copied
  back beside this file with ``-asuser`` before the extension (``.scale-1000.json``:
  ``.scale-1000-asuser.json``);
* afterwards, any process still running as the user (a task the benchmark did not
  delete) is reported and killed by pid -- only for a user this module made (nothing
  else runs as it).

Benchmarks only: the test suite does not use it. Importable (``run_as_user``) by a
benchmark that compares root with a non-root user in one run (``test_bench_pipes.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
USER = os.environ.get("BGTASK_BENCH_USER", "bgbench")
CACHE = os.path.join(tempfile.gettempdir(), "bgtask-asuser")
#: the passwd comment (GECOS) of a user made here: ``--remove`` and the leftover
#: cleanup touch only such a user.
MARK = "bgtask benchmarks (benchmarks/_as_user.py)"
#: bgtask's dependencies (installed once: the project itself goes in with ``--no-deps``)
#: and what the benchmarks import besides.
DEPS = ["dill", "filelock", "wcwidth", "pytest", "pytest-timeout", "pytest-benchmark", "psutil",
        "setuptools", "wheel"]
#: not copied: history, build products, caches, results of earlier runs.
#: the venv's pip (see prepare).
PIP = "pip>=25"
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "__pycache__", "*.egg-info", ".benchmarks",
                                ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis", "_build",
                                ".venv", "*.json", "*.pyc")


def _log(msg: str) -> None:
    print(f"[as_user] {msg}", file=sys.stderr, flush=True)


def base_python() -> str:
    found = os.environ.get("BGTASK_BENCH_BASE_PYTHON") or shutil.which("python3", path=os.defpath)
    if not found:
        raise RuntimeError("no python3 on the system path: set BGTASK_BENCH_BASE_PYTHON")
    return found


def ensure_user(name: str = USER) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--comment", MARK, name], check=True)
    _log(f"created user {name}")
    return pwd.getpwnam(name)


def _made_here(pw: pwd.struct_passwd) -> bool:
    return pw.pw_gecos == MARK


def _safe_dir(path: str, owner: int, mode: int) -> None:
    """A directory in the world-writable tmp that is really ours (no symlink planted)."""
    try:
        os.mkdir(path, mode)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid not in (0, owner):
        raise RuntimeError(f"{path} exists and is not ours: remove it")
    os.chown(path, owner, -1)
    os.chmod(path, mode)


def _tree_hash(root: str) -> str:
    h = hashlib.sha256()
    for top in ("bgtask", "pyproject.toml"):
        path = os.path.join(root, top)
        files = [path] if os.path.isfile(path) else sorted(
            os.path.join(d, f) for d, dirs, fs in os.walk(path) for f in fs
            if not f.endswith(".pyc") and "__pycache__" not in d)
        for f in files:
            h.update(os.path.relpath(f, root).encode() + b"\0")
            with open(f, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _pins() -> list[str]:
    pins = []
    for dep in DEPS:
        try:
            pins.append(f"{dep}=={metadata.version(dep)}")
        except metadata.PackageNotFoundError:
            pins.append(dep)
    return pins


def prepare(name: str = USER) -> tuple[pwd.struct_passwd, str, str]:
    """The user, the environment's interpreter, the copy of the tree (made if needed)."""
    if os.geteuid() != 0:
        raise RuntimeError("_as_user needs root (it makes a user and switches to it)")
    os.umask(0o022)
    pw = ensure_user(name)
    _safe_dir(CACHE, 0, 0o755)
    venv = os.path.join(CACHE, "venv")
    py = os.path.join(venv, "bin", "python")
    pins = _pins()
    stamp = os.path.join(CACHE, "deps.stamp")
    want = "\n".join([base_python(), PIP, *pins])
    if not os.path.exists(py) or not os.path.exists(stamp) or _read(stamp) != want:
        _log(f"making {venv} with {base_python()}")
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([base_python(), "-m", "venv", venv], check=True)
        # A current pip: the console script it writes is what an empty ``bgtask ls``
        # starts with (pip before 25 writes one that imports ``re``: ~3 ms).
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", PIP], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins], check=True)
        with open(stamp, "w") as f:
            f.write(want)
        with open(os.path.join(CACHE, "installed.stamp"), "w") as f:
            f.write("")
    src = os.path.join(CACHE, "src")
    shutil.rmtree(src, ignore_errors=True)
    shutil.copytree(ROOT, src, ignore=IGNORE, symlinks=True)
    # Bytecode, as an installed package has it (``-m pytest`` in the copy imports bgtask
    # from it, and so do the supervisors), written by the environment's interpreter.
    subprocess.run([py, "-m", "compileall", "-q", os.path.join(src, "bgtask")], check=True)
    bench = os.path.join(src, "benchmarks")
    os.chown(bench, pw.pw_uid, pw.pw_gid)
    home = os.path.join(CACHE, f"home-{pw.pw_name}")
    _safe_dir(home, pw.pw_uid, 0o700)
    installed = os.path.join(CACHE, "installed.stamp")
    tree = _tree_hash(src)
    if not os.path.exists(installed) or _read(installed) != tree:
        _log("installing the working tree's copy")
        build = tempfile.mkdtemp(prefix="bgau", dir=CACHE)
        try:
            # Built from a copy of the copy: setuptools writes build/ and *.egg-info next
            # to the sources, and the user must not see those in src/.
            shutil.copytree(src, os.path.join(build, "s"), ignore=IGNORE)
            subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                            "--no-build-isolation", "--force-reinstall", os.path.join(build, "s")],
                           check=True, cwd=build)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        with open(installed, "w") as f:
            f.write(tree)
    return pw, py, src


def user_env(pw: pwd.struct_passwd, py: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {"PATH": os.path.dirname(py) + os.pathsep + os.defpath, "HOME": os.path.join(CACHE, f"home-{pw.pw_name}"),
           "USER": pw.pw_name, "LOGNAME": pw.pw_name, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
           # The copy is not the user's to write: pytest's cache there would warn, and
           # the project turns warnings into errors (after the results were written).
           "PYTEST_ADDOPTS": "-p no:cacheprovider"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("BGTASK_") and k != "BGTASK_POOL"})
    env.update(extra or {})
    return env


def _switch(pw: pwd.struct_passwd) -> list[str]:
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups", "--"]
    return ["runuser", "-u", pw.pw_name, "--"]


def pids_of_user(uid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if st.st_uid == uid and state != b"Z":
            found.append(int(entry))
    return found


def kill_leftovers(pw: pwd.struct_passwd) -> list[int]:
    """Processes still running as a user made here (nothing else runs as it): killed,
    by pid. Returns their pids."""
    if not _made_here(pw):
        return []
    left = pids_of_user(pw.pw_uid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids_of_user(pw.pw_uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if left:
        _log(f"killed {len(left)} leftover processes of {pw.pw_name}: {left[:20]}")
    return left


def run_as_user(args: list[str], env: dict[str, str] | None = None, name: str = USER,
                capture: bool = False, timeout: float | None = None,
                copy_back: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``<venv python> ARGS`` as the user, in the copy of the tree (paths in *args*
    are relative to it: ``benchmarks/test_bench_pipes.py``). *capture*: its stdout is
    returned (stderr passes through)."""
    pw, py, src = prepare(name)
    started = time.time()
    argv = [*_switch(pw), py, *args]
    proc = subprocess.Popen(argv, cwd=src, env=user_env(pw, py, env),
                            stdout=subprocess.PIPE if capture else None, text=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if copy_back:
            _copy_back(os.path.join(src, "benchmarks"), started)
        kill_leftovers(pw)
    return subprocess.CompletedProcess(argv, proc.returncode, out, None)


def _copy_back(bench: str, since: float) -> None:
    for f in os.listdir(bench):
        path = os.path.join(bench, f)
        if f.endswith(".json") and os.path.getmtime(path) >= since - 1:
            stem, ext = os.path.splitext(f)
            dest = os.path.join(HERE, f"{stem}-asuser{ext}")
            shutil.copyfile(path, dest)
            _log(f"results: {dest}")


def remove(name: str = USER) -> None:
    shutil.rmtree(CACHE, ignore_errors=True)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return
    if _made_here(pw):
        kill_leftovers(pw)
        subprocess.run(["userdel", name], check=True)
        _log(f"removed user {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--user", default=USER)
    ap.add_argument("--env", action="append", default=[], metavar="K=V")
    ap.add_argument("--remove", action="store_true", help="remove the user (if made here) and the cache")
    ap.add_argument("args", nargs="*", help="arguments of the environment's python (after --)")
    ns = ap.parse_args()
    if ns.remove:
        remove(ns.user)
        return 0
    if not ns.args:
        ap.error("nothing to run: give python arguments after --")
    env = dict(kv.split("=", 1) for kv in ns.env)
    return run_as_user(ns.args, env, ns.user).returncode


if __name__ == "__main__":
    sys.exit(main())
