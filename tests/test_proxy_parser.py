"""The PROXY header parser on its own: every header, every split, any garbage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anyecho._proxy import V1_MAX_LENGTH, ProxyHeader, ProxyHeaderError, parse

from .utils import PROXY_V2_SIGNATURE, proxy_v1, proxy_v2, tlv

ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 65535)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A valid header, and what parsing it must give."""
    kind = draw(st.sampled_from(["v1", "v1-unknown", "v2", "v2-local", "v2-unspec"]))
    ips = draw(st.sampled_from([ipv4, ipv6]))
    source = (draw(ips), draw(ports))
    destination = (draw(ips), draw(ports))
    tlvs = b"".join(
        tlv(k, v)
        for k, v in draw(
            st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)))
        )
    )
    if kind == "v1":
        data = proxy_v1(source, destination)
        return data, ProxyHeader(1, "proxy", source, destination, len(data))
    if kind == "v1-unknown":
        data = proxy_v1(None)
        return data, ProxyHeader(1, "proxy", None, None, len(data))
    if kind == "v2-local":
        data = proxy_v2(source, destination, local=True, tlvs=tlvs)
        return data, ProxyHeader(2, "local", None, None, len(data))
    if kind == "v2-unspec":
        data = proxy_v2(None, tlvs=tlvs)
        return data, ProxyHeader(2, "proxy", None, None, len(data))
    data = proxy_v2(source, destination, tlvs=tlvs)
    return data, ProxyHeader(2, "proxy", source, destination, len(data))


@given(headers(), st.binary(max_size=64))
def test_every_split_of_a_header(
    header: tuple[bytes, ProxyHeader], payload: bytes
) -> None:
    data, expected = header
    for cut in range(len(data)):
        assert parse(data[:cut]) is None, cut
    # What follows the header is not looked at, and not counted in it.
    assert parse(data) == expected
    assert parse(data + payload) == expected


@given(st.binary(max_size=300))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        result = parse(data)
    except ProxyHeaderError:
        return
    assert result is None or 0 < result.length <= len(data)


@given(headers(), st.integers(0, 200), st.integers(0, 255))
def test_a_corrupted_header_never_crashes(
    header: tuple[bytes, ProxyHeader], position: int, value: int
) -> None:
    data = bytearray(header[0])
    data[position % len(data)] = value
    try:
        result = parse(bytes(data))
    except ProxyHeaderError:
        return
    assert result is None or result.length <= len(data)


def test_unix_addresses() -> None:
    data = proxy_v2("/run/client.sock", "/run/echo.sock")
    assert parse(data) == ProxyHeader(
        2, "proxy", "/run/client.sock", "/run/echo.sock", len(data)
    )


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 80\r\n",
        b"PROXY TCP4 ::1 ::1 80 80\r\n",
        b"PROXY TCP6 1.2.3.4 5.6.7.8 80 80\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n",
        b"PROXY UDP4 1.2.3.4 5.6.7.8 80 80\r\n",
        b"PROXY TCP4 1.2.3.4\x00",
        b"PROXY " + b"A" * V1_MAX_LENGTH,
        b"PROXY\r\n",
        PROXY_V2_SIGNATURE + b"\x11",  # version 1 in a v2 signature
        PROXY_V2_SIGNATURE + b"\x22",  # command 2
        PROXY_V2_SIGNATURE + b"\x21\x41",  # family 4
        PROXY_V2_SIGNATURE + b"\x21\x13",  # transport 3
        PROXY_V2_SIGNATURE + b"\x21\x11\x00\x04abcd",  # an IPv4 block cut short
        PROXY_V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12),  # IPv6 cut short
        PROXY_V2_SIGNATURE + b"\x21\x31\x00\x10" + bytes(16),  # Unix cut short
        b"\r\n\r\n\x00\r\nQUIT!",
    ],
)
def test_malformed(data: bytes) -> None:
    with pytest.raises(ProxyHeaderError):
        parse(data)


def test_fails_at_the_first_byte_that_cannot_start_a_header() -> None:
    with pytest.raises(ProxyHeaderError):
        parse(b"h")
    with pytest.raises(ProxyHeaderError):
        parse(b"PROXX")
    assert parse(b"") is None
