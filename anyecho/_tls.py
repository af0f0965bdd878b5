"""Server-side TLS contexts from certificate files."""

from __future__ import annotations

import os
import re
import ssl

__all__ = ["tls_server_context"]

#: The type of each PEM block: ``-----BEGIN CERTIFICATE-----`` gives CERTIFICATE.
_PEM_BEGIN = re.compile(rb"^-----BEGIN ([A-Z0-9 ]+)-----", re.MULTILINE)
#: A PEM block that a passphrase protects (PKCS #8, or OpenSSL's older format).
_ENCRYPTED = re.compile(
    rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED"
)


def tls_server_context(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None = None,
    *,
    client_ca: str | os.PathLike[str] | None = None,
) -> ssl.SSLContext:
    """A server :class:`ssl.SSLContext` with secure defaults, from PEM files.

    TLS 1.2 is the oldest version accepted. With ``client_ca``, clients must
    present a certificate signed by one of its CAs.

    The private key must not be encrypted: a server that starts unattended has
    nobody to type a passphrase, so an encrypted key is an error rather than a
    prompt on the terminal.

    :param certfile: the server's certificate chain (PEM)
    :param keyfile: its private key (PEM), if not in ``certfile``
    :param client_ca: CA certificates (PEM) that client certificates must chain to
    :raises ValueError: with a one-line reason naming the file when a file is
        missing, unreadable, not PEM, holds the wrong kind of block, or the key is
        encrypted or does not match the certificate; the error from :mod:`ssl` is
        its ``__cause__``

    .. code-block:: python

        context = anyecho.tls_server_context("server.pem", "server.key")
        server = anyecho.EchoServer(port=0, ssl_context=context)
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except (OSError, _EncryptedKeyError) as exc:  # ssl.SSLError is an OSError
        raise ValueError(_cert_chain_problem(certfile, keyfile, exc)) from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=client_ca)
        except OSError as exc:
            raise ValueError(_client_ca_problem(client_ca, exc)) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class _EncryptedKeyError(Exception):
    """Raised by :func:`_no_passphrase`: OpenSSL asked for a key's passphrase."""


def _no_passphrase() -> bytes:
    # Without a password callback OpenSSL prompts on the terminal, which would
    # hang a server started by a service manager.
    raise _EncryptedKeyError


def _name(path: str | os.PathLike[str]) -> str:
    return repr(os.fspath(path))


_READ_ERRORS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "no such file"),
    (IsADirectoryError, "it is a directory, not a file"),
    (PermissionError, "permission denied (cannot read it)"),
)


def _read_pem(path: str | os.PathLike[str]) -> tuple[bytes, list[str]] | str:
    """The file's bytes and the type of each PEM block, or what makes it unusable."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        return next(
            (text for kind, text in _READ_ERRORS if isinstance(exc, kind)),
            f"cannot read it: {exc.strerror or exc}",
        )
    if not data.strip():
        return "the file is empty"
    kinds = [kind.decode("ascii") for kind in _PEM_BEGIN.findall(data)]
    if not kinds:
        der = data[:1] == b"\x30"  # an ASN.1 SEQUENCE: DER, PEM's binary form
        return "not a PEM file, no '-----BEGIN' line" + (
            " (it looks like binary DER; convert it to PEM)" if der else ""
        )
    return data, kinds


def _only(kinds: list[str]) -> str:
    return "only " + ", ".join(dict.fromkeys(kinds))


def _has_certificate(kinds: list[str]) -> bool:
    return any(kind in {"CERTIFICATE", "TRUSTED CERTIFICATE"} for kind in kinds)


def _has_private_key(kinds: list[str]) -> bool:
    return any(kind.endswith("PRIVATE KEY") for kind in kinds)


def _parses_as_certificates(path: str | os.PathLike[str]) -> bool:
    """Whether OpenSSL can read every certificate in the file."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        scratch.load_verify_locations(cafile=path)
    except (OSError, ValueError):
        return False
    return True


def _cert_chain_problem(
    certfile: str | os.PathLike[str],
    keyfile: str | os.PathLike[str] | None,
    exc: BaseException,
) -> str:
    """Why ``load_cert_chain(certfile, keyfile)`` failed, naming the file."""
    cert = f"TLS certificate {_name(certfile)}"
    key = cert if keyfile is None else f"TLS key {_name(keyfile)}"
    problem = _cert_problem(certfile)
    if problem is not None:
        return f"cannot load {cert}: {problem}"
    contents = _read_pem(certfile if keyfile is None else keyfile)
    if isinstance(contents, str):
        return f"cannot load {key}: {contents}"
    data, kinds = contents
    problem = _key_problem(data, kinds, exc, in_certfile=keyfile is None)
    if problem is not None:
        return f"cannot load {key}: {problem}"
    if isinstance(exc, ssl.SSLError) and exc.reason == "KEY_VALUES_MISMATCH":
        return (
            f"cannot load {key}: the private key does not match the certificate in "
            f"{_name(certfile)}"
        )
    files = _name(certfile) + (f" and {_name(keyfile)}" if keyfile is not None else "")
    return f"cannot load TLS certificate {files}: {_reason(exc)}"


def _key_problem(
    data: bytes, kinds: list[str], exc: BaseException, *, in_certfile: bool
) -> str | None:
    """What makes the file unusable as a private key, if anything."""
    if not _has_private_key(kinds):
        if in_certfile:
            return (
                "it holds a certificate but no private key; give the key file as "
                "well (--tls-key, or keyfile)"
            )
        return f"it holds no private key, {_only(kinds)}"
    if isinstance(exc, _EncryptedKeyError) or _ENCRYPTED.search(data):
        return (
            "the private key is encrypted (passphrase-protected); decrypt it first, "
            "for example with: openssl pkey -in KEY -out DECRYPTED"
        )
    if isinstance(exc, ssl.SSLError) and exc.reason != "KEY_VALUES_MISMATCH":
        return (
            "the private key in it is corrupt, truncated or of a kind OpenSSL "
            "cannot use"
        )
    return None


def _cert_problem(path: str | os.PathLike[str]) -> str | None:
    """What makes the file unusable as a list of certificates, if anything."""
    contents = _read_pem(path)
    if isinstance(contents, str):
        return contents
    _, kinds = contents
    if not _has_certificate(kinds):
        return f"it holds no certificate, {_only(kinds)}"
    if not _parses_as_certificates(path):
        return "a certificate in it is corrupt or truncated"
    return None


def _client_ca_problem(path: str | os.PathLike[str], exc: OSError) -> str:
    """Why ``load_verify_locations(cafile=path)`` failed, naming the file."""
    problem = _cert_problem(path) or _reason(exc)
    return f"cannot load TLS client CA {_name(path)}: {problem}"


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.strerror or str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc) or type(exc).__name__
