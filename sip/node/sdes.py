"""SRTP keyed by SDES: the keys a phone call's SDP carried (RFC 4568, RFC 3711).

A phone leg on ``RTP/SAVP`` has two master keys from ``a=crypto``
(:class:`sip.wire.sdp.Crypto`): ours protects what we send, the far end's
unprotects what comes (RFC 4568 section 6.1: each side's key is for the
media it sends). Both suites the bridge takes are AES counter mode with an
HMAC-SHA1 tag of 80 or 32 bits (RFC 4568 section 6.2, RFC 3711 section
4.1.1 and 4.2.1); the 30 bytes of an SDES key are master key then master
salt, the layout libsrtp takes as is.

This is its own module, beside :mod:`rtc.srtp` rather than in it, because
:mod:`rtc.srtp` is keyed by DTLS-SRTP's profiles (RFC 5764), which name
neither SDES suite nor their 32-bit tag.
"""

from __future__ import annotations

import pylibsrtp

from rtc.errors import SrtpAuthError, SrtpError
from sip.wire.sdp import Crypto, SrtpSuite

__all__ = ["SdesSession"]

_PROFILES: dict[SrtpSuite, int] = {
    SrtpSuite.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpSuite.AES_CM_128_HMAC_SHA1_32: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
}


def _session(crypto: Crypto, ssrc_type: int) -> pylibsrtp.Session:
    policy = pylibsrtp.Policy(
        key=crypto.key, ssrc_type=ssrc_type, srtp_profile=_PROFILES[crypto.suite]
    )
    return pylibsrtp.Session(policy)


class SdesSession:
    """One call's SRTP contexts: ``local`` protects, ``remote`` unprotects.

    Any SSRC is accepted inbound (RFC 3711 section 3.2.3 keeps one context
    per SSRC; libsrtp makes it on the first packet), so a far end that
    renumbers its stream after a transfer needs no new session. A new key
    from a re-INVITE needs a new session (:meth:`keys` tells whether).
    """

    __slots__ = ("_inbound", "_outbound", "keys")

    def __init__(self, local: Crypto, remote: Crypto) -> None:
        self.keys = (local, remote)
        try:
            self._outbound = _session(local, pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
            self._inbound = _session(remote, pylibsrtp.Policy.SSRC_ANY_INBOUND)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"cannot create SRTP session: {exc}") from exc

    def protect(self, packet: bytes) -> bytes:
        """Encrypt and tag one RTP packet (RFC 3711 section 3.3)."""
        try:
            return self._outbound.protect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(str(exc)) from exc

    def unprotect(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTP packet (RFC 3711
        section 3.3). Raises :class:`~rtc.errors.SrtpAuthError` for a tag
        that does not verify, :class:`~rtc.errors.SrtpError` for anything
        else (a replay, a packet too short for a tag)."""
        try:
            return self._inbound.unprotect(packet)
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            if str(exc) == "authentication failure":
                raise SrtpAuthError(str(exc)) from exc
            raise SrtpError(str(exc)) from exc
