"""Session descriptions for WebRTC: parse and serialise.

A sans-I/O codec (RFC 8866) for the descriptions JSEP exchanges (RFC 8829).

``SessionDescription.parse(text)`` turns text into dataclasses and
``str(desc)`` turns them back; ``parse(str(desc)) == desc`` for every parsed
description. The attributes the SFU reads are typed fields; every other
attribute is kept in order in ``attributes`` so nothing a browser sends is lost.
Malformed text raises :class:`~rtc.errors.SdpParseError` (also a ``ValueError``)
and nothing else. Each ``m=`` section is a
:class:`~rtc.sdp.media.MediaDescription`; the typed attributes are in
:mod:`rtc.sdp.attributes` and :mod:`rtc.sdp.transport`.

What the SFU answers and offers with these descriptions is its own policy,
in :mod:`sfu.transport.offer_answer`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Self

from rtc.errors import SdpParseError
from rtc.sdp.attributes import Attribute, Codec
from rtc.sdp.grammar import (
    field_lines,
    parse_flag,
    parse_token,
    parse_uint,
    require_value,
    split_attribute,
    split_fields,
    split_words,
)
from rtc.sdp.media import (
    ConnectionData,
    MediaDescription,
    finish_media,
    parse_connection,
    parse_media_attribute,
    parse_media_line,
)
from rtc.sdp.transport import (
    Fingerprint,
    Setup,
    TransportParameters,
    transport_attribute,
    transport_lines,
)

__all__ = ["Group", "Origin", "SessionDescription", "Timing"]


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
class Timing:
    """``t=`` with its ``r=`` lines (RFC 8866 sections 5.9 and 5.10)."""

    start: int = 0
    stop: int = 0
    repeats: list[str] = field(default_factory=list)


@dataclass
class Group:
    """``a=group`` (RFC 5888 section 5); BUNDLE is RFC 8843 section 6."""

    semantics: str
    mids: list[str] = field(default_factory=list)


@dataclass
class SessionDescription:
    """A whole session description (RFC 8866 section 5) as JSEP uses it."""

    origin: Origin = field(default_factory=Origin)
    name: str = "-"
    information: str | None = None
    uri: str | None = None
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    connection: ConnectionData | None = None
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
        yield from field_lines("i=", self.information)
        yield from field_lines("u=", self.uri)
        yield from field_lines("e=", self.emails)
        yield from field_lines("p=", self.phones)
        yield from field_lines("c=", self.connection)
        yield from field_lines("b=", self.bandwidths)
        for timing in self.timings:
            yield f"t={timing.start} {timing.stop}"
            yield from field_lines("r=", timing.repeats)
        yield from field_lines("z=", self.zone)
        yield from field_lines("k=", self.key)
        if self.ice_lite:
            yield "a=ice-lite"
        for group in self.groups:
            yield f"a=group:{group.semantics}" + "".join(f" {m}" for m in group.mids)
        if self.extmap_allow_mixed:
            yield "a=extmap-allow-mixed"
        yield from transport_lines(self)
        yield from field_lines("a=", self.attributes)
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


_SESSION_TYPES = "vosiuepcbtrzka"
_SINGLE_SESSION = set("vosiuczk")
_SINGLE_MEDIA = set("ick")


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
                        finish_media(media, codec_state)
                    media = parse_media_line(value)
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
                    if kind == "a":
                        parse_media_attribute(media, value, codec_state)
                    else:
                        self._either_line(media, kind, value)
            except SdpParseError as exc:
                raise SdpParseError(f"line {number}: {exc}") from None
        if media is not None:
            finish_media(media, codec_state)
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
        if kind in "icbk":
            _Parser._either_line(session, kind, value)
        elif kind == "o":
            username, sid, version, nettype, addrtype, address = split_fields(value, "o=", 6)
            session.origin = Origin(username, sid, version, nettype, addrtype, address)
        elif kind == "s":
            session.name = require_value(value, "s=")
        elif kind == "u":
            session.uri = value
        elif kind == "e":
            session.emails.append(value)
        elif kind == "p":
            session.phones.append(value)
        elif kind == "t":
            start, stop = split_fields(value, "t=", 2)
            session.timings.append(
                Timing(
                    parse_uint(start, "t= start", 0, 2**64), parse_uint(stop, "t= stop", 0, 2**64)
                )
            )
        elif kind == "r":
            if not session.timings:
                raise SdpParseError("'r=' before 't='")
            session.timings[-1].repeats.append(require_value(value, "r="))
        elif kind == "z":
            session.zone = value
        else:
            _Parser._session_attribute(session, value)

    @staticmethod
    def _either_line(where: SessionDescription | MediaDescription, kind: str, value: str) -> None:
        """``i=``, ``c=``, ``b=`` or ``k=``, which the session and each media
        section have alike (RFC 8866 sections 5.4, 5.7, 5.8 and 5.12)."""
        if kind == "i":
            where.information = value
        elif kind == "c":
            where.connection = parse_connection(value)
        elif kind == "b":
            where.bandwidths.append(require_value(value, "b="))
        else:
            where.key = value

    @staticmethod
    def _session_attribute(session: SessionDescription, line: str) -> None:
        name, value = split_attribute(line)
        if name == "ice-lite":
            session.ice_lite = parse_flag(value, name)
        elif name == "group":
            parts = split_words(require_value(value, name))
            session.groups.append(Group(parse_token(parts[0], "a=group semantics"), parts[1:]))
        elif name == "extmap-allow-mixed":
            session.extmap_allow_mixed = parse_flag(value, name)
        elif not transport_attribute(session, name, value):
            session.attributes.append(Attribute(name, value))
