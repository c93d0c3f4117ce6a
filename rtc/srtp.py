"""SRTP and SRTCP sessions keyed by DTLS-SRTP (RFC 3711, RFC 5764 section 4.2, RFC 7714).

A thin layer over pylibsrtp: one :class:`SrtpSession` per DTLS association
holds the outbound session (our write key) and the inbound one (the peer's
write key). Which exported key is ours depends only on our DTLS role, so the
session is built from :class:`rtc.dtls.SrtpKeys` and that role.

pylibsrtp raises one error type with libsrtp's message; here it becomes
:class:`~rtc.errors.SrtpAuthError` for a failed tag,
:class:`~rtc.errors.SrtpReplayError` for a replayed or too old index and
:class:`~rtc.errors.SrtpError` for anything else (a malformed or oversized
packet). The caller counts and drops; nothing here keeps counters, so the
forwarding path pays only for the libsrtp call.
"""

from __future__ import annotations

from collections.abc import Callable

import pylibsrtp

from rtc.dtls import SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80, DtlsRole, SrtpKeys
from rtc.errors import SrtpAuthError, SrtpError, SrtpReplayError

__all__ = ["LIBSRTP_PROFILES", "SrtpSession"]

# OpenSSL use_srtp profile name -> libsrtp profile (RFC 5764 section 4.1.2, RFC 7714 section 14.2).
LIBSRTP_PROFILES: dict[str, int] = {
    SRTP_AEAD_AES_128_GCM.name: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80.name: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}

# Browsers keep a 1024-packet replay window for video (libsrtp's default of 128
# drops late NACK retransmissions at high packet rates).
DEFAULT_WINDOW = 1024
#: libsrtp keeps a replay window on what we send too, only so that a packet
#: sent again (a NACK answered without RTX, ``allow_repeat_tx``) may reuse its
#: index. Every protect shifts that window's bitmap: at 1024 packets that was
#: about 1,100 of a forwarded copy's ~9,750 instructions, at 128 or 64 under
#: ten (callgrind, 20,000 protects). A repeat older than 128 packets of its stream fails to
#: protect and is counted (``Peer.srtp_errors``); browsers and aiortc repair
#: by RTX, whose packets are new indexes, so only a client without RTX that
#: asks that late loses a repair.
SEND_WINDOW = 128

_REPLAY_MESSAGES = frozenset(
    {"replay check failed (bad index)", "replay check failed (index too old)"}
)


def _typed(exc: Exception) -> SrtpError:
    message = str(exc)
    if message == "authentication failure":
        return SrtpAuthError(message)
    if message in _REPLAY_MESSAGES:
        return SrtpReplayError(message)
    return SrtpError(message)


def _checked(transform: Callable[[bytes], bytes], packet: bytes) -> bytes:
    """``transform(packet)``, with what pylibsrtp raises turned into our typed errors."""
    try:
        return transform(packet)
    except (pylibsrtp.Error, ValueError, TypeError) as exc:
        raise _typed(exc) from exc


class SrtpSession:
    """Outbound and inbound SRTP/SRTCP contexts of one DTLS-SRTP association (RFC 5764 4.2).

    The outbound policy allows a repeated sequence number so NACKed packets can
    be retransmitted as they were sent (RFC 4588 uses RTX instead, but a
    subscriber without RTX gets the original packet again).
    """

    __slots__ = ("inbound", "outbound", "profile")

    def __init__(
        self,
        profile: str,
        local_key: bytes,
        remote_key: bytes,
        *,
        window_size: int = DEFAULT_WINDOW,
        send_window: int = SEND_WINDOW,
    ) -> None:
        """``local_key``/``remote_key``: master key followed by master salt, ours
        and the peer's; ``window_size``/``send_window``: the replay windows of
        what we receive and of what we send (packets)."""
        try:
            libsrtp_profile = LIBSRTP_PROFILES[profile]
        except KeyError:
            raise SrtpError(f"unsupported SRTP profile {profile!r}") from None
        self.profile = profile
        try:
            self.outbound = pylibsrtp.Session(
                self._policy(
                    libsrtp_profile, local_key, pylibsrtp.Policy.SSRC_ANY_OUTBOUND, send_window
                )
            )
            self.inbound = pylibsrtp.Session(
                self._policy(
                    libsrtp_profile, remote_key, pylibsrtp.Policy.SSRC_ANY_INBOUND, window_size
                )
            )
        except (pylibsrtp.Error, ValueError, TypeError) as exc:
            raise SrtpError(f"cannot create SRTP session: {exc}") from exc

    @staticmethod
    def _policy(profile: int, key: bytes, ssrc_type: int, window_size: int) -> pylibsrtp.Policy:
        policy = pylibsrtp.Policy(key=bytes(key), ssrc_type=ssrc_type, srtp_profile=profile)
        policy.allow_repeat_tx = True
        policy.window_size = window_size
        return policy

    @classmethod
    def from_keys(
        cls, keys: SrtpKeys, role: DtlsRole, *, window_size: int = DEFAULT_WINDOW
    ) -> SrtpSession:
        """Session for our side of a DTLS-SRTP association (RFC 5764 section 4.2).

        The DTLS client protects with the client write key and salt, the
        server with the server's; each unprotects with the other's.
        """
        return cls(
            keys.profile.name,
            keys.local_key(role),
            keys.remote_key(role),
            window_size=window_size,
        )

    def protect(self, packet: bytes) -> bytes:
        """SRTP-protect one RTP packet (RFC 3711 section 3.3)."""
        return _checked(self.outbound.protect, packet)

    def protect_rtcp(self, packet: bytes) -> bytes:
        """SRTCP-protect one (compound) RTCP packet (RFC 3711 section 3.4)."""
        return _checked(self.outbound.protect_rtcp, packet)

    def unprotect(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTP packet (RFC 3711 section 3.3).

        Raises :class:`SrtpAuthError`, :class:`SrtpReplayError` or :class:`SrtpError`.
        """
        return _checked(self.inbound.unprotect, packet)

    def unprotect_rtcp(self, packet: bytes) -> bytes:
        """Authenticate, replay-check and decrypt one SRTCP packet (RFC 3711 section 3.4)."""
        return _checked(self.inbound.unprotect_rtcp, packet)
