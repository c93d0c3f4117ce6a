"""A subscriber transport's m= sections: what each offers, and what the answer took.

Each track a subscriber receives is one section of its subscribe transport's
BUNDLE group (RFC 8843), under payload types and header extension ids that
mean one thing across the group; :func:`new_section` picks them, keeping the
publisher's where they are free, and :func:`negotiate` reads the subscriber's
answer. Pure functions on the records of :mod:`sfu.rooms.records`.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable
from dataclasses import replace

from rtc.errors import SdpNegotiationError
from rtc.red import red_fmtp_pt
from rtc.sdp.attributes import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    TRANSPORT_CC,
    Codec,
    Direction,
    Extmap,
    RtcpFeedback,
)
from rtc.sdp.media import MediaDescription
from sfu.rooms.records import Peer, Section, Track
from sfu.transport.offer_answer import ForwardedTrack

__all__ = ["negotiate", "new_section", "new_ssrc", "slot_section"]

# Extensions forwarded to subscribers. The mid extension is not among them:
# its value is the publisher's mid, which means nothing on the subscriber's
# transport, and our offers carry a=ssrc lines to demultiplex by.
_FORWARDED_EXTENSIONS = (ABS_SEND_TIME, TRANSPORT_CC, AUDIO_LEVEL)
# Dynamic payload types (RFC 3551 section 6), then the range RFC 7587-era
# browsers use when 96-127 are full (RFC 8866 section 6.6 allows 35-63 with rtcp-mux).
_FREE_PAYLOAD_TYPES = tuple(itertools.chain(range(96, 128), range(35, 64)))


def new_section(peer: Peer, track: Track, red_on: bool) -> Section:
    """A new m= section on a subscriber transport for ``track``: a new mid and SSRC,
    the publisher's payload types and extension ids where free on the transport
    (RFC 8843 section 9.1, RFC 8285 section 5), RTX and RED as the track has them."""
    mid = str(peer.next_mid)
    peer.next_mid += 1
    used: dict[int, tuple[object, ...]] = {}
    for section in peer.sections:
        if section.forwarded.stopped:
            continue
        f = section.forwarded
        used[f.codec.payload_type] = _meaning(f.kind, f.codec)
        if f.rtx is not None:
            used[f.rtx.payload_type] = _meaning(f.kind, f.rtx)
        if f.red is not None:
            used[f.red.payload_type] = _meaning(f.kind, f.red)
    kind = track.info.kind
    extmaps, feedback_ok = _forwarded_extensions(
        track, lambda uri: _extension_id(peer.ext_ids, uri, track.extensions[uri])
    )
    codec = replace(
        track.codec,
        feedback=[
            RtcpFeedback(f.type, f.parameter) for f in track.codec.feedback if f.type in feedback_ok
        ],
    )
    media_pt = _payload_type(used, _meaning(kind, codec), codec.payload_type)
    codec = replace(codec, payload_type=media_pt)
    used[media_pt] = _meaning(kind, codec)
    rtx: Codec | None = None
    rtx_ssrc: int | None = None
    if track.rtx is not None and (track.rtx_ssrc is not None or track.layers):
        rtx = replace(track.rtx, fmtp=f"apt={media_pt}", feedback=[])
        rtx_pt = _payload_type(used, _meaning(kind, rtx), track.rtx.payload_type)
        rtx = replace(rtx, payload_type=rtx_pt)
        rtx_ssrc = new_ssrc(peer.ssrcs)
    red: Codec | None = None
    if red_on and track.red is not None and media_pt == track.codec.payload_type:
        # Only under the publisher's own Opus payload type: the RED blocks
        # name it, and the forwarder passes them on unchanged.
        red = replace(track.red, fmtp=f"{media_pt}/{media_pt}", feedback=[])
        red_pt = _payload_type(used, _meaning(kind, red), track.red.payload_type)
        red = replace(red, payload_type=red_pt)
        used[red_pt] = _meaning(kind, red)
    ssrc = new_ssrc(peer.ssrcs)
    forwarded = ForwardedTrack(
        kind=kind,
        mid=mid,
        stream_id=track.info.participant,
        track_id=track.info.track_id,
        ssrc=ssrc,
        codec=codec,
        rtx_ssrc=rtx_ssrc,
        rtx=rtx,
        extensions=extmaps,
        cname=track.info.participant,
        red=red,
    )
    return Section(track, forwarded, {track.codec.payload_type: media_pt})


def slot_section(
    peer: Peer, track: Track, offered: MediaDescription, red_on: bool
) -> Section | None:
    """A single connection's section for ``track`` in the m= section the
    client offered ``recvonly`` (docs/protocol.md, "Media: one peer
    connection"), negotiated: the client's mid, payload types and extension
    ids (the offerer's, RFC 3264 section 6.1), a new SSRC (and RTX SSRC),
    RTX and RED where the offer has them. None when the offer has no
    codec the track can be forwarded as."""
    assert offered.mid is not None
    kind = track.info.kind
    mine = track.codec
    candidates = [
        c
        for c in offered.codecs
        if mine.name is not None
        and c.is_named(mine.name)
        and c.clock_rate == mine.clock_rate
        and (kind != "audio" or (c.channels or 1) == (mine.channels or 1))
    ]
    if mine.is_named("h264"):
        mode = mine.parameters.get("packetization-mode", "0")
        profile = mine.parameters.get("profile-level-id", "").lower()
        candidates = [c for c in candidates if c.parameters.get("packetization-mode", "0") == mode]
        candidates.sort(key=lambda c: c.parameters.get("profile-level-id", "").lower() != profile)
    if not candidates:
        return None
    theirs = candidates[0]
    offered_ids = {e.uri: e.id for e in offered.extmaps}
    extmaps, feedback_ok = _forwarded_extensions(track, offered_ids.get)
    wanted_fb = {(f.type, f.parameter) for f in theirs.feedback}
    codec = replace(
        mine,
        payload_type=theirs.payload_type,
        fmtp=theirs.fmtp if mine.is_named("h264") else mine.fmtp,
        feedback=[
            RtcpFeedback(f.type, f.parameter)
            for f in mine.feedback
            if f.type in feedback_ok and (f.type, f.parameter) in wanted_fb
        ],
    )
    pt = codec.payload_type
    rtx: Codec | None = None
    rtx_ssrc: int | None = None
    offered_rtx = offered.rtx_for(pt)
    if track.rtx is not None and (track.rtx_ssrc is not None or track.layers) and offered_rtx:
        rtx = replace(offered_rtx, feedback=[])
        rtx_ssrc = new_ssrc(peer.ssrcs)
    red: Codec | None = None
    if red_on and track.red is not None and pt == mine.payload_type:
        # Only under the publisher's own Opus payload type, as new_section.
        red = next(
            (
                replace(c, feedback=[])
                for c in offered.codecs
                if c.is_named("red") and red_fmtp_pt(c.fmtp) == pt
            ),
            None,
        )
    forwarded = ForwardedTrack(
        kind=kind,
        mid=offered.mid,
        stream_id=track.info.participant,
        track_id=track.info.track_id,
        ssrc=new_ssrc(peer.ssrcs),
        codec=codec,
        rtx_ssrc=rtx_ssrc,
        rtx=rtx,
        extensions=extmaps,
        cname=track.info.participant,
        red=red,
    )
    section = Section(track, forwarded, {mine.payload_type: pt})
    negotiate(section, offered, first=False)
    return section


def negotiate(section: Section, media: MediaDescription | None, first: bool) -> None:
    """What the subscriber's answer (RFC 3264 section 6) took of a section; refused, it stops."""
    forwarded = section.forwarded
    accepted = {c.payload_type for c in media.codecs} if media is not None else set()
    if (
        media is None
        or media.rejected
        or media.direction in (Direction.SENDONLY, Direction.INACTIVE)
        or forwarded.codec.payload_type not in accepted
    ):
        # Refused (no common codec, or the client stopped it): keep it stopped.
        section.stop(first)
        return
    section.negotiated = True
    offered = {e.uri for e in forwarded.extensions}
    section.sub_extensions = {e.uri: e.id for e in media.extmaps if e.uri in offered}
    rtx = forwarded.rtx
    section.use_rtx = (
        rtx is not None and forwarded.rtx_ssrc is not None and rtx.payload_type in accepted
    )
    section.rtx_map = (
        {forwarded.codec.payload_type: rtx.payload_type}
        if section.use_rtx and rtx is not None
        else {}
    )
    # RED goes as it is only if the answer kept it; else the forwarder
    # cuts each RED packet to its Opus block (sfu.forward.forwarder).
    red = forwarded.red
    track_red = section.track.red
    if red is not None and track_red is not None and red.payload_type in accepted:
        section.pt_map[track_red.payload_type] = red.payload_type


def _forwarded_extensions(
    track: Track, id_of: Callable[[str], int | None]
) -> tuple[list[Extmap], set[str]]:
    """The header extensions a subscriber gets of ``track``, each under the
    id ``id_of`` gives it (None: not on this section), and the RTCP
    feedback types that go with them (transport-cc needs its extension)."""
    feedback_ok = {"nack", "ccm", "goog-remb"}
    extmaps: list[Extmap] = []
    for uri in _FORWARDED_EXTENSIONS:
        if uri not in track.extensions or (uri == AUDIO_LEVEL and track.info.kind != "audio"):
            continue
        ident = id_of(uri)
        if ident is None:
            continue
        extmaps.append(Extmap(ident, uri))
        if uri == TRANSPORT_CC:
            feedback_ok.add("transport-cc")
    return extmaps, feedback_ok


def _meaning(kind: str, codec: Codec) -> tuple[object, ...]:
    # What a payload type means within one BUNDLE group (RFC 8843 section 9.1).
    return (kind, (codec.name or "").lower(), codec.clock_rate, codec.channels, codec.fmtp)


def _payload_type(
    used: dict[int, tuple[object, ...]], meaning: tuple[object, ...], preferred: int
) -> int:
    """The publisher's payload type when free on this transport, else one that is."""
    for pt, m in used.items():
        if m == meaning:
            return pt
    if preferred not in used:
        return preferred
    for pt in _FREE_PAYLOAD_TYPES:
        if pt not in used:
            return pt
    raise SdpNegotiationError("no payload type left on this subscribe transport")


def _extension_id(ids: dict[str, int], uri: str, preferred: int) -> int:
    """One id per URI on a transport (RFC 8285 section 5), the publisher's when free."""
    known = ids.get(uri)
    if known is not None:
        return known
    taken = set(ids.values())
    ident = preferred if 0 < preferred < 15 and preferred not in taken else None
    if ident is None:
        ident = next((i for i in range(1, 15) if i not in taken), None)
    if ident is None:
        raise SdpNegotiationError("no header extension id left on this subscribe transport")
    ids[uri] = ident
    return ident


def new_ssrc(taken: set[int]) -> int:
    """A random SSRC not in ``taken`` (RFC 3550 8.1), added to it."""
    while True:
        ssrc = secrets.randbits(32)
        if ssrc and ssrc not in taken:
            taken.add(ssrc)
            return ssrc
