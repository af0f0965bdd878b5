"""Argument types of the command line: one grammar for each kind of value.

Numbers are written the same way in every option: an integer or a decimal
(``5``, ``0.25``, ``.5``), never a sign, an exponent, NaN or an infinity. Sizes
and byte rates add an optional suffix (:data:`SIZE_SYNTAX`, parsed by
:func:`parse_size`); durations are seconds, or a number with a unit
(:data:`DURATION_SYNTAX`, parsed by :func:`parse_duration`). Each type checks
the syntax, and what every value of its kind must be (a rate is above 0, a
fraction at most 1); whether a setting may be 0 is for
:class:`anyecho.ServerConfig` or :class:`anyecho.Faults` to say, which the
commands ask. ``0`` meaning "no limit" becomes ``None`` in one place:
:func:`zero_is_none`.

Used by ``anyecho serve``, its fault options and ``anyecho bench``; this module
imports only the standard library when it loads, and nothing of the commands.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TypeVar

__all__ = [
    "DURATION",
    "DURATION_SYNTAX",
    "SIZE_SYNTAX",
    "backend_name",
    "byte_count",
    "byte_rate",
    "byte_size",
    "count",
    "count_or_auto",
    "duration_of",
    "file_mode",
    "format_size",
    "fraction",
    "host_name",
    "host_port",
    "parse_duration",
    "parse_host_port",
    "parse_number",
    "parse_port_set",
    "parse_size",
    "port_number",
    "port_set",
    "positive_count",
    "positive_seconds",
    "rate",
    "seconds",
    "seed",
    "zero_is_none",
]

T = TypeVar("T")

#: How sizes and byte rates are written: the wording of every help text and error.
SIZE_SYNTAX = (
    "a number of bytes with an optional k, M or G (KiB, MiB, GiB: powers of 1024), "
    "such as 512, 64k or 1.5M"
)

#: How durations are written: the wording of every help text and error.
DURATION_SYNTAX = (
    "seconds, or a number with a unit ms, s or m, such as 0.05, 50ms, 2s or 1.5m"
)

#: An unsigned integer or decimal.
NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_NUMBER = re.compile(NUMBER)
#: A duration: a number and an optional unit (two groups).
DURATION = rf"{NUMBER}\s*(ms|s|m)?"
_DURATION = re.compile(DURATION, re.IGNORECASE)
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0}
# k, ki, kb or kib (any case), or a bare b.
_SIZE = re.compile(rf"{NUMBER}\s*(?:([kmg])i?b?|b)?", re.IGNORECASE)
_FACTORS = {None: 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_number(text: str) -> float:
    """An integer or a decimal, >= 0 and finite: ``5``, ``0.25``, ``.5``.

    :raises ValueError: for anything else (a sign, an exponent, ``nan``, ``inf``)
    """
    match = _NUMBER.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid number {text!r}")
    return float(match[1])


def parse_duration(text: str, what: str = "duration") -> float:
    """A duration in seconds, written as :data:`DURATION_SYNTAX` says: ``0.05``,
    ``50ms``, ``2s``, ``1.5m``.

    :param what: names the value in the error message
    :raises ValueError: with a one-line message
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid {what} {text!r}: expected {DURATION_SYNTAX}")
    return duration_of(match[1], match[2])


def duration_of(number: str, unit: str | None) -> float:
    """The seconds of a :data:`DURATION` match's two groups."""
    return float(number) * _UNITS[unit and unit.lower()]


def _scaled(text: str) -> float | None:
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        return None
    return float(match[1]) * _FACTORS[match[2] and match[2].lower()]


def parse_size(text: str, what: str = "size") -> int:
    """Parse a number of bytes, written as :data:`SIZE_SYNTAX` says.

    ``k``, ``M`` and ``G`` are powers of 1024, in any case, with or without ``i``
    and ``B`` (``64k``, ``64KiB`` and ``64kb`` are all 65536); a decimal must come
    to a whole number of bytes (``1.5k`` is 1536; ``1.5`` is an error).

    :param what: names the value in the error message
    :raises ValueError: with a one-line message
    """
    value = _scaled(text)
    if value is None or not value.is_integer():
        raise ValueError(f"invalid {what} {text!r}: expected {SIZE_SYNTAX}")
    return int(value)


def format_size(size: int) -> str:
    """``64 B``, ``1 KiB``, ``64 KiB``, ``1 MiB``; sizes that are not whole KiB or
    MiB stay in bytes."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def _argument(parse: Callable[[str], T], text: str) -> T:
    """``parse(text)``, with its :exc:`ValueError` as argparse's error."""
    try:
        return parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def byte_size(text: str) -> int:
    """A size in bytes (``--receive-size``, ``--sizes``)."""
    return _argument(parse_size, text)


def byte_count(text: str) -> int:
    """A number of bytes counted (``--close-after``)."""
    return _argument(lambda t: parse_size(t, "byte count"), text)


def byte_rate(text: str) -> float:
    """Bytes per second, > 0; a decimal need not come to whole bytes."""
    value = _scaled(text)
    if value is None or value <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: expected bytes per second > 0, as {SIZE_SYNTAX}"
        )
    return value


def rate(text: str) -> float:
    """A number of events per second, > 0 (``--udp-rate``)."""
    try:
        value = parse_number(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a number per second > 0"
        )
    return value


def seconds(text: str) -> float:
    """A duration, such as ``5``, ``0.25`` or ``50ms`` (0 included)."""
    return _argument(lambda t: parse_duration(t, "value"), text)


def positive_seconds(text: str) -> float:
    """A number of seconds > 0 (where 0 means nothing)."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError(
            f"invalid value {text!r}: expected a number of seconds > 0"
        )
    return value


def count(text: str) -> int:
    """A count: an integer >= 0."""
    if not re.fullmatch(r"\d+", text.strip()):
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected an integer >= 0"
        )
    return int(text)


def positive_count(text: str) -> int:
    """A count >= 1."""
    try:
        value = count(text)
    except argparse.ArgumentTypeError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected an integer >= 1"
        )
    return value


def count_or_auto(text: str) -> int | str:
    """A count, or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return count(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid count {text!r}: expected 'auto' or an integer >= 0"
        ) from exc


def zero_is_none(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """``parse``, with any spelling of 0 (``0``, ``0.0``, ``0k``) as ``None``.

    The one place where the command line's "0 for no limit" (or "for never")
    becomes the ``None`` of the settings.
    """

    def parse_or_none(text: str) -> T | None:
        value = parse(text)
        return None if value == 0 else value

    parse_or_none.__name__ = getattr(parse, "__name__", "value")
    return parse_or_none


def fraction(text: str) -> float:
    """A number from 0 to 1."""
    try:
        value = parse_number(text)
    except ValueError:
        value = 2.0
    if value > 1:
        raise argparse.ArgumentTypeError(
            f"invalid fraction {text!r}: expected a number from 0 to 1"
        )
    return value


def seed(text: str) -> int:
    """An integer, which may be negative."""
    try:
        return int(text, 10)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"invalid seed {text!r}: expected an integer"
        ) from exc


def port_number(text: str) -> int:
    """A TCP/UDP port number (0 picks a free port)."""
    if not re.fullmatch(r"\s*\d+\s*", text):
        raise argparse.ArgumentTypeError(
            f"invalid port {text!r}: expected an integer from 0 to 65535"
        )
    return int(text)


def parse_port_set(text: str) -> frozenset[int]:
    """Parse ``"0-1023,1900,5353"`` into a set of ports (``ValueError`` if bad)."""
    ports: set[int] = set()
    for item in filter(None, (part.strip() for part in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not match:
            raise ValueError(f"invalid port list item {item!r}: expected N or N-M")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if not 0 <= low <= high <= 65535:
            raise ValueError(
                f"invalid port range {item!r}: expected 0 <= N <= M <= 65535"
            )
        ports.update(range(low, high + 1))
    return frozenset(ports)


def port_set(text: str) -> frozenset[int]:
    """A port list such as ``0-1023,1900``."""
    return _argument(parse_port_set, text)


def file_mode(text: str) -> int:
    """Octal permissions such as ``600`` or ``0o660``."""
    digits = text.strip().removeprefix("0o")
    if not re.fullmatch(r"[0-7]+", digits):
        raise argparse.ArgumentTypeError(
            f"invalid mode {text!r}: expected octal permissions such as 600"
        )
    return int(digits, 8)


def host_name(text: str) -> str:
    """A host to listen on: a name or an address, or ``*`` for every interface.

    An empty one (say, an unset ``$HOST``) is an error rather than a synonym for
    ``*``: listening everywhere must be asked for.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"invalid host {text!r}: expected a host name or address, "
            "or '*' for every interface"
        )
    return text


#: How an endpoint's address is written (``--control``).
HOST_PORT_SYNTAX = "PORT, HOST:PORT or [IPv6]:PORT, such as 8001 or 127.0.0.1:8001"

_HOST_PORT = re.compile(r"(?:(\[[^\]]*\]|[^:\[\]]*):)?(\d+)")


def parse_host_port(text: str, default_host: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or ``PORT`` (on ``default_host``).

    ``*`` for the host is every interface, as for ``--host``; an IPv6 address is
    written in brackets. The host is returned without them.

    :raises ValueError: with a one-line message
    """
    match = _HOST_PORT.fullmatch(text.strip())
    port = int(match[2]) if match else -1
    if match is None or not 0 <= port <= 65535:
        raise ValueError(f"invalid address {text!r}: expected {HOST_PORT_SYNTAX}")
    host = match[1]
    if host is None:
        return default_host, port
    host = host.removeprefix("[").removesuffix("]").strip()
    if not host:
        raise ValueError(
            f"invalid address {text!r}: the host is empty ('*' for every interface)"
        )
    return host, port


def host_port(default_host: str) -> Callable[[str], tuple[str, int]]:
    """The type of an address to serve an endpoint on: a port alone is on
    ``default_host``."""

    def address(text: str) -> tuple[str, int]:
        return _argument(lambda t: parse_host_port(t, default_host), text)

    return address


def backend_name(text: str) -> str:
    """A backend name; whether it can run is checked once the options are parsed."""
    from ._backends import BACKEND_NAMES

    if text in BACKEND_NAMES or text.startswith("asyncio:"):
        return text
    choices = ", ".join(BACKEND_NAMES)
    raise argparse.ArgumentTypeError(
        f"unknown backend {text!r} (choose from {choices}, or asyncio:MODULE:FACTORY)"
    )
