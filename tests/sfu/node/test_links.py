"""Two workers' relay-link cores, joined by an in-memory wire: no socket, no loop.

Each core queues the datagrams it wants sent (:class:`sfu.rooms.actions.SendDatagram`);
the test carries them to the other core as :class:`~sfu.rooms.inputs.LinkDtls`,
as each worker would after its socket received them.
"""

from __future__ import annotations

import datetime

import pytest

from rtc.dtls import DtlsCertificate
from sfu.control.messages import RelayPeer, RelayState
from sfu.negotiation.negotiator import Negotiator
from sfu.node.links import Links
from sfu.rooms.actions import Action, Arm, Emit, SendDatagram
from sfu.rooms.inputs import CloseRoom, LinkDtls, PublishOffer, RelayReceive, RelaySend
from tests.sfu.negotiation.test_negotiation import NOW, negotiator, offer

A = ("127.0.0.1", 40001)
B = ("127.0.0.1", 40002)


def links(
    worker_id: str, certificate: DtlsCertificate, address: tuple[str, int]
) -> tuple[Negotiator, Links]:
    """A worker's links core, over the transports core of its negotiator."""
    core = negotiator(certificate, address, worker_id)
    return core, Links(core.settings, core.tables, core.transports)


def peer(core: Links, address: tuple[str, int]) -> RelayPeer:
    worker, fingerprint = core.relay_identity()
    return RelayPeer(worker, address[0], address[1], fingerprint)


def carry(actions: list[Action], to: Links, source: tuple[str, int], now: float) -> list[Action]:
    """Deliver ``actions``' datagrams to ``to`` as from ``source``; the others stay."""
    rest = []
    for action in actions:
        if isinstance(action, SendDatagram):
            to.receive(LinkDtls(to.by_addr[source], action.data), now)
        else:
            rest.append(action)
    return rest


@pytest.fixture(scope="module")
def certificates() -> tuple[DtlsCertificate, DtlsCertificate]:
    at = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    return DtlsCertificate.generate(at), DtlsCertificate.generate(at)


def test_a_link_comes_up_over_an_in_memory_wire_and_closes_with_its_room(
    certificates: tuple[DtlsCertificate, DtlsCertificate],
) -> None:
    negotiator_a, a = links("worker-a", certificates[0], A)
    _, b = links("worker-b", certificates[1], B)
    track = negotiator_a.receive(
        PublishOffer("room", "alice", offer(certificates[0]), {}), NOW
    ).added[0]
    negotiator_a.take_actions()
    b.receive(RelayReceive("room", peer(a, A), []), NOW)  # nothing yet: no link
    assert b.link_of("worker-a") is None
    (relayed,) = a.receive(RelaySend("room", peer(b, B), [track.track_id]), NOW)
    b.receive(RelayReceive("room", peer(a, A), [relayed]), NOW)
    events: list[object] = []
    now = NOW
    for _ in range(10):  # a DTLS handshake is a few flights each way
        now += 0.01
        left = carry(a.take_actions(), b, A, now) + carry(b.take_actions(), a, B, now)
        events += [x.event for x in left if isinstance(x, Emit)]
        assert all(x.when >= NOW for x in left if isinstance(x, Arm))
    assert {(e.peer_worker, e.state) for e in events if isinstance(e, RelayState)} == {
        ("worker-a", "connected"),
        ("worker-b", "connected"),
    }
    link_a, link_b = a.link_of("worker-b"), b.link_of("worker-a")
    assert link_a is not None and link_b is not None
    assert link_a.protect is not None and link_b.unprotect is not None
    assert set(link_b.incoming) == {relayed.ssrc}
    # The room closes on the sending side: the link is no longer used and closes.
    close = CloseRoom("room", "room closed")
    a.transports.receive(close, now)
    a.receive(close, now)
    closed = [
        x.event for x in a.transports.take_actions() + a.take_actions() if isinstance(x, Emit)
    ]
    assert RelayState("worker-b", "closed", "no room uses the link") in closed
    assert a.link_of("worker-b") is None and a.tables.rooms == {}
