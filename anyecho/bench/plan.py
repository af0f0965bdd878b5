"""What a benchmark runs: its settings, its workloads, and the order of its runs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .._args import format_size

__all__ = [
    "DEFAULT_CONNECTIONS",
    "DEFAULT_SIZES",
    "PlannedRun",
    "Settings",
    "Workload",
    "format_rate",
    "schedule",
]

#: Message sizes measured unless told otherwise: 64 B, 1 KiB, 64 KiB and 1 MiB.
DEFAULT_SIZES = (64, 1 << 10, 64 << 10, 1 << 20)
#: Connection counts measured unless told otherwise: one, some, and many.
DEFAULT_CONNECTIONS = (1, 32, 256)


@dataclass(frozen=True)
class Workload:
    """One kind of load: ``connections`` connections with messages of ``size`` bytes.

    Closed loop (``rate`` is ``None``): throughput at concurrency N, each connection
    keeping ``pipeline`` messages in flight (``pipeline=1``: ping-pong). Open loop:
    ``rate`` messages per second over all the connections, on schedule.
    """

    size: int
    connections: int
    pipeline: int = 1
    rate: float | None = None

    @property
    def id(self) -> str:
        """A short stable key, such as ``64B-50c-1p`` or ``64B-50c-r20000``."""
        load = f"{self.pipeline}p" if self.rate is None else f"r{self.rate:g}"
        return f"{self.size}B-{self.connections}c-{load}"

    @property
    def label(self) -> str:
        """For people, such as ``64 B, 50 conns`` or ``64 B, 50 conns, 20k/s``."""
        plural = "s" if self.connections > 1 else ""
        text = f"{format_size(self.size)}, {self.connections} conn{plural}"
        if self.rate is not None:
            return f"{text}, {format_rate(self.rate)}/s"
        return text + (f", {self.pipeline} in flight" if self.pipeline > 1 else "")


def format_rate(rate: float) -> str:
    """A rate for people: ``500``, ``20k``, ``1.5M``."""
    for factor, suffix in ((1e6, "M"), (1e3, "k")):
        if rate >= factor:
            return f"{rate / factor:.4g}{suffix}"
    return f"{rate:.4g}"


@dataclass(frozen=True)
class Settings:
    """Everything that a benchmark run was asked to do.

    :param servers: the servers to measure, by name, in report order
    :param baseline: the server that ratios compare against, or ``None``
    :param sizes: message sizes (bytes)
    :param connections: connection counts
    :param pipeline: messages in flight per connection
    :param duration: seconds measured per run
    :param warmup: seconds run before each measurement, not counted
    :param repeat: runs per server and workload
    :param clients: load generator processes, or ``None`` to choose
    :param pin: pin the server and the load generators to separate CPUs
    :param rates: open loop: the offered loads (messages per second over all the
        connections) to measure; empty: closed loop
    :param poisson: open loop: exponential gaps between messages (else equal)
    :param seed: seeds the Poisson schedule
    :param sweep: open loop: for each size and connection count, offer
        ``sweep_start`` echoes/s, then ``sweep_factor`` times more at each step,
        while a server holds the rate with a p99 under ``p99_limit_us`` (at most
        ``sweep_steps`` steps)
    :param p99_limit_us: the round-trip p99 (µs) a rate must stay under to count
        as held, in a sweep and for the highest rate held in any open-loop report
    :param custom: servers of the user's own: name and command (with ``{port}``
        and ``{python}`` placeholders)
    :param target: a server already running (host, port), run as ``target``
    :param target_pid: its process id, for its CPU time
    :param pythons: other interpreters that run the bench's own servers too (as
        ``NAME@VERSION`` in ``servers``)
    :param transport: ``"tcp"``, or ``"unix"``: the load goes over Unix sockets
    """

    servers: tuple[str, ...]
    baseline: str | None = None
    sizes: tuple[int, ...] = DEFAULT_SIZES
    connections: tuple[int, ...] = DEFAULT_CONNECTIONS
    pipeline: int = 1
    duration: float = 1.0
    warmup: float = 0.5
    repeat: int = 3
    clients: int | None = None
    pin: bool = True
    rates: tuple[float, ...] = ()
    poisson: bool = False
    seed: int = 0
    sweep: bool = False
    sweep_start: float = 1000.0
    sweep_factor: float = 1.5
    sweep_steps: int = 20
    p99_limit_us: float = 10_000.0
    custom: tuple[tuple[str, str], ...] = ()
    target: tuple[str, int] | None = None
    target_pid: int | None = None
    pythons: tuple[str, ...] = ()
    transport: str = "tcp"

    @property
    def open_loop(self) -> bool:
        """Whether the load is offered at fixed rates."""
        return bool(self.rates) or self.sweep

    def sweep_rates(self) -> list[float]:
        """The rates a sweep may offer, in order."""
        return [
            round(self.sweep_start * self.sweep_factor**step, 1)
            for step in range(self.sweep_steps)
        ]

    @property
    def workloads(self) -> list[Workload]:
        """Every size with every connection count (and rate), smallest first.

        A sweep's rates are not all known in advance: here, only its first.
        """
        rates: tuple[float | None, ...] = self.rates or (
            (self.sweep_start,) if self.sweep else (None,)
        )
        return [
            Workload(size, connections, self.pipeline, rate)
            for size in self.sizes
            for connections in self.connections
            for rate in rates
        ]


@dataclass(frozen=True)
class PlannedRun:
    """One measurement of one server under one workload.

    :param index: its place in the order of all runs, from 0
    :param round: which repetition it is, from 0
    """

    index: int
    round: int
    server: str
    workload: Workload


def schedule(
    servers: Sequence[str], workloads: Sequence[Workload], repeat: int
) -> list[PlannedRun]:
    """The runs in the order they happen: for each workload, ``repeat`` rounds in
    which every server runs once (A B C A B C ...), so that whatever drifts on the
    machine meanwhile affects every server alike."""
    order = [
        (round_, server, workload)
        for workload in workloads
        for round_ in range(repeat)
        for server in servers
    ]
    return [
        PlannedRun(index, round_, server, workload)
        for index, (round_, server, workload) in enumerate(order)
    ]
