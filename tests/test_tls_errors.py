"""Unusable certificate, key and client CA files: one line that names the file.

``tls_server_context`` turns every failure to load a file into a ``ValueError``
whose message says which file is wrong and how, with the error from :mod:`ssl` as
its ``__cause__``; ``anyecho serve`` shows that line alone.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from anyecho import tls_server_context

from .processes import one_line_error


@dataclass(frozen=True)
class Files:
    """PEM files, good and bad, in one temporary directory."""

    dir: Path
    cert: Path  # the server's certificate, without its key
    key: Path  # its private key
    both: Path  # the key and the certificate in one file
    other_key: Path  # the key of another certificate
    encrypted_key: Path  # ``key`` under a passphrase (PKCS #8)
    legacy_encrypted_key: Path  # the same in OpenSSL's older format
    ca: Path  # the CA that signed ``cert``
    der: Path  # ``cert`` in binary DER
    text: Path  # a text file with no PEM block in it
    empty: Path
    corrupt: Path  # ``cert`` with a line of its base64 replaced
    missing: Path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, anyecho_ca: trustme.CA) -> Files:
    d = tmp_path_factory.mktemp("tls")
    ca = anyecho_ca
    issued = ca.issue_cert("localhost")
    issued.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    issued.private_key_pem.write_to_path(str(d / "key.pem"))
    issued.private_key_and_cert_chain_pem.write_to_path(str(d / "both.pem"))
    ca.issue_cert("other.example").private_key_pem.write_to_path(str(d / "other.pem"))
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    for name, private_format in [
        ("encrypted.pem", serialization.PrivateFormat.PKCS8),
        ("legacy-encrypted.pem", serialization.PrivateFormat.TraditionalOpenSSL),
    ]:
        (d / name).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                private_format,
                serialization.BestAvailableEncryption(b"passphrase"),
            )
        )
    cert_pem = issued.cert_chain_pems[0].bytes().decode("ascii")
    (d / "cert.der").write_bytes(ssl.PEM_cert_to_DER_cert(cert_pem))
    (d / "notes.txt").write_text("this is not a certificate\n")
    (d / "empty.pem").write_text("")
    lines = cert_pem.splitlines()
    lines[2] = "!" * len(lines[2])
    (d / "corrupt.pem").write_text("\n".join(lines) + "\n")
    return Files(
        dir=d,
        cert=d / "cert.pem",
        key=d / "key.pem",
        both=d / "both.pem",
        other_key=d / "other.pem",
        encrypted_key=d / "encrypted.pem",
        legacy_encrypted_key=d / "legacy-encrypted.pem",
        ca=d / "ca.pem",
        der=d / "cert.der",
        text=d / "notes.txt",
        empty=d / "empty.pem",
        corrupt=d / "corrupt.pem",
        missing=d / "missing.pem",
    )


def load_error(
    cert: Path, key: Path | None = None, client_ca: Path | None = None
) -> ValueError:
    with pytest.raises(ValueError, match=r"^cannot load TLS ") as caught:
        tls_server_context(cert, key, client_ca=client_ca)
    error = caught.value
    assert "\n" not in str(error)
    assert "_ssl.c" not in str(error)  # no OpenSSL internals
    assert isinstance(error.__cause__, Exception)  # the original error is kept
    return error


def test_good_files_load(files: Files) -> None:
    context = tls_server_context(files.cert, files.key, client_ca=files.ca)
    assert context.verify_mode == ssl.CERT_REQUIRED
    context = tls_server_context(str(files.both))
    assert context.verify_mode == ssl.CERT_NONE


# (certificate, key, what the message says): the file named is the faulty one.
CHAIN_CASES = {
    "missing certificate": ("missing", None, "certificate", "no such file"),
    "missing key": ("cert", "missing", "key", "no such file"),
    "certificate is a directory": ("dir", None, "certificate", "is a directory"),
    "key is a directory": ("cert", "dir", "key", "is a directory"),
    "certificate not PEM": ("text", "key", "certificate", "not a PEM file"),
    "certificate in DER": ("der", "key", "certificate", "binary DER"),
    "key not PEM": ("cert", "text", "key", "not a PEM file"),
    "empty certificate": ("empty", "key", "certificate", "empty"),
    "empty key": ("cert", "empty", "key", "empty"),
    "corrupt certificate": ("corrupt", "key", "certificate", "corrupt or truncated"),
    "certificate without its key": ("cert", None, "certificate", "no private key"),
    "key file holds a certificate": ("cert", "cert", "key", "only CERTIFICATE"),
    "files swapped": ("key", "cert", "certificate", "holds no certificate"),
    "key does not match": ("cert", "other_key", "key", "does not match"),
    "encrypted key": ("cert", "encrypted_key", "key", "encrypted"),
    "encrypted key, old format": ("cert", "legacy_encrypted_key", "key", "encrypted"),
}


@pytest.mark.parametrize(
    ("cert", "key", "faulty", "reason"), CHAIN_CASES.values(), ids=CHAIN_CASES.keys()
)
def test_certificate_and_key_errors(
    files: Files, cert: str, key: str | None, faulty: str, reason: str
) -> None:
    cert_path: Path = getattr(files, cert)
    key_path: Path | None = getattr(files, key) if key else None
    error = load_error(cert_path, key_path)
    named = cert_path if faulty == "certificate" or key_path is None else key_path
    what = "TLS key" if faulty == "key" and key_path is not None else "TLS certificate"
    assert str(error).startswith(f"cannot load {what} {str(named)!r}: "), error
    assert reason in str(error)


def test_mismatch_names_both_files(files: Files) -> None:
    error = load_error(files.cert, files.other_key)
    assert str(files.cert) in str(error)
    assert isinstance(error.__cause__, ssl.SSLError)


def test_missing_file_keeps_the_os_error(files: Files) -> None:
    assert isinstance(load_error(files.missing).__cause__, FileNotFoundError)


def test_encrypted_key_does_not_prompt(files: Files) -> None:
    # Without a password callback OpenSSL would ask on the terminal; the error
    # comes at once instead, as it does with no terminal at all.
    error = load_error(files.cert, files.encrypted_key)
    assert "passphrase" in str(error)


@pytest.mark.skipif(
    os.geteuid() == 0, reason="root reads files whatever their permissions"
)
def test_unreadable_key(files: Files, tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(files.key.read_bytes())
    key.chmod(0)
    error = load_error(files.cert, key)
    assert str(error).startswith(f"cannot load TLS key {str(key)!r}: permission")


CA_CASES = {
    "missing": ("missing", "no such file"),
    "directory": ("dir", "is a directory"),
    "not PEM": ("text", "not a PEM file"),
    "DER": ("der", "binary DER"),
    "empty": ("empty", "empty"),
    "a key, not a certificate": ("key", "holds no certificate"),
    "corrupt": ("corrupt", "corrupt or truncated"),
}


@pytest.mark.parametrize(("ca", "reason"), CA_CASES.values(), ids=CA_CASES.keys())
def test_client_ca_errors(files: Files, ca: str, reason: str) -> None:
    ca_path: Path = getattr(files, ca)
    error = load_error(files.both, client_ca=ca_path)
    assert str(error).startswith(f"cannot load TLS client CA {str(ca_path)!r}: ")
    assert reason in str(error)


# ``anyecho serve`` options (file names are Files fields), and the faulty file.
CLI_CASES = {
    "certificate without --tls-key": (["--tls-cert", "cert"], "cert", "no private key"),
    "missing certificate": (["--tls-cert", "missing"], "missing", "no such file"),
    "mismatched --tls-key": (
        ["--tls-cert", "cert", "--tls-key", "other_key"],
        "other_key",
        "does not match",
    ),
    "bad --tls-client-ca": (
        ["--tls-cert", "both", "--tls-client-ca", "text"],
        "text",
        "not a PEM file",
    ),
}


@pytest.mark.parametrize(
    ("options", "faulty", "reason"), CLI_CASES.values(), ids=CLI_CASES.keys()
)
def test_serve_shows_one_line(
    files: Files, options: list[str], faulty: str, reason: str
) -> None:
    argv = [a if a.startswith("--") else str(getattr(files, a)) for a in options]
    status, line = one_line_error("serve", "--port", "0", *argv)
    assert status == 2  # a usage error, like every other bad option
    assert "anyecho: error: cannot load TLS " in line
    assert repr(str(getattr(files, faulty))) in line
    assert reason in line
    assert "_ssl.c" not in line
