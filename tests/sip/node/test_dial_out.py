"""Calls the bridge places (sip/calls/agent.py's dial-out, through the desk
and the endpoint), with SIPp as the trunk's far end (a UAS): one that rings
and answers, one that is busy, one that rings and never answers until the
bridge's ring timeout cancels it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.calls.agent import (
    CallAnswered,
    CallEnded,
    CallEvent,
    DialFailed,
    Ringing,
    Trunk,
    UserAgent,
)
from sip.node.desk import CallDesk
from sip.transport.endpoint import SipEndpoint
from tests.sip.phone import OK_TO_IT, Sipp
from tests.sip.transport.test_endpoint import HOST

TRUNK = Trunk("clinic", ["127.0.0.0/8"])

_REPLY = """[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:[local_ip]:[local_port];transport=[transport]>"""

RINGING = f"""  <send><![CDATA[
SIP/2.0 180 Ringing
{_REPLY}
Content-Length: 0

]]></send>
"""

ANSWER_XML = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="answers">
  <recv request="INVITE"/>
{RINGING}  <send retrans="500"><![CDATA[
SIP/2.0 200 OK
{_REPLY}
Content-Type: application/sdp
Content-Length: [len]

v=0
o=phone 1 1 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=ptime:20
]]></send>
  <recv request="ACK"/>
  <recv request="BYE"/>
{OK_TO_IT}</scenario>
"""

BUSY_XML = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="busy">
  <recv request="INVITE"/>
  <send><![CDATA[
SIP/2.0 486 Busy Here
{_REPLY}
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"""

NO_ANSWER_XML = f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="rings">
  <recv request="INVITE"/>
{RINGING}  <recv request="CANCEL"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
  <send><![CDATA[
SIP/2.0 487 Request Terminated
[last_Via:]
[last_From:]
[last_To:];tag=[pid]SIPpTag01[call_number]
[last_Call-ID:]
CSeq: 1 INVITE
Content-Length: 0

]]></send>
  <recv request="ACK"/>
</scenario>
"""


class Placed:
    """The desk's events for calls the test places; hangs up an answered one."""

    def __init__(self) -> None:
        self.events: list[CallEvent] = []
        self.desk: CallDesk | None = None
        self.done = asyncio.Event()

    def on_call(self, event: CallEvent) -> None:
        self.events.append(event)
        assert self.desk is not None
        if isinstance(event, CallAnswered):
            self.desk.hang_up(event.call_id)
        elif isinstance(event, CallEnded | DialFailed):
            self.done.set()


@pytest.fixture
async def placed() -> AsyncIterator[tuple[Placed, SipEndpoint]]:
    agent = UserAgent([TRUNK], "sip:bridge@127.0.0.1")
    calls = Placed()
    desk = calls.desk = CallDesk(agent, calls.on_call)
    endpoint = SipEndpoint(desk, HOST, 0)
    desk.attach(endpoint)
    await endpoint.start()
    agent.contact = f"sip:bridge@{HOST}:{endpoint.port}"
    try:
        yield calls, endpoint
    finally:
        desk.close()
        await endpoint.close()


async def dial_sipp(
    tmp_path: Path, scenario: str, calls: Placed, *, ring_timeout: float = 20.0
) -> str:
    """SIPp as the far end on a port of its own; the bridge dials it and the
    call runs its course. Returns the Call-ID; fails on SIPp's errors."""
    phone = Sipp.callee(tmp_path, scenario)
    media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    media.bind((HOST, 0))
    await phone.start()
    try:
        assert calls.desk is not None
        # Should SIPp not listen yet, our INVITE's retransmission (T1) finds it.
        call_id = calls.desk.dial(
            TRUNK, f"sip:+923001234534@{HOST}:{phone.listen}", (HOST, phone.listen),
            host=HOST, port=media.getsockname()[1], key=None, ring_timeout=ring_timeout,
        )  # fmt: skip
        assert await phone.finished(30) == 0, phone.errors()
        await asyncio.wait_for(calls.done.wait(), 5)
    finally:
        media.close()
        await phone.stop()
    return call_id


async def test_a_call_placed_rings_is_answered_and_ended_by_our_bye(
    tmp_path: Path, placed: tuple[Placed, SipEndpoint]
) -> None:
    calls, endpoint = placed
    call_id = await dial_sipp(tmp_path, ANSWER_XML, calls)
    ringing, answered, ended = calls.events
    assert ringing == Ringing(call_id)
    assert isinstance(answered, CallAnswered) and answered.media.codec == "PCMU"
    assert answered.media.dtmf_payload_type == 101
    assert ended == CallEnded(call_id, "ended")
    assert endpoint.stats.requests_out["INVITE"] >= 1
    assert endpoint.stats.requests_out["ACK"] == 1 and endpoint.stats.requests_out["BYE"] == 1


async def test_a_busy_phone_is_told_as_busy(
    tmp_path: Path, placed: tuple[Placed, SipEndpoint]
) -> None:
    calls, _ = placed
    call_id = await dial_sipp(tmp_path, BUSY_XML, calls)
    assert calls.events == [DialFailed(call_id, "busy", 486)]
    assert calls.desk is not None and not calls.desk.agent.dialogs


async def test_a_phone_that_never_answers_is_cancelled_at_the_ring_timeout(
    tmp_path: Path, placed: tuple[Placed, SipEndpoint]
) -> None:
    calls, endpoint = placed
    call_id = await dial_sipp(tmp_path, NO_ANSWER_XML, calls, ring_timeout=1.0)
    assert calls.events == [Ringing(call_id), DialFailed(call_id, "no answer", 487)]
    assert endpoint.stats.requests_out["CANCEL"] == 1
    assert calls.desk is not None and not calls.desk.agent.dialogs
