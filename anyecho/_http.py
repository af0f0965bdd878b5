"""A small HTTP/1.1 server for JSON endpoints: h11 over AnyIO byte streams.

h11 parses and writes the protocol (sans-I/O); this module runs its request loop
over any :class:`~anyio.abc.ByteStream`, with bounds on everything a client
controls, since the endpoints are meant for loopback but must survive anything:

- the request line and headers together (``max_head``), and their number
  (``max_headers``): 431 past them;
- the body (``max_body``): 413 past it, from ``Content-Length`` or as it comes;
- time: a request must arrive within ``read_timeout`` of the previous answer (or
  of the connection), and then in full within ``read_timeout``; an idle
  keep-alive connection is closed after that long;
- requests per connection (``max_requests``), and connections at once
  (``max_connections``: past it a newcomer gets a 503 and is closed).

Each request goes to a handler, ``async (method, path, query, body) -> (status,
document)``, whose document is sent as JSON with a ``Content-Length``. A handler
that raises gets a 500 (logged); a malformed request, a 400.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import anyio
import h11
from anyio import BrokenResourceError, ClosedResourceError, EndOfStream
from anyio.abc import ByteStream, Listener

from ._logs import LogLimiter

__all__ = ["HTTPLimits", "Handler", "json_response", "serve_http", "serve_stream"]

logger = logging.getLogger("anyecho.http")

#: ``(method, path, query, body) -> (status, JSON-able document)``; the path is
#: percent-decoded, the query's names map to their last value.
Handler = Callable[[str, str, Mapping[str, str], bytes], Awaitable[tuple[int, Any]]]

_READ_SIZE = 16384


@dataclass(frozen=True)
class HTTPLimits:
    """Bounds on what one client may make the server hold or wait for."""

    #: bytes of the request line and headers together
    max_head: int = 16 * 1024
    #: header fields in one request
    max_headers: int = 64
    #: bytes of one request's body
    max_body: int = 64 * 1024
    #: seconds to wait for a request to start, and then to arrive in full
    read_timeout: float = 10.0
    #: requests on one connection before it is closed
    max_requests: int = 1000
    #: connections served at once
    max_connections: int = 16


def json_response(status: int, document: Any, *, close: bool = False) -> bytes:
    """A whole HTTP/1.1 response carrying ``document`` as JSON (for the canned
    answers sent without a parser, such as the 503 past the connection limit)."""
    body = _json_body(document)
    reason = _reason(status)
    head = [
        b"HTTP/1.1 %d %s" % (status, reason),
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
    ]
    if close:
        head.append(b"Connection: close")
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


def _json_body(document: Any) -> bytes:
    return json.dumps(document, allow_nan=False).encode() + b"\n"


class _Reject(Exception):  # noqa: N818 - not an error of ours: an answer
    """Answer the request with this status and close the connection."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class _Gone(Exception):  # noqa: N818
    """The client left, or sent nothing in time: close without an answer."""


async def serve_http(
    listener: Listener[Any], handler: Handler, limits: HTTPLimits | None = None
) -> None:
    """Serve ``handler`` on every connection ``listener`` accepts, until cancelled."""
    limits = limits or HTTPLimits()
    slots = anyio.Semaphore(limits.max_connections)
    busy = LogLimiter(logger, logging.WARNING, "HTTP connections over the limit")

    async def serve_one(stream: ByteStream) -> None:
        async with stream:
            try:
                slots.acquire_nowait()
            except anyio.WouldBlock:
                busy(
                    "too many HTTP connections (%d); one refused",
                    limits.max_connections,
                )
                document = {"error": "too many connections"}
                await _send_quietly(stream, json_response(503, document, close=True))
                return
            try:
                await serve_stream(stream, handler, limits)
            finally:
                slots.release()

    try:
        await listener.serve(serve_one)
    finally:
        busy.flush()


async def _send_quietly(stream: ByteStream, data: bytes) -> None:
    with contextlib.suppress(BrokenResourceError, ClosedResourceError, OSError):
        await stream.send(data)


async def serve_stream(
    stream: ByteStream, handler: Handler, limits: HTTPLimits | None = None
) -> None:
    """Answer the requests of one connection until it ends; never raises for
    what the client does (the caller closes the stream)."""
    limits = limits or HTTPLimits()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)
    try:
        for _ in range(limits.max_requests):
            if not await _one_request(stream, conn, handler, limits):
                return
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()
    except _Gone:
        return
    except (BrokenResourceError, ClosedResourceError, OSError) as exc:
        logger.debug("HTTP connection lost: %s", exc)


async def _one_request(
    stream: ByteStream, conn: h11.Connection, handler: Handler, limits: HTTPLimits
) -> bool:
    """Read one request and answer it; ``False`` when the connection is over."""
    try:
        with anyio.fail_after(limits.read_timeout):
            received = await _request(stream, conn, limits)
        if received is None:
            return False
        request, body = received
    except TimeoutError:
        if conn.their_state is h11.IDLE and not conn.trailing_data[0]:
            return False  # an idle keep-alive connection: just close
        await _answer(stream, conn, 408, {"error": "request not received in time"})
        return False
    except _Reject as reject:
        await _answer(stream, conn, reject.status, {"error": str(reject)})
        return False
    except h11.RemoteProtocolError as exc:
        await _answer(stream, conn, exc.error_status_hint, {"error": str(exc)})
        return False
    target = urllib.parse.urlsplit(request.target.decode("ascii", "replace"))
    path = urllib.parse.unquote(target.path)
    query = dict(urllib.parse.parse_qsl(target.query, keep_blank_values=True))
    method = request.method.decode("ascii", "replace")
    try:
        status, document = await handler(method, path, query, body)
    except Exception:
        logger.exception("%s %s: the handler failed", method, path)
        status, document = 500, {"error": "internal error"}
    await _answer(stream, conn, status, document, close=False)
    return True


async def _request(
    stream: ByteStream, conn: h11.Connection, limits: HTTPLimits
) -> tuple[h11.Request, bytes] | None:
    """The next request and its body; ``None`` if the client closed first."""
    request = await _next(stream, conn)
    if isinstance(request, h11.ConnectionClosed):
        return None
    if not isinstance(request, h11.Request):
        raise _Reject(400, "expected a request")
    if len(request.headers) > limits.max_headers:
        raise _Reject(431, f"more than {limits.max_headers} header fields")
    # h11 bounds a head that has not arrived in full; one that came at once is
    # measured here.
    size = len(request.method) + len(request.target) + 12
    size += sum(len(name) + len(value) + 4 for name, value in request.headers)
    if size > limits.max_head:
        raise _Reject(431, f"the request head is over {limits.max_head} bytes")
    return request, await _body(stream, conn, request, limits)


async def _next(stream: ByteStream, conn: h11.Connection) -> Any:
    """h11's next event, reading from ``stream`` as it needs."""
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        if conn.they_are_waiting_for_100_continue:
            await stream.send(
                conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        try:
            data = await stream.receive(_READ_SIZE)
        except EndOfStream:
            data = b""
        except (BrokenResourceError, ClosedResourceError, OSError) as exc:
            raise _Gone from exc
        if not data and conn.their_state is h11.IDLE:
            raise _Gone
        conn.receive_data(data)


async def _body(
    stream: ByteStream, conn: h11.Connection, request: h11.Request, limits: HTTPLimits
) -> bytes:
    for name, value in request.headers:
        if name == b"content-length" and int(value) > limits.max_body:
            raise _Reject(413, f"the body is over {limits.max_body} bytes")
    body = bytearray()
    while True:
        event = await _next(stream, conn)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limits.max_body:
                raise _Reject(413, f"the body is over {limits.max_body} bytes")
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:  # ConnectionClosed halfway
            raise _Gone


async def _answer(
    stream: ByteStream,
    conn: h11.Connection,
    status: int,
    document: Any,
    *,
    close: bool = True,
) -> None:
    """Send one JSON response, if the protocol's state still allows one."""
    if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
        return
    body = _json_body(document)
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    ]
    if close:
        headers.append(("Connection", "close"))
    try:
        response = h11.Response(
            status_code=status, headers=headers, reason=_reason(status)
        )
        data = conn.send(response)
        data = (data or b"") + (conn.send(h11.Data(data=body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await stream.send(data)
