"""The ``anyecho`` command line.

Every user error (bad option, missing backend package, address in use, host that
does not resolve) ends with one line on stderr and a non-zero exit status; a stop
by SIGINT, SIGTERM or SIGHUP is graceful and exits 0, whenever the signal comes:
while the command starts, while it serves, or while it exits.

This module imports only the standard library when it loads; the rest comes once
:func:`main` has installed the signal handlers (see ``_signals``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from ._signals import stop_requests

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    from ._backends import Backend
    from ._config import ServerConfig
    from ._server import EchoServer

__all__ = ["build_parser", "main"]

logger = logging.getLogger("anyecho")

#: Exit status for errors in the command line itself (as argparse uses).
EXIT_USAGE = 2
#: Exit status for errors while running (address in use, ...).
EXIT_FAILURE = 1
#: Exit status of a command other than ``serve`` stopped by a signal as it began
#: (as a shell reports SIGINT).
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def port_number(text: str) -> int:
    """Parse a TCP/UDP port number (0 picks a free port)."""
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: expected an integer from 0 to 65535"
        )
    return port


_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def byte_count(text: str) -> int:
    """Parse a positive byte count with an optional k/M/G (binary) suffix."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    value = int(match.group(1)) * _UNITS[match.group(2).lower()] if match else 0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: expected a positive number of bytes "
            "(suffixes k, M, G)"
        )
    return value


def positive_float(text: str) -> float:
    """Parse a number of seconds (or a rate) that must be > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a positive number"
        )
    return value


def count_or_zero(text: str) -> int:
    """Parse a count that may be 0 (meaning "none" or "no limit")."""
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected an integer >= 0"
        )
    return value


def count_or_auto(text: str) -> int | str:
    """Parse a count that may be 0 (no limit) or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return count_or_zero(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected 'auto' or an integer >= 0"
        ) from None


def file_mode(text: str) -> int:
    """Parse octal permissions such as ``600`` or ``0o660``."""
    try:
        mode = int(text.removeprefix("0o"), 8)
    except ValueError:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(
            f"invalid mode {text!r}: expected octal permissions such as 600"
        )
    return mode


def port_set(text: str) -> frozenset[int]:
    """Parse a port list such as ``0-1023,1900``."""
    from ._udp import parse_port_set

    try:
        return parse_port_set(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def non_negative_float(text: str) -> float:
    """Parse a number of seconds that may be 0."""
    return 0.0 if text.strip() in {"0", "0.0"} else positive_float(text)


def backend_name(text: str) -> str:
    """Accept a backend name; availability is checked once the options are parsed."""
    from ._backends import BACKEND_NAMES

    if text in BACKEND_NAMES or text.startswith("asyncio:"):
        return text
    choices = ", ".join(BACKEND_NAMES)
    raise argparse.ArgumentTypeError(
        f"unknown backend {text!r} (choose from {choices}, or asyncio:MODULE:FACTORY)"
    )


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, shared by the subcommands."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="log messages at this level and above (default: %(default)s)",
    )
    group.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="one line per message, as plain text or a JSON object "
        "(default: %(default)s)",
    )


def host_name(text: str) -> str:
    """A host to listen on: a name or an address, or ``*`` for every interface.

    An empty one (say, an unset ``$HOST``) is an error rather than a synonym for
    ``*``: listening everywhere must be asked for.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"invalid host {text!r}: expected a host name or address, "
            "or '*' for every interface"
        )
    return text


def _add_serve_parser(subparsers: Any) -> None:
    from ._config import DEFAULT_PORT
    from ._echo import RECEIVE_SIZE
    from .faults import add_fault_arguments

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
        "(IPv4 and IPv6). Default: 127.0.0.1",
    )
    where.add_argument(
        "--port",
        type=port_number,
        default=None,
        help=f"TCP (and UDP) port; 0 picks a free one (default: {DEFAULT_PORT}; "
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
        "--unix-mode",
        type=file_mode,
        default=0o600,
        metavar="MODE",
        help="permissions of the Unix socket file, in octal (default: 600)",
    )
    where.add_argument(
        "--udp",
        action="store_true",
        help="also serve datagram echo on the same host(s) and port; off by "
        "default, as UDP echo can be abused for reflection",
    )
    where.add_argument(
        "--reuse-port",
        action="store_true",
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
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time a client has to complete the handshake (default: %(default)s)",
    )

    limits = parser.add_argument_group("limits and timeouts")
    limits.add_argument(
        "--max-connections",
        type=count_or_zero,
        default=1000,
        metavar="N",
        help="connections served at once; at the limit new clients wait in the "
        "listen queue; 0 for no limit (default: %(default)s)",
    )
    limits.add_argument(
        "--max-connections-per-source",
        type=count_or_auto,
        default="auto",
        metavar="N",
        help="connections served at once from one IP address; past it a client "
        "waits, and past twice it is reset; 'auto' is a tenth of "
        "--max-connections, at least 10; 0 for no limit (default: %(default)s)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=non_negative_float,
        default=300.0,
        metavar="SECONDS",
        help="close a connection that moved no byte either way for this long, "
        "including one stuck sending to a client that does not read; 0 for never "
        "(default: %(default)s)",
    )
    limits.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="on stop, how long open connections may finish (default: %(default)s)",
    )
    limits.add_argument(
        "--udp-blocked-ports",
        type=port_set,
        default=None,
        metavar="LIST",
        help="source ports never answered over UDP, e.g. 0-1023,1900,5353 "
        "(default: 0-1023 and known amplifiers: 1900 3283 3702 5353 5683 11211)",
    )
    limits.add_argument(
        "--udp-rate",
        type=positive_float,
        default=100.0,
        metavar="PER_SECOND",
        help="datagrams answered per second per source address (default: "
        "%(default)s, with an equal burst)",
    )
    limits.add_argument(
        "--udp-byte-rate",
        type=byte_count,
        default=256 * 1024,
        metavar="BYTES",
        help="bytes answered per second per source address (default: 256k, with "
        "a 128k burst)",
    )
    limits.add_argument(
        "--receive-size",
        type=byte_count,
        default=RECEIVE_SIZE,
        metavar="BYTES",
        help="most bytes read per receive, e.g. 65536 or 256k (default: 1M)",
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
        type=count_or_zero,
        default=0,
        metavar="N",
        help="run N server processes sharing the port (SO_REUSEPORT, Linux) "
        "under one supervisor that forwards signals and replaces a worker that "
        "dies; 0 for a single process (default); at most 8 per CPU (64 on "
        "machines with fewer than 8 CPUs)",
    )
    # Set by the supervisor for its workers: the slot, the pipe to report
    # listening on, and the pipe whose end means that the supervisor died.
    run.add_argument("--worker-id", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--supervisor-fd", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument(
        "--stats-interval",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="log a line of counters this often (a summary is always logged on exit)",
    )
    add_fault_arguments(parser)
    add_logging_arguments(parser)
    parser.set_defaults(command=_serve_command)


def build_parser() -> argparse.ArgumentParser:
    """The full ``anyecho`` argument parser (also the source of the CLI docs)."""
    parser = _Parser(
        prog="anyecho",
        description="An RFC 862 echo server for asyncio, uvloop and Trio.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    subparsers = parser.add_subparsers(
        title="commands", metavar="COMMAND", parser_class=_Parser
    )
    _add_serve_parser(subparsers)
    for add in _extra_commands():
        add(subparsers)
    return parser


def _extra_commands() -> list[Callable[[Any], None]]:
    """Subcommands that live in their own subpackage (imported without extras)."""
    try:
        from .bench.cli import add_parser as add_bench
    except ImportError:  # pragma: no cover - the subpackage ships with anyecho
        return []
    return [add_bench]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    """Send the ``anyecho`` logger to stderr, one line per message."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter()
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s[%(process)d]: "
            "%(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


def fail(message: str, status: int = EXIT_FAILURE) -> int:
    """Print ``anyecho: error: MESSAGE`` on stderr and return ``status``."""
    sys.stderr.write(f"anyecho: error: {message}\n")
    return status


def leaf_exception(exc: BaseException) -> BaseException:
    """The single exception inside (nested) one-member exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


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


async def _report_listening(server: EchoServer, fd: int) -> None:
    """Tell the supervisor, through its pipe, that this worker listens."""
    try:
        await server.wait_listening()
    except RuntimeError:  # failed to start: serve() raises the cause
        return
    with contextlib.suppress(OSError):  # if the supervisor is gone, its pipe stops us
        os.write(fd, b"L")


async def _log_stats(server: EchoServer, interval: float) -> None:
    import anyio

    while True:
        await anyio.sleep(interval)
        logger.info("stats: %s", server.stats.summary())


async def run_server(
    server: EchoServer,
    stats_interval: float | None = None,
    ready_fd: int | None = None,
) -> None:
    """Run ``server`` until a stop request (the body of ``anyecho serve``).

    Once the server has stopped, stop signals are ignored through the process's
    exit: the stop is done, and a late signal must not change the exit status.
    """
    import anyio

    stop_requests.install()
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_requests, server)
        if ready_fd is not None:
            tg.start_soon(_report_listening, server, ready_fd)
        if stats_interval:
            tg.start_soon(_log_stats, server, stats_interval)
        try:
            await server.serve()
        finally:
            stop_requests.ignore()
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


def _hosts(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return ("127.0.0.1",)
    if "*" in values:
        return None
    return tuple(values)


def _config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server settings the options describe (``ValueError`` if inconsistent)."""
    from ._config import DEFAULT_PORT, RateLimit, ServerConfig
    from ._tls import tls_server_context
    from .faults import faults_from_args

    tcp = bool(args.host) or args.port is not None or not args.unix
    if args.udp and not tcp:
        raise ValueError("--udp needs TCP's --host/--port (it shares the TCP port)")
    if args.tls_key and not args.tls_cert:
        raise ValueError("--tls-key needs --tls-cert")
    if args.tls_client_ca and not args.tls_cert:
        raise ValueError("--tls-client-ca needs --tls-cert")
    faults = faults_from_args(args)
    options: dict[str, Any] = {}
    if args.udp_blocked_ports is not None:
        options["udp_blocked_ports"] = args.udp_blocked_ports
    return ServerConfig(
        host=_hosts(args.host),
        port=(DEFAULT_PORT if args.port is None else args.port) if tcp else None,
        unix=tuple(args.unix),
        unix_mode=args.unix_mode,
        udp=args.udp,
        reuse_port=args.reuse_port,
        ssl_context=(
            tls_server_context(
                args.tls_cert, args.tls_key, client_ca=args.tls_client_ca
            )
            if args.tls_cert
            else None
        ),
        tls_handshake_timeout=args.tls_handshake_timeout,
        max_connections=args.max_connections or None,
        max_connections_per_source=args.max_connections_per_source or None,
        idle_timeout=args.idle_timeout or None,
        drain_timeout=args.drain_timeout,
        receive_size=args.receive_size,
        udp_rate=RateLimit(args.udp_rate, args.udp_rate),
        udp_byte_rate=RateLimit(args.udp_byte_rate, max(args.udp_byte_rate / 2, 65536)),
        wrap_stream=faults.stream_wrapper() if faults else None,
        **options,
    )


def _serve_command(args: argparse.Namespace) -> int:
    from ._backends import BackendUnavailableError, resolve_backend

    if args.supervisor_fd is not None:
        _watch_supervisor(args.supervisor_fd)
    try:
        backend = resolve_backend(args.backend)
        config = _config_from_args(args)
        if args.workers:
            _check_workers(config, args.workers)
    except (BackendUnavailableError, ValueError) as exc:
        return fail(str(exc), EXIT_USAGE)
    configure_logging(args.log_level, args.log_format)
    if stop_requests.reasons:
        logger.info("%s: stopped before serving", stop_requests.reasons[0])
        return 0
    if args.workers:
        return _supervise(args, config)
    from ._server import EchoServer
    from .faults import faults_from_args

    faults = faults_from_args(args)
    if faults:
        logger.info("injecting faults: %s", faults.describe())
    server = EchoServer(config)
    return run_until_stopped(
        backend, run_server, server, args.stats_interval, args.ready_fd
    )


def _check_workers(config: ServerConfig, count: int) -> None:
    from ._workers import check_reuse_port, max_workers

    check_reuse_port()
    if count > max_workers():
        raise ValueError(
            f"--workers {count}: at most {max_workers()} on this machine "
            f"(8 per CPU, at least 64)"
        )
    if config.unix:
        raise ValueError("--workers cannot share a Unix socket: drop --unix")


def _supervise(args: argparse.Namespace, config: ServerConfig) -> int:
    """Start ``args.workers`` copies of this command on one shared port."""
    from ._workers import reserve_port, supervise

    try:
        port, held = reserve_port(config.hosts, config.port or 0)
    except OSError as exc:
        return fail(f"cannot reserve port {config.port}: {exc.strerror or exc}")
    argv = _worker_argv(sys.argv[2:] if args.argv is None else args.argv, port)
    try:
        return supervise(argv, args.workers)
    finally:
        for sock in held:
            sock.close()


def _worker_argv(argv: Sequence[str], port: int) -> list[str]:
    """The serve options for one worker: these, less --workers, on ``port``."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in {"--workers", "--port"}:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return [*kept, "--port", str(port), "--reuse-port"]


def run_until_stopped(backend: Backend, func: Callable[..., Any], *args: Any) -> int:
    """Run ``func(*args)`` on ``backend``; turn failures into one-line errors."""
    from ._backends import BackendUnavailableError

    try:
        backend.run(func, *args)
    except KeyboardInterrupt:  # raised by a SIGINT handler other than ours
        return 0
    except BaseException as exc:
        leaf = leaf_exception(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 0
        if isinstance(leaf, OSError | ValueError | BackendUnavailableError):
            return fail(str(leaf))
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anyecho`` command; returns the exit status.

    With ``argv`` left out it is the program itself: the stop signals are
    handled from its first line, and ignored once it returns, through the
    interpreter's exit. Given ``argv`` (a call from Python), it puts the
    previous signal handlers back before it returns.
    """
    program = argv is None
    installed_here = not stop_requests.installed
    stop_requests.install()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = None if argv is None else list(argv)[1:]
        command = getattr(args, "command", None)
        if command is None:
            parser.print_usage(sys.stderr)
            return fail("choose a command (anyecho serve --help)", EXIT_USAGE)
        if command is not _serve_command:
            # Other commands (bench) take Ctrl-C as KeyboardInterrupt, as usual.
            interrupted = bool(stop_requests.reasons)
            stop_requests.restore()
            if interrupted:
                return fail("interrupted", EXIT_INTERRUPTED)
        status: int = command(args)
        return status
    finally:
        if program:
            stop_requests.ignore()
        elif installed_here:
            stop_requests.restore()
