"""The ``anyecho`` command line.

Every user error (bad option, missing backend package, address in use, host that
does not resolve) ends with one line on stderr and a non-zero exit status; a stop
by SIGINT or SIGTERM is graceful and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import anyio

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

from . import __version__
from ._backends import BACKEND_NAMES, Backend, BackendUnavailableError, resolve_backend
from ._config import DEFAULT_PORT, ServerConfig
from ._echo import RECEIVE_SIZE
from ._server import EchoServer

__all__ = ["build_parser", "main"]

logger = logging.getLogger("anyecho")

#: Exit status for errors in the command line itself (as argparse uses).
EXIT_USAGE = 2
#: Exit status for errors while running (address in use, ...).
EXIT_FAILURE = 1


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


def non_negative_float(text: str) -> float:
    """Parse a number of seconds that may be 0."""
    return 0.0 if text.strip() in {"0", "0.0"} else positive_float(text)


def backend_name(text: str) -> str:
    """Accept a backend name; availability is checked once the options are parsed."""
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


def _add_serve_parser(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "serve",
        help="serve echo until stopped (Ctrl-C or SIGTERM)",
        description="Serve RFC 862 echo. Stops gracefully on SIGINT or SIGTERM: "
        "new connections are refused, open ones may finish within --drain-timeout; "
        "a second signal stops at once.",
    )
    parser.add_argument(
        "--host",
        action="append",
        metavar="HOST",
        help="interface to listen on; repeat for several, '*' for every interface "
        "(IPv4 and IPv6). Default: 127.0.0.1",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help="TCP port; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--backend",
        type=backend_name,
        default="auto",
        metavar="{auto,asyncio,uvloop,trio}",
        help="event loop to run on; 'auto' picks uvloop when installed, else "
        "asyncio; asyncio:MODULE:FACTORY runs any other asyncio loop "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=5.0,
        metavar="SECONDS",
        help="on stop, how long open connections may finish (default: %(default)s)",
    )
    parser.add_argument(
        "--receive-size",
        type=byte_count,
        default=RECEIVE_SIZE,
        metavar="BYTES",
        help="most bytes read per receive, e.g. 65536 or 256k (default: %(default)s)",
    )
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
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s",
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


async def _stop_on_signals(server: EchoServer) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        first = True
        async for signum in signals:
            name = signal.Signals(signum).name
            if first:
                logger.info("%s: stopping gracefully (send again to stop now)", name)
                server.stop()
                first = False
            else:
                logger.info("%s: stopping now", name)
                server.stop(0)


async def run_server(server: EchoServer) -> None:
    """Run ``server`` until a signal stops it (the body of ``anyecho serve``)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(_stop_on_signals, server)
        await server.serve()
        tg.cancel_scope.cancel()


def _hosts(values: Sequence[str] | None) -> tuple[str, ...] | None:
    if not values:
        return ("127.0.0.1",)
    if any(v in {"*", ""} for v in values):
        return None
    return tuple(values)


def _serve_command(args: argparse.Namespace) -> int:
    try:
        backend = resolve_backend(args.backend)
        config = ServerConfig(
            host=_hosts(args.host),
            port=args.port,
            drain_timeout=args.drain_timeout,
            receive_size=args.receive_size,
        )
    except (BackendUnavailableError, ValueError) as exc:
        return fail(str(exc), EXIT_USAGE)
    configure_logging(args.log_level, args.log_format)
    return run_until_stopped(backend, run_server, EchoServer(config))


def run_until_stopped(backend: Backend, func: Callable[..., Any], *args: Any) -> int:
    """Run ``func(*args)`` on ``backend``; turn failures into one-line errors."""
    try:
        backend.run(func, *args)
    except KeyboardInterrupt:  # a SIGINT before the signal handler was installed
        return 0
    except BaseException as exc:
        leaf = leaf_exception(exc)
        if isinstance(leaf, KeyboardInterrupt):
            return 0
        if isinstance(leaf, OSError | ValueError):
            return fail(str(leaf))
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``anyecho`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = getattr(args, "command", None)
    if command is None:
        parser.print_usage(sys.stderr)
        return fail("choose a command (anyecho serve --help)", EXIT_USAGE)
    status: int = command(args)
    return status
