"""anyecho: one RFC 862 echo server for every event loop AnyIO can drive.

The public API is what this module exports; everything in ``anyecho._*`` modules is
private and may change.
"""

from __future__ import annotations

import typing

from ._backends import BACKEND_NAMES as BACKEND_NAMES
from ._backends import Backend as Backend
from ._backends import BackendUnavailableError as BackendUnavailableError
from ._backends import resolve_backend as resolve_backend
from ._config import DEFAULT_PORT as DEFAULT_PORT
from ._config import DEFAULT_UDP_BLOCKED_PORTS as DEFAULT_UDP_BLOCKED_PORTS
from ._config import RateLimit as RateLimit
from ._config import ServerConfig as ServerConfig
from ._echo import RECEIVE_SIZE as RECEIVE_SIZE
from ._echo import ByteCounts as ByteCounts
from ._echo import echo as echo
from ._errors import ListenError as ListenError
from ._server import EchoServer as EchoServer
from ._server import serve as serve
from ._sockets import ListenAddress as ListenAddress
from ._stats import StatsSnapshot as StatsSnapshot
from ._tls import tls_server_context as tls_server_context
from ._wrap import StreamWrapper as StreamWrapper
from .faults import Faults as Faults

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


def _adopt_public_names() -> None:
    """Make the public names report ``anyecho`` as their module.

    They are defined in private modules; ``repr()``, tracebacks, pickling and the
    documentation should show the name users import (as Trio does for its own).
    """
    namespace = globals()
    for name in __all__:
        value = namespace[name]
        module = getattr(value, "__module__", None)
        if not isinstance(module, str) or not module.startswith(f"{__name__}._"):
            continue
        if isinstance(value, type) and "__annotations__" in vars(value):
            # Resolved while the defining module is still known, so that
            # typing.get_type_hints() (dataclass tools, docs) keeps working.
            value.__annotations__ = typing.get_type_hints(value, include_extras=True)
        value.__module__ = __name__


_adopt_public_names()
