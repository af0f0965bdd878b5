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
    "schedule",
]

#: Message sizes measured unless told otherwise: 64 B, 1 KiB, 64 KiB and 1 MiB.
DEFAULT_SIZES = (64, 1 << 10, 64 << 10, 1 << 20)
#: Connection counts measured unless told otherwise: one, and many.
DEFAULT_CONNECTIONS = (1, 50)


@dataclass(frozen=True)
class Workload:
    """One kind of load: ``connections`` connections, each keeping ``pipeline``
    messages of ``size`` bytes in flight (``pipeline=1``: ping-pong)."""

    size: int
    connections: int
    pipeline: int = 1

    @property
    def id(self) -> str:
        """A short stable key, such as ``64B-50c-1p``."""
        return f"{self.size}B-{self.connections}c-{self.pipeline}p"

    @property
    def label(self) -> str:
        """For people, such as ``64 B, 50 conns``."""
        plural = "s" if self.connections > 1 else ""
        text = f"{format_size(self.size)}, {self.connections} conn{plural}"
        return text + (f", {self.pipeline} in flight" if self.pipeline > 1 else "")


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

    @property
    def workloads(self) -> list[Workload]:
        """Every size with every connection count, smallest first."""
        return [
            Workload(size, connections, self.pipeline)
            for size in self.sizes
            for connections in self.connections
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
