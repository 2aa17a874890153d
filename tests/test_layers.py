"""The layers of ``bgtask/`` (drawn in ``bgtask/__init__.py``), checked over the AST of
every module: an import that breaks the rule fails here, by name.

Imports under ``if TYPE_CHECKING:`` are for annotations only and do not count.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "bgtask"

L0 = {"bgtask._errors", "bgtask._paths", "bgtask._process"}
THIRD_PARTY_OF_CLIENT = {"dill", "filelock"}
CLI = {"bgtask", "bgtask._format", "bgtask._cli_args", "bgtask._cli_io", "bgtask._cli_jobs",
       "bgtask._cli_show",
       # `bgtask web`, imported inside its command only (starlette is an extra)
       "bgtask.web"}

#: module prefix -> the bgtask modules (prefixes) it may import
ALLOWED: dict[str, set[str]] = {
    "bgtask._errors": set(),
    "bgtask._paths": {"bgtask._errors"},
    "bgtask._process": set(),
    "bgtask._wire": L0 | {"bgtask._wire"},
    "bgtask._supervisor": L0 | {"bgtask._wire", "bgtask._supervisor"},
    "bgtask._client": L0 | {"bgtask._wire", "bgtask._client", "bgtask._format"},
    # presentation over info dicts (reprs, the CLI's tables, the web view): below the
    # client, so that reprs and the CLI word things the same way
    "bgtask._format": {"bgtask._errors", "bgtask._wire.names", "bgtask._format"},
    "bgtask.__init__": {"bgtask._errors", "bgtask._client"},
    "bgtask.__main__": {"bgtask.cli"},
    # the outer layer: the public API (``import bgtask``) and the shared presentation;
    # the command line's own modules only import one another at that layer
    "bgtask.cli": CLI,
    "bgtask._cli_args": CLI,
    "bgtask._cli_io": CLI,
    "bgtask._cli_jobs": CLI,
    "bgtask._cli_show": CLI,
    "bgtask.web": {"bgtask", "bgtask._format", "bgtask.web"},
    "bgtask._bridge": {"bgtask", "bgtask._format", "bgtask._client", "bgtask._wire", "bgtask._paths",
                       "bgtask._process", "bgtask._errors"},
}
#: third-party packages a layer must never import (the supervisor sees blobs only).
FORBIDDEN_THIRD_PARTY = {
    "bgtask._errors": THIRD_PARTY_OF_CLIENT,
    "bgtask._paths": THIRD_PARTY_OF_CLIENT,
    "bgtask._process": THIRD_PARTY_OF_CLIENT,
    "bgtask._wire": THIRD_PARTY_OF_CLIENT,
    "bgtask._supervisor": THIRD_PARTY_OF_CLIENT,
}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 2:
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every runtime import in *tree*."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name == "bgtask" or (node.level and not node.module):
                # ``from bgtask import _paths``: each name is a module of the package
                found.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
            else:
                found.append((node.lineno, name))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _rule(module: str) -> str:
    best = ""
    for prefix in ALLOWED:
        if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
            best = prefix
    return best


MODULES = sorted(PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PKG)) for p in MODULES])
def test_imports_flow_one_way(path: pathlib.Path) -> None:
    module = _module_name(path)
    rule = _rule(module)
    assert rule, f"{module} belongs to no layer: add it to ALLOWED in tests/test_layers.py"
    allowed = ALLOWED[rule]
    bad = []
    for line, name in _imports(ast.parse(path.read_text()), module):
        top = name.split(".")[0]
        if top in FORBIDDEN_THIRD_PARTY.get(rule, set()):
            bad.append(f"line {line}: {name} (a third-party package this layer never needs)")
        if top != "bgtask":
            continue
        if name == "bgtask":
            ok = "bgtask" in allowed
        else:
            ok = any(name == a or name.startswith(a + ".") for a in allowed if a != "bgtask") or (
                "bgtask" in allowed and not name.startswith("bgtask._"))
        if not ok:
            bad.append(f"line {line}: {name}")
    assert not bad, f"{module} ({rule} layer) imports across the layers:\n  " + "\n  ".join(bad)


def test_the_rule_catches_a_bad_import() -> None:
    tree = ast.parse("from bgtask._client import task\nimport dill\n")
    names = [n for _, n in _imports(tree, "bgtask._supervisor.job")]
    assert names == ["bgtask._client", "dill"]
    assert _rule("bgtask._supervisor.job") == "bgtask._supervisor"
    assert not any(n.startswith(a) for n in names[:1] for a in ALLOWED["bgtask._supervisor"])


def test_a_type_checking_import_does_not_count() -> None:
    tree = ast.parse("TYPE_CHECKING = False\nif TYPE_CHECKING:\n    from bgtask._client.task import Task\n")
    assert _imports(tree, "bgtask._supervisor.job") == []
