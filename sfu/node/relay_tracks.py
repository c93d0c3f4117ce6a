"""What a relay link carries of each room it shares: local tracks out, remote tracks in.

Inside each room a link shares (:mod:`sfu.node.links`), the link is two legs
of the room's :class:`~sfu.forward.forwarder.Forwarder`
(:class:`sfu.rooms.records.RelayRoom`), so the forwarding core needs nothing
new:

* *egress*, a subscriber (:func:`set_sent`): one subscription per relayed
  local track, under an SSRC unique on the link (the sending side chooses
  it), payload types and header extension ids as the publisher sent them
  (no rewriting), RTX when the publisher negotiated it. The link's NACKs are
  answered from the forwarder's history per subscription, its PLI/FIR
  coalesced toward the publisher like any subscriber's; its SRs carry the
  publisher's NTP/RTP pairing (:class:`~sfu.feedback.reports.SendStatistics`),
  and the peer's RRs give the link's RTT.
* *ingress*, a publisher (:func:`set_received`): the peer's tracks,
  registered by their link SSRC, offered to local subscribers like local
  tracks. Gaps on the link are NACKed by the forwarder (per hop: the peer
  answers from its history), local keyframe requests go to the peer (which
  coalesces them toward the publisher), the peer's SRs feed the local
  subscribers' SRs (lip-sync), and relayed audio levels (RFC 6464) feed the
  local speaker detector under each remote participant's name, so every
  worker that gets all of a room's audio computes the same active speaker.

Plain functions over the records, the report scheduler and (for a track
that ends) the transports core, which forgets it: what that queues is its
own, for the worker to take. Nothing here sets a link up, reads a datagram
or queues an action (:class:`sfu.node.links.Links` does).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

from rtc.sdp.attributes import AUDIO_LEVEL, Codec, RtcpFeedback
from sfu.control.messages import RelayCodec, RelayedTrack
from sfu.errors import SfuStateError
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.reports import ReportScheduler
from sfu.feedback.sending import SendStatistics
from sfu.forward.table import Subscription
from sfu.negotiation.sections import new_ssrc
from sfu.negotiation.transports import Transports
from sfu.rooms.records import Link, RelayRoom, Track
from sfu.transport.relay import LinkState

__all__ = ["set_received", "set_sent", "subscribe_sent"]


# --- egress: local tracks out ----------------------------------------------------------


def set_sent(
    reports: ReportScheduler, link: Link, relay: RelayRoom, tracks: list[Track], now: float
) -> None:
    """Send exactly ``tracks`` (local tracks of the relay's room) over ``link``:
    the others stop, each new one gets its SSRC on the link, and the egress
    leg subscribes to them once the link is up."""
    room = relay.room
    keep = {t.info.track_id for t in tracks}
    for track_id in [t for t in relay.sent if t not in keep]:
        relayed, track = relay.sent.pop(track_id)
        if track_id in relay.subscribed:
            relay.subscribed.discard(track_id)
            sub = room.forwarder.subscription(relay.egress, relayed.ssrc)
            if sub is not None:
                link.sent_gone += sub.packets_sent + sub.retransmitted
            with contextlib.suppress(SfuStateError):
                room.forwarder.unsubscribe(relay.egress, track.ssrc)
            reports.remove_send(relay.egress, relayed.ssrc)
        link.outgoing.pop(relayed.ssrc, None)
        if relayed.rtx_ssrc is not None:
            link.outgoing.pop(relayed.rtx_ssrc, None)
    for track in tracks:
        current = relay.sent.get(track.info.track_id)
        if current is not None and current[1] is track and track.live:
            continue
        relayed = _describe(link, track)
        relay.sent[track.info.track_id] = (relayed, track)
        link.outgoing[relayed.ssrc] = relay.egress
        if relayed.rtx_ssrc is not None:
            link.outgoing[relayed.rtx_ssrc] = relay.egress
    if link.core.state is LinkState.CONNECTED:
        subscribe_sent(reports, relay, now)


def _describe(link: Link, track: Track) -> RelayedTrack:
    """How a local track goes on the link: a fresh SSRC unique on it, the
    publisher's payload types and extension ids (the link rewrites neither)."""
    taken = set(link.outgoing) | set(link.incoming)
    ssrc = new_ssrc(taken)
    rtx_ssrc = new_ssrc(taken) if track.rtx is not None and track.rtx_ssrc else None
    return RelayedTrack(
        info=track.info,
        ssrc=ssrc,
        codec=_relay_codec(track.codec),
        rtx_ssrc=rtx_ssrc,
        rtx=_relay_codec(track.rtx) if rtx_ssrc is not None and track.rtx else None,
        extensions=dict(track.extensions),
        red=None if track.red is None else _relay_codec(track.red),
    )


def subscribe_sent(reports: ReportScheduler, relay: RelayRoom, now: float) -> None:
    """Subscribe the egress leg to the tracks it sends and does not yet (the link is up)."""
    forwarder = relay.room.forwarder
    for track_id, (relayed, track) in relay.sent.items():
        if track_id in relay.subscribed or not track.live:
            continue
        rtx_map = (
            {relayed.codec.payload_type: relayed.rtx.payload_type}
            if relayed.rtx is not None and relayed.rtx_ssrc is not None
            else {}
        )
        sub = forwarder.subscribe(
            relay.egress,
            track.ssrc,
            now,
            ssrc=relayed.ssrc,
            rtx_ssrc=relayed.rtx_ssrc,
            rtx_payload_types=rtx_map,
        )
        relay.subscribed.add(track_id)
        _report_send(reports, relay, track, sub)


def _report_send(
    reports: ReportScheduler, relay: RelayRoom, track: Track, sub: Subscription
) -> None:
    source = track.publisher.recv_stats.get(track.ssrc)
    if relay.egress.reporting and source is not None:
        rewriter = sub.rewriter
        reports.add_send(
            relay.egress,
            SendStatistics(
                sub,
                source,
                lambda: rewriter.timestamp_offset,
                cname=track.info.participant,
            ),
        )


# --- ingress: remote tracks in ---------------------------------------------------------


def set_received(
    transports: Transports,
    link: Link,
    relay: RelayRoom,
    wanted: dict[str, RelayedTrack],
    now: float,
) -> None:
    """Receive exactly ``wanted`` (track id -> how it comes on the link) over
    ``link``: a track gone, or described otherwise, ends (the transports core
    forgets it, and the speaker it was), each new one is the ingress leg's."""
    leg = relay.ingress
    for track_id, track in list(leg.tracks.items()):
        new = wanted.get(track_id)
        if new is not None and _same(track, new):
            if new.info.muted != track.info.muted:
                track.info = replace(track.info, muted=new.info.muted)
            continue
        _remove_relayed(transports, link, relay, track, now)
    for track_id, relayed in wanted.items():
        if track_id in leg.tracks:
            continue
        _add_relayed(transports.tables.reports, link, relay, relayed, now)


def _add_relayed(
    reports: ReportScheduler, link: Link, relay: RelayRoom, relayed: RelayedTrack, now: float
) -> None:
    room = relay.room
    leg = relay.ingress
    codec = _codec(relayed.codec)
    rtx = _codec(relayed.rtx) if relayed.rtx is not None else None
    red = _codec(relayed.red) if relayed.red is not None else None
    feedback = {(f.type, f.parameter) for f in codec.feedback}
    room.forwarder.add_track(
        leg,
        relayed.ssrc,
        kind=relayed.info.kind,
        codec=codec.name or "",
        clock_rate=codec.clock_rate,
        rtx_ssrc=relayed.rtx_ssrc if rtx is not None else None,
        rtx_payload_types={rtx.payload_type: codec.payload_type} if rtx is not None else None,
        extensions=dict(relayed.extensions),
        nack=("nack", None) in feedback,
        fir=("nack", "pli") not in feedback and ("ccm", "fir") in feedback,
        red_payload_type=None if red is None else red.payload_type,
    )
    track = Track(
        relayed.info,
        leg,
        relayed.ssrc,
        relayed.rtx_ssrc if rtx is not None else None,
        codec,
        rtx,
        dict(relayed.extensions),
    )
    track.red = red
    room.tracks[relayed.info.track_id] = track
    leg.tracks[relayed.info.track_id] = track
    stats = ReceiveStatistics(relayed.ssrc, codec.clock_rate)
    leg.recv_stats[relayed.ssrc] = stats
    if leg.reporting:
        reports.add_receive(leg, stats)
    assert leg.owners is not None
    leg.owners[relayed.ssrc] = relayed.info.participant
    level_id = relayed.extensions.get(AUDIO_LEVEL)
    if relayed.info.kind == "audio" and level_id and not relayed.info.muted:
        leg.levels[relayed.ssrc] = level_id
    link.incoming[relayed.ssrc] = leg
    if track.rtx_ssrc is not None:
        link.incoming[track.rtx_ssrc] = leg
    if relayed.info.kind == "video" and link.core.state is LinkState.CONNECTED:
        room.forwarder.request_keyframe(relayed.ssrc, now)


def _remove_relayed(
    transports: Transports, link: Link, relay: RelayRoom, track: Track, now: float
) -> None:
    leg = relay.ingress
    transports.remove_track(relay.room, track, now)
    leg.tracks.pop(track.info.track_id, None)
    assert leg.owners is not None
    participant = leg.owners.pop(track.ssrc, None)
    link.incoming.pop(track.ssrc, None)
    if track.rtx_ssrc is not None:
        link.incoming.pop(track.rtx_ssrc, None)
    if participant is not None and participant not in leg.owners.values():
        transports.speaker_left(relay.room, participant, now)


# --- helpers --------------------------------------------------------------------------


def _relay_codec(codec: Codec) -> RelayCodec:
    return RelayCodec(
        payload_type=codec.payload_type,
        name=codec.name or "",
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        fmtp=codec.fmtp,
        feedback=tuple(str(f) for f in codec.feedback),
    )


def _codec(codec: RelayCodec) -> Codec:
    feedback = []
    for text in codec.feedback:
        kind, _, parameter = text.partition(" ")
        feedback.append(RtcpFeedback(kind, parameter or None))
    return Codec(
        payload_type=codec.payload_type,
        name=codec.name or None,
        clock_rate=codec.clock_rate,
        channels=codec.channels,
        fmtp=codec.fmtp,
        feedback=feedback,
    )


def _same(track: Track, relayed: RelayedTrack) -> bool:
    """Whether a relayed track is still described the same (else it is replaced)."""
    return (
        track.ssrc == relayed.ssrc
        and track.rtx_ssrc == (relayed.rtx_ssrc if relayed.rtx is not None else None)
        and _relay_codec(track.codec) == relayed.codec
        and (None if track.red is None else _relay_codec(track.red)) == relayed.red
        and track.info.kind == relayed.info.kind
        and track.info.participant == relayed.info.participant
    )
