"""``anyecho serve`` as a user runs it: a subprocess, real signals, real sockets."""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from anyecho import ServerConfig
from anyecho.cli import build_parser, main
from anyecho.cli._serve import config_from_args, serve_command

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


# -- one grammar for every option, one source for every default -------------------


def parse_serve(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", *argv])


@pytest.mark.parametrize(
    ("text", "size"),
    [("512", 512), ("64k", 65536), ("64KiB", 65536), ("64kb", 65536),
     ("1.5k", 1536), ("1M", 1 << 20), ("2 MiB", 2 << 20), ("1G", 1 << 30)],
)  # fmt: skip
def test_one_size_grammar_everywhere(text: str, size: int) -> None:
    args = parse_serve(
        "--receive-size", text, "--throttle", text, "--close-after", text,
        "--udp-byte-rate", text,
    )  # fmt: skip
    assert args.receive_size == size
    assert args.fault_throttle == size
    assert args.fault_close_after == size
    assert args.udp_byte_rate == size
    bench = build_parser().parse_args(["bench", "--sizes", text])
    assert bench.sizes == (size,)


def test_sizes_have_the_same_help_everywhere() -> None:
    from anyecho._args import SIZE_SYNTAX

    text = " ".join(build_parser().format_help().split())
    serve = " ".join(main_help("serve").split())
    bench = " ".join(main_help("bench").split())
    assert "k and m" not in text + serve + bench
    for help_text in (serve, bench):
        assert SIZE_SYNTAX in help_text


def main_help(command: str) -> str:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "==SUPPRESS==" and a.choices)
    choices: Any = action.choices
    return str(choices[command].format_help())


@pytest.mark.parametrize("zero", ["0", "0.0", "0.00", "00", ".0"])
def test_zero_in_any_spelling_means_never(zero: str) -> None:
    assert (
        config_from_args(parse_serve("--idle-timeout", zero), None).idle_timeout is None
    )
    drain = config_from_args(parse_serve("--drain-timeout", zero), None)
    assert drain.drain_timeout == 0


@pytest.mark.parametrize("zero", ["0", "00"])
def test_zero_count_means_no_limit(zero: str) -> None:
    args = parse_serve("--max-connections", zero, "--max-connections-per-source", zero)
    config = config_from_args(args, None)
    assert config.max_connections is None
    assert config.max_connections_per_source is None


@pytest.mark.parametrize(
    "option", ["--idle-timeout", "--drain-timeout", "--tls-handshake-timeout",
               "--udp-rate", "--throttle", "--receive-size", "--delay"],
)  # fmt: skip
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1e3"])
def test_no_option_takes_nan_or_infinity(option: str, bad: str) -> None:
    with pytest.raises(SystemExit) as info:
        parse_serve(option, bad)
    assert info.value.code == 2


def test_defaults_are_the_settings_defaults() -> None:
    config = config_from_args(parse_serve(), None)
    assert config == ServerConfig()


def test_settings_are_validated_by_the_config() -> None:
    with pytest.raises(ValueError, match=r"invalid tls_handshake_timeout 0\.0"):
        config_from_args(parse_serve("--tls-handshake-timeout", "0"), None)


def test_usage_and_runtime_errors_share_one_prefix() -> None:
    assert one_line_error("serve", "--port", "x")[1].startswith("anyecho: error:")
    assert one_line_error("bench", "--sizes", "x")[1].startswith("anyecho: error:")
    status, line = one_line_error("serve", "--host", "no-such-host.invalid")
    assert status == 1
    assert line.startswith("anyecho: error: cannot resolve host")
    status, line = one_line_error("serve", "--receive-size", "0")
    assert status == 2
    assert line.startswith("anyecho: error: invalid receive_size 0")


def test_a_failure_keeps_its_cause() -> None:
    from anyecho.cli._exit import CommandError

    with pytest.raises(CommandError) as info:
        serve_command(parse_serve("--tls-cert", "/nonexistent/cert.pem"))
    assert info.value.status == 2
    assert info.value.__cause__ is not None


def test_faults_from_the_command_line_are_counted_in_the_summary(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = run(
        "serve", "--port", "0", "--backend", backend_name, "--reset-after", "0",
        "--backlog", "8",
    )  # fmt: skip
    port = server.wait_port()
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            with pytest.raises(ConnectionResetError):
                client.sendall(b"x")
                client.recv(1)
    server.proc.send_signal(signal.SIGINT)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "injecting faults: reset after 0 B; all connections" in stderr
    assert "faults injected: reset 2, errors: none" in stderr


def test_one_duration_grammar_everywhere() -> None:
    args = parse_serve(
        "--idle-timeout", "1.5m", "--drain-timeout", "500ms", "--delay", "50ms",
        "--slow-close", "2s",
    )  # fmt: skip
    assert args.idle_timeout == 90.0
    assert args.drain_timeout == 0.5
    assert args.fault_delay == 0.05
    assert args.fault_slow_close == 2.0
