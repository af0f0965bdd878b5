"""Prometheus metrics and a health endpoint for an echo server.

:func:`collector` turns a server's counters into Prometheus metric families,
read from a :class:`~anyecho.StatsSnapshot` at scrape time (nothing is counted
twice); :func:`metrics_text` gives the text exposition format at once, and
:func:`serve_metrics` serves ``/metrics`` and ``/healthz`` over HTTP on the
server's own event loop (asyncio, uvloop or Trio), as ``anyecho serve
--metrics`` does:

.. code-block:: python

    server = anyecho.EchoServer(port=0)
    async with anyio.create_task_group() as tg:
        await tg.start(anyecho.metrics.serve_metrics, server)  # 127.0.0.1:9100
        await tg.start(server.serve)

Needs the ``metrics`` extra: ``pip install 'anyecho[metrics]'`` (the official
``prometheus_client``, and ``h11`` for HTTP). :doc:`/metrics` lists every metric.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final, get_args

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from . import _udp, _udpfaults
from ._config import DEFAULT_HOST, EVERY_INTERFACE
from ._errors import ErrorKind
from ._http import HTTPLimits, Request, Response, serve_http
from ._server import EchoServer
from ._sockets import ListenAddress
from ._stats import StatsSnapshot

__all__ = [
    "DEFAULT_METRICS_PORT",
    "HTTPLimits",
    "StatsCollector",
    "collector",
    "metrics_text",
    "registry",
    "serve_metrics",
]

logger = logging.getLogger("anyecho")

#: The port :func:`serve_metrics` listens on unless told otherwise (a common one
#: for exporters; ``anyecho serve --metrics`` always takes a port).
DEFAULT_METRICS_PORT: Final = 9100


#: Counters read from one attribute of a snapshot: (name without ``_total``,
#: help, attribute, unit). A count the snapshot gains (faults injected, say) is
#: exported by one more entry here.
_COUNTERS: Final = (
    (
        "anyecho_connections",
        "Stream connections accepted, served or refused.",
        "total_connections",
        "",
    ),
    (
        "anyecho_received_bytes",
        "Bytes received, over streams and datagrams.",
        "bytes_received",
        "bytes",
    ),
    (
        "anyecho_sent_bytes",
        "Bytes echoed back, over streams and datagrams.",
        "bytes_sent",
        "bytes",
    ),
    ("anyecho_datagrams_echoed", "UDP datagrams echoed.", "datagrams_echoed", ""),
)

#: Counters by one label, read from a mapping of a snapshot: (name, help,
#: label, attribute, the label values always shown, 0 until seen).
_LABELLED: Final = (
    (
        "anyecho_connections_refused",
        "Stream connections accepted and closed at once, without an echo.",
        "reason",
        "refused_by_reason",
        ("source-limit", "reset"),
    ),
    (
        "anyecho_datagrams_dropped",
        "UDP datagrams received and not answered.",
        "reason",
        "datagrams_dropped_by_reason",
        (
            _udp.BLOCKED_PORT,
            _udp.RATE_LIMIT,
            _udp.SEND_BUFFER_FULL,
            _udp.SEND_ERROR,
            _udp.NO_SOURCE_ADDRESS,
            _udp.FAULT,
            _udp.HOLD_FULL,
            _udp.STOPPED,
        ),
    ),
    (
        "anyecho_errors",
        "Errors, by kind.",
        "kind",
        "errors",
        get_args(ErrorKind),
    ),
    (
        "anyecho_faults_injected",
        "Faults injected on stream connections, by kind (none are errors).",
        "kind",
        "faults_injected",
        (),
    ),
    (
        "anyecho_udp_faults_injected",
        "UDP impairments injected, by kind.",
        "kind",
        "udp_faults_injected",
        _udpfaults.KINDS,
    ),
)


def _snapshot_function(
    source: EchoServer | Callable[[], StatsSnapshot],
) -> Callable[[], StatsSnapshot]:
    if isinstance(source, EchoServer):
        server = source
        return lambda: server.stats
    return source


def families(snapshot: StatsSnapshot) -> list[Metric]:
    """The metric families of one snapshot (what a scrape returns)."""
    metrics: list[Metric] = []
    open_now = GaugeMetricFamily(
        "anyecho_connections_open", "Stream connections open now."
    )
    open_now.add_metric([], snapshot.active_connections)
    metrics.append(open_now)
    by_source = GaugeMetricFamily(
        "anyecho_source_connections_open",
        "Stream connections open now, by client address (behind a proxy, the "
        "address its PROXY header named); only addresses with one open.",
        labels=["source"],
    )
    for source, count in sorted(snapshot.open_by_source.items()):
        by_source.add_metric([source], count)
    metrics.append(by_source)
    for name, documentation, attribute, unit in _COUNTERS:
        counter = CounterMetricFamily(name, documentation, unit=unit)
        counter.add_metric([], getattr(snapshot, attribute))
        metrics.append(counter)
    for name, documentation, label, attribute, known in _LABELLED:
        counter = CounterMetricFamily(name, documentation, labels=[label])
        counts = getattr(snapshot, attribute)
        for value in sorted({*known, *counts}):
            counter.add_metric([value], counts.get(value, 0))
        metrics.append(counter)
    tls = CounterMetricFamily(
        "anyecho_tls_handshake_failures",
        "TLS handshakes that failed or timed out (errors_total{kind='tls'}).",
    )
    tls.add_metric([], snapshot.errors.get("tls", 0))
    metrics.append(tls)
    ready = GaugeMetricFamily(
        "anyecho_ready", "1 while accepting new clients (what /healthz reports)."
    )
    ready.add_metric([], int(snapshot.state == "serving"))
    metrics.append(ready)
    draining = GaugeMetricFamily(
        "anyecho_draining",
        "1 from the start of a graceful stop until the server has stopped.",
    )
    draining.add_metric([], int(snapshot.state == "draining"))
    metrics.append(draining)
    histogram = snapshot.connection_durations
    durations = HistogramMetricFamily(
        "anyecho_connection_duration_seconds",
        "How long the closed stream connections lasted.",
        unit="seconds",
    )
    durations.add_metric(
        [],
        [(_bound(bound), n) for bound, n in histogram.cumulative()],
        histogram.sum,
    )
    metrics.append(durations)
    return metrics


def _bound(bound: float) -> str:
    """A bucket's ``le`` label, as Prometheus writes it: ``0.5``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == math.inf else repr(float(bound))


class StatsCollector(Collector):
    """A Prometheus collector of one server's counters, read at each scrape.

    Register it in a registry of your own (``prometheus_client.REGISTRY``, say)
    to export anyecho's metrics beside your program's.

    :param source: the server, or a function returning a
        :class:`~anyecho.StatsSnapshot`
    """

    def __init__(self, source: EchoServer | Callable[[], StatsSnapshot]) -> None:
        self._snapshot = _snapshot_function(source)

    def collect(self) -> Iterable[Metric]:
        return families(self._snapshot())


def collector(server: EchoServer | Callable[[], StatsSnapshot]) -> StatsCollector:
    """A :class:`StatsCollector` of ``server``.

    .. code-block:: python

        prometheus_client.REGISTRY.register(anyecho.metrics.collector(server))
    """
    return StatsCollector(server)


def registry(
    source: EchoServer | Callable[[], StatsSnapshot],
    collectors: Sequence[Collector] = (),
) -> CollectorRegistry:
    """A registry holding ``source``'s collector (and ``collectors``) only."""
    result = CollectorRegistry(auto_describe=False)
    result.register(StatsCollector(source))
    for extra in collectors:
        result.register(extra)
    return result


def metrics_text(server: EchoServer | Callable[[], StatsSnapshot]) -> str:
    """``server``'s metrics in the Prometheus text exposition format, now."""
    return generate_latest(registry(server)).decode()


async def serve_metrics(
    server: EchoServer | Callable[[], StatsSnapshot],
    *,
    host: str | Sequence[str] | None = DEFAULT_HOST,
    port: int = DEFAULT_METRICS_PORT,
    collectors: Sequence[Collector] = (),
    limits: HTTPLimits | None = None,
    task_status: TaskStatus[list[ListenAddress]] = TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` and ``GET /healthz`` over HTTP until cancelled.

    ``/metrics`` is the Prometheus exposition of ``server``'s counters (the text
    format, or OpenMetrics when the scraper asks for it); ``/healthz`` answers
    ``200 ready`` while the server accepts new clients, and ``503`` with its
    state (``starting``, ``draining``, ``stopped``) otherwise. Other paths get
    404, other methods than GET and HEAD 405. Start it before the server, so
    that it says ``starting`` until the server listens, and stop it after.

    :param server: the server, or a function returning a snapshot
    :param host: the interface(s) to listen on: loopback unless told otherwise;
        ``"*"`` or ``None`` for every interface
    :param port: the TCP port (``0`` picks a free one)
    :param collectors: more collectors to export beside the server's
    :param limits: what one peer may make the endpoint hold
    :raises anyecho.ListenError: when the port cannot be bound

    With ``await task_group.start(functools.partial(serve_metrics, server,
    port=0))`` the call returns the addresses once it listens.
    """
    snapshot = _snapshot_function(server)
    metrics_registry = registry(snapshot, collectors)

    async def handle(request: Request) -> Response:
        if request.path not in ("/metrics", "/healthz"):
            return Response(404, b"not found: try /metrics or /healthz\n")
        if request.method not in ("GET", "HEAD"):
            return Response(
                405, b"method not allowed\n", headers=[("Allow", "GET, HEAD")]
            )
        if request.path == "/healthz":
            state = snapshot().state
            status = 200 if state == "serving" else 503
            body = b"ready\n" if status == 200 else f"{state}\n".encode()
            return Response(status, body, headers=[("Cache-Control", "no-store")])
        encoder, content_type = choose_encoder(request.header("accept") or "")
        return Response(200, encoder(metrics_registry), content_type)

    if isinstance(host, str):
        hosts: tuple[str, ...] | None = None if host == EVERY_INTERFACE else (host,)
    else:
        hosts = None if host is None else tuple(host)
    await serve_http(
        handle,
        hosts,
        port,
        limits=limits,
        name="metrics",
        task_status=_Started(task_status),
    )


class _Started(TaskStatus[list[ListenAddress]]):
    """Logs where the endpoint listens, then passes the addresses on."""

    def __init__(self, task_status: TaskStatus[list[ListenAddress]]) -> None:
        self._task_status = task_status

    def started(self, value: list[ListenAddress] | None = None) -> None:
        addresses = value or []
        logger.info(
            "serving metrics on %s", ", ".join(f"{url(a)}/metrics" for a in addresses)
        )
        self._task_status.started(addresses)


def url(address: ListenAddress) -> str:
    """``http://HOST:PORT`` of a TCP address."""
    return str(address).replace("tcp://", "http://", 1)
