"""An echo server that stalls on purpose: it blocks its event loop at intervals.

A bare :class:`asyncio.Protocol` echo (as in :mod:`.protocol`), except that every
``--every`` seconds it blocks its event loop for ``--stall`` seconds, as a server
does that runs a slow call in its loop or pauses for garbage collection. Closed-loop
load hides such stalls (each connection simply sends nothing while it waits);
open-loop load shows them in its high percentiles. The benchmark's own tests use it
to check that.
"""

from __future__ import annotations

import asyncio
import time

from ._common import ASYNCIO_LOOPS, HOST, announce, parser, resolve_loop, run_asyncio
from .protocol import EchoProtocol


def _stall(loop: asyncio.AbstractEventLoop, stall: float, every: float) -> None:
    time.sleep(stall)  # blocks the loop on purpose
    loop.call_later(max(0.0, every - stall), _stall, loop, stall, every)


async def serve(port: int, loop_name: str, stall: float, every: float) -> None:
    """Serve until cancelled, stalling ``stall`` seconds every ``every``."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(EchoProtocol, HOST, port)
    announce(server.sockets[0].getsockname()[1], "stalling", loop_name)
    loop.call_later(every, _stall, loop, stall, every)
    async with server:
        await server.serve_forever()


def main() -> None:
    """``python -m anyecho.bench.baselines.stalling``."""
    description = "An asyncio.Protocol echo server that blocks its loop at intervals."
    cli = parser("stalling", description, loops=ASYNCIO_LOOPS)
    cli.add_argument(
        "--stall",
        type=float,
        default=0.15,
        metavar="SECONDS",
        help="how long each stall lasts (default: %(default)s)",
    )
    cli.add_argument(
        "--every",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="time from one stall's start to the next (default: %(default)s)",
    )
    args = cli.parse_args()
    if not 0 < args.stall < args.every:
        cli.error("expected 0 < --stall < --every")
    backend = resolve_loop(cli, args.loop, asyncio_only=True)
    run_asyncio(lambda: serve(args.port, backend.name, args.stall, args.every), backend)


if __name__ == "__main__":
    main()
