"""What the baseline servers share: their command line, ready line and loop setup."""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from anyecho import Backend, BackendUnavailableError, resolve_backend

__all__ = [
    "ASYNCIO_LOOPS",
    "HOST",
    "announce",
    "parser",
    "resolve_loop",
    "run_asyncio",
    "serve_protocol",
    "tls_context",
]

#: Baselines listen on loopback only.
HOST = "127.0.0.1"

#: What ``--loop`` accepts in the asyncio baselines.
ASYNCIO_LOOPS = "asyncio, uvloop or asyncio:MODULE:FACTORY"


def parser(
    name: str, description: str, *, loops: str | None, unix: bool = False
) -> argparse.ArgumentParser:
    """A parser with ``--port``, ``--loop`` when ``loops`` names the choices, and
    ``--unix`` for a server that can also listen on a Unix socket."""
    result = argparse.ArgumentParser(
        prog=f"python -m anyecho.bench.baselines.{name}", description=description
    )
    result.add_argument(
        "--port", type=int, default=0, help="TCP port; 0 picks a free one (default)"
    )
    if unix:
        result.add_argument(
            "--unix",
            metavar="PATH",
            help="also listen on this Unix socket (the TCP port is still announced)",
        )
        result.add_argument(
            "--tls-cert",
            metavar="FILE",
            help="speak TLS on the TCP port, with this key and certificate chain (PEM)",
        )
    if loops is not None:
        result.add_argument(
            "--loop",
            default="asyncio",
            metavar="LOOP",
            help=f"event loop: {loops} (default: %(default)s)",
        )
    return result


def resolve_loop(
    parser: argparse.ArgumentParser, name: str, *, asyncio_only: bool
) -> Backend:
    """The backend for ``--loop``; exits through ``parser`` if it cannot run."""
    try:
        backend = resolve_backend(name)
    except BackendUnavailableError as exc:
        parser.error(str(exc))
    if asyncio_only and backend.anyio_backend != "asyncio":
        parser.error(f"--loop {name}: this baseline needs an asyncio loop")
    return backend


def tls_context(cert: str | None) -> ssl.SSLContext | None:
    """The server's TLS context for ``--tls-cert``, or ``None`` without one."""
    if cert is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert)
    return context


def announce(port: int, baseline: str, loop: str, *, tls: bool = False) -> None:
    """Print the ready line that tells the benchmark where the server listens."""
    scheme = "tls" if tls else "tcp"
    line = (
        f"serving echo on {scheme}://{HOST}:{port} (baseline {baseline}, loop {loop})"
    )
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def serve_protocol(
    factory: Callable[[], asyncio.BaseProtocol],
    baseline: str,
    port: int,
    loop_name: str,
    *,
    unix: str | None = None,
    tls_cert: str | None = None,
) -> None:
    """Serve asyncio ``factory``'s protocol until cancelled (on ``unix`` too, if
    given; TLS with ``tls_cert``), and announce it as ``baseline``."""
    loop = asyncio.get_running_loop()
    if unix is not None:
        await loop.create_unix_server(factory, unix)
    tls = tls_context(tls_cert)
    server = await loop.create_server(factory, HOST, port, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    announce(port, baseline, loop_name, tls=tls is not None)
    async with server:
        await server.serve_forever()


def run_asyncio(
    main: Callable[[], Coroutine[Any, Any, None]], backend: Backend
) -> None:
    """Run ``main()`` on a new loop of ``backend`` until it returns or Ctrl-C."""
    factory: Callable[[], asyncio.AbstractEventLoop] = backend.options.get(
        "loop_factory", asyncio.new_event_loop
    )
    loop = factory()
    try:
        loop.run_until_complete(main())
    except KeyboardInterrupt:
        pass
    finally:
        loop.close()
