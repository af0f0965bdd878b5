"""Byte sizes as people write them: ``64``, ``1k``, ``64KiB``, ``1m``, ``1 MiB``."""

from __future__ import annotations

import re

__all__ = ["format_size", "parse_size"]

_SIZE = re.compile(r"(\d+)\s*([kmg]?)(?:i?b)?", re.IGNORECASE)
_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Parse a byte count; ``k``, ``m`` and ``g`` (or KiB, MiB, GiB) are powers of 2.

    :raises ValueError: for anything else
    """
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number like 64, 1k, 1MiB")
    return int(match[1]) * _FACTORS[match[2].lower()]


def format_size(size: int) -> str:
    """``64 B``, ``1 KiB``, ``64 KiB``, ``1 MiB``; sizes that are not whole KiB or
    MiB stay in bytes."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"
