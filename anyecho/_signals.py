"""Stop requests for ``anyecho serve`` and its supervisor: signals, and more.

SIGINT, SIGTERM and SIGHUP each ask for a graceful stop; a second request stops at
once. The entry points install :data:`stop_requests` before anything else (this
module imports nothing heavy), and it stays installed until the process is done
with its work: its handler only records the request and writes a byte to a
wake-up pipe, so it is safe at any moment, during imports, while a child is being
started or while an event loop waits. The code that runs then (the server's
signal task, the supervisor's loop) acts on the recorded requests. Once the
server or the supervisor has stopped, :meth:`StopRequests.ignore` ignores the
signals for the rest of the teardown, so that a late signal can change neither
the exit status nor the output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType
    from typing import Any, TypeAlias

    _Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | None

__all__ = ["STOP_SIGNALS", "StopRequests", "stop_requests"]

#: The signals that stop ``anyecho serve`` (gracefully; a second one, at once).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequests:
    """Stop requests recorded for a main loop: signal names, or other reasons."""

    def __init__(self) -> None:
        #: Every request so far, oldest first, e.g. ``["SIGTERM"]``.
        self.reasons: list[str] = []
        self._previous: dict[int, _Handler] = {}
        self._installed = False
        self._wakeup: tuple[int, int] | None = None

    @property
    def installed(self) -> bool:
        return self._installed

    def install(self) -> None:
        """Handle the stop signals from now on (main thread only; idempotent).

        A signal that the process inherited as ignored (``nohup`` ignores SIGHUP)
        stays ignored. The stop signals are then unblocked: a supervisor starts
        its workers with them blocked, so that a stop sent to a worker that is
        still starting waits for this handler instead of killing it.
        """
        if self._installed or threading.current_thread() is not threading.main_thread():
            return
        handled = []
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if previous == signal.SIG_IGN:
                continue
            self._previous[signum] = previous
            signal.signal(signum, self._handle)
            handled.append(signum)
        self._installed = True
        signal.pthread_sigmask(signal.SIG_UNBLOCK, handled)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.request(signal.Signals(signum).name)

    def request(self, reason: str) -> None:
        """Record a stop request and wake the loop (safe from any thread)."""
        self.reasons.append(reason)
        if self._wakeup is not None:
            # Full: the loop wakes anyway. Closed: nobody is waiting any more.
            with contextlib.suppress(OSError):
                os.write(self._wakeup[1], b"\0")

    def wakeup_fd(self) -> int:
        """A non-blocking pipe that turns readable on each request from now on."""
        if self._wakeup is None:
            read, write = os.pipe()
            os.set_blocking(read, False)
            os.set_blocking(write, False)
            self._wakeup = (read, write)
        return self._wakeup[0]

    def drain(self) -> None:
        """Empty the wake-up pipe (the requests themselves stay in ``reasons``)."""
        if self._wakeup is None:
            return
        try:
            while os.read(self._wakeup[0], 4096):
                pass
        except BlockingIOError:
            pass

    def ignore(self) -> None:
        """Ignore the stop signals from now on, through the process's exit."""
        for signum in self._previous:
            signal.signal(signum, signal.SIG_IGN)

    def restore(self) -> None:
        """Put the handlers back as they were before :meth:`install`."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
        self._installed = False
        self.reasons.clear()
        if self._wakeup is not None:
            for fd in self._wakeup:
                os.close(fd)
            self._wakeup = None


#: The process's stop requests (one process, one set of signal handlers).
stop_requests = StopRequests()
