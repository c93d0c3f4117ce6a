"""Calls from a trunk through the endpoint and the user agent (sip/node/desk.py),
with SIPp as the trunk: answered with SDP once the bridge opened media, up
at the ACK, ended by the caller's BYE; refused with 403 from an address no
trunk sends from."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sip.calls.agent import CallAnswered, CallEnded, CallEvent, MediaWanted, Trunk, UserAgent
from sip.node.desk import CallDesk
from sip.transport.endpoint import SipEndpoint
from tests.sip.phone import OK_TO_IT
from tests.sip.transport.test_endpoint import HOST, run_sipp

# A call with an offer of G.711 and digits, held for half a second, then BYE.
CALL_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="call">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: "+923001234534" <sip:+923001234534@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>
Call-ID: [call_id]
CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=trunk 53655765 2353687637 IN IP[local_ip_type] [local_ip]
s=-
c=IN IP[media_ip_type] [media_ip]
t=0 0
m=audio [media_port] RTP/AVP 0 8 101
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:101 telephone-event/8000
a=fmtp:101 0-15
a=ptime:20
]]></send>
  <recv response="100" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: "+923001234534" <sip:+923001234534@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
  <pause milliseconds="500"/>
  <send retrans="500"><![CDATA[
BYE [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
From: "+923001234534" <sip:+923001234534@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 2 BYE
Max-Forwards: 70
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""

# An INVITE from an address no trunk sends from: 403, and the ACK.
REFUSED_XML = (
    CALL_XML.split('  <recv response="200" rtd="true" rrs="true"/>')[0]
    + """  <recv response="403"/>
  <send><![CDATA[
ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-3];rport
From: "+923001234534" <sip:+923001234534@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
Call-ID: [call_id]
CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
</scenario>
"""
)


# A call the bridge ends: after the ACK, SIPp waits for our BYE and answers it.
HUNG_UP_XML = (
    CALL_XML.split('  <pause milliseconds="500"/>')[0]
    + '  <recv request="BYE"/>\n'
    + OK_TO_IT
    + "</scenario>\n"
)


class Bridge:
    """What the bridge does with a call, here: open a UDP socket for its media."""

    def __init__(self, hang_up: bool = False) -> None:
        self.hang_up = hang_up
        self.events: list[CallEvent] = []
        self.desk: CallDesk | None = None
        self.sockets: list[socket.socket] = []
        self.ended = asyncio.Event()

    def on_call(self, event: CallEvent) -> None:
        self.events.append(event)
        assert self.desk is not None
        if isinstance(event, MediaWanted):
            media = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            media.bind((HOST, 0))
            self.sockets.append(media)
            self.desk.media_ready(event.call_id, HOST, media.getsockname()[1], None)
        elif isinstance(event, CallAnswered) and self.hang_up:
            self.desk.hang_up(event.call_id)
        elif isinstance(event, CallEnded):
            self.ended.set()


@pytest.fixture
async def bridge(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Bridge, SipEndpoint]]:
    """The endpoint and desk; ``param``: the trunk's networks, or "hang up"
    for a bridge that ends each call as soon as it is up."""
    param = getattr(request, "param", ["127.0.0.0/8"])
    if isinstance(param, Trunk):
        trunk = param
    else:
        trunk = Trunk("clinic", ["127.0.0.0/8"] if param == "hang up" else param)
    agent = UserAgent([trunk], "sip:bridge@127.0.0.1")
    bridge = Bridge(hang_up=param == "hang up")
    desk = bridge.desk = CallDesk(agent, bridge.on_call)
    endpoint = SipEndpoint(desk, HOST, 0)
    desk.attach(endpoint)
    await endpoint.start()
    agent.contact = f"sip:bridge@{HOST}:{endpoint.port}"
    try:
        yield bridge, endpoint
    finally:
        desk.close()
        await endpoint.close()
        for media in bridge.sockets:
            media.close()


@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_a_trunks_call_is_answered_held_and_ended_by_its_bye(
    tmp_path: Path, bridge: tuple[Bridge, SipEndpoint], transport: str
) -> None:
    calls, endpoint = bridge
    await run_sipp(tmp_path, CALL_XML, endpoint, transport)
    await asyncio.wait_for(calls.ended.wait(), 5)
    wanted, answered, ended = calls.events
    assert isinstance(wanted, MediaWanted) and wanted.caller == "+923001234534"
    assert isinstance(answered, CallAnswered) and answered.media.codec == "PCMU"
    assert answered.media.dtmf_payload_type == 101 and not answered.media.on_hold
    assert ended == CallEnded(wanted.call_id, "hangup")


@pytest.mark.parametrize("bridge", [["10.0.0.0/8"]], indirect=True)
async def test_a_call_from_no_trunk_is_refused(
    tmp_path: Path, bridge: tuple[Bridge, SipEndpoint]
) -> None:
    calls, endpoint = bridge
    assert calls.desk is not None
    await run_sipp(tmp_path, REFUSED_XML, endpoint, "u1")
    assert calls.events == [] and calls.desk.agent.unauthenticated == 1


@pytest.mark.parametrize("bridge", ["hang up"], indirect=True)
@pytest.mark.parametrize("transport", ["u1", "t1"])
async def test_the_bridge_ends_a_call_with_its_own_bye(
    tmp_path: Path, bridge: tuple[Bridge, SipEndpoint], transport: str
) -> None:
    calls, endpoint = bridge
    await run_sipp(tmp_path, HUNG_UP_XML, endpoint, transport)
    await asyncio.wait_for(calls.ended.wait(), 5)
    wanted, answered, ended = calls.events
    assert isinstance(answered, CallAnswered)
    assert ended == CallEnded(wanted.call_id, "ended")
    assert endpoint.stats.requests_out["BYE"] == 1


def digest_xml(password: str) -> str:
    """The call of CALL_XML from a digest trunk: challenged with 401, it
    ACKs and sends the INVITE again with SIPp's own digest answer
    (``[authentication]``, RFC 3261 section 22.2) for ``password``."""
    invite, rest = CALL_XML.split('  <recv response="100" optional="true"/>', 1)
    again = (
        invite[invite.index("  <send") :]
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(
            "Max-Forwards: 70",
            f"[authentication username=shifa password={password}]\nMax-Forwards: 70",
        )
    )
    challenged = REFUSED_XML.split('  <recv response="403"/>', 1)[1].replace("</scenario>\n", "")
    answered = '  <recv response="100" optional="true"/>' + rest.replace(
        "CSeq: 1 ACK", "CSeq: 2 ACK"
    )
    answered = answered.replace("CSeq: 2 BYE", "CSeq: 3 BYE")
    if password != "s3cret":
        # Wrong credentials: 403 to the second INVITE, and its ACK.
        answered = '  <recv response="100" optional="true"/>\n  <recv response="403"/>\n'
        answered += challenged.replace("CSeq: 1 ACK", "CSeq: 2 ACK") + "</scenario>\n"
    return (
        invite
        + '  <recv response="100" optional="true"/>\n  <recv response="401" auth="true"/>\n'
        + challenged
        + again
        + answered
    )


DIGEST_TRUNK = Trunk("shifa", [], username="shifa", password="s3cret")


@pytest.mark.parametrize("bridge", [DIGEST_TRUNK], indirect=True)
async def test_a_digest_trunk_is_challenged_then_answered(
    tmp_path: Path, bridge: tuple[Bridge, SipEndpoint]
) -> None:
    calls, endpoint = bridge
    assert calls.desk is not None
    await run_sipp(tmp_path, digest_xml("s3cret"), endpoint, "u1")
    await asyncio.wait_for(calls.ended.wait(), 5)
    assert [type(e) for e in calls.events] == [MediaWanted, CallAnswered, CallEnded]
    agent = calls.desk.agent
    assert (agent.challenged, agent.unauthenticated) == (1, 0)


@pytest.mark.parametrize("bridge", [DIGEST_TRUNK], indirect=True)
async def test_a_digest_trunk_with_the_wrong_password_is_refused(
    tmp_path: Path, bridge: tuple[Bridge, SipEndpoint]
) -> None:
    calls, endpoint = bridge
    assert calls.desk is not None
    await run_sipp(tmp_path, digest_xml("guess"), endpoint, "u1")
    agent = calls.desk.agent
    assert calls.events == [] and (agent.challenged, agent.unauthenticated) == (1, 1)
