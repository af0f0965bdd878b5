"""A deliberately faulty echo server, to show that the benchmark catches bad echoes.

It echoes correctly until a connection has carried ``--after`` bytes, then commits
one ``--fault`` on that connection:

``flip``
    inverts the bits of the next byte
``drop``
    leaves out the next byte
``die``
    ends the whole server process at once (exit status 3)
"""

from __future__ import annotations

import asyncio
import os

from ._common import ASYNCIO_LOOPS, HOST, announce, parser, resolve_loop, run_asyncio
from .protocol import EchoProtocol

FAULTS = ("flip", "drop", "die")

#: Exit status of a server ended by the ``die`` fault.
DIE_STATUS = 3


def corrupt(data: bytes, index: int, fault: str) -> bytes:
    """``data`` with the byte at ``index`` flipped or dropped."""
    if fault == "flip":
        return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1 :]
    return data[:index] + data[index + 1 :]


class BrokenEchoProtocol(EchoProtocol):
    """Echo one connection, with one fault after ``after`` bytes."""

    def __init__(self, after: int, fault: str) -> None:
        self.remaining = after
        self.fault = fault

    def data_received(self, data: bytes) -> None:
        if 0 <= self.remaining < len(data):
            if self.fault == "die":
                os._exit(DIE_STATUS)
            data = corrupt(data, self.remaining, self.fault)
            self.remaining = -1
        elif self.remaining >= 0:
            self.remaining -= len(data)
        super().data_received(data)


async def serve(port: int, loop_name: str, after: int, fault: str) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: BrokenEchoProtocol(after, fault), HOST, port
    )
    announce(server.sockets[0].getsockname()[1], f"broken-{fault}", loop_name)
    async with server:
        await server.serve_forever()


def main() -> None:
    """``python -m anyecho.bench.baselines.broken``."""
    cli = parser("broken", "A deliberately faulty echo server.", loops=ASYNCIO_LOOPS)
    cli.add_argument(
        "--after",
        type=int,
        default=100_000,
        help="bytes echoed correctly on each connection first (default: %(default)s)",
    )
    cli.add_argument(
        "--fault", choices=FAULTS, default="flip", help="(default: %(default)s)"
    )
    args = cli.parse_args()
    backend = resolve_loop(cli, args.loop, asyncio_only=True)
    run_asyncio(lambda: serve(args.port, backend.name, args.after, args.fault), backend)


if __name__ == "__main__":
    main()
