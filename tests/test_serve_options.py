"""``anyecho serve`` options as an operator uses them: subprocesses, real signals."""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import ssl
import sys
from pathlib import Path

import pytest
import trustme

from .processes import ServerProcess, echo_once, one_line_error
from .utils import TIMEOUT

Run = type[ServerProcess]


def stop(server: ServerProcess, signum: int = signal.SIGTERM) -> str:
    server.proc.send_signal(signum)
    status, stderr = server.finish()
    assert status == 0, stderr
    assert "Traceback" not in stderr
    return stderr


def test_unix_socket_served_and_removed(run: Run, backend_name: str) -> None:
    path = f"/tmp/anyecho-cli-{os.getpid()}.sock"
    try:
        server = run("serve", "--unix", path, "--backend", backend_name)
        server.wait_for(re.escape(f"serving echo on unix://{path}"))
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"unix")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"unix"
        assert oct(os.stat(path).st_mode & 0o777) == "0o600"
        second = one_line_error("serve", "--unix", path)
        assert second[0] == 1
        assert "a live server listens there" in second[1]
        stop(server)
        assert not os.path.exists(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def test_tls_options(
    run: Run, tmp_path: Path, backend_name: str, anyecho_ca: trustme.CA
) -> None:
    ca = anyecho_ca
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    server = run(
        "serve", "--port", "0", "--backend", backend_name,
        "--tls-cert", str(cert_file), "--tls-key", str(key_file),
    )  # fmt: skip
    port = int(server.wait_for(r"tls://127\.0\.0\.1:(\d+)").group(1))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"secret")
            assert tls.recv(100) == b"secret"
    # A plain-text client gets one concise line in the log, and nothing else.
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as plain:
        plain.sendall(b"hello\r\n")
        try:
            assert plain.recv(100) == b""
        except ConnectionResetError:
            pass
    server.wait_for("TLS handshake failed")
    stderr = stop(server)
    assert "tls 1" in stderr


def test_tls_bad_files(tmp_path: Path) -> None:
    status, line = one_line_error(
        "serve", "--tls-cert", str(tmp_path / "nope.pem"), "--port", "0"
    )
    assert status == 2
    assert "cannot load TLS certificate" in line


def test_udp_and_stats(run: Run, backend_name: str) -> None:
    server = run(
        "serve", "--port", "0", "--udp", "--backend", backend_name,
        "--stats-interval", "0.2",
    )  # fmt: skip
    port = int(server.wait_for(r"udp://127\.0\.0\.1:(\d+)").group(1))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(TIMEOUT)
        client.sendto(b"datagram", ("127.0.0.1", port))
        assert client.recvfrom(100) == (b"datagram", ("127.0.0.1", port))
    server.wait_for(r"stats: .*datagrams 1 echoed / 0 dropped")
    assert "datagrams 1 echoed" in stop(server)


def test_json_logs(run: Run) -> None:
    server = run("serve", "--port", "0", "--log-format", "json", "--backend", "asyncio")
    line = server.wait_for(r"serving echo on").string
    entry = json.loads(line)
    assert entry["level"] == "info"
    assert entry["logger"] == "anyecho"
    assert entry["pid"] == server.proc.pid
    assert entry["message"].startswith("serving echo on tcp://127.0.0.1:")
    stop(server)


def test_fault_options(run: Run, backend_name: str) -> None:
    server = run(
        "serve", "--port", "0", "--backend", backend_name, "--close-after", "4"
    )
    server.wait_for("injecting faults: close after 4 B")
    port = server.wait_port()
    assert echo_once(port, b"abcdefgh") == b"abcd"
    stop(server)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
        (["--unix", "/tmp/x.sock", "--udp"], "--udp needs"),
        (["--workers", "2", "--unix", "/tmp/x.sock", "--port", "0"], "--workers"),
        (["--max-connections", "-3"], "invalid count '-3'"),
        (["--unix-mode", "999"], "invalid mode '999'"),
        (["--udp-blocked-ports", "5-1"], "invalid port range"),
        (["--receive-size", "0"], "invalid receive_size 0"),
        (["--idle-timeout", "-1"], "invalid value '-1'"),
    ],
)
def test_more_bad_options(args: list[str], message: str) -> None:
    status, line = one_line_error("serve", *args)
    assert status == 2
    assert message in line


def worker_totals(stderr: str) -> dict[int, int]:
    """Connections each worker served, from its own summary line."""
    return {
        int(pid): int(total)
        for pid, total in re.findall(
            r"anyecho\[(\d+)\]: server stopped: connections 0 active / (\d+) total",
            stderr,
        )
    }


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")
def test_workers_share_the_port(run: Run) -> None:
    server = run("serve", "--port", "0", "--workers", "2", "--backend", "asyncio")
    ports = {server.wait_port(), server.wait_port()}
    assert len(ports) == 1, "every worker listens on the same port"
    [port] = ports
    clients = 60
    for index in range(clients):
        data = b"%d" % index
        assert echo_once(port, data) == data
    # A worker that dies is reported and replaced; the service goes on.
    pids = [
        int(p) for p in re.findall(r"anyecho\[(\d+)\]: serving", "".join(server.stderr))
    ]
    os.kill(pids[0], signal.SIGKILL)
    server.wait_for(rf"worker \d \(pid {pids[0]}\) was killed by SIGKILL")
    server.wait_port()  # the replacement is listening
    assert echo_once(port, b"after") == b"after"
    stderr = stop(server, signal.SIGINT)
    assert "all workers stopped" in stderr
    totals = worker_totals(stderr)
    assert len(totals) == 2, stderr  # the survivor and the replacement
    assert sum(totals.values()) >= 1
    spread = [t for t in totals.values() if t]
    survivor_total = totals.get(pids[1], 0)
    # Connections spread: the survivor alone did not get all 60 of the first.
    assert 0 < survivor_total < clients + 1, spread


@pytest.mark.skipif(not Path("/proc").exists(), reason="Linux resource limits")
def test_survives_running_out_of_descriptors(run: Run, backend_name: str) -> None:
    limit = 64

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    server = run(
        "serve", "--port", "0", "--backend", backend_name, preexec_fn=low_fd_limit
    )
    port = server.wait_port()
    clients = [
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        for _ in range(2 * limit)
    ]
    server.wait_for(r"accept failed \(OSError: \[Errno 24\] Too many open files\)")
    for sock in clients:
        sock.close()
    # With the clients gone it serves again: the new client waits its turn in
    # the listen queue behind the closed ones.
    assert echo_once(port, b"alive") == b"alive"
    stderr = stop(server)
    assert re.search(r"errors: accept \d+", stderr)
