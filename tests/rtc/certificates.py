"""The DTLS certificates of the tests' two sides, made once at a fixed time so a
test does not depend on the clock: the client's (a browser stand-in) and the
server's (our endpoint, or the worker); and, made on first use, a peer
configured as GStreamer's DTLS agent (gst-plugins-bad ext/dtls) configures
itself: an RSA-2048 certificate, OpenSSL's cipher list
``ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH`` and only SRTP_AES128_CM_SHA1_80."""

from __future__ import annotations

import datetime
import functools

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from rtc.dtls import SRTP_AES128_CM_SHA1_80, DtlsCertificate, SrtpProfile

ISSUED = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC)
CLIENT_CERT = DtlsCertificate.generate(ISSUED)
SERVER_CERT = DtlsCertificate.generate(ISSUED)


#: The SRTP profiles GStreamer 1.22's DTLS agent offers.
GSTREAMER_PROFILES = (SRTP_AES128_CM_SHA1_80,)


class GstreamerLikeCertificate(DtlsCertificate):
    """Our endpoint's contexts with GStreamer's cipher list in place of ours,
    so the peer's offer and choice of suites are not the ones under test."""

    def __init__(self, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> None:
        super().__init__(key, certificate)
        self._ours: dict[tuple[SrtpProfile, ...], SSL.Context] = {}

    def context(self, profiles: tuple[SrtpProfile, ...]) -> SSL.Context:
        # pyOpenSSL refuses to change a context once a connection uses it.
        ctx = self._ours.get(profiles)
        if ctx is None:
            ctx = self._ours[profiles] = super().context(profiles)
            ctx.set_cipher_list(b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH")
        return ctx


@functools.cache
def gstreamer_like_certificate() -> GstreamerLikeCertificate:
    """An RSA-2048 self-signed certificate, as GStreamer's DTLS agent makes one."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "rsa-peer")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(ISSUED - datetime.timedelta(days=1))
        .not_valid_after(ISSUED + datetime.timedelta(days=365 * 50))
        .sign(key, hashes.SHA256())
    )
    return GstreamerLikeCertificate(key, certificate)
