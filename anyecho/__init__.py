"""anyecho: one RFC 862 echo server for every event loop AnyIO can drive.

The public API is what this module exports; everything in ``anyecho._*`` modules is
private and may change.
"""

from __future__ import annotations

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

# The one place the version is written: the build reads it from here.
__version__ = "0.1.0"
