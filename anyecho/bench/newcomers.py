"""Accept fairness: how long newcomers wait while other connections stream flat out.

``python -m anyecho.bench.newcomers`` starts ``anyecho serve`` once per backend, on
127.0.0.1, and times *newcomers*: clients that connect, send a 16-byte message and
wait for its exact echo. Each newcomer's figure is the time from the start of its
``connect()`` to the last byte of its echo; the kernel completes the handshake at
once, so nearly all of it is the wait for the server to accept the connection and
read it. Every round opens all newcomers at once and times them in two phases:

``idle``
    nothing else is connected;
``loaded``
    a load generator process first opens ``--streams`` connections that send and
    receive flat out (each keeps ``--window`` bytes in flight and only counts what
    comes back), waits until every one of them has had bytes back, then the same
    newcomers are timed, then the streams are closed.

A server whose accept loop waits behind its busy connections accepts the loaded
newcomers much later than the idle ones: the ``ratio`` column says how much.

Where the system allows, the server is pinned to one CPU and the load generator
to another, and this process (the measuring client) to a third, or else to the
load generator's; the output says where each ran, and how much of its CPU the
load generator and the server used while the loaded newcomers were timed. A load
generator near 100 % may be what limits the streams, not the server.

Every figure in the table is the median over the ``--repeat`` rounds. The exit
status is 0 when every newcomer got its exact echo in every round, 1 when one did
not (it timed out, or got something else) or a backend could not run, and 2 for a
bad command line.

The load generator is this module too, run with a hidden option; it talks to the
measuring process with one JSON object per line (see :func:`load_generator`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import selectors
import socket
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._args import (
    SIZE_SYNTAX,
    byte_size,
    format_size,
    positive_count,
    positive_seconds,
    seconds,
)
from . import _proc
from .servers import ServerError, ServerProcess, ServerSpec, anyecho_spec

__all__ = ["SCHEMA", "Placement", "Settings", "load_generator", "main", "run"]

#: The ``schema`` key of the JSON document.
SCHEMA = "anyecho-newcomers/1"
#: This module, as ``python -m`` runs it (``__name__`` is ``__main__`` then).
MODULE = "anyecho.bench.newcomers"
#: The backends measured when ``--backend`` is not given.
BACKENDS = ("asyncio", "uvloop", "trio")
#: Bytes each newcomer sends (and must get back).
MESSAGE_SIZE = 16
#: How long the load generator may take to start, and to answer a command (s).
LOAD_TIMEOUT = 30.0
#: The load generator stops streaming on its own after this long (s).
LOAD_MAX_SECONDS = 600.0
#: At most this many error messages are kept per phase.
MAX_ERRORS = 5
#: Bytes each stream reads at once: at least this, at most the window, up to
#: :data:`MAX_READ_SIZE`.
READ_SIZE = 256 * 1024
MAX_READ_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """What to measure.

    :param backends: the ``anyecho serve --backend`` names, in order
    :param streams: connections streaming flat out in the loaded phase
    :param newcomers: clients timed in each phase of each round
    :param repeat: rounds per backend
    :param window: bytes each stream keeps in flight
    :param timeout: the longest a newcomer waits for its echo (s)
    :param flowing_timeout: the longest to wait for every stream to flow (s)
    :param settle: pause after a phase, for the server to close its connections (s)
    """

    backends: tuple[str, ...] = BACKENDS
    streams: int = 100
    newcomers: int = 200
    repeat: int = 3
    window: int = 1024 * 1024
    timeout: float = 30.0
    flowing_timeout: float = 60.0
    settle: float = 1.0


@dataclass(frozen=True)
class Placement:
    """The CPUs each process is pinned to (``None``: not pinned)."""

    server: list[int] | None
    load: list[int] | None
    client: list[int] | None

    @classmethod
    def choose(cls) -> Placement:
        """Server, load generator and client apart where there are CPUs enough."""
        cpus = _proc.usable_cpus()
        if cpus is None or len(cpus) < 2:
            return cls(None, None, None)
        client = cpus[2] if len(cpus) > 2 else cpus[1]
        return cls([cpus[0]], [cpus[1]], [client])

    def describe(self) -> str:
        """One line for the output."""
        if self.server is None:
            return "not pinned (fewer than two usable CPUs): figures are less reliable"
        return (
            f"server pinned to CPU {_cpus(self.server)}, load generator to CPU "
            f"{_cpus(self.load)}, measuring client to CPU {_cpus(self.client)}"
        )


def _cpus(cpus: list[int] | None) -> str:
    return ",".join(map(str, cpus or []))


# -- timing newcomers ---------------------------------------------------------------


@dataclass
class Phase:
    """The newcomers of one phase of one round.

    ``latencies`` holds each newcomer's time to its echo in seconds, ``None`` for
    one that did not get its exact echo; ``timeouts`` counts those that waited
    ``timeout`` seconds in vain, ``failures`` the others (``errors`` says why).
    """

    latencies: list[float | None] = field(default_factory=list)
    all_s: float | None = None
    timeouts: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def echoed(self) -> int:
        """How many newcomers got their exact echo."""
        return sum(latency is not None for latency in self.latencies)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def figures(self) -> dict[str, float | None]:
        """p50, p90 and max over the echoed newcomers, and the time for all (s)."""
        done = sorted(latency for latency in self.latencies if latency is not None)
        return {
            "p50_s": percentile(done, 0.5),
            "p90_s": percentile(done, 0.9),
            "max_s": done[-1] if done else None,
            "all_s": self.all_s,
            "accepts_per_s": (len(self.latencies) / self.all_s if self.all_s else None),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "newcomers": len(self.latencies),
            "echoed": self.echoed,
            "timeouts": self.timeouts,
            "failures": self.failures,
            "errors": self.errors,
            **self.figures(),
            "latencies_s": self.latencies,
        }


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The nearest-rank percentile of sorted ``values``; ``None`` when empty."""
    if not values:
        return None
    rank = max(1, math.ceil(fraction * len(values)))
    return values[rank - 1]


def message_for(index: int) -> bytes:
    """The :data:`MESSAGE_SIZE` bytes that newcomer ``index`` sends."""
    return f"newcomer{index % 10**8:08d}".encode()


async def _newcomer(
    index: int, port: int, timeout: float, phase: Phase, sockets: list[socket.socket]
) -> None:
    loop = asyncio.get_running_loop()
    message = message_for(index)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(sock)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    echoed = b""

    async def exchange() -> None:
        nonlocal echoed
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, message)
        while len(echoed) < len(message):
            chunk = await loop.sock_recv(sock, len(message) - len(echoed))
            if not chunk:
                break
            echoed += chunk

    start = time.perf_counter()
    try:
        await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        phase.timeouts += 1
        phase.error(f"newcomer {index}: no echo within {timeout:g}s")
        return
    except OSError as exc:
        phase.failures += 1
        phase.error(f"newcomer {index}: {exc}")
        return
    elapsed = time.perf_counter() - start
    if echoed != message:
        phase.failures += 1
        phase.error(f"newcomer {index}: sent {message!r}, got back {echoed!r}")
        return
    phase.latencies[index] = elapsed


async def _time_newcomers(port: int, count: int, timeout: float) -> Phase:
    phase = Phase(latencies=[None] * count)
    sockets: list[socket.socket] = []
    start = time.perf_counter()
    try:
        tasks = [
            asyncio.ensure_future(_newcomer(i, port, timeout, phase, sockets))
            for i in range(count)
        ]
        # Every newcomer has its own timeout; this one only bounds the whole.
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout + 10.0)
        except asyncio.TimeoutError:
            phase.error(f"the newcomers were not done after {timeout + 10.0:g}s")
            phase.timeouts += count - phase.echoed - phase.timeouts - phase.failures
        if phase.echoed == count:
            phase.all_s = time.perf_counter() - start
    finally:
        for sock in sockets:
            sock.close()
    return phase


def time_newcomers(port: int, count: int, timeout: float) -> Phase:
    """Open ``count`` newcomers at once to 127.0.0.1:``port`` and time each echo."""
    return asyncio.run(_time_newcomers(port, count, timeout))


# -- the load generator -------------------------------------------------------------


class _Stream:
    __slots__ = ("received", "sent", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.received = 0


def _write(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Load:
    """The streams of one ``start`` command, driven by :func:`load_generator`."""

    def __init__(
        self, selector: selectors.BaseSelector, port: int, streams: int, window: int
    ) -> None:
        self.selector = selector
        self.window = window
        self.refill = max(1, window // 4)
        self.payload = memoryview(bytes(window))
        self.streams: list[_Stream] = []
        self.errors: list[str] = []
        self.started = time.monotonic()
        self.flowing_at: float | None = None
        self.cpu_at_flowing = 0.0
        self.received_at_flowing = 0
        self.received = 0
        try:
            for _ in range(streams):
                sock = socket.create_connection(("127.0.0.1", port), timeout=10.0)
                sock.setblocking(False)
                stream = _Stream(sock)
                self.streams.append(stream)
                selector.register(sock, selectors.EVENT_READ, stream)
                self._fill(stream)
        except OSError:
            self.close()
            raise

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def _fill(self, stream: _Stream) -> None:
        missing = self.window - (stream.sent - stream.received)
        if missing >= self.refill:
            # A full send buffer takes less: what is in flight comes back, and
            # the next read tops the window up again.
            with contextlib.suppress(BlockingIOError):
                stream.sent += stream.sock.send(self.payload[:missing])

    def readable(self, stream: _Stream, buffer: bytearray) -> None:
        try:
            count = stream.sock.recv_into(buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error(f"stream read failed: {exc}")
            count = 0
        if count == 0:
            if not self.errors:
                self.error("the server closed a stream")
            self.selector.unregister(stream.sock)
            return
        stream.received += count
        self.received += count
        try:
            self._fill(stream)
        except OSError as exc:
            self.error(f"stream write failed: {exc}")
            self.selector.unregister(stream.sock)

    def all_flowing(self) -> bool:
        return all(stream.received for stream in self.streams)

    def mark_flowing(self) -> None:
        self.flowing_at = time.monotonic()
        self.cpu_at_flowing = time.process_time()
        self.received_at_flowing = self.received

    def mark(self) -> dict[str, Any]:
        return {"time": time.monotonic(), "received": self.received}

    def close(self) -> dict[str, Any]:
        now = time.monotonic()
        since = self.flowing_at if self.flowing_at is not None else now
        for stream in self.streams:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(stream.sock)
            stream.sock.close()
        return {
            "flowing_s": now - since,
            "received": self.received - self.received_at_flowing,
            "cpu_s": time.process_time() - self.cpu_at_flowing,
            "errors": self.errors,
        }


def load_generator() -> int:
    """Run as the load generator process, driven through standard input and output.

    It says ``{"ready": {"pid": PID}}``, then answers each command line:

    - ``{"start": {"port", "streams", "window", "flowing_timeout"}}``: opens the
      streams to 127.0.0.1:``port`` and answers ``{"flowing": {"ok", "seconds",
      "flowing", "streams"}}`` once every stream got bytes back, or with ``ok``
      false after ``flowing_timeout`` seconds (the streams then go on);
    - ``{"mark": null}``: answers ``{"mark": {"time", "received"}}``, the
      :func:`time.monotonic` clock and the bytes received so far;
    - ``{"stop": null}``: closes the streams and answers ``{"stopped": {"flowing_s",
      "received", "cpu_s", "errors"}}``, counted from the time all were flowing.

    It stops the streams by itself after :data:`LOAD_MAX_SECONDS`, and exits at the
    end of its input.
    """
    return _Driver().run()


class _Driver:
    """The load generator's loop: commands on standard input, streams meanwhile."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.stdin = sys.stdin.fileno()
        self.selector.register(self.stdin, selectors.EVENT_READ, None)
        self.buffer = bytearray(READ_SIZE)
        self.pending = b""
        self.load: _Load | None = None
        self.flowing_deadline = 0.0
        self.flowing_reported = True

    def run(self) -> int:
        _write({"ready": {"pid": os.getpid()}})
        while True:
            for key, _ in self.selector.select(0.05):
                if key.data is None:
                    if not self._read_commands():
                        self._stop()
                        return 0
                elif self.load is not None:
                    self.load.readable(key.data, self.buffer)
            self._check()

    def _read_commands(self) -> bool:
        """Run the commands that have come in; ``False`` at the end of the input."""
        data = os.read(self.stdin, 65536)
        if not data:
            return False
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            self._command(json.loads(line))
        return True

    def _command(self, command: dict[str, Any]) -> None:
        if "start" in command:
            self._stop()
            self._start(command["start"])
        elif "mark" in command and self.load is not None:
            _write({"mark": self.load.mark()})
        elif "stop" in command and self.load is not None:
            _write({"stopped": self._stop()})
        else:
            _write({"error": f"unexpected command {command!r}"})

    def _start(self, options: dict[str, Any]) -> None:
        try:
            self.load = _Load(
                self.selector,
                int(options["port"]),
                int(options["streams"]),
                int(options["window"]),
            )
        except OSError as exc:
            _write({"flowing": {"ok": False, "error": str(exc)}})
            return
        if len(self.buffer) < self.load.window:
            self.buffer = bytearray(min(self.load.window, MAX_READ_SIZE))
        self.flowing_deadline = self.load.started + float(options["flowing_timeout"])
        self.flowing_reported = False

    def _stop(self) -> dict[str, Any] | None:
        load, self.load = self.load, None
        return None if load is None else load.close()

    def _check(self) -> None:
        """Say when every stream flows; stop streaming after too long."""
        load = self.load
        if load is None:
            return
        now = time.monotonic()
        flowing = load.all_flowing()
        if not self.flowing_reported and (flowing or now > self.flowing_deadline):
            self.flowing_reported = True
            load.mark_flowing()
            report = {
                "ok": flowing,
                "seconds": now - load.started,
                "flowing": sum(bool(stream.received) for stream in load.streams),
                "streams": len(load.streams),
                "errors": load.errors,
            }
            _write({"flowing": report})
        if now - load.started > LOAD_MAX_SECONDS:
            load.error(f"stopped after {LOAD_MAX_SECONDS:g}s without a stop command")
            _write({"stopped": self._stop()})


class LoadGenerator:
    """The load generator process, seen from the measuring one."""

    def __init__(self, cpus: list[int] | None) -> None:
        argv = _proc.python_command(MODULE, "--load-generator")
        self._process = _proc.spawn(argv, cpus, merge_stderr=True)
        assert self._process.stdout is not None
        self._output = _proc.LineReader(self._process.stdout)
        self.pid = int(self._expect("ready", LOAD_TIMEOUT)["pid"])

    def _expect(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._output.get(deadline - time.monotonic())
            except TimeoutError:
                raise ServerError(
                    f"the load generator did not answer {key!r} in {timeout:g}s"
                ) from None
            if line is None:
                tail = " | ".join(self._output.tail)
                raise ServerError(f"the load generator exited: {tail}")
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if isinstance(message, dict) and key in message:
                    value: dict[str, Any] = message[key]
                    return value
                if isinstance(message, dict) and "error" in message:
                    raise ServerError(f"load generator: {message['error']}")

    def _send(self, message: dict[str, Any]) -> None:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(message) + "\n")
        self._process.stdin.flush()

    def start(self, port: int, settings: Settings) -> dict[str, Any]:
        """Open the streams; return once all flow (or ``ok`` is false)."""
        self._send(
            {
                "start": {
                    "port": port,
                    "streams": settings.streams,
                    "window": settings.window,
                    "flowing_timeout": settings.flowing_timeout,
                }
            }
        )
        return self._expect("flowing", settings.flowing_timeout + LOAD_TIMEOUT)

    def mark(self) -> dict[str, Any]:
        """Its clock and the bytes it has received so far."""
        self._send({"mark": None})
        return self._expect("mark", LOAD_TIMEOUT)

    def stop_streams(self) -> dict[str, Any]:
        """Close the streams; what they did since all were flowing."""
        self._send({"stop": None})
        return self._expect("stopped", LOAD_TIMEOUT)

    def close(self) -> None:
        _proc.stop(self._process)


# -- rounds and backends ------------------------------------------------------------


def _server_spec(backend: str) -> ServerSpec:
    return anyecho_spec(backend, "--max-connections", "0", "--idle-timeout", "0")


def _cpu_share(before: float | None, after: float | None, wall: float) -> float | None:
    """The share of one CPU used between two CPU-time readings ``wall`` s apart."""
    if before is None or after is None or wall <= 0:
        return None
    return (after - before) / wall


def _loaded_round(
    server: ServerProcess, load: LoadGenerator, settings: Settings
) -> dict[str, Any]:
    flowing = load.start(server.port, settings)
    result: dict[str, Any] = {"flowing": flowing}
    try:
        mark = load.mark()
        cpu = (_proc.cpu_seconds(load.pid), _proc.cpu_seconds(server.pid))
        wall = time.monotonic()
        phase = time_newcomers(server.port, settings.newcomers, settings.timeout)
        wall = time.monotonic() - wall
        cpu_after = (_proc.cpu_seconds(load.pid), _proc.cpu_seconds(server.pid))
        mark_after = load.mark()
    finally:
        stopped = load.stop_streams()
    seconds = mark_after["time"] - mark["time"]
    received = mark_after["received"] - mark["received"]
    result.update(
        phase=phase,
        stopped=stopped,
        load_cpu=_cpu_share(cpu[0], cpu_after[0], wall),
        server_cpu=_cpu_share(cpu[1], cpu_after[1], wall),
        stream_mib_per_s=received / seconds / (1 << 20) if seconds > 0 else None,
    )
    return result


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over the rounds of each figure, and the ratios loaded / idle."""
    summary: dict[str, Any] = {}
    for name in ("idle", "loaded"):
        keys = ("p50_s", "p90_s", "max_s", "all_s", "accepts_per_s")
        summary[name] = {
            key: _median([r[name][key] for r in rounds if r.get(name)]) for key in keys
        }
        summary[name]["timeouts"] = sum(r[name]["timeouts"] for r in rounds)
        summary[name]["failures"] = sum(r[name]["failures"] for r in rounds)
    for key in ("p50_s", "all_s"):
        idle, loaded = summary["idle"][key], summary["loaded"][key]
        ratio = loaded / idle if idle and loaded is not None else None
        summary[f"ratio_{key.removesuffix('_s')}"] = ratio
    for key in ("load_cpu", "server_cpu", "stream_mib_per_s", "flowing_s"):
        summary[key] = _median([r["load"][key] for r in rounds if r.get("load")])
    return summary


def measure_backend(
    backend: str,
    settings: Settings,
    placement: Placement,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Every round on one backend; a JSON-able result (``error`` set on failure)."""
    entry: dict[str, Any] = {"backend": backend, "error": None, "rounds": []}
    spec = _server_spec(backend)
    if (why := spec.unavailable()) is not None:
        entry["error"] = why
        return entry
    server = ServerProcess(spec, placement.server)
    load: LoadGenerator | None = None
    try:
        server.wait_ready()
        server.check()
        load = LoadGenerator(placement.load)
        # A round that is not counted: the server's first connections warm it up.
        time_newcomers(server.port, settings.newcomers, settings.timeout)
        time.sleep(settings.settle)
        for index in range(settings.repeat):
            progress(f"{backend}: round {index + 1}/{settings.repeat}: idle")
            idle = time_newcomers(server.port, settings.newcomers, settings.timeout)
            time.sleep(settings.settle)
            progress(
                f"{backend}: round {index + 1}/{settings.repeat}: loaded "
                f"({settings.streams} streams)"
            )
            loaded = _loaded_round(server, load, settings)
            time.sleep(settings.settle)
            phase: Phase = loaded["phase"]
            entry["rounds"].append(
                {
                    "idle": idle.to_json(),
                    "loaded": phase.to_json(),
                    "load": {
                        "flowing_ok": loaded["flowing"].get("ok", False),
                        "flowing_s": loaded["flowing"].get("seconds"),
                        "load_cpu": loaded["load_cpu"],
                        "server_cpu": loaded["server_cpu"],
                        "stream_mib_per_s": loaded["stream_mib_per_s"],
                        "errors": [
                            *loaded["flowing"].get("errors", []),
                            *loaded["stopped"].get("errors", []),
                            *(
                                [loaded["flowing"]["error"]]
                                if "error" in loaded["flowing"]
                                else []
                            ),
                        ],
                    },
                }
            )
        if (reason := server.exit_reason()) is not None:
            entry["error"] = reason
    except ServerError as exc:
        entry["error"] = str(exc)
    finally:
        if load is not None:
            load.close()
        server.stop()
    if entry["rounds"]:
        entry["summary"] = _summary(entry["rounds"])
    return entry


def run(
    settings: Settings,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Measure every backend; the JSON document (schema :data:`SCHEMA`)."""
    placement = Placement.choose()
    if placement.client is not None:
        _proc.pin(0, placement.client)
    return {
        "schema": SCHEMA,
        "settings": {
            "backends": list(settings.backends),
            "streams": settings.streams,
            "newcomers": settings.newcomers,
            "repeat": settings.repeat,
            "window": settings.window,
            "timeout_s": settings.timeout,
            "message_size": MESSAGE_SIZE,
        },
        "placement": {
            "server": placement.server,
            "load": placement.load,
            "client": placement.client,
            "description": placement.describe(),
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "backends": [
            measure_backend(backend, settings, placement, progress)
            for backend in settings.backends
        ],
    }


# -- output -------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f}%"


def render(document: dict[str, Any]) -> str:
    """The document as a plain-text table, with notes below it."""
    settings = document["settings"]
    window = format_size(settings["window"])
    lines = [
        (
            f"newcomers: {settings['newcomers']} clients, each connecting, sending "
            f"{settings['message_size']} B and waiting for the echo; loaded: while "
            f"{settings['streams']} streams keep {window} in flight each"
        ),
        document["placement"]["description"],
        (
            "times in ms, from connect() to the echo; medians of "
            f"{settings['repeat']} round(s)"
        ),
        "",
    ]
    header = (
        "backend",
        "idle p50",
        "p90",
        "max",
        "all",
        "loaded p50",
        "p90",
        "max",
        "all",
        "ratio all",
        "ratio p50",
        "accepts/s loaded",
        "load CPU",
        "server CPU",
    )
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    for entry in document["backends"]:
        backend = entry["backend"]
        if entry["error"]:
            notes.append(f"{backend}: {entry['error']}")
        summary = entry.get("summary")
        if summary is None:
            rows.append((backend, *(["-"] * (len(header) - 1))))
            continue
        idle, loaded = summary["idle"], summary["loaded"]
        accepts = loaded["accepts_per_s"]
        rows.append(
            (
                backend,
                *(_ms(idle[key]) for key in ("p50_s", "p90_s", "max_s", "all_s")),
                *(_ms(loaded[key]) for key in ("p50_s", "p90_s", "max_s", "all_s")),
                _times(summary["ratio_all"]),
                _times(summary["ratio_p50"]),
                "-" if accepts is None else f"{accepts:.0f}",
                _percent(summary["load_cpu"]),
                _percent(summary["server_cpu"]),
            )
        )
        notes.extend(
            f"{backend}: {missing} {name} newcomer(s) without their echo "
            f"({summary[name]['timeouts']} timed out after {settings['timeout_s']:g}s)"
            for name in ("idle", "loaded")
            if (missing := summary[name]["timeouts"] + summary[name]["failures"])
        )
        for number, round_ in enumerate(entry["rounds"], 1):
            load = round_["load"]
            if not load["flowing_ok"]:
                notes.append(f"{backend}: round {number}: not every stream flowed")
            errors = (
                *load["errors"],
                *round_["idle"]["errors"],
                *round_["loaded"]["errors"],
            )
            notes.extend(f"{backend}: round {number}: {error}" for error in errors)
        if summary["load_cpu"] is not None and summary["load_cpu"] > 0.9:
            notes.append(
                f"{backend}: the load generator used {_percent(summary['load_cpu'])} "
                "of its CPU: it may be what limits the streams"
            )
        mib = summary["stream_mib_per_s"]
        if mib is not None:
            notes.append(
                f"{backend}: streams moved {mib:.0f} MiB/s while newcomers were "
                f"timed; all streams flowing after {summary['flowing_s']:.2f}s"
            )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines.extend(
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in (header, *rows)
    )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def succeeded(document: dict[str, Any]) -> bool:
    """Whether every backend ran and every newcomer got its exact echo."""
    for entry in document["backends"]:
        if entry["error"] or not entry["rounds"]:
            return False
        for round_ in entry["rounds"]:
            for name in ("idle", "loaded"):
                if round_[name]["echoed"] != round_[name]["newcomers"]:
                    return False
    return True


# -- command line -------------------------------------------------------------------


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (ValueError, argparse.ArgumentTypeError):
            value = None
        if value is None or value <= 0:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected > 0")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m anyecho.bench.newcomers",
        description="Time newcomers' first echo with the server idle, and while "
        "other connections stream flat out.",
    )
    parser.add_argument(
        "--backend",
        action="append",
        choices=BACKENDS,
        help="backend to measure (repeatable; default: all three)",
    )
    parser.add_argument(
        "--streams",
        type=positive_count,
        default=Settings.streams,
        help="connections streaming flat out in the loaded phase (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--newcomers",
        type=positive_count,
        default=Settings.newcomers,
        help="clients timed in each phase (default: %(default)s)",
    )
    parser.add_argument(
        "--repeat",
        type=positive_count,
        default=Settings.repeat,
        help="rounds per backend (default: %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=_positive(byte_size),
        default=Settings.window,
        help=f"bytes each stream keeps in flight, {SIZE_SYNTAX} (default: "
        f"{format_size(Settings.window)}, the default --receive-size of anyecho "
        "serve)",
    )
    parser.add_argument(
        "--timeout",
        type=positive_seconds,
        default=Settings.timeout,
        help="seconds a newcomer waits for its echo (default: %(default)s)",
    )
    parser.add_argument(
        "--flowing-timeout",
        type=positive_seconds,
        default=Settings.flowing_timeout,
        help="seconds to wait for every stream to flow (default: %(default)s)",
    )
    parser.add_argument(
        "--settle",
        type=seconds,
        default=Settings.settle,
        help="seconds to pause after each phase (default: %(default)s)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument("--load-generator", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; the exit status."""
    args = _parser().parse_args(argv)
    if args.load_generator:
        return load_generator()
    settings = Settings(
        backends=tuple(dict.fromkeys(args.backend or BACKENDS)),
        streams=args.streams,
        newcomers=args.newcomers,
        repeat=args.repeat,
        window=args.window,
        timeout=args.timeout,
        flowing_timeout=args.flowing_timeout,
        settle=max(0.0, args.settle),
    )

    def progress(line: str) -> None:
        if not args.quiet:
            sys.stderr.write(line + "\n")

    document = run(settings, progress)
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")
    sys.stdout.write(render(document))
    return 0 if succeeded(document) else 1


if __name__ == "__main__":
    sys.exit(main())
