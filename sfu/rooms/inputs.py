"""What the media worker's cores take: one record per kind of input, one verb to take it.

Each sans-I/O core of :class:`sfu.node.worker.MediaWorker`
(:class:`sfu.negotiation.negotiator.Negotiator`,
:class:`sfu.negotiation.transports.Transports`, :class:`sfu.node.links.Links`,
:class:`sfu.layers.choice.Layers`) takes what reaches it
from outside through one verb, ``core.receive(input, now)``, as aioquic's
connection takes its datagrams (``receive_datagram(data, addr, now)``): the
:class:`sfu.control.messages.MediaControl` calls signalling makes (:class:`PublishOffer`,
:class:`SetSubscriptions`, ...) and the control datagrams the worker's socket reads
for it (:class:`PeerDatagram`, :class:`LinkRtcp`, ...). ``receive`` finds the handler in the
core's table (:attr:`Core.handlers`), keyed on the record's type, as h11 and
aioquic dispatch theirs; a record the core does not take raises
:class:`~sfu.errors.UnknownInput`. What an input wants done the core queues
as :mod:`sfu.rooms.actions` for the worker to take; what the caller needs back
(the publish answer, the subscribe offer, the relayed tracks) ``receive``
returns, typed by the record: a :class:`PublishOffer` is an ``Input[PublishResult]``.

Beside ``receive`` a core keeps its timer pair (``due()`` and
``handle_timer(now)``, the layers' ``tick``), and a core calls another by its
methods (composition: the negotiator and the links call the transports, the
transports call the layers): those are no input from outside, and what the
called core wants done it queues as its own, which the worker takes from it
(:mod:`sfu.rooms.actions`).

A forwarded RTP packet is never a record: the hot path allocates nothing per
packet. Records are for what comes a few times a second at most (a call from
signalling, a STUN check, a DTLS flight, an RTCP compound).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

from rtc.ice import Address
from rtc.rtcp.compound import RtcpPacket
from rtc.rtcp.feedback import Remb
from rtc.rtcp.transport_cc import TransportCc
from sfu.control.messages import (
    PublishResult,
    RelayedTrack,
    RelayPeer,
    Restart,
    Source,
    TrackDisplay,
)
from sfu.errors import UnknownInput
from sfu.rooms.actions import ActionQueue
from sfu.rooms.records import Link, MediaRoom, Peer

__all__ = [
    "CloseLinks",
    "CloseRoom",
    "Core",
    "EarlyDtls",
    "EndTrack",
    "Input",
    "LayersInput",
    "LeaveRoom",
    "LegsRtcp",
    "LinkDtls",
    "LinkRtcp",
    "LinksInput",
    "NegotiatorInput",
    "PathMoved",
    "PeerDatagram",
    "PublishOffer",
    "RelayReceive",
    "RelaySend",
    "SetAudioOnly",
    "SetMuted",
    "SetSubscriptions",
    "SetView",
    "SpeakerChosen",
    "SubscribeAnswer",
    "SubscriberFeedback",
    "TransportsInput",
]

R = TypeVar("R")


class Input(Generic[R]):
    """An input to a worker core whose ``receive`` gives back an ``R``."""

    __slots__ = ()


# --- MediaControl calls -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishOffer(Input[PublishResult]):
    """A participant's publish offer (:meth:`sfu.control.messages.MediaControl.publish`);
    ``receive``, on a single connection, the track ids it receives."""

    room: str
    participant: str
    offer: str
    sources: Mapping[str, Source]
    receive: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class SetSubscriptions(Input[str | None]):
    """The tracks a participant receives (:meth:`sfu.control.messages.MediaControl.subscribe`);
    ``receive`` gives back the new offer, or None when nothing changed."""

    room: str
    participant: str
    track_ids: Sequence[str]
    restart: Restart | None = None


@dataclass(frozen=True, slots=True)
class SubscribeAnswer(Input[None]):
    """A subscriber's answer to the last subscribe offer."""

    room: str
    participant: str
    sdp: str


@dataclass(frozen=True, slots=True)
class SetMuted(Input[None]):
    """Stop or resume forwarding a track to everyone."""

    room: str
    track_id: str
    muted: bool


@dataclass(frozen=True, slots=True)
class EndTrack(Input[None]):
    """A publisher's track ends."""

    room: str
    participant: str
    track_id: str


@dataclass(frozen=True, slots=True)
class LeaveRoom(Input[None]):
    """A participant leaves the room."""

    room: str
    participant: str


@dataclass(frozen=True, slots=True)
class CloseRoom(Input[None]):
    """Everyone leaves the room and it is forgotten; ``reason`` goes to each transport."""

    room: str
    reason: str


# --- what the worker's socket and timers bring ------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerDatagram(Input[None]):
    """A STUN or DTLS datagram for a peer's transport (RFC 7983 section 7)."""

    peer: Peer
    data: bytes
    addr: Address


@dataclass(frozen=True, slots=True)
class PathMoved(Input[None]):
    """SRTP or SRTCP that authenticated under ``peer``'s keys came from ``addr``,
    not its selected address: a NAT rebinding or a change of pairs (``how``)."""

    peer: Peer
    addr: Address
    how: str


@dataclass(frozen=True, slots=True)
class SpeakerChosen(Input[None]):
    """A room's speaker detector chose ``speaker`` (None: nobody speaks)."""

    room: MediaRoom
    speaker: str | None


@dataclass(frozen=True, slots=True)
class RelaySend(Input[list[RelayedTrack]]):
    """The local tracks of a room sent to another worker
    (:meth:`sfu.control.messages.MediaControl.relay_send`); ``receive`` gives back
    each as it goes on the link."""

    room: str
    peer: RelayPeer
    track_ids: Sequence[str]


@dataclass(frozen=True, slots=True)
class RelayReceive(Input[None]):
    """The remote tracks of a room taken from another worker
    (:meth:`sfu.control.messages.MediaControl.relay_receive`)."""

    room: str
    peer: RelayPeer
    tracks: Sequence[RelayedTrack]


@dataclass(frozen=True, slots=True)
class CloseLinks(Input[None]):
    """The worker closes: every relay link closes."""

    reason: str


@dataclass(frozen=True, slots=True)
class LinkDtls(Input[None]):
    """A DTLS datagram from a relay link's peer address (RFC 7983 section 7)."""

    link: Link
    data: bytes


LegsRtcp = list[tuple[Peer, list[RtcpPacket]]]
"""RTCP packets by the leg each is about."""


@dataclass(frozen=True, slots=True)
class LinkRtcp(Input[LegsRtcp]):
    """SRTCP from a relay link's peer address; ``receive`` gives back its
    packets by the leg each is about (one SRTCP session carries every room)."""

    link: Link
    data: bytes


@dataclass(frozen=True, slots=True)
class EarlyDtls(Input[None]):
    """DTLS from an address no transport or link knows: perhaps a link's
    first flight, sent before this worker heard of the link."""

    data: bytes
    addr: Address


@dataclass(frozen=True, slots=True)
class SetView(Input[None]):
    """How a subscriber shows a video track
    (:meth:`sfu.control.messages.MediaControl.set_view`)."""

    room: str
    participant: str
    track_id: str
    view: TrackDisplay


@dataclass(frozen=True, slots=True)
class SetAudioOnly(Input[None]):
    """A subscriber receives no video while ``enabled``."""

    room: str
    participant: str
    enabled: bool


@dataclass(frozen=True, slots=True)
class SubscriberFeedback(Input[None]):
    """A subscriber's bandwidth feedback: transport-cc
    (draft-holmer-rmcat-transport-wide-cc-extensions-01) or REMB
    (draft-alvestrand-rmcat-remb-03)."""

    peer: Peer
    packet: TransportCc | Remb


NegotiatorInput = PublishOffer | SetSubscriptions | SubscribeAnswer | SetMuted | EndTrack
"""What :class:`sfu.negotiation.negotiator.Negotiator` takes."""

TransportsInput = LeaveRoom | CloseRoom | PeerDatagram | PathMoved | SpeakerChosen
"""What :class:`sfu.negotiation.transports.Transports` takes."""

LinksInput = RelaySend | RelayReceive | CloseRoom | CloseLinks | LinkDtls | LinkRtcp | EarlyDtls
"""What :class:`sfu.node.links.Links` takes."""

LayersInput = SetView | SetAudioOnly | SubscriberFeedback
"""What :class:`sfu.layers.choice.Layers` takes."""


# --- the verb ---------------------------------------------------------------------------

Handlers = Mapping[type[Input[Any]], Callable[[Any, Any, float], Any]]
"""An input's type -> the core's function that takes it, ``(core, input, now)``."""


class Core(ActionQueue):
    """A worker core: :meth:`receive` for every input, :meth:`take_actions` after it.

    A subclass fills :attr:`handlers` with its own functions, one per type of
    input it takes."""

    handlers: ClassVar[Handlers] = {}

    def receive(self, input: Input[R], now: float) -> R:
        """Take one input at ``now``; what it wants done is queued for :meth:`take_actions`."""
        handler = self.handlers.get(type(input))
        if handler is None:
            raise UnknownInput(f"{type(self).__name__} takes no {type(input).__name__}")
        return cast(R, handler(self, input, now))
