"""A call across two regions on loopback: each participant's media on their
own region's node, tracks crossing between the nodes over a relay link.

Real processes (tests/cluster.py): one ``wadud api`` (region pk), a
``wadud media`` node in pk and one in ae, PostgreSQL and Redis from the
session's fixtures; aiortc clients (wadud_client) as the doctor (a
token for ae) and the patient (a token for pk). The simulated regions with
delay and loss, and browsers, are tests/signalling/test_regions.py; this one
is the quick check that runs by default.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import pytest

from tests.cluster import Cluster, running
from tests.conftest import RedisServer
from tests.prometheus import metric_sum, parse_metrics
from wadud_client.call import CallClient
from wadud_client.sources import TestPatternVideo, ToneAudio

pytestmark = pytest.mark.timeout(240)

SECRET = "sites-call-secret-" + "s" * 40


@pytest.fixture
async def world(
    tmp_path: Path, database_url: str, redis_server: RedisServer
) -> AsyncIterator[Cluster]:
    cluster = Cluster(
        tmp_path / "cluster",
        database_url,
        redis_server.url,
        SECRET,
        region="pk",
        extra_env={"WADUD_MEDIA_REGION_DISTANCES": "pk-ae=40,pk-sa=60,ae-sa=30"},
    )
    cluster.add_api("pk", region="pk")
    cluster.add_media("pk1", workers=1, region="pk")
    cluster.add_media("ae1", workers=1, region="ae")
    async with running(cluster):
        yield cluster


async def metrics(node_url: str) -> dict[str, float]:
    """The node's /metrics as {"name{labels}": value}."""
    async with aiohttp.ClientSession() as http, http.get(node_url + "/metrics") as resp:
        return parse_metrics(await resp.text())


async def join(world: Cluster, room: str, identity: str, role: str, region: str) -> CallClient:
    link = await world.token_link(
        room, identity, role, name=identity, public_url=world.apis["pk"].url, region=region
    )
    token = parse_qs(urlparse(link).query)["token"][0]
    client = CallClient(world.apis["pk"].url, token, room=room, label=identity)
    await client.join()
    return client


async def admitted(doctor: CallClient, guest: CallClient) -> None:
    """The doctor admits ``guest`` if it waits (a patient's link does)."""
    if guest.state == "waiting":
        await doctor.wait_until(lambda: bool(doctor.waiting), 10)
        await doctor.admit(doctor.waiting[0]["id"])
        await guest.wait_admitted(10)


async def decoding(client: CallClient, kind: str, within: float = 20.0) -> dict[str, Any]:
    async def frames() -> int:
        return sum(t.frames for t in client.received.values() if t.kind == kind)

    start = await frames()
    deadline = asyncio.get_running_loop().time() + within
    while await frames() < start + 10:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{client.label} decodes no {kind}: {client.received}")
        await asyncio.sleep(0.1)
    return {t.track_id: t.frames for t in client.received.values() if t.kind == kind}


async def test_doctor_in_ae_and_patient_in_pk_meet_through_their_own_nodes(
    world: Cluster,
) -> None:
    room = "visit-" + secrets.token_hex(4)
    doctor = await join(world, room, "dr-rania", "doctor", "ae")
    patient = await join(world, room, "pt-bilal", "patient", "pk")
    clients = [doctor, patient]
    try:
        await admitted(doctor, patient)
        await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
        await patient.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
        await decoding(doctor, "video")
        await decoding(patient, "video")
        await decoding(doctor, "audio")
        await decoding(patient, "audio")

        # An interpreter in sa, a region with no media node, is placed in
        # the nearest region that has one (ae) and shares the doctor's worker.
        interpreter = await join(world, room, "int-sana", "patient", "sa")
        clients.append(interpreter)
        await admitted(doctor, interpreter)
        await interpreter.publish({"microphone": ToneAudio()})
        await decoding(interpreter, "video")
        # Both videos, the doctor's from its own worker and the patient's
        # over the relay link (the sum above may have risen on one alone).
        for _ in range(200):
            seen = {
                t.track_id: t.frames for t in interpreter.received.values() if t.kind == "video"
            }
            if len(seen) == 2 and all(seen.values()):
                break
            await asyncio.sleep(0.1)
        assert len(seen) == 2 and all(seen.values()), seen
        await decoding(patient, "audio")

        pk = await metrics(world.media["pk1"].url)
        ae = await metrics(world.media["ae1"].url)
        # Each node holds exactly its own region's participants: one
        # transport each on a single connection (two in pair mode).
        legs = 1 if patient.publish_pc is patient.subscribe_pc else 2
        assert metric_sum(pk, "sfu_transports") == legs, pk
        assert metric_sum(ae, "sfu_transports") == 2 * legs, ae
        # The tracks crossed over a relay link, both ways, and were counted
        # as relayed, not as the node's own publishers' packets.
        for node in (pk, ae):
            assert metric_sum(node, "sfu_relay_links", state="connected") == 1, node
            assert metric_sum(node, "sfu_relay_packets_total", direction="in") > 100, node
            assert metric_sum(node, "sfu_relay_packets_total", direction="out") > 100, node
        # Each worker received RTP from its own publisher only: one
        # participant's audio and video, far fewer packets than it relayed
        # in and out together would suggest if relayed packets counted too.
        for node in (pk, ae):
            own = metric_sum(node, "sfu_rtp_total", event="received")
            relayed_in = metric_sum(node, "sfu_relay_packets_total", direction="in")
            assert 0 < own < 3 * relayed_in, (own, relayed_in)

        # The doctor and the interpreter leave: the patient's node stops
        # receiving relayed media.
        await doctor.leave()
        await interpreter.leave()
        await asyncio.sleep(3)
        pk_url = world.media["pk1"].url
        before = metric_sum(await metrics(pk_url), "sfu_relay_packets_total", direction="in")
        await asyncio.sleep(1.5)
        after = metric_sum(await metrics(pk_url), "sfu_relay_packets_total", direction="in")
        assert after - before < 20, (before, after)
    finally:
        for client in clients:
            await client.close()
