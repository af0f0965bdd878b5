"""An echo server written as a bare :class:`asyncio.Protocol`: the fastest asyncio way.

``data_received`` writes each chunk straight back. Flow control is end to end: while
the transport's write buffer is over its high-water mark, reading pauses. At the
client's end of stream the transport sends what is buffered and closes.
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


class EchoProtocol(asyncio.Protocol):
    """Echo every chunk received on one connection."""

    transport: asyncio.Transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


async def serve(
    port: int, loop_name: str, unix: str | None = None, tls_cert: str | None = None
) -> None:
    """Serve until cancelled (on ``unix`` too, if given; TLS with ``tls_cert``)."""
    await serve_protocol(
        EchoProtocol, "protocol", port, loop_name, unix=unix, tls_cert=tls_cert
    )


def main() -> None:
    """``python -m anyecho.bench.baselines.protocol``."""
    description = "An echo server written as a bare asyncio.Protocol."
    cli = parser("protocol", description, loops=ASYNCIO_LOOPS, unix=True)
    args = cli.parse_args()
    backend = resolve_loop(cli, args.loop, asyncio_only=True)
    run_asyncio(
        lambda: serve(args.port, backend.name, args.unix, args.tls_cert), backend
    )


if __name__ == "__main__":
    main()
