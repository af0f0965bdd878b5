"""A client for line-based request/response servers.

:class:`LineClient` keeps one connection open, sends a line per request and reads
the answer up to its newline. When the server drops the connection (it closed or
reset it, before or during an answer), the client connects again and retries the
request once; a second failure is :exc:`ServerGoneError`.
"""

from __future__ import annotations

import anyio
from anyio.abc import ByteStream

__all__ = ["LineClient", "ServerGoneError"]


class ServerGoneError(ConnectionError):
    """The server dropped the connection twice in a row."""


class LineClient:
    """Requests to ``host:port``, one line each; use it in ``async with``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        #: connections opened so far (the first, and each retry's)
        self.connects = 0
        self._stream: ByteStream | None = None
        self._buffer = b""

    async def __aenter__(self) -> LineClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._stream is not None:
            await self._stream.aclose()
            self._stream = None

    async def request(self, line: bytes) -> bytes:
        """Send ``line`` and a newline; the answer without its newline."""
        try:
            return await self._request(line)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            await self.aclose()
        try:
            return await self._request(line)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            await self.aclose()
            raise ServerGoneError(f"{self.host}:{self.port} dropped us twice") from exc

    async def _request(self, line: bytes) -> bytes:
        if self._stream is None:
            self._stream = await anyio.connect_tcp(self.host, self.port)
            self._buffer = b""
            self.connects += 1
        await self._stream.send(line + b"\n")
        while b"\n" not in self._buffer:
            self._buffer += await self._stream.receive()
        answer, _, self._buffer = self._buffer.partition(b"\n")
        return answer
