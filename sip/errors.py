"""Errors of the ``sip`` package.

One root, :class:`SipError`. As in h11 and ``rtc``, "the peer broke the
protocol" (parse errors, also ``ValueError``: answered with 400 or dropped,
and counted) is kept apart from "we were asked to do something invalid".
"""

from __future__ import annotations


class SipError(Exception):
    """Root of every error raised by ``sip``."""


class SipParseError(SipError, ValueError):
    """Bytes that are not a well-formed SIP message (RFC 3261 section 7,
    section 25). ``status`` is the response a request that could be answered
    gets (400, or 413 for a message too large, 505 for another SIP version);
    ``reason`` goes in its reason phrase, so it is short and never echoes the
    peer's bytes at length."""

    def __init__(self, reason: str, status: int = 400) -> None:
        self.reason = reason
        self.status = status
        super().__init__(f"{status} {reason}")


class SipBuildError(SipError, ValueError):
    """We were asked to write something that is not SIP: a header name that
    is not a token, a value, method, URI or reason phrase with a line break
    in it (RFC 3261 section 25.1). A bug of ours, never the peer's: writing
    it would let text from a visit's data rewrite the message around it."""


class SdpOfferError(SipError, ValueError):
    """A phone's session description that cannot be answered: no audio
    section, no codec in common (RFC 3264 section 6: answered 488)."""


class DtmfParseError(SipError, ValueError):
    """A DTMF event (RFC 4733 section 2.3) or SIP INFO body that is not
    well formed: counted and dropped."""


class AudioFrameError(SipError, ValueError):
    """PCM handed to the phone leg's audio that it does not take: not a
    one-dimensional int16 array, or not the length the codec, resampler or
    mixer works in. Our own mistake, never the peer's: a peer's payload of
    any length decodes."""


class MediaPortError(SipError):
    """No even port of the configured RTP range could be bound (RFC 3550
    section 11 pairs RTP with RTCP on the odd port above): the call cannot
    be answered, and the range is too small for the calls the bridge takes."""


class VoiceError(SipError):
    """The bridge cannot speak a prompt: a recording that is not mono 16-bit
    WAV, speech synthesis that failed, or a prompt asked for before
    :meth:`sip.node.voice.Voice.prepare` made it."""


class VoiceUnavailableError(VoiceError):
    """``espeak-ng`` is not installed and a prompt has no recording: raised
    when the bridge starts, not at the first call that would need it."""


class DialRefused(SipError):
    """A call the bridge was asked to place that it will not: the visit is
    not open now, no trunk places calls, or the number is neither the
    visit's patient's nor on the trunk's ``dial_allow`` (no toll fraud
    through the bridge)."""
