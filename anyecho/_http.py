"""A small HTTP/1.1 server over AnyIO streams, for anyecho's own endpoints.

The protocol is `h11 <https://h11.readthedocs.io/>`_'s (sans-I/O); this module
only moves bytes between it and an AnyIO byte stream, on whatever backend runs.
It serves small, cheap answers (metrics, health) to peers that need not be
trusted, so everything a peer can send is bounded (:class:`HTTPLimits`): the
size of a request's head and its number of headers, its body, the time it has
to send a request, and the connections served at once. Past a bound, the peer
gets the status that says so (400, 408, 413, 431) and the connection closes;
nothing it sends is logged but counted, one line per kind at most.

Requires the ``h11`` package (the ``metrics`` extra).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import cast

import anyio
import h11
from anyio import (
    TASK_STATUS_IGNORED,
    BrokenResourceError,
    ClosedResourceError,
    EndOfStream,
)
from anyio.abc import ByteStream, SocketListener, SocketStream, TaskStatus

from . import _sockets
from ._errors import describe
from ._logs import LogLimiter
from ._sockets import ListenAddress

__all__ = ["HTTPLimits", "Handler", "Request", "Response", "handle", "serve_http"]

logger = logging.getLogger("anyecho")

#: Pause after an accept error that is not one connection's own (seconds).
_ACCEPT_BACKOFF = 0.1
_RECEIVE_SIZE = 4096


@dataclass(frozen=True)
class HTTPLimits:
    """What one peer may make the server hold.

    :param max_connections: connections served at once; one more is closed at
        once (without a response: answering would cost what the limit saves)
    :param max_head_bytes: the most bytes of a request line and headers (431)
    :param max_headers: the most header fields in a request (431)
    :param max_body_bytes: the most bytes of a request body (413 past it), read
        into the request's ``body``
    :param request_timeout: seconds a peer has to send a whole request (408
        if it had begun one), the longest an idle keep-alive connection stays
        open, and the time it has to take a response
    :param max_requests: requests served per connection before it closes
    """

    max_connections: int = 64
    max_head_bytes: int = 8192
    max_headers: int = 64
    max_body_bytes: int = 4096
    request_timeout: float = 10.0
    max_requests: int = 100


@dataclass(frozen=True)
class Request:
    """A request: its method (upper case), target, headers (the names in lower
    case) and body."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""

    @property
    def path(self) -> str:
        """The target without its query string."""
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        """The value of the first header ``name`` (in lower case), if any."""
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Response:
    """What to send back; ``Content-Length`` is added."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Sequence[tuple[str, str]] = field(default_factory=tuple)


#: Answers one request. It should not fail; if it does, the peer gets a 500.
Handler = Callable[[Request], Awaitable[Response]]


class _ClosingError(Exception):
    """End the connection now (the peer has gone, or must go)."""


class _Connection:
    def __init__(self, stream: ByteStream, limits: HTTPLimits) -> None:
        self.stream = stream
        self.limits = limits
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=limits.max_head_bytes
        )

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return cast("h11.Event | type[h11.PAUSED]", event)
            try:
                data = await self.stream.receive(_RECEIVE_SIZE)
            except EndOfStream:
                data = b""
            self.h11.receive_data(data)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            await self.stream.send(data)

    async def respond(self, response: Response, *, head_only: bool = False) -> None:
        headers = [
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
        ]
        try:
            reason = HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        await self.send(
            h11.Response(
                status_code=response.status, headers=headers, reason=reason.encode()
            )
        )
        if response.body and not head_only:
            await self.send(h11.Data(data=response.body))
        await self.send(h11.EndOfMessage())

    async def fail(self, status: int, message: str) -> None:
        """Answer ``status`` if a response can still begin; then close."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                await self.respond(
                    Response(status, f"{message}\n".encode(), headers=[_CLOSE])
                )
            except (h11.LocalProtocolError, *_GONE):
                pass
        raise _ClosingError

    async def read_request(self) -> Request | None:
        """The next request, its body read (within the limit); ``None`` at the
        end of the connection."""
        limits = self.limits
        started = False
        with anyio.move_on_after(limits.request_timeout) as timer:
            try:
                event = await self.next_event()
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return None
                started = True
                if not isinstance(event, h11.Request):
                    await self.fail(400, "bad request")
                    return None  # pragma: no cover - fail() raises
                request = Request(
                    event.method.decode("ascii", "replace").upper(),
                    event.target.decode("ascii", "replace"),
                    tuple(
                        (name.decode("latin-1"), value.decode("latin-1"))
                        for name, value in event.headers
                    ),
                )
                if len(event.headers) > limits.max_headers:
                    await self.fail(431, "too many header fields")
                # h11 bounds a head that arrives in pieces; this, a whole one.
                head = (
                    len(event.method)
                    + len(event.target)
                    + sum(len(name) + len(value) + 4 for name, value in event.headers)
                )
                if head > limits.max_head_bytes:
                    await self.fail(431, "request head too large")
                if self.h11.client_is_waiting_for_100_continue:  # curl, for a body
                    await self.send(
                        h11.InformationalResponse(status_code=100, headers=[])
                    )
                body = bytearray()
                while True:
                    event = await self.next_event()
                    if isinstance(event, h11.EndOfMessage):
                        return dataclasses.replace(request, body=bytes(body))
                    if isinstance(event, h11.Data):
                        if len(body) + len(event.data) > limits.max_body_bytes:
                            await self.fail(413, "request body too large")
                        body += event.data
                    else:
                        await self.fail(400, "bad request")
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                await self.fail(
                    status, "request head too large" if status == 431 else "bad request"
                )
        # Timed out: a request begun gets a 408; an idle connection just closes.
        if timer.cancelled_caught and (started or self.h11.trailing_data[0]):
            await self.fail(408, "request timeout")
        return None


_CLOSE = ("Connection", "close")
_GONE = (BrokenResourceError, ClosedResourceError, EndOfStream, OSError)


async def handle(
    stream: ByteStream,
    handler: Handler,
    limits: HTTPLimits | None = None,
    *,
    on_failure: Callable[[str], None] | None = None,
) -> None:
    """Serve HTTP/1.1 requests on ``stream`` until the peer is done; close it.

    Nothing the peer does raises out of here: a protocol error gets its status
    and ends the connection; a peer that goes away ends it quietly.

    :param on_failure: told of each failure of ``handler`` (a one-line reason)
    """
    limits = limits or HTTPLimits()
    conn = _Connection(stream, limits)
    try:
        for _ in range(limits.max_requests):
            request = await conn.read_request()
            if request is None:
                break
            try:
                response = await handler(request)
            except Exception as exc:
                if on_failure is not None:
                    on_failure(describe(exc))
                response = Response(500, b"internal error\n")
            # A peer that does not read its responses does not hold its slot.
            with anyio.move_on_after(limits.request_timeout) as sending:
                await conn.respond(response, head_only=request.method == "HEAD")
            if sending.cancelled_caught or conn.h11.our_state is h11.MUST_CLOSE:
                break
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                break
    except (_ClosingError, h11.ProtocolError, *_GONE):
        pass
    finally:
        await anyio.aclose_forcefully(stream)


async def serve_http(
    handler: Handler,
    hosts: Sequence[str] | None,
    port: int,
    *,
    limits: HTTPLimits | None = None,
    name: str = "http",
    task_status: TaskStatus[list[ListenAddress]] = TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``hosts`` (every interface for ``None``) and ``port``; serve
    ``handler`` there until cancelled.

    The sockets are bound as the echo server's are (:mod:`._sockets`); the
    bound addresses are reported through ``task_status``.

    :param name: names the endpoint in log messages
    :raises anyecho.ListenError: when a socket cannot be bound
    """
    limits = limits or HTTPLimits()
    targets = await _sockets.resolve(hosts, port, socket.SOCK_STREAM)
    sockets = _sockets.bind_inet(targets, socket.SOCK_STREAM, port, backlog=128)
    listeners: list[SocketListener] = []
    try:
        listeners.extend([await SocketListener.from_socket(s) for s in sockets])
        addresses = [ListenAddress.of_socket(sock, "tcp") for sock in sockets]
        server = _Server(handler, limits, name)
        async with anyio.create_task_group() as tg:
            for listener in listeners:
                tg.start_soon(server.accept_loop, listener, tg)
            task_status.started(addresses)
    finally:
        for listener in listeners:
            await anyio.aclose_forcefully(listener)
        for sock in sockets:
            _sockets.close(sock)


class _Server:
    def __init__(self, handler: Handler, limits: HTTPLimits, name: str) -> None:
        self.handler = handler
        self.limits = limits
        self.active = 0
        self._log_full = LogLimiter(
            logger, logging.WARNING, f"{name} connections closed at the limit"
        )
        self._log_failed = LogLimiter(logger, logging.ERROR, f"{name} handler failures")
        self._log_accept = LogLimiter(logger, logging.WARNING, f"{name} accept errors")
        self.name = name

    async def accept_loop(
        self, listener: SocketListener, tg: anyio.abc.TaskGroup
    ) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (ClosedResourceError, BrokenResourceError):
                return
            except OSError as exc:
                self._log_accept("%s: accept failed (%s)", self.name, describe(exc))
                await anyio.sleep(_ACCEPT_BACKOFF)
                continue
            if self.active >= self.limits.max_connections:
                self._log_full(
                    "%s: %d connections already; closing a new one",
                    self.name,
                    self.limits.max_connections,
                )
                await anyio.aclose_forcefully(stream)
                continue
            self.active += 1
            tg.start_soon(self.serve, stream)

    async def serve(self, stream: SocketStream) -> None:
        try:
            await handle(stream, self.handler, self.limits, on_failure=self.failed)
        finally:
            self.active -= 1

    def failed(self, reason: str) -> None:
        self._log_failed("%s: a handler failed: %s", self.name, reason)
