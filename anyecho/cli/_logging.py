"""Logging for the commands: one line per message on stderr, as text or JSON."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

__all__ = ["add_logging_arguments", "configure_logging"]

logger = logging.getLogger("anyecho")


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, shared by the subcommands."""
    group = parser.add_argument_group("logging")
    group.add_argument(
        "--log-level",
        default="info",
        type=str.lower,
        choices=["debug", "info", "warning", "error", "critical"],
        help="log messages at this level and above (default: %(default)s)",
    )
    group.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="one line per message, as plain text or a JSON object "
        "(default: %(default)s)",
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S")
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(level: str, fmt: str) -> None:
    """Send the ``anyecho`` logger to stderr, one line per message."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = _JsonFormatter()
    else:
        formatter = logging.Formatter(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s[%(process)d]: "
            "%(message)s",
            "%Y-%m-%dT%H:%M:%S",
        )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
