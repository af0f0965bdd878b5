"""An echo server written as an :class:`asyncio.BufferedProtocol`.

The loop reads straight into one preallocated buffer per connection
(``get_buffer``), and ``buffer_updated`` writes what arrived back. It saves the
loop allocating a bytes object per read, as uvloop's own echo benchmark shows.
Flow control is as in :mod:`.protocol`.
"""

from __future__ import annotations

import asyncio
from typing import cast

from ._common import (
    ASYNCIO_LOOPS,
    parser,
    resolve_loop,
    run_asyncio,
    serve_protocol,
)

#: Bytes read at most at a time, per connection.
BUFFER_SIZE = 256 * 1024


class EchoBufferedProtocol(asyncio.BufferedProtocol):
    """Echo every chunk read into this connection's buffer."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.buffer = bytearray(BUFFER_SIZE)
        self.view = memoryview(self.buffer)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        # write() copies what it cannot send at once, so the buffer is free again.
        self.transport.write(self.view[:nbytes])

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve(
    port: int, loop_name: str, unix: str | None = None, tls_cert: str | None = None
) -> None:
    """Serve until cancelled (on ``unix`` too, if given; TLS with ``tls_cert``)."""
    await serve_protocol(
        EchoBufferedProtocol, "buffered", port, loop_name, unix=unix, tls_cert=tls_cert
    )


def main() -> None:
    """``python -m anyecho.bench.baselines.buffered``."""
    description = "An echo server written as an asyncio.BufferedProtocol."
    cli = parser("buffered", description, loops=ASYNCIO_LOOPS, unix=True)
    args = cli.parse_args()
    backend = resolve_loop(cli, args.loop, asyncio_only=True)
    run_asyncio(
        lambda: serve(args.port, backend.name, args.unix, args.tls_cert), backend
    )


if __name__ == "__main__":
    main()
