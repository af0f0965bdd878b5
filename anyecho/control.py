"""The control API: drive a running server over HTTP and JSON, from any language.

``anyecho serve --control 8001`` serves it on ``127.0.0.1:8001``; in a program,
:func:`serve_control` serves it for an :class:`~anyecho.EchoServer` of its own.
The endpoints (see the docs' control API page for each with ``curl``):

==========================================  ======================================
``GET /faults``                             the faults in force (``{}``: none)
``PUT /faults``                             replace them (an object of fault fields)
``DELETE /faults``                          clear them
``GET /stats``                              the counters, by their names
``GET /connections``                        the open connections
``GET /connections/{id}``                   one of them
``POST /connections/{id}/close``            close it (its client sees the end)
``POST /connections/{id}/reset``            reset it (its client sees a reset)
``POST /connections/close``                 close every open connection
``POST /connections/reset``                 reset every open connection
``GET /connections/{id}/recording``         what its client sent (``--record``)
==========================================  ======================================

The JSON field names are the library's own: :class:`~anyecho.Faults`' fields in
their units (seconds, bytes, bytes per second; a tuple is a list), and
:class:`~anyecho.StatsSnapshot`'s. A request the API cannot carry out changes
nothing and gets ``{"error": "one line"}`` with a 4xx status.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import urllib.parse
from collections.abc import Mapping
from typing import Any, Final

from anyio import TASK_STATUS_IGNORED
from anyio.abc import TaskStatus

from ._connection import ConnectionInfo
from ._http import Handler, HTTPLimits, Request, Response, serve_http
from ._recording import Recording
from ._server import EchoServer
from ._sockets import ListenAddress
from ._stats import StatsSnapshot
from .faults import Faults

__all__ = [
    "CONTROL_LIMITS",
    "ControlAPI",
    "RequestError",
    "faults_from_json",
    "faults_to_json",
    "serve_control",
    "stats_to_json",
]

#: What one peer of the control API may make it hold (an
#: :class:`anyecho.metrics.HTTPLimits`): bodies of up to 64 KiB, 16 peers at once.
CONTROL_LIMITS: Final = HTTPLimits(
    max_connections=16,
    max_head_bytes=16 * 1024,
    max_body_bytes=64 * 1024,
    max_requests=1000,
)


class RequestError(ValueError):
    """A request the API refuses: its status and one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, frozenset | set):
        return sorted(_jsonable(item) for item in value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _jsonable(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    return value


def faults_to_json(faults: Faults | None) -> dict[str, Any]:
    """``faults`` as the API writes them: every field by name; ``{}`` for none."""
    if faults is None:
        return {}
    document: dict[str, Any] = _jsonable(faults)
    return document


def _tuples(value: Any) -> Any:
    """JSON lists as the tuples that :class:`Faults` takes."""
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def faults_from_json(document: object) -> Faults | None:
    """The :class:`~anyecho.Faults` a JSON object describes; ``None`` for ``{}``.

    Every field of :class:`~anyecho.Faults` is accepted by its name, with the
    value the library takes (a list for a tuple); a field left out has its
    default. What :class:`~anyecho.Faults` refuses is refused here, with its
    message.

    :raises RequestError: (a 400) for anything but an object of known fields
        with valid values

    >>> from anyecho.control import faults_from_json
    >>> faults_from_json({"delay": [0.1, 0.2], "fraction": 0.5})
    Faults(delay=(0.1, 0.2), ..., fraction=0.5, ...)
    """
    if not isinstance(document, dict):
        raise RequestError(400, "expected a JSON object of fault fields")
    fields = [field.name for field in dataclasses.fields(Faults)]
    unknown = sorted(set(document) - set(fields))
    if unknown:
        raise RequestError(
            400,
            f"unknown fault field(s) {', '.join(map(repr, unknown))}: "
            f"expected {', '.join(fields)}",
        )
    if not document:
        return None
    values = {name: _tuples(value) for name, value in document.items()}
    try:
        return Faults(**values)
    except (ValueError, TypeError) as exc:
        raise RequestError(400, str(exc).splitlines()[0]) from exc


def stats_to_json(stats: StatsSnapshot) -> dict[str, Any]:
    """A :class:`~anyecho.StatsSnapshot` as the API writes it: its fields by name
    (the mappings as objects)."""
    document: dict[str, Any] = _jsonable(stats)
    return document


def connection_to_json(info: ConnectionInfo) -> dict[str, Any]:
    document: dict[str, Any] = _jsonable(info)
    return document


def recording_to_json(recording: Recording) -> dict[str, Any]:
    """A recording, its bytes in base64 (``data``, and each chunk's)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "id": recording.id,
        "peer": recording.peer,
        "transport": recording.transport,
        "ended": recording.ended,
        "bytes_received": recording.bytes_received,
        "truncated": recording.truncated,
        "data": b64(recording.data),
        "chunks": [{"t": t, "data": b64(chunk)} for t, chunk in recording.chunks],
    }


def _parse_json(body: bytes) -> object:
    def no_constants(name: str) -> object:
        raise ValueError(f"{name} is not a number JSON allows")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for key, value in pairs:
            if key in document:
                raise ValueError(f"field {key!r} given twice")
            document[key] = value
        return document

    try:
        return json.loads(
            body.decode("utf-8"),
            parse_constant=no_constants,
            object_pairs_hook=no_duplicates,
        )
    except UnicodeDecodeError as exc:
        raise RequestError(400, "invalid JSON: not UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"invalid JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:
        raise RequestError(400, f"invalid JSON: {exc}") from exc


class ControlAPI:
    """The control API of one server, as an HTTP handler.

    ``await api(method, path, query, body)`` gives ``(status, document)``, the
    document being JSON-able: any HTTP server can carry it
    (:func:`serve_control` serves it with h11).
    """

    def __init__(self, server: EchoServer) -> None:
        self.server = server

    async def __call__(
        self, method: str, path: str, query: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        try:
            return 200, self._route(method, path.rstrip("/") or "/", body)
        except RequestError as exc:
            return exc.status, {"error": str(exc)}

    def _route(self, method: str, path: str, body: bytes) -> Any:
        parts = path.strip("/").split("/")
        if parts == ["faults"]:
            return self._faults(method, body)
        if parts == ["stats"]:
            _allow(method, "GET")
            return stats_to_json(self.server.stats)
        if parts[0] == "connections":
            return self._connections(method, parts[1:])
        raise RequestError(404, f"no such endpoint: {path}")

    def _faults(self, method: str, body: bytes) -> Any:
        server = self.server
        _allow(method, "GET", "PUT", "DELETE")
        if method == "PUT":
            faults = faults_from_json(_parse_json(body))
            if faults is None:
                server.clear_faults()
            else:
                server.set_faults(faults)
        elif method == "DELETE":
            server.clear_faults()
        return faults_to_json(server.faults)

    def _connections(self, method: str, rest: list[str]) -> Any:
        server = self.server
        if not rest:
            _allow(method, "GET")
            infos = server.connections()
            return {"connections": [connection_to_json(info) for info in infos]}
        if rest in (["close"], ["reset"]):
            _allow(method, "POST")
            if rest == ["close"]:
                return {"closed": server.close_connections()}
            return {"reset": server.reset_connections()}
        number = _connection_id(rest[0])
        if len(rest) == 1:
            _allow(method, "GET")
            for info in server.connections():
                if info.id == number:
                    return connection_to_json(info)
            raise RequestError(404, f"no open connection {number}")
        if len(rest) == 2 and rest[1] in ("close", "reset"):
            _allow(method, "POST")
            return self._end(number, rest[1])
        if len(rest) == 2 and rest[1] == "recording":
            _allow(method, "GET")
            return self._recording(number)
        raise RequestError(404, "no such endpoint: /connections/" + "/".join(rest))

    def _end(self, number: int, how: str) -> Any:
        if how == "close":
            done, key = self.server.close_connection(number), "closed"
        else:
            done, key = self.server.reset_connection(number), "reset"
        if not done:
            raise RequestError(404, f"no open connection {number}")
        return {key: 1}

    def _recording(self, number: int) -> Any:
        try:
            return recording_to_json(self.server.recording(number))
        except RuntimeError as exc:
            reason = "recording is off (anyecho serve --record)"
            raise RequestError(404, reason) from exc
        except LookupError as exc:
            reason = f"no recording of connection {number}"
            raise RequestError(404, reason) from exc


def _allow(method: str, *allowed: str) -> None:
    if method not in allowed:
        raise RequestError(
            405, f"method {method} not allowed: use {', '.join(allowed)}"
        )


def _connection_id(text: str) -> int:
    if not text.isdigit() or not text.isascii():
        raise RequestError(404, f"invalid connection id {text!r}: expected a number")
    return int(text)


async def serve_control(
    server: EchoServer,
    host: str | None = "127.0.0.1",
    port: int = 0,
    *,
    limits: HTTPLimits | None = None,
    task_status: TaskStatus[list[ListenAddress]] = TASK_STATUS_IGNORED,
) -> None:
    """Serve ``server``'s control API over HTTP on ``host`` and ``port`` until
    cancelled.

    The address is bound as the echo server binds its own (``"*"`` or ``None``
    for every interface; ``port=0`` picks a free port), on loopback by default:
    the API has no authentication, so never serve it where others can reach it.
    With ``await task_group.start(serve_control, server)`` the call returns the
    addresses it listens on.

    .. code-block:: python

        async with anyio.create_task_group() as tg:
            await tg.start(server.serve)
            [control] = await tg.start(anyecho.control.serve_control, server)
            print(f"curl http://{control.host}:{control.port}/stats")
    """
    hosts = None if host in (None, "*") else (host,)
    await serve_http(
        _http_handler(ControlAPI(server)),
        hosts,
        port,
        limits=limits or CONTROL_LIMITS,
        name="control API",
        task_status=task_status,
    )


def _http_handler(api: ControlAPI) -> Handler:
    """``api`` as a handler of anyecho's HTTP server: JSON in, JSON out."""

    async def handle(request: Request) -> Response:
        path, _, query = request.target.partition("?")
        status, document = await api(
            request.method, path, dict(urllib.parse.parse_qsl(query)), request.body
        )
        body = json.dumps(document, allow_nan=False).encode() + b"\n"
        return Response(status, body, content_type="application/json")

    return handle
