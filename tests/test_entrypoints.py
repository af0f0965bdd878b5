"""The same server under ``asyncio.run``, ``trio.run`` and ``anyio.run``.

These tests own their event loop, so they are plain functions; each serves a real
client over loopback with that loop's own client API.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import anyio
import pytest

import anyecho

from .processes import echo_once
from .utils import TIMEOUT, require_module


def test_asyncio_run() -> None:
    """The classic path: ``asyncio.run(main())`` with asyncio's own streams."""

    async def main() -> bytes:
        server = anyecho.EchoServer(host="127.0.0.1", port=0)
        task = asyncio.create_task(server.serve())
        [address] = await asyncio.wait_for(server.wait_listening(), TIMEOUT)
        reader, writer = await asyncio.open_connection(address.host, address.port)
        writer.write(b"hello from asyncio")
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
        server.stop()
        await asyncio.wait_for(task, TIMEOUT)
        return echoed

    assert asyncio.run(main()) == b"hello from asyncio"


def test_asyncio_run_serve_coroutine() -> None:
    """``asyncio.run(anyecho.serve(...))`` itself, stopped by cancellation.

    A plain coroutine has no ``task_status``; its readiness signal is the log line
    naming the bound address.
    """

    class Ready(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.event = asyncio.Event()
            self.port = 0

        def emit(self, record: logging.LogRecord) -> None:
            match = re.search(r"tcp://127\.0\.0\.1:(\d+)", record.getMessage())
            if match:
                self.port = int(match.group(1))
                self.event.set()

    async def main() -> bytes:
        ready = Ready()
        logger = logging.getLogger("anyecho")
        logger.addHandler(ready)
        logger.setLevel(logging.INFO)
        try:
            task = asyncio.ensure_future(anyecho.serve(host="127.0.0.1", port=0))
            await asyncio.wait_for(ready.event.wait(), TIMEOUT)
        finally:
            logger.removeHandler(ready)
            logger.setLevel(logging.NOTSET)
        reader, writer = await asyncio.open_connection("127.0.0.1", ready.port)
        writer.write(b"plain coroutine")
        writer.write_eof()
        echoed = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return echoed

    assert asyncio.run(main()) == b"plain coroutine"


def test_trio_run() -> None:
    require_module("trio", "trio")
    import trio

    async def main() -> bytes:
        server = anyecho.EchoServer(host="127.0.0.1", port=0)
        with trio.fail_after(TIMEOUT):
            return await talk(server)

    async def talk(server: anyecho.EchoServer) -> bytes:
        async with trio.open_nursery() as nursery:
            [address] = await nursery.start(server.serve)
            stream = await trio.open_tcp_stream(address.host, address.port)
            async with stream:
                await stream.send_all(b"hello from trio")
                await stream.send_eof()
                echoed = b""
                while data := await stream.receive_some():
                    echoed += data
            server.stop()
        return echoed

    assert trio.run(main) == b"hello from trio"


def test_anyio_run(
    backend_name: str, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    async def main() -> bytes:
        server = anyecho.EchoServer(host="127.0.0.1", port=0)
        with anyio.fail_after(TIMEOUT):
            return await talk(server)

    async def talk(server: anyecho.EchoServer) -> bytes:
        async with anyio.create_task_group() as tg:
            [address] = await tg.start(server.serve)
            assert address.host is not None
            echoed = await anyio.to_thread.run_sync(
                echo_once, address.port, b"hello from anyio"
            )
            server.stop()
        return echoed

    backend, options = anyio_backend
    result = anyio.run(main, backend=backend, backend_options=options)
    assert result == b"hello from anyio"
