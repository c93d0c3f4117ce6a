"""The session descriptions a load tester writes and reads (RFC 8866, JSEP
RFC 8829), as text: only what its links need.

A publisher offers what Chromium offers for one microphone and one camera
(Opus, VP8 with RTX, BUNDLE, rtcp-mux, the mid, audio-level, abs-send-time and
transport-wide-cc extensions, ``setup:actpass``); a subscriber answers the
server's offer with ``setup:active``, taking every m= section. What the
server's descriptions say is read into :class:`Description`.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from wadud_client.load.wire.link import Remote

__all__ = ["Description", "Section", "answer_for", "publish_offer", "read"]

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
TWCC_URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
#: Simulcast layers' RIDs, lowest first, as the call page names them.
SIMULCAST_RIDS = ("q", "h", "f")

OPUS_PT, VP8_PT, RTX_PT = 111, 96, 97


@dataclass
class Section:
    """One m= section as the other side described it."""

    kind: str
    mid: str
    #: Payload type by codec name (upper case), the first of each.
    payload_types: dict[str, int] = field(default_factory=dict)
    #: Extension id by URI.
    extensions: dict[str, int] = field(default_factory=dict)
    ssrcs: list[int] = field(default_factory=list)
    #: The retransmission SSRCs among them (``a=ssrc-group:FID media rtx``).
    rtx_ssrcs: set[int] = field(default_factory=set)
    #: Each retransmission SSRC's media SSRC.
    rtx_of: dict[int, int] = field(default_factory=dict)
    #: The track id (``a=msid:<stream> <track>``), when the server names it.
    track: str = ""
    direction: str = "sendrecv"


@dataclass
class Description:
    remote: Remote
    sections: list[Section]


def read(sdp: str) -> Description:
    """The server's offer or answer: its ICE, DTLS and per-section details."""
    session: dict[str, str] = {}
    sections: list[Section] = []
    host, port = "", 0
    current: Section | None = None
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            kind, _, rest = line[2:].partition(" ")
            port = port or int(rest.split(" ", 1)[0])
            current = Section(kind=kind, mid="")
            sections.append(current)
            continue
        if not line.startswith("a="):
            continue
        name, _, value = line[2:].partition(":")
        if name in ("ice-ufrag", "ice-pwd", "fingerprint", "setup"):
            session.setdefault(name, value)
        elif name == "candidate" and not host:
            parts = value.split()
            if len(parts) > 5 and parts[2].lower() == "udp":
                host, port = parts[4], int(parts[5])
        elif current is None:
            continue
        elif name == "mid":
            current.mid = value
        elif name == "rtpmap":
            pt, _, codec = value.partition(" ")
            current.payload_types.setdefault(codec.split("/")[0].upper(), int(pt))
        elif name == "extmap":
            xid, _, uri = value.partition(" ")
            current.extensions[uri.split(" ")[0]] = int(xid.split("/")[0])
        elif name == "ssrc":
            ssrc = int(value.split(" ", 1)[0])
            if ssrc not in current.ssrcs:
                current.ssrcs.append(ssrc)
        elif name == "ssrc-group" and value.startswith("FID "):
            media, *repairs = (int(x) for x in value.split()[1:])
            current.rtx_ssrcs.update(repairs)
            current.rtx_of.update(dict.fromkeys(repairs, media))
        elif name == "msid":
            current.track = value.split(" ")[-1]
        elif name in ("sendrecv", "sendonly", "recvonly", "inactive"):
            current.direction = name
    missing = [k for k in ("ice-ufrag", "ice-pwd", "fingerprint") if k not in session]
    if missing or not host:
        raise ValueError(f"the server's description lacks {missing or ['a candidate']}")
    remote = Remote(
        host=host,
        port=port,
        ufrag=session["ice-ufrag"],
        pwd=session["ice-pwd"],
        fingerprint=session["fingerprint"],
        setup=session.get("setup", "actpass"),
    )
    return Description(remote, sections)


def _credentials() -> tuple[str, str]:
    return secrets.token_hex(2), secrets.token_urlsafe(18)[:24]


def _transport_lines(ufrag: str, pwd: str, fingerprint: str, setup: str) -> list[str]:
    return [
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        "a=ice-options:trickle",
        f"a=fingerprint:{fingerprint}",
        f"a=setup:{setup}",
    ]


def _head(mids: list[str]) -> list[str]:
    sid = int.from_bytes(os.urandom(7), "big")
    return [
        "v=0",
        f"o=- {sid} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {' '.join(mids)}",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
    ]


@dataclass(frozen=True)
class Offer:
    sdp: str
    ufrag: str
    pwd: str
    audio_ssrc: int
    video_ssrc: int
    rtx_ssrc: int
    #: The m= sections' mids: audio, video.
    mids: tuple[str, str] = ("0", "1")
    #: Simulcast: each layer's RID and SSRC, lowest first (the SSRCs are not
    #: in the SDP, as Chromium leaves them out: the RID extension names them).
    layers: tuple[tuple[str, int], ...] = ()


def publish_offer(
    fingerprint: str, *, audio: bool = True, video: bool = True, rids: tuple[str, ...] = ()
) -> Offer:
    """A publisher's offer for a microphone and a camera, as Chromium writes
    it; with ``rids``, the camera as simulcast layers (RFC 8853) of those
    RIDs, lowest first, with no SSRC and no RTX named."""
    ufrag, pwd = _credentials()
    stream = secrets.token_hex(8)
    cname = secrets.token_hex(8)
    a_ssrc, v_ssrc, r_ssrc = (int.from_bytes(os.urandom(4), "big") | 1 for _ in range(3))
    mids = [m for m, on in (("0", audio), ("1", video)) if on]
    lines = _head(mids)
    transport = _transport_lines(ufrag, pwd, fingerprint, "actpass")
    if audio:
        lines += [
            f"m=audio 9 UDP/TLS/RTP/SAVPF {OPUS_PT}",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            *transport,
            "a=mid:0",
            f"a=extmap:1 {AUDIO_LEVEL_URI}",
            f"a=extmap:3 {TWCC_URI}",
            f"a=extmap:4 {MID_URI}",
            "a=sendonly",
            f"a=msid:{stream} {secrets.token_hex(8)}",
            "a=rtcp-mux",
            f"a=rtpmap:{OPUS_PT} opus/48000/2",
            f"a=rtcp-fb:{OPUS_PT} transport-cc",
            f"a=fmtp:{OPUS_PT} minptime=10;useinbandfec=1",
            f"a=ssrc:{a_ssrc} cname:{cname}",
        ]
    if video:
        # Simulcast layers go unnamed (the RID extension names them) and
        # without RTX; one stream is named, with its RTX.
        lines += [
            f"m=video 9 UDP/TLS/RTP/SAVPF {VP8_PT}" + ("" if rids else f" {RTX_PT}"),
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            *transport,
            "a=mid:1",
            f"a=extmap:2 {ABS_SEND_TIME_URI}",
            f"a=extmap:3 {TWCC_URI}",
            f"a=extmap:4 {MID_URI}",
            *([f"a=extmap:10 {RID_URI}"] if rids else []),
            "a=sendonly",
            f"a=msid:{stream} {secrets.token_hex(8)}",
            "a=rtcp-mux",
            "a=rtcp-rsize",
            f"a=rtpmap:{VP8_PT} VP8/90000",
            f"a=rtcp-fb:{VP8_PT} goog-remb",
            f"a=rtcp-fb:{VP8_PT} transport-cc",
            f"a=rtcp-fb:{VP8_PT} ccm fir",
            f"a=rtcp-fb:{VP8_PT} nack",
            f"a=rtcp-fb:{VP8_PT} nack pli",
        ]
        if rids:
            lines += [f"a=rid:{rid} send" for rid in rids]
            lines.append("a=simulcast:send " + ";".join(rids))
        else:
            lines += [
                f"a=rtpmap:{RTX_PT} rtx/90000",
                f"a=fmtp:{RTX_PT} apt={VP8_PT}",
                f"a=ssrc-group:FID {v_ssrc} {r_ssrc}",
                f"a=ssrc:{v_ssrc} cname:{cname}",
                f"a=ssrc:{r_ssrc} cname:{cname}",
            ]
    layers = tuple((rid, int.from_bytes(os.urandom(4), "big") | 1) for rid in rids)
    return Offer("\r\n".join(lines) + "\r\n", ufrag, pwd, a_ssrc, v_ssrc, r_ssrc, layers=layers)


@dataclass(frozen=True)
class Answer:
    sdp: str
    ufrag: str
    pwd: str


def answer_for(
    offer: Description, offer_sdp: str, fingerprint: str, ice: tuple[str, str] | None = None
) -> Answer:
    """A subscriber's answer to the server's offer: every section taken,
    receive-only, with the offer's codecs and extensions (we are DTLS client).
    ``ice``: the credentials of an answer before (a renegotiation keeps
    them); else new ones."""
    ufrag, pwd = ice or _credentials()
    lines = _head([s.mid for s in offer.sections])
    transport = _transport_lines(ufrag, pwd, fingerprint, "active")
    blocks = _section_blocks(offer_sdp)
    for section, block in zip(offer.sections, blocks, strict=True):
        kind, _, rest = block[0].partition(" ")
        m_line = f"{kind} 9 {rest.partition(' ')[2]}"
        lines += [m_line, "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", *transport]
        lines.append(f"a=mid:{section.mid}")
        direction = "recvonly" if section.direction in ("sendonly", "sendrecv") else "inactive"
        lines += [ln for ln in block if ln.startswith(("a=extmap:",))]
        lines += [f"a={direction}", "a=rtcp-mux"]
        lines += [
            ln
            for ln in block
            if ln.startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:", "a=rtcp-rsize"))
        ]
    return Answer("\r\n".join(lines) + "\r\n", ufrag, pwd)


def _section_blocks(sdp: str) -> list[list[str]]:
    blocks: list[list[str]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            blocks.append([line])
        elif blocks and line:
            blocks[-1].append(line)
    return blocks
