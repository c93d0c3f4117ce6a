"""Recording one room's tracks: which packets go where, and when a segment ends (issue 23).

A recording keeps each track's RTP as it arrived (after SRTP, before any
rewriting), never decoded, cut into segments of a few seconds that
:mod:`rtc.rtpdump` seals with the recording's key. This is the core of one
recording of one room; :class:`sfu.recording.aio.RecordingWriter` is its
adapter (the clock, the tick, sealing off the loop and the file store).

The forwarding path pays for it with one attribute per packet: every
:class:`~sfu.rooms.records.Peer` of a recorded room (publishers and relay links'
ingress legs alike, those that join later too, through
``MediaRoom.recording``) holds the recording's :attr:`RoomRecording.queue`, and
the worker's hot path appends ``(ssrc, packet, now)`` to it; a peer of a
room nobody records holds None. Everything else happens when the adapter
calls :meth:`RoomRecording.tick` a few times a second: the queue is
drained into each track's :class:`~rtc.rtpdump.SegmentWriter` (a repair
on the RTX SSRC as the packet it repairs, padding-only packets left out,
Opus RED reduced to its primary, a simulcast track's top flowing layer
only, which dynacast then keeps on, and the next one down once it goes
quiet), tracks
that appeared since are taken on and those that ended are closed, and
segments that are old or large enough come back as :class:`Cut` for the
adapter to seal and store.

What waits to be stored counts against ``queue_bytes``: packets not yet
drained plus cuts not yet stored. A store slower than the media makes it
grow; :meth:`RoomRecording.backlog` is what the adapter compares with the
bound. Times here are the worker's loop clock; ``wall_offset`` turns them
into the Unix seconds the segments carry.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from rtc import red
from rtc.errors import RtpParseError
from rtc.rtp.header import payload_range, rtx_original
from rtc.rtpdump import MAX_PACKET, SegmentHeader, SegmentWriter
from sfu.control.messages import RecordingOrder
from sfu.forward.keyframes import KEYFRAME_DETECTORS
from sfu.layers.published import QUIET, STALE, TICK
from sfu.rooms.records import LayerInfo, MediaRoom, Peer, Track

__all__ = ["Cut", "Queue", "RoomRecording"]

Queue = deque[tuple[int, bytes, float]]
"""What the hot path appends to: (SSRC, unprotected RTP packet, loop time)."""

#: A segment ends when it holds this many bytes of records, whatever its age.
SEGMENT_BYTES = 1 << 20
#: A simulcast track whose layers are not all flowing yet is taken on with
#: the highest flowing one once it was published this many seconds ago; with
#: the highest known one (none measured yet: a track just published) after
#: ``LAYER_GIVE_UP``.
LAYER_WAIT = 1.0
LAYER_GIVE_UP = 3.0
#: A layer whose last packet the layers' tick read this long ago has gone
#: quiet: QUIET, and the TICK by which that reading can lag this one.
QUIET_NOW = QUIET + TICK
#: A recorded video track asks its publisher for a keyframe again this
#: often until one of its recorded stream has come. The forwarder retries
#: only for subscribers that wait; the recording is none, and a request that
#: is lost, or coalesced into one a starved encoder let pass, would leave the
#: file without picture until someone else asked (ci85: 5.27 s of 20.4).
KEYFRAME_AGAIN = 1.0


@dataclass(frozen=True, slots=True)
class Cut:
    """A segment that ended: what to seal and store, and what to say once it is."""

    participant: str
    track_id: str
    kind: Literal["audio", "video"]
    writer: SegmentWriter
    ended: float
    """Unix seconds of its last packet (``writer.header.started`` is its first's)."""

    @property
    def size(self) -> int:
        return self.writer.size


class _TrackState:
    """One recorded track: the SSRC recorded, its open segment and next index."""

    __slots__ = (
        "asked",
        "index",
        "keyframe",
        "last",
        "layer",
        "red_pt",
        "rtx",
        "ssrc",
        "track",
        "writer",
    )

    def __init__(self, track: Track) -> None:
        self.track = track
        self.ssrc = 0
        """The media SSRC recorded; 0 until known (a simulcast track's layer)."""
        self.layer: LayerInfo | None = None
        """A simulcast track's recorded layer (its top one)."""
        self.index = 0
        self.writer: SegmentWriter | None = None
        self.last = 0.0
        self.red_pt = -1 if track.red is None else track.red.payload_type
        self.rtx = 0
        """The RTX SSRC repairing the recorded one (0: none known yet)."""
        self.keyframe = False
        """Whether a keyframe of the recorded stream has been recorded."""
        self.asked: float | None = None
        """When its keyframe was last asked for (None: asked, on the tick to come)."""

    def rtx_ssrc(self) -> int:
        """The RTX SSRC of the recorded stream as the worker knows it now."""
        if not self.ssrc or self.track.rtx is None:
            return 0
        found = self.layer.rtx_ssrc if self.layer is not None else self.track.rtx_ssrc
        return found or 0


class RoomRecording:
    """One recording of one room (sans-I/O: every call takes ``now``, loop seconds).

    ``segment_seconds``: a track's segment ends once it spans this long (or
    holds :data:`SEGMENT_BYTES`). The constructor attaches the queue to the
    room; :meth:`detach` takes it away again.
    """

    def __init__(
        self,
        room: MediaRoom,
        order: RecordingOrder,
        *,
        wall_offset: float,
        segment_seconds: float,
        now: float,
    ) -> None:
        self.room = room
        self.order = order
        self.wall_offset = wall_offset
        self.segment_seconds = segment_seconds
        self.queue: Queue = deque()
        self.tracks: dict[str, _TrackState] = {}
        self._by_ssrc: dict[int, _TrackState] = {}
        #: The RTX SSRCs of the recorded streams: a repair the publisher
        #: resends on one (after the worker's NACK) is recorded as the
        #: packet it repairs, or every loss would break the picture until
        #: the next keyframe.
        self._by_rtx: dict[int, _TrackState] = {}
        self.pending = 0
        """Bytes of cuts handed out and not yet stored (:meth:`stored`)."""
        self.queued = 0
        """Bytes the last :meth:`tick` found in the queue."""
        self.attached = False
        """Whether the room's peers queue their packets here."""
        self.keyframes: list[int] = []
        """Video tracks (forwarder SSRC) taken on since the last tick, whose
        recording should start with a keyframe: the adapter asks for one."""
        self._attach()
        self._sync(now)

    # -- the room's peers ----------------------------------------------------------------

    def _peers(self) -> Iterator[Peer]:
        for p in self.room.participants.values():
            if p.publish is not None:
                yield p.publish
        for relay in self.room.relays.values():
            yield relay.ingress

    def _attach(self) -> None:
        self.attached = True
        self.room.recording = self.queue
        for peer in self._peers():
            peer.recording = self.queue

    def detach(self) -> None:
        """Nothing more is queued from now on (stopped or failed)."""
        self.attached = False
        if self.room.recording is self.queue:
            self.room.recording = None
        for peer in self._peers():
            if peer.recording is self.queue:
                peer.recording = None

    # -- tracks ---------------------------------------------------------------------------

    def _sync(self, now: float) -> None:
        """Take on tracks new in the room (and publishers that joined since)."""
        for track_id, track in self.room.tracks.items():
            state = self.tracks.get(track_id)
            if state is None:
                state = self.tracks[track_id] = _TrackState(track)
            if not state.ssrc:
                self._choose_ssrc(state, now)
            elif state.layer is not None and now - state.layer.seen >= QUIET_NOW:
                self._follow(state, now)
            if not state.rtx and (rtx := state.rtx_ssrc()):
                # A layer's RTX SSRC is learnt with its first repair.
                state.rtx = rtx
                self._by_rtx[rtx] = state
        if not self.attached:
            return
        for peer in self._peers():
            if peer.recording is not self.queue:
                peer.recording = self.queue

    def _ended(self) -> list[Cut]:
        """Close the tracks that left the room (unpublished, their publisher left)."""
        cuts: list[Cut] = []
        tracks = self.room.tracks
        for track_id, state in list(self.tracks.items()):
            if tracks.get(track_id) is not state.track:
                cut = self._close(state)
                if cut is not None:
                    cuts.append(cut)
                del self.tracks[track_id]
                self._by_ssrc.pop(state.ssrc, None)
                self._by_rtx.pop(state.rtx, None)
        return cuts

    def _choose_ssrc(self, state: _TrackState, now: float) -> None:
        track = state.track
        if not track.layers:
            ssrc = track.ssrc
        else:
            known = [x for x in track.layers if x.ssrc]
            # The top layer the publisher is sending now: a browser sends
            # fewer layers than it offered when its camera is small or its
            # link weak, and a layer learnt from one early packet is no
            # picture at all.
            flowing = [x for x in known if now - x.seen < STALE]
            # Layers not learnt or not measured yet may still come, but only
            # while the track is new: one its browser has not sent since it
            # published (fewer layers for a small camera, a weak link or a
            # busy CPU) never will, and waiting for it would lose the first
            # second of a recording started mid-visit. A layer that went
            # quiet will not come back either.
            pending = any(x.seen == -math.inf for x in track.layers)
            waited = now - track.layers[0].since
            if flowing and (not pending or waited >= LAYER_WAIT):
                state.layer = flowing[-1]
            elif known and waited >= LAYER_GIVE_UP:
                state.layer = known[-1]
            else:
                return
            ssrc = state.layer.ssrc
        self._take(state, ssrc)

    def _take(self, state: _TrackState, ssrc: int) -> None:
        state.ssrc = ssrc
        self._by_ssrc[ssrc] = state
        if state.track.info.kind == "video":
            # That layer's keyframe, whether or not anyone receives it.
            state.keyframe, state.asked = False, None
            self.keyframes.append(ssrc)

    def _ask_again(self, now: float) -> None:
        """Each recorded video stream still without a keyframe asks again
        every :data:`KEYFRAME_AGAIN` seconds."""
        for state in self.tracks.values():
            if state.track.info.kind != "video" or not state.ssrc or state.keyframe:
                continue
            if state.asked is None:
                state.asked = now
            elif now - state.asked >= KEYFRAME_AGAIN:
                state.asked = now
                if state.ssrc not in self.keyframes:
                    self.keyframes.append(state.ssrc)

    def _follow(self, state: _TrackState, now: float) -> None:
        """The recorded layer went quiet (the publisher's link or CPU made it
        drop that layer): record the top layer still flowing, from its next
        keyframe. The remux stitches the layers by arrival time."""
        fresh = [x for x in state.track.layers if x.ssrc and now - x.seen < QUIET_NOW]
        if not fresh:
            return  # nothing flows (a camera turned off): keep waiting on this one
        # Fresh by QUIET_NOW, not STALE: the quiet layer itself is still within
        # STALE for another second and would be taken again.
        self._by_ssrc.pop(state.ssrc, None)
        self._by_rtx.pop(state.rtx, None)
        state.rtx = 0
        state.layer = fresh[-1]
        self._take(state, state.layer.ssrc)

    # -- packets -------------------------------------------------------------------------

    def tick(self, now: float) -> list[Cut]:
        """Drain the queue into the tracks' segments; the segments that ended."""
        self._sync(now)
        cuts = self._drain()
        cuts += self._ended()
        self._ask_again(now)
        wall = now + self.wall_offset
        for state in self.tracks.values():
            layer = state.layer
            if layer is not None:
                # Dynacast keeps a layer on while someone wants it: the recording does.
                layer.wanted_at = now
            writer = state.writer
            if writer is not None and wall - writer.header.started >= self.segment_seconds:
                cut = self._close(state)
                if cut is not None:
                    cuts.append(cut)
        self.pending += sum(c.size for c in cuts)
        return cuts

    def close(self, now: float) -> list[Cut]:
        """Stop: nothing more is queued; the last packets and every open segment, as cuts."""
        self.detach()
        self._sync(now)
        cuts = self._drain()
        cuts += self._ended()
        for state in self.tracks.values():
            cut = self._close(state)
            if cut is not None:
                cuts.append(cut)
        self.pending += sum(c.size for c in cuts)
        return cuts

    def _drain(self) -> list[Cut]:
        cuts: list[Cut] = []
        queue = self.queue
        by_ssrc = self._by_ssrc
        offset = self.wall_offset
        queued = 0
        for _ in range(len(queue)):
            ssrc, packet, at = queue.popleft()
            queued += len(packet)
            state = by_ssrc.get(ssrc)
            if state is None:
                state = self._by_rtx.get(ssrc)
                if state is None:
                    continue  # a layer not recorded, or not a recorded track's
                repaired = self._repair(state, packet)
                if repaired is None:
                    continue
                packet = repaired
            plain = self._plain(state, packet)
            if plain is None:
                continue
            if not state.keyframe and state.track.info.kind == "video":
                state.keyframe = _starts_keyframe(state, plain)
            cut = self._add(state, plain, at + offset)
            if cut is not None:
                cuts.append(cut)
        self.queued = queued
        return cuts

    def _repair(self, state: _TrackState, packet: bytes) -> bytes | None:
        """The packet an RTX packet of the recorded stream resends; None for a
        probe (no payload) or anything else on that SSRC."""
        rtx = state.track.rtx
        if rtx is None or (packet[1] & 0x7F) != rtx.payload_type:
            return None
        try:
            return rtx_original(packet, state.track.codec.payload_type, state.ssrc)
        except RtpParseError:
            return None

    def _plain(self, state: _TrackState, packet: bytes) -> bytes | None:
        """The packet as recorded: None for padding only; RED reduced to its primary."""
        if not packet[0] & 0x20 and (packet[1] & 0x7F) != state.red_pt:
            return packet  # no padding, no RED: as it came (the common case, unparsed)
        try:
            start, end = payload_range(packet)
        except RtpParseError:
            return None
        if start >= end or len(packet) > MAX_PACKET:
            return None
        if (packet[1] & 0x7F) != state.red_pt:
            return packet
        found = red.primary(packet, start, end)
        if found < 0:
            return None
        # The primary block as a plain Opus packet (RFC 2198 section 3): same
        # header, the codec's payload type, no padding.
        head = bytearray(packet[:start])
        head[0] &= 0xDF
        head[1] = (head[1] & 0x80) | ((found >> 16) & 0x7F)
        return bytes(head) + packet[found & 0xFFFF : end]

    def _add(self, state: _TrackState, packet: bytes, at: float) -> Cut | None:
        cut = None
        writer = state.writer
        if writer is not None and at - writer.header.started >= self.segment_seconds:
            cut = self._close(state)
            writer = None
        if writer is None:
            track = state.track
            codec = track.codec
            writer = state.writer = SegmentWriter(
                SegmentHeader(
                    recording=self.order.recording,
                    track=track.info.track_id,
                    kind=track.info.kind,
                    codec=codec.name or "",
                    clock_rate=codec.clock_rate,
                    payload_type=codec.payload_type,
                    index=state.index,
                    started=at,
                )
            )
        writer.add(packet, at)
        state.last = max(at, state.last)
        if writer.size >= SEGMENT_BYTES:
            return self._close(state)
        return cut

    def _close(self, state: _TrackState) -> Cut | None:
        writer = state.writer
        if writer is None:
            return None
        state.writer = None
        state.index += 1
        info = state.track.info
        return Cut(info.participant, info.track_id, info.kind, writer, state.last)

    def drop(self) -> None:
        """Fail: forget what is queued and open (nothing more is stored)."""
        self.detach()
        self.queue.clear()
        for state in self.tracks.values():
            state.writer = None

    def stored(self, cut: Cut) -> None:
        """The adapter stored ``cut`` (or gave up on it)."""
        self.pending -= cut.size

    def backlog(self) -> int:
        """Bytes waiting: packets the last tick drained plus cuts not yet stored."""
        return self.queued + self.pending


def _starts_keyframe(state: _TrackState, packet: bytes) -> bool:
    detect = KEYFRAME_DETECTORS.get((state.track.codec.name or "").lower())
    if detect is None:
        return True  # a codec we cannot read: no asking again for it
    try:
        start, end = payload_range(packet)
    except RtpParseError:
        return False
    return detect(packet, start, end)
