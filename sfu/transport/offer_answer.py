"""What the SFU answers and offers: its side of the offer/answer model.

The offer/answer rules an SFU needs (RFC 3264, JSEP RFC 8829) over the
:mod:`rtc.sdp` codec. The server is ICE-lite (RFC 8445 section 2.5) on one UDP
port shared by every media section (BUNDLE, RFC 8843, and rtcp-mux, RFC 5761).

``answer(offer, local)`` answers a publisher's offer with only what the SFU
forwards; ``offer_for_subscriber(tracks, local)`` offers forwarded tracks to a
subscriber. Both keep the publisher's payload type numbers and header extension
ids, because forwarding never renumbers the publisher's side.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from rtc.errors import SdpNegotiationError
from rtc.red import red_fmtp_pt
from rtc.sdp.attributes import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    MID,
    REPAIRED_RTP_STREAM_ID,
    RTP_STREAM_ID,
    TRANSPORT_CC,
    Codec,
    Direction,
    Extmap,
    Msid,
    RtcpFeedback,
    SsrcAttribute,
    SsrcGroup,
)
from rtc.sdp.grammar import is_token
from rtc.sdp.media import ConnectionData, MediaDescription
from rtc.sdp.session import Group, Origin, SessionDescription, Timing
from rtc.sdp.transport import CandidateLine, Fingerprint, Setup

__all__ = [
    "ForwardedTrack",
    "LocalParameters",
    "answer",
    "answer_sending",
    "offer_for_subscriber",
]


# --- answering a publisher -------------------------------------------------------

_DEFAULT_FEEDBACK = (
    ("transport-cc", None),
    ("nack", None),
    ("nack", "pli"),
    ("ccm", "fir"),
    ("goog-remb", None),
)


@dataclass
class LocalParameters:
    """What the server puts in its descriptions: ICE-lite credentials (RFC 8839
    section 5.4), DTLS fingerprints (RFC 8122), host candidates (RFC 8445
    section 5.1.1.1) and what it forwards, in order of preference."""

    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[Fingerprint]
    addresses: list[tuple[str, int]]
    audio_codecs: tuple[str, ...] = ("opus",)
    video_codecs: tuple[str, ...] = ("VP8", "H264")
    header_extensions: tuple[str, ...] = (MID, ABS_SEND_TIME, TRANSPORT_CC, AUDIO_LEVEL)
    rtcp_feedback: tuple[tuple[str, str | None], ...] = _DEFAULT_FEEDBACK
    # Accept the publisher's simulcast layers (RFC 8853) and the RID extensions.
    simulcast: bool = False
    # Accept Opus RED (RFC 2198, ``red/48000/2`` over the Opus payload type) when offered.
    red: bool = True
    session_id: str = field(default_factory=lambda: str(secrets.randbits(62)))
    session_version: int = 1

    def candidates(self) -> list[CandidateLine]:
        """Host candidates; priority per RFC 8445 section 5.1.2.1 with type
        preference 126 and local preference falling with list order."""
        return [
            CandidateLine(
                foundation=str(index + 1),
                component=1,
                transport="udp",
                priority=(126 << 24) | ((65535 - index) << 8) | 255,
                address=address,
                port=port,
                type="host",
            )
            for index, (address, port) in enumerate(self.addresses)
        ]

    def _origin(self) -> Origin:
        # JSEP (RFC 8829 section 5.2.1) fills o= with a meaningless address.
        return Origin("-", self.session_id, str(self.session_version), "IN", "IP4", "0.0.0.0")

    def _default_address(self) -> tuple[ConnectionData, int]:
        if not self.addresses:
            raise SdpNegotiationError("no host candidate address configured")
        address, port = self.addresses[0]
        return ConnectionData("IN", "IP6" if ":" in address else "IP4", address), port


def _h264_rank(codec: Codec) -> int:
    """Lower is better: 42e01f itself, then its constrained-baseline family
    (profile_idc 0x42 with constraint_set1, RFC 6184 section 8.1), then any."""
    profile = codec.parameters.get("profile-level-id", "").lower()
    if profile == "42e01f":
        return 0
    if len(profile) == 6 and profile.startswith("42"):
        try:
            iop = int(profile[2:4], 16)
        except ValueError:
            return 2
        if iop & 0x40:
            return 1
    return 2


def _pick_codecs(offered: MediaDescription, local: LocalParameters) -> list[Codec]:
    """The offered codecs the SFU forwards, in local preference order, each
    followed by its RTX; payload types and parameters exactly as offered."""
    allowed_fb = set(local.rtcp_feedback)
    preferences = local.audio_codecs if offered.kind == "audio" else local.video_codecs
    chosen: list[Codec] = []
    for wanted in preferences if offered.kind in ("audio", "video") else ():
        candidates = [c for c in offered.codecs if c.is_named(wanted) and c.clock_rate]
        if wanted.lower() == "opus":
            candidates = [c for c in candidates if c.clock_rate == 48000 and c.channels == 2]
        elif wanted.lower() == "h264":
            # Forwarding cannot fragment again: only non-interleaved mode
            # (packetization-mode=1, RFC 6184 section 6.3) passes through.
            candidates = [c for c in candidates if c.parameters.get("packetization-mode") == "1"]
            candidates.sort(key=_h264_rank)
        elif wanted.lower() == "vp8":
            candidates = [c for c in candidates if c.clock_rate == 90000]
        if not candidates:
            continue
        codec = candidates[0]
        fmtp = codec.fmtp
        if codec.is_named("opus") and codec.parameters.get("useinbandfec") != "1":
            # RFC 7587 section 6.1: ask the sender for in-band FEC, it survives loss.
            fmtp = "useinbandfec=1" if not fmtp else f"{fmtp};useinbandfec=1"
        feedback = [
            RtcpFeedback(f.type, f.parameter)
            for f in codec.feedback
            if (f.type, f.parameter) in allowed_fb
        ]
        red = _red_for(offered, codec) if local.red and codec.is_named("opus") else None
        if red is not None:
            # First: Chromium sends RED only when it comes before the codec it
            # carries in the answer's list (libwebrtc's voice engine).
            chosen.append(replace(red, feedback=[]))
        chosen.append(replace(codec, fmtp=fmtp, feedback=feedback))
        rtx = offered.rtx_for(codec.payload_type)
        if rtx is not None and offered.kind == "video":
            chosen.append(replace(rtx, feedback=[]))
    return chosen


def _red_for(offered: MediaDescription, codec: Codec) -> Codec | None:
    """The offered ``red`` (RFC 2198 section 5) whose blocks all carry ``codec``:
    same clock rate and channels, ``fmtp`` naming its payload type only."""
    for red in offered.codecs:
        if (
            red.is_named("red")
            and (red.clock_rate, red.channels) == (codec.clock_rate, codec.channels)
            and red_fmtp_pt(red.fmtp) == codec.payload_type
        ):
            return red
    return None


def _answer_media(
    offered: MediaDescription,
    local: LocalParameters,
    codecs: list[Codec],
) -> MediaDescription:
    connection, port = local._default_address()
    allowed_ext = set(local.header_extensions)
    if local.simulcast and (offered.rids or offered.kind == "video"):
        # Every video section's, not only a simulcast one's: a browser
        # offers an extension an answer once left out never again on that
        # connection (Chromium), and a single connection's camera may come
        # after its first answer.
        allowed_ext |= {RTP_STREAM_ID, REPAIRED_RTP_STREAM_ID}
    extmaps = [
        Extmap(e.id, e.uri, e.direction.reverse() if e.direction else None)
        for e in offered.extmaps
        if e.uri in allowed_ext
    ]
    direction = offered.direction or Direction.SENDRECV
    # The publish leg only receives: subscriptions are negotiated by the
    # server's own offers, so nothing is ever sent on these m= sections.
    ours = (
        Direction.RECVONLY
        if direction in (Direction.SENDRECV, Direction.SENDONLY)
        else Direction.INACTIVE
    )
    media = MediaDescription(
        kind=offered.kind,
        port=port,
        proto=offered.proto,
        formats=[str(c.payload_type) for c in codecs],
        connection=connection,
        mid=offered.mid,
        direction=ours,
        rtcp_mux=True,
        rtcp_rsize=offered.rtcp_rsize,
        extmap_allow_mixed=offered.extmap_allow_mixed,
        extmaps=extmaps,
        codecs=codecs,
    )
    if local.simulcast and offered.rids and offered.simulcast:
        media.rids = [_reverse_rid(r) for r in offered.rids]
        media.simulcast = _reverse_simulcast(offered.simulcast)
    return media


def _reverse_rid(rid: str) -> str:
    # RFC 8851 section 4: "<id> send|recv [restrictions]"; the answer mirrors it.
    ident, _, rest = rid.partition(" ")
    direction, _, params = rest.partition(" ")
    flipped = {"send": "recv", "recv": "send"}.get(direction, direction)
    return " ".join(p for p in (ident, flipped, params) if p)


def _reverse_simulcast(value: str) -> str:
    # RFC 8853 section 5.1: "send <streams> [recv <streams>]".
    parts = value.split(" ")
    return " ".join({"send": "recv", "recv": "send"}.get(p, p) for p in parts)


def _rejected(offered: MediaDescription) -> MediaDescription:
    # RFC 3264 section 6 and RFC 8843 section 7.3.3: port zero, same formats,
    # mid kept so the m= sections still line up (RFC 8829 section 5.3.1).
    return MediaDescription(
        kind=offered.kind,
        port=0,
        proto=offered.proto,
        formats=list(offered.formats),
        connection=ConnectionData("IN", "IP4", "0.0.0.0"),
        mid=offered.mid,
        direction=Direction.INACTIVE if offered.is_rtp else None,
    )


def _add_transport(
    media: MediaDescription, local: LocalParameters, setup: Setup, ice_options: list[str]
) -> None:
    # Every accepted section carries the same transport attributes, as
    # browsers' own answers do: some peers read them per m= section.
    media.ice_ufrag = local.ice_ufrag
    media.ice_pwd = local.ice_pwd
    media.ice_options = list(ice_options)
    media.fingerprints = [Fingerprint(f.algorithm, f.value) for f in local.fingerprints]
    media.setup = setup
    media.candidates = local.candidates()
    media.end_of_candidates = True


def answer(offer: SessionDescription, local: LocalParameters) -> SessionDescription:
    """Answer a browser's offer (RFC 8829 section 5.3, RFC 3264 section 6).

    Accepts Opus (with its RED, RFC 2198, listed first, when ``local.red``),
    VP8 and H.264 packetization-mode=1 (one profile, 42e01f first) with
    their RTX, the mid, abs-send-time, transport-wide-cc and
    ssrc-audio-level extensions and the RTCP feedback in ``local``; payload
    types and extension ids stay as offered. Other m= sections are rejected
    with port zero. The BUNDLE tag is chosen per RFC 8843 section 7.3.1. The
    DTLS role is the one the offer leaves (RFC 5763 section 5: ``active`` for
    ``actpass``). Raises :class:`SdpNegotiationError` when the offer lacks ICE
    credentials or fingerprints, or needs more than one transport.
    """
    transport = offer.transport()
    if not transport.ice_ufrag or not transport.ice_pwd:
        raise SdpNegotiationError("offer has no ICE credentials")
    if not transport.fingerprints:
        raise SdpNegotiationError("offer has no DTLS fingerprint")
    setup = {
        None: Setup.ACTIVE,
        Setup.ACTPASS: Setup.ACTIVE,
        Setup.ACTIVE: Setup.PASSIVE,
        Setup.PASSIVE: Setup.ACTIVE,
    }.get(transport.setup)
    if setup is None:
        raise SdpNegotiationError(f"cannot answer DTLS setup {transport.setup}")

    group = offer.bundle
    bundled = set(group.mids) if group is not None else None
    accepted: dict[int, MediaDescription] = {}
    sections: list[MediaDescription] = []
    for index, offered in enumerate(offer.media):
        codecs: list[Codec] = []
        in_bundle = bundled is None or offered.mid in bundled
        if (
            not offered.rejected
            and in_bundle
            and offered.is_rtp
            and offered.proto.startswith("UDP/TLS/RTP/SAVP")
            and offered.mid is not None
        ):
            codecs = _pick_codecs(offered, local)
        if codecs:
            section = _answer_media(offered, local, codecs)
            accepted[index] = section
        else:
            section = _rejected(offered)
        sections.append(section)

    if group is None and len(accepted) > 1:
        raise SdpNegotiationError("offer without BUNDLE needs one transport per m= section")
    if not accepted:
        raise SdpNegotiationError("nothing in the offer is media the SFU forwards")
    for section in accepted.values():
        # No ice-options:trickle: an ICE-lite answer carries every candidate.
        _add_transport(section, local, setup, [])

    groups: list[Group] = []
    if group is not None:
        accepted_mids = {s.mid for s in accepted.values()}
        mids = [m for m in group.mids if m in accepted_mids]
        if mids:
            groups.append(Group("BUNDLE", mids))
    return SessionDescription(
        origin=local._origin(),
        name="-",
        timings=[Timing()],
        groups=groups,
        ice_lite=True,
        extmap_allow_mixed=offer.extmap_allow_mixed,
        media=sections,
    )


# --- offering to a subscriber ------------------------------------------------------


@dataclass
class ForwardedTrack:
    """A track forwarded to one subscriber: what its m= section announces
    (RFC 8829 section 5.2.1; msid RFC 8830; ssrc and FID RFC 5576, RFC 4588).

    ``codec`` and ``rtx`` carry the payload types the subscriber will see;
    ``red`` its Opus RED (RFC 2198), offered after ``codec``, whose fmtp
    must name ``codec``'s payload type; ``extensions`` the header extension
    ids. ``stopped`` marks a section whose track has ended: it stays, with
    port zero, so later offers line up.
    """

    kind: str
    mid: str
    stream_id: str
    track_id: str
    ssrc: int
    codec: Codec
    rtx_ssrc: int | None = None
    rtx: Codec | None = None
    extensions: list[Extmap] = field(default_factory=list)
    cname: str | None = None
    stopped: bool = False
    red: Codec | None = None


def _check_bundle_consistency(tracks: Sequence[ForwardedTrack]) -> None:
    # RFC 8843 section 9.1: a payload type or extension id means one thing
    # across every m= section of a BUNDLE group.
    payload_types: dict[int, tuple[str, str, int, int | None, str | None]] = {}
    extension_ids: dict[int, str] = {}
    for track in tracks:
        for codec in (track.codec, track.rtx, track.red):
            if codec is None:
                continue
            key = (track.kind, (codec.name or "").lower(), codec.clock_rate, codec.channels)
            meaning = (*key, codec.fmtp)
            if payload_types.setdefault(codec.payload_type, meaning) != meaning:
                raise SdpNegotiationError(
                    f"payload type {codec.payload_type} means two codecs in one BUNDLE group"
                )
        for ext in track.extensions:
            if extension_ids.setdefault(ext.id, ext.uri) != ext.uri:
                raise SdpNegotiationError(f"extension id {ext.id} names two URIs in one BUNDLE")


def _subscriber_media(
    track: ForwardedTrack, local: LocalParameters, proto: str
) -> MediaDescription:
    if track.kind not in ("audio", "video"):
        raise SdpNegotiationError(f"cannot forward a {track.kind!r} track")
    codecs = [replace(track.codec, feedback=list(track.codec.feedback))]
    if track.rtx is not None:
        if track.rtx.apt != track.codec.payload_type:
            raise SdpNegotiationError(f"RTX of mid {track.mid} does not repair its codec")
        codecs.append(replace(track.rtx, feedback=[]))
    if track.red is not None:
        if red_fmtp_pt(track.red.fmtp) != track.codec.payload_type:
            raise SdpNegotiationError(f"RED of mid {track.mid} does not carry its codec")
        codecs.insert(1, replace(track.red, feedback=[]))
    if track.rtx_ssrc is not None and track.rtx is None:
        raise SdpNegotiationError(f"mid {track.mid} has an RTX SSRC but no RTX codec")
    connection, port = local._default_address()
    media = MediaDescription(
        kind=track.kind,
        port=0 if track.stopped else port,
        proto=proto,
        formats=[str(c.payload_type) for c in codecs],
        connection=connection,
        mid=track.mid,
        direction=Direction.INACTIVE if track.stopped else Direction.SENDONLY,
        rtcp_mux=True,
        rtcp_rsize=True,
        extmaps=[Extmap(e.id, e.uri) for e in track.extensions],
        codecs=codecs,
    )
    if track.stopped:
        return media
    media.msids = [Msid(track.stream_id, track.track_id)]
    cname = track.cname or track.stream_id
    ssrcs = [track.ssrc] if track.rtx_ssrc is None else [track.ssrc, track.rtx_ssrc]
    if track.rtx_ssrc is not None:
        media.ssrc_groups = [SsrcGroup("FID", list(ssrcs))]
    for ssrc in ssrcs:
        media.ssrcs.append(SsrcAttribute(ssrc, "cname", cname))
        media.ssrcs.append(SsrcAttribute(ssrc, "msid", f"{track.stream_id} {track.track_id}"))
    return media


def offer_for_subscriber(
    tracks: Iterable[ForwardedTrack], local: LocalParameters
) -> SessionDescription:
    """The server's offer of forwarded tracks (RFC 8829 section 5.2): one
    sendonly m= section per track, all in one BUNDLE group (RFC 8843 section
    7.2) with rtcp-mux, ICE-lite and ``setup:actpass`` (RFC 5763 section 5)
    so the subscriber picks the DTLS role. Bump ``local.session_version`` for
    each new offer on the same session (RFC 3264 section 8).
    """
    tracks = list(tracks)
    if not tracks:
        raise SdpNegotiationError("a subscriber offer needs at least one track")
    mids = [t.mid for t in tracks]
    if len(set(mids)) != len(mids):
        raise SdpNegotiationError("two forwarded tracks share a mid")
    for mid in mids:
        if not is_token(mid):
            raise SdpNegotiationError(f"mid {mid!r} is not an SDP token")
    _check_bundle_consistency([t for t in tracks if not t.stopped])
    sections = [_subscriber_media(t, local, "UDP/TLS/RTP/SAVPF") for t in tracks]
    live = [s for s in sections if s.port != 0]
    if not live:
        raise SdpNegotiationError("every forwarded track is stopped")
    for section in live:
        _add_transport(section, local, Setup.ACTPASS, [])
    return SessionDescription(
        origin=local._origin(),
        name="-",
        timings=[Timing()],
        groups=[Group("BUNDLE", [s.mid for s in live if s.mid is not None])],
        ice_lite=True,
        extmap_allow_mixed=True,
        media=sections,
    )


def answer_sending(
    answered: MediaDescription, track: ForwardedTrack, local: LocalParameters
) -> MediaDescription:
    """The answer's m= section that sends ``track`` on a single connection
    (docs/protocol.md, "Media: one peer connection"): the client offered
    it ``recvonly``, :func:`answer` accepted it ``inactive`` as ``answered``;
    this one is ``sendonly`` with the track's msid and SSRCs (RFC 8830, RFC
    5576) and the payload types and extension ids of the offer, which
    ``track`` carries, on the same transport as every other section."""
    media = _subscriber_media(track, local, answered.proto)
    # What the first answer agreed for the connection stays agreed (see
    # _answer_media): the RID extensions, which nothing sent here carries.
    rids = (RTP_STREAM_ID, REPAIRED_RTP_STREAM_ID)
    media.extmaps += [Extmap(e.id, e.uri) for e in answered.extmaps if e.uri in rids]
    media.rtcp_rsize = answered.rtcp_rsize
    media.extmap_allow_mixed = answered.extmap_allow_mixed
    media.ice_ufrag = answered.ice_ufrag
    media.ice_pwd = answered.ice_pwd
    media.ice_options = list(answered.ice_options)
    media.fingerprints = list(answered.fingerprints)
    media.setup = answered.setup
    media.candidates = list(answered.candidates)
    media.end_of_candidates = answered.end_of_candidates
    return media
