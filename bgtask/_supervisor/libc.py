"""C library calls the supervisor and the fork server need and ``os`` lacks:
``malloc_trim`` (``main_loop.trim``), ``madvise`` (``warm.mark_mergeable``) and inotify
(:func:`watch_removal`, the fork server's spare).

Through ``_ctypes``' own primitives (``dlsym`` and ``call_function``, which the
``ctypes`` package is written on), not the ``ctypes`` package: its classes cost a
process that imports it ~0.3 MB of heap and 0.2-0.6 MB more of mapped files (RSS
measured after ``import ctypes``, Debian's and pyenv's 3.11: +300 kB anonymous,
+200-600 kB files; with ``_ctypes`` alone +70 and +150-220 kB). The package is the
fallback where the primitives are missing.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: the C type of each argument code: ``i`` int, ``L`` unsigned long (``size_t``), ``P`` a
#: pointer given as an int (an address), ``z`` bytes passed as ``char *``.
_PACKAGE_TYPES = {"i": "c_int", "L": "c_size_t", "P": "c_void_p", "z": "c_char_p"}
_found: dict[str, Callable[..., int] | None] = {}
_types: dict[str, object] = {}


def function(name: str, args: str) -> Callable[..., int] | None:
    """C function *name* of the running program (its C library), taking arguments of
    the codes in *args* and returning a C int; None where it cannot be found."""
    if name not in _found:
        _found[name] = _find(name, args)
    return _found[name]


def _find(name: str, args: str) -> Callable[..., int] | None:
    try:
        import _ctypes

        # dlopen(None): the program itself, as dlopen(NULL) (the stubs want a name)
        address = _ctypes.dlsym(_ctypes.dlopen(None, os.RTLD_LAZY), name)  # type: ignore[arg-type]
        call = _ctypes.call_function
        simple = _ctypes._SimpleCData
    except (ImportError, OSError, AttributeError):
        try:
            import ctypes

            fn = getattr(ctypes.CDLL(None), name)
        except (ImportError, OSError, AttributeError):
            return None
        fn.argtypes = [getattr(ctypes, _PACKAGE_TYPES[code]) for code in args]
        fn.restype = ctypes.c_int
        return fn
    types = [_c_type(simple, code) for code in args]

    def c_function(*values: object) -> int:
        converted = (v if t is None else t(v) for t, v in zip(types, values, strict=True))
        return call(address, tuple(converted))

    return c_function


def _c_type(simple: type, code: str) -> Any:
    """The class for argument code *code* (``_SimpleCData`` with that ``_type_``, as the
    package makes ``c_void_p`` and ``c_size_t``); None for ``i`` and ``z``, which
    ``call_function`` passes as int and ``char *`` by itself."""
    if code in "iz":
        return None
    if code not in _types:
        _types[code] = type(f"c_{code}", (simple,), {"_type_": code})
    return _types[code]


# -- inotify: the fork server's spare hears its pool go -----------------------------------------

IN_ATTRIB = 0x00000004       # a file's link count changed: unlinked, or linked elsewhere
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_ONLYDIR = 0x01000000


def watch_removal(directory: str, path: str) -> int:
    """An inotify fd that becomes readable when *directory* is removed or moved, or
    file *path* in it is unlinked or moved (nothing else that happens in *directory*
    wakes it: not the tasks' files coming and going); -1 where inotify is missing or
    the user's instances are used up (``fs.inotify.max_user_instances``)."""
    init = function("inotify_init1", "i")
    add = function("inotify_add_watch", "izi")
    if init is None or add is None:
        return -1
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)  # IN_NONBLOCK | IN_CLOEXEC on Linux
    if fd < 0:
        return -1
    if (add(fd, os.fsencode(directory), IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR) < 0
            or add(fd, os.fsencode(path), IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF) < 0):
        os.close(fd)
        return -1
    return fd


def drain(fd: int) -> None:
    """Read away the events waiting on inotify fd *fd* (non-blocking)."""
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass  # EAGAIN: none left


__all__ = ["IN_ATTRIB", "IN_DELETE_SELF", "IN_MOVE_SELF", "IN_ONLYDIR", "drain", "function", "watch_removal"]
