"""The module surface: the exception tree, pickling of errors, and the public names."""

from __future__ import annotations
import __future__

import importlib
import inspect
import pickle
import pkgutil

import pytest

import bgtask

# -- the exception tree -----------------------------------------------------------------------

TREE = [
    pytest.param(bgtask.TaskNotFoundError, (bgtask.BgTaskError, LookupError), id="TaskNotFoundError"),
    pytest.param(bgtask.AccessDeniedError, (bgtask.BgTaskError, PermissionError), id="AccessDeniedError"),
    pytest.param(bgtask.SpawnError, (bgtask.BgTaskError,), id="SpawnError"),
    pytest.param(bgtask.TaskLockedError, (bgtask.SpawnError, bgtask.BgTaskError), id="TaskLockedError"),
    pytest.param(bgtask.OutputGoneError, (bgtask.BgTaskError, LookupError), id="OutputGoneError"),
    pytest.param(bgtask.StreamClosedError, (bgtask.BgTaskError,), id="StreamClosedError"),
    pytest.param(bgtask.RemoteError, (bgtask.BgTaskError,), id="RemoteError"),
    pytest.param(bgtask.TaskUnresponsiveError, (bgtask.BgTaskError, TimeoutError), id="TaskUnresponsiveError"),
    pytest.param(bgtask.HostUnreachableError, (bgtask.BgTaskError, ConnectionError), id="HostUnreachableError"),
    pytest.param(bgtask.BgTaskError, (Exception,), id="BgTaskError"),
]


@pytest.mark.parametrize(("cls", "bases"), TREE)
def test_exception_tree(cls: type, bases: tuple[type, ...]) -> None:
    for base in bases:
        assert issubclass(cls, base), f"{cls.__name__} is not a {base.__name__}"


def test_exceptions_that_are_not_lookup_or_permission_errors() -> None:
    # The tree is exact: a SpawnError is not a "not found", a closed stream is not gone output.
    assert not issubclass(bgtask.SpawnError, LookupError)
    assert not issubclass(bgtask.StreamClosedError, LookupError)
    assert not issubclass(bgtask.RemoteError, LookupError)
    assert not issubclass(bgtask.TaskNotFoundError, PermissionError)
    assert not issubclass(bgtask.OutputGoneError, bgtask.TaskNotFoundError)


ERRORS = [
    pytest.param(bgtask.BgTaskError("plain"), {}, id="BgTaskError"),
    pytest.param(bgtask.TaskNotFoundError("no task 5", pid=5), {"pid": 5}, id="TaskNotFoundError"),
    pytest.param(bgtask.AccessDeniedError("not yours", pid=6, owner=1000), {"pid": 6, "owner": 1000},
                 id="AccessDeniedError"),
    pytest.param(bgtask.SpawnError("cannot execute 'x'", errno=2, filename="x"),
                 {"errno": 2, "filename": "x"}, id="SpawnError"),
    pytest.param(bgtask.TaskLockedError("lock 'n' is held", lock="n"), {"lock": "n"}, id="TaskLockedError"),
    pytest.param(bgtask.OutputGoneError("gone", start=1234), {"start": 1234}, id="OutputGoneError"),
    pytest.param(bgtask.StreamClosedError("closed"), {}, id="StreamClosedError"),
    pytest.param(bgtask.RemoteError("failed", text="Traceback ...\nKeyError: 1"),
                 {"text": "Traceback ...\nKeyError: 1"}, id="RemoteError"),
    pytest.param(bgtask.TaskUnresponsiveError("no answer", pid=8, since=1700000000.5),
                 {"pid": 8, "since": 1700000000.5}, id="TaskUnresponsiveError"),
    pytest.param(bgtask.HostUnreachableError("ssh failed", host="build1"), {"host": "build1"},
                 id="HostUnreachableError"),
]


@pytest.mark.parametrize(("err", "attrs"), ERRORS)
@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_errors_survive_a_pickle_round_trip(err: BaseException, attrs: dict, protocol: int) -> None:
    back = pickle.loads(pickle.dumps(err, protocol=protocol))
    assert type(back) is type(err)
    assert back.args == err.args
    assert str(back) == str(err)
    for name, value in attrs.items():
        assert getattr(back, name) == value, name


def test_access_denied_error_reads_like_a_message() -> None:
    # PermissionError would format (errno, strerror); ours says what happened.
    err = bgtask.AccessDeniedError("task 7 belongs to uid 1000", pid=7, owner=1000)
    assert str(err) == "task 7 belongs to uid 1000"
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_every_error_can_be_raised_and_caught_by_its_builtin_base() -> None:
    with pytest.raises(LookupError):
        raise bgtask.TaskNotFoundError("x", pid=1)
    with pytest.raises(PermissionError):
        raise bgtask.AccessDeniedError("x")
    with pytest.raises(bgtask.SpawnError):
        raise bgtask.TaskLockedError("x", lock="l")
    with pytest.raises(LookupError):
        raise bgtask.OutputGoneError("x", start=3)


# -- the public names -------------------------------------------------------------------------

CONTRACT_NAMES = {
    "TaskPool", "default_pool", "spawn", "search", "Task", "current", "Stream",
    "BgTaskError", "TaskNotFoundError", "AccessDeniedError", "SpawnError", "TaskLockedError",
    "OutputGoneError", "StreamClosedError", "RemoteError", "UndecodableValue", "wait",
}


def _public_names() -> set[str]:
    names = set()
    for name in dir(bgtask):
        if name.startswith("_"):
            continue
        obj = getattr(bgtask, name)
        # Submodules (bgtask.cli once imported) and `from __future__ import annotations`
        # are not exports.
        if inspect.ismodule(obj) or isinstance(obj, __future__._Feature):
            continue
        names.add(name)
    return names


def test_all_lists_every_public_name_exactly_once() -> None:
    assert len(bgtask.__all__) == len(set(bgtask.__all__)), "a name is listed twice in __all__"
    assert _public_names() == set(bgtask.__all__) - {"__version__"}
    for name in bgtask.__all__:
        assert hasattr(bgtask, name), name
    assert CONTRACT_NAMES <= set(bgtask.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict = {}
    exec("from bgtask import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(bgtask.__all__)


def _private_modules() -> list:
    mods = []
    for info in pkgutil.walk_packages(bgtask.__path__, "bgtask."):
        parts = info.name.split(".")[1:]
        if any(p.startswith("_") for p in parts) and parts != ["__main__"] and not info.ispkg:
            mods.append(importlib.import_module(info.name))
    return mods


def test_each_public_name_is_defined_by_exactly_one_private_module() -> None:
    mods = _private_modules()
    for mod in mods:
        assert hasattr(mod, "__all__"), f"{mod.__name__} has no __all__"
    for name in set(bgtask.__all__) - {"__version__"}:
        owners = [m.__name__ for m in mods if name in m.__all__]
        assert len(owners) == 1, f"{name} is exported by {owners}"


def test_public_objects_say_bgtask_in_their_module() -> None:
    for name in bgtask.__all__:
        obj = getattr(bgtask, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "bgtask", f"{name}.__module__ is {obj.__module__}"
    assert repr(bgtask.Task) == "<class 'bgtask.Task'>"
    assert repr(bgtask.TaskNotFoundError) == "<class 'bgtask.TaskNotFoundError'>"


def test_package_is_typed() -> None:
    import os

    assert os.path.exists(os.path.join(os.path.dirname(bgtask.__file__), "py.typed"))
