"""``anyecho serve`` as a user runs it: a subprocess, real signals, real sockets."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from anyecho.cli import build_parser, main

from .utils import TIMEOUT


class ServerProcess:
    """``python -m anyecho ...`` with its stderr read line by line in a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "anyecho", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
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
        """Wait for exit; the status and the whole of stderr."""
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


@pytest.fixture
def run() -> Iterator[type[ServerProcess]]:
    started: list[ServerProcess] = []

    class Tracked(ServerProcess):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__(*args, env=env)
            started.append(self)

    yield Tracked
    for process in started:
        process.kill()


def echo_once(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["INT", "TERM"])
def test_serves_then_stops_on_signal(
    run: type[ServerProcess], backend_name: str, signum: signal.Signals
) -> None:
    server = run("serve", "--port", "0", "--backend", backend_name)
    port = server.wait_port()
    assert f"(backend {backend_name})" in server.stderr[-1]
    payload = os.urandom(1 << 20)
    assert echo_once(port, payload) == payload
    server.proc.send_signal(signum)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert f"{signum.name}: stopping gracefully" in stderr
    assert "connections 0 active / 1 total" in stderr


def test_second_signal_stops_at_once(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = run("serve", "--port", "0", "--backend", backend_name)
    port = server.wait_port()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as idle:
        idle.sendall(b"x")
        assert idle.recv(1) == b"x"
        server.proc.send_signal(signal.SIGTERM)
        server.wait_for("stopping gracefully")
        server.wait_for(r"1 connection\(s\) may finish")
        server.proc.send_signal(signal.SIGTERM)
        status, stderr = server.finish()
        assert idle.recv(1) == b""  # closed by the server, not by a timeout
    assert status == 0, stderr
    assert "stopping now" in stderr
    assert "Traceback" not in stderr


def test_default_backend_is_logged(run: type[ServerProcess]) -> None:
    server = run("serve", "--port", "0")
    port = server.wait_port()
    expected = "uvloop" if _importable("uvloop") else "asyncio"
    assert f"(backend {expected})" in server.stderr[-1]
    assert echo_once(port, b"auto") == b"auto"
    server.proc.send_signal(signal.SIGINT)
    assert server.finish()[0] == 0


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_module_and_script_entry_points() -> None:
    for command in (
        [sys.executable, "-m", "anyecho", "--version"],
        [str(Path(sys.executable).parent / "anyecho"), "--version"],
    ):
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        assert result.returncode == 0, result.stderr
        assert re.fullmatch(r"\d+\.\d+\.\d+.*\n", result.stdout)


def one_line_error(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "anyecho", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith("anyecho")
    assert ": error: " in lines[0]
    return result.returncode, lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "invalid port '70000'"),
        (["--port", "-1"], "invalid port '-1'"),
        (["--port", "http"], "invalid port 'http'"),
        (["--backend", "twisted"], "unknown backend 'twisted'"),
        (["--backend", "asyncio:no_such_module:new_event_loop"], "not installed"),
        (["--drain-timeout", "soon"], "invalid value 'soon'"),
        (["--log-level", "loud"], "invalid choice: 'loud'"),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    status, line = one_line_error("serve", *args)
    assert status == 2
    assert message in line


def test_no_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "anyecho"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 2
    assert "choose a command" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("backend", "extra"), [("trio", "trio"), ("uvloop", "uvloop")])
def test_missing_backend_package_names_the_extra(
    tmp_path: Path, backend: str, extra: str
) -> None:
    # A package that fails to import stands in for one that is not installed.
    (tmp_path / backend).mkdir()
    (tmp_path / backend / "__init__.py").write_text("raise ImportError('hidden')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    status, line = one_line_error("serve", "--backend", backend, env=env)
    assert status == 2
    assert f"pip install 'anyecho[{extra}]'" in line


def test_unresolvable_host() -> None:
    status, line = one_line_error(
        "serve", "--host", "no-such-host.invalid", "--port", "0"
    )
    assert status == 1
    assert "cannot resolve host 'no-such-host.invalid'" in line


def test_port_in_use(backend_name: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, line = one_line_error(
            "serve", "--port", str(port), "--backend", backend_name
        )
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}: " in line
    assert "in use" in line


def test_parser_documents_every_option() -> None:
    parser = build_parser()
    text = parser.format_help()
    assert "serve" in text
    with pytest.raises(SystemExit) as info:
        main(["serve", "--help"])
    assert info.value.code == 0
