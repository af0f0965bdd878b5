"""The load generator: connections that send messages and verify every echoed byte.

One load generator process (``python -m anyecho.bench.loadgen``) drives some
connections to one server from one :mod:`select.epoll` loop of its own (a
:mod:`selectors` loop where epoll is missing), with non-blocking sockets, one
preallocated receive buffer and no object per message: it spends as little CPU
per echo as Python allows, so that the figures are the server's. The runner talks
to it with one JSON object per line, on its standard input and output:

1. it says ``{"ready": {"pid": PID, "loop": NAME}}`` once it has started;
2. the runner sends ``{"job": JOB}`` (the fields of :class:`Job`); it connects and
   answers ``{"connected": null}``, or ``{"connected": "REASON"}`` when it could not;
3. the runner sends ``{"go": WINDOW}`` (the fields of :class:`Window`); it runs and
   answers ``{"result": RESULT}`` (see :meth:`JobResult.to_json`);

and so on, until its standard input ends.

Every message is ``size`` bytes, so the echo of a connection's k-th message ends at
byte ``k * size`` of what comes back. Each connection's byte stream is a walk
through one shared pseudo-random pattern of :data:`PATTERN_PERIOD` bytes (a prime,
so message boundaries drift across it) from an offset of its own: sending never
copies, checking is one comparison per chunk received, and bytes that come back
corrupted, dropped, duplicated, reordered or on another connection are all caught.

Two kinds of load:

closed loop (``rate`` is ``None``): throughput at concurrency N
    each connection keeps ``pipeline`` messages in flight and sends the next one
    when an echo completes. A round trip is timed from the write of a message to
    the arrival of its last byte; a server that stalls simply gets fewer messages
    meanwhile, so its stalls hardly show in the percentiles (coordinated omission).
open loop (``rate`` echoes/s): latency at an offered load
    messages are due on a fixed schedule (``1/rate`` apart) or a Poisson one
    (seeded), dealt out to the connections in turn, and sent when due whatever
    is still in flight. A round trip is timed from the message's *intended* send
    time, so a stall counts in every message it delays (as wrk2 does). How late
    the load generator itself got round to each message (its send lag) is
    measured too: a large lag means the schedule, not the server, was the limit.

Messages are sent from the start; the measurement window runs from
:attr:`Window.warmup_until` to :attr:`Window.measure_until`. Closed loop counts the
round trips that complete within it; open loop counts the messages due within it
(their echoes may arrive later) and the echoes completed within it (the achieved
rate). Then each connection sends what it still owes, half-closes, and reads until
the server has echoed everything and closed its side, or until
:attr:`Window.drain_timeout`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import random
import select
import selectors
import socket
import ssl
import sys
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import IO, Any

from .histogram import Histogram

__all__ = ["PATTERN_PERIOD", "Job", "JobResult", "Window", "serve_commands"]

#: Length of the data pattern (a prime just under 1 MiB, as echoload uses).
PATTERN_PERIOD = 1_048_573
#: The pattern repeats its head this far past its end, so any window of up to this
#: many bytes is one contiguous slice; longer sends are made in pieces.
CHUNK = 1 << 20
#: Bytes read at most per ``recv_into``.
RECV_BUFFER = 256 << 10
#: Give up opening a job's connections after this long (seconds).
CONNECT_TIMEOUT = 5.0
#: At most this many error messages per job are reported.
MAX_ERRORS = 5
#: A connection with more messages than this awaiting their echo is dropped: the
#: server is not keeping up at all (open loop only; it bounds the memory used).
MAX_IN_FLIGHT = 1 << 20

#: What a non-blocking socket (plain or TLS) raises when it cannot go on now.
_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
#: The most bytes a TLS connection writes at a time.
TLS_CHUNK = 64 << 10

_READ = select.EPOLLIN if hasattr(select, "epoll") else selectors.EVENT_READ
_WRITE = select.EPOLLOUT if hasattr(select, "epoll") else selectors.EVENT_WRITE
_TROUBLE = (select.EPOLLERR | select.EPOLLHUP) if hasattr(select, "epoll") else 0


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

    :param port: the server's TCP port
    :param connections: how many connections to open
    :param first: the number of the first one, among every process's connections
    :param size: message size in bytes
    :param pipeline: messages in flight per connection (closed loop)
    :param rate: messages per second that this process sends over all its
        connections (open loop), or ``None`` for closed loop
    :param poisson: open loop: exponential gaps between messages, rather than
        equal ones
    :param seed: seeds the Poisson schedule
    :param host: the server's address
    :param unix: the path of the server's Unix socket, to connect to instead
    :param tls_ca: speak TLS, trusting the CA certificates in this file
    """

    port: int
    connections: int
    first: int
    size: int
    pipeline: int
    rate: float | None = None
    poisson: bool = False
    seed: int = 0
    host: str = "127.0.0.1"
    unix: str | None = None
    tls_ca: str | None = None


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
    :param latency: round-trip times in nanoseconds (open loop: from each
        message's intended send time, for the messages due within the window)
    :param cpu_s: CPU time this process used within the window
    :param errors: what went wrong (at most :data:`MAX_ERRORS` messages); empty
        when every byte came back as sent and every connection closed cleanly
    :param scheduled: open loop: messages due within the window
    :param lag: open loop: how late each of those was handed to its connection
        (nanoseconds), which is the load generator's own delay
    """

    echoes: int = 0
    latency: Histogram = field(default_factory=Histogram)
    cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    scheduled: int = 0
    lag: Histogram = field(default_factory=Histogram)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, read back by :meth:`from_json`."""
        return {
            "echoes": self.echoes,
            "latency": self.latency.to_json(),
            "cpu_s": self.cpu_s,
            "errors": self.errors,
            "scheduled": self.scheduled,
            "lag": self.lag.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobResult:
        """The result that :meth:`to_json` described."""
        return cls(
            echoes=int(data["echoes"]),
            latency=Histogram.from_json(data["latency"]),
            cpu_s=float(data["cpu_s"]),
            errors=[str(e) for e in data["errors"]],
            scheduled=int(data["scheduled"]),
            lag=Histogram.from_json(data["lag"]),
        )


class _Poller:
    """Readiness of many sockets: epoll where there is one, else :mod:`selectors`."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if hasattr(select, "epoll") else None
        self._selector = None if self._epoll else selectors.DefaultSelector()
        self._wait = [self._epoll.fileno()] if self._epoll else []
        #: whether waits must end to the microsecond (open loop)
        self.precise = True

    def register(self, fd: int, events: int) -> None:
        if self._epoll is not None:
            self._epoll.register(fd, events)
        else:
            assert self._selector is not None
            self._selector.register(fd, events)

    def modify(self, fd: int, events: int) -> None:
        if self._epoll is not None:
            self._epoll.modify(fd, events)
        else:
            assert self._selector is not None
            self._selector.modify(fd, events)

    def unregister(self, fd: int) -> None:
        if self._epoll is not None:
            self._epoll.unregister(fd)
        else:
            assert self._selector is not None
            self._selector.unregister(fd)

    def poll(self, timeout: float) -> list[tuple[int, int]]:
        """Ready sockets and their events, waiting up to ``timeout`` seconds.

        epoll's own timeout counts whole milliseconds, which would make every
        open-loop message up to 1 ms late: the wait is a :func:`select.select`
        (microseconds) on the epoll descriptor itself, which is readable when any
        socket is ready. Closed loop has no schedule to keep: there a wait costs
        one system call less (:attr:`precise` is false).
        """
        if self._epoll is not None:
            if not self.precise:
                return self._epoll.poll(timeout)
            if timeout > 0:
                select.select(self._wait, (), (), timeout)
            return self._epoll.poll(0)
        assert self._selector is not None
        return [(key.fd, events) for key, events in self._selector.select(timeout)]

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        else:
            assert self._selector is not None
            self._selector.close()


class _Run:
    """What the connections of one job share: the pattern, the buffers, the clock
    bounds of the window, and what was measured."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.size = job.size
        self.open_loop = job.rate is not None
        self.pattern = pattern()
        self.view = memoryview(self.pattern)
        self.buffer = bytearray(RECV_BUFFER)
        self.buffer_view = memoryview(self.buffer)
        self.poller = _Poller()
        self.poller.precise = self.open_loop
        self.sending = True
        self.start_ns = 0
        self.end_ns = 0
        self.echoes = 0
        self.latencies = array("q")
        self.lags = array("q")
        self.errors: list[str] = []

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def first_difference(self, data: bytes, offset: int) -> tuple[int, int, int]:
        """Where ``data`` first differs from the pattern at ``offset``: the index
        in ``data``, the byte there, and the pattern's byte."""
        for index, got in enumerate(data):
            sent = self.pattern[(offset + index) % PATTERN_PERIOD]
            if got != sent:
                return index, got, sent
        raise ValueError("no difference")


class _Connection:
    """One connection: what it owes, has sent and got back, and when each message
    still in flight was due (closed loop: sent)."""

    __slots__ = (
        "base",
        "closed",
        "failed",
        "fd",
        "finishing",
        "number",
        "received",
        "run",
        "sent",
        "sock",
        "target",
        "times",
        "writing",
    )

    def __init__(self, run: _Run, number: int, sock: socket.socket) -> None:
        self.run = run
        self.number = number
        self.sock = sock
        self.fd = sock.fileno()
        self.base = stream_offset(number)
        #: bytes that should have been written by now
        self.target = 0
        self.sent = 0
        self.received = 0
        self.times: deque[int] = deque()
        self.writing = False
        self.finishing = False
        self.failed = False
        self.closed = False

    def flush(self) -> None:
        """Write what is owed, as far as the socket takes it."""
        sent = self.sent
        target = self.target
        view = self.run.view
        send = self.sock.send
        while sent < target:
            offset = (self.base + sent) % PATTERN_PERIOD
            try:
                written = send(view[offset : offset + min(CHUNK, target - sent)])
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                self.sent = sent
                self.fail(f"send failed: {exc}")
                return
            sent += written
        self.sent = sent
        want = sent < target
        if want != self.writing:
            self.writing = want
            self.run.poller.modify(self.fd, _READ | _WRITE if want else _READ)
        if not want and not self.run.sending and not self.finishing:
            self.finish()

    def readable(self, now: int) -> None:  # noqa: PLR0911, PLR0912 - the hot path
        """Read what has come back, check it, and time the completed echoes."""
        run = self.run
        try:
            got = self.sock.recv_into(run.buffer)
        except _WOULD_BLOCK:
            return
        except OSError as exc:
            self.fail(f"connection lost: {exc}")
            return
        if not got:
            self.eof()
            return
        before = self.received
        after = before + got
        if after > self.sent:
            self.fail("the server sent back more bytes than it was sent")
            return
        offset = (self.base + before) % PATTERN_PERIOD
        data = run.buffer_view[:got]
        if not run.pattern.startswith(data, offset):
            index, byte, sent = run.first_difference(bytes(data), offset)
            self.fail(
                f"echoed byte {before + index} is {byte:#04x}, but {sent:#04x} "
                "was sent there"
            )
            return
        self.received = after
        size = run.size
        completed = after // size - before // size
        if not completed:
            return
        times = self.times
        start, end = run.start_ns, run.end_ns
        if start <= now < end:
            run.echoes += completed
        record = run.latencies.append
        if run.open_loop:
            for _ in range(completed):
                due = times.popleft()
                if start <= due < end:
                    record(now - due)
            return
        counted = start <= now < end
        for _ in range(completed):
            due = times.popleft()
            if counted:
                record(now - due)
        if run.sending:
            self.target += completed * size
            times.extend([now] * completed)
            self.flush()

    def eof(self) -> None:
        if not self.finishing:
            self.fail("the server closed the connection before the client did")
        elif self.received < self.sent:
            missing = self.sent - self.received
            self.fail(f"the server closed the connection, {missing} bytes short")
        else:
            self.close()

    def finish(self) -> None:
        """Everything owed is written: half-close."""
        self.finishing = True
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.fail(f"cannot half-close: {exc}")

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.run.poller.unregister(self.fd)
            self.sock.close()

    def fail(self, reason: str) -> None:
        """Record what went wrong on this connection, and drop it."""
        if not self.failed:
            self.failed = True
            self.run.error(f"connection {self.number}: {reason}")
        if not self.closed:
            # An abortive close, as a reset: the server must cope with it.
            self.sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
            self.close()

    def check_drained(self, timeout: float) -> None:
        """After the drain: report what never came back, and drop the connection."""
        if not self.failed and not self.closed:
            missing = self.sent - self.received
            if missing or self.sent < self.target:
                self.fail(f"{self.target - self.received} bytes were never echoed back")
            else:
                self.fail(
                    "the server did not close the connection within "
                    f"{timeout:g}s of the client's end of stream"
                )


class _TlsConnection(_Connection):
    """A connection over TLS: as a plain one, except that TLS has no half-close
    (the client closes once every echo is back), a write that could not go on is
    retried with the same length, and decrypted bytes may wait in the TLS layer
    with nothing for epoll to report."""

    __slots__ = ("retry",)

    def __init__(self, run: _Run, number: int, sock: socket.socket) -> None:
        super().__init__(run, number, sock)
        self.retry = 0

    def flush(self) -> None:
        sent = self.sent
        target = self.target
        view = self.run.view
        send = self.sock.send
        while sent < target:
            length = self.retry or min(TLS_CHUNK, target - sent)
            offset = (self.base + sent) % PATTERN_PERIOD
            try:
                written = send(view[offset : offset + length])
            except _WOULD_BLOCK:
                self.retry = length
                break
            except OSError as exc:
                self.sent = sent
                self.fail(f"send failed: {exc}")
                return
            self.retry = 0
            sent += written
        self.sent = sent
        want = sent < target
        if want != self.writing:
            self.writing = want
            self.run.poller.modify(self.fd, _READ | _WRITE if want else _READ)
        if not want and not self.run.sending and not self.finishing:
            self.finish()

    def readable(self, now: int) -> None:
        super().readable(now)
        tls = self.sock
        assert isinstance(tls, ssl.SSLSocket)
        while not self.closed and tls.pending():
            super().readable(now)
        self._done()

    def finish(self) -> None:
        self.finishing = True
        self._done()

    def _done(self) -> None:
        if self.finishing and not self.closed and self.received >= self.target:
            self.close()


def _connect(job: Job, run: _Run) -> list[_Connection]:
    """Open the job's connections; on any failure, none (and say why in ``run``)."""
    connections: list[_Connection] = []
    deadline = time.monotonic() + CONNECT_TIMEOUT
    try:
        for number in range(job.first, job.first + job.connections):
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise TimeoutError(f"timed out after {CONNECT_TIMEOUT:g}s")
            if job.unix is None:
                sock = socket.create_connection((job.host, job.port), timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                sock = _connect_unix(job.unix, timeout)
            kind = _Connection
            if job.tls_ca is not None:
                sock = _tls_context(job.tls_ca).wrap_socket(
                    sock, server_hostname=job.host
                )
                kind = _TlsConnection
            sock.setblocking(False)
            connections.append(kind(run, number, sock))
    except OSError as exc:
        for connection in connections:
            connection.sock.close()
        reason = str(exc) or type(exc).__name__
        where = job.unix or f"{job.host}:{job.port}"
        run.error(f"cannot connect to {where}: {reason}")
        return []
    for connection in connections:
        run.poller.register(connection.fd, _READ)
    return connections


@functools.cache
def _tls_context(cafile: str) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=cafile)


def _connect_unix(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def _gaps(job: Job) -> tuple[float, random.Random | None]:
    """Seconds between messages on average, and the random source for Poisson."""
    assert job.rate is not None
    rng = random.Random(job.seed) if job.poisson else None  # noqa: S311 - a schedule
    return 1.0 / job.rate, rng


def _drive(  # noqa: PLR0912, PLR0915 - one loop, its state in locals, for speed
    run: _Run, connections: list[_Connection], window: Window
) -> JobResult:
    """Run the load over ``window``; what was measured."""
    job = run.job
    run.start_ns = start_ns = int(window.warmup_until * 1e9)
    run.end_ns = end_ns = int(window.measure_until * 1e9)
    by_fd = {connection.fd: connection for connection in connections}
    poll = run.poller.poll
    clock = time.monotonic_ns
    cpu_start = cpu_end = None
    scheduled = 0
    # The open-loop schedule: message n is due at next_ns, on connection n % count.
    count = len(connections)
    next_ns = clock()
    sequence = 0
    interval, rng = _gaps(job) if run.open_loop else (0.0, None)
    origin = next_ns
    lags = run.lags.append
    if not run.open_loop:
        for connection in connections:
            connection.target = job.pipeline * job.size
            connection.times.extend([next_ns] * job.pipeline)
            connection.flush()
    open_loop = run.open_loop and count > 0
    while True:
        now = clock()
        if cpu_start is None and now >= start_ns:
            cpu_start = time.process_time()
        if cpu_end is None and now >= end_ns:
            cpu_end = time.process_time()
            run.sending = False
            open_loop = False
            for connection in connections:
                if not connection.closed and connection.sent >= connection.target:
                    connection.finish()
        while open_loop and next_ns <= now:
            connection = connections[sequence % count]
            sequence += 1
            if not connection.closed:
                connection.times.append(next_ns)
                connection.target += job.size
                if start_ns <= next_ns:
                    scheduled += 1
                    lags(now - next_ns)
                if not connection.writing:
                    connection.flush()
                if len(connection.times) > MAX_IN_FLIGHT:
                    connection.fail(
                        f"more than {MAX_IN_FLIGHT} messages awaited their echo: "
                        "the server is not keeping up"
                    )
            if rng is None:
                next_ns = origin + int(sequence * interval * 1e9)
            else:
                next_ns += int(rng.expovariate(1.0) * interval * 1e9)
            if next_ns >= end_ns:
                open_loop = False
        if cpu_end is not None and all(c.closed for c in connections):
            break
        if cpu_end is None:
            wake = end_ns if cpu_start is not None else start_ns
            if open_loop:
                wake = min(wake, next_ns)
        else:
            wake = end_ns + int(window.drain_timeout * 1e9)
            if now >= wake:
                break
        for fd, events in poll(max(0.0, (wake - now) / 1e9)):
            connection = by_fd[fd]
            if events & (_READ | _TROUBLE):
                connection.readable(clock())
            if events & _WRITE and not connection.closed:
                connection.flush()
    assert cpu_start is not None
    assert cpu_end is not None
    for connection in connections:
        connection.check_drained(window.drain_timeout)
    run.poller.close()
    # Bucketing the timings costs CPU per echo too, though it happens now.
    cpu_bucket = time.process_time()
    result = JobResult(echoes=run.echoes, errors=run.errors, scheduled=scheduled)
    result.latency.add_all(run.latencies)
    result.lag.add_all(run.lags)
    result.cpu_s = cpu_end - cpu_start + time.process_time() - cpu_bucket
    return result


def _raise_file_limit() -> None:
    """Allow as many open sockets as the system lets this process have."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve_commands(commands: IO[str], replies: IO[str]) -> None:
    """Carry out the runner's commands (see the module documentation)."""
    _raise_file_limit()
    loop = "epoll" if hasattr(select, "epoll") else "selectors"
    _reply(replies, ready={"pid": os.getpid(), "loop": loop})
    while line := commands.readline():
        job = Job(**json.loads(line)["job"])
        run = _Run(job)
        connections = _connect(job, run)
        _reply(replies, connected=run.errors[0] if run.errors else None)
        go = commands.readline()
        if not go:
            break
        window = Window(**json.loads(go)["go"])
        result = _drive(run, connections, window)
        _reply(replies, result=result.to_json())


def _reply(replies: IO[str], **message: Any) -> None:
    replies.write(json.dumps(message) + "\n")
    replies.flush()


if __name__ == "__main__":
    serve_commands(sys.stdin, sys.stdout)
