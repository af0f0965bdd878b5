"""A set of faults, and the share of connections they apply to."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from anyio.abc import ByteStream

from .._wrap import WrapStream
from ._streams import (
    CutoffMode,
    Delay,
    JitterDistribution,
    _Cutoff,
    check_count,
    check_delay,
    check_distribution,
    check_rate,
    check_seconds,
    default_burst,
    delay,
    fragment,
    read_delay,
    read_throttle,
    slow_close,
    throttle,
)

__all__ = ["BYTE_CUTOFFS", "TIME_CUTOFFS", "Faults"]


#: The byte-count cut-offs, and the time ones: at most one of each may be set.
BYTE_CUTOFFS: tuple[str, ...] = ("close_after", "reset_after", "stall_after")
TIME_CUTOFFS: tuple[str, ...] = (
    "close_after_seconds",
    "reset_after_seconds",
    "stall_after_seconds",
)


@dataclass(frozen=True, kw_only=True)
class Faults:
    """The faults to inject, and on which connections. Frozen and validated.

    Invalid values raise :exc:`ValueError` with a one-line message. Every field is
    a plain JSON value (a number, a string, a boolean or ``None``; a range is a
    two-item list or tuple), so ``Faults(**json.loads(text))`` builds one.
    Seconds are floats, sizes integers of bytes, rates bytes per second.

    What the server sends back:

    :param delay: hold each echoed chunk this many seconds, or a random time in a
        ``(min, max)`` range (see :func:`delay`)
    :param jitter: add this much random variation to each chunk's delay
        (seconds; ``delay`` may be left out, for jitter around 0)
    :param jitter_distribution: how the jitter is drawn: ``"uniform"`` (within
        ``delay ± jitter``), ``"normal"`` (mean ``delay``, standard deviation
        ``jitter``) or ``"pareto"`` (heavy tailed: ``delay`` plus ``jitter`` on
        average, now and then many times more); never below 0
    :param fragment: echo in pieces of at most this many bytes (:func:`fragment`)
    :param fragment_pause: seconds between those pieces
    :param throttle: echo at most this many bytes per second (:func:`throttle`)
    :param throttle_burst: bytes that may go out at once (default: 0.1 s worth)

    What the server reads:

    :param read_delay: wait this many seconds before each read from the client
    :param read_throttle: read at most this many bytes per second, so that the
        client's sends block once the socket buffers are full
    :param read_throttle_burst: bytes that may be read at once (default: 0.1 s
        worth)

    Cutting the connection short (at most one byte count and one time; the first
    to come ends the connection):

    :param close_after: end the stream cleanly after this many echoed bytes
    :param reset_after: reset the connection after this many echoed bytes
    :param stall_after: stop reading and echoing after this many bytes
    :param close_after_seconds: end the stream cleanly this many seconds after
        the connection opened (or after its first byte: ``after_first_byte``)
    :param reset_after_seconds: reset the connection after that many seconds
    :param stall_after_seconds: stop reading and echoing after that many seconds
    :param after_first_byte: the ``*_after_seconds`` clocks start at the first
        byte received rather than when the connection opened

    The connection itself:

    :param refuse: accept each connection and reset it at once (the client's
        first read fails with a connection reset)
    :param blackhole: accept each connection and never read nor answer; it stays
        open until the client goes away, the idle timeout or the server stops
    :param slow_close: wait this many seconds after the last echo before ending
        the stream (the FIN)
    :param pause_accepting: accept no connection while these faults are set: the
        listen queue fills (see :attr:`~anyecho.ServerConfig.backlog`), then
        the kernel drops new connection attempts and the client's connect times
        out

    Which connections:

    :param fraction: the share of connections to apply the faults to, from 0 to 1;
        which ones is drawn from ``random.Random(seed)``, connection by connection
    :param seed: makes the choice of connections, the random delays and the
        jitter reproducible; ``None`` draws a different pattern on every run

    .. code-block:: python

        faults = Faults(reset_after=4096, fraction=0.1, seed=42)
        server = EchoServer(port=0, faults=faults)
        server.set_faults(Faults(delay=0.05, jitter=0.01, seed=1))  # at run time
    """

    delay: Delay | None = None
    jitter: float | None = None
    jitter_distribution: JitterDistribution = "uniform"
    fragment: int | None = None
    fragment_pause: float = 0.0
    throttle: float | None = None
    throttle_burst: int | None = None
    read_delay: float | None = None
    read_throttle: float | None = None
    read_throttle_burst: int | None = None
    close_after: int | None = None
    reset_after: int | None = None
    stall_after: int | None = None
    close_after_seconds: float | None = None
    reset_after_seconds: float | None = None
    stall_after_seconds: float | None = None
    after_first_byte: bool = False
    refuse: bool = False
    blackhole: bool = False
    slow_close: float | None = None
    pause_accepting: bool = False
    fraction: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        self._check_sends()
        self._check_reads()
        self._check_cutoffs()
        self._check_connections()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _check_sends(self) -> None:
        if self.delay is not None:
            self._set("delay", check_delay(self.delay))
        if self.jitter is not None:
            self._set("jitter", check_seconds("jitter", self.jitter))
        check_distribution(self.jitter_distribution)
        if self.jitter_distribution != "uniform" and self.jitter is None:
            raise ValueError("invalid jitter_distribution: it needs jitter")
        if self.fragment is not None:
            check_count("fragment", self.fragment, 1)
        pause = check_seconds("fragment_pause", self.fragment_pause)
        self._set("fragment_pause", pause)
        if pause and self.fragment is None:
            raise ValueError("invalid fragment_pause: it needs fragment")

    def _check_reads(self) -> None:
        for rate, burst in (
            ("throttle", "throttle_burst"),
            ("read_throttle", "read_throttle_burst"),
        ):
            if getattr(self, rate) is not None:
                self._set(rate, check_rate(getattr(self, rate), rate))
            if getattr(self, burst) is not None:
                check_count(burst, getattr(self, burst), 1)
                if getattr(self, rate) is None:
                    raise ValueError(f"invalid {burst}: it needs {rate}")
        for name in ("read_delay", "slow_close", *TIME_CUTOFFS):
            if getattr(self, name) is not None:
                self._set(name, check_seconds(name, getattr(self, name)))

    def _check_cutoffs(self) -> None:
        for name in BYTE_CUTOFFS:
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name), 0)
        for group in (BYTE_CUTOFFS, TIME_CUTOFFS):
            cutoffs = [name for name in group if getattr(self, name) is not None]
            if len(cutoffs) > 1:
                raise ValueError(
                    f"{' and '.join(cutoffs)} cannot be combined: choose one"
                )

    def _check_connections(self) -> None:
        for name in ("after_first_byte", "refuse", "blackhole", "pause_accepting"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                # ValueError, as for every invalid value: one kind of error.
                message = f"invalid {name} {value!r}: expected true or false"
                raise ValueError(message)  # noqa: TRY004
        if self.after_first_byte and self.cutoff_seconds is None:
            raise ValueError(
                "invalid after_first_byte: it needs close_after_seconds, "
                "reset_after_seconds or stall_after_seconds"
            )
        if self.refuse and self.blackhole:
            raise ValueError("refuse and blackhole cannot be combined: choose one")
        fraction: object = self.fraction
        if (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 <= fraction <= 1
        ):
            raise ValueError(f"invalid fraction {fraction!r}: expected 0 to 1")
        self._set("fraction", float(fraction))
        seed: object = self.seed
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"invalid seed {seed!r}: expected an integer")

    @property
    def cutoff_bytes(self) -> tuple[CutoffMode, int] | None:
        """The byte-count cut-off, as ``(mode, bytes)``, or ``None``."""
        for name in BYTE_CUTOFFS:
            value = getattr(self, name)
            if value is not None:
                return cast(CutoffMode, name.split("_")[0]), value
        return None

    @property
    def cutoff_seconds(self) -> tuple[CutoffMode, float] | None:
        """The time cut-off, as ``(mode, seconds)``, or ``None``."""
        for name in TIME_CUTOFFS:
            value = getattr(self, name)
            if value is not None:
                return cast(CutoffMode, name.split("_")[0]), value
        return None

    @property
    def shapes_streams(self) -> bool:
        """Whether a fault changes a connection's traffic (beyond accepting it)."""
        return any(
            value is not None
            for value in (
                self.delay,
                self.jitter,
                self.fragment,
                self.throttle,
                self.read_delay,
                self.read_throttle,
                self.slow_close,
                self.cutoff_bytes,
                self.cutoff_seconds,
            )
        )

    @property
    def active(self) -> bool:
        """Whether any fault is set (``fraction`` and ``seed`` aside)."""
        return (
            self.shapes_streams or self.refuse or self.blackhole or self.pause_accepting
        )

    def kinds(self) -> list[str]:
        """The kinds of fault set, as :attr:`~anyecho.StatsSnapshot.faults_injected`
        counts them: ``delay``, ``fragment``, ``throttle``, ``read_delay``,
        ``read_throttle``, ``slow_close`` (the stream faults, ``jitter`` counting
        as ``delay``)."""
        kinds: list[str] = []
        if self.delay is not None or self.jitter is not None:
            kinds.append("delay")
        names = ("fragment", "throttle", "read_delay", "read_throttle")
        kinds.extend(name for name in names if getattr(self, name) is not None)
        return kinds

    def apply(
        self,
        stream: ByteStream,
        rng: random.Random | None = None,
        *,
        on_cut: Callable[[CutoffMode], None] | None = None,
    ) -> ByteStream:
        """Wrap one stream in every stream fault that is set.

        ``fraction`` is not consulted, and what needs the server (the time
        cut-offs, ``refuse``, ``blackhole``, ``pause_accepting``) is left out: the
        server applies those itself when given the faults (``faults=``,
        :meth:`~anyecho.EchoServer.set_faults`).

        Outermost first: the byte cut-off (close, reset or stall) counts the bytes
        the echo hands over; then slow close, delay, fragment and throttle, and
        the read faults nearest the socket.

        :param rng: draws the random delays (default: ``random.Random(seed)``)
        :param on_cut: called with the mode when the byte cut-off happens
        """
        if self.read_throttle is not None:
            stream = read_throttle(
                stream, self.read_throttle, burst=self.read_throttle_burst
            )
        if self.read_delay is not None:
            stream = read_delay(stream, self.read_delay)
        if self.throttle is not None:
            stream = throttle(stream, self.throttle, burst=self.throttle_burst)
        if self.fragment is not None:
            stream = fragment(stream, self.fragment, pause=self.fragment_pause)
        if self.delay is not None or self.jitter is not None:
            stream = delay(
                stream,
                0.0 if self.delay is None else self.delay,
                rng=rng or random.Random(self.seed),  # noqa: S311
                jitter=self.jitter or 0.0,
                jitter_distribution=self.jitter_distribution,
            )
        if self.slow_close is not None:
            stream = slow_close(stream, self.slow_close)
        cutoff = self.cutoff_bytes
        if cutoff is not None:
            stream = _Cutoff(stream, cutoff[1], cutoff[0], on_cut)
        return stream

    def stream_wrapper(self) -> WrapStream | None:
        """The ``wrap_stream`` callable for :class:`~anyecho.ServerConfig`.

        ``None`` when no fault is set or ``fraction`` is 0, so that the server pays
        nothing. The wrapper's faults are fixed; give the server ``faults=``
        instead to change them at run time (:meth:`~anyecho.EchoServer.set_faults`)
        and for the faults only the server can inject. Each call starts a new
        ``random.Random(seed)``: two servers given wrappers of the same
        :class:`Faults` fault the same connections (by the order they are
        accepted in) with the same random delays.

        .. code-block:: python

            server = EchoServer(port=0, wrap_stream=Faults(delay=0.1).stream_wrapper())
        """
        server_only = [
            name
            for name in (*TIME_CUTOFFS, "refuse", "blackhole", "pause_accepting")
            if getattr(self, name) not in (None, False)
        ]
        if server_only:
            raise ValueError(
                f"{server_only[0]} needs the server: give it faults= instead "
                "of a wrap_stream"
            )
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
        parts = [*self._describe_streams(), *self._describe_cutoffs()]
        parts.extend(
            name.replace("_", " ")
            for name in ("refuse", "blackhole", "pause_accepting")
            if getattr(self, name)
        )
        if self.fraction == 1:
            where = "all connections"
        else:
            where = f"{self.fraction:.0%} of connections"
        if self.seed is not None:
            where += f", seed {self.seed}"
        return f"{', '.join(parts) or 'no faults'}; {where}"

    def _describe_streams(self) -> list[str]:
        parts: list[str] = []
        if isinstance(self.delay, tuple):
            parts.append(f"delay {self.delay[0]:g}-{self.delay[1]:g}s")
        elif self.delay is not None:
            parts.append(f"delay {self.delay:g}s")
        if self.jitter is not None:
            parts.append(f"jitter {self.jitter:g}s {self.jitter_distribution}")
        if self.fragment is not None:
            pause = f" every {self.fragment_pause:g}s" if self.fragment_pause else ""
            parts.append(f"fragment {self.fragment} B{pause}")
        for name in ("throttle", "read_throttle"):
            rate = getattr(self, name)
            if rate is not None:
                burst = getattr(self, f"{name}_burst") or default_burst(rate)
                label = name.replace("_", " ")
                parts.append(f"{label} {rate:g} B/s (burst {burst} B)")
        if self.read_delay is not None:
            parts.append(f"read delay {self.read_delay:g}s")
        return parts

    def _describe_cutoffs(self) -> list[str]:
        parts = [
            f"{name.replace('_', ' ')} {getattr(self, name)} B"
            for name in BYTE_CUTOFFS
            if getattr(self, name) is not None
        ]
        since = " from the first byte" if self.after_first_byte else ""
        parts.extend(
            f"{name.removesuffix('_seconds').replace('_', ' ')} "
            f"{getattr(self, name):g}s{since}"
            for name in TIME_CUTOFFS
            if getattr(self, name) is not None
        )
        if self.slow_close is not None:
            parts.append(f"slow close {self.slow_close:g}s")
        return parts
