"""Listening sockets: bound here once, for the server and for the workers.

Every socket anyecho listens on is made by this module: TCP and UDP on each host
times one port (dual-stack and port-0 logic written once), and Unix sockets with
their stale-file handling. They are plain non-blocking :class:`socket.socket`
objects; the accept loop, the UDP loop and the worker supervisor take them from
here, and :func:`close` closes them so that a task waiting on one wakes at once.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
from collections.abc import MutableMapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Literal

import anyio

from ._errors import ListenError

__all__ = [
    "ListenAddress",
    "Transport",
    "bind_inet",
    "bind_unix",
    "close",
    "inherit",
    "listen_fds",
    "reset_on_close",
    "resolve",
    "resolve_now",
]

Transport = Literal["tcp", "tls", "unix", "udp"]

#: ``SO_LINGER`` on, zero seconds: ``close()`` resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)

#: ``getaddrinfo`` results, as :func:`bind_inet` takes them: (family, address)
Targets = list[tuple[socket.AddressFamily, tuple[Any, ...]]]


@dataclass(frozen=True)
class ListenAddress:
    """One address a server listens on.

    ``str()`` gives a URL-like form: ``tcp://127.0.0.1:8888``, ``tcp://[::1]:8888``.

    :param transport: ``tcp``, ``tls``, ``unix`` or ``udp``
    :param host: the IP address (``None`` for Unix sockets)
    :param port: the port number (``0`` for Unix sockets)
    :param path: the socket path, for Unix sockets
    """

    transport: Transport
    host: str | None = None
    port: int = 0
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return f"{self.transport}://{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{self.transport}://{host}:{self.port}"

    @classmethod
    def of_socket(cls, sock: socket.socket, transport: Transport) -> ListenAddress:
        """Where a bound socket listens."""
        local = sock.getsockname()
        if isinstance(local, tuple):
            return cls(transport, str(local[0]), int(local[1]))
        return cls(transport, path=os.fsdecode(local))


def _where(host: str | None, port: int) -> str:
    return f"[{host}]:{port}" if host and ":" in host else f"{host or '*'}:{port}"


def _targets(infos: list[Any]) -> Targets:
    return [(family, address) for family, _, _, _, address in sorted(set(infos))]


_FLAGS = socket.AI_PASSIVE | socket.AI_ADDRCONFIG


async def resolve(
    hosts: Sequence[str] | None, port: int, kind: socket.SocketKind
) -> Targets:
    """The addresses to bind for ``hosts`` (every interface for ``None``)."""
    targets: Targets = []
    for host in hosts or (None,):
        try:
            infos = await anyio.getaddrinfo(host, port, type=kind, flags=_FLAGS)
        except OSError as exc:
            raise _resolve_error(exc, host) from exc
        targets.extend(_targets(infos))
    return targets


def resolve_now(
    hosts: Sequence[str] | None, port: int, kind: socket.SocketKind
) -> Targets:
    """:func:`resolve`, blocking: for code that runs before any event loop."""
    targets: Targets = []
    for host in hosts or (None,):
        try:
            infos = socket.getaddrinfo(host, port, type=kind, flags=_FLAGS)
        except OSError as exc:
            raise _resolve_error(exc, host) from exc
        targets.extend(_targets(infos))
    return targets


def _resolve_error(exc: OSError, host: str | None) -> ListenError:
    return ListenError(
        exc.errno, f"cannot resolve host {host!r}: {exc.strerror or exc}"
    )


def bind_inet(
    targets: Targets,
    kind: socket.SocketKind,
    port: int,
    *,
    backlog: int | None,
    reuse_port: bool = False,
) -> list[socket.socket]:
    """Bind a socket to each target, all on one port; listen unless ``backlog`` is
    ``None``.

    With ``port`` 0 the first socket picks a free port and every further one
    takes the same. IPv6 sockets are IPv6-only (``IPV6_V6ONLY``), so that
    ``0.0.0.0`` and ``::`` can both be bound, as AnyIO and Trio do. On an error
    every socket bound so far is closed.

    :raises ListenError: with a one-line message naming the address
    """
    with ExitStack() as undo:
        sockets: list[socket.socket] = []
        for family, address in targets:
            sock = socket.socket(family, kind)
            undo.callback(sock.close)
            sock.setblocking(False)
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            bound = (address[0], port, *address[2:])
            try:
                sock.bind(bound)
                if backlog is not None:
                    sock.listen(backlog)
            except OSError as exc:
                name = "udp " if kind == socket.SOCK_DGRAM else ""
                reason = exc.strerror or str(exc)
                raise ListenError(
                    exc.errno,
                    f"{name}cannot listen on {_where(str(address[0]), port)}: {reason}",
                ) from exc
            port = sock.getsockname()[1]
            sockets.append(sock)
        undo.pop_all()
    return sockets


def bind_unix(path: str, mode: int, backlog: int) -> tuple[socket.socket, int]:
    """A listening Unix socket at ``path``, and the inode of its file.

    A stale socket file, left by a server that died, is replaced; a path that a
    live server holds, or where a file that is not a socket lies, is an error.
    Pass the inode to :func:`remove_unix` when done.

    :raises ListenError: with a one-line message naming the path
    """
    try:
        _check_unix_path(path)
    except OSError as exc:
        raise ListenError(
            exc.errno, f"cannot listen on unix:{path}: {exc.strerror}"
        ) from exc
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # stale: _check_unix_path said so
        sock.bind(path)
        os.chmod(path, mode)
        sock.listen(backlog)
        inode = os.stat(path).st_ino
    except OSError as exc:
        sock.close()
        raise ListenError(
            exc.errno, f"cannot listen on unix:{path}: {exc.strerror or exc}"
        ) from exc
    return sock, inode


def _check_unix_path(path: str) -> None:
    """Raise :exc:`OSError` unless ``path`` is free or holds a stale socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.EEXIST, "a file that is not a socket is there")
    with socket.socket(socket.AF_UNIX) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            return  # stale
        except BlockingIOError:
            pass  # its listen queue is full: very much alive
    raise OSError(errno.EADDRINUSE, "a live server listens there")


def remove_unix(path: str, inode: int) -> None:
    """Remove our socket file, unless something else has replaced it since."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` reset the connection (TCP RST) rather than end it.

    ``SO_LINGER`` on, with a zero timeout. Nothing happens to a socket that is
    closed already, or has no such option (a Unix socket ends as usual).
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def close(sock: socket.socket) -> None:
    """Close a socket a task may be waiting on (that task then ends at once)."""
    if sock.fileno() >= 0:
        anyio.notify_closing(sock)
    sock.close()


#: The first descriptor systemd passes (``SD_LISTEN_FDS_START``).
LISTEN_FDS_START = 3


def listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[tuple[int, str]]:
    """The sockets systemd passed this process, as ``sd_listen_fds(3)`` finds them.

    ``LISTEN_FDS`` descriptors from 3 on, with their names from
    ``LISTEN_FDNAMES`` (``unknown`` where none is given), when ``LISTEN_PID`` is
    this process's id; none otherwise (the variables were meant for another
    process). The variables are removed (``unset``), as ``sd_listen_fds(1)``
    does, so that no child takes them for its own, and the descriptors are
    marked close-on-exec.

    :param environ: the environment to read (default: :data:`os.environ`)
    :raises ValueError: when the variables are malformed
    """
    env = os.environ if environ is None else environ
    pid, count, names = (
        env.get(name) for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    )
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if pid is None or count is None:
        return []
    if not pid.strip().isdigit():
        raise ValueError(f"invalid LISTEN_PID {pid!r}: expected a process id")
    if int(pid) != os.getpid():
        return []
    if not count.strip().isdigit():
        raise ValueError(f"invalid LISTEN_FDS {count!r}: expected a number")
    fds = range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))
    labels = names.split(":") if names else []
    if labels and len(labels) != len(fds):
        raise ValueError(
            f"invalid LISTEN_FDNAMES {names!r}: {len(labels)} names "
            f"for {len(fds)} descriptors"
        )
    for fd in fds:
        with contextlib.suppress(OSError):
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
            fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return [(fd, labels[i] if labels else "unknown") for i, fd in enumerate(fds)]


def inherit(fd: int, *, tls: bool = False) -> tuple[socket.socket, ListenAddress]:
    """A socket to serve for the listening socket ``fd``, and where it listens.

    The socket is a duplicate of ``fd`` (which stays open and the caller's), so
    closing it leaves ``fd`` alone. A TCP stream socket must listen (it is
    served as TLS with ``tls``), a Unix stream socket too; a UDP socket must be
    bound.

    :raises ListenError: with a one-line message naming the descriptor, for a
        descriptor that is not open, not a socket, or not one that can be served
    """
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ListenError(exc.errno, f"fd {fd}: {reason}") from exc
    try:
        transport = _inherited_transport(fd, sock, tls)
        sock.setblocking(False)
        address = ListenAddress.of_socket(sock, transport)
    except BaseException:
        sock.close()
        raise
    return sock, address


def _inherited_transport(fd: int, sock: socket.socket, tls: bool) -> Transport:
    family, kind = sock.family, sock.type
    inet = family in (socket.AF_INET, socket.AF_INET6)
    if kind == socket.SOCK_STREAM and (inet or family == socket.AF_UNIX):
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise ListenError(
                errno.EINVAL, f"fd {fd}: a stream socket that does not listen"
            )
        if family == socket.AF_UNIX:
            return "unix"
        return "tls" if tls else "tcp"
    if kind == socket.SOCK_DGRAM and inet:
        if sock.getsockname()[1] == 0:
            raise ListenError(errno.EINVAL, f"fd {fd}: a UDP socket that is not bound")
        return "udp"
    raise ListenError(
        errno.EINVAL,
        f"fd {fd}: not a TCP, Unix stream or UDP socket ({family.name}, {kind.name})",
    )
