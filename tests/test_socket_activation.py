"""Serving sockets the process was given: systemd socket activation and --fd."""

from __future__ import annotations

import os
import socket
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import anyecho
from anyecho import ServerConfig
from anyecho.testing import serving

from .processes import ServerProcess, echo_once, one_line_error
from .utils import TIMEOUT, exchange

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc to list listeners"
)

#: Run as ``python -c SHIM -m anyecho ...``: what systemd does between fork and
#: exec, it sets LISTEN_PID to the process's own id, then runs the rest of the
#: command line in that same process.
SHIM = (
    "import os, sys; os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes() -> set[int]:
    """Inodes of every listening TCP or Unix socket, and every UDP socket."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/net/{table}") as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(int(fields[9]))
    for table in ("udp", "udp6"):
        with open(f"/proc/net/{table}") as lines:
            inodes.update(int(line.split()[9]) for line in list(lines)[1:])
    with open("/proc/net/unix") as lines:
        for line in list(lines)[1:]:
            fields = line.split()
            if int(fields[3], 16) & 0x10000:  # __SO_ACCEPTCON
                inodes.add(int(fields[6]))
    return inodes


def listening_sockets(pid: int) -> set[int]:
    """The listening sockets (by inode) process ``pid`` holds."""
    return _socket_inodes(pid) & _listening_inodes()


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


@pytest.fixture
def tcp_listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def at_fd(sock: socket.socket, fd: int = 3) -> None:
    """Put ``sock`` at descriptor ``fd`` in the child (pass_fds keeps numbers)."""
    if sock.fileno() != fd:
        os.dup2(sock.fileno(), fd, inheritable=False)


@pytest.fixture
def fd3() -> Iterator[None]:
    """Descriptor 3 is free for the test to fill, and restored afterwards."""
    try:
        saved = os.dup(3)
    except OSError:
        saved = None
    yield
    if saved is None:
        os.closerange(3, 4)
    else:
        os.dup2(saved, 3)
        os.close(saved)


def activated(
    *args: str, count: int = 1, names: str | None = None, fds: tuple[int, ...] = (3,)
) -> ServerProcess:
    env = {**os.environ, "LISTEN_FDS": str(count)}
    env.pop("LISTEN_PID", None)
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    return ServerProcess(
        "serve", *args, env=env, pass_fds=fds, python_options=("-c", SHIM)
    )


@pytest.mark.usefixtures("fd3")
def test_socket_activation(tcp_listener: socket.socket, backend_name: str) -> None:
    at_fd(tcp_listener)
    port = tcp_listener.getsockname()[1]
    server = activated("--backend", backend_name, names="echo")
    try:
        server.wait_for(r"socket activation: serving fd 3 \(echo\)")
        listening = server.wait_for(r"serving echo on (.*) \(backend")
        assert listening.group(1) == f"tcp://127.0.0.1:{port}"
        # It never binds a socket of its own: the one given is all it listens on.
        assert listening_sockets(server.proc.pid) == {inode(tcp_listener)}
        payload = os.urandom(200_000)
        assert echo_once(port, payload) == payload
        server.proc.terminate()
        status, _ = server.finish()
        assert status == 0
    finally:
        server.kill()


@pytest.mark.usefixtures("fd3")
def test_activation_variables_are_not_inherited(tcp_listener: socket.socket) -> None:
    """A worker started by an activated server gets --fd, not LISTEN_*."""
    at_fd(tcp_listener)
    port = tcp_listener.getsockname()[1]
    server = activated("--workers", "2")
    try:
        for _ in range(2):
            server.wait_for(r"worker \d \(pid \d+\) is listening")
        assert echo_once(port, b"shared") == b"shared"
        assert listening_sockets(server.proc.pid) == {inode(tcp_listener)}
        server.proc.terminate()
        status, log = server.finish()
        assert status == 0
    finally:
        server.kill()
    assert "socket activation: serving fd 3" in log


@pytest.mark.usefixtures("fd3")
def test_activated_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "echo.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen()
    at_fd(sock)
    server = activated()
    try:
        server.wait_for(rf"serving echo on unix://{path} ")
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(TIMEOUT)
            client.connect(path)
            client.sendall(b"over unix")
            client.shutdown(socket.SHUT_WR)
            assert client.recv(100) == b"over unix"
        server.proc.terminate()
        assert server.finish()[0] == 0
    finally:
        server.kill()
        sock.close()
    assert os.path.exists(path), "the socket file is its owner's, not removed"


def test_fd_option(tcp_listener: socket.socket, backend_name: str) -> None:
    fd = tcp_listener.fileno()
    port = tcp_listener.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    server = ServerProcess(
        "serve",
        *("--backend", backend_name, "--fd", str(fd), "--fd", str(udp.fileno())),
        pass_fds=(fd, udp.fileno()),
    )
    try:
        server.wait_for(r"serving echo on ")
        assert echo_once(port, b"tcp") == b"tcp"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(TIMEOUT)
            client.bind(("127.0.0.1", 0))
            client.sendto(b"udp", udp.getsockname())
            assert client.recv(100) == b"udp"
        expected = {inode(tcp_listener), inode(udp)}
        assert listening_sockets(server.proc.pid) == expected
        server.proc.terminate()
        assert server.finish()[0] == 0
    finally:
        server.kill()
        udp.close()


def test_bad_descriptors(tmp_path: Path, tcp_listener: socket.socket) -> None:
    read, write = os.pipe()
    unbound = socket.socket()
    try:
        for fd, message in [
            (read, f"fd {read}: Socket operation on non-socket"),
            (unbound.fileno(), "a stream socket that does not listen"),
        ]:
            status, line = one_line_error("serve", "--fd", str(fd), pass_fds=[fd])
            assert status == 2
            assert message in line
    finally:
        os.close(read)
        os.close(write)
        unbound.close()
    status, line = one_line_error("serve", "--fd", "999")
    assert "fd 999: Bad file descriptor" in line
    fd = tcp_listener.fileno()
    for extra in (["--port", "0"], ["--host", "127.0.0.1"], ["--udp"]):
        status, line = one_line_error("serve", "--fd", str(fd), *extra, pass_fds=[fd])
        assert status == 2
        assert "binds none" in line
    status, line = one_line_error("serve", "--fd", "x")
    assert "invalid fd 'x'" in line


def test_listen_fds_reads_the_variables_once() -> None:
    pid = str(os.getpid())
    env = {"LISTEN_PID": pid, "LISTEN_FDS": "3", "LISTEN_FDNAMES": "a:b:c", "X": "1"}
    assert anyecho.listen_fds(env) == [(3, "a"), (4, "b"), (5, "c")]
    assert env == {"X": "1"}
    env = {"LISTEN_PID": pid, "LISTEN_FDS": "1"}
    assert anyecho.listen_fds(env, unset=False) == [(3, "unknown")]
    assert "LISTEN_FDS" in env
    assert anyecho.listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []
    assert anyecho.listen_fds({}) == []
    for bad in (
        {"LISTEN_PID": "x", "LISTEN_FDS": "1"},
        {"LISTEN_PID": pid, "LISTEN_FDS": "-1"},
        {"LISTEN_PID": pid, "LISTEN_FDS": "2", "LISTEN_FDNAMES": "one"},
    ):
        with pytest.raises(ValueError, match="invalid LISTEN_"):
            anyecho.listen_fds(bad)


def test_fds_settings_are_checked() -> None:
    for bad in ([-1], [True], ["3"], [3, 3]):
        with pytest.raises(ValueError, match="fd"):
            ServerConfig(fds=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="binds itself"):
        ServerConfig(fds=[3], udp=True)
    assert ServerConfig(fds=[3], port=None).fds == (3,)


@pytest.mark.anyio
async def test_library_serves_a_given_socket(tcp_listener: socket.socket) -> None:
    port = tcp_listener.getsockname()[1]
    with anyio.fail_after(TIMEOUT):
        async with serving(ServerConfig(fds=[tcp_listener.fileno()])) as server:
            assert [str(a) for a in server.addresses] == [f"tcp://127.0.0.1:{port}"]
            async with await server.connect() as stream:
                assert await exchange(stream, b"given") == b"given"
    # The server served a duplicate: the descriptor given is still the caller's.
    assert tcp_listener.getsockname()[1] == port
    assert tcp_listener.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)


@pytest.mark.anyio
async def test_a_given_socket_speaks_tls(
    tcp_listener: socket.socket,
    anyecho_server_ssl_context: ssl.SSLContext,
    anyecho_client_ssl_context: ssl.SSLContext,
) -> None:
    config = ServerConfig(
        fds=[tcp_listener.fileno()], ssl_context=anyecho_server_ssl_context
    )
    with anyio.fail_after(TIMEOUT):
        async with serving(
            config, client_ssl_context=anyecho_client_ssl_context
        ) as server:
            assert [a.transport for a in server.addresses] == ["tls"]
            async with await server.connect(server_hostname="localhost") as stream:
                await stream.send(b"secret")
                assert await stream.receive() == b"secret"
