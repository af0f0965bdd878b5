"""anyecho: one RFC 862 echo server for every event loop AnyIO can drive.

The public API is what this module exports; everything in ``anyecho._*`` modules is
private and may change. The names are imported on first use, so that importing the
package (as ``python -m anyecho`` does before anything else) costs nothing.
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from typing import Any

    from ._backends import BACKEND_NAMES as BACKEND_NAMES
    from ._backends import Backend as Backend
    from ._backends import BackendUnavailableError as BackendUnavailableError
    from ._backends import resolve_backend as resolve_backend
    from ._config import DEFAULT_PORT as DEFAULT_PORT
    from ._config import ServerConfig as ServerConfig
    from ._echo import RECEIVE_SIZE as RECEIVE_SIZE
    from ._echo import ByteCounts as ByteCounts
    from ._echo import echo as echo
    from ._server import EchoServer as EchoServer
    from ._server import ListenAddress as ListenAddress
    from ._server import ListenError as ListenError
    from ._server import serve as serve
    from ._stats import StatsSnapshot as StatsSnapshot
    from ._tls import tls_server_context as tls_server_context
    from ._udp import DEFAULT_UDP_BLOCKED_PORTS as DEFAULT_UDP_BLOCKED_PORTS
    from ._udp import RateLimit as RateLimit
    from ._wrap import StreamWrapper as StreamWrapper
    from .faults import Faults as Faults

#: Where each exported name lives (imported by :func:`__getattr__` when first used).
_LAZY = {
    "BACKEND_NAMES": "._backends",
    "Backend": "._backends",
    "BackendUnavailableError": "._backends",
    "resolve_backend": "._backends",
    "DEFAULT_PORT": "._config",
    "ServerConfig": "._config",
    "RECEIVE_SIZE": "._echo",
    "ByteCounts": "._echo",
    "echo": "._echo",
    "EchoServer": "._server",
    "ListenAddress": "._server",
    "ListenError": "._server",
    "serve": "._server",
    "StatsSnapshot": "._stats",
    "tls_server_context": "._tls",
    "DEFAULT_UDP_BLOCKED_PORTS": "._udp",
    "RateLimit": "._udp",
    "StreamWrapper": "._wrap",
    "Faults": ".faults",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = [
    "BACKEND_NAMES",
    "DEFAULT_PORT",
    "DEFAULT_UDP_BLOCKED_PORTS",
    "RECEIVE_SIZE",
    "Backend",
    "BackendUnavailableError",
    "ByteCounts",
    "EchoServer",
    "Faults",
    "ListenAddress",
    "ListenError",
    "RateLimit",
    "ServerConfig",
    "StatsSnapshot",
    "StreamWrapper",
    "echo",
    "resolve_backend",
    "serve",
    "tls_server_context",
]

__version__ = "0.1.0"
