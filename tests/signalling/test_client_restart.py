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

import time
import uuid

import aioice.ice
import pytest

from tests.signalling.relay import UdpRelay, rewrite_candidates

# The server, loopback ICE and the participants of test_client_call.py.
from tests.signalling.test_client_call import Call, call, loopback_aiortc, settings  # noqa: F401
from wadud_client.call import CallClient
from wadud_client.sources import TestPatternVideo, ToneAudio


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


@pytest.mark.timeout(60)
@pytest.mark.parametrize("connection", ["single", "pair"])
async def test_a_failed_connection_comes_back_on_new_ones(
    call: Call,  # noqa: F811 - the fixture
    monkeypatch: pytest.MonkeyPatch,
    connection: str,
) -> None:
    """The patient's path dies: its connection (or both, in pair mode) goes
    ``failed``, and media comes back on new ones with the same participant."""
    # A dead path is `failed` after ~3 unanswered consent checks ~0.3 s apart.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.3)
    monkeypatch.setattr(aioice.ice, "CONSENT_FAILURES", 3)
    room = "room-" + uuid.uuid4().hex[:8]
    doctor = await call.join(room, "dr-amina", role="doctor", admin=True, connection=connection)
    await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})

    worker = ("127.0.0.1", call.settings.media_port)
    # A single connection's SDP goes through the filter as "publish".
    legs = ("publish",) if connection == "single" else ("publish", "subscribe")
    relays = {d: UdpRelay(worker) for d in legs}
    for relay in relays.values():
        await relay.start()
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

    path["alive"] = False
    for relay in relays.values():
        relay.close()
    died = time.monotonic()
    seen = len(doctor.history)

    await patient.wait_until(lambda: patient.media_reconnects >= 1, 15)
    failed_after = time.monotonic() - died
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
