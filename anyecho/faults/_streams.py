"""The fault wrappers: streams that are slow, fragmented, throttled, cut short or stuck.

Each is a :class:`~anyecho.StreamWrapper` around one connection's stream; the
functions here check their arguments and build one. :mod:`._spec` combines them.
"""

from __future__ import annotations

import logging
import random
import socket
import struct
from collections.abc import Callable
from typing import Literal

import anyio
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute

from .._checks import check_count, check_delay, check_rate, check_seconds
from .._wrap import StreamWrapper as _Wrapper

__all__ = [
    "JITTER_DISTRIBUTIONS",
    "CutoffMode",
    "Delay",
    "JitterDistribution",
    "check_count",
    "check_delay",
    "check_distribution",
    "check_rate",
    "check_seconds",
    "close_after",
    "default_burst",
    "delay",
    "draw_delay",
    "fragment",
    "read_delay",
    "read_throttle",
    "reset_after",
    "slow_close",
    "stall_after",
    "throttle",
]

logger = logging.getLogger("anyecho.faults")

#: A fixed delay in seconds, or the ``(min, max)`` range a random delay is drawn from.
Delay = float | tuple[float, float]

CutoffMode = Literal["close", "reset", "stall"]

#: How :func:`delay`'s jitter is drawn (see :func:`draw_delay`).
JitterDistribution = Literal["uniform", "normal", "pareto"]

#: The jitter distributions, in the order the help lists them.
JITTER_DISTRIBUTIONS: tuple[JitterDistribution, ...] = ("uniform", "normal", "pareto")

#: The shape of the ``pareto`` jitter: 2 gives a mean of one ``jitter``.
PARETO_SHAPE = 2.0


# --- validation ---------------------------------------------------------------


def check_distribution(value: object) -> JitterDistribution:
    for name in JITTER_DISTRIBUTIONS:
        if value == name:
            return name
    choices = ", ".join(JITTER_DISTRIBUTIONS)
    raise ValueError(
        f"invalid jitter_distribution {value!r}: expected one of {choices}"
    )


def default_burst(rate: float) -> int:
    """The burst :func:`throttle` allows by default: 0.1 s worth, 1 B to 64 KiB.

    .. code-block:: python

        assert default_burst(64 * 1024) == 6553
    """
    return max(1, min(int(rate / 10), 65536))


# --- the wrappers -------------------------------------------------------------


def draw_delay(
    low: float,
    high: float,
    jitter: float,
    distribution: JitterDistribution,
    rng: random.Random,
) -> float:
    """One chunk's delay: the base (``low``, or uniform in ``low..high``) plus jitter.

    ``uniform`` adds ``U(-jitter, +jitter)``; ``normal`` draws from a normal
    distribution around the base with ``jitter`` as its standard deviation;
    ``pareto`` adds ``jitter * (X - 1)`` with ``X ~ Pareto(2)``: never negative,
    ``jitter`` on average, with a heavy tail. The sum is clipped at 0.
    """
    base = low if low == high else rng.uniform(low, high)
    if not jitter:
        return base
    if distribution == "uniform":
        base += rng.uniform(-jitter, jitter)
    elif distribution == "normal":
        base = rng.gauss(base, jitter)
    else:
        base += jitter * (rng.paretovariate(PARETO_SHAPE) - 1)
    return max(0.0, base)


class _Delayed(_Wrapper):
    def __init__(
        self,
        stream: ByteStream,
        low: float,
        high: float,
        rng: random.Random,
        *,
        jitter: float = 0.0,
        distribution: JitterDistribution = "uniform",
    ) -> None:
        super().__init__(stream)
        self._low = low
        self._high = high
        self._rng = rng
        self._jitter = jitter
        self._distribution: JitterDistribution = distribution

    async def send(self, item: bytes) -> None:
        await anyio.sleep(
            draw_delay(
                self._low, self._high, self._jitter, self._distribution, self._rng
            )
        )
        await self.stream.send(item)


class _ReadDelayed(_Wrapper):
    """Wait before each receive: the peer's data sits in the socket buffers."""

    def __init__(self, stream: ByteStream, seconds: float) -> None:
        super().__init__(stream)
        self._seconds = seconds

    async def receive(self, max_bytes: int = 65536) -> bytes:
        await anyio.sleep(self._seconds)
        return await self.stream.receive(max_bytes)


class _TokenBucket:
    """``rate`` bytes per second, ``burst`` at once, on AnyIO's clock: the one
    bucket behind :func:`throttle` and :func:`read_throttle`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def _refill(self) -> float:
        now = anyio.current_time()
        if self._stamp is not None:
            elapsed = now - self._stamp
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._stamp = now
        return self._tokens

    async def wait_for(self, size: int) -> None:
        """Wait until ``size`` bytes' worth of tokens are there."""
        missing = size - self._refill()
        if missing > 0:
            await anyio.sleep(missing / self.rate)
            self._refill()

    def spend(self, size: int) -> None:
        # A timer that fires a little early leaves a small debt, which the next
        # wait pays off.
        self._tokens -= size


class _ReadThrottled(_Wrapper):
    """Receive at most ``rate`` bytes per second (a token bucket), ``burst`` at once.

    The server reads no faster, so what the peer sends piles up in the socket
    buffers and the peer's sends block: backpressure, as a client sees it.
    """

    def __init__(self, stream: ByteStream, rate: float, burst: int) -> None:
        super().__init__(stream)
        self._bucket = _TokenBucket(rate, burst)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        bucket = self._bucket
        size = min(max_bytes, bucket.burst)
        await bucket.wait_for(size)
        data = await self.stream.receive(size)
        bucket.spend(len(data))
        return data


class _SlowClose(_Wrapper):
    """Wait ``seconds`` before ending the stream (the FIN, or TLS's close)."""

    def __init__(self, stream: ByteStream, seconds: float) -> None:
        super().__init__(stream)
        self._seconds = seconds

    async def send_eof(self) -> None:
        await anyio.sleep(self._seconds)
        await self.stream.send_eof()


class _Fragmented(_Wrapper):
    def __init__(self, stream: ByteStream, size: int, pause: float) -> None:
        super().__init__(stream)
        self._size = size
        self._pause = pause
        self._started = False

    async def send(self, item: bytes) -> None:
        size, pause, send = self._size, self._pause, self.stream.send
        for start in range(0, len(item), size):
            if pause and self._started:
                await anyio.sleep(pause)
            self._started = True
            await send(item if len(item) <= size else item[start : start + size])


class _Throttled(_Wrapper):
    def __init__(self, stream: ByteStream, rate: float, burst: int) -> None:
        super().__init__(stream)
        self._bucket = _TokenBucket(rate, burst)

    async def send(self, item: bytes) -> None:
        bucket, send = self._bucket, self.stream.send
        burst = bucket.burst
        for start in range(0, len(item), burst):
            piece = item if len(item) <= burst else item[start : start + burst]
            await bucket.wait_for(len(piece))
            bucket.spend(len(piece))
            await send(piece)


class _Cutoff(_Wrapper):
    """Echo ``limit`` bytes, then close, reset or stall (reading no further)."""

    def __init__(
        self,
        stream: ByteStream,
        limit: int,
        mode: CutoffMode,
        on_cut: Callable[[CutoffMode], None] | None = None,
    ) -> None:
        super().__init__(stream)
        self._left = limit
        self._limit = limit
        self._mode = mode
        self._cut = False
        self._closed = False
        self._on_cut = on_cut

    async def _cut_now(self) -> None:
        if self._cut:
            return
        self._cut = True
        logger.debug("fault: %s after %d bytes", self._mode, self._limit)
        if self._on_cut is not None:
            self._on_cut(self._mode)
        if self._mode == "close":
            try:
                await self.stream.send_eof()
            except NotImplementedError:  # TLS has no half-close
                self._closed = True
                await self._close_tls()
        elif self._mode == "reset":
            self._closed = True
            sock = self.stream.extra(SocketAttribute.raw_socket, None)
            if sock is not None:
                try:
                    linger = struct.pack("ii", 1, 0)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                except (OSError, ValueError):  # already gone (uvloop: ValueError)
                    pass
            await anyio.aclose_forcefully(self.stream)

    async def _close_tls(self) -> None:
        """Send close_notify and close; what the peer still sends may prevent it."""
        ssl_object = self.stream.extra(TLSAttribute.ssl_object, None)
        try:
            # The unread rest of a record would make the closing handshake fail
            # (application data after close_notify): read and discard it first.
            while ssl_object is not None and (pending := ssl_object.pending()):
                await self.stream.receive(pending)
            await self.stream.aclose()
        except (OSError, BrokenResourceError, EndOfStream):
            # More data arrived, or the peer left: closed without the handshake.
            await anyio.aclose_forcefully(self.stream)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if self._left > 0:
            return await self.stream.receive(min(max_bytes, self._left))
        await self._cut_now()
        if self._mode == "stall":
            await anyio.sleep_forever()
        if not self._closed:
            # A lingering close: discard what the peer still sends until it ends
            # its side, so that closing does not turn into a reset.
            try:
                while True:
                    await self.stream.receive(max_bytes)
            except EndOfStream:
                pass
        raise EndOfStream

    async def send(self, item: bytes) -> None:
        if self._cut:
            if self._mode == "stall":
                await anyio.sleep_forever()
            raise ClosedResourceError
        allowed = item if len(item) <= self._left else item[: self._left]
        if allowed:
            await self.stream.send(allowed)
            self._left -= len(allowed)
        if self._left == 0:
            if self._mode == "stall":
                if len(allowed) < len(item):
                    await anyio.sleep_forever()
                return
            await self._cut_now()

    async def send_eof(self) -> None:
        if not self._cut:
            await self.stream.send_eof()


def delay(
    stream: ByteStream,
    seconds: Delay,
    *,
    rng: random.Random | None = None,
    jitter: float = 0.0,
    jitter_distribution: JitterDistribution = "uniform",
) -> ByteStream:
    """Hold each chunk sent on ``stream`` for ``seconds`` before sending it.

    The sleep is :func:`anyio.sleep`, so it follows the event loop's clock (a Trio
    ``MockClock`` skips it).

    :param seconds: a fixed delay, or a ``(min, max)`` range to draw each chunk's
        delay from (uniformly)
    :param rng: the random generator for a range or jitter (default: a new,
        unseeded one)
    :param jitter: seconds of random variation around the delay, per chunk
    :param jitter_distribution: ``uniform``, ``normal`` or ``pareto`` (heavy
        tailed), see :func:`draw_delay`

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: delay(s, (0.01, 0.1)))
    """
    checked = check_delay(seconds)
    low, high = checked if isinstance(checked, tuple) else (checked, checked)
    jitter = check_seconds("jitter", jitter)
    distribution = check_distribution(jitter_distribution)
    rng = rng or random.Random()  # noqa: S311
    return _Delayed(stream, low, high, rng, jitter=jitter, distribution=distribution)


def read_delay(stream: ByteStream, seconds: float) -> ByteStream:
    """Wait ``seconds`` before each receive from the peer.

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: read_delay(s, 0.1))
    """
    return _ReadDelayed(stream, check_seconds("read_delay", seconds))


def read_throttle(
    stream: ByteStream, rate: float, *, burst: int | None = None
) -> ByteStream:
    """Receive at most ``rate`` bytes per second (a token bucket).

    The peer's data waits in the socket buffers; once they are full, the peer's
    sends block. Up to ``burst`` bytes are read at once (default:
    :func:`default_burst`).

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: read_throttle(s, 1024))
    """
    rate = check_rate(rate, "read_throttle")
    if burst is None:
        burst = default_burst(rate)
    return _ReadThrottled(stream, rate, check_count("read_throttle burst", burst, 1))


def slow_close(stream: ByteStream, seconds: float) -> ByteStream:
    """Wait ``seconds`` before ending the stream once the echo is done.

    The peer has every byte echoed, then waits this long for the end of the
    stream (the FIN; on TLS, the ``close_notify``).

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: slow_close(s, 2))
    """
    return _SlowClose(stream, check_seconds("slow_close", seconds))


def fragment(stream: ByteStream, size: int, *, pause: float = 0.0) -> ByteStream:
    """Send in pieces of at most ``size`` bytes, each ``pause`` seconds after the last.

    With a pause, the wrapper sleeps before every piece but the first on the
    stream, so pieces go out at least ``pause`` apart and stay separate on the wire
    (the server's sockets use ``TCP_NODELAY``); without one, the pieces are separate
    sends that the network may join again.

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: fragment(s, 1, pause=0.01))
    """
    size = check_count("fragment size", size, 1)
    pause = check_seconds("fragment pause", pause)
    return _Fragmented(stream, size, pause)


def throttle(
    stream: ByteStream, rate: float, *, burst: int | None = None
) -> ByteStream:
    """Send at most ``rate`` bytes per second (a token bucket).

    Up to ``burst`` bytes may go out at once (default: :func:`default_burst`);
    larger chunks are sent in pieces of that size.

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: throttle(s, 64 * 1024))
    """
    rate = check_rate(rate)
    if burst is None:
        burst = default_burst(rate)
    return _Throttled(stream, rate, check_count("throttle burst", burst, 1))


def close_after(stream: ByteStream, nbytes: int) -> ByteStream:
    """Send ``nbytes`` bytes in all, then end the stream cleanly (EOF).

    The peer sees exactly the first ``nbytes`` bytes and then the end of the
    stream. What it sends afterwards is read and discarded until it closes its
    side, so that closing never turns into a reset. ``nbytes=0`` closes a new
    connection before echoing anything.

    TLS has no half-close: the stream sends its ``close_notify`` and waits for the
    peer's, as any TLS close does. A peer that is still sending by then may see
    the connection reset instead.

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: close_after(s, 1024))
    """
    return _Cutoff(stream, check_count("close_after", nbytes, 0), "close")


def reset_after(stream: ByteStream, nbytes: int) -> ByteStream:
    """Send ``nbytes`` bytes in all, then reset the connection (TCP RST).

    It sets ``SO_LINGER`` to ``(1, 0)`` on the socket and closes it, so the peer
    gets a connection reset rather than an end of stream; bytes still in flight
    may be lost, as with any reset. Unix sockets have no reset: the peer sees the
    end of the stream, or a reset if the server left data unread. Streams without
    a socket are just closed.

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: reset_after(s, 1024))
    """
    return _Cutoff(stream, check_count("reset_after", nbytes, 0), "reset")


def stall_after(stream: ByteStream, nbytes: int) -> ByteStream:
    """Echo ``nbytes`` bytes in all, then hang: read nothing, send nothing, keep open.

    The server reads no more than it echoes, so the peer's sends fill the socket
    buffers and then block, as with a server that stopped responding. The
    connection stays open until the server's ``idle_timeout`` ends it, or the
    server stops (giving up on it after its drain timeout).

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: stall_after(s, 0))
    """
    return _Cutoff(stream, check_count("stall_after", nbytes, 0), "stall")
