"""Log lines that a peer can cause, bounded so that no peer can flood the log."""

from __future__ import annotations

import logging
import time
from typing import Any, Final

__all__ = ["LogLimiter"]

#: Lines of one kind logged per window before the rest are only counted.
BURST: Final = 5
#: The window, in seconds.
WINDOW: Final = 60.0


class LogLimiter:
    """Log at most ``burst`` lines of one kind per ``window`` seconds.

    The lines past the burst are counted, and one line says how many there were
    when the window is over (at the next line of that kind, or at :meth:`flush`).
    Memory is constant: a counter and a deadline. Whatever a peer does, it adds
    at most ``burst + 1`` lines per window to the log.

    :param logger: where to log
    :param level: the level of every line
    :param what: how the summary line names the lines it stands for
    """

    __slots__ = (
        "_burst",
        "_level",
        "_logged",
        "_logger",
        "_suppressed",
        "_what",
        "_window",
        "_window_end",
    )

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        what: str,
        *,
        burst: int = BURST,
        window: float = WINDOW,
    ) -> None:
        self._logger = logger
        self._level = level
        self._what = what
        self._burst = burst
        self._window = window
        self._window_end = 0.0
        self._logged = 0
        self._suppressed = 0

    def __call__(self, message: str, *args: Any, exc_info: bool = False) -> None:
        """Log ``message % args``, unless this window's burst is spent."""
        if not self._logger.isEnabledFor(self._level):
            return
        now = time.monotonic()
        if now >= self._window_end:
            self.flush()
            self._window_end = now + self._window
            self._logged = 0
        if self._logged < self._burst:
            self._logged += 1
            self._logger.log(self._level, message, *args, exc_info=exc_info or None)
        else:
            self._suppressed += 1

    def flush(self) -> None:
        """Log how many lines were left out since the last such line, if any."""
        if self._suppressed:
            self._logger.log(
                self._level,
                "%d more %s, not logged one by one (at most %d every %gs are)",
                self._suppressed,
                self._what,
                self._burst,
                self._window,
            )
            self._suppressed = 0
