"""The bridge's user agent for calls from trunks (sip/calls/agent.py), fed
the transaction layer's events by hand with a fake clock: who may call, the
answer and its repeats, the dialog's requests, and ending a call."""

from __future__ import annotations

from sip.calls.agent import (
    ALLOW,
    CallAnswered,
    CallEnded,
    Digit,
    MediaChanged,
    MediaWanted,
    Trunk,
    UserAgent,
)
from sip.wire.fields import CSeq, NameAddr
from sip.wire.headers import Headers
from sip.wire.message import Request, Response, parse
from sip.wire.sdp import make_offer
from sip.wire.transactions import T1, NewRequest, ResponseReceived

TRUNK = Trunk("shifa", ["192.0.2.0/24"], language="ur", max_calls=2)
ADDR = ("192.0.2.7", 5060)
OFFER = make_offer("192.0.2.7", 6000, session_id=1, key=None).encode()


def request(
    method: str,
    call_id: str = "c1",
    *,
    to_tag: str | None = None,
    seq: int = 1,
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    headers = Headers()
    headers.add("Via", f"SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK{method}{seq}{call_id}")
    headers.add("Max-Forwards", "70")
    headers.add("From", "<sip:+923001234534@trunk.example>;tag=far")
    headers.add("To", "<sip:visits@bridge.example>" + (f";tag={to_tag}" if to_tag else ""))
    headers.add("Call-ID", call_id)
    headers.add("CSeq", str(CSeq(seq, method)))
    headers.add("Contact", "<sip:trunk@192.0.2.7:5060>")
    if content_type:
        headers.add("Content-Type", content_type)
    return Request(method, "sip:visits@bridge.example", headers, body)


def events(agent: UserAgent) -> list[object]:
    out = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def statuses(agent: UserAgent) -> list[int]:
    out = [r.status for _, r in agent.out.responses]
    agent.out.responses.clear()
    return out


def answered(agent: UserAgent, call_id: str = "c1") -> Response:
    agent.receive(NewRequest(request("INVITE", call_id, body=OFFER), ADDR), 0.0)
    (wanted,) = events(agent)
    assert wanted == MediaWanted(call_id, TRUNK, "+923001234534", srtp=False)
    agent.media_ready(call_id, "198.51.100.4", 40000, None, 0.1)
    ((_, ok),) = agent.out.responses
    agent.out.responses.clear()
    return ok


def test_a_trunks_call_is_answered_with_sdp_and_up_at_its_ack() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    ok = answered(agent)
    assert ok.status == 200 and ok.headers.get("Content-Type") == "application/sdp"
    assert ok.headers.get("Contact") == "<sip:bridge@198.51.100.4:5060>"
    assert b"m=audio 40000 RTP/AVP 9 101" in ok.body
    tag = NameAddr.parse(ok.headers.get("To") or "").tag
    assert tag
    # Repeated on T1, 2T1, 4T1... until the ACK (RFC 3261 13.3.1.4).
    assert agent.get_timer() == 0.1 + T1
    agent.handle_timer(0.1 + T1)
    ((data, addr, _),) = agent.out.raw
    assert addr == ADDR and parse(data) == ok
    assert agent.get_timer() == 0.1 + T1 + 2 * T1
    agent.receive(NewRequest(request("ACK", to_tag=tag), ADDR), 2.0)
    (up,) = events(agent)
    assert isinstance(up, CallAnswered) and up.media.codec == "G722"
    assert agent.get_timer() is None


def test_no_ack_ends_the_call_with_a_bye() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    answered(agent)
    now = 0.0
    while (due := agent.get_timer()) is not None:
        now = due
        agent.handle_timer(now)
    assert now == 0.1 + 64 * T1
    ((bye, addr, _),) = agent.out.requests
    assert bye.method == "BYE" and bye.uri == "sip:trunk@192.0.2.7:5060" and addr == ADDR
    assert events(agent) == [CallEnded("c1", "no ack")]


def test_a_call_from_no_trunk_gets_403_and_a_trunk_at_its_limit_503() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    agent.receive(NewRequest(request("INVITE", "x", body=OFFER), ("203.0.113.9", 5060)), 0.0)
    assert statuses(agent) == [403] and agent.unauthenticated == 1 and events(agent) == []
    answered(agent, "a")
    answered(agent, "b")
    agent.receive(NewRequest(request("INVITE", "c", body=OFFER), ADDR), 1.0)
    ((_, busy),) = agent.out.responses
    assert busy.status == 503 and busy.headers.get("Retry-After") == "30"
    assert agent.over_limit == 1


def test_an_offer_without_a_common_codec_gets_488() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    g729 = OFFER.replace(b"9 0 8 101", b"18 101").replace(b"a=rtpmap:9 G722/8000", b"")
    g729 = g729.replace(b"a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000", b"a=rtpmap:18 G729/8000")
    agent.receive(NewRequest(request("INVITE", body=g729), ADDR), 0.0)
    events(agent)
    agent.media_ready("c1", "198.51.100.4", 40000, None, 0.0)
    assert statuses(agent) == [488]
    assert events(agent) == [CallEnded("c1", "no common media")] and agent.dialogs == {}


def test_in_the_dialog_info_digits_hold_and_bye() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    tag = NameAddr.parse(answered(agent).headers.get("To") or "").tag
    agent.receive(NewRequest(request("ACK", to_tag=tag), ADDR), 1.0)
    events(agent)
    relay = request("INFO", to_tag=tag, seq=2, body=b"Signal=5\r\nDuration=160\r\n",
                    content_type="application/dtmf-relay")  # fmt: skip
    agent.receive(NewRequest(relay, ADDR), 2.0)
    plain = request("INFO", to_tag=tag, seq=3, body=b"#", content_type="application/dtmf")
    agent.receive(NewRequest(plain, ADDR), 2.1)
    other = request("INFO", to_tag=tag, seq=4, body=b"x", content_type="text/plain")
    agent.receive(NewRequest(other, ADDR), 2.2)
    assert statuses(agent) == [200, 200, 415]
    assert events(agent) == [Digit("c1", "5"), Digit("c1", "#")]
    held = OFFER.replace(b"a=sendrecv", b"a=sendonly")
    agent.receive(NewRequest(request("INVITE", to_tag=tag, seq=5, body=held), ADDR), 3.0)
    ((_, ok),) = agent.out.responses
    agent.out.responses.clear()
    assert ok.status == 200 and b"a=recvonly" in ok.body
    (change,) = events(agent)
    assert isinstance(change, MediaChanged) and change.media.on_hold
    agent.receive(NewRequest(request("BYE", to_tag=tag, seq=6), ADDR), 4.0)
    assert statuses(agent) == [200] and events(agent) == [CallEnded("c1", "hangup")]
    # Anything more for that dialog is for a dialog no longer known.
    agent.receive(NewRequest(request("BYE", to_tag=tag, seq=7), ADDR), 5.0)
    assert statuses(agent) == [481]


def test_cancel_before_the_answer_ends_the_call_with_487() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    agent.receive(NewRequest(request("INVITE", body=OFFER), ADDR), 0.0)
    events(agent)
    agent.receive(NewRequest(request("CANCEL"), ADDR), 0.5)
    assert statuses(agent) == [200, 487] and events(agent) == [CallEnded("c1", "cancelled")]


def test_our_hang_up_sends_bye_and_ends_at_its_answer() -> None:
    agent = UserAgent([TRUNK], "sip:bridge@198.51.100.4:5060")
    tag = NameAddr.parse(answered(agent).headers.get("To") or "").tag
    agent.receive(NewRequest(request("ACK", to_tag=tag), ADDR), 1.0)
    events(agent)
    agent.hang_up("c1", 9.0)
    ((bye, _, _),) = agent.out.requests
    assert NameAddr.parse(bye.headers.get("From") or "").tag == tag
    assert NameAddr.parse(bye.headers.get("To") or "").tag == "far"
    assert CSeq.parse(bye.headers.get("CSeq") or "").method == "BYE"
    ok = Response(200, "OK", bye.headers.copy())
    agent.receive(ResponseReceived(bye, ok), 9.2)
    assert events(agent) == [CallEnded("c1", "ended")]


def test_options_is_answered_with_what_the_bridge_takes() -> None:
    agent = UserAgent([], "sip:bridge@198.51.100.4:5060")
    agent.receive(NewRequest(request("OPTIONS"), ("203.0.113.9", 5060)), 0.0)
    ((_, ok),) = agent.out.responses
    assert ok.status == 200 and ok.headers.get("Allow") == ALLOW
