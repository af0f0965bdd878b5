"""Running ``python -m anyecho`` as a subprocess, as a user would."""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Collection, Sequence

import pytest

from .utils import TIMEOUT


class ServerProcess:
    """``python -m anyecho ...`` with its stderr read line by line in a thread.

    ``python_options`` go before ``-m`` (``-X importtime``, say); ``blocked``
    signals start blocked in the child, so that one sent at once is delivered at
    the first moment the program unblocks it; ``pass_fds`` stay open in it.
    """

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        python_options: Sequence[str] = (),
        blocked: Collection[int] = (),
        pass_fds: Collection[int] = (),
    ) -> None:
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *python_options, "-m", "anyecho", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                preexec_fn=preexec_fn,  # noqa: PLW1509 - only setrlimit, in tests
                pass_fds=tuple(pass_fds),
            )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str) -> re.Match[str]:
        """The first stderr line matching ``pattern`` (fails on exit or timeout)."""
        while True:
            try:
                line = self.lines.get(timeout=TIMEOUT)
            except queue.Empty:
                pytest.fail(f"no line matching {pattern!r} in {TIMEOUT}s")
            if line is None:
                pytest.fail(f"exited without {pattern!r}: {''.join(self.stderr)}")
            self.stderr.append(line)
            if match := re.search(pattern, line):
                return match

    def wait_port(self) -> int:
        return int(self.wait_for(r"serving echo on tcp://127\.0\.0\.1:(\d+)").group(1))

    def finish(self) -> tuple[int, str]:
        """Wait for exit; the status and the whole of stderr.

        The whole: until every process that shares the stderr pipe (workers
        included) has exited.
        """
        status = self.proc.wait(timeout=TIMEOUT)
        while (line := self.lines.get(timeout=TIMEOUT)) is not None:
            self.stderr.append(line)
        return status, "".join(self.stderr)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def echo_once(port: int, payload: bytes) -> bytes:
    """One exchange on 127.0.0.1 with a client that shares no code with the server:
    the socket module."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def one_line_error(
    *args: str, env: dict[str, str] | None = None, pass_fds: Collection[int] = ()
) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "anyecho", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
        pass_fds=tuple(pass_fds),
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("anyecho")
    assert ": error: " in lines[0]
    return result.returncode, lines[0]
