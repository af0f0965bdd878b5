"""The idiomatic AnyIO echo server: ``listener.serve(handler)`` and a stream loop.

``async for chunk in stream`` receives up to 64 KiB at a time (AnyIO's default)
and each chunk is sent back; at the client's end of stream the handler leaves
``async with stream``, which closes the connection.
"""

from __future__ import annotations

import contextlib

import anyio
from anyio.abc import SocketAttribute, SocketStream

from ._common import HOST, announce, parser, resolve_loop


async def handle(stream: SocketStream) -> None:
    """Echo one connection until the client ends its side."""
    async with stream:
        try:
            async for chunk in stream:
                await stream.send(chunk)
        except anyio.BrokenResourceError:
            pass


async def serve(port: int, loop_name: str) -> None:
    """Serve until cancelled."""
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=port)
    announce(listener.extra(SocketAttribute.local_port), "anyio", loop_name)
    await listener.serve(handle)


def main() -> None:
    """``python -m anyecho.bench.baselines.anyio_bare``."""
    description = "The idiomatic AnyIO echo server."
    loops = "asyncio, uvloop, trio or asyncio:MODULE:FACTORY"
    cli = parser("anyio_bare", description, loops=loops)
    args = cli.parse_args()
    backend = resolve_loop(cli, args.loop, asyncio_only=False)
    with contextlib.suppress(KeyboardInterrupt):
        backend.run(serve, args.port, backend.name)


if __name__ == "__main__":
    main()
