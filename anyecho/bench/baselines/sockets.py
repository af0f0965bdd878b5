"""An echo server on the loop's socket calls: ``loop.sock_recv`` and
``loop.sock_sendall`` on non-blocking sockets, one task per connection (as in
uvloop's own echo benchmark), with no transports or streams."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from ._common import ASYNCIO_LOOPS, HOST, announce, parser, resolve_loop, run_asyncio

#: Bytes read at most at a time.
RECEIVE_SIZE = 256 * 1024


async def echo(loop: asyncio.AbstractEventLoop, client: socket.socket) -> None:
    """Echo until the client ends its side, then close."""
    with client, contextlib.suppress(OSError):
        while data := await loop.sock_recv(client, RECEIVE_SIZE):
            await loop.sock_sendall(client, data)


async def serve(port: int, loop_name: str) -> None:
    """Serve until cancelled."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server((HOST, port), backlog=1024)
    listener.setblocking(False)
    announce(listener.getsockname()[1], "sockets", loop_name)
    tasks: set[asyncio.Task[None]] = set()
    with listener:
        while True:
            client, _ = await loop.sock_accept(listener)
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = loop.create_task(echo(loop, client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def main() -> None:
    """``python -m anyecho.bench.baselines.sockets``."""
    description = "An echo server on loop.sock_recv and loop.sock_sendall."
    cli = parser("sockets", description, loops=ASYNCIO_LOOPS)
    args = cli.parse_args()
    backend = resolve_loop(cli, args.loop, asyncio_only=True)
    run_asyncio(lambda: serve(args.port, backend.name), backend)


if __name__ == "__main__":
    main()
