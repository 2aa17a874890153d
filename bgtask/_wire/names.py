"""Names and numbers both sides of the wire agree on: the exposed methods, the streams,
the protocol version and the shared timing constants.

Stdlib-free on purpose: the supervisor imports it on its fast path.
"""

from __future__ import annotations

#: the wire's version: a client and a supervisor that disagree refuse each other with
#: a message naming both (see ``_wire.handshake``).
PROTOCOL_VERSION = 2
#: the TaskState methods a client may call; nothing else is dispatched.
EXPOSED = (
    "apply_meta",
    "delete",
    "info",
    "kill",
    "restart",
    "stream_close",
    "stream_info",
    "stream_putback",
    "stream_read",
    "stream_write",
    "usage",
    "wait",
)
#: a task's streams by their names on the wire (``task.stream(0)`` .. ``(2)`` are the first three).
STREAMS = ("stdin", "stdout", "stderr", "data", "control")
#: the job's output pipes, which the supervisor reads and buffers (counted in bytes).
OUTPUT_STREAMS = ("stdout", "stderr")
#: Python objects as opaque dill blobs (counted in messages).
MESSAGE_STREAMS = ("data", "control")
#: the fixed manager ident of the one TaskState object of a supervisor.
STATE_IDENT = "task"
#: how long to wait for a supervisor to accept and authenticate a connection.
CONNECT_TIMEOUT = 10.0
#: how long a supervisor may take to answer beyond the time the call itself may block.
#: Only a stopped (SIGSTOP) or wedged supervisor gets near it: a dead one is seen at once.
ANSWER_GRACE = 30.0
#: after the job exits, how long wait() waits for descendants holding the pipes.
COLLECT_GRACE = 1.0
#: how long the supervisor waits for a job group to die after KILL before it gives up.
KILL_WAIT = 10.0
#: how long a client waits beyond a call's own deadline (delete, wait) before it gives up.
CLIENT_SLACK = 2.0
#: the default of ``spawn(max_buffer=)``: most unread bytes held per output stream.
DEFAULT_MAX_BUFFER = 64 << 20
#: the default of ``spawn(retain_output=)``: bytes kept readable after they were read, so
#: that ``bgtask cat`` followed by ``bgtask tail`` still shows the end.
DEFAULT_RETAIN_OUTPUT = 1 << 20
#: the "is this process a supervisor?" marker on its command line (see ``_client.spawn``).
SUPERVISOR_MARKER = b"bgtask._supervisor"

__all__ = ["ANSWER_GRACE", "CLIENT_SLACK", "COLLECT_GRACE", "CONNECT_TIMEOUT", "DEFAULT_MAX_BUFFER",
           "DEFAULT_RETAIN_OUTPUT", "EXPOSED", "KILL_WAIT",
           "MESSAGE_STREAMS", "OUTPUT_STREAMS", "PROTOCOL_VERSION", "STATE_IDENT", "STREAMS",
           "SUPERVISOR_MARKER"]
