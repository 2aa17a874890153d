"""Meta values and messages: encoded with dill by the writer, decoded by the reader.

The supervisor only ever sees the blobs. dill is imported on first use, so that
``import bgtask`` stays cheap for code that never touches meta or messages.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

_dill: Any = None


def _get_dill() -> Any:
    global _dill
    if _dill is None:
        import dill

        _dill = dill
    return _dill


class UndecodableValue:
    """Stands for a meta value or message that cannot be decoded in this process
    (typically: its class is not importable here). ``blob`` holds the raw dill bytes,
    ``error`` says why decoding failed.
    """

    __slots__ = ("blob", "error")

    def __init__(self, blob: bytes, error: str) -> None:
        self.blob = blob
        self.error = error

    def __repr__(self) -> str:
        return f"<bgtask.UndecodableValue {len(self.blob)} bytes: {self.error}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UndecodableValue) and other.blob == self.blob

    def __hash__(self) -> int:
        return hash(self.blob)


#: types pickle writes without naming a class (no ``find_class`` on reading).
_ATOMS = frozenset({str, int, float, bool, bytes, type(None)})
_CONTAINERS = frozenset({list, tuple, set, frozenset})


def _plain(obj: Any, depth: int = 0, seen: set[int] | None = None) -> bool:
    """Plain data: atoms, and lists, tuples, sets and dicts of plain data (exact types:
    a subclass is a class to name). Deep structures are not.

    Each container is looked at once (*seen*, by id): a structure that shares its parts
    (``x = [x, x]`` thirty times over is 31 lists but 2**30 paths) costs its size, not
    its number of paths. A container met again -- shared, or containing itself -- is
    plain as far as this walk goes; pickle writes shared and self-containing lists,
    dicts and sets by reference, like dill.
    """
    t = type(obj)
    if t in _ATOMS:
        return True
    if depth > 32:
        return False
    if t not in _CONTAINERS and t is not dict:
        return False
    if seen is None:
        seen = set()
    if id(obj) in seen:
        return True
    seen.add(id(obj))
    if t is dict:
        return all(_plain(k, depth + 1, seen) and _plain(v, depth + 1, seen) for k, v in obj.items())
    return all(_plain(x, depth + 1, seen) for x in obj)


def encode(obj: Any, what: str = "value") -> bytes:
    """:raises TypeError: *obj* cannot be serialized by dill (nothing has been sent)."""
    # Plain data is what most meta values and many messages are: pickle writes it the
    # way dill would (dill adds nothing for it) in a tenth of the time, and the client
    # then never imports dill (~40 ms) -- a `bgtask spawn --meta k=v` included.
    if _plain(obj):
        return pickle.dumps(obj, pickle.DEFAULT_PROTOCOL)
    dill = _get_dill()
    try:
        return bytes(dill.dumps(obj))
    except Exception as exc:
        raise TypeError(f"{what} of type {type(obj).__name__} cannot be serialized by dill: {exc}") from exc


class _PlainUnpickler(pickle.Unpickler):
    """Decodes only plain data (str, numbers, bytes, None, and lists, tuples, dicts and
    sets of them): anything that names a class or function is refused before it is
    built, and left to dill."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError("not plain data")


def decode(blob: bytes) -> Any:
    """Decode *blob*; a failure gives an :class:`UndecodableValue`, never an error."""
    # Most meta values are plain strings and numbers: pickle's C unpickler decodes those
    # several times faster than dill's (~1.5 us per value, a third of an info() call's
    # own time), with the same result since no class is involved. Everything else is
    # decoded by dill, which treats classes of __main__ and a few names specially.
    try:
        return _PlainUnpickler(io.BytesIO(blob)).load()
    except Exception:
        pass
    dill = _get_dill()
    try:
        return dill.loads(blob)
    except Exception as exc:
        return UndecodableValue(blob, f"{type(exc).__name__}: {exc}")


def encode_meta(meta: Any) -> dict[str, bytes]:
    """Validate and encode a meta mapping before anything is sent."""
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, not {type(meta).__name__}")
    out = {}
    for key, value in meta.items():
        if not isinstance(key, str):
            raise TypeError(f"meta keys must be str, not {type(key).__name__} ({key!r})")
        out[key] = encode(value, f"meta value {key!r}")
    return out


def decode_meta(blobs: dict[str, bytes]) -> dict[str, Any]:
    return {key: decode(blob) for key, blob in blobs.items()}


__all__ = ["UndecodableValue", "decode", "decode_meta", "encode", "encode_meta"]
