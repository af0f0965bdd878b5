"""The control API over real HTTP, from a client to an ``anyecho serve --control``
subprocess on each backend; and its HTTP server's bounds, in process."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest

from anyecho.control import ControlAPI, faults_from_json, serve_control
from anyecho.faults import Faults
from anyecho.testing import serving

from .processes import ServerProcess, echo_once, one_line_error
from .utils import TIMEOUT, receive_exactly

# --- a client --------------------------------------------------------------------


def call(
    port: int, method: str, path: str, body: object = None, raw: bytes | None = None
) -> tuple[int, Any]:
    """One request to the API on 127.0.0.1; the status and the decoded JSON."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        data = raw if raw is not None else None
        if body is not None:
            data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        assert response.getheader("Content-Type") == "application/json"
        payload = response.read()
        assert int(response.getheader("Content-Length") or -1) == len(payload)
        return response.status, json.loads(payload)
    finally:
        connection.close()


class Control:
    """An ``anyecho serve --control 0`` process: its echo and control ports."""

    def __init__(self, run: type[ServerProcess], backend: str, *args: str) -> None:
        self.process = run(
            "serve", "--port", "0", "--control", "0", "--backend", backend, *args
        )
        self.port = self.process.wait_port()
        match = self.process.wait_for(r"control API on http://127\.0\.0\.1:(\d+)")
        self.control = int(match.group(1))

    def __call__(self, method: str, path: str, body: object = None) -> Any:
        status, document = call(self.control, method, path, body)
        assert status == 200, document
        return document


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)


def round_trip(sock: socket.socket, message: bytes = b"ping") -> None:
    sock.sendall(message)
    received = b""
    while len(received) < len(message):
        data = sock.recv(65536)
        assert data, "the server ended the connection"
        received += data
    assert received == message


# --- faults ------------------------------------------------------------------------


def test_put_get_delete_faults(run: type[ServerProcess], backend_name: str) -> None:
    server = Control(run, backend_name)
    assert server("GET", "/faults") == {}
    assert echo_once(server.port, b"before") == b"before"
    set_ = server("PUT", "/faults", {"reset_after": 0})
    assert set_["reset_after"] == 0
    assert set_["fraction"] == 1.0
    assert server("GET", "/faults") == set_
    with connect(server.port) as sock:
        sock.sendall(b"hello")
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert server("DELETE", "/faults") == {}
    assert server("GET", "/faults") == {}
    assert echo_once(server.port, b"after") == b"after"


def test_put_faults_with_tuples_and_every_field(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = Control(run, backend_name)
    document = server("PUT", "/faults", {"delay": [0.0, 0.01], "fragment": 2})
    assert document["delay"] == [0.0, 0.01]
    assert document["fragment"] == 2
    assert set(document) == set(Faults.__dataclass_fields__)
    assert echo_once(server.port, b"in pieces") == b"in pieces"
    assert server("PUT", "/faults", {}) == {}  # an empty object clears them


BAD_BODIES = [
    (b"{not json", "invalid JSON"),
    (b"[1, 2]", "expected a JSON object"),
    (b'"reset_after"', "expected a JSON object"),
    (b'{"reset_after": 1, "reset_after": 2}', "given twice"),
    (b'{"reset_afer": 1}', "unknown fault field(s) 'reset_afer'"),
    (b'{"fragment": "16"}', "invalid fragment"),
    (b'{"fragment": true}', "invalid fragment"),
    (b'{"fraction": 2}', "invalid fraction"),
    (b'{"delay": NaN}', "invalid JSON"),
    (b'{"delay": [1, 2, 3]}', "invalid delay"),
    (b'{"close_after": 1, "reset_after": 1}', "cannot be combined"),
    (b"\xff\xfe", "not UTF-8"),
]


def test_bad_fault_bodies_are_refused_and_change_nothing(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = Control(run, backend_name)
    before = server("PUT", "/faults", {"fragment": 3})
    for body, reason in BAD_BODIES:
        status, document = call(server.control, "PUT", "/faults", raw=body)
        assert status == 400, body
        assert list(document) == ["error"]
        assert reason in document["error"], (body, document)
        assert "\n" not in document["error"]
    assert server("GET", "/faults") == before
    assert echo_once(server.port, b"unchanged") == b"unchanged"


def test_unknown_endpoints_and_methods(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = Control(run, backend_name)
    assert call(server.control, "GET", "/nope") == (
        404,
        {"error": "no such endpoint: /nope"},
    )
    status, document = call(server.control, "POST", "/stats")
    assert (status, document) == (405, {"error": "method POST not allowed: use GET"})
    status, document = call(server.control, "GET", "/connections/x")
    assert status == 404
    assert "invalid connection id" in document["error"]
    status, document = call(server.control, "POST", "/connections/99/close")
    assert (status, document) == (404, {"error": "no open connection 99"})


# --- stats and connections ------------------------------------------------------------


def test_stats_and_connections_after_a_known_workload(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = Control(run, backend_name)
    assert echo_once(server.port, b"x" * 1000) == b"x" * 1000
    assert echo_once(server.port, b"y" * 24) == b"y" * 24
    with connect(server.port) as sock:
        round_trip(sock, b"12345")
        stats = server("GET", "/stats")
        assert stats["total_connections"] == 3
        assert stats["active_connections"] == 1
        # A send is counted once it returns, which may be just after the client
        # has its echo: the open connection's last echo may be uncounted.
        assert stats["bytes_received"] == 1029
        assert stats["bytes_sent"] in (1024, 1029)
        assert stats["errors"] == {}
        [conn] = server("GET", "/connections")["connections"]
        host, port = sock.getsockname()
        assert conn["id"] == 3
        assert conn["peer"] == f"{host}:{port}"
        assert conn["transport"] == "tcp"
        assert conn["bytes_received"] == 5
        assert conn["bytes_sent"] in (0, 5)
        assert conn["faulted"] is False
        assert conn["age"] >= 0
        assert isinstance(conn["opened_at"], float)
        one = server("GET", "/connections/3")
        assert one.pop("age") >= conn.pop("age")
        assert one == conn


def test_close_and_reset_one_connection_by_id(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = Control(run, backend_name)
    with connect(server.port) as closed, connect(server.port) as reset:
        with connect(server.port) as other:
            for sock in (closed, reset, other):
                round_trip(sock)
            ids = [c["id"] for c in server("GET", "/connections")["connections"]]
            assert ids == [1, 2, 3]
            assert server("POST", "/connections/1/close") == {"closed": 1}
            assert closed.recv(65536) == b""  # the end of the stream
            round_trip(other, b"still echoing")
            assert server("POST", "/connections/2/reset") == {"reset": 1}
            with pytest.raises(ConnectionResetError):
                reset.recv(65536)
            round_trip(other, b"still echoing")
            [left] = server("GET", "/connections")["connections"]
            assert left["id"] == 3
            assert server("POST", "/connections/close") == {"closed": 1}
            assert other.recv(65536) == b""
    assert server("POST", "/connections/reset") == {"reset": 0}


def test_recording_endpoint(run: type[ServerProcess], backend_name: str) -> None:
    server = Control(run, backend_name, "--record", "--record-max-bytes", "8")
    assert echo_once(server.port, b"0123456789") == b"0123456789"
    status, document = call(server.control, "GET", "/connections/1/recording")
    assert status == 200
    assert document["ended"] == "eof"
    assert document["bytes_received"] == 10
    assert document["truncated"] is True
    assert base64.b64decode(document["data"]) == b"01234567"
    times = [chunk["t"] for chunk in document["chunks"]]
    assert times == sorted(times)
    status, document = call(server.control, "GET", "/connections/7/recording")
    assert (status, document) == (404, {"error": "no recording of connection 7"})


def test_recording_is_off_by_default(
    run: type[ServerProcess], backend_name: str
) -> None:
    server = Control(run, backend_name)
    assert echo_once(server.port, b"x") == b"x"
    status, document = call(server.control, "GET", "/connections/1/recording")
    assert status == 404
    assert "--record" in document["error"]


# --- the command line --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--control", "x:y"], "invalid address 'x:y'"),
        (["--control", "70000"], "invalid port '70000'"),
        (["--control", ":80"], "invalid address ':80'"),
        (["--control", "0", "--workers", "2"], "--control cannot be used with"),
    ],
)
def test_control_usage_errors(args: list[str], message: str) -> None:
    status, line = one_line_error("serve", "--port", "0", *args)
    assert status == 2
    assert message in line


def test_control_without_h11(tmp_path: Path) -> None:
    (tmp_path / "h11").mkdir()
    (tmp_path / "h11" / "__init__.py").write_text("raise ImportError('no h11')\n")
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    status, line = one_line_error("serve", "--port", "0", "--control", "0", env=env)
    assert status == 2
    assert "--control needs h11: pip install 'anyecho[control]'" in line


def test_control_address_in_use(run: type[ServerProcess]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = run("serve", "--port", "0", "--control", str(port))
        status, stderr = server.finish()
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in stderr
    assert "Traceback" not in stderr


# --- in process: the library's API and the HTTP server's bounds --------------------


@pytest.mark.anyio
async def test_serve_control_in_process() -> None:
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, anyio.create_task_group() as tg:
            [address] = await tg.start(serve_control, server.server)
            assert address.host == "127.0.0.1"
            async with await server.connect() as client:
                await client.send(b"ab")
                assert await receive_exactly(client, 2) == b"ab"
                status, document = await anyio.to_thread.run_sync(
                    call, address.port, "PUT", "/faults", {"reset_after": 0}
                )
                assert status == 200
                assert document["reset_after"] == 0
                assert server.server.faults == Faults(reset_after=0)
                # The open connection is cut on cue.
                with pytest.raises(anyio.BrokenResourceError):
                    await client.receive()
            assert await server.recording(1).wait_ended() == "fault"
            tg.cancel_scope.cancel()


async def raw_request(port: int, data: bytes) -> bytes:
    """Send ``data`` as it is; what comes back until the server closes."""
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(data)
        received = b""
        try:
            async for chunk in stream:
                received += chunk
        except anyio.BrokenResourceError:
            pass
        return received


@pytest.mark.anyio
async def test_http_bounds() -> None:
    from anyecho._http import HTTPLimits

    limits = HTTPLimits(
        max_head_bytes=1024, max_headers=5, max_body_bytes=100, request_timeout=0.2
    )
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, anyio.create_task_group() as tg:
            [address] = await tg.start(
                lambda **kw: serve_control(server.server, limits=limits, **kw)
            )
            port = address.port
            huge = b"GET /stats HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
            assert (await raw_request(port, huge)).startswith(b"HTTP/1.1 431 ")
            many = b"GET /stats HTTP/1.1\r\nHost: x\r\n" + b"X-A: 1\r\n" * 5 + b"\r\n"
            assert (await raw_request(port, many)).startswith(b"HTTP/1.1 431 ")
            big = (
                b"PUT /faults HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n"
                + b" " * 101
            )
            assert (await raw_request(port, big)).startswith(b"HTTP/1.1 413 ")
            garbage = b"HELLO\r\n\r\n"
            assert (await raw_request(port, garbage)).startswith(b"HTTP/1.1 400 ")
            # Half a request, then nothing: 408 after the read timeout.
            half = b"GET /stats HTTP/1.1\r\nHost: x\r\n"
            assert (await raw_request(port, half)).startswith(b"HTTP/1.1 408 ")
            # Keep-alive: two requests on one connection, then the client's close.
            two = b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n" * 2
            async with await anyio.connect_tcp("127.0.0.1", port) as stream:
                await stream.send(two)
                answer = b""
                while answer.count(b"HTTP/1.1 200 OK") < 2:
                    answer += await stream.receive()
            # An idle keep-alive connection is closed after the read timeout.
            async with await anyio.connect_tcp("127.0.0.1", port) as idle:
                with pytest.raises(anyio.EndOfStream):
                    await idle.receive()
            tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_http_connection_limit() -> None:
    from anyecho._http import HTTPLimits

    limits = HTTPLimits(max_connections=2)
    with anyio.fail_after(TIMEOUT):
        async with serving() as server, anyio.create_task_group() as tg:
            [address] = await tg.start(
                lambda **kw: serve_control(server.server, limits=limits, **kw)
            )
            port = address.port
            held = [await anyio.connect_tcp("127.0.0.1", port) for _ in range(2)]
            for stream in held:  # each is being served once it answers
                await stream.send(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
                assert (await stream.receive()).startswith(b"HTTP/1.1 200 ")
            # One more is closed at once, unanswered: an answer would cost
            # what the limit saves.
            assert await raw_request(port, b"GET /stats HTTP/1.1\r\n\r\n") == b""
            for stream in held:
                await stream.aclose()
            tg.cancel_scope.cancel()


def test_faults_from_json_is_generic() -> None:
    assert faults_from_json({}) is None
    assert faults_from_json({"delay": [0.1, 0.2]}) == Faults(delay=(0.1, 0.2))
    for name in Faults.__dataclass_fields__:  # every field is accepted by name
        with pytest.raises(ValueError, match=name):
            faults_from_json({name: "not a value"})


@pytest.mark.anyio
async def test_the_handler_alone() -> None:
    async with serving() as server:
        api = ControlAPI(server.server)
        assert await api("GET", "/connections", {}, b"") == (200, {"connections": []})
        assert await api("GET", "/faults/", {}, b"") == (200, {})
