"""What the layers core keeps of each subscriber transport: its bandwidth estimate, its allocation.

The subscriber's side of :class:`sfu.layers.choice.Layers`, which holds one
:class:`Subscribers` and hands it to what reads it
(:class:`sfu.layers.qualities.Qualities`):

* **Estimation.** Each subscriber transport that negotiated transport-cc
  has a :class:`~sfu.feedback.estimator.SendSideEstimator`: the forwarder
  records each packet's send time and size into its rings, the subscriber's
  feedback feeds it (:meth:`Subscribers.feedback`). Without transport-cc the
  subscriber's REMB is the estimate; without either the bandwidth counts as
  unlimited (:meth:`Subscriber.estimate`).
* **Probes and padding.** When the allocation wants more than the estimate,
  the estimator asks for a probe, sent as padding-only RTX packets; on a
  policed path, where the media alone never shows that more would pass, it
  asks for padding up to the allocation's next step instead
  (:meth:`Subscribers.ramp`), which the layers' timer paces
  (:meth:`Subscribers.pad`). The packets come back as
  :class:`~sfu.rooms.actions.SendDatagram` actions, already protected.
* **What the allocation remembers** (:class:`Subscriber`): the tracks it
  paused and why, since when the estimate fell short of each, its last
  congestion downgrade, what each audio subscription sends (:class:`Sent`)
  and whether audio goes as RED.
"""

from __future__ import annotations

import math
from typing import Literal

from rtc.rtcp.feedback import Remb
from rtc.rtcp.transport_cc import TransportCc
from rtc.sdp.attributes import TRANSPORT_CC
from sfu.errors import SfuStateError
from sfu.feedback.estimator import SendSideEstimator
from sfu.layers.published import TICK, smoothed
from sfu.rooms.actions import SendDatagram
from sfu.rooms.records import Peer, Track

__all__ = [
    "AUDIO_HEADER",
    "START_ESTIMATE",
    "Reason",
    "Sent",
    "Subscriber",
    "Subscribers",
    "received_layer",
]

#: Where a subscriber's estimate starts (bits per second).
START_ESTIMATE = 1_000_000
#: Bytes an audio packet carries besides its payload, as the estimator counts
#: it: the RTP header with its extensions (audio level, transport-cc, time).
AUDIO_HEADER = 28

Reason = Literal["bandwidth", "hidden", "audio_only", "off"]
"""Why a subscriber's video is paused (``TrackPaused`` events)."""


class Sent:
    """What one subscription sent, measured tick to tick: bits per second
    with headers, as the subscriber's link carries it (0 before measured)."""

    __slots__ = ("at", "bitrate", "octets", "packets")

    def __init__(self, now: float, octets: int, packets: int) -> None:
        self.at, self.octets, self.packets = now, octets, packets
        self.bitrate = 0.0

    def update(self, now: float, octets: int, packets: int) -> float:
        dt = now - self.at
        if dt >= TICK / 2:
            size = octets - self.octets + (packets - self.packets) * AUDIO_HEADER
            self.bitrate = smoothed(self.bitrate, size * 8 / dt)
            self.at, self.octets, self.packets = now, octets, packets
        return self.bitrate


class Subscriber:
    """A subscriber transport's estimate and allocation state."""

    __slots__ = (
        "audio",
        "downgraded_at",
        "estimator",
        "padded_at",
        "padding",
        "paused",
        "red",
        "remb",
        "short_since",
        "wanted",
    )

    def __init__(self) -> None:
        self.estimator: SendSideEstimator | None = None
        self.remb: int | None = None
        self.paused: dict[str, Reason] = {}
        """Track id -> why it is paused now."""
        self.short_since: dict[str, float] = {}
        """Track id -> since when the estimate has not carried its lowest layer."""
        self.downgraded_at = -math.inf
        self.wanted = 0
        """What the last allocation would have sent with no bandwidth limit."""
        self.audio: dict[int, Sent] = {}
        """Audio track SSRC -> what its subscription has sent this subscriber."""
        self.red = True
        """Whether audio it negotiated RED for goes as RED (each allocation
        decides for the next: :mod:`sfu.layers.choice`)."""
        self.padding = 0.0
        """Bits per second of padding its estimator asked for (a ramp)."""
        self.padded_at = 0.0
        """When padding was last sent."""

    def estimate(self) -> float:
        """What its path carries, in bits per second: the estimator's
        estimate, else its REMB, else unlimited."""
        if self.estimator is not None:
            return float(self.estimator.estimate)
        if self.remb is not None:
            return float(self.remb)
        return math.inf


def received_layer(peer: Peer, track: Track) -> int | None:
    """The layer a subscriber gets now or is switching to (0 for a forwarded
    single-layer track), None when paused."""
    forwarder = peer.forwarder
    try:
        sub = forwarder.subscription_to(peer, track.ssrc)
    except SfuStateError:
        return None
    if sub.group is not None:
        return sub.target
    return None if sub.paused else 0


class Subscribers:
    """Every subscriber transport's :class:`Subscriber`, from its first
    allocation or feedback (see the module docstring)."""

    def __init__(self) -> None:
        self.by_peer: dict[Peer, Subscriber] = {}

    def of(self, peer: Peer) -> Subscriber:
        """A subscriber transport's state, made on first use."""
        state = self.by_peer.get(peer)
        if state is None:
            state = self.by_peer[peer] = Subscriber()
        # Only when the subscriber took transport-cc in its answer: one that
        # refused it sends no feedback, and an estimator that never hears
        # would hold it at START_ESTIMATE for good.
        if state.estimator is None and any(
            s.subscribed
            and TRANSPORT_CC in s.sub_extensions
            and "transport-cc" in {f.type for f in s.forwarded.codec.feedback}
            for s in peer.sections
        ):
            state.estimator = SendSideEstimator(start=START_ESTIMATE)
            sent_at, sizes = state.estimator.rings()
            peer.forwarder.set_send_rings(peer, sent_at, sizes)
        return state

    def feedback(self, peer: Peer, packet: TransportCc | Remb, now: float) -> None:
        """A subscriber's transport-cc feedback
        (draft-holmer-rmcat-transport-wide-cc-extensions-01) or REMB."""
        state = self.by_peer.get(peer)
        if state is None:
            state = self.of(peer)
        if isinstance(packet, TransportCc):
            if state.estimator is not None:
                state.estimator.on_feedback(packet, now)
        else:
            state.remb = packet.bitrate

    def path_changed(self, peer: Peer, now: float) -> None:
        """A subscriber's path moved: its estimator forgets the old path's losses."""
        state = self.by_peer.get(peer)
        if state is not None and state.estimator is not None:
            state.estimator.path_changed(now)

    def forget(self, peer: Peer) -> None:
        """A subscriber transport is down or gone."""
        self.by_peer.pop(peer, None)

    def forget_closed(self) -> None:
        """Forget the subscriber transports that closed."""
        for peer in [p for p in self.by_peer if p.transport.state.value == "closed"]:
            del self.by_peer[peer]

    # -- probes and padding -----------------------------------------------------------

    def ramp(
        self,
        peer: Peer,
        state: Subscriber,
        estimate: float,
        sending: float,
        step: float,
        now: float,
        *,
        resume: bool,
    ) -> list[SendDatagram]:
        """After an allocation that sends ``sending`` (bits per second) under
        ``estimate``: the padding its estimator asks for to carry ``step``
        (the least rate at which the allocation would send more; ``resume``:
        that brings back a paused video), started now and paced by
        :meth:`pad`; else the probe it asks for, sent at once."""
        out: list[SendDatagram] = []
        estimator = state.estimator
        padded, state.padding = state.padding, 0.0
        if estimator is None or state.wanted <= estimate:
            return out
        padding = estimator.padding(sending, step, now, resume=resume)
        if padding and not padded:
            # A ramp starts: its padding is counted from now (one going on
            # keeps its clock, or the time since its last send is lost).
            state.padded_at = now
        state.padding = padding
        if padding:
            return out
        probe = estimator.probe(int(state.wanted), now)
        if probe is not None:
            self._send_padding(peer, estimator, probe.cluster, probe.size, now, out)
        return out

    def pad(self, now: float) -> tuple[list[SendDatagram], bool]:
        """The padding ramping subscribers asked for, since they were last
        padded (a tick's worth at most); and whether any still ramps."""
        out: list[SendDatagram] = []
        ramping = False
        for peer, state in self.by_peer.items():
            if state.padding and state.estimator is not None:
                size = int(state.padding * min(now - state.padded_at, TICK) / 8)
                state.padded_at = now
                self._send_padding(peer, state.estimator, 0, size, now, out)
                ramping = True
        return out, ramping

    def _send_padding(
        self,
        peer: Peer,
        estimator: SendSideEstimator,
        cluster: int,
        size: int,
        now: float,
        out: list[SendDatagram],
    ) -> None:
        """Padding-only RTX packets of ``size`` octets in all, sent at once
        (for a probe cluster, the subscriber's arrival spacing measures the
        path), appended to ``out``."""
        protect, addr = peer.protect, peer.addr
        if protect is None or addr is None:
            return
        left = size
        while left > 0:
            built = peer.forwarder.padding(peer, min(left, 275), now)
            if built is None:
                return
            packet, tseq = built
            estimator.on_sent(tseq, len(packet), now, cluster)
            try:
                out.append(SendDatagram(protect(packet), addr))
            except Exception:
                peer.srtp_errors += 1
                return
            left -= len(packet)
