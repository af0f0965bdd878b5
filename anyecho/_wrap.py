"""A pass-through byte stream: the base of every connection wrapper."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from anyio.abc import ByteStream

__all__ = ["StreamWrapper", "WrapStream"]

#: What ``wrap_stream`` is: a stream in, the stream to echo on out.
WrapStream = Callable[[ByteStream], ByteStream]


class StreamWrapper(ByteStream):
    """A byte stream that passes every call through to ``stream``.

    Subclass it and override what you want to observe or change; the fault
    injectors in :mod:`anyecho.faults` are built this way, so ``echo`` never
    changes for them. (To count bytes only, pass :class:`ByteCounts` to
    :func:`echo`: cheaper than a wrapper's extra call per chunk.)

    .. code-block:: python

        class Recorder(anyecho.StreamWrapper):
            async def send(self, item: bytes) -> None:
                print("echoing", len(item), "bytes")
                await self.stream.send(item)

        server = anyecho.EchoServer(port=0, wrap_stream=Recorder)
    """

    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return await self.stream.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.stream.send(item)

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.stream.extra_attributes
