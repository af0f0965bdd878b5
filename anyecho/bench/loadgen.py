"""The load generator: connections that send messages and verify every echoed byte.

One load generator process (``python -m anyecho.bench.loadgen``) drives some
connections to one server, on uvloop when it is installed (it costs the client about
half the CPU per echo of the stock loop) and on the stock asyncio loop otherwise.
The runner talks to it with one JSON object per line, on its standard input and
output:

1. it says ``{"ready": {"pid": PID, "loop": NAME}}`` once it has started;
2. the runner sends ``{"job": JOB}`` (the fields of :class:`Job`); it connects and
   answers ``{"connected": null}``, or ``{"connected": "REASON"}`` when it could not;
3. the runner sends ``{"go": WINDOW}`` (the fields of :class:`Window`); it runs and
   answers ``{"result": RESULT}`` (see :meth:`JobResult.to_json`);

and so on, until its standard input ends.

Each connection keeps ``pipeline`` messages of ``size`` bytes in flight (one:
ping-pong). Its byte stream is a walk through one shared pseudo-random pattern of
:data:`PATTERN_PERIOD` bytes (a prime, so message boundaries drift across it) from
an offset of its own: sending never copies, checking is one comparison per chunk
received, and bytes that come back corrupted, dropped, duplicated, reordered or on
another connection are all caught. A round trip is timed from the write of a
message to the arrival of its last byte.

Messages are sent from the start; those that complete within the measurement
window (:attr:`Window.warmup_until` to :attr:`Window.measure_until`) count. Then
each connection stops sending, half-closes, and reads until the server has echoed
everything and closed its side, or until :attr:`Window.drain_timeout`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, cast

from .histogram import Histogram

__all__ = ["PATTERN_PERIOD", "Job", "JobResult", "Window", "serve_commands"]

#: Length of the data pattern (a prime just under 1 MiB, as echoload uses).
PATTERN_PERIOD = 1_048_573
#: The pattern repeats its head this far past its end, so any window of up to this
#: many bytes is one contiguous slice; longer messages are written in pieces.
CHUNK = 1 << 20
#: Give up opening a job's connections after this long (seconds).
CONNECT_TIMEOUT = 5.0
#: At most this many error messages per job are reported.
MAX_ERRORS = 5


@functools.cache
def pattern() -> bytes:
    """The data pattern, the same in every process."""
    head = hashlib.shake_128(b"anyecho bench pattern").digest(PATTERN_PERIOD)
    return head + head[:CHUNK]


def stream_offset(connection: int) -> int:
    """Where in the pattern connection number ``connection`` starts."""
    return (connection * 104_729 * 31 + 12_345) % PATTERN_PERIOD


@dataclass(frozen=True)
class Job:
    """Connections that one load generator process opens for one run.

    :param port: the server's TCP port on 127.0.0.1
    :param connections: how many connections to open
    :param first: the number of the first one, among every process's connections
    :param size: message size in bytes
    :param pipeline: messages in flight per connection
    """

    port: int
    connections: int
    first: int
    size: int
    pipeline: int


@dataclass(frozen=True)
class Window:
    """When to measure, on the :func:`time.monotonic` clock that all processes share.

    :param warmup_until: echoes complete before this are not counted
    :param measure_until: nor after this; then the connections drain
    :param drain_timeout: the most seconds to wait for the last echoes and closes
    """

    warmup_until: float
    measure_until: float
    drain_timeout: float


@dataclass
class JobResult:
    """What one load generator process measured in one run.

    :param echoes: round trips completed within the window
    :param latency: their round-trip times, in nanoseconds
    :param cpu_s: CPU time this process used within the window
    :param errors: what went wrong (at most :data:`MAX_ERRORS` messages); empty
        when every byte came back as sent and every connection closed cleanly
    """

    echoes: int = 0
    latency: Histogram = field(default_factory=Histogram)
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, read back by :meth:`from_json`."""
        return {
            "echoes": self.echoes,
            "latency": self.latency.to_json(),
            "cpu_s": self.cpu_s,
            "errors": self.errors,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        """The result that :meth:`to_json` described."""
        return cls(
            echoes=int(data["echoes"]),
            latency=Histogram.from_json(data["latency"]),
            cpu_s=float(data["cpu_s"]),
            errors=[str(e) for e in data["errors"]],
        )


class _Run:
    """The state that the connections of one job share."""

    def __init__(self, job: Job) -> None:
        self.size = job.size
        self.pipeline = job.pipeline
        self.pattern = pattern()
        self.view = memoryview(self.pattern)
        self.sending = True
        self.start_ns = 0
        self.end_ns = 0
        self.echoes = 0
        self.latencies: list[int] = []
        self.errors: list[str] = []

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def matches(self, data: bytes, offset: int) -> bool:
        """Whether ``data`` is the pattern from stream offset ``offset`` on."""
        pattern = self.pattern
        offset %= PATTERN_PERIOD
        if len(data) <= CHUNK:
            return pattern.startswith(data, offset)
        view = memoryview(data)
        for start in range(0, len(data), CHUNK):
            if not pattern.startswith(view[start : start + CHUNK], offset):
                return False
            offset = (offset + CHUNK) % PATTERN_PERIOD
        return True

    def first_difference(self, data: bytes, offset: int) -> tuple[int, int, int]:
        """Where ``data`` first differs from the pattern at ``offset``: the index
        in ``data``, the byte there, and the pattern's byte."""
        for index, got in enumerate(data):
            sent = self.pattern[(offset + index) % PATTERN_PERIOD]
            if got != sent:
                return index, got, sent
        raise ValueError("no difference")


class _Connection(asyncio.Protocol):
    """One connection: sends messages, checks what comes back, times round trips."""

    transport: asyncio.Transport

    def __init__(self, run: _Run, number: int) -> None:
        self.run = run
        self.number = number
        self.base = stream_offset(number)
        self.sent = 0
        self.received = 0
        self.sent_at = [0] * run.pipeline
        self.finishing = False
        self.failed = False
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self) -> None:
        """Put the first ``pipeline`` messages in flight."""
        for _ in range(self.run.pipeline):
            self._send_message()

    def _send_message(self) -> None:
        run = self.run
        size = run.size
        sent = self.sent
        self.sent_at[sent // size % run.pipeline] = time.monotonic_ns()
        write = self.transport.write
        view = run.view
        for start in range(0, size, CHUNK):
            offset = (self.base + sent + start) % PATTERN_PERIOD
            write(view[offset : offset + min(CHUNK, size - start)])
        self.sent = sent + size

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        run = self.run
        before = self.received
        after = before + len(data)
        if after > self.sent:
            self.fail("the server sent back more bytes than it was sent")
            return
        if not run.matches(data, self.base + before):
            index, got, sent = run.first_difference(data, self.base + before)
            self.fail(
                f"echoed byte {before + index} is {got:#04x}, but {sent:#04x} "
                "was sent there"
            )
            return
        self.received = after
        size = run.size
        completed = after // size - before // size
        if not completed:
            return
        if run.start_ns <= now < run.end_ns:
            run.echoes += completed
            first = before // size
            for message in range(first, first + completed):
                run.latencies.append(now - self.sent_at[message % run.pipeline])
        if run.sending:
            for _ in range(completed):
                self._send_message()

    def eof_received(self) -> None:
        if not self.finishing:
            self.fail("the server closed the connection before the client did")
        elif self.received < self.sent:
            missing = self.sent - self.received
            self.fail(f"the server closed the connection, {missing} bytes short")

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self.failed:
            self.fail(f"connection lost: {str(exc) or type(exc).__name__}")
        if not self.closed.done():
            self.closed.set_result(None)

    def finish(self) -> None:
        """Stop sending; half-close once every message is written."""
        self.finishing = True
        if not self.transport.is_closing():
            self.transport.write_eof()

    def fail(self, reason: str) -> None:
        """Record what went wrong on this connection, and drop it."""
        if not self.failed:
            self.failed = True
            self.run.error(f"connection {self.number}: {reason}")
        self.transport.abort()

    def check_drained(self, timeout: float) -> None:
        """After the drain: report what never came back, and drop the connection."""
        if not self.failed and not self.closed.done():
            missing = self.sent - self.received
            if missing:
                self.fail(f"{missing} bytes were never echoed back")
            else:
                self.fail(
                    "the server did not close the connection within "
                    f"{timeout:g}s of the client's end of stream"
                )


async def _connect(job: Job, run: _Run) -> list[_Connection]:
    """Open the job's connections; on any failure, none (and say why in ``run``)."""
    connections: list[_Connection] = []
    try:
        await asyncio.wait_for(_open(job, run, connections), CONNECT_TIMEOUT)
    except (OSError, asyncio.TimeoutError) as exc:
        for connection in connections:
            connection.transport.abort()
        reason = str(exc) or f"timed out after {CONNECT_TIMEOUT:g}s"
        run.error(f"cannot connect to 127.0.0.1:{job.port}: {reason}")
        return []
    return connections


async def _open(job: Job, run: _Run, connections: list[_Connection]) -> None:
    loop = asyncio.get_running_loop()
    for number in range(job.first, job.first + job.connections):
        factory = functools.partial(_Connection, run, number)
        _, connection = await loop.create_connection(factory, "127.0.0.1", job.port)
        connections.append(connection)


async def _sleep_until(deadline: float) -> None:
    await asyncio.sleep(max(0.0, deadline - time.monotonic()))


async def _drive(
    run: _Run, connections: list[_Connection], window: Window
) -> JobResult:
    run.start_ns = int(window.warmup_until * 1e9)
    run.end_ns = int(window.measure_until * 1e9)
    for connection in connections:
        connection.start()
    await _sleep_until(window.warmup_until)
    cpu_start = time.process_time()
    await _sleep_until(window.measure_until)
    cpu_s = time.process_time() - cpu_start
    run.sending = False
    for connection in connections:
        connection.finish()
    if connections:
        await asyncio.wait(
            [connection.closed for connection in connections],
            timeout=window.drain_timeout,
        )
    for connection in connections:
        connection.check_drained(window.drain_timeout)
    result = JobResult(echoes=run.echoes, cpu_s=cpu_s, errors=run.errors)
    result.latency.add_all(run.latencies)
    return result


def _event_loop() -> tuple[str, asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError:
        return "asyncio", asyncio.new_event_loop()
    return "uvloop", uvloop.new_event_loop()


def serve_commands(commands: IO[str], replies: IO[str]) -> None:
    """Carry out the runner's commands (see the module documentation)."""
    name, loop = _event_loop()
    _reply(replies, ready={"pid": os.getpid(), "loop": name})
    try:
        while line := commands.readline():
            job = Job(**json.loads(line)["job"])
            run = _Run(job)
            connections = loop.run_until_complete(_connect(job, run))
            _reply(replies, connected=run.errors[0] if run.errors else None)
            go = commands.readline()
            if not go:
                break
            window = Window(**json.loads(go)["go"])
            result = loop.run_until_complete(_drive(run, connections, window))
            _reply(replies, result=result.to_json())
    finally:
        loop.close()


def _reply(replies: IO[str], **message: Any) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()


if __name__ == "__main__":
    serve_commands(sys.stdin, sys.stdout)
