"""What a non-editable install (``pip install .``, a wheel) carries: every package under
``bgtask/`` and every data file, read from pyproject.toml's own configuration.

A package missing from the list is invisible to the tests of a checkout (they import the
tree) and breaks only for users: ``bgtask/_format/`` did exactly that (``cannot import
name '_format'``). This test is fast and offline; ``tests/test_readme.py``'s quick start
is the slow proof with a real install.
"""

from __future__ import annotations

import fnmatch
import pathlib
import sys

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _packages_on_disk() -> set[str]:
    return {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "bgtask").rglob("__init__.py")
            if "__pycache__" not in p.parts}


def test_every_package_under_bgtask_is_installed() -> None:
    from setuptools import find_packages

    cfg = _config()
    assert isinstance(cfg["packages"], dict), "packages by pattern ([tool.setuptools.packages.find])"
    find = cfg["packages"]["find"]
    found = set(find_packages(str(ROOT), include=find.get("include", ["*"]), exclude=find.get("exclude", ())))
    on_disk = _packages_on_disk()
    assert {"bgtask", "bgtask._client", "bgtask._supervisor", "bgtask._wire", "bgtask._format"} <= on_disk
    assert on_disk <= found, f"not installed: {sorted(on_disk - found)}"
    assert found <= on_disk | {"bgtask"}, f"not ours: {sorted(found - on_disk)}"


def test_every_data_file_is_installed() -> None:
    """py.typed, and the web view's templates and static files (anything not .py in a
    package's directory must be named in package-data, or the wheel leaves it out)."""
    data = _config().get("package-data", {})
    missing = []
    for package in sorted(_packages_on_disk()):
        pdir = ROOT.joinpath(*package.split("."))
        globs = data.get(package, [])
        for path in pdir.rglob("*"):
            rel = path.relative_to(pdir)
            if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in rel.parts:
                continue
            if any(part.startswith(".") for part in rel.parts):
                continue  # editors' swap files and the like
            sub = next((p for p in _packages_on_disk() if p != package and p.startswith(package + ".")
                        and path.is_relative_to(ROOT.joinpath(*p.split(".")))), None)
            if sub is not None:
                continue  # a subpackage's file: checked under that package
            if not any(fnmatch.fnmatch(str(rel), g) for g in globs):
                missing.append(f"{package}: {rel}")
    assert "py.typed" in data.get("bgtask", [])
    assert not missing, f"data files a wheel would leave out: {missing}"
