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
    from ._config import DEFAULT_UDP_BLOCKED_PORTS as DEFAULT_UDP_BLOCKED_PORTS
    from ._config import RateLimit as RateLimit
    from ._config import ServerConfig as ServerConfig
    from ._config import ServerOptions as ServerOptions
    from ._connection import ConnectionInfo as ConnectionInfo
    from ._echo import RECEIVE_SIZE as RECEIVE_SIZE
    from ._echo import ByteCounts as ByteCounts
    from ._echo import echo as echo
    from ._errors import ListenError as ListenError
    from ._recording import EndReason as EndReason
    from ._recording import Recording as Recording
    from ._server import EchoServer as EchoServer
    from ._server import serve as serve
    from ._sockets import ListenAddress as ListenAddress
    from ._sockets import listen_fds as listen_fds
    from ._stats import DurationHistogram as DurationHistogram
    from ._stats import StatsSnapshot as StatsSnapshot
    from ._tls import tls_server_context as tls_server_context
    from ._wrap import StreamWrapper as StreamWrapper
    from .faults import Faults as Faults
    from .faults import UdpFaults as UdpFaults

#: Where each exported name lives (imported by :func:`__getattr__` when first used).
_LAZY = {
    "BACKEND_NAMES": "._backends",
    "Backend": "._backends",
    "BackendUnavailableError": "._backends",
    "resolve_backend": "._backends",
    "DEFAULT_PORT": "._config",
    "ServerConfig": "._config",
    "ServerOptions": "._config",
    "ConnectionInfo": "._connection",
    "EndReason": "._recording",
    "Recording": "._recording",
    "RECEIVE_SIZE": "._echo",
    "ByteCounts": "._echo",
    "echo": "._echo",
    "EchoServer": "._server",
    "ListenAddress": "._sockets",
    "listen_fds": "._sockets",
    "ListenError": "._errors",
    "serve": "._server",
    "StatsSnapshot": "._stats",
    "DurationHistogram": "._stats",
    "tls_server_context": "._tls",
    "DEFAULT_UDP_BLOCKED_PORTS": "._config",
    "RateLimit": "._config",
    "StreamWrapper": "._wrap",
    "Faults": ".faults",
    "UdpFaults": ".faults",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    _import_public_names()
    return globals()[name]


def _import_public_names() -> None:
    """Import every public name, and make each report ``anyecho`` as its module.

    They are defined in private modules; ``repr()``, tracebacks, pickling and the
    documentation should show the name users import (as Trio does for its own).
    A class's annotations are resolved first, while its defining module is still
    known, so that ``typing.get_type_hints()`` keeps working on it.
    """
    import typing

    namespace = globals()
    for name, module_name in _LAZY.items():
        value = getattr(importlib.import_module(module_name, __name__), name)
        module = getattr(value, "__module__", None)
        if isinstance(module, str) and module.startswith(f"{__name__}._"):
            if isinstance(value, type) and "__annotations__" in vars(value):
                value.__annotations__ = typing.get_type_hints(
                    value, include_extras=True
                )
            value.__module__ = __name__
        namespace[name] = value


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
    "ConnectionInfo",
    "DurationHistogram",
    "EchoServer",
    "EndReason",
    "Faults",
    "ListenAddress",
    "ListenError",
    "RateLimit",
    "Recording",
    "ServerConfig",
    "ServerOptions",
    "StatsSnapshot",
    "StreamWrapper",
    "UdpFaults",
    "echo",
    "listen_fds",
    "resolve_backend",
    "serve",
    "tls_server_context",
]

# The one place the version is written: the build reads it from here.
__version__ = "0.1.0"
