"""Self-signed certificates: a new ECDSA P-256 key and a certificate for it,
signed by itself (a DTLS association's, and a TURN relay's TLS listener's
when none is configured)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = ["self_signed"]


def self_signed(
    common_name: str,
    not_before: dt.datetime,
    not_after: dt.datetime,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    key: ec.EllipticCurvePrivateKey | None = None,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A key (``key``, else a new one) and a certificate naming
    ``common_name`` as both subject and issuer, valid between the two times,
    with ``extensions`` (each with whether it is critical), signed with
    SHA-256. A caller whose extensions name the key (a CA's subject key
    identifier) makes the key first and hands it in."""
    if key is None:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return key, builder.sign(key, hashes.SHA256())
