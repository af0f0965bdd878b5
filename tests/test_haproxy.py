"""Three ``anyecho serve`` instances behind a real HAProxy, in TCP mode.

HAProxy (Debian's ``haproxy``) runs in the foreground on loopback, health-checks
each instance's ``/healthz`` on its metrics port, and balances the echo port.
The test shows that every byte of many concurrent clients comes back, that the
instances' logs and metrics account for every connection, and that a rolling
restart (SIGTERM one instance at a time while clients stream, a new one started
on the same address once it has drained) loses no byte and refuses no client.

Every wait is for a signal: a log line of an instance, or HAProxy's own view of
its servers (``show servers state`` on its stats socket); the health checks'
pace is HAProxy's configuration, not the test's.

The client's real address reaches the instances with the PROXY protocol: set
:data:`PROXY_PROTOCOL` and HAProxy sends a v2 header (``send-proxy-v2``) that
the instances read (``--proxy-protocol --trusted-proxy 127.0.0.0/8``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from .processes import ServerProcess
from .utils import TIMEOUT, http_get_now, metric, metric_values, random_bytes

pytestmark = [pytest.mark.haproxy, pytest.mark.anyio]

#: Whether HAProxy sends the PROXY protocol (v2) and the instances read it.
PROXY_PROTOCOL = True
PROXY_SERVER_OPTIONS = " send-proxy-v2" if PROXY_PROTOCOL else ""
PROXY_SERVE_OPTIONS = (
    ["--proxy-protocol", "--trusted-proxy", "127.0.0.0/8"] if PROXY_PROTOCOL else []
)

#: The instances' addresses, and the one the clients connect from.
INSTANCE_HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
CLIENT_HOST = "127.0.0.9"

CLIENTS = 50
PAYLOAD = 256 * 1024
CHUNK = 16 * 1024
#: Clients streaming in a loop through the rolling restart.
STREAMING_CLIENTS = 20
#: Clients of each instance that are half-way through when it is stopped.
HELD = 2
#: How long an instance goes on accepting once it is not ready: many of
#: HAProxy's check intervals (100 ms; two failed checks take it out), so that
#: it is out before the listener closes, even on a busy machine.
DRAIN_DELAY = "2"

#: An instance's line for each connection it closed: the client (with the PROXY
#: protocol, the address the header named, then the balancer's after "via").
CLOSED = re.compile(r"anyecho\[\d+\]: (\S+?):\d+(?: via \S+)?: closed")


def haproxy_binary() -> str:
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if found is None:
        message = "haproxy is not installed (Debian: apt-get install haproxy)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class Instance:
    """One ``anyecho serve`` behind the balancer: its addresses and process."""

    name: str
    host: str
    backend: str
    port: int = 0
    metrics_port: int = 0
    process: ServerProcess | None = None
    logs: list[str] = field(default_factory=list)

    def start(self, run: type[ServerProcess]) -> None:
        self.process = run(
            "serve",
            *("--host", self.host, "--port", str(self.port)),
            *("--metrics", f"{self.host}:{self.metrics_port}"),
            *("--drain-delay", DRAIN_DELAY, "--drain-timeout", str(TIMEOUT)),
            *("--max-connections-per-source", "0"),
            *("--backend", self.backend, "--log-level", "debug"),
            *PROXY_SERVE_OPTIONS,
        )
        host = re.escape(self.host)
        metrics = self.process.wait_for(rf"serving metrics on http://{host}:(\d+)/")
        self.metrics_port = int(metrics[1])
        self.port = int(
            self.process.wait_for(rf"serving echo on tcp://{host}:(\d+)")[1]
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}"

    def scrape(self) -> str:
        status, text = http_get_now(f"{self.url}/metrics")
        assert status == 200, text
        return text

    def terminate(self) -> None:
        assert self.process is not None
        self.process.proc.send_signal(signal.SIGTERM)

    def draining(self) -> int:
        """Once its listeners have closed: the connections left to drain."""
        assert self.process is not None
        line = self.process.wait_for(r"stopped accepting; (\d+) connection")
        return int(line[1])

    def stopped(self) -> str:
        """The whole of its log once it has exited (status 0)."""
        assert self.process is not None
        status, stderr = self.process.finish()
        assert status == 0, stderr
        self.logs.append(stderr)
        return stderr


class HAProxy:
    """``haproxy -db -f CONFIG`` in front of the instances."""

    def __init__(self, binary: str, directory: Path, instances: list[Instance]):
        self.port = free_port("127.0.0.1")
        self.socket = str(directory / "haproxy.sock")
        servers = "\n".join(
            f"    server {i.name} {i.host}:{i.port} check port {i.metrics_port}"
            f"{PROXY_SERVER_OPTIONS}"
            for i in instances
        )
        self.config = directory / "haproxy.cfg"
        self.config.write_text(
            f"""\
global
    stats socket {self.socket} mode 600 level admin
    maxconn 4096

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    # Without it a check times out after "inter" (100 ms): a busy instance
    # would be taken out for being slow to answer, and with it every other.
    timeout check 5s

frontend echo
    bind 127.0.0.1:{self.port}
    default_backend anyecho

backend anyecho
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 100ms fastinter 100ms downinter 100ms rise 1 fall 2
{servers}
"""
        )
        self.log = directory / "haproxy.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def states(self) -> dict[str, bool]:
        """Each server's name, and whether HAProxy has it UP."""
        async with await anyio.connect_unix(self.socket) as stream:
            await stream.send(b"show servers state anyecho\n")
            text = b"".join([chunk async for chunk in stream]).decode()
        states = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) > 5 and fields[1] == "anyecho":
                states[fields[3]] = fields[5] == "2"  # SRV_ST_RUNNING
        return states

    async def wait_states(self, **wanted: bool) -> None:
        """Until HAProxy sees the servers named so UP (True) or DOWN (False)."""
        with anyio.fail_after(TIMEOUT):
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"haproxy exited: {self.log.read_text()}")
                try:
                    states = await self.states()
                except OSError:  # its socket is not there yet
                    states = {}
                if all(states.get(name) == up for name, up in wanted.items()):
                    return
                # HAProxy tells nobody when a server changes state: ask again
                # after a poll interval (its checks run every 100 ms).
                await anyio.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=TIMEOUT)


@dataclass
class Tally:
    """What the clients saw."""

    clients: int = 0
    bytes_sent: int = 0
    bytes_back: int = 0
    lost_bytes: int = 0
    refused: int = 0
    failures: list[str] = field(default_factory=list)


async def client(port: int, payload: bytes, tally: Tally) -> None:
    """Send ``payload`` through the balancer, half-close, read to the end."""
    try:
        stream = await anyio.connect_tcp("127.0.0.1", port, local_host=CLIENT_HOST)
    except ConnectionRefusedError:
        tally.refused += 1
        return
    tally.clients += 1
    received = bytearray()

    async def read() -> None:
        async for data in stream:
            received.extend(data)

    try:
        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(read)
            for start in range(0, len(payload), CHUNK):
                await stream.send(payload[start : start + CHUNK])
            await stream.send_eof()
    except Exception as exc:  # counted, and reported by the assertions
        tally.failures.append(repr(exc))
    tally.bytes_sent += len(payload)
    tally.bytes_back += len(received)
    if bytes(received) != payload:
        tally.lost_bytes += len(payload) - len(received)
        tally.failures.append(f"{len(received)} of {len(payload)} bytes came back")


@dataclass
class Held:
    """A client straight to one instance, stopped half-way through its payload."""

    stream: anyio.abc.SocketStream
    payload: bytes
    received: bytearray

    @classmethod
    async def open(cls, instance: Instance, payload: bytes) -> Held:
        stream = await anyio.connect_tcp(instance.host, instance.port)
        if PROXY_PROTOCOL:  # a trusted source must send the header: as HAProxy
            port = stream.extra(anyio.abc.SocketAttribute.local_port)
            header = f"PROXY TCP4 {CLIENT_HOST} {instance.host} {port} {instance.port}"
            await stream.send(header.encode() + b"\r\n")
        half = len(payload) // 2
        await stream.send(payload[:half])
        received = bytearray()
        while len(received) < half:
            received += await stream.receive(half - len(received))
        return cls(stream, payload, received)

    async def finish(self, tally: Tally) -> None:
        """The other half, half-close, and read to the end, during the drain."""
        tally.clients += 1
        tally.bytes_sent += len(self.payload)
        try:
            async with self.stream, anyio.create_task_group() as tg:

                async def read() -> None:
                    async for data in self.stream:
                        self.received += data

                tg.start_soon(read)
                await self.stream.send(self.payload[len(self.payload) // 2 :])
                await self.stream.send_eof()
        except Exception as exc:
            tally.failures.append(repr(exc))
        tally.bytes_back += len(self.received)
        if bytes(self.received) != self.payload:
            tally.lost_bytes += len(self.payload) - len(self.received)
            tally.failures.append("a held client lost bytes")


@pytest.fixture
def haproxy_path() -> str:
    """The haproxy program (the test skips, or under CI fails, without it)."""
    return haproxy_binary()


@pytest.fixture
def instances(
    haproxy_path: str, run: type[ServerProcess], backend_name: str
) -> list[Instance]:
    started = [
        Instance(f"echo{n}", host, backend_name)
        for n, host in enumerate(INSTANCE_HOSTS, 1)
    ]
    for instance in started:
        instance.start(run)
    return started


@pytest.fixture
def haproxy(
    haproxy_path: str, tmp_path: Path, instances: list[Instance]
) -> Iterator[HAProxy]:
    balancer = HAProxy(haproxy_path, tmp_path, instances)
    try:
        yield balancer
    finally:
        balancer.stop()


def connected_from(log: str) -> list[str]:
    """The client address of each connection an instance logged."""
    return CLOSED.findall(log)


async def test_haproxy_in_front_of_three_instances(
    haproxy: HAProxy,
    instances: list[Instance],
    run: type[ServerProcess],
    tmp_path: Path,
) -> None:
    everyone_up = {i.name: True for i in instances}
    await haproxy.wait_states(**everyone_up)

    # (a) Many concurrent clients: every byte comes back.
    tally = Tally()
    payloads = [random_bytes(PAYLOAD) for _ in range(CLIENTS)]
    with anyio.fail_after(TIMEOUT):
        async with anyio.create_task_group() as tg:
            for payload in payloads:
                tg.start_soon(client, haproxy.port, payload, tally)
    assert tally.failures == []
    assert (tally.clients, tally.refused, tally.lost_bytes) == (CLIENTS, 0, 0)
    assert tally.bytes_back == CLIENTS * PAYLOAD

    # (b) The instances' metrics and logs account for every connection.
    texts = [instance.scrape() for instance in instances]
    totals = [metric(text, "anyecho_connections_total") for text in texts]
    assert sum(totals) == CLIENTS
    assert all(total > 0 for total in totals)  # round robin: each took some
    received = sum(metric(text, "anyecho_received_bytes_total") for text in texts)
    assert received == CLIENTS * PAYLOAD
    sample_scrape = texts[0]

    # (c) A rolling restart while clients stream.
    streaming = Tally()
    stop_streaming = anyio.Event()

    async def stream_in_a_loop() -> None:
        payload = random_bytes(PAYLOAD)
        while not stop_streaming.is_set():
            await client(haproxy.port, payload, streaming)

    restart_logs: list[str] = []
    held = Tally()
    async with anyio.create_task_group() as tg:
        for _ in range(STREAMING_CLIENTS):
            tg.start_soon(stream_in_a_loop)
        for instance in instances:
            # Clients of this very instance, half-way through when it stops:
            # they finish during the drain.
            held_clients = [
                await Held.open(instance, random_bytes(PAYLOAD)) for _ in range(HELD)
            ]
            if PROXY_PROTOCOL:  # its metrics name the real client, not HAProxy
                text = await anyio.to_thread.run_sync(instance.scrape)
                sources = {
                    dict(labels)["source"]: value
                    for (name, labels), value in metric_values(text).items()
                    if name == "anyecho_source_connections_open"
                }
                assert set(sources) == {CLIENT_HOST}, sources
                assert sources[CLIENT_HOST] >= HELD
            instance.terminate()
            # Not ready at once: the balancer takes it out; then the listeners
            # close, and the held clients are still there.
            await haproxy.wait_states(**{instance.name: False})
            assert await anyio.to_thread.run_sync(instance.draining) >= HELD
            for held_client in held_clients:
                await held_client.finish(held)
            log = await anyio.to_thread.run_sync(instance.stopped)
            restart_logs.append(log)
            assert "not ready; accepting for" in log
            assert "server stopped" in log
            await anyio.to_thread.run_sync(instance.start, run)
            await haproxy.wait_states(**everyone_up)
        stop_streaming.set()

    everything = (tally, streaming, held)
    figures = {
        "clients": sum(t.clients for t in everything),
        "bytes_sent": sum(t.bytes_sent for t in everything),
        "bytes_back": sum(t.bytes_back for t in everything),
        "lost_bytes": sum(t.lost_bytes for t in everything),
        "refused_connects": sum(t.refused for t in everything),
        "restart_clients": streaming.clients,
        "restart_bytes": streaming.bytes_sent,
        "drained_clients": held.clients,
    }
    (tmp_path / "figures.json").write_text(json.dumps(figures, indent=2))
    (tmp_path / "sample-scrape.txt").write_text(sample_scrape)
    print("haproxy figures:", json.dumps(figures))
    assert held.failures == []
    assert (held.clients, held.lost_bytes) == (HELD * len(instances), 0)
    assert streaming.failures == []
    assert streaming.refused == 0
    assert streaming.lost_bytes == 0
    assert streaming.bytes_back == streaming.bytes_sent
    assert streaming.clients >= STREAMING_CLIENTS

    # Every connection an instance served is in its log, from the balancer
    # (from the client itself, with the PROXY protocol).
    for log in restart_logs:
        peers = connected_from(log)
        served = re.search(r"server stopped: connections 0 active / (\d+) total", log)
        assert served is not None
        assert len(peers) == int(served[1])
        expected = CLIENT_HOST if PROXY_PROTOCOL else None
        if expected is not None:
            assert set(peers) == {expected}
        else:
            assert CLIENT_HOST not in peers
