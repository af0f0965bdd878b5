"""The exceptions the library raises, and the kinds of error the server counts."""

from __future__ import annotations

from typing import Literal

__all__ = ["ErrorKind", "ListenError", "describe"]

#: What :attr:`anyecho.StatsSnapshot.errors` counts, by kind:
#:
#: - ``accept``: ``accept()`` failed (out of descriptors or memory, or a pending
#:   connection died first);
#: - ``reset``: a connection lost to its peer (reset, broken pipe, gone);
#: - ``handler``: an exception from the echo or a ``wrap_stream`` wrapper;
#: - ``tls``: a failed TLS handshake;
#: - ``timeout``: a connection closed as idle;
#: - ``source-limit``: a connection reset at the per-source limit;
#: - ``proxy``: a connection ended for its PROXY protocol header: from a source
#:   not trusted, or a header that was malformed, cut short or late;
#: - ``udp receive``: a receive error on a UDP socket (an ICMP error).
ErrorKind = Literal[
    "accept",
    "reset",
    "handler",
    "tls",
    "timeout",
    "source-limit",
    "proxy",
    "udp receive",
]


class ListenError(OSError):
    """A listening socket could not be opened; ``str()`` is a one-line reason."""

    def __str__(self) -> str:
        return str(self.strerror)


def describe(exc: BaseException) -> str:
    """``Type: message`` of the error behind ``exc``, for one log line."""
    cause = exc if isinstance(exc, OSError) else (exc.__cause__ or exc)
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__
