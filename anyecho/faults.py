"""Fault injection: an echo that is slow, fragmented, throttled, cut short or stuck.

Each fault is a :class:`~anyio.abc.ByteStream` wrapper that the server applies
around a connection (through :attr:`ServerConfig.wrap_stream
<anyecho.ServerConfig.wrap_stream>`) before :func:`anyecho.echo` runs on it; the
handler itself never changes. The wrappers compose, keep backpressure (they never
buffer: a delayed or throttled send simply takes longer, and the echo does not
read again until it is done) and work on every AnyIO backend and transport.

:class:`Faults` describes a set of faults, and on which share of the connections to
apply them; its :meth:`~Faults.stream_wrapper` is what the server takes:

.. code-block:: python

    faults = Faults(delay=(0.01, 0.1), fragment=16, fraction=0.5, seed=1)
    server = anyecho.EchoServer(host="127.0.0.1", port=0,
                                wrap_stream=faults.stream_wrapper())

The single wrappers (:func:`delay`, :func:`fragment`, :func:`throttle`,
:func:`close_after`, :func:`reset_after`, :func:`stall_after`) can also be
stacked by hand. :func:`add_fault_arguments` and :func:`faults_from_args` give a
command line the same faults (``anyecho serve --delay 0.05 --fragment 16``).
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import re
import socket
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import anyio
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSAttribute

from ._wrap import StreamWrapper as _Wrapper

__all__ = [
    "Faults",
    "add_fault_arguments",
    "close_after",
    "default_burst",
    "delay",
    "faults_from_args",
    "fragment",
    "reset_after",
    "stall_after",
    "throttle",
]

logger = logging.getLogger("anyecho.faults")

StreamWrapper = Callable[[ByteStream], ByteStream]

#: A fixed delay in seconds, or the ``(min, max)`` range a random delay is drawn from.
Delay = float | tuple[float, float]

_CutoffMode = Literal["close", "reset", "stall"]


# --- validation ---------------------------------------------------------------


def _check_seconds(name: str, value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"invalid {name} {value!r}: expected seconds >= 0")
    return float(value)


def _check_delay(value: object) -> Delay:
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) != 2:
            raise ValueError(f"invalid delay {value!r}: expected seconds or (min, max)")
        low = _check_seconds("delay", value[0])
        high = _check_seconds("delay", value[1])
        if low > high:
            raise ValueError(f"invalid delay {value!r}: min is above max")
        return (low, high)
    return _check_seconds("delay", value)


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"invalid {name} {value!r}: expected an integer >= {minimum}")
    return value


def _check_rate(value: object) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"invalid throttle {value!r}: expected bytes/s > 0")
    return float(value)


def default_burst(rate: float) -> int:
    """The burst :func:`throttle` allows by default: 0.1 s worth, 1 B to 64 KiB.

    .. code-block:: python

        assert default_burst(64 * 1024) == 6553
    """
    return max(1, min(int(rate / 10), 65536))


# --- the wrappers -------------------------------------------------------------


class _Delayed(_Wrapper):
    def __init__(
        self, stream: ByteStream, low: float, high: float, rng: random.Random
    ) -> None:
        super().__init__(stream)
        self._low = low
        self._high = high
        self._rng = rng

    async def send(self, item: bytes) -> None:
        low, high = self._low, self._high
        await anyio.sleep(low if low == high else self._rng.uniform(low, high))
        await self.stream.send(item)


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
        self._rate = rate
        self._burst = burst
        self._tokens = float(burst)
        self._stamp: float | None = None

    def _refill(self) -> float:
        now = anyio.current_time()
        if self._stamp is not None:
            elapsed = now - self._stamp
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
        self._stamp = now
        return self._tokens

    async def send(self, item: bytes) -> None:
        burst, send = self._burst, self.stream.send
        for start in range(0, len(item), burst):
            piece = item if len(item) <= burst else item[start : start + burst]
            missing = len(piece) - self._refill()
            if missing > 0:
                await anyio.sleep(missing / self._rate)
                self._refill()
            # A timer that fires a little early leaves a small debt, which the
            # next piece waits off.
            self._tokens -= len(piece)
            await send(piece)


class _Cutoff(_Wrapper):
    """Echo ``limit`` bytes, then close, reset or stall (reading no further)."""

    def __init__(self, stream: ByteStream, limit: int, mode: _CutoffMode) -> None:
        super().__init__(stream)
        self._left = limit
        self._limit = limit
        self._mode = mode
        self._cut = False
        self._closed = False

    async def _cut_now(self) -> None:
        if self._cut:
            return
        self._cut = True
        logger.debug("fault: %s after %d bytes", self._mode, self._limit)
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
                except OSError:  # already gone
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
    stream: ByteStream, seconds: Delay, *, rng: random.Random | None = None
) -> ByteStream:
    """Hold each chunk sent on ``stream`` for ``seconds`` before sending it.

    :param seconds: a fixed delay, or a ``(min, max)`` range to draw each chunk's
        delay from (uniformly)
    :param rng: the random generator for a range (default: a new, unseeded one)

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: delay(s, (0.01, 0.1)))
    """
    checked = _check_delay(seconds)
    low, high = checked if isinstance(checked, tuple) else (checked, checked)
    return _Delayed(stream, low, high, rng or random.Random())  # noqa: S311


def fragment(stream: ByteStream, size: int, *, pause: float = 0.0) -> ByteStream:
    """Send in pieces of at most ``size`` bytes, each ``pause`` seconds after the last.

    With a pause, the wrapper sleeps before every piece but the first on the
    stream, so pieces go out at least ``pause`` apart and stay separate on the wire
    (the server's sockets use ``TCP_NODELAY``); without one, the pieces are separate
    sends that the network may join again.

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: fragment(s, 1, pause=0.01))
    """
    size = _check_count("fragment size", size, 1)
    pause = _check_seconds("fragment pause", pause)
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
    rate = _check_rate(rate)
    if burst is None:
        burst = default_burst(rate)
    return _Throttled(stream, rate, _check_count("throttle burst", burst, 1))


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
    return _Cutoff(stream, _check_count("close_after", nbytes, 0), "close")


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
    return _Cutoff(stream, _check_count("reset_after", nbytes, 0), "reset")


def stall_after(stream: ByteStream, nbytes: int) -> ByteStream:
    """Echo ``nbytes`` bytes in all, then hang: read nothing, send nothing, keep open.

    The server reads no more than it echoes, so the peer's sends fill the socket
    buffers and then block, as with a server that stopped responding. The
    connection stays open until the server's ``idle_timeout`` ends it, or the
    server stops (giving up on it after its drain timeout).

    .. code-block:: python

        config = ServerConfig(wrap_stream=lambda s: stall_after(s, 0))
    """
    return _Cutoff(stream, _check_count("stall_after", nbytes, 0), "stall")


# --- a set of faults ----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Faults:
    """The faults to inject, and on which connections. Frozen and validated.

    Invalid values raise :exc:`ValueError` with a one-line message. At most one of
    ``close_after``, ``reset_after`` and ``stall_after`` may be set.

    :param delay: hold each echoed chunk this many seconds, or a random time in a
        ``(min, max)`` range (see :func:`delay`)
    :param fragment: echo in pieces of at most this many bytes (:func:`fragment`)
    :param fragment_pause: seconds between those pieces
    :param throttle: echo at most this many bytes per second (:func:`throttle`)
    :param throttle_burst: bytes that may go out at once (default: 0.1 s worth)
    :param close_after: end the stream cleanly after this many echoed bytes
    :param reset_after: reset the connection after this many echoed bytes
    :param stall_after: stop reading and echoing after this many bytes
    :param fraction: the share of connections to apply the faults to, from 0 to 1;
        which ones is drawn from ``random.Random(seed)``, connection by connection
    :param seed: makes the choice of connections and random delays reproducible;
        ``None`` draws a different pattern on every run

    .. code-block:: python

        faults = Faults(reset_after=4096, fraction=0.1, seed=42)
        config = ServerConfig(wrap_stream=faults.stream_wrapper())
    """

    delay: Delay | None = None
    fragment: int | None = None
    fragment_pause: float = 0.0
    throttle: float | None = None
    throttle_burst: int | None = None
    close_after: int | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    fraction: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.delay is not None:
            object.__setattr__(self, "delay", _check_delay(self.delay))
        if self.fragment is not None:
            _check_count("fragment", self.fragment, 1)
        pause = _check_seconds("fragment_pause", self.fragment_pause)
        if pause and self.fragment is None:
            raise ValueError("invalid fragment_pause: it needs fragment")
        if self.throttle is not None:
            _check_rate(self.throttle)
        if self.throttle_burst is not None:
            _check_count("throttle_burst", self.throttle_burst, 1)
            if self.throttle is None:
                raise ValueError("invalid throttle_burst: it needs throttle")
        cutoffs = [
            name
            for name in ("close_after", "reset_after", "stall_after")
            if getattr(self, name) is not None
        ]
        for name in cutoffs:
            _check_count(name, getattr(self, name), 0)
        if len(cutoffs) > 1:
            raise ValueError(f"{' and '.join(cutoffs)} cannot be combined: choose one")
        fraction: object = self.fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction <= 1
        ):
            raise ValueError(f"invalid fraction {fraction!r}: expected 0 to 1")
        seed: object = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"invalid seed {seed!r}: expected an integer")

    @property
    def active(self) -> bool:
        """Whether any fault is set (``fraction`` and ``seed`` aside)."""
        return any(
            value is not None
            for value in (
                self.delay,
                self.fragment,
                self.throttle,
                self.close_after,
                self.reset_after,
                self.stall_after,
            )
        )

    def apply(self, stream: ByteStream, rng: random.Random | None = None) -> ByteStream:
        """Wrap one stream in every fault that is set (``fraction`` is not consulted).

        Outermost first: the cutoff (close, reset or stall) counts the bytes the
        echo hands over; then delay, fragment and throttle, nearest the socket.

        :param rng: draws the random delays (default: ``random.Random(seed)``)
        """
        if self.throttle is not None:
            stream = throttle(stream, self.throttle, burst=self.throttle_burst)
        if self.fragment is not None:
            stream = fragment(stream, self.fragment, pause=self.fragment_pause)
        if self.delay is not None:
            stream = delay(stream, self.delay, rng=rng or random.Random(self.seed))  # noqa: S311
        if self.close_after is not None:
            stream = close_after(stream, self.close_after)
        elif self.reset_after is not None:
            stream = reset_after(stream, self.reset_after)
        elif self.stall_after is not None:
            stream = stall_after(stream, self.stall_after)
        return stream

    def stream_wrapper(self) -> StreamWrapper | None:
        """The ``wrap_stream`` callable for :class:`~anyecho.ServerConfig`.

        ``None`` when no fault is set or ``fraction`` is 0, so that the server pays
        nothing. Each call starts a new ``random.Random(seed)``: two servers given
        wrappers of the same :class:`Faults` fault the same connections (by the
        order they are accepted in) with the same random delays.

        .. code-block:: python

            server = EchoServer(port=0, wrap_stream=Faults(delay=0.1).stream_wrapper())
        """
        if not self.active or self.fraction == 0:
            return None
        chooser = random.Random(self.seed)  # noqa: S311
        fraction = self.fraction
        apply = self.apply

        def wrap_stream(stream: ByteStream) -> ByteStream:
            connection_seed = chooser.getrandbits(64)
            if fraction < 1 and chooser.random() >= fraction:
                return stream
            return apply(stream, random.Random(connection_seed))  # noqa: S311

        return wrap_stream

    def describe(self) -> str:
        """One line for a log: ``delay 0.05s, fragment 16 B; all connections``."""
        parts: list[str] = []
        if isinstance(self.delay, tuple):
            parts.append(f"delay {self.delay[0]:g}-{self.delay[1]:g}s")
        elif self.delay is not None:
            parts.append(f"delay {self.delay:g}s")
        if self.fragment is not None:
            pause = f" every {self.fragment_pause:g}s" if self.fragment_pause else ""
            parts.append(f"fragment {self.fragment} B{pause}")
        if self.throttle is not None:
            burst = self.throttle_burst or default_burst(self.throttle)
            parts.append(f"throttle {self.throttle:g} B/s (burst {burst} B)")
        for name in ("close_after", "reset_after", "stall_after"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name.replace('_', ' ')} {value} B")
        if self.fraction == 1:
            where = "all connections"
        else:
            where = f"{self.fraction:.0%} of connections"
        if self.seed is not None:
            where += f", seed {self.seed}"
        return f"{', '.join(parts) or 'no faults'}; {where}"


# --- command line -------------------------------------------------------------

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE = re.compile(rf"{_NUMBER}([kmg]?)", re.IGNORECASE)
_RANGE = re.compile(rf"{_NUMBER}(?:\s*-\s*{_NUMBER})?")
_FRAGMENT = re.compile(rf"(\d+)(?::{_NUMBER})?")
_MULTIPLIERS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def delay_argument(text: str) -> Delay:
    """Parse ``--delay``: ``SECONDS`` or ``MIN-MAX`` (``0.05``, ``0.01-0.1``)."""
    match = _RANGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid delay {text!r}: expected SECONDS or MIN-MAX, such as 0.05 "
            "or 0.01-0.1"
        )
    low = float(match[1])
    if match[2] is None:
        return low
    high = float(match[2])
    if low > high:
        raise argparse.ArgumentTypeError(f"invalid delay {text!r}: MIN is above MAX")
    return (low, high)


def fragment_argument(text: str) -> tuple[int, float]:
    """Parse ``--fragment``: ``N`` or ``N:PAUSE`` (``16``, ``1:0.01``)."""
    match = _FRAGMENT.fullmatch(text.strip())
    if match is None or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid fragment {text!r}: expected N or N:PAUSE with N >= 1, "
            "such as 16 or 1:0.01"
        )
    return int(match[1]), float(match[2] or 0)


def _size(text: str) -> float | None:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    return float(match[1]) * _MULTIPLIERS[match[2].lower()]


def rate_argument(text: str) -> float:
    """Parse ``--throttle``: bytes per second, with an optional ``k``/``M``/``G``."""
    rate = _size(text)
    if rate is None or rate <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: expected bytes per second > 0, such as 500, "
            "64k or 1M"
        )
    return rate


def byte_count_argument(text: str) -> int:
    """Parse a byte count (``0``, ``100``, ``64k``)."""
    count = _size(text)
    if count is None or not count.is_integer():
        raise argparse.ArgumentTypeError(
            f"invalid byte count {text!r}: expected a whole number of bytes >= 0, "
            "such as 0, 100 or 64k"
        )
    return int(count)


def fraction_argument(text: str) -> float:
    """Parse ``--fault-fraction``: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"invalid fraction {text!r}: expected a number from 0 to 1"
        )
    return value


def seed_argument(text: str) -> int:
    """Parse ``--seed``: an integer."""
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: expected an integer"
        ) from None


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault options (an argument group) to ``parser``.

    Read them back with :func:`faults_from_args`. Their destinations all start
    with ``fault_``.

    .. code-block:: python

        parser = argparse.ArgumentParser()
        add_fault_arguments(parser)
        faults = faults_from_args(parser.parse_args(["--delay", "0.05"]))
    """
    group = parser.add_argument_group(
        "fault injection",
        "Misbehave on purpose, to test clients. Sizes and rates take a k, M or G "
        "suffix (powers of 1024).",
    )
    group.add_argument(
        "--delay",
        dest="fault_delay",
        type=delay_argument,
        metavar="SECONDS|MIN-MAX",
        help="hold each echoed chunk this long, or a random time in a range",
    )
    group.add_argument(
        "--fragment",
        dest="fault_fragment",
        type=fragment_argument,
        metavar="N[:PAUSE]",
        help="echo in pieces of at most N bytes, PAUSE seconds apart",
    )
    group.add_argument(
        "--throttle",
        dest="fault_throttle",
        type=rate_argument,
        metavar="BYTES_PER_S",
        help="echo at most this many bytes per second (such as 64k or 1M)",
    )
    cutoff = group.add_mutually_exclusive_group()
    cutoff.add_argument(
        "--close-after",
        dest="fault_close_after",
        type=byte_count_argument,
        metavar="N",
        help="end the stream cleanly after echoing N bytes",
    )
    cutoff.add_argument(
        "--reset-after",
        dest="fault_reset_after",
        type=byte_count_argument,
        metavar="N",
        help="reset the connection (TCP RST) after echoing N bytes",
    )
    cutoff.add_argument(
        "--stall-after",
        dest="fault_stall_after",
        type=byte_count_argument,
        metavar="N",
        help="stop reading and echoing after N bytes, keeping the connection open",
    )
    group.add_argument(
        "--fault-fraction",
        dest="fault_fraction",
        type=fraction_argument,
        default=1.0,
        metavar="F",
        help="apply the faults to this share of connections, 0 to 1 "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        dest="fault_seed",
        type=seed_argument,
        metavar="N",
        help="seed the choice of connections and of random delays",
    )


def faults_from_args(args: argparse.Namespace) -> Faults | None:
    """The :class:`Faults` the options of :func:`add_fault_arguments` ask for.

    ``None`` when no fault option was given (``--fault-fraction`` and ``--seed``
    alone inject nothing).

    :raises ValueError: for values that are invalid together

    .. code-block:: python

        faults = faults_from_args(args)
        config = ServerConfig(wrap_stream=faults and faults.stream_wrapper())
    """
    pieces: tuple[int, float] | None = getattr(args, "fault_fragment", None)
    faults = Faults(
        delay=getattr(args, "fault_delay", None),
        fragment=pieces[0] if pieces else None,
        fragment_pause=pieces[1] if pieces else 0.0,
        throttle=getattr(args, "fault_throttle", None),
        close_after=getattr(args, "fault_close_after", None),
        reset_after=getattr(args, "fault_reset_after", None),
        stall_after=getattr(args, "fault_stall_after", None),
        fraction=getattr(args, "fault_fraction", 1.0),
        seed=getattr(args, "fault_seed", None),
    )
    return faults if faults.active else None
