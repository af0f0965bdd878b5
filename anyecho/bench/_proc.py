"""Child processes: starting and stopping them, reading their output, CPU time."""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from typing import IO

__all__ = [
    "LineReader",
    "cpu_seconds",
    "pin",
    "python_command",
    "spawn",
    "stop",
    "usable_cpus",
    "user_system_seconds",
]

#: How long a child may take to exit after SIGTERM before it is killed (seconds).
STOP_TIMEOUT = 5.0


def spawn(
    argv: Sequence[str],
    cpus: Collection[int] | None,
    *,
    merge_stderr: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start ``argv`` with pipes for its standard streams, pinned to ``cpus``.

    With ``merge_stderr``, its standard error goes into the standard output pipe.
    The child gets a session of its own, so that a Ctrl-C in the terminal reaches
    only the benchmark, which then stops its children itself.
    """
    process = subprocess.Popen(  # noqa: S603 - this interpreter, a bench module
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        errors="replace",
        bufsize=1,
        start_new_session=True,
        env=None if env is None else {**os.environ, **env},
    )
    if cpus is not None:
        pin(process.pid, cpus)
    return process


def stop(process: subprocess.Popen[str]) -> None:
    """Stop ``process``: close its input, SIGTERM, then SIGKILL after a timeout."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):  # a broken pipe: the child is gone
            process.stdin.close()
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def usable_cpus() -> list[int] | None:
    """The CPUs this process may run on, or ``None`` where affinity is unsupported."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    return sorted(os.sched_getaffinity(0))


def pin(pid: int, cpus: Collection[int]) -> None:
    """Restrict process ``pid`` (``0``: this one) to ``cpus``, where supported."""
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(ProcessLookupError):  # it exited: its caller sees why
            os.sched_setaffinity(pid, cpus)


def cpu_seconds(pid: int | None) -> float | None:
    """CPU time (user + system, all threads) that process ``pid`` has used so far.

    Reads Linux's ``/proc``: the nanosecond counters of ``schedstat`` where the
    kernel keeps them, else ``utime + stime`` from ``stat`` (in clock ticks).
    Returns ``None`` elsewhere, once the process is gone, or without a ``pid``.
    """
    if pid is None:
        return None
    with contextlib.suppress(OSError, ValueError, IndexError):
        return _schedstat_seconds(pid)
    try:
        return _stat_seconds(pid)
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _schedstat_seconds(pid: int) -> float:
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as file:
            total += int(file.read().split()[0])
    return total / 1e9


def _stat_seconds(pid: int) -> float:
    return sum(user_system_seconds(pid))


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of process ``pid`` so far (``/proc``'s ``stat``,
    in clock ticks: 10 ms on most kernels). Raises :exc:`OSError` if it is gone."""
    with open(f"/proc/{pid}/stat") as file:
        # The command name may hold spaces: count the fields after its ')'.
        fields = file.read().rpartition(")")[2].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class LineReader:
    """Read a child's text pipe in a thread, line by line, as it writes them.

    The last ``keep`` lines are kept for error messages (:attr:`tail`); up to
    ``pending`` unread ones wait for :meth:`get` (further ones are only kept in the
    tail).
    """

    def __init__(self, pipe: IO[str], *, keep: int = 40, pending: int = 1000) -> None:
        self.tail: deque[str] = deque(maxlen=keep)
        self._lines: queue.Queue[str | None] = queue.Queue(maxsize=pending + 1)
        self._pending = pending
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[str]) -> None:
        try:
            for raw in pipe:
                line = raw.rstrip("\n")
                self.tail.append(line)
                if self._lines.qsize() < self._pending:
                    self._lines.put(line)
        except (OSError, ValueError):  # the pipe was closed under us
            pass
        finally:
            self._lines.put(None)

    def get(self, timeout: float) -> str | None:
        """The next line; ``None`` at the end of the output.

        :raises TimeoutError: when no line comes within ``timeout`` seconds
        """
        try:
            return self._lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError from None

    def join(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the end of the output."""
        self._thread.join(timeout)


def python_command(module: str, *args: str) -> list[str]:
    """``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]
