"""Server settings: one frozen, validated object shared by the CLI and the API."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from anyio.abc import ByteStream

from ._echo import RECEIVE_SIZE

__all__ = ["DEFAULT_PORT", "ServerConfig"]

#: The port ``anyecho serve`` listens on when none is given. (RFC 862's port 7 is
#: privileged on most systems.)
DEFAULT_PORT = 8888

StreamWrapper = Callable[[ByteStream], ByteStream]


def _check_port(port: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port {port!r}: expected an integer from 0 to 65535")


def _check_positive(
    name: str, value: object, *, allow_none: bool = False, integer: bool = False
) -> None:
    if value is None and allow_none:
        return
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        what = "integer" if integer else "number"
        raise ValueError(f"invalid {name} {value!r}: expected a positive {what}")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything a server needs to know, checked once when it is built.

    Invalid values raise :exc:`ValueError` with a one-line message.

    :param host: the interface(s) to listen on for TCP: a host name or address, or
        a sequence of them. ``None`` (the default) listens on every interface, IPv4
        and IPv6 (one dual-stack socket where the system supports it).
    :param port: the TCP port; ``0`` picks a free one (the same one for every host)
    :param backlog: the listen queue length, for each listening socket
    :param receive_size: the most bytes the handler asks for per receive
    :param wrap_stream: applied to each connection's stream before it is echoed, to
        inject faults or observe traffic; ``echo`` itself never changes
    :param drain_timeout: on a graceful stop, how long open connections may take
        to finish before they are closed (seconds)

    .. code-block:: python

        config = anyecho.ServerConfig(host="127.0.0.1", port=0)
        server = anyecho.EchoServer(config)
    """

    host: str | tuple[str, ...] | None = None
    port: int = DEFAULT_PORT
    backlog: int = 4096
    receive_size: int = RECEIVE_SIZE
    wrap_stream: StreamWrapper | None = None
    drain_timeout: float = 5.0

    def __post_init__(self) -> None:
        host: Any = self.host
        if isinstance(host, Sequence) and not isinstance(host, str):
            hosts = tuple(host)
            if not hosts or not all(isinstance(h, str) and h for h in hosts):
                raise ValueError(f"invalid host list {host!r}")
            object.__setattr__(self, "host", hosts)
        elif host is not None and (not isinstance(host, str) or not host):
            raise ValueError(f"invalid host {host!r}: expected a name or an address")
        _check_port(self.port)
        _check_positive("receive_size", self.receive_size, integer=True)
        _check_positive("backlog", self.backlog, integer=True)
        if self.drain_timeout < 0:
            raise ValueError(
                f"invalid drain_timeout {self.drain_timeout!r}: expected >= 0"
            )

    @property
    def hosts(self) -> tuple[str, ...] | None:
        """:attr:`host` as a tuple, or ``None`` for every interface."""
        if self.host is None:
            return None
        return (self.host,) if isinstance(self.host, str) else self.host

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with some settings changed (and validated again)."""
        return dataclasses.replace(self, **changes)
