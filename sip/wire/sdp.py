"""The phone side's session descriptions: one audio stream over plain RTP or
SDES-SRTP (RFC 3264 offer/answer, RFC 3551 payload types, RFC 4568 keys).

A trunk or PBX offers audio with a list of codecs; the bridge answers with
the one it prefers of those it speaks (:data:`sip.formats.PHONE_CODECS`: G.722 first, as
wideband speech is what an older patient or an interpreter hears best, then
G.711 µ-law and A-law), plus ``telephone-event`` when offered (RFC 4733
digits), always at 20 ms. For dial-out the bridge offers the same list
itself and reads the answer. SDES keys ride in ``a=crypto`` (RFC 4568
section 9.1): an offer on ``RTP/SAVP`` is answered with a key of our own in
the first suite both speak; an offer with no key we can use is refused
(488), never downgraded to clear RTP behind the offerer's back.

The text is read with :mod:`rtc.sdp` (one SDP grammar in the codebase); the
answers are small enough to write line by line.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from enum import StrEnum

from rtc.errors import SdpParseError
from rtc.sdp.attributes import Direction
from rtc.sdp.media import MediaDescription
from rtc.sdp.session import SessionDescription
from sip.errors import SdpOfferError
from sip.formats import FRAME_MS, PHONE_CODECS, codec_for_payload_type

__all__ = [
    "Crypto",
    "PhoneMedia",
    "SrtpSuite",
    "answer_offer",
    "make_offer",
    "read_answer",
]

#: The payload type the bridge offers ``telephone-event`` on (dynamic range).
DTMF_PAYLOAD_TYPE = 101


class SrtpSuite(StrEnum):
    """The SDES crypto suites the bridge takes (RFC 4568 section 6.2), best first."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"


#: Master key and salt of the AES-CM-128 suites: 16 + 14 bytes.
KEY_LENGTH = 30


@dataclass(frozen=True, slots=True)
class Crypto:
    """One ``a=crypto`` line (RFC 4568 section 9.1): its tag, its suite and
    the master key and salt (``inline:``, base64)."""

    tag: int
    suite: SrtpSuite
    key: bytes

    @classmethod
    def parse(cls, value: str) -> Crypto | None:
        """An ``a=crypto`` value; None for a suite or key parameters the
        bridge does not take (lifetimes and MKIs are accepted and ignored:
        the bridge rekeys by a new offer, as RFC 4568 section 6.4 allows)."""
        fields = value.split()
        if len(fields) < 3 or not fields[0].isdigit() or len(fields[0]) > 9:
            return None
        try:
            suite = SrtpSuite(fields[1])
        except ValueError:
            return None
        method, _, params = fields[2].partition(":")
        if method != "inline":
            return None
        try:
            key = base64.b64decode(params.split("|", 1)[0], validate=True)
        except ValueError:
            return None
        if len(key) != KEY_LENGTH:
            return None
        return cls(int(fields[0]), suite, key)

    def __str__(self) -> str:
        return f"{self.tag} {self.suite} inline:{base64.b64encode(self.key).decode()}"


@dataclass(frozen=True, slots=True)
class PhoneMedia:
    """What a phone call's media agreed: where to send, in which codec, which
    payload type carries digits, the far end's direction (``sendonly`` when
    it holds the call), and the keys (``local`` protects what we send,
    ``remote`` unprotects what comes; None for both on plain RTP)."""

    host: str
    port: int
    codec: str
    payload_type: int
    dtmf_payload_type: int | None
    direction: Direction
    local: Crypto | None = None
    remote: Crypto | None = None

    @property
    def on_hold(self) -> bool:
        """The far end stopped sending or receiving (RFC 3264 section 8.4)."""
        return self.direction is not Direction.SENDRECV or self.host in ("0.0.0.0", "::")


def _audio(text: str) -> tuple[SessionDescription, MediaDescription]:
    try:
        description = SessionDescription.parse(text)
    except SdpParseError as exc:
        raise SdpOfferError(f"not a session description: {exc}") from exc
    for media in description.media:
        if media.kind == "audio" and media.port != 0:
            return description, media
    raise SdpOfferError("no audio stream")


def _address(description: SessionDescription, media: MediaDescription) -> str:
    connection = media.connection or description.connection
    if connection is None:
        raise SdpOfferError("no connection address")
    try:
        ipaddress.ip_address(connection.address)
    except ValueError:
        # A host name: the bridge never resolves a peer's name on the media
        # path (it could point anywhere), and trunks send addresses.
        raise SdpOfferError("the connection address is not an IP address") from None
    return connection.address


def _codecs(media: MediaDescription) -> dict[str, int]:
    """Each codec name (upper case) the section offers -> its payload type,
    static ones included without an rtpmap (RFC 3551 section 6)."""
    found: dict[str, int] = {}
    for codec in media.codecs:
        if codec.name is not None and codec.clock_rate == 8000:
            found.setdefault(codec.name.upper(), codec.payload_type)
    for fmt in media.formats:
        static = codec_for_payload_type(int(fmt)) if fmt.isdigit() else None
        if static is not None:
            found.setdefault(static.name, static.payload_type)
    return found


def _direction(description: SessionDescription, media: MediaDescription) -> Direction:
    """The section's direction, else the session's (RFC 8866 section 6.7), else sendrecv."""
    if media.direction is not None:
        return media.direction
    names = {a.name for a in description.attributes}
    return next((d for d in Direction if d.value in names), Direction.SENDRECV)


def _keys(media: MediaDescription) -> list[Crypto]:
    return [
        crypto
        for attribute in media.attributes
        if attribute.name == "crypto" and attribute.value is not None
        if (crypto := Crypto.parse(attribute.value)) is not None
    ]


def _lines(
    host: str,
    port: int,
    session_id: int,
    version: int,
    codecs: list[tuple[str, int]],
    dtmf: int | None,
    direction: Direction,
    crypto: Crypto | None,
) -> str:
    family = "IP6" if ":" in host else "IP4"
    proto = "RTP/SAVP" if crypto is not None else "RTP/AVP"
    formats = [pt for _, pt in codecs] + ([dtmf] if dtmf is not None else [])
    lines = [
        "v=0",
        f"o=wadud {session_id} {version} IN {family} {host}",
        "s=wadud",
        f"c=IN {family} {host}",
        "t=0 0",
        f"m=audio {port} {proto} {' '.join(map(str, formats))}",
    ]
    lines += [f"a=rtpmap:{pt} {name}/8000" for name, pt in codecs]
    if dtmf is not None:
        lines += [f"a=rtpmap:{dtmf} telephone-event/8000", f"a=fmtp:{dtmf} 0-15"]
    lines += [f"a=ptime:{FRAME_MS}", f"a={direction}"]
    if crypto is not None:
        lines.append(f"a=crypto:{crypto}")
    return "\r\n".join(lines) + "\r\n"


def answer_offer(
    offer: str,
    host: str,
    port: int,
    *,
    session_id: int,
    key: bytes | None,
    version: int = 1,
) -> tuple[PhoneMedia, str]:
    """Answer a phone's offer (RFC 3264 section 6): what was agreed, and the
    answer's text. ``host``/``port``: where our RTP socket listens;
    ``key``: 30 random bytes for SDES, used when the offer is on SAVP.
    Raises :class:`~sip.errors.SdpOfferError` (answered 488) when nothing
    can be agreed."""
    description, media = _audio(offer)
    remote_host = _address(description, media)
    offered = _codecs(media)
    chosen = next(((name, offered[name]) for name in PHONE_CODECS if name in offered), None)
    if chosen is None:
        raise SdpOfferError("no codec in common (G.722, G.711 µ-law or A-law)")
    dtmf = offered.get("TELEPHONE-EVENT")
    local = remote = None
    if media.proto.upper() == "RTP/SAVP":
        keys = _keys(media)
        remote = next((k for s in SrtpSuite for k in keys if k.suite is s), None)
        if remote is None or key is None:
            raise SdpOfferError("SRTP offered with no key the bridge takes")
        local = Crypto(remote.tag, remote.suite, key)
    elif media.proto.upper() != "RTP/AVP":
        raise SdpOfferError(f"transport {media.proto[:20]!r} is not RTP or SDES-SRTP")
    direction = _direction(description, media).reverse()
    agreed = PhoneMedia(
        remote_host, media.port, chosen[0], chosen[1], dtmf, direction.reverse(), local, remote
    )
    text = _lines(host, port, session_id, version, [chosen], dtmf, direction, local)
    return agreed, text


def make_offer(
    host: str, port: int, *, session_id: int, key: bytes | None, version: int = 1
) -> str:
    """The bridge's own offer (dial-out): every codec it speaks, digits as
    ``telephone-event``, SDES when ``key`` is given."""
    codecs = [(c.name, c.payload_type) for c in PHONE_CODECS.values()]
    crypto = Crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80, key) if key is not None else None
    return _lines(
        host, port, session_id, version, codecs, DTMF_PAYLOAD_TYPE, Direction.SENDRECV, crypto
    )


def read_answer(answer: str, *, key: bytes | None) -> PhoneMedia:
    """The far end's answer to :func:`make_offer`. Raises
    :class:`~sip.errors.SdpOfferError` for an answer the offer does not
    allow (a codec not offered, no key when SRTP was offered)."""
    description, media = _audio(answer)
    host = _address(description, media)
    answered = _codecs(media)
    # The answer's first codec that was offered, on the payload type offered.
    spoken = {c.name: c.payload_type for c in PHONE_CODECS.values()}
    chosen = next(((n, pt) for n, pt in answered.items() if spoken.get(n) == pt), None)
    if chosen is None:
        raise SdpOfferError("the answer picked no codec that was offered")
    local = remote = None
    if key is not None:
        keys = _keys(media)
        if not keys:
            raise SdpOfferError("SRTP was offered and the answer has no key")
        remote = keys[0]
        local = Crypto(remote.tag, remote.suite, key)
    direction = _direction(description, media)
    dtmf = answered.get("TELEPHONE-EVENT")
    return PhoneMedia(host, media.port, chosen[0], chosen[1], dtmf, direction, local, remote)
