"""``anyecho serve`` as a user runs it: a subprocess, real signals, real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from anyecho.cli import build_parser, main

from .processes import ServerProcess, echo_once, one_line_error
from .utils import TIMEOUT


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "70000"], "invalid port 70000"),
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

