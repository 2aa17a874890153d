"""Meta values and messages: what the writer encodes, what the reader gets back.

Plain data is written with pickle (dill would write the same thing, ten times slower,
and importing it costs a client ~40 ms); everything else with dill. Either way the
reader gets an equal object of the same type, or an ``UndecodableValue``.
"""

from __future__ import annotations

import collections
import pickle
import subprocess
from typing import Any

import dill
import pytest
from helpers import PY, REPO

from bgtask import UndecodableValue
from bgtask._client import codec as _codec


class Label(str):
    """A str subclass: not plain (its class must be named), so dill writes it."""


def _deep(n: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(n):
        value = [value]
    return value


PLAIN = [
    pytest.param(0, id="int"), pytest.param(-2**200, id="bigint"), pytest.param(1.5, id="float"),
    pytest.param("naïve", id="str"), pytest.param(b"\xff\x00", id="bytes"), pytest.param(None, id="none"),
    pytest.param(True, id="bool"), pytest.param([1, "a", [b""]], id="list"), pytest.param((1, (2,)), id="tuple"),
    pytest.param({"a": {"b": [1, {2, 3}]}, 5: None}, id="dict"), pytest.param(frozenset({1}), id="frozenset"),
]
NOT_PLAIN = [
    pytest.param(Label("x"), id="str-subclass"),
    pytest.param(collections.OrderedDict(a=1), id="dict-subclass"),
    pytest.param(bytearray(b"ab"), id="bytearray"),
    pytest.param(1 + 2j, id="complex"),
    pytest.param(_deep(40), id="deeper-than-32"),
    pytest.param([1, Label("inside")], id="a-class-inside-a-list"),
]


@pytest.mark.parametrize("value", PLAIN)
def test_plain_values_are_pickled_and_come_back_equal(value: Any) -> None:
    blob = _codec.encode(value)
    assert blob == pickle.dumps(value, pickle.DEFAULT_PROTOCOL)
    back = _codec.decode(blob)
    assert back == value and type(back) is type(value)
    assert dill.loads(blob) == value  # a reader that uses dill itself gets it too


@pytest.mark.parametrize("value", NOT_PLAIN)
def test_other_values_go_through_dill_and_keep_their_type(value: Any) -> None:
    back = _codec.decode(_codec.encode(value))
    assert back == value and type(back) is type(value)


def test_a_self_containing_list_goes_through_dill() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    back = _codec.decode(_codec.encode(loop))
    assert back[0] == 1 and back[1] is back


def test_unserializable_raises_type_error_naming_what() -> None:
    with pytest.raises(TypeError, match="meta value 'k' of type generator"):
        _codec.encode((i for i in ()), "meta value 'k'")


def test_a_blob_of_an_unknown_class_is_a_placeholder() -> None:
    blob = b"cno_such_mod\nCls\n."  # protocol 0: the class no_such_mod.Cls
    value = _codec.decode(blob)
    assert isinstance(value, UndecodableValue) and value.blob == blob
    assert "no_such_mod" in value.error


def test_plain_data_never_imports_dill() -> None:
    code = ("import sys\n"
            "from bgtask._client import codec as _codec\n"
            "v = {'name': 'nightly', 'progress': 0.5, 'tags': ['a', 'b'], 'n': None}\n"
            "assert _codec.decode(_codec.encode(v)) == v\n"
            "assert _codec.decode_meta(_codec.encode_meta(v)) == v\n"
            "print('dill' in sys.modules)\n"
            "_codec.encode(lambda: 1)\n"
            "print('dill' in sys.modules)\n")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"PYTHONPATH": REPO}, check=True).stdout.split()
    assert out == ["False", "True"]


def test_the_job_side_reads_what_a_client_wrote_either_way() -> None:
    """A blob written one way decodes the same in another process."""
    blobs = [_codec.encode(v) for v in ({"a": 1}, Label("x"))]
    code = ("import sys, pickle\n"
            "from bgtask._client import codec as _codec\n"
            "blobs = pickle.loads(sys.stdin.buffer.read())\n"
            "print([type(_codec.decode(b)).__name__ for b in blobs])\n")
    out = subprocess.run([PY, "-c", code], input=pickle.dumps(blobs), capture_output=True,
                         timeout=30, env={"PYTHONPATH": f"{REPO}:{REPO}/tests"}, check=True).stdout
    assert out.decode().strip() == "['dict', 'Label']"
