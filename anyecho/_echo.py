"""The echo handler: the one piece of code every transport and backend runs."""

from __future__ import annotations

from typing import Final

from anyio import EndOfStream
from anyio.abc import ByteStream

__all__ = ["RECEIVE_SIZE", "ByteCounts", "echo"]

#: Bytes asked for per :meth:`~anyio.abc.ByteReceiveStream.receive` call.
#:
#: A receive returns whatever has arrived, up to this size, so a large value costs
#: small messages nothing, while bulk transfers make fewer trips through the event
#: loop. AnyIO's default of 64 KiB is the wrong trade here: on asyncio the transport
#: hands over reads of up to 256 KiB, which AnyIO must split and copy when asked
#: for less (about 1.9x the CPU per MiB); on Trio the size is the ``recv()`` size
#: itself, and 1 MiB needs about a third of the CPU per MiB that 64 KiB does. The
#: buffer is only as large as the data while it is held: ``recv()`` shrinks it.
RECEIVE_SIZE: Final = 1024 * 1024


class ByteCounts:
    """Bytes received and bytes sent back: the running totals :func:`echo` keeps.

    Pass one to :func:`echo` to watch a connection while it runs (from another
    task, a progress display, an idle check); the server's statistics are kept
    this way. Both start at zero.
    """

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        #: bytes received from the peer so far
        self.received = 0
        #: bytes sent back so far
        self.sent = 0

    def __repr__(self) -> str:
        return f"ByteCounts(received={self.received}, sent={self.sent})"


async def echo(
    stream: ByteStream,
    *,
    receive_size: int = RECEIVE_SIZE,
    counts: ByteCounts | None = None,
) -> int:
    """Echo every byte received on ``stream`` back to it, in order (RFC 862).

    Runs until the peer ends its side of the stream. Then, with everything received
    already sent back, it half-closes its own side with
    :meth:`~anyio.abc.ByteSendStream.send_eof` where the stream supports that, and
    closes the stream where it does not (TLS). It never asks for more data while a
    send is blocked, so a peer that stops reading stops the echo instead of growing
    a buffer: backpressure is end to end.

    Errors from the stream (:exc:`anyio.BrokenResourceError` on a reset, and so on)
    propagate to the caller, which owns the stream and closes it; the server logs
    them and ends that connection only.

    :param stream: any AnyIO byte stream: TCP, TLS, a Unix socket, or one of
        your own (the test suite drives it over an in-memory one)
    :param receive_size: the most bytes to ask for per receive
    :param counts: totals to add to as bytes pass, as they pass: each chunk is
        counted as received when it arrives and as sent once the stream has taken
        it (counting in the loop costs far less than a stream wrapper would)
    :return: the number of bytes echoed

    .. code-block:: python

        listener = await anyio.create_tcp_listener(local_port=7)
        await listener.serve(anyecho.echo)
    """
    if receive_size < 1:
        raise ValueError(f"receive_size must be positive, not {receive_size}")
    if counts is None:
        counts = ByteCounts()
    sent_before = counts.sent
    receive = stream.receive
    send = stream.send
    while True:
        try:
            data = await receive(receive_size)
        except EndOfStream:
            break
        counts.received += len(data)
        await send(data)
        counts.sent += len(data)
        # Let go of the chunk before waiting for the next one: its memory is then
        # free for the next read, which reuses it while it is still in the CPU
        # cache, rather than growing the heap only to shrink it again per message.
        del data
    try:
        await stream.send_eof()
    except NotImplementedError:
        await stream.aclose()
    return counts.sent - sent_before
