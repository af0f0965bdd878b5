"""What the user sees while the benchmark runs: a live bar, or plain lines.

The bar needs ``rich`` (the ``bench`` extra) and a terminal on standard error;
otherwise each finished run is one plain line there.
"""

from __future__ import annotations

import sys
from typing import IO

from .plan import PlannedRun
from .report import RunRecord
from .runner import Progress

__all__ = ["PlainProgress", "QuietProgress", "RichProgress", "choose", "outcome"]


def outcome(record: RunRecord) -> str:
    """One run's figures, or why it failed, in one line."""
    if not record["ok"]:
        return f"FAILED: {record['error']}"
    text = f"{record['echoes_per_s']:,.0f} echoes/s, {record['mib_per_s']:.2f} MiB/s"
    if record["cpu_us_per_echo"] is not None:
        text += f", {record['cpu_us_per_echo']:.1f} µs server CPU per echo"
    if record["latency_us"] is not None:
        text += f", p99 {record['latency_us']['p99'] / 1e3:.3g} ms"
    if record["loadgen_limited"]:
        text += f" (not a server figure: {record['limited_by']})"
    elif record["held_rate"] is False:
        text += " (the offered rate not held)"
    return text


def _describe(run: PlannedRun, total: int) -> str:
    return (
        f"[{run.index + 1}/{total}] {run.server}, {run.workload.label}, "
        f"round {run.round + 1}"
    )


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


class QuietProgress:
    """Say nothing."""

    def message(self, text: str) -> None:
        """Ignore ``text``."""

    def begin(self, runs: int, seconds: float) -> None:
        """Ignore the start."""

    def run_started(self, run: PlannedRun) -> None:
        """Ignore ``run``."""

    def run_finished(self, run: PlannedRun, record: RunRecord) -> None:
        """Ignore ``record``."""

    def end(self) -> None:
        """Ignore the end."""


class PlainProgress:
    """One line per event on ``stream``."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._total = 0

    def message(self, text: str) -> None:
        """Write ``text`` as a line."""
        self._stream.write(text + "\n")
        self._stream.flush()

    def begin(self, runs: int, seconds: float) -> None:
        """Say how many runs there are and how long they should take."""
        self._total = runs
        self.message(f"{runs} runs, about {_minutes(seconds)}")

    def run_started(self, run: PlannedRun) -> None:
        """Nothing to say until it ends."""

    def run_finished(self, run: PlannedRun, record: RunRecord) -> None:
        """Write the run's outcome."""
        self.message(f"{_describe(run, self._total)}: {outcome(record)}")

    def end(self) -> None:
        """Nothing more to say."""


class RichProgress:
    """A live progress bar on standard error, with one line per finished run above.

    :raises ImportError: without ``rich``
    """

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._console = Console(stderr=True, highlight=False)
        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self._console,
            refresh_per_second=2,
        )
        self._task = self._bar.add_task("starting", total=None)
        self._total = 0

    def message(self, text: str) -> None:
        """Print ``text`` above the bar."""
        self._console.print(text, markup=False)

    def begin(self, runs: int, seconds: float) -> None:
        """Show the bar."""
        self._total = runs
        self.message(f"{runs} runs, about {_minutes(seconds)}")
        self._bar.update(self._task, total=runs)
        self._bar.start()

    def run_started(self, run: PlannedRun) -> None:
        """Name the run on the bar."""
        description = f"{run.server}, {run.workload.label}, round {run.round + 1}"
        self._bar.update(self._task, description=description)

    def run_finished(self, run: PlannedRun, record: RunRecord) -> None:
        """Print the run's outcome and move the bar on."""
        self.message(f"{_describe(run, self._total)}: {outcome(record)}")
        self._bar.advance(self._task)

    def end(self) -> None:
        """Take the bar down."""
        self._bar.stop()


def choose(*, quiet: bool) -> Progress:
    """The progress display that suits the terminal and the installed packages."""
    if quiet:
        return QuietProgress()
    if sys.stderr.isatty():
        try:
            return RichProgress()
        except ImportError:
            pass
    return PlainProgress(sys.stderr)
