"""Errors of the ``rtc`` package.

One root, :class:`RtcError`. As in h11, "the peer broke the protocol" (parse
errors, which are also ``ValueError``: counted and dropped) is kept apart from
"we were asked to do something invalid".
"""

from __future__ import annotations


class RtcError(Exception):
    """Root of every error raised by ``rtc``."""


class StunParseError(RtcError, ValueError):
    """Bytes that are not a well-formed STUN message (RFC 8489 section 5) or
    attribute (section 14); TURN's relay and ICE's checks both drop them."""


class RtpParseError(RtcError, ValueError):
    """Bytes that are not a well-formed RTP packet (RFC 3550 section 5.1, RFC 8285)."""


class RtcpParseError(RtcError, ValueError):
    """Bytes that are not a well-formed (compound) RTCP packet (RFC 3550 section 6)."""


class SdpError(RtcError):
    """Root of the session description errors (RFC 8866, RFC 8829)."""


class SdpParseError(SdpError, ValueError):
    """Text that is not a well-formed session description (RFC 8866 section 5)."""


class SdpNegotiationError(SdpError):
    """A well-formed description that cannot be answered or offered as asked
    (RFC 3264 section 6, RFC 8829 section 5.3): no ICE credentials, no DTLS
    fingerprint, media that cannot share one BUNDLE transport, clashing
    payload types or extension ids."""


# --- ICE, DTLS and SRTP (rtc/ice.py, rtc/dtls.py, rtc/srtp.py) ----------------


class IceError(RtcError):
    """Root of the ICE-lite errors (RFC 8445)."""


class IceCheckError(IceError):
    """A connectivity check refused with a STUN error code (RFC 8445 section 7.3.1).

    ``code`` is what went on the wire: 400, 401, 420 or 487.
    """

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code} {reason}")


class IceStateError(IceError, AssertionError):
    """The agent was asked for a transition its table does not have (a bug, not a peer fault)."""


class DtlsError(RtcError):
    """Root of the DTLS errors (RFC 6347, RFC 5764)."""


class DtlsHandshakeError(DtlsError):
    """The DTLS handshake failed: a fatal alert, a protocol fault or no SRTP profile."""


class DtlsFingerprintError(DtlsHandshakeError):
    """The peer's certificate does not match the SDP fingerprint (RFC 8122 section 5)."""


class DtlsTimeoutError(DtlsHandshakeError):
    """The handshake did not complete after the last retransmission (RFC 6347 section 4.2.4)."""


class DtlsStateError(DtlsError, AssertionError):
    """We were asked to do something the DTLS state does not allow (a bug, not a peer fault)."""


class SrtpError(RtcError):
    """Root of the SRTP/SRTCP errors (RFC 3711)."""


class SrtpAuthError(SrtpError):
    """Authentication of an SRTP/SRTCP packet failed (RFC 3711 section 3.4): counted, dropped."""


class SrtpReplayError(SrtpError):
    """An SRTP/SRTCP packet was replayed or is too old (RFC 3711 section 3.3.2)."""
