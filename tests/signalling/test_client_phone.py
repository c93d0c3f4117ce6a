"""The phone's life against a real app with the Python client (aiortc):
a silent app keeps its seat for the pings' timeout plus its own grace, and
not a moment more; ``pong`` tells the server's time; TURN credentials are
renewed on the socket before they expire. Every timing is read from the
server's own clocks (its loop time, the deadline it set, the expiry in the
credentials it minted)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from signalling.edge.http import CALLS
from signalling.keepalive import MISSED_PINGS
from signalling.room.members import Member, MemberState
from signalling.service.calls import CallService
from tests.polling import wait_until
from tests.signalling.test_client_call import Call, own_call
from wadud.config import Settings
from wadud_client.call import CallClient
from wadud_client.sources import TestPatternVideo

PING = 0.5
GRACE = 1.0
APP_GRACE = 6.0
IOS = {"platform": "ios", "sdk": "react-native-webrtc", "version": "124.0.4"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    from tests.conftest import free_udp_port

    return dataclasses.replace(settings, media_port=free_udp_port())


@pytest.fixture
def loopback_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves loopback out of its host candidates; a loopback call needs it."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class _Backgrounded(CallClient):
    """A phone app sent to the background: while ``asleep`` it answers no
    ping and sends nothing on its socket (its media goes on, as with CallKit)."""

    asleep = False

    async def send(self, type: str, **fields: Any) -> None:
        if not self.asleep:
            await super().send(type, **fields)


def _room() -> str:
    return "room-" + uuid.uuid4().hex[:8]


def _frames_from(client: CallClient, publisher: str) -> int:
    return sum(r.frames for r in client.received_from(publisher, "video", active=False))


@dataclasses.dataclass
class Silence:
    """What the server noted of one silent spell: when it last heard the
    app, and the seat's deadline it set when it took the socket for dropped."""

    last_heard: float
    deadline: float


async def _silence(service: CallService, room: str, app: _Backgrounded) -> Silence:
    """Put ``app`` to sleep and wait until the server detaches it."""
    pid = app.participant_id
    conn = next(c for c in service.rooms.connections if c.participant_id == pid)
    app.asleep = True

    def detached() -> Member | None:
        m = service.rooms[room].core.members.get(str(pid))
        return m if m is not None and m.state is MemberState.DETACHED else None

    member = await wait_until(detached, within=10)
    assert member.deadline is not None
    await app.wait_until(lambda: app.state == "disconnected", 5)
    assert app.close_code == 4408
    return Silence(conn.last_seen, member.deadline)


@pytest.fixture
async def phone_call(settings: Settings, loopback_aiortc: None) -> AsyncIterator[Call]:
    changed = dataclasses.replace(
        settings,
        call_ping_interval=PING,
        call_resume_grace=GRACE,
        call_resume_grace_app=APP_GRACE,
    )
    async with own_call(changed) as call:
        yield call


async def test_a_silent_app_keeps_its_seat_for_the_ping_timeout_and_its_grace(
    phone_call: Call,
) -> None:
    call, room = phone_call, _room()
    service = call.api.app[CALLS]
    loop = asyncio.get_running_loop()
    doctor = await call.join(room, "dr-phone", role="doctor", admin=True)
    assert doctor.resume_grace == GRACE
    app = _Backgrounded(call.url, call.token(room, "pt-phone"), label="pt-phone", client=IOS)
    call.clients.append(app)
    joined = await app.join()
    assert joined["resume_grace"] == APP_GRACE
    await app.publish({"camera": TestPatternVideo()})
    pid = str(app.participant_id)
    await doctor.wait_until(lambda: _frames_from(doctor, pid) >= 5, 30)

    # Silent until shortly before its seat's deadline: it resumes the same seat.
    first = await _silence(service, room, app)
    # The grace runs from the instant the third missed ping's time ran out.
    timeout_at = first.last_heard + MISSED_PINGS * PING
    assert 0 <= first.deadline - (timeout_at + APP_GRACE) < 0.25
    seat = first.deadline - first.last_heard
    await wait_until(lambda: loop.time() >= first.deadline - 1.0, within=APP_GRACE + 5)
    app.asleep = False
    offers = len([e for e in app.history if e.type == "offer"])
    frames = _frames_from(doctor, pid)
    answer = await app.resume()
    resumed_at = loop.time()
    assert resumed_at < first.deadline
    assert answer["participant"]["id"] == pid and app.participant_id == pid
    # Media never stopped: more frames, no renegotiation, nobody left.
    await doctor.wait_until(lambda: _frames_from(doctor, pid) >= frames + 10, 10)
    assert len([e for e in app.history if e.type == "offer"]) == offers
    assert not [e for e in doctor.history if e.type == "participant_left"]

    # Silent past the deadline: out, reason timeout, and a resume is a new seat.
    second = await _silence(service, room, app)
    left = await doctor.wait_for(
        "participant_left", lambda f: f.get("participant_id") == pid, within=APP_GRACE + 5
    )
    gone_at = loop.time()
    assert left["reason"] == "timeout"
    assert gone_at >= second.deadline
    assert second.deadline - second.last_heard == pytest.approx(seat, abs=0.25)
    app.asleep = False
    again = await app.resume()
    assert again["type"] == "joined" and again["participant"]["id"] != pid
    print(
        f"\nsilent app's seat: {seat:.2f} s after the last frame heard"
        f" ({MISSED_PINGS} x {PING} s pings + {APP_GRACE} s grace);"
        f" resumed {first.deadline - resumed_at:.2f} s before its deadline;"
        f" out {gone_at - second.deadline:.3f} s after it"
    )


async def test_pong_carries_the_server_time_in_unix_milliseconds(phone_call: Call) -> None:
    room = _room()
    doctor = await phone_call.join(room, "dr-clock", role="doctor", admin=True)
    before = time.time() * 1000
    pong = await doctor.request("ping")
    after = time.time() * 1000
    assert pong["type"] == "pong" and isinstance(pong["server_time"], int)
    assert before - 1 <= pong["server_time"] <= after + 1
    await doctor.ping()
    assert doctor.clock_offset is not None and abs(doctor.clock_offset) < 0.5


TTL = 5


async def test_turn_credentials_are_renewed_on_the_socket_before_they_expire(
    settings: Settings,
) -> None:
    changed = dataclasses.replace(
        settings,
        turn_secrets=["turn-secret-" + "x" * 24],
        turn_urls=["turn:127.0.0.1:3478?transport=udp"],
        turn_credential_ttl=TTL,
    )
    async with own_call(changed) as call:
        room = _room()
        token = call.token(room, "dr-turn", role="doctor", admin=True)
        client = CallClient(call.url, token, label="dr-turn")
        call.clients.append(client)
        joined = await client.join()
        [first] = joined["ice_servers"]
        assert first["ttl"] == TTL
        expires = int(first["username"].split(":")[0])
        fresh = await client.wait_for("ice_servers", within=TTL + 5)
        arrived = time.time()
        [renewed] = fresh["ice_servers"]
        # Before the old ones expire, with a later expiry of their own.
        assert arrived < expires
        assert int(renewed["username"].split(":")[0]) > expires
        assert renewed["username"].endswith(":dr-turn")
        assert client.ice_servers == fresh["ice_servers"]
        # And again, while the socket lives.
        mark = len(client.history)
        await client.wait_for("ice_servers", since=mark, within=TTL + 5)
        print(
            f"\nTURN credentials (ttl {TTL} s) renewed {expires - arrived:.2f} s"
            " before they expired"
        )
