"""Plumbing for the documentation's runnable examples (``sphinx-build -b doctest``).

The examples show what a reader would type; the hidden set-up blocks use these
helpers to provide what the reader is assumed to have running: an ``anyecho
serve`` process, or an asyncio server in the background.
"""

from __future__ import annotations

import asyncio
import asyncio.streams
import inspect
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import IO, Any

__all__ = [
    "LOOP_REPORTS_HANDLER_ERRORS",
    "CliServer",
    "LoopWithoutAccept",
    "ThreadServer",
    "serve_in_thread",
]

#: Whether this Python's ``asyncio.start_server`` passes a handler's exception to
#: the event loop's exception handler (and closes the connection).
LOOP_REPORTS_HANDLER_ERRORS = "Unhandled exception in client_connected_cb" in (
    inspect.getsource(asyncio.streams)
)

_READY = re.compile(r"serving echo on (?:tcp|tls)://([\d.]+):(\d+)")

#: How long a server may take to start or stop (seconds).
TIMEOUT = 30.0


class LoopWithoutAccept(asyncio.SelectorEventLoop):
    """An asyncio loop that cannot adopt accepted sockets, as rloop cannot."""

    connect_accepted_socket = asyncio.AbstractEventLoop.connect_accepted_socket  # type: ignore[assignment]


class CliServer:
    """``python -m anyecho serve ARGS`` in a child process, listening once built.

    :param args: options for ``anyecho serve``; ``--port 0`` is usual
    :param ready_lines: how many "serving echo on" lines to wait for (one per
        worker process with ``--workers``)
    :ivar port: the port it listens on, read from its first log line
    :ivar first_line: the first such log line
    :ivar lines: every line logged until then
    """

    def __init__(self, *args: str, ready_lines: int = 1) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, anyecho
            [sys.executable, "-m", "anyecho", "serve", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        stderr: IO[str] | None = self.process.stderr
        assert stderr is not None
        self._stderr = stderr
        self.first_line = ""
        self.port = 0
        timer = threading.Timer(TIMEOUT, self.process.kill)
        timer.start()
        try:
            ready = 0
            for line in stderr:
                self.lines.append(line)
                match = _READY.search(line)
                if match:
                    self.first_line = self.first_line or line.rstrip("\n")
                    self.port = int(match[2])
                    ready += 1
                    if ready == ready_lines:
                        break
        finally:
            timer.cancel()
        if not self.port:
            self.process.wait()
            output = "".join(self.lines)
            raise RuntimeError(f"anyecho serve did not start: {output}")

    def stop(self) -> tuple[int, list[str]]:
        """Send SIGTERM (a graceful stop); the exit status and the rest of the log."""
        self.process.send_signal(signal.SIGTERM)
        _, rest = self.process.communicate(timeout=TIMEOUT)
        return self.process.returncode, rest.splitlines()


class ThreadServer:
    """An ``asyncio.start_server`` server running in a daemon thread.

    :ivar port: the port it listens on (on 127.0.0.1)
    :ivar loop_errors: what reached the event loop's exception handler, in order
        (the ``context`` dictionaries: ``message``, ``exception``, ...)
    """

    def __init__(self, port: int, loop_errors: list[dict[str, Any]]) -> None:
        self.port = port
        self.loop_errors = loop_errors


def serve_in_thread(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> ThreadServer:
    """Serve ``handler`` with ``asyncio.start_server`` in a daemon thread.

    The server listens on 127.0.0.1 and a free port and runs until the process
    ends, as ``serve_forever()`` would. Errors the event loop reports are kept
    (in :attr:`ThreadServer.loop_errors`) instead of logged.
    """
    ready = threading.Event()
    port: list[int] = []
    loop_errors: list[dict[str, Any]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: loop_errors.append(context))
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        port.append(server.sockets[0].getsockname()[1])
        ready.set()
        async with server:
            await server.serve_forever()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(TIMEOUT):
        raise RuntimeError("the asyncio server did not start")
    return ThreadServer(port[0], loop_errors)
