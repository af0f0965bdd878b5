"""A set of faults, and the share of connections they apply to."""

from __future__ import annotations

import random
from dataclasses import dataclass

from anyio.abc import ByteStream

from .._config import WrapStream
from .._udpfaults import UdpFaults, udp_faults_from
from ._streams import (
    Delay,
    check_count,
    check_delay,
    check_rate,
    check_seconds,
    close_after,
    default_burst,
    delay,
    fragment,
    reset_after,
    stall_after,
    throttle,
)

__all__ = ["Faults"]


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
    :param udp: impairments of the datagram echo (:class:`UdpFaults`, or a mapping
        of its field names, as decoded from JSON: ``{"drop": 0.1, "seed": 1}``),
        with a seed of their own; ``fraction`` does not apply to them

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
    udp: UdpFaults | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "udp", udp_faults_from(self.udp))
        if self.delay is not None:
            object.__setattr__(self, "delay", check_delay(self.delay))
        if self.fragment is not None:
            check_count("fragment", self.fragment, 1)
        pause = check_seconds("fragment_pause", self.fragment_pause)
        if pause and self.fragment is None:
            raise ValueError("invalid fragment_pause: it needs fragment")
        if self.throttle is not None:
            check_rate(self.throttle)
        if self.throttle_burst is not None:
            check_count("throttle_burst", self.throttle_burst, 1)
            if self.throttle is None:
                raise ValueError("invalid throttle_burst: it needs throttle")
        cutoffs = [
            name
            for name in ("close_after", "reset_after", "stall_after")
            if getattr(self, name) is not None
        ]
        for name in cutoffs:
            check_count(name, getattr(self, name), 0)
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
        """Whether any stream fault is set (``fraction``, ``seed`` and ``udp``
        aside)."""
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

    def stream_wrapper(self) -> WrapStream | None:
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
        if self.udp is None:
            return f"{', '.join(parts) or 'no faults'}; {where}"
        udp = f"udp: {self.udp.describe()}"
        return f"{', '.join(parts)}; {where}; {udp}" if parts else udp
