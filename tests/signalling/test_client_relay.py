"""An aiortc participant (wadud_client) whose media goes only through
Wadud's own TURN relay over TLS (``turns:``), as a patient's app behind a
firewall that lets nothing but TLS out would: the relay ``wadud serve``
embeds, with the self-signed certificate it makes, trusted by the client
through ``SSL_CERT_FILE`` (aioice checks a ``turns:`` server's certificate
against the default CAs, and gathers no relay candidate from one it does
not trust)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import turn.http
from bin.assembly import build_app, in_process
from tests.signalling.test_client_call import loopback_aiortc, settings  # noqa: F401
from wadud.config import Settings
from wadud.state import keys
from wadud.web.auth import RoomGrant, issue_room_token
from wadud_client.call import CallClient
from wadud_client.network import relay_servers
from wadud_client.sources import TestPatternVideo, ToneAudio

SERVERS: list[dict[str, Any]] = [
    {
        "urls": [
            "turn:127.0.0.1:3478?transport=udp",
            "turn:127.0.0.1:3478?transport=tcp",
            "turns:127.0.0.1:5349?transport=tcp",
            "turn:127.0.0.1:3479",
        ],
        "username": "u",
        "credential": "c",
    },
    {"urls": "stun:127.0.0.1:3478"},
]


@pytest.mark.parametrize(
    ("transport", "urls"),
    [
        ("udp", ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3479"]),
        ("tcp", ["turn:127.0.0.1:3478?transport=tcp"]),
        ("tls", ["turns:127.0.0.1:5349?transport=tcp"]),
    ],
)
def test_relay_servers_keeps_one_transport(transport: Any, urls: list[str]) -> None:
    assert relay_servers(SERVERS, transport) == [{**SERVERS[0], "urls": urls}]


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:  # noqa: F811
    """``wadud serve``'s app: the media worker and the embedded relay."""
    settings = dataclasses.replace(settings, turn_embedded_port=0, turn_embedded_tls_port=0)
    app = build_app(settings, [*in_process(), turn.http.install_embedded])
    client: TestClient[Any, Any] = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


@pytest.mark.timeout(60)
async def test_a_relay_only_call_over_turns(
    served: TestClient[Any, Any],
    settings: Settings,  # noqa: F811
    loopback_aiortc: None,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    relay = served.app[turn.http.EMBEDDED]
    cert, _ = turn.http.embedded_tls_files(served.app[keys.SETTINGS])
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    room = "room-" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(dt.UTC)
    clients: list[CallClient] = []

    async def join(identity: str, role: str, **options: Any) -> CallClient:
        grant = RoomGrant(room, identity, identity.title(), role, True, True, role == "doctor")
        token = issue_room_token(
            settings,
            grant,
            not_before=now - dt.timedelta(seconds=5),
            expires=now + dt.timedelta(hours=1),
        )
        client = CallClient(str(served.make_url("/ws")), token, label=identity, **options)
        clients.append(client)
        answer = await client.join()
        assert answer["type"] == "joined", answer
        await client.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
        return client

    def frames(client: CallClient, publisher: CallClient) -> tuple[int, int]:
        counts = {"video": 0, "audio": 0}
        for r in client.received_from(str(publisher.participant_id)):
            counts[r.kind] += r.frames
        return counts["video"], counts["audio"]

    try:
        doctor = await join("dr-amina", "doctor", ice_servers=[])
        patient = await join("pt-991", "patient", relay="tls")
        urls = patient.ice_servers[0]["urls"]
        assert any(u.startswith("turns:") for u in urls), urls
        await patient.wait_until(lambda: min(frames(patient, doctor)) >= 10, 20)
        await doctor.wait_until(lambda: min(frames(doctor, patient)) >= 10, 20)
        # The patient's one connection (both, in pair mode) holds an
        # allocation over TLS, and media crossed it both ways; none over UDP or TCP.
        allocations = list(relay.core.allocator.allocations)
        legs = 1 if patient.publish_pc is patient.subscribe_pc else 2
        assert [a.side.transport for a in allocations] == ["tls"] * legs, allocations
        assert all(a.to_peer_bytes > 0 and a.from_peer_bytes > 0 for a in allocations)
        for pc in (patient.publish_pc, patient.subscribe_pc):
            assert pc is not None and pc.connectionState == "connected"
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
