"""One ``m=`` section of a session description (RFC 8866 section 5.14)
with the JSEP attributes an SFU reads typed (RFC 8829 section 5.8): its
serialisation, and the reading of its lines that the session's parser
(:mod:`rtc.sdp.session`) hands it. ``c=`` is here too, for both levels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from rtc.errors import SdpParseError
from rtc.sdp.attributes import (
    DIRECTIONS,
    Attribute,
    Codec,
    Direction,
    Extmap,
    Msid,
    SsrcAttribute,
    SsrcGroup,
    add_codec_attribute,
    parse_extmap,
)
from rtc.sdp.grammar import (
    field_lines,
    is_token,
    parse_flag,
    parse_token,
    parse_uint,
    require_value,
    split_attribute,
    split_fields,
    split_words,
)
from rtc.sdp.transport import (
    CandidateLine,
    Fingerprint,
    Setup,
    parse_candidate,
    transport_attribute,
    transport_lines,
)

__all__ = [
    "ConnectionData",
    "MediaDescription",
    "finish_media",
    "parse_connection",
    "parse_media_attribute",
    "parse_media_line",
]


@dataclass
class ConnectionData:
    """``c=`` (RFC 8866 section 5.7)."""

    nettype: str = "IN"
    addrtype: str = "IP4"
    address: str = "0.0.0.0"

    def __str__(self) -> str:
        return f"{self.nettype} {self.addrtype} {self.address}"


def parse_connection(value: str) -> ConnectionData:
    """A ``c=`` value (RFC 8866 section 5.7)."""
    nettype, addrtype, address = split_fields(value, "c=", 3)
    return ConnectionData(nettype, addrtype, address)


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
    connection: ConnectionData | None = None
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
    candidates: list[CandidateLine] = field(default_factory=list)
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
        yield from field_lines("i=", self.information)
        yield from field_lines("c=", self.connection)
        yield from field_lines("b=", self.bandwidths)
        yield from field_lines("k=", self.key)
        yield from transport_lines(self)
        yield from field_lines("a=mid:", self.mid)
        if self.extmap_allow_mixed:
            yield "a=extmap-allow-mixed"
        for ext in self.extmaps:
            ident = str(ext.id) if ext.direction is None else f"{ext.id}/{ext.direction}"
            tail = "" if ext.extension_attributes is None else f" {ext.extension_attributes}"
            yield f"a=extmap:{ident} {ext.uri}{tail}"
        yield from field_lines("a=", self.direction)
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
        yield from field_lines("a=rid:", self.rids)
        yield from field_lines("a=simulcast:", self.simulcast)
        yield from field_lines("a=", self.attributes)
        yield from field_lines("a=candidate:", self.candidates)
        if self.end_of_candidates:
            yield "a=end-of-candidates"


def parse_media_line(value: str) -> MediaDescription:
    """The section an ``m=`` line opens (RFC 8866 section 5.14)."""
    parts = split_words(value)
    if len(parts) < 4:
        raise SdpParseError(f"m=: needs media, port, proto and formats: {value!r}")
    kind = parse_token(parts[0], "m= media")
    port_text, slash, count_text = parts[1].partition("/")
    port = parse_uint(port_text, "m= port", 0, 65535)
    port_count = parse_uint(count_text, "m= port count", 1, 65535) if slash else None
    proto = parts[2]
    if not all(is_token(p) for p in proto.split("/")):
        raise SdpParseError(f"m=: bad proto {proto!r}")
    media = MediaDescription(kind, port, proto, parts[3:], port_count=port_count)
    for fmt in media.formats:
        if media.is_rtp:
            parse_uint(fmt, "m= payload type", 0, 127)
        else:
            parse_token(fmt, "m= format")
    return media


def parse_media_attribute(media: MediaDescription, line: str, codecs: dict[int, Codec]) -> None:
    """Add an ``a=`` line to ``media``; ``rtpmap``, ``fmtp`` and ``rtcp-fb``
    go to ``codecs`` by payload type until :func:`finish_media`."""
    name, value = split_attribute(line)
    if name == "mid":
        if media.mid is not None:
            raise SdpParseError("second a=mid")
        media.mid = parse_token(require_value(value, name), name)
    elif name in DIRECTIONS:
        parse_flag(value, name)
        if media.direction is not None:
            raise SdpParseError("second direction attribute")
        media.direction = DIRECTIONS[name]
    elif name == "rtcp-mux":
        media.rtcp_mux = parse_flag(value, name)
    elif name == "rtcp-rsize":
        media.rtcp_rsize = parse_flag(value, name)
    elif name == "extmap-allow-mixed":
        media.extmap_allow_mixed = parse_flag(value, name)
    elif name == "extmap":
        ext = parse_extmap(require_value(value, name))
        if any(e.id == ext.id for e in media.extmaps):
            raise SdpParseError(f"a=extmap: id {ext.id} used twice")
        media.extmaps.append(ext)
    elif name == "msid":
        stream, _, track = require_value(value, name).partition(" ")
        if not stream or " " in track:
            raise SdpParseError(f"a=msid: malformed {value!r}")
        media.msids.append(Msid(stream, track or None))
    elif name == "ssrc":
        ssrc_text, _, rest = require_value(value, name).partition(" ")
        attribute, colon, attr_value = rest.partition(":")
        media.ssrcs.append(
            SsrcAttribute(
                parse_uint(ssrc_text, "a=ssrc", 0, 2**32 - 1),
                parse_token(attribute, "a=ssrc attribute"),
                attr_value if colon else None,
            )
        )
    elif name == "ssrc-group":
        parts = split_words(require_value(value, name))
        if len(parts) < 2:
            raise SdpParseError("a=ssrc-group: no SSRC")
        media.ssrc_groups.append(
            SsrcGroup(
                parse_token(parts[0], "a=ssrc-group semantics"),
                [parse_uint(p, "a=ssrc-group", 0, 2**32 - 1) for p in parts[1:]],
            )
        )
    elif name == "rid":
        media.rids.append(require_value(value, name))
    elif name == "simulcast":
        if media.simulcast is not None:
            raise SdpParseError("second a=simulcast")
        media.simulcast = require_value(value, name)
    elif name == "candidate":
        media.candidates.append(parse_candidate(require_value(value, name)))
    elif name == "end-of-candidates":
        media.end_of_candidates = parse_flag(value, name)
    elif name in ("rtpmap", "fmtp", "rtcp-fb") and media.is_rtp:
        pt_text, space, rest = require_value(value, name).partition(" ")
        if not (name == "rtcp-fb" and pt_text == "*"):
            add_codec_attribute(codecs, name, pt_text, rest if space else None)
            return
        media.attributes.append(Attribute(name, value))
    elif not transport_attribute(media, name, value):
        media.attributes.append(Attribute(name, value))


def finish_media(media: MediaDescription, codecs: dict[int, Codec]) -> None:
    """Give ``media`` its codecs once its last line is read."""
    # Codecs follow the m= line's preference order (RFC 3264 section 5.1);
    # attributes for payload types it does not list keep their own order.
    ordered: list[Codec] = []
    for fmt in media.formats if media.is_rtp else []:
        codec = codecs.pop(int(fmt), None)
        if codec is not None:
            ordered.append(codec)
    media.codecs = ordered + list(codecs.values())
