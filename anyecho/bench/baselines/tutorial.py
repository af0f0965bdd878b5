"""The echo server of the asyncio tutorial: streams, ``read``, ``write``, ``drain``.

It reads up to 64 KiB at a time (the stream reader's default buffer limit), writes
each chunk back and waits for the write buffer to drain; at the client's end of
stream it closes the connection.
"""

from __future__ import annotations

import asyncio

from ._common import (
    ASYNCIO_LOOPS,
    HOST,
    announce,
    parser,
    resolve_loop,
    run_asyncio,
    tls_context,
)

#: Bytes asked for per ``reader.read()``.
READ_SIZE = 64 * 1024


async def handle_client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Echo one connection until the client ends its side."""
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def serve(
    port: int, loop_name: str, unix: str | None = None, tls_cert: str | None = None
) -> None:
    """Serve until cancelled (on ``unix`` too, if given; TLS with ``tls_cert``)."""
    if unix is not None:
        await asyncio.start_unix_server(handle_client, unix)
    tls = tls_context(tls_cert)
    server = await asyncio.start_server(handle_client, HOST, port, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    announce(port, "tutorial", loop_name, tls=tls is not None)
    async with server:
        await server.serve_forever()


def main() -> None:
    """``python -m anyecho.bench.baselines.tutorial``."""
    description = "The asyncio tutorial's echo server (streams, read, write, drain)."
    cli = parser("tutorial", description, loops=ASYNCIO_LOOPS, unix=True)
    args = cli.parse_args()
    backend = resolve_loop(cli, args.loop, asyncio_only=True)
    run_asyncio(
        lambda: serve(args.port, backend.name, args.unix, args.tls_cert), backend
    )


if __name__ == "__main__":
    main()
