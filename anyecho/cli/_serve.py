"""``anyecho serve``: its options, the settings they make, and the run until stopped.

Each option that is a setting of :class:`~anyecho.ServerConfig` has the setting's
name as its destination and the setting's default as its own (read from the
dataclass, never written twice); its type checks the syntax only, and
:class:`~anyecho.ServerConfig` decides what is valid, its :exc:`ValueError` being
the usage error. A stop by SIGINT, SIGTERM or SIGHUP is graceful and exits 0,
whenever the signal comes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import logging
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._args import (
    HOST_PORT_SYNTAX,
    SIZE_SYNTAX,
    backend_name,
    byte_rate,
    byte_size,
    count,
    count_or_auto,
    descriptor,
    file_mode,
    format_size,
    host_name,
    host_port,
    ip_network,
    port_number,
    port_set,
    positive_count,
    positive_seconds,
    rate,
    seconds,
    zero_is_none,
)
from .._signals import stop_requests
from ..faults import add_fault_arguments, faults_from_args
from ._exit import EXIT_USAGE, CommandError
from ._logging import add_logging_arguments, configure_logging

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from .._backends import Backend
    from .._config import ServerConfig
    from .._server import EchoServer
    from ..faults import Faults

__all__ = [
    "add_parser",
    "config_from_args",
    "leaf_exception",
    "run_server",
    "run_until_stopped",
    "serve_command",
    "setting_defaults",
]

logger = logging.getLogger("anyecho")

#: The settings whose option's value is the setting itself, under its name.
DIRECT_SETTINGS = (
    "backlog",
    "unix_mode",
    "udp",
    "reuse_port",
    "tls_handshake_timeout",
    "max_connections",
    "max_connections_per_source",
    "idle_timeout",
    "drain_timeout",
    "drain_delay",
    "receive_size",
    "udp_blocked_ports",
    "proxy_protocol",
    "proxy_header_timeout",
    "record",
    "record_max_bytes",
    "record_max_connections",
)


def setting_defaults() -> dict[str, Any]:
    """The default of each :class:`~anyecho.ServerConfig` setting, by name."""
    from .._config import ServerConfig

    defaults: dict[str, Any] = {}
    for field in dataclasses.fields(ServerConfig):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _no_limit(value: object) -> object:
    """A default as the command line writes it: ``None`` (no limit) is 0."""
    return 0 if value is None else value


def add_parser(subparsers: Any) -> None:
    """Add the ``serve`` command to ``anyecho``'s subcommands."""
    default = setting_defaults()
    blocked = default["udp_blocked_ports"]
    amplifiers = " ".join(str(port) for port in sorted(blocked) if port > 1023)
    byte_rate_limit = default["udp_byte_rate"]

    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve echo until stopped (Ctrl-C, SIGTERM or SIGHUP)",
        description="Serve RFC 862 echo over TCP, TLS, Unix sockets and UDP. Stops "
        "gracefully on SIGINT, SIGTERM or SIGHUP, and exits 0: new connections are "
        "refused, open ones may finish within --drain-timeout; a second signal "
        "stops at once.",
    )
    where = parser.add_argument_group("where to listen")
    where.add_argument(
        "--host",
        action="append",
        type=host_name,
        metavar="HOST",
        help="interface to listen on; repeat for several, '*' for every interface "
        f"(IPv4 and IPv6). Default: {default['host']}",
    )
    where.add_argument(
        "--port",
        type=port_number,
        default=None,
        help=f"TCP (and UDP) port; 0 picks a free one (default: {default['port']}; "
        "with --unix and no --host or --port, no TCP at all)",
    )
    where.add_argument(
        "--unix",
        action="append",
        default=[],
        metavar="PATH",
        help="also listen on this Unix socket (repeatable); a stale socket file "
        "is replaced, one a live server holds is an error; removed on exit",
    )
    where.add_argument(
        "--fd",
        dest="fds",
        action="append",
        type=descriptor,
        default=[],
        metavar="N",
        help="serve the listening socket open on this file descriptor (TCP, "
        "Unix or UDP), given by a supervisor, instead of binding any; "
        "repeatable. Sockets passed by systemd socket activation (LISTEN_FDS) "
        "are served the same way, without this option",
    )
    where.add_argument(
        "--unix-mode",
        dest="unix_mode",
        type=file_mode,
        default=default["unix_mode"],
        metavar="MODE",
        help=f"permissions of the Unix socket file, in octal (default: "
        f"{default['unix_mode']:o})",
    )
    where.add_argument(
        "--udp",
        action="store_true",
        default=default["udp"],
        help="also serve datagram echo on the same host(s) and port; off by "
        "default, as UDP echo can be abused for reflection",
    )
    where.add_argument(
        "--reuse-port",
        action="store_true",
        default=default["reuse_port"],
        help="bind with SO_REUSEPORT, so that several servers share the port",
    )

    tls = parser.add_argument_group("TLS (every TCP listener speaks TLS)")
    tls.add_argument("--tls-cert", metavar="FILE", help="certificate chain (PEM)")
    tls.add_argument(
        "--tls-key", metavar="FILE", help="private key (PEM), if not in --tls-cert"
    )
    tls.add_argument(
        "--tls-client-ca",
        metavar="FILE",
        help="require client certificates signed by these CAs (PEM)",
    )
    tls.add_argument(
        "--tls-handshake-timeout",
        type=seconds,
        default=default["tls_handshake_timeout"],
        metavar="SECONDS",
        help="time a client has to complete the handshake (default: %(default)s)",
    )

    proxy = parser.add_argument_group(
        "behind a load balancer (PROXY protocol v1 and v2)"
    )
    proxy.add_argument(
        "--proxy-protocol",
        action="store_true",
        default=default["proxy_protocol"],
        help="read the PROXY header a load balancer sends first (HAProxy "
        "send-proxy/send-proxy-v2, Envoy, AWS NLB), so that logs, the "
        "per-source limit and the UDP guard see the real client; only "
        "--trusted-proxy sources (and Unix socket peers) may connect then",
    )
    proxy.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        type=ip_network,
        default=[],
        metavar="CIDR",
        help="a network (or address) of proxies allowed to send the header, "
        "such as 10.0.0.0/8; repeatable; required with --proxy-protocol",
    )
    proxy.add_argument(
        "--proxy-header-timeout",
        type=positive_seconds,
        default=default["proxy_header_timeout"],
        metavar="SECONDS",
        help="time a proxy has to send the whole header (default: %(default)s)",
    )

    limits = parser.add_argument_group(
        "limits and timeouts", f"Sizes and rates: {SIZE_SYNTAX}."
    )
    limits.add_argument(
        "--max-connections",
        type=zero_is_none(count),
        default=default["max_connections"],
        metavar="N",
        help="connections served at once; at the limit new clients wait in the "
        "listen queue; 0 for no limit (default: "
        f"{_no_limit(default['max_connections'])})",
    )
    limits.add_argument(
        "--max-connections-per-source",
        type=zero_is_none(count_or_auto),
        default=default["max_connections_per_source"],
        metavar="N",
        help="connections served at once from one IP address; past it a client "
        "waits (as many as this, from all addresses), and past that is reset; "
        "'auto' is a tenth of "
        "--max-connections, at least 10; 0 for no limit (default: "
        f"{_no_limit(default['max_connections_per_source'])})",
    )
    limits.add_argument(
        "--idle-timeout",
        type=zero_is_none(seconds),
        default=default["idle_timeout"],
        metavar="SECONDS",
        help="close a connection that moved no byte either way for this long, "
        "including one stuck sending to a client that does not read; 0 for never "
        f"(default: {_no_limit(default['idle_timeout'])})",
    )
    limits.add_argument(
        "--drain-timeout",
        type=seconds,
        default=default["drain_timeout"],
        metavar="SECONDS",
        help="on stop, how long open connections may finish; 0 closes them at "
        "once (default: %(default)s)",
    )
    limits.add_argument(
        "--drain-delay",
        type=seconds,
        default=default["drain_delay"],
        metavar="SECONDS",
        help="on stop, report not ready (/healthz 503) at once but go on accepting "
        "for this long before the listeners close, so that a load balancer's "
        "health check takes the server out first; the drain follows "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--udp-blocked-ports",
        type=port_set,
        default=blocked,
        metavar="LIST",
        help="source ports never answered over UDP, e.g. 0-1023,1900,5353 "
        f"(default: 0-1023 and known amplifiers: {amplifiers})",
    )
    limits.add_argument(
        "--udp-rate",
        type=rate,
        default=default["udp_rate"].rate,
        metavar="PER_SECOND",
        help="datagrams answered per second per source address (default: "
        "%(default)s, with an equal burst)",
    )
    limits.add_argument(
        "--udp-byte-rate",
        type=byte_rate,
        default=byte_rate_limit.rate,
        metavar="BYTES_PER_S",
        help="bytes answered per second per source address, with a burst of half "
        "as many, at least 64 KiB (default: "
        f"{format_size(int(byte_rate_limit.rate))})",
    )
    limits.add_argument(
        "--backlog",
        type=positive_count,
        default=default["backlog"],
        metavar="N",
        help="the listen queue's length: connections the kernel completes "
        "before the server accepts them (default: %(default)s)",
    )
    limits.add_argument(
        "--receive-size",
        type=byte_size,
        default=default["receive_size"],
        metavar="BYTES",
        help="most bytes read per receive (default: "
        f"{format_size(default['receive_size'])})",
    )

    observe = parser.add_argument_group("metrics and health")
    observe.add_argument(
        "--metrics",
        type=host_port,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics and a health "
        "check at /healthz (200 while accepting, 503 while starting or "
        f"draining); {HOST_PORT_SYNTAX}; a port alone is on loopback. With "
        "--workers, one endpoint for them all. Off by default; needs the "
        "'metrics' extra",
    )

    run = parser.add_argument_group("running")
    run.add_argument(
        "--backend",
        type=backend_name,
        default="auto",
        metavar="{auto,asyncio,uvloop,trio}",
        help="event loop to run on; 'auto' picks uvloop when installed, else "
        "asyncio; asyncio:MODULE:FACTORY runs any other asyncio loop "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--workers",
        type=count,
        default=0,
        metavar="N",
        help="run N server processes sharing the port (SO_REUSEPORT, Linux) "
        "under one supervisor that forwards signals and replaces a worker that "
        "dies; 0 for a single process (default); at most 8 per CPU (64 on "
        "machines with fewer than 8 CPUs)",
    )
    # Set by the supervisor for its workers: the pipe to report listening on,
    # and the pipe whose end means that the supervisor died.
    run.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    # Set by the supervisor when it serves metrics: how often a worker sends its
    # counters through the ready pipe.
    run.add_argument(
        "--report-interval", type=positive_seconds, default=None, help=argparse.SUPPRESS
    )
    run.add_argument(
        "--stats-interval",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="log a line of counters this often (a summary is always logged on exit)",
    )
    _add_control_arguments(parser, default)
    add_fault_arguments(parser)
    add_logging_arguments(parser)
    parser.set_defaults(command=serve_command, stop_signals=True)


def _add_control_arguments(
    parser: argparse.ArgumentParser, default: dict[str, Any]
) -> None:
    """The control API's options, and the recordings it serves."""
    control = parser.add_argument_group(
        "control API and recordings",
        "An HTTP+JSON API to change the faults, read the counters, and list, close "
        "or reset connections while the server runs (needs h11: pip install "
        "'anyecho[control]'). It has no authentication: keep it on loopback.",
    )
    control.add_argument(
        "--control",
        type=host_port,
        default=None,
        metavar="[HOST:]PORT",
        help=f"serve the control API on this address: {HOST_PORT_SYNTAX}; a port "
        "alone is on loopback (off by default; not with --workers); needs the "
        "'control' extra",
    )
    control.add_argument(
        "--record",
        action="store_true",
        default=default["record"],
        help="keep what each client sends, for GET /connections/ID/recording",
    )
    control.add_argument(
        "--record-max-bytes",
        type=zero_is_none(byte_size),
        default=default["record_max_bytes"],
        metavar="BYTES",
        help="bytes kept per recording; 0 for no limit (default: "
        f"{format_size(default['record_max_bytes'])})",
    )
    control.add_argument(
        "--record-max-connections",
        type=zero_is_none(count),
        default=default["record_max_connections"],
        metavar="N",
        help="recordings kept, the oldest dropped first; 0 for no limit "
        f"(default: {default['record_max_connections']})",
    )


def _given_sockets(args: argparse.Namespace) -> tuple[int, ...]:
    """The descriptors of the sockets to serve: ``--fd``, and those systemd
    passed (read once; ``args.activated`` keeps their names for the log)."""
    from .._sockets import inherit, listen_fds

    args.activated = activated = listen_fds()
    fds = (*args.fds, *(fd for fd, _ in activated))
    if not fds:
        return fds
    given = "--fd" if args.fds else "socket activation (LISTEN_FDS)"
    if args.host or args.port is not None or args.unix or args.udp:
        raise ValueError(
            f"{given}: the server serves the sockets it is given and binds "
            "none; drop --host, --port, --unix and --udp"
        )
    for fd in fds:
        try:
            inherit(fd)[0].close()
        except OSError as exc:
            raise ValueError(str(exc)) from exc
    return fds


def _check_proxy_args(args: argparse.Namespace) -> None:
    if args.proxy_protocol and not args.trusted_proxies:
        raise ValueError(
            "--proxy-protocol needs --trusted-proxy CIDR: the addresses of the "
            "proxies allowed to send the header"
        )
    if args.trusted_proxies and not args.proxy_protocol:
        raise ValueError("--trusted-proxy needs --proxy-protocol")


def config_from_args(args: argparse.Namespace, faults: Faults | None) -> ServerConfig:
    """The server settings the options describe (``ValueError`` if invalid)."""
    from .._config import RateLimit, ServerConfig
    from .._tls import tls_server_context

    fds = _given_sockets(args)
    tcp = bool(args.host) or args.port is not None or not args.unix
    if args.udp and not tcp:
        raise ValueError("--udp needs TCP's --host/--port (it shares the TCP port)")
    if args.tls_key and not args.tls_cert:
        raise ValueError("--tls-key needs --tls-cert")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert")
    if faults is not None and faults.udp is not None and not (args.udp or fds):
        raise ValueError("the --udp-* impairments need --udp")
    _check_proxy_args(args)
    settings: dict[str, Any] = {name: getattr(args, name) for name in DIRECT_SETTINGS}
    if args.host:
        settings["host"] = "*" if "*" in args.host else tuple(args.host)
    if args.port is not None or not tcp:
        settings["port"] = args.port
    if args.tls_cert:
        settings["ssl_context"] = tls_server_context(
            args.tls_cert, args.tls_key, client_ca=args.tls_client_ca
        )
    byte_rate = args.udp_byte_rate
    return ServerConfig(
        **settings,
        unix=tuple(args.unix),
        fds=fds,
        trusted_proxies=tuple(args.trusted_proxies),
        udp_rate=RateLimit(args.udp_rate, args.udp_rate),
        udp_byte_rate=RateLimit(byte_rate, max(byte_rate / 2, 65536)),
        faults=faults,
    )


def serve_command(args: argparse.Namespace) -> int:
    """``anyecho serve``: serve until stopped; the exit status."""
    from .._backends import BackendUnavailableError, resolve_backend

    if args.supervisor_fd is not None:
        _watch_supervisor(args.supervisor_fd)
    if args.workers and args.supervisor_fd is not None:
        raise CommandError("a worker cannot start workers of its own", EXIT_USAGE)
    try:
        backend = resolve_backend(args.backend)
        faults = faults_from_args(args)
        config = config_from_args(args, faults)
        if args.workers:
            from ._workers import check_workers

            check_workers(config, args.workers)
        if args.metrics is not None:
            check_metrics_extra()
        if args.control is not None:
            _check_control(args)
    except (BackendUnavailableError, ValueError) as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    configure_logging(args.log_level, args.log_format)
    for fd, name in args.activated:
        logger.info("socket activation: serving fd %d (%s)", fd, name)
    if stop_requests.reasons:
        logger.info("%s: stopped before serving", stop_requests.reasons[0])
        return 0
    if args.workers:
        from ._workers import supervise_serve

        argv = sys.argv[2:] if args.argv is None else args.argv
        return supervise_serve(argv, config, args.workers, backend, args.metrics)
    from .._server import EchoServer

    server = EchoServer(config)
    return run_until_stopped(
        backend,
        functools.partial(
            run_server,
            server,
            stats_interval=args.stats_interval,
            ready_fd=args.ready_fd,
            metrics=args.metrics,
            report_interval=args.report_interval,
            control=args.control,
        ),
    )


def check_metrics_extra() -> None:
    """Raise :exc:`ValueError` unless the ``metrics`` extra is installed."""
    import importlib

    for module in ("prometheus_client", "h11"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ValueError(
                f"--metrics needs the {module!r} package: "
                "pip install 'anyecho[metrics]'"
            ) from exc


def _check_control(args: argparse.Namespace) -> None:
    """Raise :exc:`ValueError` unless ``--control`` can be served."""
    if args.workers:
        raise ValueError(
            "--control cannot be used with --workers: each worker has its own "
            "connections and faults; run one server per port instead"
        )
    try:
        import h11  # noqa: F401
    except ImportError as exc:
        raise ValueError("--control needs h11: pip install 'anyecho[control]'") from exc


def leaf_exception(exc: BaseException) -> BaseException:
    """The single exception inside (nested) one-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def run_until_stopped(backend: Backend, func: Callable[..., Any], *args: Any) -> int:
    """Run ``func(*args)`` on ``backend``; failures become a :exc:`CommandError`."""
    from .._backends import BackendUnavailableError

    try:
        backend.run(func, *args)
    except KeyboardInterrupt:  # raised by a SIGINT handler other than ours
        return 0
    except BaseException as exc:
        leaf = leaf_exception(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 0
        if isinstance(leaf, OSError | ValueError | BackendUnavailableError):
            raise CommandError(str(leaf)) from leaf
        raise
    return 0


async def _stop_on_requests(server: EchoServer) -> None:
    """Stop ``server`` on each stop request: gracefully first, then at once.

    Requests recorded before this task ran (a signal during start-up) count too.
    """
    import anyio

    wakeup = stop_requests.wakeup_fd()
    handled = 0
    while True:
        while handled < len(stop_requests.reasons):
            reason = stop_requests.reasons[handled]
            handled += 1
            if handled == 1:
                logger.info("%s: stopping gracefully (send again to stop now)", reason)
                server.stop()
            else:
                logger.info("%s: stopping now", reason)
                server.stop(0)
        await anyio.wait_readable(wakeup)
        stop_requests.drain()


async def _report_to_supervisor(
    server: EchoServer, fd: int, interval: float | None
) -> None:
    """Tell the supervisor, through its pipe, that this worker listens; then
    send it the counters every ``interval`` seconds (for its metrics).

    One line per message: ``L`` (listening), ``S`` and a snapshot as JSON. The
    pipe does not block: a report the supervisor has no room for yet is
    dropped (the next one carries every count), and never holds up the server.
    """
    import anyio

    try:
        await server.wait_listening()
    except RuntimeError:  # failed to start: serve() raises the cause
        return
    os.set_blocking(fd, False)
    with contextlib.suppress(OSError):  # if the supervisor is gone, its pipe stops us
        os.write(fd, b"L\n")
    while interval is not None:
        await anyio.sleep(interval)
        _send_report(server, fd)


def _send_report(server: EchoServer, fd: int) -> None:
    message = b"S" + server.stats.to_json().encode() + b"\n"
    if len(message) <= select.PIPE_BUF:  # written whole or not at all
        with contextlib.suppress(OSError):
            os.write(fd, message)


async def _log_stats(server: EchoServer, interval: float) -> None:
    import anyio

    while True:
        await anyio.sleep(interval)
        logger.info("stats: %s", server.stats.summary())


async def _serve_control(server: EchoServer, host: str, port: int) -> None:
    """The control API, once the server listens (logged with its address)."""
    import anyio

    from ..control import serve_control

    try:
        await server.wait_listening()
    except RuntimeError:  # failed to start: serve() raises the cause
        return
    async with anyio.create_task_group() as tg:
        addresses = await tg.start(serve_control, server, host, port)
        urls = ", ".join(
            str(address).replace("tcp://", "http://", 1) for address in addresses
        )
        logger.info("control API on %s", urls)


async def run_server(
    server: EchoServer,
    *,
    stats_interval: float | None = None,
    ready_fd: int | None = None,
    metrics: tuple[str, int] | None = None,
    report_interval: float | None = None,
    control: tuple[str, int] | None = None,
) -> None:
    """Run ``server`` until a stop request (the body of ``anyecho serve``).

    The metrics endpoint, if asked for, listens first (``/healthz`` says
    ``starting`` until the server listens) and closes once the server has
    stopped. Once the server has stopped, stop signals are ignored through the
    process's exit: the stop is done, and a late signal must not change the
    exit status.
    """
    import anyio

    stop_requests.install()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_requests, server)
        if metrics is not None:
            from ..metrics import serve_metrics

            host, port = metrics
            await tg.start(
                functools.partial(serve_metrics, server, host=host, port=port)
            )
        if ready_fd is not None:
            tg.start_soon(_report_to_supervisor, server, ready_fd, report_interval)
        if stats_interval:
            tg.start_soon(_log_stats, server, stats_interval)
        if control is not None:
            tg.start_soon(_serve_control, server, *control)
        try:
            await server.serve()
        finally:
            stop_requests.ignore()
        if ready_fd is not None and report_interval is not None:
            os.set_blocking(ready_fd, True)  # the last counts must get through
            _send_report(server, ready_fd)
        tg.cancel_scope.cancel()


def _watch_supervisor(fd: int) -> None:
    """Request a stop once the supervisor's end of pipe ``fd`` closes.

    The supervisor holds the only write end, so end-of-file means that it has
    exited, however it died (``kill -9`` included): its workers then stop rather
    than serve on as orphans.
    """

    def watch() -> None:
        try:
            while os.read(fd, 1):
                pass
        except OSError:
            pass
        stop_requests.request("supervisor exited")

    threading.Thread(target=watch, name="anyecho-supervisor", daemon=True).start()
