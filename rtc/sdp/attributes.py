"""The attributes of an ``m=`` section the SFU reads typed: header
extensions (``extmap``, RFC 8285 section 8, with the extension URIs the SFU
understands), codecs with their ``rtpmap``, ``fmtp`` and ``rtcp-fb`` lines
(RFC 8866 section 6.6 and 6.15, RFC 4585 section 4.2), media stream ids
(``msid``, RFC 8830), RFC 5576 source attributes and groups, and the media
direction (RFC 8866 section 6.7); and :class:`Attribute`, any other ``a=``
line, kept as sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rtc.errors import SdpParseError
from rtc.sdp.grammar import is_uint, parse_token, parse_uint, require_value

__all__ = [
    "ABS_SEND_TIME",
    "AUDIO_LEVEL",
    "DIRECTIONS",
    "MID",
    "REPAIRED_RTP_STREAM_ID",
    "RTP_STREAM_ID",
    "TRANSPORT_CC",
    "Attribute",
    "Codec",
    "Direction",
    "Extmap",
    "Msid",
    "RtcpFeedback",
    "SsrcAttribute",
    "SsrcGroup",
    "add_codec_attribute",
    "parse_extmap",
]

# Header extensions the SFU understands (RFC 8843 section 15, RFC 6464,
# draft-holmer-rmcat-transport-wide-cc-extensions-01, webrtc.org abs-send-time).
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TRANSPORT_CC = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"


class Direction(StrEnum):
    """Media direction attributes (RFC 8866 section 6.7)."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    def reverse(self) -> Direction:
        """The direction an answerer mirrors (RFC 3264 section 6.1)."""
        return _REVERSE[self]


_REVERSE = {
    Direction.SENDRECV: Direction.SENDRECV,
    Direction.SENDONLY: Direction.RECVONLY,
    Direction.RECVONLY: Direction.SENDONLY,
    Direction.INACTIVE: Direction.INACTIVE,
}

DIRECTIONS = {d.value: d for d in Direction}
"""Each direction attribute by its name."""


@dataclass
class Attribute:
    """An ``a=`` line the codec has no typed field for (RFC 8866 section 5.13)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass
class Msid:
    """``a=msid`` (RFC 8830 section 2): media stream id and track id."""

    stream_id: str
    track_id: str | None = None


@dataclass
class SsrcAttribute:
    """``a=ssrc`` (RFC 5576 section 4.1)."""

    ssrc: int
    attribute: str
    value: str | None = None


@dataclass
class SsrcGroup:
    """``a=ssrc-group`` (RFC 5576 section 4.2); FID pairs media and RTX (RFC 4588)."""

    semantics: str
    ssrcs: list[int] = field(default_factory=list)


@dataclass
class Extmap:
    """``a=extmap`` (RFC 8285 section 8): local id, optional direction, URI."""

    id: int
    uri: str
    direction: Direction | None = None
    extension_attributes: str | None = None


@dataclass
class RtcpFeedback:
    """One ``a=rtcp-fb`` value for a payload type (RFC 4585 section 4.2)."""

    type: str
    parameter: str | None = None

    def __str__(self) -> str:
        return self.type if self.parameter is None else f"{self.type} {self.parameter}"


@dataclass
class Codec:
    """A payload type with its ``rtpmap``, ``fmtp`` and ``rtcp-fb`` lines
    (RFC 8866 section 6.6, RFC 8866 section 6.15, RFC 4585 section 4.2).

    ``name`` is ``None`` for a static payload type sent without ``rtpmap``;
    ``fmtp`` is the format parameters exactly as sent.
    """

    payload_type: int
    name: str | None = None
    clock_rate: int = 0
    channels: int | None = None
    fmtp: str | None = None
    feedback: list[RtcpFeedback] = field(default_factory=list)

    @property
    def parameters(self) -> dict[str, str]:
        """``fmtp`` as ``key=value`` pairs split on ``;`` (keys lower-cased)."""
        params: dict[str, str] = {}
        if self.fmtp:
            for item in self.fmtp.split(";"):
                key, _, value = item.strip().partition("=")
                if key:
                    params[key.lower()] = value.strip()
        return params

    @property
    def apt(self) -> int | None:
        """The payload type an RTX codec repairs (RFC 4588 section 8.1)."""
        value = self.parameters.get("apt")
        return int(value) if value is not None and is_uint(value, 3) else None

    def is_named(self, name: str) -> bool:
        return self.name is not None and self.name.lower() == name.lower()

    def has_feedback(self, kind: str) -> bool:
        """Whether it carries ``a=rtcp-fb`` ``kind`` with no parameter (RFC 4585 section 4.2)."""
        return any(f.type == kind and not f.parameter for f in self.feedback)


def parse_extmap(value: str) -> Extmap:
    """An ``a=extmap`` value (RFC 8285 section 8)."""
    ident, _, rest = value.partition(" ")
    uri, _, attrs = rest.partition(" ")
    if not uri:
        raise SdpParseError(f"a=extmap: no URI: {value!r}")
    number, slash, direction = ident.partition("/")
    ext_direction = None
    if slash:
        ext_direction = DIRECTIONS.get(direction)
        if ext_direction is None:
            raise SdpParseError(f"a=extmap: bad direction {direction!r}")
    return Extmap(
        id=parse_uint(number, "a=extmap id", 1, 255),
        uri=uri,
        direction=ext_direction,
        extension_attributes=attrs if attrs else None,
    )


def add_codec_attribute(
    codecs: dict[int, Codec], name: str, pt_text: str, rest: str | None
) -> None:
    """Add an ``rtpmap``, ``fmtp`` or ``rtcp-fb`` line of payload type ``pt_text`` to
    its codec in ``codecs`` (RFC 8866 sections 6.6 and 6.15, RFC 4585 section 4.2)."""
    pt = parse_uint(pt_text, f"a={name} payload type", 0, 127)
    codec = codecs.setdefault(pt, Codec(pt))
    if name == "rtcp-fb":
        fb_type, _, parameter = require_value(rest, name).partition(" ")
        codec.feedback.append(
            RtcpFeedback(parse_token(fb_type, "a=rtcp-fb type"), parameter if parameter else None)
        )
    elif name == "fmtp":
        if codec.fmtp is not None:
            raise SdpParseError(f"a=fmtp: second line for {pt}")
        codec.fmtp = require_value(rest, name)
    else:
        if codec.name is not None:
            raise SdpParseError(f"a=rtpmap: second line for {pt}")
        parts = require_value(rest, name).split("/")
        if len(parts) not in (2, 3) or not parts[0]:
            raise SdpParseError(f"a=rtpmap: malformed {rest!r}")
        codec.name = parse_token(parts[0], "a=rtpmap encoding")
        codec.clock_rate = parse_uint(parts[1], "a=rtpmap clock rate", 1, 2**32 - 1)
        codec.channels = (
            parse_uint(parts[2], "a=rtpmap channels", 1, 255) if len(parts) == 3 else None
        )
