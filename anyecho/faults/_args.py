"""The fault options of ``anyecho serve`` (``--delay``, ``--fragment``, ...).

:func:`add_fault_arguments` adds them to a parser and :func:`faults_from_args`
reads them back as a :class:`~anyecho.Faults`; both are also importable from
:mod:`anyecho.faults`. Sizes, rates and counts are written as every other option
writes them (``anyecho._args``, the one grammar of every command's options).
"""

from __future__ import annotations

import argparse
import re

from .._args import (
    DURATION,
    DURATION_SYNTAX,
    SIZE_SYNTAX,
    byte_count,
    byte_rate,
    duration_of,
    fraction,
    seconds,
    seed,
)
from ._spec import Faults
from ._streams import JITTER_DISTRIBUTIONS, Delay, JitterDistribution

__all__ = [
    "add_fault_arguments",
    "delay_argument",
    "faults_from_args",
    "fragment_argument",
]

_RANGE = re.compile(rf"{DURATION}(?:\s*-\s*{DURATION})?", re.IGNORECASE)
_FRAGMENT = re.compile(rf"(\d+)(?::{DURATION})?", re.IGNORECASE)


def delay_argument(text: str) -> Delay:
    """Parse ``--delay``: ``SECONDS`` or ``MIN-MAX`` (``0.05``, ``50ms``,
    ``10ms-100ms``)."""
    match = _RANGE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid delay {text!r}: expected SECONDS or MIN-MAX, such as 0.05, "
            "50ms or 10ms-100ms"
        )
    low = duration_of(match[1], match[2])
    if match[3] is None:
        return low
    high = duration_of(match[3], match[4])
    if low > high:
        raise argparse.ArgumentTypeError(f"invalid delay {text!r}: MIN is above MAX")
    return (low, high)


def fragment_argument(text: str) -> tuple[int, float]:
    """Parse ``--fragment``: ``N`` or ``N:PAUSE`` (``16``, ``1:0.01``, ``1:10ms``)."""
    match = _FRAGMENT.fullmatch(text.strip())
    if match is None or int(match[1]) < 1:
        raise argparse.ArgumentTypeError(
            f"invalid fragment {text!r}: expected N or N:PAUSE with N >= 1, "
            "such as 16 or 1:10ms"
        )
    return int(match[1]), 0.0 if match[2] is None else duration_of(match[2], match[3])


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the fault options (an argument group) to ``parser``.

    Read them back with :func:`faults_from_args`. Their destinations all start
    with ``fault_``.

    .. code-block:: python

        parser = argparse.ArgumentParser()
        add_fault_arguments(parser)
        faults = faults_from_args(parser.parse_args(["--delay", "50ms"]))
    """
    group = parser.add_argument_group(
        "fault injection",
        f"Misbehave on purpose, to test clients. Sizes and rates: {SIZE_SYNTAX}. "
        f"Durations: {DURATION_SYNTAX}.",
    )
    group.add_argument(
        "--delay",
        dest="fault_delay",
        type=delay_argument,
        metavar="SECONDS|MIN-MAX",
        help="hold each echoed chunk this long, or a random time in a range",
    )
    group.add_argument(
        "--jitter",
        dest="fault_jitter",
        type=seconds,
        metavar="SECONDS",
        help="vary each chunk's delay by this much, at random",
    )
    group.add_argument(
        "--jitter-distribution",
        dest="fault_jitter_distribution",
        choices=JITTER_DISTRIBUTIONS,
        default="uniform",
        help="how the jitter is drawn: uniform (delay ± jitter), normal (standard "
        "deviation jitter) or pareto (heavy tailed, jitter on average) "
        "(default: %(default)s)",
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
        type=byte_rate,
        metavar="BYTES_PER_S",
        help="echo at most this many bytes per second",
    )
    group.add_argument(
        "--read-delay",
        dest="fault_read_delay",
        type=seconds,
        metavar="SECONDS",
        help="wait this long before each read from the client",
    )
    group.add_argument(
        "--read-throttle",
        dest="fault_read_throttle",
        type=byte_rate,
        metavar="BYTES_PER_S",
        help="read at most this many bytes per second, so that the client's "
        "sends block",
    )
    cutoff = group.add_mutually_exclusive_group()
    cutoff.add_argument(
        "--close-after",
        dest="fault_close_after",
        type=byte_count,
        metavar="BYTES",
        help="end the stream cleanly after echoing this many bytes",
    )
    cutoff.add_argument(
        "--reset-after",
        dest="fault_reset_after",
        type=byte_count,
        metavar="BYTES",
        help="reset the connection (TCP RST) after echoing this many bytes",
    )
    cutoff.add_argument(
        "--stall-after",
        dest="fault_stall_after",
        type=byte_count,
        metavar="BYTES",
        help="stop reading and echoing after this many bytes, keeping the "
        "connection open",
    )
    timed = group.add_mutually_exclusive_group()
    for mode, does in (
        ("close", "end the stream cleanly"),
        ("reset", "reset the connection"),
        ("stall", "stop reading and echoing"),
    ):
        timed.add_argument(
            f"--{mode}-after-seconds",
            dest=f"fault_{mode}_after_seconds",
            type=seconds,
            metavar="SECONDS",
            help=f"{does} this long after the connection opened (or its first "
            "byte: --after-first-byte)",
        )
    group.add_argument(
        "--after-first-byte",
        dest="fault_after_first_byte",
        action="store_true",
        help="start the --*-after-seconds clocks at the first byte received",
    )
    turned_away = group.add_mutually_exclusive_group()
    turned_away.add_argument(
        "--refuse",
        dest="fault_refuse",
        action="store_true",
        help="accept each connection and reset it at once",
    )
    turned_away.add_argument(
        "--blackhole",
        dest="fault_blackhole",
        action="store_true",
        help="accept each connection, then never read nor answer",
    )
    group.add_argument(
        "--slow-close",
        dest="fault_slow_close",
        type=seconds,
        metavar="SECONDS",
        help="wait this long after the last echo before ending the stream",
    )
    group.add_argument(
        "--pause-accepting",
        dest="fault_pause_accepting",
        action="store_true",
        help="accept no connection: the listen queue (--backlog) fills, then "
        "connects time out",
    )
    group.add_argument(
        "--fault-fraction",
        dest="fault_fraction",
        type=fraction,
        default=1.0,
        metavar="F",
        help="apply the faults to this share of connections, 0 to 1 "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--seed",
        dest="fault_seed",
        type=seed,
        metavar="N",
        help="seed the choice of connections, the random delays and the jitter",
    )


#: The options whose value is the field of the same name.
_DIRECT = (
    "delay",
    "jitter",
    "throttle",
    "read_delay",
    "read_throttle",
    "close_after",
    "reset_after",
    "stall_after",
    "close_after_seconds",
    "reset_after_seconds",
    "stall_after_seconds",
    "slow_close",
)
_FLAGS = ("after_first_byte", "refuse", "blackhole", "pause_accepting")


def faults_from_args(args: argparse.Namespace) -> Faults | None:
    """The :class:`~anyecho.Faults` the options of :func:`add_fault_arguments` ask
    for.

    ``None`` when no fault option was given (``--fault-fraction`` and ``--seed``
    alone inject nothing).

    :raises ValueError: for values that are invalid together

    .. code-block:: python

        faults = faults_from_args(args)
        config = ServerConfig(faults=faults)
    """
    pieces: tuple[int, float] | None = getattr(args, "fault_fragment", None)
    options: dict[str, object] = {
        name: getattr(args, f"fault_{name}", None) for name in _DIRECT
    }
    options.update(
        {name: bool(getattr(args, f"fault_{name}", False)) for name in _FLAGS}
    )
    distribution: JitterDistribution = getattr(
        args, "fault_jitter_distribution", "uniform"
    )
    if distribution != "uniform" and options["jitter"] is None:
        raise ValueError("--jitter-distribution needs --jitter")
    if options["after_first_byte"] and not any(
        options[f"{mode}_after_seconds"] is not None
        for mode in ("close", "reset", "stall")
    ):
        raise ValueError("--after-first-byte needs a --*-after-seconds option")
    faults = Faults(
        **options,  # type: ignore[arg-type]
        jitter_distribution=distribution,
        fragment=pieces[0] if pieces else None,
        fragment_pause=pieces[1] if pieces else 0.0,
        fraction=getattr(args, "fault_fraction", 1.0),
        seed=getattr(args, "fault_seed", None),
    )
    return faults if faults.active else None
