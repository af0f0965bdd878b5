"""Server-side TLS contexts from certificate files."""

from __future__ import annotations

import os
import ssl

__all__ = ["tls_server_context"]


def tls_server_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` with secure defaults, from PEM files.

    TLS 1.2 is the oldest version accepted. With ``client_ca``, clients must
    present a certificate signed by one of its CAs.

    :param certfile: the server's certificate chain (PEM)
    :param keyfile: its private key (PEM), if not in ``certfile``
    :param client_ca: CA certificates (PEM) that client certificates must chain to
    :raises ValueError: with a one-line reason when a file is missing or invalid

    .. code-block:: python

        context = anyecho.tls_server_context("server.pem", "server.key")
        server = anyecho.EchoServer(port=0, ssl_context=context)
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        files = f"{os.fspath(certfile)!r}" + (
            f" and {os.fspath(keyfile)!r}" if keyfile is not None else ""
        )
        raise ValueError(
            f"cannot load TLS certificate {files}: {_reason(exc)}"
        ) from None
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load client CA {os.fspath(client_ca)!r}: {_reason(exc)}"
            ) from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return exc.strerror or str(exc)
