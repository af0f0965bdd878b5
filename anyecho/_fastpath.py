"""Event-loop-specific listeners that serve the same AnyIO streams for less CPU.

:func:`wrap_listener` is applied to every stream listener the server opens. It may
return a listener whose accepted streams are cheaper on the running event loop; it
must return one that honours the :class:`anyio.abc.SocketListener` contract
exactly, because ``echo`` and the fault wrappers only ever see AnyIO streams.
"""

from __future__ import annotations

from anyio.abc import SocketListener

__all__ = ["wrap_listener"]


def wrap_listener(listener: SocketListener) -> SocketListener:
    """The listener to accept from in place of ``listener`` (here: itself)."""
    return listener
