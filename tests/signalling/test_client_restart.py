"""An aiortc participant (wadud_client) whose media path dies mid-call
gets its media back on new peer connections by itself.

The patient's two peer connections reach the media worker through a UDP
relay each (tests/signalling/relay.py); the test closes both relays, so
nothing gets through any more in either direction, as when a phone's path
vanishes, while its WebSocket stays up. aioice notices a dead path only when
consent freshness gives up (RFC 7675: six checks 5 s apart, 30 s); the test
shortens that to about two seconds, so the connection goes ``failed`` soon
enough, and everything after it is the client's own doing: it asks the
server for ``reconnect_media``, publishes again on a new connection, answers
the server's offer on a new subscribe connection (which go direct: the
relays are gone), and media flows both ways again, the same participant.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable

import aioice.ice
import pytest

import wadud_client.media
from rtc.demux import is_dtls, is_stun
from tests.signalling.relay import UdpRelay, rewrite_candidates

# The server, loopback ICE and the participants of test_client_call.py.
from tests.signalling.test_client_call import (  # noqa: F401
    Call,
    Muffled,
    call,
    loopback_aiortc,
    own_call,
    settings,
)
from wadud.config import Settings
from wadud_client.call import CallClient
from wadud_client.sources import TestPatternVideo, ToneAudio

#: aioice's consent freshness as shipped (RFC 7675's pace).
SHIPPED = {
    "CONSENT_INTERVAL": aioice.ice.CONSENT_INTERVAL,
    "CONSENT_FAILURES": aioice.ice.CONSENT_FAILURES,
}


def consent(monkeypatch: pytest.MonkeyPatch, quick: bool) -> None:
    """Quick consent (a dead path is ``failed`` after three unanswered
    checks about 0.3 s apart, some two seconds) while the old path dies, as
    shipped before and once its failure is noticed: the setting is the
    process's, and quick throughout, every connection of the test (the
    doctor's, the patient's new ones) failed on any two-second stall of a
    starved run and reconnected again (ci168: two and three reconnects where
    one was due). A connection asleep between two shipped checks (up to
    6 s) takes the quick pace at its next one."""
    values = {"CONSENT_INTERVAL": 0.3, "CONSENT_FAILURES": 3} if quick else SHIPPED
    for name, value in values.items():
        monkeypatch.setattr(aioice.ice, name, value)


def frames(
    client: CallClient, publisher: CallClient, old: frozenset[str] = frozenset()
) -> tuple[int, int]:
    """Video and audio frames ``client`` decoded from ``publisher`` on the
    tracks it receives now, leaving out the track ids in ``old``."""
    pid = str(publisher.participant_id)
    counts = {"video": 0, "audio": 0}
    for r in client.received_from(pid):
        if r.track_id not in old:
            counts[r.kind] += r.frames
    return (counts["video"], counts["audio"])


async def leg_relays(
    port: int, connection: str, hold: Callable[[str, bytes], float] | None = None
) -> dict[str, UdpRelay]:
    """A started relay to the worker on ``port`` for each of a client's legs
    (a single connection's SDP goes through the filter as "publish")."""
    legs = ("publish",) if connection == "single" else ("publish", "subscribe")
    relays = {leg: UdpRelay(("127.0.0.1", port), hold=hold) for leg in legs}
    for relay in relays.values():
        await relay.start()
    return relays


@pytest.mark.timeout(90)
@pytest.mark.parametrize("connection", ["single", "pair"])
async def test_a_failed_connection_comes_back_on_new_ones(
    call: Call,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    connection: str,
) -> None:
    """The patient's path dies: its connection (or both, in pair mode) goes
    ``failed``, and media comes back on new ones with the same participant."""
    room = "room-" + uuid.uuid4().hex[:8]
    doctor = await call.join(room, "dr-amina", role="doctor", admin=True, connection=connection)
    await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})

    relays = await leg_relays(call.settings.media_port, connection)
    path = {"alive": True}

    def through_relay(sdp: str, direction: str) -> str:
        # While the old path lives, each connection goes through its relay;
        # connections made after it died go direct (another network).
        return rewrite_candidates(sdp, relays[direction].address) if path["alive"] else sdp

    patient = await call.join(room, "pt-991", sdp_filter=through_relay, connection=connection)
    await patient.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
    await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 20)
    assert (patient.publish_pc is patient.subscribe_pc) == (connection == "single")
    await doctor.wait_until(lambda: min(frames(doctor, patient)) >= 10, 20)
    assert all(r.stats.forwarded["up"] > 0 for r in relays.values())
    pid = patient.participant_id
    before = frozenset(patient.published)

    consent(monkeypatch, quick=True)
    path["alive"] = False
    for relay in relays.values():
        relay.close()
    died = time.monotonic()
    seen = len(doctor.history)

    await patient.wait_until(lambda: patient.media_reconnects >= 1, 20)
    failed_after = time.monotonic() - died
    consent(monkeypatch, quick=False)
    # New tracks on both sides (the old ones ended), and frames on them.
    await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 15)
    await doctor.wait_until(lambda: min(frames(doctor, patient, before)) >= 10, 15)
    back_after = time.monotonic() - died
    print(f"failed noticed after {failed_after:.1f} s, media back after {back_after:.1f} s")

    assert patient.participant_id == pid
    assert patient.media_state == "connected"
    assert patient.media_reconnects == 1, patient.media_reconnects
    assert patient.errors == []
    assert {pc.connectionState for pc in (patient.publish_pc, patient.subscribe_pc)} == {
        "connected"
    }
    # The doctor was told the patient was reconnecting, then back.
    told = [
        e.data["state"]
        for e in doctor.history[seen:]
        if e.type == "participant_media" and e.data.get("participant_id") == pid
    ]
    assert told[:1] == ["reconnecting"] and told[-1:] == ["connected"], told
    assert doctor.peer_media == {}


@pytest.mark.timeout(90)
async def test_a_new_connection_slow_to_finish_its_handshake_is_waited_for(
    call: Call,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the path dies, the new connection finds its path at once but its
    DTLS handshake takes longer than RECONNECT_WITHIN (the server's handshake
    datagrams are held, as a starved or slow peer's would be): the client
    waits for it rather than throwing it away for yet another one."""
    # Long enough for a starved run's ICE to finish: at 2 s it did not, and
    # the client rightly asked again (ci168, three reconnects).
    within = 5.0
    monkeypatch.setattr(wadud_client.media, "RECONNECT_WITHIN", within)
    room = "room-" + uuid.uuid4().hex[:8]
    doctor = await call.join(room, "dr-amina", role="doctor", admin=True)
    await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})

    worker = ("127.0.0.1", call.settings.media_port)
    # The server's DTLS datagrams on the new path are all held until
    # RECONNECT_WITHIN and a second after the first of them (which follows
    # the reconnect): the handshake cannot finish within RECONNECT_WITHIN,
    # whatever the client retransmits.
    release: list[float] = []

    def slow_handshake(direction: str, data: bytes) -> float:
        if direction != "down" or not is_dtls(data):
            return 0.0
        if not release:
            release.append(time.monotonic() + within + 1.0)
        return max(0.0, release[0] - time.monotonic())

    old, new = UdpRelay(worker), UdpRelay(worker, hold=slow_handshake)
    for relay in (old, new):
        await relay.start()
    path = {"alive": True}

    def through_relay(sdp: str, direction: str) -> str:
        return rewrite_candidates(sdp, (old if path["alive"] else new).address)

    patient = await call.join(room, "pt-991", sdp_filter=through_relay)
    await patient.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
    await doctor.wait_until(lambda: min(frames(doctor, patient)) >= 10, 20)
    before = frozenset(patient.published)

    consent(monkeypatch, quick=True)
    path["alive"] = False
    old.close()
    await patient.wait_until(lambda: patient.media_reconnects >= 1, 20)
    consent(monkeypatch, quick=False)
    await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 30)
    await doctor.wait_until(lambda: min(frames(doctor, patient, before)) >= 10, 15)

    assert release, "the new path carried no DTLS"
    # Connected only once the held handshake was let through, past
    # RECONNECT_WITHIN, and on the first new connection.
    assert patient.connected_at["publish"] >= release[0]
    assert patient.media_reconnects == 1, patient.media_reconnects
    assert patient.media_state == "connected"
    assert patient.errors == []
    new.close()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("connection", ["single", "pair"])
async def test_a_client_recovering_its_path_takes_the_servers_new_connections(
    settings: Settings,  # noqa: F811 - the fixture
    loopback_aiortc: None,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    connection: str,
) -> None:
    """The patient's signalling and then its path die: it cannot ask for new
    connections while its socket is away, and the server forgets it meanwhile
    (the resume grace). Its resume makes it a new participant, whose media
    the server starts over on new connections; the client takes those and
    does not ask for others on top (asking replaced the transports it was
    answering: after a region cut, media came back 10 s later)."""
    changed = dataclasses.replace(settings, call_ping_interval=1.0, call_resume_grace=1.0)
    async with own_call(changed) as server:
        room = "room-" + uuid.uuid4().hex[:8]
        doctor = await server.join(room, "dr-amina", role="doctor", admin=True)
        await doctor.room_settings(require_admission=False)
        await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})

        relays = await leg_relays(changed.media_port, connection)
        path = {"alive": True}

        def through_relay(sdp: str, direction: str) -> str:
            return rewrite_candidates(sdp, relays[direction].address) if path["alive"] else sdp

        patient = Muffled(
            server.url,
            server.token(room, "pt-991"),
            label="pt-991",
            sdp_filter=through_relay,
            connection=connection,
        )
        server.clients.append(patient)
        assert (await patient.join())["type"] == "joined"
        await patient.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
        await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 20)
        await doctor.wait_until(lambda: min(frames(doctor, patient)) >= 10, 20)
        before = patient.participant_id

        # Signalling first: the server closes the silent socket.
        patient.muffled = True
        await patient.wait_until(lambda: patient.state == "disconnected", 10)
        # Then the path; the failure is noticed while nothing can be asked.
        consent(monkeypatch, quick=True)
        path["alive"] = False
        for relay in relays.values():
            relay.close()
        await patient.wait_until(lambda: patient.media_state == "reconnecting", 20)
        consent(monkeypatch, quick=False)
        await doctor.wait_for(
            "participant_left", lambda f: f.get("participant_id") == before, within=10
        )
        assert patient.media_reconnects == 0, "asked with its socket away"

        patient.muffled = False
        assert (await patient.resume())["type"] == "joined"
        assert patient.participant_id != before
        await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 20)
        await doctor.wait_until(lambda: min(frames(doctor, patient)) >= 10, 20)
        # The recovery ends on the server's connections, without asking.
        await patient.wait_until(lambda: patient.media_state == "connected", 20)
        assert patient.media_reconnects == 0, patient.media_reconnects
        assert patient.media_moves == 1, patient.media_moves
        assert patient.errors == [], patient.errors


@pytest.mark.timeout(90)
@pytest.mark.parametrize("connection", ["single", "pair"])
async def test_a_path_whose_answers_come_late_keeps_its_consent(
    call: Call,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    connection: str,
) -> None:
    """Every answer to the patient's consent checks reaches it 0.8 s late, as
    a starved client reads them: aioice alone counts each such check as
    failed (its deadline is 0.5 s) and closes a path that answers them all;
    the client keeps it (RFC 7675: consent lasts while answers come)."""
    # A check every 0.5 s, consent gone after 2 s without an answer: aioice
    # alone closes the path after four late answers in a row, some 4 s.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.5)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 4)
    late = {"on": False, "held": 0}

    def hold(direction: str, data: bytes) -> float:
        if late["on"] and direction == "down" and is_stun(data):
            late["held"] += 1
            return 0.8
        return 0.0

    relays = await leg_relays(call.settings.media_port, connection, hold)
    room = "room-" + uuid.uuid4().hex[:8]
    doctor = await call.join(room, "dr-amina", role="doctor", admin=True, connection=connection)
    await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
    patient = await call.join(
        room,
        "pt-991",
        sdp_filter=lambda sdp, leg: rewrite_candidates(sdp, relays[leg].address),
        connection=connection,
    )
    await patient.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
    await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 20)

    late["on"] = True
    # Four times the late answers aioice alone survives, on each connection.
    await patient.wait_until(lambda: late["held"] >= 16 * len(relays), 30)
    seen = frames(patient, doctor)
    await patient.wait_until(lambda: frames(patient, doctor)[0] > seen[0] + 10, 10)
    assert patient.media_reconnects == 0, patient.media_reconnects
    assert patient.media_moves == 0, patient.media_moves
    assert {pc.connectionState for pc in (patient.publish_pc, patient.subscribe_pc)} == {
        "connected"
    }
    assert patient.errors == []
    for relay in relays.values():
        relay.close()
