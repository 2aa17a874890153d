"""How the command line moves a job's output to ours: consuming only what was really
written out, draining a job that is still writing, following two streams at once, and
the terminal facts (is it one, does it want colour); and the user's words both ways:
the argument types, and the errors every command raises for the user.

A job's stdout goes to our stdout and its stderr to our stderr, as ``docker logs``
does, so that ``bgtask cat 42 >out 2>err`` separates them again.
"""

from __future__ import annotations

import errno
import os
import sys
import time

import bgtask
from bgtask import _format

# Light on purpose: every command imports this module, an empty `bgtask ls` too, and
# typing (with re, enum, collections...) costs more than that whole run should.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import IO, Any

PROG = "bgtask"
#: bytes asked of the supervisor at a time by ``cat`` (its replies are capped anyway).
READ_CHUNK = 1 << 20
#: bytes looked at by ``tail`` at first (doubling while too few lines are found).
TAIL_CHUNK = 64 * 1024
#: how long ``cat`` of a running job waits for more after it consumed something: a job
#: that was blocked on a full buffer goes on once there is room, and that takes a moment.
CATCH_UP = 0.2
#: the exit status of a command whose output pipe broke: 128 + SIGPIPE, what the shell
#: reports for ``yes | head`` (and what ``set -o pipefail`` sees).
EXIT_PIPE = 141


class PipeClosed(Exception):
    """Our stdout or stderr was closed by its reader (``| head``, ``| less`` and ``q``)."""


class UsageError(Exception):
    """A command line that cannot be run as given (exit status 2)."""


class Failure(Exception):
    """A one-line error already worded for the user (exit status 1)."""


# -- the terminal ----------------------------------------------------------------------------


def is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def wants_colour(stream: IO[str]) -> bool:
    """Colour on a terminal, unless ``$NO_COLOR`` is set (no-color.org) or it is dumb."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


# -- errors ----------------------------------------------------------------------------------


def error_text(exc: BaseException) -> str:
    """An exception in the user's words: no ``[Errno 20]``, no class names, one line."""
    if isinstance(exc, OSError) and not isinstance(exc, bgtask.BgTaskError) and exc.strerror:
        # `--pool /etc/passwd`: "[Errno 20] Not a directory: '/etc/passwd'" in Python's words.
        where = exc.filename if exc.filename is not None else None
        return f"{where}: {exc.strerror.lower()}" if where is not None else exc.strerror.lower()
    return str(exc) or type(exc).__name__


def error(message: str, status: int = 1) -> int:
    """Print *message* as our one-line error on stderr (red on a terminal); *status*."""
    # A message may quote a name or a command a job chose: escaped like the tables.
    lines = [_format.printable(line.strip()) for line in str(message).strip().splitlines() if line.strip()]
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    label = f"{PROG}: error:"
    if wants_colour(sys.stderr):
        label = f"\x1b[1;31m{label}\x1b[0m"
    try:
        print(f"{label} {'; '.join(lines) or 'failed'}", file=sys.stderr, flush=True)
    except OSError:  # stderr is gone too: the status still tells
        pass
    return status


# -- writing ---------------------------------------------------------------------------------


def _fd_of(stream: IO[str]) -> int | None:
    """The descriptor to ``os.write`` to, or None (a replaced ``sys.stdout``)."""
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError):
        return None


def write(data: bytes, stream: IO[str] | None = None) -> int:
    """Write *data* to *stream* (default: stdout), returning only when all of it is out.

    :raises PipeClosed: the reader went away; ``.args[0]`` is how many bytes of *data*
        did get into the pipe before that (these, and only these, were written out).
    """
    out = sys.stdout if stream is None else stream
    try:
        out.flush()  # text printed before must come first
    except BrokenPipeError:
        raise PipeClosed(0) from None
    fd = _fd_of(out)
    if fd is None:  # not a real file (tests capture into memory): nothing can break
        buf = getattr(out, "buffer", None)
        if buf is None:
            out.write(data.decode(errors="replace"))
        else:
            buf.write(data)
            buf.flush()
        return len(data)
    # os.write, not the buffered writer: it says how much went out before a pipe broke.
    done = 0
    view = memoryview(data)
    while done < len(data):
        try:
            done += os.write(fd, view[done:])
        except InterruptedError:
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                raise PipeClosed(done) from None
            raise
    return done


def quiet_output() -> None:
    """After a broken pipe: Python flushes stdout again at exit, and on a closed pipe that
    prints a warning. Point stdout at /dev/null so the exit stays quiet."""
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        os.dup2(fd, sys.stdout.fileno())
        os.close(fd)
    except (OSError, ValueError, AttributeError):
        pass


def output_of(name: str) -> IO[str]:
    """Where a job's stream goes: its stdout to our stdout, its stderr to our stderr."""
    return sys.stderr if name == "stderr" else sys.stdout


# -- cat: consuming exactly what was written out ---------------------------------------------


def consume_to(task: bgtask.Task, name: str, end: int) -> None:
    """Consume the unread output of stream *name* up to offset *end*, and no further.

    ``Stream.read()`` consumes everything unread; the supervisor's ``stream_read`` call
    also takes an end, and a consuming read with an end consumes ``[cursor, end)``.
    (If another client consumed past *end* meanwhile, this consumes nothing.)
    """
    task.call_remote_method("stream_read", name, None, end, True, 0.0)


def drain(task: bgtask.Task, names: list[str]) -> None:
    """``cat``: copy the unread output of *names* to our stdout/stderr and consume it,
    until caught up with the job: a job that is still writing is followed until it has
    nothing more for us (``CATCH_UP``), an ended one until its output is all out.

    Each piece is read without consuming, written, and then exactly the bytes that got
    out are consumed: when our reader goes away (``| head``), the rest stays unread.

    :raises PipeClosed: our stdout or stderr was closed.
    """
    streams = {n: task.stream(n) for n in names}
    info = task.info(fresh=True)["streams"]
    cursor = {n: int(info[n]["cursor"]) for n in names}
    active = list(names)
    waited = True  # nothing consumed yet: no reason to wait for more
    while active:
        progress = False
        for name in list(active):
            try:
                data = streams[name].read(cursor[name], cursor[name] + READ_CHUNK)
            except bgtask.OutputGoneError as exc:  # another reader consumed and freed it
                cursor[name] = exc.start
                progress = True
                continue
            if not data:
                if streams[name].eof:
                    # One more look: bytes may have arrived between the read and eof.
                    if not streams[name].read(cursor[name], cursor[name] + 1):
                        active.remove(name)
                continue
            try:
                write(data, output_of(name))
            except PipeClosed as exc:
                if exc.args[0]:  # what got into the pipe before it broke is out
                    consume_to(task, name, cursor[name] + exc.args[0])
                raise
            cursor[name] += len(data)
            consume_to(task, name, cursor[name])
            progress = True
        if progress:
            waited = False
        elif waited:
            return  # caught up: nothing new since we last consumed
        else:
            waited = True
            time.sleep(CATCH_UP)


# -- reading without consuming ---------------------------------------------------------------


def follow_from(stream: bgtask.Stream, pos: int) -> Iterator[bytes]:
    """``stream.follow(pos)`` (not consuming) that survives a consuming reader elsewhere
    freeing the bytes ahead of us: it says how much was skipped and goes on."""
    while True:
        try:
            for chunk in stream.follow(pos):
                pos += len(chunk)
                yield chunk
            return
        except bgtask.OutputGoneError as exc:
            print(f"{PROG}: [{exc.start - pos} bytes skipped: read and freed by another client]",
                  file=sys.stderr, flush=True)
            pos = exc.start


def copy_streams(task: bgtask.Task, names: list[str], starts: dict[str, int | None]) -> None:
    """Copy *names* to our stdout/stderr as output arrives, until each ends.

    ``starts[name]`` is the offset to follow from without consuming; ``None`` follows
    consuming (``spawn --follow``). One thread per stream: neither waits for the other.

    :raises PipeClosed: our stdout or stderr was closed.
    """
    errors: list[BaseException] = []

    def pump(name: str) -> None:
        try:
            stream = task.stream(name)
            start = starts.get(name)
            chunks = stream.follow() if start is None else follow_from(stream, start)
            for chunk in chunks:
                write(chunk, output_of(name))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    import threading  # here: only following two streams needs it

    threads = [threading.Thread(target=pump, args=(n,), name=f"bgtask-{n}", daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive() and not errors:
            t.join(0.1)  # a bounded join stays interruptible by Ctrl-C
        if errors:
            raise errors[0]


def last_lines(stream: bgtask.Stream, start: int, limit: int, n: int) -> bytes:
    """The last *n* lines held in ``[start, limit)``, read backwards without consuming
    (in pieces that double in size: output without newlines costs few round trips)."""
    parts: list[bytes] = []
    newlines = 0
    end, size = limit, TAIL_CHUNK
    while end > start and newlines <= n:
        begin = max(start, end - size)
        try:
            part = stream.read(begin, end)
        except bgtask.OutputGoneError as exc:  # freed meanwhile: what is left is enough
            start = exc.start
            continue
        parts.append(part)
        newlines += part.count(b"\n")
        end, size = begin, size * 2
    data = b"".join(reversed(parts))
    return b"".join(data.splitlines(keepends=True)[-n:]) if n else b""


def stream_info(task: bgtask.Task, name: str) -> dict[str, Any]:
    return dict(task.info(fresh=True)["streams"][name])


# -- argument types --------------------------------------------------------------------------
# Called by argparse only (the quick path of ``cli`` parses no values), so argparse is
# loaded whenever one of them complains.


def _invalid(message: str) -> Exception:
    """argparse's ArgumentTypeError: argparse shows its message as it is."""
    import argparse

    return argparse.ArgumentTypeError(message)


def pid(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise _invalid(f"not a task id: {text!r}")
    return value


def count(text: str) -> int:
    """A number of lines: 0 or more (``tail -n -2`` is a mistake, not "nothing")."""
    try:
        value = int(text)
    except ValueError:
        raise _invalid(f"not a whole number: {text!r}") from None
    if value < 0:
        raise _invalid(f"must not be negative: {text!r}")
    return value


def size(text: str) -> int:
    """``4096``, ``64K``, ``1M``, ``2G`` (powers of 1024)."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    factor = 1
    if t and t[-1] in "KMG":
        factor = 1024 ** ("KMG".index(t[-1]) + 1)
        t = t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        raise _invalid(f"not a size in bytes: {text!r} (e.g. 4096, 64K, 1M)") from None
    if value < 0:
        raise _invalid(f"must not be negative: {text!r}")
    if not value < 1 << 62:  # also nan and inf
        raise _invalid(f"too large a size: {text!r}")
    return int(value)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _invalid(f"not a number of seconds: {text!r}") from None
    if value < 0:
        raise _invalid(f"must not be negative: {text!r}")
    if not value < 1e9:  # also nan and inf (no clock waits that long)
        raise _invalid(f"too long a time: {text!r} seconds")
    return value


def pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise _invalid(f"expected KEY=VALUE, not {text!r}")
    return key, value


def meta_value(text: str) -> Any:
    """A ``--meta`` value: JSON when it parses (``3``, ``true``, ``[1, 2]``), else the string."""
    import json

    try:
        return json.loads(text)
    except ValueError:
        return text


__all__ = ["EXIT_PIPE", "Failure", "PipeClosed", "UsageError", "consume_to", "copy_streams", "count", "drain", "error",
           "error_text", "follow_from", "is_terminal", "last_lines", "meta_value", "output_of", "pair", "pid",
           "quiet_output", "seconds", "size", "stream_info", "wants_colour", "write"]
