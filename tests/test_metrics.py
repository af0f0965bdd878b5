"""Prometheus metrics and /healthz: the library, the endpoint, the command line.

Values are checked against a known workload, through ``prometheus_client``'s own
parser; the endpoint is fed what an unauthenticated peer might send.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

import anyecho
from anyecho import ByteCounts, ListenAddress, RateLimit, StatsSnapshot
from anyecho._stats import ServerStats, combine
from anyecho.cli._workers import worker_argv
from anyecho.metrics import HTTPLimits, metrics_text, serve_metrics
from anyecho.testing import serving

from .processes import ServerProcess, echo_once, one_line_error
from .utils import (
    TIMEOUT,
    connect,
    exchange,
    http_exchange,
    http_get,
    http_get_now,
    metric,
    metric_values,
    random_bytes,
    read_to_end,
    round_trip,
    wait_for_metrics,
)

METRICS_LINE = r"serving metrics on http://127\.0\.0\.1:(\d+)/metrics"


@asynccontextmanager
async def metrics_of(
    server: anyecho.EchoServer, limits: HTTPLimits | None = None
) -> AsyncIterator[ListenAddress]:
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(
            functools.partial(serve_metrics, server, port=0, limits=limits)
        )
        yield addresses[0]
        tg.cancel_scope.cancel()


async def scrape(address: ListenAddress) -> str:
    reply = await http_get(address, "/metrics")
    assert reply.status == 200, reply.raw
    assert reply.headers["content-type"].startswith("text/plain")
    return reply.text


@pytest.mark.anyio
async def test_metrics_match_a_known_workload() -> None:
    sizes = [1000, 20000, 300000]
    async with (
        serving(
            max_connections_per_source=1,
            udp=True,
            udp_rate=RateLimit(0.001, 1),  # one datagram answered, then none
        ) as server,
        metrics_of(server.server) as endpoint,
    ):
        for size in sizes:
            payload = random_bytes(size)
            async with await server.connect() as stream:
                assert await exchange(stream, payload) == payload
        # At the per-source limit of 1: one served, one waiting, one reset.
        async with await server.connect() as held:
            await round_trip(held, b"held")
            waiting = await server.connect()
            # A blocking connect completes in the kernel, before the server
            # resets it (an event loop's may see the reset first).
            with socket.create_connection((server.host, server.port)) as refused:
                with anyio.fail_after(TIMEOUT):
                    await server.wait_stats(lambda s: s.refused_connections == 1)
                refused.settimeout(TIMEOUT)
                with contextlib.suppress(ConnectionResetError):
                    assert refused.recv(1) == b""
        async with waiting:
            assert await exchange(waiting, b"waited") == b"waited"
        async with await server.connect_udp() as udp:
            await udp.send(b"first")
            assert await udp.receive() == b"first"
            await udp.send(b"second")
            with anyio.fail_after(TIMEOUT):
                await server.wait_stats(lambda s: s.datagrams_dropped == 1)
        with anyio.fail_after(TIMEOUT):
            await server.wait_stats(lambda s: s.active_connections == 0)
        text = await scrape(endpoint)
        assert metric_values(text) == metric_values(metrics_text(server.server))

    stream_bytes = sum(sizes) + len(b"held") + len(b"waited")
    assert metric(text, "anyecho_connections_open") == 0
    assert metric(text, "anyecho_connections_total") == len(sizes) + 3
    assert metric(text, "anyecho_connections_refused_total", reason="source-limit") == 1
    assert metric(text, "anyecho_connections_refused_total", reason="reset") == 0
    assert metric(text, "anyecho_errors_total", kind="source-limit") == 1
    assert metric(text, "anyecho_errors_total", kind="tls") == 0
    assert metric(text, "anyecho_received_bytes_total") == stream_bytes + 11
    assert metric(text, "anyecho_sent_bytes_total") == stream_bytes + 5
    assert metric(text, "anyecho_datagrams_echoed_total") == 1
    assert metric(text, "anyecho_datagrams_dropped_total", reason="rate-limit") == 1
    assert metric(text, "anyecho_datagrams_dropped_total", reason="blocked-port") == 0
    assert metric(text, "anyecho_tls_handshake_failures_total") == 0
    assert metric(text, "anyecho_ready") == 1
    assert metric(text, "anyecho_draining") == 0
    # Every served connection has closed, and was timed: the refused one was not.
    served = len(sizes) + 2
    assert metric(text, "anyecho_connection_duration_seconds_count") == served
    assert metric(text, "anyecho_connection_duration_seconds_bucket", le="+Inf") == (
        served
    )
    assert metric(text, "anyecho_connection_duration_seconds_sum") > 0


@pytest.mark.anyio
async def test_tls_handshake_failures_are_counted(
    anyecho_server_ssl_context: ssl.SSLContext,
) -> None:
    async with serving(ssl_context=anyecho_server_ssl_context) as server:
        async with await connect(server.address) as stream:
            await stream.send(b"this is not a TLS client hello\r\n\r\n")
            await read_to_end(stream)
        with anyio.fail_after(TIMEOUT):
            await server.wait_stats(lambda s: s.errors["tls"] == 1)
        text = metrics_text(server.server)
    assert metric(text, "anyecho_tls_handshake_failures_total") == 1
    assert metric(text, "anyecho_errors_total", kind="tls") == 1


@pytest.mark.anyio
async def test_open_connections_by_source() -> None:
    async with serving(max_connections_per_source=10) as server:
        async with await server.connect() as one, await server.connect() as two:
            await round_trip(one, b"one")
            await round_trip(two, b"two")
            text = metrics_text(server.server)
            assert (
                metric(text, "anyecho_source_connections_open", source="127.0.0.1") == 2
            )
        with anyio.fail_after(TIMEOUT):
            await server.wait_stats(lambda s: s.active_connections == 0)
        text = metrics_text(server.server)
    assert not [
        name
        for name, _ in metric_values(text)
        if name == "anyecho_source_connections_open"
    ]
    assert server.stats.open_by_source == {}


@pytest.mark.anyio
async def test_injected_faults_are_counted_and_are_no_errors() -> None:
    async with serving(
        udp=True, udp_rate=RateLimit(1000, 1000), udp_byte_rate=RateLimit(1e6, 1e6)
    ) as server:
        async with await server.connect() as first, await server.connect() as second:
            await round_trip(first, b"before")
            await round_trip(second, b"before")
            server.set_faults(anyecho.Faults(reset_after=0))  # both, at once
            for stream in (first, second):
                with pytest.raises(anyio.BrokenResourceError):
                    await stream.receive()
        server.set_udp_faults(anyecho.UdpFaults(drop=1))
        async with await server.connect_udp() as udp:
            await udp.send(b"lost")
            with anyio.fail_after(TIMEOUT):
                await server.wait_stats(lambda s: s.datagrams_dropped == 1)
        with anyio.fail_after(TIMEOUT):
            await server.wait_stats(lambda s: s.active_connections == 0)
        text = metrics_text(server.server)
    assert metric(text, "anyecho_faults_injected_total", kind="reset") == 2
    assert metric(text, "anyecho_udp_faults_injected_total", kind="drop") == 1
    assert metric(text, "anyecho_udp_faults_injected_total", kind="duplicate") == 0
    assert metric(text, "anyecho_datagrams_dropped_total", reason="fault") == 1
    assert metric(text, "anyecho_errors_total", kind="reset") == 0


@pytest.mark.anyio
async def test_healthz_follows_the_server_from_start_to_stop() -> None:
    server = anyecho.EchoServer(host="127.0.0.1", port=0, drain_timeout=TIMEOUT)
    async with metrics_of(server) as endpoint:
        reply = await http_get(endpoint, "/healthz")
        assert (reply.status, reply.text) == (503, "starting\n")
        async with anyio.create_task_group() as tg:
            (address,) = await tg.start(server.serve)
            reply = await http_get(endpoint, "/healthz")
            assert (reply.status, reply.text) == (200, "ready\n")
            async with await connect(address) as held:
                await round_trip(held)
                server.stop()  # the drain: held may finish
                assert not server.ready
                with anyio.fail_after(TIMEOUT):
                    await server.wait_draining()
                reply = await http_get(endpoint, "/healthz")
                assert (reply.status, reply.text) == (503, "draining\n")
                text = await scrape(endpoint)
                assert metric(text, "anyecho_draining") == 1
                assert metric(text, "anyecho_ready") == 0
                assert metric(text, "anyecho_connections_open") == 1
                await round_trip(held, b"still echoed while draining")
        reply = await http_get(endpoint, "/healthz")
        assert (reply.status, reply.text) == (503, "stopped\n")


@pytest.mark.anyio
async def test_drain_delay_goes_on_accepting_while_not_ready() -> None:
    async with serving(drain_delay=TIMEOUT) as server:
        async with metrics_of(server.server) as endpoint:
            server.server.stop()
            reply = await http_get(endpoint, "/healthz")
            assert (reply.status, reply.text) == (503, "draining\n")
            # Not ready, yet still accepting: a client sent meanwhile is served.
            async with await server.connect() as late:
                assert await exchange(late, b"late") == b"late"
            server.server.stop()  # a second stop skips the rest of the delay
            with anyio.fail_after(TIMEOUT):
                await server.server.wait_draining()
            with pytest.raises(OSError):  # noqa: PT011 - refused, by any name
                await server.connect()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"garbage\r\n\r\n", 400),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n",
            400,
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 100_000 + b"\r\n\r\n",
            431,
        ),
        (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            431,
        ),
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 needs a Host
        (b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", 405),
        (
            b"PUT /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
            + b"x" * 100_000,
            413,
        ),
        (b"GET /secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404),
        (b"GET /healthz HTTP/1.0\r\n\r\n", 200),
        (b"GET /metrics?name=x HTTP/1.0\r\n\r\n", 200),
    ],
    ids=[
        "garbage",
        "tls",
        "huge-header",
        "many-headers",
        "no-host",
        "post",
        "large-body",
        "unknown-path",
        "http-1.0",
        "query",
    ],
)
async def test_what_a_peer_sends_gets_a_status_never_a_crash(
    request_bytes: bytes, status: int
) -> None:
    async with serving() as server, metrics_of(server.server) as endpoint:
        reply = await http_exchange(endpoint, request_bytes)
        assert reply.status == status, reply.raw[:200]
        if status == 405:
            assert reply.headers["allow"] == "GET, HEAD"
        # The endpoint, and the server, carry on.
        assert (await http_get(endpoint, "/healthz")).status == 200
        async with await server.connect() as stream:
            await round_trip(stream)


@pytest.mark.anyio
async def test_keep_alive_head_and_openmetrics() -> None:
    async with serving() as server, metrics_of(server.server) as endpoint:
        request = (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Accept: application/openmetrics-text; version=1.0.0\r\n\r\n"
        )
        reply = await http_exchange(endpoint, request)
        assert reply.raw.count(b"HTTP/1.1 200 OK\r\n") == 3
        openmetrics = reply.raw.rsplit(b"\r\n\r\n", 1)[1].decode()
        assert openmetrics.endswith("# EOF\n")
        assert "# UNIT anyecho_received_bytes bytes" in openmetrics


@pytest.mark.anyio
async def test_slow_and_surplus_peers_are_cut_off() -> None:
    limits = HTTPLimits(max_connections=2, request_timeout=0.2)
    async with serving() as server, metrics_of(server.server, limits) as endpoint:
        # A request that never ends gets a 408 once its time is up; an idle
        # connection is closed without a word.
        async with await connect(endpoint) as slow, await connect(endpoint) as idle:
            await slow.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            with anyio.fail_after(TIMEOUT):
                assert b" 408 " in await read_to_end(slow)
                assert await read_to_end(idle) == b""
        # Past the connection limit, a newcomer is closed at once.
        async with await connect(endpoint) as one, await connect(endpoint) as two:
            await one.send(b"G")
            await two.send(b"G")
            async with await connect(endpoint) as third:
                with anyio.fail_after(TIMEOUT):
                    assert await read_to_end(third) == b""
        # The two above are counted out once the endpoint has seen them go:
        # until then a newcomer may still be turned away.
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    if (await http_get(endpoint, "/healthz")).status == 200:
                        break
                except (OSError, anyio.BrokenResourceError):
                    pass
        assert metric(await scrape(endpoint), "anyecho_ready") == 1


# --- the command line --------------------------------------------------------------


def test_metrics_are_off_by_default(run: type[ServerProcess]) -> None:
    server = run("serve", "--port", "0")
    port = server.wait_port()
    assert echo_once(port, b"x") == b"x"
    server.proc.send_signal(signal.SIGTERM)
    status, stderr = server.finish()
    assert status == 0
    assert "metrics" not in stderr


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope", "invalid address 'nope'"),
        ("70000", "invalid port '70000'"),
        ("::1:9100", "[IPv6]:PORT"),
    ],
)
def test_a_bad_metrics_address_is_a_usage_error(value: str, message: str) -> None:
    status, line = one_line_error("serve", "--port", "0", "--metrics", value)
    assert status == 2
    assert message in line


def test_metrics_without_the_extra_is_a_usage_error(tmp_path: Path) -> None:
    shadow = tmp_path / "prometheus_client"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    status, line = one_line_error("serve", "--port", "0", "--metrics", "0", env=env)
    assert status == 2
    assert "--metrics needs the 'prometheus_client' package" in line
    assert "pip install 'anyecho[metrics]'" in line


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "workers"])
def test_metrics_address_in_use_is_one_line(
    run: type[ServerProcess], workers: list[str]
) -> None:
    if workers and not sys.platform.startswith("linux"):
        pytest.skip("--workers needs SO_REUSEPORT")
    first = run("serve", "--port", "0", "--metrics", "0")
    port = int(first.wait_for(METRICS_LINE).group(1))
    status, line = one_line_error(
        "serve", "--port", "0", "--metrics", str(port), *workers
    )
    assert status == 1
    assert f"127.0.0.1:{port}" in line


def test_serve_metrics_from_the_command_line(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = run(
        "serve", "--port", "0", "--metrics", "127.0.0.1:0", "--backend", backend_name
    )
    url = f"http://127.0.0.1:{int(server.wait_for(METRICS_LINE).group(1))}"
    port = server.wait_port()
    assert http_get_now(f"{url}/healthz") == (200, "ready\n")
    payload = random_bytes(12345)
    assert echo_once(port, payload) == payload
    text = wait_for_metrics(
        f"{url}/metrics",
        lambda text: metric(text, "anyecho_connection_duration_seconds_count") == 1,
    )
    assert metric(text, "anyecho_connections_total") == 1
    assert metric(text, "anyecho_received_bytes_total") == len(payload)
    assert metric(text, "anyecho_sent_bytes_total") == len(payload)
    server.proc.send_signal(signal.SIGTERM)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="--workers needs SO_REUSEPORT"
)
def test_one_endpoint_adds_up_the_workers(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = run(
        "serve",
        "--port",
        "0",
        "--workers",
        "2",
        "--metrics",
        "0",
        "--backend",
        backend_name,
        "--log-level",
        "debug",
        "--drain-timeout",
        "60",
    )
    url = f"http://127.0.0.1:{int(server.wait_for(METRICS_LINE).group(1))}"
    port = server.wait_port()
    workers = {int(server.wait_for(r"worker \d \(pid (\d+)\) is listening")[1])}
    workers.add(int(server.wait_for(r"worker \d \(pid (\d+)\) is listening")[1]))
    clients = 40
    for n in range(clients):
        assert echo_once(port, b"%d" % n) == b"%d" % n
    size = sum(len(b"%d" % n) for n in range(clients))
    text = wait_for_metrics(
        f"{url}/metrics",
        lambda text: (
            metric(text, "anyecho_connection_duration_seconds_count") == clients
        ),
    )
    assert metric(text, "anyecho_connections_total") == clients
    assert metric(text, "anyecho_received_bytes_total") == size
    assert metric(text, "anyecho_workers") == 2
    assert http_get_now(f"{url}/healthz") == (200, "ready\n")
    # Both workers served some of them (the kernel spreads them; 40 clients
    # all on one of two workers would be a one in 2**39 chance).
    served_by = {
        int(pid)
        for line in server.stderr
        for pid in re.findall(r"anyecho\[(\d+)\]: 127\.0\.0\.1:\d+: closed", line)
    }
    while len(served_by) < 2:
        match = server.wait_for(r"anyecho\[(\d+)\]: 127\.0\.0\.1:\d+: closed")
        served_by.add(int(match[1]))
    assert served_by == workers
    # A worker killed and replaced: no counter goes back.
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    server.wait_for(rf"\(pid {victim}\) was killed by SIGKILL; starting a new one")
    server.wait_for(r"is listening")
    text = wait_for_metrics(
        f"{url}/metrics",
        lambda text: (
            metric(text, "anyecho_worker_restarts_total") == 1
            and metric(text, "anyecho_workers") == 2
        ),
    )
    assert metric(text, "anyecho_connections_total") == clients
    assert metric(text, "anyecho_received_bytes_total") == size
    # A stop: not ready at once, while a worker drains a connection.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as held:
        held.sendall(b"held")
        assert held.recv(4) == b"held"
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"stopped accepting; 1 connection\(s\) may finish")
        assert http_get_now(f"{url}/healthz") == (503, "draining\n")
        held.shutdown(socket.SHUT_WR)
        assert held.recv(1) == b""
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr


def test_sigterm_makes_healthz_503_while_connections_drain(
    run: type[ServerProcess],
) -> None:
    server = run("serve", "--port", "0", "--metrics", "0", "--drain-timeout", "60")
    url = f"http://127.0.0.1:{int(server.wait_for(METRICS_LINE).group(1))}"
    port = server.wait_port()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as held:
        held.sendall(b"held")
        assert held.recv(4) == b"held"
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for(r"stopped accepting; 1 connection\(s\) may finish")
        assert http_get_now(f"{url}/healthz") == (503, "draining\n")
        assert metric(http_get_now(f"{url}/metrics")[1], "anyecho_draining") == 1
        held.sendall(b" still")
        assert held.recv(6) == b" still"
        held.shutdown(socket.SHUT_WR)
        assert held.recv(1) == b""
    status, stderr = server.finish()
    assert status == 0, stderr


def test_workers_leave_the_metrics_address_to_the_supervisor() -> None:
    argv = worker_argv(["--metrics", "9100", "--metrics=9101", "--udp"], 4242)
    assert argv == ["--udp", "--port", "4242", "--reuse-port"]


def test_snapshots_travel_as_json_and_add_up() -> None:
    stats = ServerStats()
    counts = ByteCounts()
    stats.opened(1, counts)
    counts.received = counts.sent = 10
    stats.closed(1, 0.2)
    stats.turned_away("source-limit")
    stats.drop_datagram("rate-limit")
    stats.set_state("serving")
    snapshot = stats.snapshot()
    assert StatsSnapshot.from_json(snapshot.to_json()) == snapshot
    total = combine([snapshot, snapshot], "draining")
    assert total.total_connections == 4
    assert total.bytes_received == 20
    assert total.refused_by_reason == {"source-limit": 2}
    assert total.datagrams_dropped_by_reason == {"rate-limit": 2}
    assert total.connection_durations.count == 2
    assert dict(total.connection_durations.cumulative())[0.5] == 2
    assert dict(total.connection_durations.cumulative())[0.1] == 0
    assert total.state == "draining"
    with pytest.raises(ValueError, match="malformed"):
        StatsSnapshot.from_json('{"state": "serving"}')
