"""An echo server written for Trio alone: :func:`trio.serve_tcp` and a stream loop.

Each chunk received is sent back with ``send_all``; at the client's end of stream
the handler half-closes its side and returns, and ``serve_tcp`` closes the stream.
"""

from __future__ import annotations

import contextlib
from functools import partial

import trio

from ._common import HOST, announce, parser


async def echo(stream: trio.SocketStream) -> None:
    """Echo one connection until the client ends its side."""
    try:
        async for chunk in stream:
            await stream.send_all(chunk)
        await stream.send_eof()
    except trio.BrokenResourceError:
        pass


async def serve(port: int) -> None:
    """Serve until cancelled."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, echo, port, host=HOST))
        announce(listeners[0].socket.getsockname()[1], "trio-raw", "trio")


def main() -> None:
    """``python -m anyecho.bench.baselines.trio_raw``."""
    description = "An echo server written for Trio alone."
    args = parser("trio_raw", description, loops=None).parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(serve, args.port)


if __name__ == "__main__":
    main()
