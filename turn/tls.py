"""The certificate of a relay's TLS listener (``turns:``, RFC 8656 section
3.1, RFC 7065) when none is configured: a self-signed one, made once and kept
in a folder (``wadud serve`` keeps it under its data folder).

A browser checks a ``turns:`` server's certificate as it checks a web site's,
the name in the URL included, and there is no page on which to click through:
Chromium refuses a certificate it does not trust (ICE candidate error 701, no
relay candidate) and aioice gathers no relay candidate. So a self-signed
certificate serves a developer who trusts it by hand, and tests
(docs/turn.md, "TLS"); a relay that patients reach needs a certificate from a
CA their browsers trust, for the name their ``turns:`` URL gives.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from wadud import certs

#: What a self-signed certificate names: the loopback relay of ``wadud serve``.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
LIFETIME = dt.timedelta(days=365)
#: A kept certificate this close to its end is made anew.
RENEW_BEFORE = dt.timedelta(days=30)
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


def self_signed(
    folder: Path, names: Sequence[str] = LOOPBACK_NAMES, *, now: dt.datetime | None = None
) -> tuple[Path, Path]:
    """``(certificate, key)`` files in ``folder`` for ``names`` (host names or
    IP addresses): the ones already there while they match each other, name
    every one of ``names`` and are good for more than :data:`RENEW_BEFORE`;
    else a new P-256 key and a certificate for it, signed by itself. The key
    is readable by its owner only."""
    now = now or dt.datetime.now(dt.UTC)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    if _still_good(cert_path, key_path, names, now):
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    key, cert = certs.self_signed(
        f"Wadud TURN {names[0]} (self-signed)",
        now - dt.timedelta(hours=1),
        now + LIFETIME,
        [
            (x509.SubjectAlternativeName([_general_name(n) for n in names]), False),
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        ],
    )
    # The key first: a certificate is only kept beside the key it names.
    _write(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _still_good(cert_path: Path, key_path: Path, names: Sequence[str], now: dt.datetime) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        named = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    if cert.public_key() != key.public_key():
        return False
    if cert.not_valid_after_utc - now <= RENEW_BEFORE:
        return False
    return all(_general_name(n) in named for n in names)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` whole, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
