"""The PROXY protocol, versions 1 and 2: a sans-I/O parser of the header.

A load balancer in front of the server (HAProxy, Envoy, AWS NLB, ...) opens each
connection with a header that says who the real client is. :func:`parse` takes
the bytes received so far and says whether they are a complete header (and how
long it is), need more bytes, or can never be one: the connection, the timeout
and the trust in the sender are the server's business (:mod:`._connection`).

Written here rather than taken from PyPI: the one maintained package
(``proxy-protocol``) reads through asyncio streams only, and its parser lets
``struct.error`` and ``ValueError`` out of malformed address blocks and ports,
where a server needs one error type for anything a peer can send. This one is
small, typed, and checked byte by byte by property tests.

Specification: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final, Literal

__all__ = [
    "V1_MAX_LENGTH",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyHeaderError",
    "parse",
]

#: The first 12 bytes of every version 2 header.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_PREFIX: Final = b"PROXY "
#: The longest version 1 header, CRLF included.
V1_MAX_LENGTH: Final = 107
_V2_FIXED: Final = 16

#: An address as ``accept()`` gives it (host, port), or a Unix socket path.
Address = tuple[str, int] | str


class ProxyHeaderError(ValueError):
    """The bytes are not, and can never become, a valid PROXY header."""


@dataclass(frozen=True)
class ProxyHeader:
    """A complete PROXY header.

    :param version: 1 or 2
    :param command: ``proxy`` (a relayed connection), or ``local`` (one the
        proxy opened itself, such as a health check: no client behind it)
    :param source: the real client's address; ``None`` where the header gives
        none (``LOCAL``, v1 ``UNKNOWN``, v2 ``UNSPEC``): the connection's own
        peer is then the client
    :param destination: the address the client connected to, or ``None``
    :param length: the header's size in bytes: what follows it is payload
    """

    version: int
    command: Literal["proxy", "local"]
    source: Address | None
    destination: Address | None
    length: int


def parse(data: bytes | bytearray | memoryview) -> ProxyHeader | None:
    """The header at the start of ``data``, or ``None`` if more bytes are needed.

    Bytes past the header are not looked at. Never raises anything but
    :exc:`ProxyHeaderError`, whatever ``data`` holds, and raises it as soon as
    the bytes so far cannot start a header.
    """
    data = bytes(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    if data:
        raise ProxyHeaderError("not a PROXY header")
    return None


def _parse_v1(data: bytes) -> ProxyHeader | None:
    end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
    line = data[: V1_MAX_LENGTH if end < 0 else end]
    if end < 0 and line.endswith(b"\r"):
        line = line[:-1]  # the CRLF may be coming
    if not line.startswith(_V1_PREFIX[: len(line)]):
        raise ProxyHeaderError("not a PROXY header")
    if not all(0x20 <= byte < 0x7F for byte in line):
        raise ProxyHeaderError("v1 header: a byte that is not printable ASCII")
    if end < 0:
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX_LENGTH} bytes")
        return None
    fields = line.decode("ascii").split(" ")
    length = end + 2
    family = fields[1] if len(fields) > 1 else ""
    if family == "UNKNOWN":
        return ProxyHeader(1, "proxy", None, None, length)
    if family not in ("TCP4", "TCP6") or len(fields) != 6:
        raise ProxyHeaderError(f"v1 header: bad line {line[:V1_MAX_LENGTH]!r}")
    version = 4 if family == "TCP4" else 6
    source = (_v1_address(fields[2], version), _v1_port(fields[4]))
    destination = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(1, "proxy", source, destination, length)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        address = None
    if address is None or address.version != version:
        raise ProxyHeaderError(f"v1 header: {text!r} is not an IPv{version} address")
    return str(address)


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 5):
        raise ProxyHeaderError(f"v1 header: bad port {text!r}")
    port = int(text)
    if port > 65535 or (text.startswith("0") and text != "0"):
        raise ProxyHeaderError(f"v1 header: bad port {text!r}")
    return port


_INET: Final = struct.Struct("!4s4sHH")
_INET6: Final = struct.Struct("!16s16sHH")
_UNIX_PATH: Final = 108


def _parse_v2(data: bytes) -> ProxyHeader | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyHeaderError("not a PROXY header")
    if len(data) > 12:
        if data[12] >> 4 != 2:
            raise ProxyHeaderError(f"v2 header: unknown version {data[12] >> 4}")
        if data[12] & 0x0F > 1:
            raise ProxyHeaderError(f"v2 header: unknown command {data[12] & 0x0F}")
    if len(data) > 13 and (data[13] >> 4 > 3 or data[13] & 0x0F > 2):
        raise ProxyHeaderError(f"v2 header: unknown address family {data[13]:#04x}")
    if len(data) < _V2_FIXED:
        return None
    size = int.from_bytes(data[14:16], "big")
    length = _V2_FIXED + size
    if len(data) < length:
        return None
    if data[12] & 0x0F == 0:
        # LOCAL: the proxy's own connection; the address block is ignored.
        return ProxyHeader(2, "local", None, None, length)
    source, destination = _v2_addresses(data[13] >> 4, data[_V2_FIXED:length])
    return ProxyHeader(2, "proxy", source, destination, length)


def _v2_addresses(family: int, block: bytes) -> tuple[Address | None, Address | None]:
    """The source and destination in a v2 address block (TLVs after it)."""
    size = len(block)
    source: Address | None = None
    destination: Address | None = None
    if family == 1:
        if size < _INET.size:
            raise ProxyHeaderError(f"v2 header: {size} bytes for an IPv4 block")
        src, dst, sport, dport = _INET.unpack_from(block)
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    elif family == 2:
        if size < _INET6.size:
            raise ProxyHeaderError(f"v2 header: {size} bytes for an IPv6 block")
        src, dst, sport, dport = _INET6.unpack_from(block)
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    elif family == 3:
        if size < 2 * _UNIX_PATH:
            raise ProxyHeaderError(f"v2 header: {size} bytes for a Unix block")
        source = _unix_path(block[:_UNIX_PATH])
        destination = _unix_path(block[_UNIX_PATH : 2 * _UNIX_PATH])
    # family 0 (UNSPEC): no address; the rest (TLVs) is skipped.
    return source, destination


def _unix_path(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
