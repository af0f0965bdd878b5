"""Fault injection: an echo that is slow, fragmented, throttled, cut short or stuck.

:class:`Faults` describes a set of faults, and on which share of the connections
to apply them. Give it to the server (``faults=``), and change it while the
server runs (:meth:`~anyecho.EchoServer.set_faults`,
:meth:`~anyecho.EchoServer.clear_faults`):

.. code-block:: python

    faults = Faults(delay=(0.01, 0.1), fragment=16, fraction=0.5, seed=1)
    server = anyecho.EchoServer(host="127.0.0.1", port=0, faults=faults)
    ...
    server.set_faults(Faults(reset_after=0))  # reset every open connection now

The faults on the traffic are :class:`~anyio.abc.ByteStream` wrappers around a
connection's stream, under which :func:`anyecho.echo` runs; the handler itself
never changes. They compose, keep backpressure (they never buffer: a delayed or
throttled send simply takes longer, and the echo does not read again until it is
done), wait on AnyIO's clock and work on every AnyIO backend and transport. The
single wrappers (:func:`delay`, :func:`fragment`, :func:`throttle`,
:func:`read_delay`, :func:`read_throttle`, :func:`slow_close`,
:func:`close_after`, :func:`reset_after`, :func:`stall_after`) can also be
stacked by hand, and :meth:`Faults.stream_wrapper` gives them, fixed, as a
``wrap_stream``. :func:`add_fault_arguments` and :func:`faults_from_args` give a
command line the same faults (``anyecho serve --delay 50ms --fragment 16``).
"""

from __future__ import annotations

from ._args import add_fault_arguments, faults_from_args
from ._spec import Faults
from ._streams import (
    close_after,
    default_burst,
    delay,
    draw_delay,
    fragment,
    read_delay,
    read_throttle,
    reset_after,
    slow_close,
    stall_after,
    throttle,
)

__all__ = [
    "Faults",
    "add_fault_arguments",
    "close_after",
    "default_burst",
    "delay",
    "draw_delay",
    "faults_from_args",
    "fragment",
    "read_delay",
    "read_throttle",
    "reset_after",
    "slow_close",
    "stall_after",
    "throttle",
]


def _public_module() -> None:
    """Make each public name report this module, not the private one it is in."""
    import typing

    Faults.__annotations__ = typing.get_type_hints(Faults, include_extras=True)
    public = (Faults, close_after, default_burst, delay, draw_delay, fragment)
    more = (read_delay, read_throttle, reset_after, slow_close, stall_after, throttle)
    glue = (add_fault_arguments, faults_from_args)
    for value in (*public, *more, *glue):
        value.__module__ = __name__


_public_module()
