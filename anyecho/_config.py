"""Server settings: one frozen, validated object shared by the CLI and the API."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypedDict

if TYPE_CHECKING:
    from typing_extensions import Unpack

from ._args import DEFAULT_HOST, EVERY_INTERFACE, network
from ._checks import check_number
from ._echo import RECEIVE_SIZE
from ._udpfaults import UdpFaults, udp_faults_from
from ._wrap import WrapStream
from .faults import Faults

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DEFAULT_UDP_BLOCKED_PORTS",
    "EVERY_INTERFACE",
    "RateLimit",
    "ServerConfig",
    "ServerOptions",
]

#: ``max_connections_per_source="auto"``: one source may hold this fraction of the
#: global limit (1/N) but never fewer than the minimum (nor more than the global
#: limit), or this many connections where there is no global limit.
AUTO_PER_SOURCE_SHARE = 10
AUTO_PER_SOURCE_MIN = 10
AUTO_PER_SOURCE_UNLIMITED = 100

#: The port ``anyecho serve`` listens on when none is given. (RFC 862's port 7 is
#: privileged on most systems.)
DEFAULT_PORT = 8888


#: Source ports never answered: 0 (not a real port), every well-known port (0-1023:
#: echo 7, discard 9, daytime 13, qotd 17, chargen 19, time 37, DNS 53, NTP 123,
#: SNMP 161, ...), and registered ports of services known to reflect or amplify
#: (SSDP 1900, Apple Remote Desktop 3283, WS-Discovery 3702, mDNS 5353, CoAP 5683,
#: memcached 11211).
DEFAULT_UDP_BLOCKED_PORTS: frozenset[int] = frozenset(
    {*range(1024), 1900, 3283, 3702, 5353, 5683, 11211}
)


@dataclass(frozen=True)
class RateLimit:
    """A token bucket's settings: a sustained rate and the burst it allows."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        values: tuple[object, ...] = (self.rate, self.burst)
        if not all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf
            for v in values
        ):
            raise ValueError(
                f"invalid rate limit {self.rate!r}/s, burst {self.burst!r}: "
                "expected positive, finite numbers"
            )


def _check_port(port: object) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"invalid port {port!r}: expected an integer from 0 to 65535")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything a server needs to know, checked once when it is built.

    Invalid values raise :exc:`ValueError` with a one-line message.

    :param host: the interface(s) to listen on for TCP: a host name or address, or
        a sequence of them. The default is the loopback address ``127.0.0.1``:
        reachable from this machine only. ``"*"`` (or ``None``) listens on every
        interface, IPv4 and IPv6 (one socket for each family the system has):
        ask for it explicitly to serve the network.
    :param port: the TCP port; ``0`` picks a free one (the same one for every
        host); ``None`` serves no TCP (only the Unix sockets)
    :param backlog: the listen queue length, for each listening socket
    :param receive_size: the most bytes the handler asks for per receive
    :param wrap_stream: applied to each connection's stream before it is echoed, to
        inject faults or observe traffic; ``echo`` itself never changes
    :param faults: the faults to inject from the start
        (:class:`~anyecho.faults.Faults`); change them while the server runs
        with :meth:`~anyecho.EchoServer.set_faults`. They apply on top of
        ``wrap_stream``, which sees the traffic as it goes to and from the
        socket.
    :param drain_timeout: on a graceful stop, how long open connections may take
        to finish before they are closed (seconds)
    :param drain_delay: on a graceful stop, how long to go on accepting before
        the listeners close (seconds), while :attr:`EchoServer.ready
        <anyecho.EchoServer.ready>` is already false and ``/healthz`` answers 503:
        time for a load balancer's health check to take the server out, so that
        no client it sends meanwhile is refused. The drain (``drain_timeout``)
        starts when the listeners close; a second stop skips what is left.
    :param unix: Unix socket paths to listen on as well. A stale socket file left by
        a dead server is replaced; a path a live server holds is an error. The file
        is removed when the server stops.
    :param unix_mode: permissions of the Unix socket files (default: owner only)
    :param ssl_context: a server-side TLS context; when set, every TCP listener
        speaks TLS (see :func:`anyecho.tls_server_context`)
    :param tls_handshake_timeout: seconds a client has to complete the handshake
    :param max_connections: the most stream connections served at once; at the
        limit the server stops accepting (clients wait in the listen queue) until
        one closes. ``None`` for no limit.
    :param max_connections_per_source: the most stream connections served at once
        from one IP address, so that a few sources cannot take every slot. Past
        it a newcomer waits, accepted but not read, until one of its source's
        connections closes, holding no slot of ``max_connections`` meanwhile; as
        many may wait, from all sources together, as the limit, and a newcomer
        past that is reset at once (the ``source-limit`` error). ``"auto"`` (the
        default) is a tenth of ``max_connections``, but at least 10 (100 without
        a global limit): 100 with the defaults; see :attr:`per_source_limit`.
        Unix socket peers are not limited. Behind a proxy
        (``proxy_protocol``), the address counted is the client's, from the
        header. ``None`` for no limit.
    :param idle_timeout: close a connection that moved no byte, either way, for
        this many seconds; a send stuck on a peer that does not read counts as
        idle. ``None`` for no limit.
    :param reuse_port: bind TCP and UDP with ``SO_REUSEPORT``, so that several
        servers (processes) share the port and the kernel spreads clients over them
    :param udp: serve datagram echo on the same host(s) and port as TCP
    :param udp_blocked_ports: source ports whose datagrams are never answered
    :param udp_rate: per source address: sustained datagrams answered per second
        and burst
    :param udp_byte_rate: per source address: sustained bytes answered per second
        and burst
    :param udp_faults: impairments of the datagram echo: drop, duplicate, reorder,
        delay or corrupt a share of the datagrams (a
        :class:`~anyecho.faults.UdpFaults`, or a mapping of its fields); the
        server's :meth:`~anyecho.EchoServer.set_udp_faults` replaces them while
        it runs. Unset, those of ``faults`` (its ``udp``) apply
    :param proxy_protocol: read a PROXY protocol header (v1 or v2, as HAProxy,
        Envoy or AWS NLB send) at the start of every stream connection, before
        TLS and the echo, so that the logs and the per-source limit see the
        real client. Only :attr:`trusted_proxies` may connect then (and Unix
        socket peers); see :doc:`proxy-protocol`.
    :param trusted_proxies: the addresses (CIDR networks, or single addresses)
        of the proxies allowed to send the header; required with
        ``proxy_protocol``
    :param proxy_header_timeout: seconds a proxy has to send the whole header
    :param fds: listening sockets the process was given (their descriptors:
        socket activation, a supervisor), served instead of binding any: TCP
        (or TLS), Unix and UDP, as each socket is. ``host`` and ``port`` are
        not used then, and ``unix`` and ``udp`` must be left out (an error
        otherwise): the server binds nothing. It serves a duplicate
        of each descriptor; the one given stays open (see
        :func:`anyecho.listen_fds` and :doc:`socket-activation`).
    :param record: keep a recording of what each stream connection's client sent
        (see :attr:`EchoServer.recordings <anyecho.EchoServer.recordings>`); off
        by default (:func:`anyecho.testing.serving` turns it on)
    :param record_max_bytes: the bytes kept per recording; past it the recording
        is marked truncated and keeps counting bytes. ``None`` for no limit.
    :param record_max_connections: the recordings kept; past it the oldest is
        dropped. ``None`` for no limit.

    .. code-block:: python

        config = anyecho.ServerConfig(host="127.0.0.1", port=0)
        server = anyecho.EchoServer(config)
    """

    host: str | Sequence[str] | None = DEFAULT_HOST
    port: int | None = DEFAULT_PORT
    backlog: int = 4096
    receive_size: int = RECEIVE_SIZE
    wrap_stream: WrapStream | None = None
    faults: Faults | None = None
    drain_timeout: float = 5.0
    drain_delay: float = 0.0
    unix: Sequence[str] = ()
    unix_mode: int = 0o600
    ssl_context: ssl.SSLContext | None = None
    tls_handshake_timeout: float = 10.0
    max_connections: int | None = 1000
    max_connections_per_source: int | Literal["auto"] | None = "auto"
    idle_timeout: float | None = 300.0
    reuse_port: bool = False
    udp: bool = False
    udp_blocked_ports: frozenset[int] = field(
        default=DEFAULT_UDP_BLOCKED_PORTS, repr=False
    )
    udp_rate: RateLimit = field(default_factory=lambda: RateLimit(100.0, 100.0))
    udp_byte_rate: RateLimit = field(
        default_factory=lambda: RateLimit(256 * 1024.0, 128 * 1024.0)
    )
    udp_faults: UdpFaults | None = None
    proxy_protocol: bool = False
    trusted_proxies: Sequence[str] = ()
    proxy_header_timeout: float = 5.0
    fds: Sequence[int] = ()
    record: bool = False
    record_max_bytes: int | None = 1024 * 1024
    record_max_connections: int | None = 1000

    def __post_init__(self) -> None:
        self._check_host()
        if self.port is not None:
            _check_port(self.port)
        elif not self.unix and not self.fds:
            raise ValueError("nothing to serve: no TCP port and no Unix socket")
        check_number("receive_size", self.receive_size, integer=True)
        if self.faults is not None and not isinstance(self.faults, Faults):
            raise ValueError(
                f"invalid faults {self.faults!r}: expected an anyecho.Faults"
            )
        check_number("backlog", self.backlog, integer=True)
        unix: Any = self.unix
        paths = (unix,) if isinstance(unix, str | os.PathLike) else tuple(unix)
        object.__setattr__(self, "unix", tuple(os.fspath(path) for path in paths))
        if not 0 <= self.unix_mode <= 0o777:
            raise ValueError(f"invalid unix_mode {self.unix_mode:#o}")
        if self.ssl_context is not None and not isinstance(
            self.ssl_context, ssl.SSLContext
        ):
            raise ValueError("ssl_context must be an ssl.SSLContext")
        check_number("tls_handshake_timeout", self.tls_handshake_timeout)
        check_number(
            "max_connections", self.max_connections, allow_none=True, integer=True
        )
        if self.max_connections_per_source != "auto":
            check_number(
                "max_connections_per_source",
                self.max_connections_per_source,
                allow_none=True,
                integer=True,
            )
        check_number("idle_timeout", self.idle_timeout, allow_none=True)
        object.__setattr__(self, "udp_blocked_ports", frozenset(self.udp_blocked_ports))
        check_number("drain_timeout", self.drain_timeout, allow_zero=True)
        udp_faults = udp_faults_from(self.udp_faults)
        if udp_faults is None and self.faults is not None:
            udp_faults = self.faults.udp  # Faults(udp=...) given as the faults
        object.__setattr__(self, "udp_faults", udp_faults)
        check_number("drain_delay", self.drain_delay, allow_zero=True)
        self._check_proxy()
        self._check_fds()
        if not isinstance(self.record, bool):
            raise ValueError(  # noqa: TRY004 - every invalid setting is a ValueError
                f"invalid record {self.record!r}: expected True or False"
            )
        check_number(
            "record_max_bytes",
            self.record_max_bytes,
            allow_none=True,
            integer=True,
            allow_zero=True,
        )
        check_number(
            "record_max_connections",
            self.record_max_connections,
            allow_none=True,
            integer=True,
        )

    def _check_host(self) -> None:
        host: Any = self.host
        if isinstance(host, Sequence) and not isinstance(host, str):
            hosts = tuple(host)
            if not hosts or not all(isinstance(h, str) and h.strip() for h in hosts):
                raise ValueError(f"invalid host list {host!r}")
            if EVERY_INTERFACE in hosts and len(hosts) > 1:
                raise ValueError(
                    f"invalid host list {host!r}: '*' is every interface already"
                )
            object.__setattr__(
                self, "host", None if EVERY_INTERFACE in hosts else hosts
            )
        elif host is not None and (not isinstance(host, str) or not host.strip()):
            raise ValueError(f"invalid host {host!r}: expected a name or an address")
        elif host == EVERY_INTERFACE:
            object.__setattr__(self, "host", None)

    def _check_proxy(self) -> None:
        proxies: Any = self.trusted_proxies
        if isinstance(proxies, str):
            proxies = (proxies,)
        object.__setattr__(
            self, "trusted_proxies", tuple(str(network(p)) for p in proxies)
        )
        if self.proxy_protocol and not self.trusted_proxies:
            raise ValueError(
                "proxy_protocol needs trusted_proxies: the addresses of the "
                "proxies allowed to send the header"
            )
        if self.trusted_proxies and not self.proxy_protocol:
            raise ValueError("trusted_proxies is only used with proxy_protocol")
        check_number("proxy_header_timeout", self.proxy_header_timeout)

    def _check_fds(self) -> None:
        fds: Any = self.fds
        fds = (fds,) if isinstance(fds, int) else tuple(fds)
        for fd in fds:
            if isinstance(fd, bool) or not isinstance(fd, int) or fd < 0:
                raise ValueError(f"invalid fd {fd!r}: expected a descriptor >= 0")
        if len(set(fds)) != len(fds):
            raise ValueError(f"invalid fds {fds!r}: a descriptor given twice")
        object.__setattr__(self, "fds", fds)
        if fds and (self.unix or self.udp):
            raise ValueError(
                "fds: the server serves the sockets it is given; "
                "unix and udp are for sockets it binds itself"
            )

    @property
    def proxy_networks(
        self,
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """:attr:`trusted_proxies` as networks."""
        return tuple(network(p) for p in self.trusted_proxies)

    @property
    def per_source_limit(self) -> int | None:
        """The per-source limit in force: :attr:`max_connections_per_source`, with
        ``"auto"`` worked out."""
        limit = self.max_connections_per_source
        if limit != "auto":
            return limit
        if self.max_connections is None:
            return AUTO_PER_SOURCE_UNLIMITED
        share = max(AUTO_PER_SOURCE_MIN, self.max_connections // AUTO_PER_SOURCE_SHARE)
        return min(share, self.max_connections)

    @property
    def hosts(self) -> tuple[str, ...] | None:
        """:attr:`host` as a tuple, or ``None`` for every interface."""
        if self.host is None:
            return None
        return (self.host,) if isinstance(self.host, str) else tuple(self.host)

    def replace(self, **changes: Unpack[ServerOptions]) -> ServerConfig:
        """A copy with some settings changed (and validated again)."""
        return dataclasses.replace(self, **changes)


class ServerOptions(TypedDict, total=False):
    """:class:`ServerConfig`'s fields as keyword arguments, for type checkers.

    ``EchoServer(port=0, idle_timeout=5)``, :func:`~anyecho.serve` and
    :func:`~anyecho.testing.serving` take them; each is checked as the field of
    the same name. (A test keeps the two lists the same.)
    """

    host: str | Sequence[str] | None
    port: int | None
    backlog: int
    receive_size: int
    wrap_stream: WrapStream | None
    faults: Faults | None
    drain_timeout: float
    drain_delay: float
    unix: Sequence[str]
    unix_mode: int
    ssl_context: ssl.SSLContext | None
    tls_handshake_timeout: float
    max_connections: int | None
    max_connections_per_source: int | Literal["auto"] | None
    idle_timeout: float | None
    reuse_port: bool
    udp: bool
    udp_blocked_ports: frozenset[int]
    udp_rate: RateLimit
    udp_byte_rate: RateLimit
    udp_faults: UdpFaults | None
    proxy_protocol: bool
    trusted_proxies: Sequence[str]
    proxy_header_timeout: float
    fds: Sequence[int]
    record: bool
    record_max_bytes: int | None
    record_max_connections: int | None
