"""What the media worker's cores ask of it: send, flush RTCP, re-arm a timer, tell listeners.

The worker's cores (:class:`sfu.negotiation.negotiator.Negotiator`,
:class:`sfu.negotiation.transports.Transports`, :class:`sfu.node.links.Links`,
:class:`sfu.layers.choice.Layers`) never send, arm a timer or call a listener
themselves: each input (``receive``, :mod:`sfu.rooms.inputs`) and each timer
queues what it wants done, in the order it wants it, and
:class:`sfu.node.worker.MediaWorker` takes them (``take_actions()``, as aioquic's
``datagrams_to_send()``) after every call and carries them out.

A core never takes another core's actions, not even those of a core it
called: each queues its own, and after an input the worker takes every
core's queue (:func:`carried_out`), the callers' before the called ones'
(the negotiator's and the links', then the transports', then the layers').
Inside a queue the order is the core's; between queues it is that one, and
it keeps what the order between cores says: a transport's DTLS flight and
its ``connected`` event go before the events and probes the layers queue as
its subscriptions start, as they were queued. What else moves against the
order the calls were made in does the same wherever it stands: every action
is carried out once the whole input was taken, against the state it left,
so a flush of a room's RTCP sends whatever is pending then, :class:`Arm`
only ever moves the timer earlier, and :class:`Rearm` and :class:`ArmRtcp`
read every core's deadline when carried out; the caller's own sends and
events that come after the call (a link's handshake, its ``RelayState``,
another transport's flight in the same timer round) are for other peers than
the called core's (a subscriber's BYE, a room's active speaker).

Control plane, RTCP and timer work only: a forwarded RTP packet never becomes
an action (the worker's hot path sends those itself, with no allocation per
packet).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rtc.ice import Address
from sfu.control.messages import MediaEvent
from sfu.rooms.records import MediaRoom, Peer

__all__ = [
    "Action",
    "ActionQueue",
    "Arm",
    "ArmRtcp",
    "Emit",
    "FlushRtcp",
    "Rearm",
    "SendDatagram",
    "SendRtcp",
    "carried_out",
]


@dataclass(frozen=True, slots=True)
class SendDatagram:
    """Send one datagram as it is (DTLS, STUN, an already protected packet)."""

    data: bytes
    addr: Address


@dataclass(frozen=True, slots=True)
class SendRtcp:
    """Protect one compound RTCP packet with ``peer``'s SRTCP context and send it
    to its selected address (RFC 3711 3.4); counted unsent if it has none."""

    peer: Peer
    compound: bytes


@dataclass(frozen=True, slots=True)
class FlushRtcp:
    """Send the feedback a room's forwarder has pending (NACK, PLI, FIR)."""

    room: MediaRoom


@dataclass(frozen=True, slots=True)
class Emit:
    """Hand a :class:`~sfu.control.messages.MediaEvent` to the worker's listeners."""

    event: MediaEvent


@dataclass(frozen=True, slots=True)
class Arm:
    """Make sure the worker's timer fires by ``when`` (it looks at every core then)."""

    when: float


@dataclass(frozen=True, slots=True)
class ArmRtcp:
    """Make sure the periodic RTCP timer (reports, bandwidth feedback, the
    layers' tick) fires by its cores' next deadline."""


@dataclass(frozen=True, slots=True)
class Rearm:
    """Some deadline may have moved later or gone: re-arm the worker's timer
    at the earliest deadline of every core."""


Action = SendDatagram | SendRtcp | FlushRtcp | Emit | Arm | ArmRtcp | Rearm


class ActionQueue:
    """What a core's calls want done, queued in order until the worker takes
    them (:meth:`take_actions`); the cores queue with ``self._out.append``."""

    def __init__(self) -> None:
        self._out: list[Action] = []

    def take_actions(self) -> list[Action]:
        """What the calls since the last take want done, in order."""
        out, self._out = self._out, []
        return out


@contextlib.contextmanager
def carried_out(
    queues: Iterable[ActionQueue], act: Callable[[list[Action]], None]
) -> Iterator[None]:
    """Hand ``act`` what the block's calls queued on each of ``queues``, one
    queue after the other in their order, even if a call raised: a refused
    request may already have queued work (a transport to close, an event)."""
    try:
        yield
    finally:
        for queue in queues:
            act(queue.take_actions())
