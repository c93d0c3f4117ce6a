"""Session descriptions for WebRTC: parse and serialise.

A sans-I/O codec (RFC 8866) for the descriptions JSEP exchanges (RFC 8829).

``SessionDescription.parse(text)`` turns text into dataclasses and
``str(desc)`` turns them back; ``parse(str(desc)) == desc`` for every parsed
description. The attributes the SFU reads are typed fields; every other
attribute is kept in order in ``attributes`` so nothing a browser sends is lost.
Malformed text raises :class:`~rtc.errors.SdpParseError` (also a ``ValueError``)
and nothing else.

What the SFU answers and offers with these descriptions is its own policy,
in :mod:`sfu.transport.offer_answer`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Self

from rtc.errors import SdpParseError

__all__ = [
    "ABS_SEND_TIME",
    "AUDIO_LEVEL",
    "MID",
    "TRANSPORT_CC",
    "Attribute",
    "Candidate",
    "Codec",
    "Connection",
    "Direction",
    "Extmap",
    "Fingerprint",
    "Group",
    "MediaDescription",
    "Msid",
    "Origin",
    "RtcpFeedback",
    "SessionDescription",
    "Setup",
    "SsrcAttribute",
    "SsrcGroup",
    "Timing",
    "TransportParameters",
    "is_token",
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


class Setup(StrEnum):
    """DTLS connection roles (RFC 4145 section 4, RFC 5763 section 5)."""

    ACTIVE = "active"
    PASSIVE = "passive"
    ACTPASS = "actpass"
    HOLDCONN = "holdconn"


# --- small value types -------------------------------------------------------


@dataclass
class Origin:
    """``o=`` (RFC 8866 section 5.2); ids are kept as text, as sent."""

    username: str = "-"
    session_id: str = "0"
    session_version: str = "0"
    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return (
            f"{self.username} {self.session_id} {self.session_version} "
            f"{self.nettype} {self.addrtype} {self.address}"
        )


@dataclass
class Connection:
    """``c=`` (RFC 8866 section 5.7)."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


@dataclass
class Timing:
    """``t=`` with its ``r=`` lines (RFC 8866 sections 5.9 and 5.10)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass
class Attribute:
    """An ``a=`` line the codec has no typed field for (RFC 8866 section 5.13)."""

    name: str
    value: str | None = None

    def __str__(self) -> str:
        return self.name if self.value is None else f"{self.name}:{self.value}"


@dataclass
class Group:
    """``a=group`` (RFC 5888 section 5); BUNDLE is RFC 8843 section 6."""

    semantics: str
    mids: list[str] = field(default_factory=list)


@dataclass
class Fingerprint:
    """``a=fingerprint`` (RFC 8122 section 5): hash function and hex pairs."""

    algorithm: str
    value: str


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
        return int(value) if value is not None and _is_uint(value, 3) else None

    def is_named(self, name: str) -> bool:
        return self.name is not None and self.name.lower() == name.lower()

    def has_feedback(self, kind: str) -> bool:
        """Whether it carries ``a=rtcp-fb`` ``kind`` with no parameter (RFC 4585 section 4.2)."""
        return any(f.type == kind and not f.parameter for f in self.feedback)


@dataclass
class Candidate:
    """``a=candidate`` (RFC 8839 section 5.1); extension pairs kept in order."""

    foundation: str
    component: int
    transport: str
    priority: int
    address: str
    port: int
    type: str
    extensions: list[tuple[str, str]] = field(default_factory=list)

    def __str__(self) -> str:
        text = (
            f"{self.foundation} {self.component} {self.transport} {self.priority} "
            f"{self.address} {self.port} typ {self.type}"
        )
        for name, value in self.extensions:
            text += f" {name} {value}"
        return text


@dataclass
class TransportParameters:
    """The ICE and DTLS parameters of a BUNDLE transport, media level first,
    then session level (RFC 8839 section 5.4, RFC 8122 section 5, RFC 4145)."""

    ice_ufrag: str | None
    ice_pwd: str | None
    ice_options: list[str]
    ice_lite: bool
    fingerprints: list[Fingerprint]
    setup: Setup | None
    candidates: list[Candidate]
    end_of_candidates: bool


# --- media and session -------------------------------------------------------


@dataclass
class MediaDescription:
    """One ``m=`` section (RFC 8866 section 5.14) with the JSEP attributes an
    SFU reads typed (RFC 8829 section 5.8)."""

    kind: str
    port: int
    proto: str
    formats: list[str]
    port_count: int | None = None
    information: str | None = None
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    key: str | None = None
    mid: str | None = None
    direction: Direction | None = None
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)
    setup: Setup | None = None
    extmap_allow_mixed: bool = False
    extmaps: list[Extmap] = field(default_factory=list)
    msids: list[Msid] = field(default_factory=list)
    codecs: list[Codec] = field(default_factory=list)
    ssrc_groups: list[SsrcGroup] = field(default_factory=list)
    ssrcs: list[SsrcAttribute] = field(default_factory=list)
    # RFC 8851 and RFC 8853 lines, kept verbatim for the simulcast layer logic.
    rids: list[str] = field(default_factory=list)
    simulcast: str | None = None
    candidates: list[Candidate] = field(default_factory=list)
    end_of_candidates: bool = False
    attributes: list[Attribute] = field(default_factory=list)

    @property
    def is_rtp(self) -> bool:
        return "RTP" in self.proto.split("/")

    @property
    def rejected(self) -> bool:
        """Port zero without ``bundle-only`` (RFC 3264 section 6, RFC 8843 section 6)."""
        return self.port == 0 and not any(a.name == "bundle-only" for a in self.attributes)

    def codec(self, payload_type: int) -> Codec | None:
        return next((c for c in self.codecs if c.payload_type == payload_type), None)

    def extmap_id(self, uri: str) -> int | None:
        return next((e.id for e in self.extmaps if e.uri == uri), None)

    def rtx_for(self, payload_type: int) -> Codec | None:
        """The RTX codec whose ``apt`` names ``payload_type`` (RFC 4588 section 8.1)."""
        return next((c for c in self.codecs if c.is_named("rtx") and c.apt == payload_type), None)

    def fid_pairs(self) -> dict[int, int]:
        """``{media SSRC: RTX SSRC}`` from ``ssrc-group:FID`` (RFC 5576 section
        4.2, RFC 4588 section 8.3)."""
        return {
            g.ssrcs[0]: g.ssrcs[1]
            for g in self.ssrc_groups
            if g.semantics == "FID" and len(g.ssrcs) == 2
        }

    def ssrc_values(self, name: str) -> dict[int, str]:
        """``{ssrc: value}`` for one RFC 5576 source attribute, e.g. ``cname``."""
        return {s.ssrc: s.value or "" for s in self.ssrcs if s.attribute == name}

    def lines(self) -> Iterator[str]:
        port = str(self.port) if self.port_count is None else f"{self.port}/{self.port_count}"
        yield " ".join(["m=" + self.kind, port, self.proto, *self.formats])
        if self.information is not None:
            yield f"i={self.information}"
        if self.connection is not None:
            yield f"c={self.connection}"
        for bandwidth in self.bandwidths:
            yield f"b={bandwidth}"
        if self.key is not None:
            yield f"k={self.key}"
        yield from _transport_lines(self)
        if self.mid is not None:
            yield f"a=mid:{self.mid}"
        if self.extmap_allow_mixed:
            yield "a=extmap-allow-mixed"
        for ext in self.extmaps:
            ident = str(ext.id) if ext.direction is None else f"{ext.id}/{ext.direction}"
            tail = "" if ext.extension_attributes is None else f" {ext.extension_attributes}"
            yield f"a=extmap:{ident} {ext.uri}{tail}"
        if self.direction is not None:
            yield f"a={self.direction}"
        for msid in self.msids:
            yield f"a=msid:{msid.stream_id}" + (
                "" if msid.track_id is None else f" {msid.track_id}"
            )
        if self.rtcp_mux:
            yield "a=rtcp-mux"
        if self.rtcp_rsize:
            yield "a=rtcp-rsize"
        for codec in self.codecs:
            pt = codec.payload_type
            if codec.name is not None:
                tail = "" if codec.channels is None else f"/{codec.channels}"
                yield f"a=rtpmap:{pt} {codec.name}/{codec.clock_rate}{tail}"
            for fb in codec.feedback:
                yield f"a=rtcp-fb:{pt} {fb}"
            if codec.fmtp is not None:
                yield f"a=fmtp:{pt} {codec.fmtp}"
        for group in self.ssrc_groups:
            yield f"a=ssrc-group:{group.semantics}" + "".join(f" {s}" for s in group.ssrcs)
        for ssrc in self.ssrcs:
            tail = "" if ssrc.value is None else f":{ssrc.value}"
            yield f"a=ssrc:{ssrc.ssrc} {ssrc.attribute}{tail}"
        for rid in self.rids:
            yield f"a=rid:{rid}"
        if self.simulcast is not None:
            yield f"a=simulcast:{self.simulcast}"
        for attribute in self.attributes:
            yield f"a={attribute}"
        for candidate in self.candidates:
            yield f"a=candidate:{candidate}"
        if self.end_of_candidates:
            yield "a=end-of-candidates"


@dataclass
class SessionDescription:
    """A whole session description (RFC 8866 section 5) as JSEP uses it."""

    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: Connection | None = None
    bandwidths: list[str] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=lambda: [Timing()])
    zone: str | None = None
    key: str | None = None
    groups: list[Group] = field(default_factory=list)
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: list[str] = field(default_factory=list)
    fingerprints: list[Fingerprint] = field(default_factory=list)
    setup: Setup | None = None
    extmap_allow_mixed: bool = False
    attributes: list[Attribute] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | bytes) -> Self:
        """Parse a description (RFC 8866 section 5; CRLF or LF line ends).

        Raises :class:`SdpParseError` for anything malformed.
        """
        if isinstance(text, bytes | bytearray | memoryview):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SdpParseError("session description is not UTF-8") from exc
        if not isinstance(text, str):
            raise SdpParseError("session description must be text")
        result = _Parser(cls).parse(text)
        assert isinstance(result, cls)  # _Parser built it from cls
        return result

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in self.lines())

    def __bytes__(self) -> bytes:
        return str(self).encode("utf-8")

    def lines(self) -> Iterator[str]:
        yield "v=0"
        yield f"o={self.origin}"
        yield f"s={self.name}"
        if self.information is not None:
            yield f"i={self.information}"
        if self.uri is not None:
            yield f"u={self.uri}"
        for email in self.emails:
            yield f"e={email}"
        for phone in self.phones:
            yield f"p={phone}"
        if self.connection is not None:
            yield f"c={self.connection}"
        for bandwidth in self.bandwidths:
            yield f"b={bandwidth}"
        for timing in self.timings:
            yield f"t={timing.start} {timing.stop}"
            for repeat in timing.repeats:
                yield f"r={repeat}"
        if self.zone is not None:
            yield f"z={self.zone}"
        if self.key is not None:
            yield f"k={self.key}"
        if self.ice_lite:
            yield "a=ice-lite"
        for group in self.groups:
            yield f"a=group:{group.semantics}" + "".join(f" {m}" for m in group.mids)
        if self.extmap_allow_mixed:
            yield "a=extmap-allow-mixed"
        yield from _transport_lines(self)
        for attribute in self.attributes:
            yield f"a={attribute}"
        for media in self.media:
            yield from media.lines()

    # JSEP helpers ---------------------------------------------------------

    @property
    def bundle(self) -> Group | None:
        """The first BUNDLE group (RFC 8843 section 6), if any."""
        return next((g for g in self.groups if g.semantics == "BUNDLE"), None)

    def media_by_mid(self, mid: str) -> MediaDescription | None:
        return next((m for m in self.media if m.mid == mid), None)

    def transport(self, media: MediaDescription | None = None) -> TransportParameters:
        """ICE and DTLS parameters of ``media`` (default: the BUNDLE-tagged or
        first m= section), falling back to session level as RFC 8839 section
        5.4 and RFC 8122 section 5 allow."""
        if media is None:
            media = self._tagged_media()
        ice_ufrag = media.ice_ufrag if media and media.ice_ufrag else self.ice_ufrag
        ice_pwd = media.ice_pwd if media and media.ice_pwd else self.ice_pwd
        return TransportParameters(
            ice_ufrag=ice_ufrag,
            ice_pwd=ice_pwd,
            ice_options=list(
                media.ice_options if media and media.ice_options else self.ice_options
            ),
            ice_lite=self.ice_lite,
            fingerprints=list(
                media.fingerprints if media and media.fingerprints else self.fingerprints
            ),
            setup=media.setup if media and media.setup else self.setup,
            candidates=list(media.candidates) if media else [],
            end_of_candidates=media.end_of_candidates if media else False,
        )

    def _tagged_media(self) -> MediaDescription | None:
        group = self.bundle
        if group is not None:
            for mid in group.mids:
                media = self.media_by_mid(mid)
                if media is not None and not media.rejected:
                    return media
        return next((m for m in self.media if not m.rejected), None)


def _transport_lines(
    where: SessionDescription | MediaDescription,
) -> Iterator[str]:
    if where.ice_ufrag is not None:
        yield f"a=ice-ufrag:{where.ice_ufrag}"
    if where.ice_pwd is not None:
        yield f"a=ice-pwd:{where.ice_pwd}"
    if where.ice_options:
        yield "a=ice-options:" + " ".join(where.ice_options)
    for fingerprint in where.fingerprints:
        yield f"a=fingerprint:{fingerprint.algorithm} {fingerprint.value}"
    if where.setup is not None:
        yield f"a=setup:{where.setup}"


# --- parsing -------------------------------------------------------------------

# RFC 8866 section 9 token characters; attribute names and encodings use them.
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})*")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+")
_SESSION_TYPES = "vosiuepcbtrzka"
_SINGLE_SESSION = set("vosiuczk")
_SINGLE_MEDIA = set("ick")
_DIRECTIONS = {d.value: d for d in Direction}
_SETUPS = {s.value: s for s in Setup}


def is_token(text: str) -> bool:
    """Whether ``text`` is an RFC 8866 section 9 token, as a mid must be."""
    return _TOKEN.fullmatch(text) is not None


def _is_uint(text: str, max_digits: int) -> bool:
    # str.isdigit() accepts non-ASCII digits such as '²'; SDP numbers are ASCII.
    return 0 < len(text) <= max_digits and text.isascii() and text.isdigit()


def _uint(text: str, what: str, low: int, high: int) -> int:
    if not _is_uint(text, len(str(high)) + 2):
        raise SdpParseError(f"{what}: not a number: {text!r}")
    value = int(text)
    if not low <= value <= high:
        raise SdpParseError(f"{what}: {value} not in {low}..{high}")
    return value


def _token(text: str, what: str) -> str:
    if not _TOKEN.fullmatch(text):
        raise SdpParseError(f"{what}: not a token: {text!r}")
    return text


def _fields(text: str, what: str, count: int) -> list[str]:
    parts = text.split(" ")
    if len(parts) != count or not all(parts):
        raise SdpParseError(f"{what}: expected {count} space-separated fields: {text!r}")
    return parts


def _nonempty(value: str | None, what: str) -> str:
    if not value:
        raise SdpParseError(f"{what}: value missing")
    return value


def _flag(value: str | None, what: str) -> bool:
    if value is not None:
        raise SdpParseError(f"{what}: takes no value")
    return True


def _connection(value: str) -> Connection:
    nettype, addrtype, address = _fields(value, "c=", 3)
    return Connection(nettype, addrtype, address)


def _fingerprint(value: str) -> Fingerprint:
    algorithm, digest = _fields(value, "a=fingerprint", 2)
    _token(algorithm, "a=fingerprint hash function")
    if not _HEX_PAIRS.fullmatch(digest):
        raise SdpParseError(f"a=fingerprint: not hex pairs: {digest!r}")
    return Fingerprint(algorithm, digest)


def _setup(value: str | None) -> Setup:
    setup = _SETUPS.get(_nonempty(value, "a=setup"))
    if setup is None:
        raise SdpParseError(f"a=setup: unknown role {value!r}")
    return setup


def _ice_options(value: str | None) -> list[str]:
    return [_token(o, "a=ice-options") for o in _fields_any(_nonempty(value, "a=ice-options"))]


def _fields_any(text: str) -> list[str]:
    parts = text.split(" ")
    if not all(parts):
        raise SdpParseError(f"stray spaces in {text!r}")
    return parts


def _candidate(value: str) -> Candidate:
    parts = _fields_any(value)
    if len(parts) < 8 or parts[6] != "typ" or len(parts) % 2:
        raise SdpParseError(f"a=candidate: malformed: {value!r}")
    foundation = parts[0]
    if len(foundation) > 32 or not _ICE_CHARS.fullmatch(foundation):
        raise SdpParseError(f"a=candidate: bad foundation {foundation!r}")
    extensions = [(parts[i], parts[i + 1]) for i in range(8, len(parts), 2)]
    return Candidate(
        foundation=foundation,
        component=_uint(parts[1], "a=candidate component", 1, 256),
        transport=_token(parts[2], "a=candidate transport"),
        priority=_uint(parts[3], "a=candidate priority", 1, 2**31 - 1),
        address=parts[4],
        port=_uint(parts[5], "a=candidate port", 0, 65535),
        type=_token(parts[7], "a=candidate type"),
        extensions=extensions,
    )


def _extmap(value: str) -> Extmap:
    ident, _, rest = value.partition(" ")
    uri, _, attrs = rest.partition(" ")
    if not uri:
        raise SdpParseError(f"a=extmap: no URI: {value!r}")
    number, slash, direction = ident.partition("/")
    ext_direction = None
    if slash:
        ext_direction = _DIRECTIONS.get(direction)
        if ext_direction is None:
            raise SdpParseError(f"a=extmap: bad direction {direction!r}")
    return Extmap(
        id=_uint(number, "a=extmap id", 1, 255),
        uri=uri,
        direction=ext_direction,
        extension_attributes=attrs if attrs else None,
    )


class _Parser:
    """One pass over the lines; RFC 8866 section 5 fixes their order only
    loosely in practice, so within a section any order is accepted."""

    def __init__(self, cls: type[SessionDescription]) -> None:
        self.cls = cls

    def parse(self, text: str) -> SessionDescription:
        if "\x00" in text:
            raise SdpParseError("NUL in session description")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if not lines:
            raise SdpParseError("empty session description")
        session = self.cls(timings=[])
        seen: set[str] = set()
        media: MediaDescription | None = None
        media_seen: set[str] = set()
        codec_state: dict[int, Codec] = {}
        for number, raw in enumerate(lines, 1):
            line = raw[:-1] if raw.endswith("\r") else raw
            if "\r" in line:
                raise SdpParseError(f"line {number}: stray CR")
            if len(line) < 2 or line[1] != "=":
                raise SdpParseError(f"line {number}: not '<type>=<value>': {line[:40]!r}")
            kind, value = line[0], line[2:]
            try:
                if number == 1:
                    if kind != "v" or value != "0":
                        raise SdpParseError("first line must be v=0")
                    seen.add("v")
                    continue
                if kind == "m":
                    if media is not None:
                        self._finish_media(media, codec_state)
                    media = self._media_line(value)
                    media_seen = set()
                    codec_state = {}
                    session.media.append(media)
                    continue
                if media is None:
                    self._session_line(session, kind, value, seen)
                else:
                    if kind not in "icbka":
                        raise SdpParseError(f"'{kind}=' not allowed in a media section")
                    if kind in _SINGLE_MEDIA and kind in media_seen:
                        raise SdpParseError(f"second '{kind}=' line in a media section")
                    media_seen.add(kind)
                    if kind == "i":
                        media.information = value
                    elif kind == "c":
                        media.connection = _connection(value)
                    elif kind == "b":
                        media.bandwidths.append(_nonempty(value, "b="))
                    elif kind == "k":
                        media.key = value
                    else:
                        self._media_attribute(media, value, codec_state)
            except SdpParseError as exc:
                raise SdpParseError(f"line {number}: {exc}") from None
        if media is not None:
            self._finish_media(media, codec_state)
        for required in "vost":
            if required not in seen:
                raise SdpParseError(f"missing '{required}=' line")
        mids = [m.mid for m in session.media if m.mid is not None]
        if len(mids) != len(set(mids)):
            raise SdpParseError("two m= sections share a mid")
        return session

    @staticmethod
    def _session_line(session: SessionDescription, kind: str, value: str, seen: set[str]) -> None:
        if kind not in _SESSION_TYPES or kind == "v":
            raise SdpParseError(f"'{kind}=' not allowed at session level")
        if kind in _SINGLE_SESSION and kind in seen:
            raise SdpParseError(f"second '{kind}=' line")
        seen.add(kind)
        if kind == "o":
            username, sid, version, nettype, addrtype, address = _fields(value, "o=", 6)
            session.origin = Origin(username, sid, version, nettype, addrtype, address)
        elif kind == "s":
            session.name = _nonempty(value, "s=")
        elif kind == "i":
            session.information = value
        elif kind == "u":
            session.uri = value
        elif kind == "e":
            session.emails.append(value)
        elif kind == "p":
            session.phones.append(value)
        elif kind == "c":
            session.connection = _connection(value)
        elif kind == "b":
            session.bandwidths.append(_nonempty(value, "b="))
        elif kind == "t":
            start, stop = _fields(value, "t=", 2)
            session.timings.append(
                Timing(_uint(start, "t= start", 0, 2**64), _uint(stop, "t= stop", 0, 2**64))
            )
        elif kind == "r":
            if not session.timings:
                raise SdpParseError("'r=' before 't='")
            session.timings[-1].repeats.append(_nonempty(value, "r="))
        elif kind == "z":
            session.zone = value
        elif kind == "k":
            session.key = value
        else:
            _Parser._session_attribute(session, value)

    @staticmethod
    def _split_attribute(value: str) -> tuple[str, str | None]:
        name, colon, rest = value.partition(":")
        _token(name, "a= attribute name")
        return name, (rest if colon else None)

    @staticmethod
    def _session_attribute(session: SessionDescription, line: str) -> None:
        name, value = _Parser._split_attribute(line)
        if name == "ice-lite":
            session.ice_lite = _flag(value, name)
        elif name == "group":
            parts = _fields_any(_nonempty(value, name))
            session.groups.append(Group(_token(parts[0], "a=group semantics"), parts[1:]))
        elif name == "extmap-allow-mixed":
            session.extmap_allow_mixed = _flag(value, name)
        elif not _transport_attribute(session, name, value):
            session.attributes.append(Attribute(name, value))

    @staticmethod
    def _media_line(value: str) -> MediaDescription:
        parts = _fields_any(value)
        if len(parts) < 4:
            raise SdpParseError(f"m=: needs media, port, proto and formats: {value!r}")
        kind = _token(parts[0], "m= media")
        port_text, slash, count_text = parts[1].partition("/")
        port = _uint(port_text, "m= port", 0, 65535)
        port_count = _uint(count_text, "m= port count", 1, 65535) if slash else None
        proto = parts[2]
        if not all(_TOKEN.fullmatch(p) for p in proto.split("/")):
            raise SdpParseError(f"m=: bad proto {proto!r}")
        media = MediaDescription(kind, port, proto, parts[3:], port_count=port_count)
        for fmt in media.formats:
            if media.is_rtp:
                _uint(fmt, "m= payload type", 0, 127)
            else:
                _token(fmt, "m= format")
        return media

    @staticmethod
    def _media_attribute(media: MediaDescription, line: str, codecs: dict[int, Codec]) -> None:
        name, value = _Parser._split_attribute(line)
        if name == "mid":
            if media.mid is not None:
                raise SdpParseError("second a=mid")
            media.mid = _token(_nonempty(value, name), name)
        elif name in _DIRECTIONS:
            _flag(value, name)
            if media.direction is not None:
                raise SdpParseError("second direction attribute")
            media.direction = _DIRECTIONS[name]
        elif name == "rtcp-mux":
            media.rtcp_mux = _flag(value, name)
        elif name == "rtcp-rsize":
            media.rtcp_rsize = _flag(value, name)
        elif name == "extmap-allow-mixed":
            media.extmap_allow_mixed = _flag(value, name)
        elif name == "extmap":
            ext = _extmap(_nonempty(value, name))
            if any(e.id == ext.id for e in media.extmaps):
                raise SdpParseError(f"a=extmap: id {ext.id} used twice")
            media.extmaps.append(ext)
        elif name == "msid":
            stream, _, track = _nonempty(value, name).partition(" ")
            if not stream or " " in track:
                raise SdpParseError(f"a=msid: malformed {value!r}")
            media.msids.append(Msid(stream, track or None))
        elif name == "ssrc":
            ssrc_text, _, rest = _nonempty(value, name).partition(" ")
            attribute, colon, attr_value = rest.partition(":")
            media.ssrcs.append(
                SsrcAttribute(
                    _uint(ssrc_text, "a=ssrc", 0, 2**32 - 1),
                    _token(attribute, "a=ssrc attribute"),
                    attr_value if colon else None,
                )
            )
        elif name == "ssrc-group":
            parts = _fields_any(_nonempty(value, name))
            if len(parts) < 2:
                raise SdpParseError("a=ssrc-group: no SSRC")
            media.ssrc_groups.append(
                SsrcGroup(
                    _token(parts[0], "a=ssrc-group semantics"),
                    [_uint(p, "a=ssrc-group", 0, 2**32 - 1) for p in parts[1:]],
                )
            )
        elif name == "rid":
            media.rids.append(_nonempty(value, name))
        elif name == "simulcast":
            if media.simulcast is not None:
                raise SdpParseError("second a=simulcast")
            media.simulcast = _nonempty(value, name)
        elif name == "candidate":
            media.candidates.append(_candidate(_nonempty(value, name)))
        elif name == "end-of-candidates":
            media.end_of_candidates = _flag(value, name)
        elif name in ("rtpmap", "fmtp", "rtcp-fb") and media.is_rtp:
            pt_text, space, rest = _nonempty(value, name).partition(" ")
            if not (name == "rtcp-fb" and pt_text == "*"):
                _codec_attribute(codecs, name, pt_text, rest if space else None)
                return
            media.attributes.append(Attribute(name, value))
        elif not _transport_attribute(media, name, value):
            media.attributes.append(Attribute(name, value))

    @staticmethod
    def _finish_media(media: MediaDescription, codecs: dict[int, Codec]) -> None:
        # Codecs follow the m= line's preference order (RFC 3264 section 5.1);
        # attributes for payload types it does not list keep their own order.
        ordered: list[Codec] = []
        for fmt in media.formats if media.is_rtp else []:
            codec = codecs.pop(int(fmt), None)
            if codec is not None:
                ordered.append(codec)
        media.codecs = ordered + list(codecs.values())


def _codec_attribute(codecs: dict[int, Codec], name: str, pt_text: str, rest: str | None) -> None:
    pt = _uint(pt_text, f"a={name} payload type", 0, 127)
    codec = codecs.setdefault(pt, Codec(pt))
    if name == "rtcp-fb":
        fb_type, _, parameter = _nonempty(rest, name).partition(" ")
        codec.feedback.append(
            RtcpFeedback(_token(fb_type, "a=rtcp-fb type"), parameter if parameter else None)
        )
    elif name == "fmtp":
        if codec.fmtp is not None:
            raise SdpParseError(f"a=fmtp: second line for {pt}")
        codec.fmtp = _nonempty(rest, name)
    else:
        if codec.name is not None:
            raise SdpParseError(f"a=rtpmap: second line for {pt}")
        parts = _nonempty(rest, name).split("/")
        if len(parts) not in (2, 3) or not parts[0]:
            raise SdpParseError(f"a=rtpmap: malformed {rest!r}")
        codec.name = _token(parts[0], "a=rtpmap encoding")
        codec.clock_rate = _uint(parts[1], "a=rtpmap clock rate", 1, 2**32 - 1)
        codec.channels = _uint(parts[2], "a=rtpmap channels", 1, 255) if len(parts) == 3 else None


def _transport_attribute(
    where: SessionDescription | MediaDescription, name: str, value: str | None
) -> bool:
    """ICE and DTLS attributes, legal at both levels; False if not one of them."""
    if name == "ice-ufrag":
        if where.ice_ufrag is not None:
            raise SdpParseError("second a=ice-ufrag")
        where.ice_ufrag = _nonempty(value, name)
    elif name == "ice-pwd":
        if where.ice_pwd is not None:
            raise SdpParseError("second a=ice-pwd")
        where.ice_pwd = _nonempty(value, name)
    elif name == "ice-options":
        where.ice_options.extend(_ice_options(value))
    elif name == "fingerprint":
        where.fingerprints.append(_fingerprint(_nonempty(value, name)))
    elif name == "setup":
        if where.setup is not None:
            raise SdpParseError("second a=setup")
        where.setup = _setup(value)
    else:
        return False
    return True
