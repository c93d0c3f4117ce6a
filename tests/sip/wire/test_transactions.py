"""SIP transactions (sip/wire/transactions.py) with a fake clock and no
sockets: what a trunk's retransmissions get, the timers of RFC 3261 section
17 over UDP and over TCP, and the user agent's view."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sip.wire.fields import CSeq
from sip.wire.headers import Headers
from sip.wire.message import Request, Response, parse, response_to
from sip.wire.transactions import (
    T1,
    T2,
    Answered,
    ClientTimedOut,
    NewRequest,
    ResponseReceived,
    Transactions,
    new_branch,
)

TRUNK = ("192.0.2.7", 5060)


def request(method: str, branch: str, seq: int = 1, body: bytes = b"") -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 192.0.2.7:5060;branch={branch}")
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:+923001234567@trunk.example>;tag=abc")
    headers.add("To", "<sip:clinic@bridge.example>")
    headers.add("Call-ID", "call-1@192.0.2.7")
    headers.add("CSeq", str(CSeq(seq, method)))
    return Request(method, "sip:clinic@bridge.example", headers, body)


def sent(layer: Transactions) -> list[Request | Response]:
    return [parse(data) for data, _ in layer.datagrams_to_send()]


def events(layer: Transactions) -> list[object]:
    out = []
    while (event := layer.next_event()) is not None:
        out.append(event)
    return out


def test_an_invite_gets_100_at_once_and_its_retransmission_the_last_response() -> None:
    layer = Transactions()
    invite = request("INVITE", "z9hG4bKinv1")
    layer.receive(invite, TRUNK, False, 0.0)
    assert events(layer) == [NewRequest(invite, TRUNK)]
    (trying,) = sent(layer)
    assert isinstance(trying, Response) and trying.status == 100
    layer.receive(invite, TRUNK, False, 0.4)  # the trunk's timer A
    assert events(layer) == [] and [m.status for m in sent(layer)] == [100]  # type: ignore[union-attr]
    layer.respond(invite, response_to(invite, 180, to_tag="t1"), 0.5)
    layer.receive(invite, TRUNK, False, 1.0)
    assert [m.status for m in sent(layer)] == [180, 180]  # type: ignore[union-attr]
    assert layer.retransmissions == 2


def test_a_2xx_leaves_the_transaction_for_the_user_agent_to_repeat() -> None:
    layer = Transactions()
    invite = request("INVITE", "z9hG4bKinv2")
    layer.receive(invite, TRUNK, False, 0.0)
    events(layer), sent(layer)
    ok = response_to(invite, 200, to_tag="t1")
    layer.respond(invite, ok, 0.2)
    assert [m.status for m in sent(layer)] == [200]  # type: ignore[union-attr]
    assert events(layer) == [Answered(invite, ok)]
    # Accepted (RFC 6026 section 7.1): the trunk's INVITE again, sent before
    # our 200 reached it, is absorbed. Answering it with the last response
    # the layer holds, or a 100 Trying as a new INVITE, would reach the
    # trunk after its 200: SIPp aborts the call on that (ci129).
    layer.receive(invite, TRUNK, False, 0.5)
    assert sent(layer) == [] and events(layer) == []
    assert layer.retransmissions == 1
    # The 2xx's ACK is a new request to the layer: the dialog's to take.
    ack = request("ACK", "z9hG4bKack2")
    layer.receive(ack, TRUNK, False, 0.6)
    assert events(layer) == [NewRequest(ack, TRUNK)]
    # Timer L ends it.
    assert layer.get_timer() == 0.2 + 64 * T1
    layer.handle_timer(0.2 + 64 * T1)
    assert layer.open == 0 and sent(layer) == [] and events(layer) == []


def test_a_failure_is_repeated_on_timer_g_until_the_ack_then_absorbed() -> None:
    layer = Transactions()
    invite = request("INVITE", "z9hG4bKinv3")
    layer.receive(invite, TRUNK, False, 0.0)
    events(layer), sent(layer)
    layer.respond(invite, response_to(invite, 486, to_tag="t1"), 1.0)
    assert [m.status for m in sent(layer)] == [486]  # type: ignore[union-attr]
    # Timer G: T1, 2T1, 4T1, ... capped at T2.
    at, gaps = 1.0, []
    for _ in range(5):
        due = layer.get_timer()
        assert due is not None
        gaps.append(round(due - at, 3))
        at = due
        layer.handle_timer(at)
        assert [m.status for m in sent(layer)] == [486]  # type: ignore[union-attr]
    assert gaps == [T1, 2 * T1, 4 * T1, T2, T2]
    ack = request("ACK", "z9hG4bKinv3")
    layer.receive(ack, TRUNK, False, at + 0.1)
    assert events(layer) == [] and sent(layer) == []
    layer.receive(ack, TRUNK, False, at + 0.2)  # absorbed in confirmed
    assert events(layer) == []
    layer.handle_timer(at + 10)
    assert layer.get_timer() is None


def test_a_failure_with_no_ack_gives_up_at_timer_h() -> None:
    layer = Transactions()
    invite = request("INVITE", "z9hG4bKinv4")
    layer.receive(invite, TRUNK, False, 0.0)
    layer.respond(invite, response_to(invite, 403), 0.0)
    sent(layer)
    now = 0.0
    while (due := layer.get_timer()) is not None:
        now = due
        layer.handle_timer(now)
        sent(layer)
    assert now == 64 * T1


def test_over_tcp_nothing_is_retransmitted() -> None:
    layer = Transactions()
    invite = request("INVITE", "z9hG4bKinv5")
    layer.receive(invite, TRUNK, True, 0.0)
    layer.respond(invite, response_to(invite, 404), 0.0)
    assert [m.status for m in sent(layer)] == [100, 404]  # type: ignore[union-attr]
    layer.handle_timer(63 * T1)
    assert sent(layer) == []


def test_a_bye_is_answered_once_and_its_retransmissions_get_the_same_answer() -> None:
    layer = Transactions()
    bye = request("BYE", "z9hG4bKbye1", seq=2)
    layer.receive(bye, TRUNK, False, 0.0)
    assert events(layer) == [NewRequest(bye, TRUNK)] and sent(layer) == []
    layer.respond(bye, response_to(bye, 200), 0.1)
    layer.receive(bye, TRUNK, False, 0.6)
    assert [m.status for m in sent(layer)] == [200, 200]  # type: ignore[union-attr]
    assert events(layer) == []
    layer.handle_timer(0.1 + 64 * T1)  # timer J
    layer.receive(bye, TRUNK, False, 40.0)  # a new transaction now
    assert events(layer) == [NewRequest(bye, TRUNK)]


def test_dial_out_invite_is_retransmitted_until_ringing_and_a_busy_is_acked() -> None:
    layer = Transactions()
    invite = request("INVITE", new_branch())
    layer.request(invite, TRUNK, False, 0.0)
    assert [m.method for m in sent(layer)] == ["INVITE"]  # type: ignore[union-attr]
    layer.handle_timer(T1)
    layer.handle_timer(3 * T1)
    assert [m.method for m in sent(layer)] == ["INVITE", "INVITE"]  # type: ignore[union-attr]
    ringing = response_to(invite, 180, to_tag="far")
    layer.receive(ringing, TRUNK, False, 2.0)
    assert events(layer) == [ResponseReceived(invite, ringing)]
    assert layer.get_timer() is None  # rings as long as the user agent lets it
    busy = response_to(invite, 486, to_tag="far")
    layer.receive(busy, TRUNK, False, 9.0)
    assert events(layer) == [ResponseReceived(invite, busy)]
    (ack,) = sent(layer)
    assert isinstance(ack, Request) and ack.method == "ACK"
    assert ack.headers.get("To") == busy.headers.get("To")
    assert ack.headers.get("Via") == invite.headers.get("Via")
    assert CSeq.parse(ack.headers.get("CSeq") or "") == CSeq(1, "ACK")
    layer.receive(busy, TRUNK, False, 9.5)  # retransmitted: ACK again, not told twice
    assert events(layer) == [] and [m.method for m in sent(layer)] == ["ACK"]  # type: ignore[union-attr]


def test_a_request_never_answered_times_out_for_the_user_agent() -> None:
    layer = Transactions()
    invite = request("INVITE", new_branch())
    layer.request(invite, TRUNK, False, 0.0)
    now = 0.0
    while (due := layer.get_timer()) is not None:
        now = due
        layer.handle_timer(now)
    assert now == 64 * T1
    assert events(layer) == [ClientTimedOut(invite)]
    # Timer A doubled without a cap: 7 sends in 32 s.
    assert len(sent(layer)) == 7


def test_a_stray_response_is_dropped() -> None:
    layer = Transactions()
    stray = response_to(request("INVITE", "z9hG4bKnone"), 200)
    layer.receive(stray, TRUNK, False, 0.0)
    assert events(layer) == [] and sent(layer) == [] and layer.retransmissions == 1


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["INVITE", "ACK", "BYE", "OPTIONS", "INFO", "CANCEL"]),
            st.sampled_from(["z9hG4bKa", "z9hG4bKb", "z9hG4bKc", "old-2543"]),
            st.booleans(),
            st.floats(0, 5),
        ),
        max_size=30,
    )
)
def test_any_mix_of_requests_answered_or_not_keeps_the_layer_consistent(
    steps: list[tuple[str, str, bool, float]],
) -> None:
    layer = Transactions()
    now = 0.0
    for method, branch, answer, wait in steps:
        now += wait
        layer.handle_timer(now)
        req = request(method, branch)
        layer.receive(req, TRUNK, False, now)
        for event in events(layer):
            if answer and isinstance(event, NewRequest) and event.request.method != "ACK":
                status = 486 if method == "INVITE" else 200
                layer.respond(event.request, response_to(event.request, status), now)
        sent(layer)
    # Left alone, every transaction ends, answered or not: nothing leaks.
    while (due := layer.get_timer()) is not None:
        assert due >= now
        now = due
        layer.handle_timer(now)
    assert layer.open == 0
