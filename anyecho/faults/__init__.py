"""Fault injection: an echo that is slow, fragmented, throttled, cut short or stuck.

Each fault is a :class:`~anyio.abc.ByteStream` wrapper that the server applies
around a connection (through :attr:`ServerConfig.wrap_stream
<anyecho.ServerConfig.wrap_stream>`) before :func:`anyecho.echo` runs on it; the
handler itself never changes. The wrappers compose, keep backpressure (they never
buffer: a delayed or throttled send simply takes longer, and the echo does not
read again until it is done) and work on every AnyIO backend and transport.

:class:`Faults` describes a set of faults, and on which share of the connections to
apply them; its :meth:`~Faults.stream_wrapper` is what the server takes:

.. code-block:: python

    faults = Faults(delay=(0.01, 0.1), fragment=16, fraction=0.5, seed=1)
    server = anyecho.EchoServer(host="127.0.0.1", port=0,
                                wrap_stream=faults.stream_wrapper())

The single wrappers (:func:`delay`, :func:`fragment`, :func:`throttle`,
:func:`close_after`, :func:`reset_after`, :func:`stall_after`) can also be
stacked by hand. :func:`add_fault_arguments` and :func:`faults_from_args` give a
command line the same faults (``anyecho serve --delay 0.05 --fragment 16``).

:class:`UdpFaults` impairs the datagram echo instead: it drops, duplicates,
reorders, delays or corrupts a seeded share of the datagrams
(``Faults(udp=UdpFaults(drop=0.1, seed=1))``, or the server's ``udp_faults``
setting).
"""

from __future__ import annotations

from .._udpfaults import UdpFate, UdpFaults
from ._args import add_fault_arguments, faults_from_args
from ._spec import Faults
from ._streams import (
    close_after,
    default_burst,
    delay,
    fragment,
    reset_after,
    stall_after,
    throttle,
)

__all__ = [
    "Faults",
    "UdpFate",
    "UdpFaults",
    "add_fault_arguments",
    "close_after",
    "default_burst",
    "delay",
    "faults_from_args",
    "fragment",
    "reset_after",
    "stall_after",
    "throttle",
]


def _public_module() -> None:
    """Make each public name report this module, not the private one it is in."""
    import typing

    Faults.__annotations__ = typing.get_type_hints(Faults, include_extras=True)
    UdpFaults.__annotations__ = typing.get_type_hints(UdpFaults, include_extras=True)
    public = (
        Faults,
        UdpFaults,
        close_after,
        default_burst,
        delay,
        fragment,
        reset_after,
    )
    glue = (add_fault_arguments, faults_from_args)
    for value in (*public, stall_after, throttle, *glue):
        value.__module__ = __name__


_public_module()
