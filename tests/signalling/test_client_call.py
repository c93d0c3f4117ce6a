"""Calls through our SFU with aiortc participants (wadud_client), and the
lossy relay the loss test puts on one leg.

The server is the real app (tests/conftest.py's ``api``) with the media worker
and the /ws endpoint installed; every participant is a :class:`CallClient`
with real ICE, DTLS-SRTP and VP8/Opus codecs, so "received" here means frames
that aiortc decoded. The figures (first-frame latency, frames, freezes, NACKs)
are printed: run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc.sdp.session import SessionDescription
from sfu.node.http import MEDIA
from tests.conftest import Api, free_udp_port, served
from tests.polling import wait_until
from tests.signalling.relay import (
    Address,
    Schedule,
    UdpRelay,
    host_candidate,
    is_rtp_or_rtcp,
    rewrite_candidates,
)
from wadud.config import Settings
from wadud.state import keys
from wadud.web.auth import RoomGrant, issue_room_token
from wadud_client.call import CallClient
from wadud_client.errors import RequestFailed
from wadud_client.network import ws_url
from wadud_client.received import ReceivedTrack
from wadud_client.sources import TestPatternVideo, ToneAudio

# -- the relay on its own --------------------------------------------------------


def test_schedule_is_reproducible_and_loses_what_it_says() -> None:
    a = Schedule(loss=0.05, seed=7)
    b = Schedule(loss=0.05, seed=7)
    fates = [a.next() for _ in range(20_000)]
    assert fates == [b.next() for _ in range(20_000)]
    lost = fates.count(None) / len(fates)
    assert 0.044 < lost < 0.056, lost
    assert fates != [Schedule(loss=0.05, seed=8).next() for _ in range(20_000)]
    assert Schedule(seed=1).next() == 0.0


def test_schedule_bursts_keep_the_mean_loss() -> None:
    s = Schedule(loss=0.1, burst=3, seed=3)
    fates = [s.next() for _ in range(30_000)]
    runs: list[int] = []
    run = 0
    for fate in fates:
        if fate is None:
            run += 1
        elif run:
            runs.append(run)
            run = 0
    assert 0.085 < fates.count(None) / len(fates) < 0.115
    # Every loss starts a run of three (two runs may touch, making six).
    assert all(r % 3 == 0 for r in runs), runs[:20]


@given(
    seed=st.integers(0, 2**32),
    loss=st.floats(0, 0.99),
    delay=st.floats(0, 1),
    spread=st.floats(0, 1),
)
def test_schedule_delays_stay_within_jitter(
    seed: int, loss: float, delay: float, spread: float
) -> None:
    jitter = delay * spread
    s = Schedule(loss=loss, delay=delay, jitter=jitter, seed=seed)
    for _ in range(50):
        fate = s.next()
        assert fate is None or delay - jitter - 1e-9 <= fate <= delay + jitter + 1e-9


@pytest.mark.parametrize(
    "kw", [{"loss": 1.0}, {"loss": -0.1}, {"delay": -1}, {"jitter": 0.1}, {"burst": 0}]
)
def test_schedule_refuses_nonsense(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies per field
        Schedule(**kw)


SDP = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n"
    "a=candidate:2 1 tcp 1518280447 127.0.0.1 40001 typ host tcptype passive\r\n"
    "a=end-of-candidates\r\n"
)


def test_rewrite_candidates_points_udp_host_candidates_at_the_relay() -> None:
    assert host_candidate(SDP) == ("127.0.0.1", 40000)
    out = rewrite_candidates(SDP, ("127.0.0.9", 5555))
    assert "a=candidate:1 1 udp 2130706431 127.0.0.9 5555 typ host\r\n" in out
    assert "127.0.0.1 40001 typ host tcptype passive" in out
    with pytest.raises(ValueError, match="no UDP host candidate"):
        rewrite_candidates(SDP.replace("udp", "tcp"), ("127.0.0.9", 5555))


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class _Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: dict[bytes, float] = {}

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got[data] = time.monotonic()


async def test_relay_forwards_both_ways_with_loss_and_delay() -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    server = echo.get_extra_info("sockname")[:2]
    relay = UdpRelay(server, up=Schedule(loss=0.2, seed=1), down=Schedule(delay=0.05, seed=2))
    client, proto = await loop.create_datagram_endpoint(_Collect, local_addr=("127.0.0.1", 0))
    try:
        address = await relay.start()
        sent: dict[bytes, float] = {}
        for i in range(300):
            data = b"\x80" + i.to_bytes(2, "big")
            sent[data] = time.monotonic()
            client.sendto(data, address)
            if i % 50 == 49:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        stats = relay.stats
        assert stats.received["up"] == 300
        assert stats.dropped["up"] + stats.forwarded["up"] == 300
        assert 30 < stats.dropped["up"] < 90  # 20% of 300, seeded
        assert stats.forwarded["down"] == stats.forwarded["up"] == len(proto.got)
        assert stats.dropped["down"] == 0
        # Every echo came back through the relay's delay.
        assert min(proto.got[d] - sent[d] for d in proto.got) >= 0.045
        # A stranger writing to the relay's upstream socket is not forwarded.
        assert relay._back is not None
        stranger, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        stranger.sendto(b"x", relay._back.get_extra_info("sockname")[:2])
        await asyncio.sleep(0.05)
        stranger.close()
        assert stats.dropped["down"] == 1
    finally:
        relay.close()
        client.close()
        echo.close()


async def test_relay_spares_what_lossy_excludes() -> None:
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    relay = UdpRelay(
        echo.get_extra_info("sockname")[:2],
        up=Schedule(loss=0.5, seed=4),
        lossy=is_rtp_or_rtcp,
    )
    client, proto = await loop.create_datagram_endpoint(_Collect, local_addr=("127.0.0.1", 0))
    try:
        address = await relay.start()
        for i in range(100):
            client.sendto(b"\x00\x01" + bytes([i]), address)  # STUN-like: spared
            client.sendto(b"\x90" + bytes([i]), address)  # RTP: may be lost
        # Every datagram through the relay and every echo of what it kept
        # back (ci181: a fixed 0.2 s on a loaded machine had 98 of 100).
        stats, fwd = relay.stats, relay.stats.forwarded
        await wait_until(
            lambda: stats.received["up"] == 200 and len(proto.got) == fwd["down"] == fwd["up"]
        )
        stun = [d for d in proto.got if d[0] == 0]
        rtp = [d for d in proto.got if d[0] == 0x90]
        assert len(stun) == 100
        assert 25 < len(rtp) < 75
    finally:
        relay.close()
        client.close()
        echo.close()


def test_ws_url_accepts_base_ws_and_join_links() -> None:
    assert ws_url("http://h:8080") == ("ws://h:8080/ws", None, None)
    assert ws_url("https://h/ws") == ("wss://h/ws", None, None)
    assert ws_url("https://h/call/room-1?token=abc") == ("wss://h/ws", "abc", "room-1")
    with pytest.raises(ValueError, match="not an http"):
        ws_url("ftp://h/")


# -- calls through the real server ---------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Our own UDP port: other suites (and other engineers' runs) use the default.
    return dataclasses.replace(settings, media_port=free_udp_port())


@pytest.fixture
def loopback_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves loopback out of its host candidates; a loopback call needs it."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class Call:
    """The server under test and the participants a test makes."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.settings = api.app[keys.SETTINGS]
        self.url = str(api.client.make_url("/ws"))
        self.clients: list[CallClient] = []

    def token(
        self,
        room: str,
        identity: str,
        *,
        role: str = "patient",
        admin: bool = False,
        publish: bool = True,
        subscribe: bool = True,
    ) -> str:
        now = dt.datetime.now(dt.UTC)
        grant = RoomGrant(room, identity, identity.title(), role, publish, subscribe, admin)
        return issue_room_token(
            self.settings,
            grant,
            not_before=now - dt.timedelta(seconds=5),
            expires=now + dt.timedelta(hours=1),
        )

    async def join(
        self,
        room: str,
        identity: str,
        *,
        role: str = "patient",
        admin: bool = False,
        sdp_filter: Callable[[str, Any], str] | None = None,
        **options: Any,
    ) -> CallClient:
        client = CallClient(
            self.url,
            self.token(room, identity, role=role, admin=admin),
            label=identity,
            sdp_filter=sdp_filter,
            **options,
        )
        self.clients.append(client)
        answer = await client.join()
        assert answer["type"] == "joined", answer
        # No TURN is configured, so no ICE servers: aiortc must not add its own.
        assert client.ice_servers == []
        return client

    @property
    def media(self) -> Any:
        return self.api.app[MEDIA]

    def forwarder_stats(self) -> dict[str, int]:
        """The worker's forwarding counters (NACKs, retransmissions, keyframe
        requests...) summed over its rooms."""
        return dict(self.media.snapshot()["totals"])


@contextlib.asynccontextmanager
async def calling(api: Api) -> AsyncIterator[Call]:
    """A call on ``api``'s server for the length of the block; its
    participants closed after."""
    c = Call(api)
    try:
        yield c
    finally:
        await asyncio.gather(*(client.close() for client in c.clients), return_exceptions=True)


@contextlib.asynccontextmanager
async def own_call(settings: Settings) -> AsyncIterator[Call]:
    """:func:`calling` on a server of its own built from ``settings``, for a
    test that changes them."""
    from bin.assembly import build_app

    async with served(build_app(settings)) as api, calling(api) as c:
        yield c


@pytest.fixture
async def call(api: Api, loopback_aiortc: None) -> AsyncIterator[Call]:
    async with calling(api) as c:
        yield c


def _room() -> str:
    return "room-" + uuid.uuid4().hex[:8]


def _video(client: CallClient, publisher: CallClient) -> ReceivedTrack | None:
    pid = publisher.participant_id
    assert pid is not None
    tracks = client.received_from(pid, "video")
    return tracks[0] if tracks else None


def _audio(client: CallClient, publisher: CallClient) -> ReceivedTrack | None:
    pid = publisher.participant_id
    assert pid is not None
    tracks = client.received_from(pid, "audio")
    return tracks[0] if tracks else None


def _receiving(client: CallClient, publisher: CallClient, video: int, audio: int) -> bool:
    v, a = _video(client, publisher), _audio(client, publisher)
    return v is not None and a is not None and v.frames >= video and a.frames >= audio


async def test_one_publisher_three_subscribers_all_decode(call: Call) -> None:
    room = _room()
    doctor = await call.join(room, "dr-amina", role="doctor", admin=True)
    early = await call.join(room, "pt-early")
    listed = await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
    assert sorted(t["kind"] for t in listed) == ["audio", "video"]
    assert {t["participant"] for t in listed} == {doctor.participant_id}
    late = [await call.join(room, f"pt-{i}") for i in range(2)]
    # Those who joined after the publish see its tracks in `joined`; the early
    # one learnt of them from `track_published`.
    for sub in late:
        assert set(doctor.published) <= set(sub.room_tracks)
    await early.wait_for("track_published")
    subscribers = [early, *late]

    # 15 fps video and 50 audio frames a second: a few seconds of each.
    def receiving(sub: CallClient) -> Callable[[], bool]:
        return lambda: _receiving(sub, doctor, 30, 100)

    await asyncio.gather(*(s.wait_until(receiving(s), within=40) for s in subscribers))
    for sub in subscribers:
        video, audio = _video(sub, doctor), _audio(sub, doctor)
        assert video is not None
        assert audio is not None
        # The offer's `tracks` mapped each mid to the doctor's own track ids.
        assert video.track_id == doctor.track_id_of("camera")
        assert audio.track_id == doctor.track_id_of("microphone")
        assert (video.width, video.height) == (320, 240)
        assert sub.errors == []
        print(f"{sub.label}: video {video.frames} frames, audio {audio.frames} frames")
    # Nobody else publishes, so the doctor receives nothing.
    assert all(
        r.participant == doctor.participant_id for s in subscribers for r in s.received.values()
    )
    assert not [r for r in doctor.received.values() if r.frames]


async def test_late_subscriber_decodes_within_a_second(call: Call) -> None:
    room = _room()
    doctor = await call.join(room, "dr-late", role="doctor", admin=True)
    await doctor.publish({"camera": TestPatternVideo()})
    first = await call.join(room, "pt-first")
    await first.wait_until(lambda: (v := _video(first, doctor)) is not None and v.frames >= 15, 30)
    # aiortc's VP8 encoder makes a keyframe only every 3000 frames (200 s at
    # 15 fps) or when asked, so the late one's first frame needs the worker
    # to ask the publisher for a keyframe when it subscribes.
    await asyncio.sleep(2)
    before = call.forwarder_stats().get("keyframe_requests", 0)
    late = await call.join(room, "pt-late")
    await late.wait_until(
        lambda: (v := _video(late, doctor)) is not None and v.first_frame_at is not None, 20
    )
    video = _video(late, doctor)
    assert video is not None
    assert video.first_frame_at is not None
    connected = late.connected_at["subscribe"]
    latency = video.first_frame_at - connected
    after = call.forwarder_stats().get("keyframe_requests", 0)
    print(
        f"late subscriber: first decoded frame {latency * 1000:.0f} ms after its subscribe"
        f" connection connected; keyframe requests {before} -> {after}"
    )
    assert latency < 1.0
    assert after > before


def _relayed(relay: UdpRelay) -> Callable[[str, Any], str]:
    """An sdp_filter sending one participant's media through ``relay``."""

    def rewrite(sdp: str, direction: Any) -> str:
        relay.upstream = host_candidate(sdp)
        return rewrite_candidates(sdp, relay.address)

    return rewrite


@pytest.mark.parametrize("connection", ["single", "pair"])
async def test_nat_rebinding_keeps_media_without_renegotiation(call: Call, connection: str) -> None:
    """The patient's NAT gives its peer connection (both, in pair mode) new ports mid-call:
    the worker follows the authenticated media to the new addresses, so both
    directions keep flowing with no new offer. A forged datagram from yet
    another address moves nothing."""
    room = _room()
    placeholder: Address = ("127.0.0.1", 9)
    # A single connection's SDP goes through the filter as "publish".
    legs = ("publish",) if connection == "single" else ("publish", "subscribe")
    relays = {d: UdpRelay(placeholder) for d in legs}
    for relay in relays.values():
        await relay.start()
    negotiations: list[str] = []

    def through_nat(sdp: str, direction: Any) -> str:
        negotiations.append(direction)
        relay = relays[direction]
        relay.upstream = host_candidate(sdp)
        return rewrite_candidates(sdp, relay.address)

    try:
        doctor = await call.join(room, "dr-nat", role="doctor", admin=True, connection=connection)
        await doctor.publish({"camera": TestPatternVideo()})
        patient = await call.join(room, "pt-nat", sdp_filter=through_nat, connection=connection)
        await patient.publish({"camera": TestPatternVideo()})
        await patient.wait_until(lambda: _receiving_video(patient, doctor, 15), 30)
        await doctor.wait_until(lambda: _receiving_video(doctor, patient, 15), 30)
        await asyncio.sleep(0.5)
        negotiated = len(negotiations)
        pcs = (patient.publish_pc, patient.subscribe_pc)
        paths0 = dict(call.media.tables.paths)
        stats0 = call.forwarder_stats()
        down, up = _video(patient, doctor), _video(doctor, patient)
        assert down is not None and up is not None
        down.reset_gap()
        up.reset_gap()
        frames0 = (down.frames, up.frames)
        resyncs0 = patient.keyframe_resyncs

        new = [await relay.rebind() for relay in relays.values()]
        await asyncio.sleep(4.0)

        now = time.monotonic()
        gaps = [max(v.max_gap, now - (v.last_frame_at or 0)) for v in (down, up)]
        paths = {k: call.media.tables.paths[k] - paths0.get(k, 0) for k in call.media.tables.paths}
        stats = call.forwarder_stats()
        print({k: v - stats0.get(k, 0) for k, v in stats.items() if v != stats0.get(k, 0)})
        print(
            f"NAT rebinding to {new}: longest gap down {gaps[0] * 1000:.0f} ms,"
            f" up {gaps[1] * 1000:.0f} ms; frames since"
            f" {down.frames - frames0[0]} down, {up.frames - frames0[1]} up; paths {paths};"
            f" patient's keyframe resyncs {patient.keyframe_resyncs - resyncs0}"
        )
        assert down.frames - frames0[0] >= 30 and up.frames - frames0[1] >= 30
        # Sending: the worker follows the first authenticated packet from the
        # new port. Receiving: it can follow only once the client sends from
        # there, and a receive-only aiortc connection sends nothing but RTCP,
        # every 0.5 to 1.5 s (RFC 3550 6.2's randomised interval; Chromium
        # sends feedback every 50-100 ms), so the worker sends to the old
        # port for up to 1.5 s. The first frame after that is the keyframe
        # the worker asks for when the path moves (what it sent more than 1 s
        # before the client's NACK is past its history, and the client's
        # KeyframeResync lets the decoder start there): one frame interval
        # (67 ms at 15 fps) and an encode later, about 0.15 s. Hence 1.75 s.
        assert gaps[1] < 1.0 and gaps[0] < 1.75, gaps
        assert paths.get("rebinding", 0) >= len(relays), paths  # every transport moved
        # No renegotiation: the same peer connections, no new offer.
        assert (patient.publish_pc, patient.subscribe_pc) == pcs
        assert len(negotiations) == negotiated

        # A stranger replays the patient's SRTP with a broken tag from a new
        # address: it is counted as forged and the path stays where it is.
        worker = call.media
        forged0 = worker.tables.paths["forged"]
        moved0 = worker.tables.paths["moved"]
        ssrc = next(
            ssrc
            for r in worker.snapshot()["rooms"]
            for ssrc in _publisher_ssrcs(worker, r["room"], patient)
        )
        loop = asyncio.get_running_loop()
        stranger, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            packet = bytes([0x80, 96, 0, 1]) + b"\x00" * 4 + ssrc.to_bytes(4, "big") + b"\x55" * 60
            for _ in range(5):
                stranger.sendto(packet, relays["publish"].upstream)
            await asyncio.sleep(0.3)
        finally:
            stranger.close()
        assert worker.tables.paths["forged"] >= forged0 + 5
        assert worker.tables.paths["moved"] == moved0
        assert await _rises(doctor, patient)
    finally:
        for relay in relays.values():
            relay.close()


async def test_ice_restart_offers_new_credentials_and_tells_the_others(call: Call) -> None:
    """``ice_restart``: the subscribe connection gets an offer with new ICE
    credentials and the same sections, and the others see the participant as
    reconnecting, then connected again."""
    room = _room()
    doctor = await call.join(room, "dr-ice", role="doctor", admin=True)
    await doctor.publish({"camera": TestPatternVideo()})
    # The server's side of a subscribe connection's restart; a single
    # connection restarts with the client's own offer, as a publish one does.
    patient = await call.join(room, "pt-ice", connection="pair")
    await patient.wait_until(lambda: _receiving_video(patient, doctor, 10), 30)
    first = await patient.wait_for("offer")
    since_p, since_d = len(patient.history), len(doctor.history)
    restarts = call.media.tables.paths["ice_restart"]

    ok = await patient.request("ice_restart")
    assert ok["type"] == "ok"
    offer = await patient.wait_for("offer", since=since_p)
    old, new = (SessionDescription.parse(o["sdp"]) for o in (first, offer))
    assert new.transport().ice_ufrag != old.transport().ice_ufrag
    assert [m.mid for m in new.media] == [m.mid for m in old.media]
    assert offer["tracks"] == first["tracks"]
    assert call.media.tables.paths["ice_restart"] == restarts + 1
    pid = patient.participant_id
    note = await doctor.wait_for(
        "participant_media", lambda d: d["participant_id"] == pid, since=since_d
    )
    assert note["state"] == "reconnecting"
    # Nobody else hears of it, and the patient is not told about itself.
    assert not [e for e in patient.history[since_p:] if e.type == "participant_media"]
    # Media keeps flowing whichever generation the client checks under.
    video = _video(patient, doctor)
    assert video is not None
    before = video.frames
    await patient.wait_until(lambda: video.frames > before + 10, 10)


def _receiving_video(client: CallClient, publisher: CallClient, frames: int) -> bool:
    """Whether ``client`` has decoded ``frames`` video frames of ``publisher``."""
    v = _video(client, publisher)
    return v is not None and v.frames >= frames


async def _rises(client: CallClient, publisher: CallClient) -> bool:
    v = _video(client, publisher)
    assert v is not None
    before = v.frames
    await client.wait_until(lambda: v.frames > before + 5, 5)
    return True


def _publisher_ssrcs(worker: Any, room: str, publisher: CallClient) -> list[int]:
    """The media SSRCs the worker receives from ``publisher`` in ``room``."""
    forwarder = worker.room_forwarder(room)
    assert forwarder is not None
    return [
        t.ssrc
        for t in forwarder.tracks
        if getattr(t.publisher, "participant", None) == publisher.participant_id
    ]


@pytest.mark.parametrize("leg", ["subscriber", "publisher"])
async def test_five_percent_loss_on_one_leg(call: Call, leg: str) -> None:
    """5% of the RTP and RTCP on one leg is lost, both ways; ICE and DTLS are
    spared so the measurement is of media recovery, not of handshakes."""
    room = _room()
    # Upstream is learnt from the server's SDP (see _relayed).
    placeholder: Address = ("127.0.0.1", 9)
    relay = UdpRelay(
        placeholder,
        up=Schedule(loss=0.05, seed=11),
        down=Schedule(loss=0.05, seed=12),
        lossy=is_rtp_or_rtcp,
    )
    await relay.start()
    try:
        doctor = await call.join(
            room,
            "dr-lossy",
            role="doctor",
            admin=True,
            sdp_filter=_relayed(relay) if leg == "publisher" else None,
        )
        await doctor.publish({"camera": TestPatternVideo()})
        patient = await call.join(
            room, "pt-lossy", sdp_filter=_relayed(relay) if leg == "subscriber" else None
        )
        await patient.wait_until(
            lambda: (v := _video(patient, doctor)) is not None and v.frames >= 15, 30
        )
        video = _video(patient, doctor)
        assert video is not None
        await asyncio.sleep(1)  # warm-up: the encoder settles, NACK state is steady

        stats0 = call.forwarder_stats()
        frames0 = video.frames
        dropped0 = dict(relay.stats.dropped)
        received0 = dict(relay.stats.received)
        video.reset_gap()
        run = 10.0
        await asyncio.sleep(run)
        stats = call.forwarder_stats()
        frames = video.frames - frames0
        gap = max(video.max_gap, time.monotonic() - (video.last_frame_at or 0))
        delta = {k: stats.get(k, 0) - stats0.get(k, 0) for k in stats}
        dropped = {d: relay.stats.dropped[d] - dropped0[d] for d in ("up", "down")}
        received = {d: relay.stats.received[d] - received0[d] for d in ("up", "down")}
        print(
            f"5% loss on the {leg} leg, {run:.0f} s: {frames} frames decoded"
            f" ({frames / run:.1f} fps of 15), longest gap {gap * 1000:.0f} ms;"
            f" relay dropped {dropped['up']}/{received['up']} up,"
            f" {dropped['down']}/{received['down']} down;"
            f" worker: nack_received {delta.get('nack_received')},"
            f" retransmitted {delta.get('retransmitted')},"
            f" nack_unanswered {delta.get('nack_unanswered')},"
            f" nack_requested {delta.get('nack_requested')},"
            f" recovered {delta.get('recovered')},"
            f" keyframe_requests {delta.get('keyframe_requests')};"
            f" subscriber's repeated NACKs {patient.nacks_resent}"
        )
        assert dropped["down"] > 0
        assert dropped["up"] > 0
        assert gap < 1.0
        assert frames >= 0.7 * 15 * run
        if leg == "subscriber":
            # The subscriber's NACKs were answered from the worker's history,
            # enough of them to repair most losses (some drops are RTCP).
            assert delta["retransmitted"] >= dropped["down"] // 2 > 0
        else:
            # The worker saw the publisher's gaps, asked for them, and got them.
            assert delta["nack_requested"] > 0
            assert delta["recovered"] > 0
        assert patient.errors == []
    finally:
        relay.close()


async def test_refused_join_raises_with_the_code(call: Call) -> None:
    room = _room()
    client = CallClient(call.url, "not-a-token", label="bad")
    call.clients.append(client)
    with pytest.raises(RequestFailed) as info:
        await client.join()
    assert info.value.code == "unauthorized"
    assert info.value.fatal
    await client.wait_until(lambda: client.close_code is not None, 5)
    assert client.close_code == 4401
    # A token for another room than the URL's ?room= is forbidden.
    other = CallClient(call.url, call.token("elsewhere", "pt-x"), room=room, label="wrong-room")
    call.clients.append(other)
    with pytest.raises(RequestFailed) as info:
        await other.join()
    assert info.value.code == "forbidden"


async def test_waiting_room_and_admin_actions_through_the_client(call: Call) -> None:
    room = _room()
    patient = CallClient(call.url, call.token(room, "pt-wait"), label="pt-wait")
    call.clients.append(patient)
    first = await patient.join()
    # Nobody with admin is in the room yet.
    assert first["type"] == "waiting"
    assert patient.state == "waiting"
    doctor = await call.join(room, "dr-admin", role="doctor", admin=True)
    await doctor.wait_until(lambda: [w["id"] for w in doctor.waiting] == [patient.participant_id])
    await doctor.admit(str(patient.participant_id))
    await patient.wait_admitted(10)
    assert await patient.ping() < 1.0

    added = await patient.publish({"microphone": ToneAudio()})
    tid = added[0]["track_id"]
    await doctor.wait_for("track_published", lambda f: f["track"]["track_id"] == tid)
    # An admin may mute anyone's track; everyone hears of it.
    await doctor.mute(tid, True)
    await patient.wait_for("track_muted", lambda f: f["track_id"] == tid and f["muted"])
    assert patient.room_tracks[tid]["muted"] is True
    await doctor.wait_until(lambda: [r.track_id for r in doctor.received.values()] == [tid])
    await patient.unpublish(tid)
    await doctor.wait_for("track_unpublished", lambda f: f["track_id"] == tid)
    assert tid not in doctor.room_tracks
    # The server's next offer stops the track's m= section.
    await doctor.wait_until(lambda: not [r for r in doctor.received.values() if r.active])

    # With admission required, a newcomer waits even though an admin is in.
    await doctor.room_settings(require_admission=True)
    newcomer = CallClient(call.url, call.token(room, "pt-new"), label="pt-new")
    call.clients.append(newcomer)
    assert (await newcomer.join())["type"] == "waiting"
    await doctor.wait_for(
        "waiting", lambda f: [w["id"] for w in f["waiting"]] == [newcomer.participant_id]
    )
    await doctor.deny(str(newcomer.participant_id))
    await newcomer.wait_for("denied")
    await newcomer.wait_until(lambda: newcomer.close_code == 4403, 5)

    # A patient may not remove anyone.
    with pytest.raises(RequestFailed) as info:
        await patient.remove(str(doctor.participant_id))
    assert info.value.code == "forbidden"
    assert not info.value.fatal

    await doctor.remove(str(patient.participant_id))
    await patient.wait_for("removed")
    await patient.wait_until(lambda: patient.close_code == 4403, 5)
    await doctor.wait_for(
        "participant_left",
        lambda f: f["participant_id"] == patient.participant_id and f["reason"] == "removed",
    )

    staff = await call.join(room, "staff-1", role="staff", admin=True)
    await doctor.end()
    await staff.wait_for("room_ended")
    await staff.wait_until(lambda: staff.close_code == 4410, 5)


async def test_resume_keeps_the_participant_and_its_media(call: Call) -> None:
    room = _room()
    doctor = await call.join(room, "dr-resume", role="doctor", admin=True)
    await doctor.publish({"camera": TestPatternVideo()})
    patient = await call.join(room, "pt-resume")
    await patient.wait_until(
        lambda: (v := _video(patient, doctor)) is not None and v.frames >= 10, 30
    )
    pid = patient.participant_id
    answer = await patient.resume()
    assert answer["type"] == "joined"
    assert patient.participant_id == pid
    video = _video(patient, doctor)
    assert video is not None
    frames = video.frames
    # The peer connections were not renegotiated and media kept flowing.
    await patient.wait_until(lambda: video.frames >= frames + 15, 10)
    assert len(patient.received) == 1
    assert not [e for e in doctor.history if e.type == "participant_left"]


async def test_command_line_client_joins_and_publishes_a_test_pattern(call: Call) -> None:
    room = _room()
    doctor = await call.join(room, "dr-cli", role="doctor", admin=True)
    link = str(call.api.client.make_url(f"/call/{room}")) + "?token=" + call.token(room, "pt-cli")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wadud_client", "--url", link,
        "--duration", "8", "--report", "1", "--name", "cli",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        joined = await doctor.wait_for(
            "participant_joined", lambda f: f["participant"]["identity"] == "pt-cli", within=30
        )
        cli = str(joined["participant"]["id"])

        def decoding() -> bool:
            video = doctor.received_from(cli, "video")
            audio = doctor.received_from(cli, "audio")
            return bool(video and audio and video[0].frames >= 15 and audio[0].frames >= 50)

        await doctor.wait_until(decoding, within=30)
        await doctor.wait_for("participant_left", lambda f: f["participant_id"] == cli, within=30)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["what"] == "joined"
    published = next(line for line in lines if line["what"] == "published")
    assert sorted(t["source"] for t in published["tracks"]) == ["camera", "microphone"]


async def test_publishing_again_adds_a_track_by_renegotiation(call: Call) -> None:
    room = _room()
    doctor = await call.join(room, "dr-reneg", role="doctor", admin=True)
    patient = await call.join(room, "pt-reneg")
    await doctor.publish({"microphone": ToneAudio()})
    await patient.wait_until(lambda: (a := _audio(patient, doctor)) is not None and a.frames >= 25)
    listed = await doctor.publish({"screen": TestPatternVideo(fps=10)})
    assert sorted((t["kind"], t["source"]) for t in listed) == [
        ("audio", "microphone"),
        ("video", "screen"),
    ]
    await patient.wait_until(lambda: (v := _video(patient, doctor)) is not None and v.frames >= 10)
    video, audio = _video(patient, doctor), _audio(patient, doctor)
    assert video is not None
    assert audio is not None
    assert video.source == "screen"
    frames = audio.frames
    await patient.wait_until(lambda: audio.frames >= frames + 25)
    assert patient.errors == []
    assert doctor.errors == []


class _Deaf(CallClient):
    """A client that never answers the server's pings."""

    async def send(self, type: str, **fields: Any) -> None:
        if type != "pong":
            await super().send(type, **fields)


async def test_client_answers_pings_and_a_silent_one_is_dropped(
    settings: Settings, loopback_aiortc: None
) -> None:
    async with own_call(dataclasses.replace(settings, call_ping_interval=0.2)) as call:
        room = _room()
        doctor = await call.join(room, "dr-ping", role="doctor", admin=True)
        deaf = _Deaf(call.url, call.token(room, "pt-deaf"), label="deaf")
        call.clients.append(deaf)
        assert (await deaf.join())["type"] == "joined"
        # Three unanswered intervals (0.6 s) and the server hangs up (4408);
        # the participant may still resume, so the client says disconnected.
        await deaf.wait_until(lambda: deaf.close_code is not None, 5)
        assert deaf.close_code == 4408
        assert deaf.state == "disconnected"
        await asyncio.sleep(1.0)
        pings = [e for e in doctor.history if e.type == "ping"]
        assert len(pings) >= 5
        assert doctor.state == "joined"
        assert doctor.close_code is None
        assert await doctor.ping() < 1.0


class Muffled(CallClient):
    """A client that stops answering the server's pings while ``muffled``."""

    muffled = False

    async def send(self, type: str, **fields: Any) -> None:
        if type != "pong" or not self.muffled:
            await super().send(type, **fields)


async def test_a_resume_after_the_grace_starts_media_over_as_a_new_participant(
    settings: Settings, loopback_aiortc: None
) -> None:
    """The server forgot a participant whose socket stayed away past the
    resume grace: its resume is answered as a new participant, whose old
    transports are gone. The client publishes again on fresh connections
    and takes the server's next offer on a fresh one, as the page does."""
    changed = dataclasses.replace(settings, call_ping_interval=1.0, call_resume_grace=1.0)
    async with own_call(changed) as call:
        room = _room()
        doctor = await call.join(room, "dr-late", role="doctor", admin=True)
        await doctor.room_settings(require_admission=False)
        await doctor.publish({"camera": TestPatternVideo()})
        patient = Muffled(call.url, call.token(room, "pt-late"), label="pt-late")
        call.clients.append(patient)
        assert (await patient.join())["type"] == "joined"
        await patient.publish({"camera": TestPatternVideo()})
        await doctor.wait_until(
            lambda: (v := _video(doctor, patient)) is not None and v.frames >= 5, 30
        )
        await patient.wait_until(
            lambda: (v := _video(patient, doctor)) is not None and v.frames >= 5, 30
        )
        before = patient.participant_id
        patient.muffled = True
        await patient.wait_until(lambda: patient.state == "disconnected", 10)
        await doctor.wait_for(
            "participant_left", lambda f: f.get("participant_id") == before, within=10
        )
        patient.muffled = False
        answer = await patient.resume()
        assert answer["type"] == "joined" and patient.participant_id != before
        await doctor.wait_until(
            lambda: (v := _video(doctor, patient)) is not None and v.frames >= 5, 30
        )
        await patient.wait_until(
            lambda: (v := _video(patient, doctor)) is not None and v.frames >= 5, 30
        )
        assert patient.errors == [], patient.errors


async def test_views_audio_only_and_quality_reach_the_worker_and_back(call: Call) -> None:
    """``track_view`` with ``visible`` false stops a video (``track_paused``,
    reason ``hidden``) and a visible one brings it back; ``audio_only``
    likewise; everyone hears of each participant's connection quality."""
    room = _room()
    doctor = await call.join(room, "dr-view", role="doctor", admin=True)
    patient = await call.join(room, "pt-view")
    await doctor.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
    await patient.wait_until(lambda: _receiving(patient, doctor, 15, 50), within=30)
    video = _video(patient, doctor)
    assert video is not None

    def frames_in(seconds: float) -> Callable[[], Any]:
        async def count() -> int:
            assert video is not None
            before = video.frames
            await asyncio.sleep(seconds)
            return video.frames - before

        return count

    mark = len(patient.history)
    await patient.send("track_view", track_id=video.track_id, width=640, height=360, visible=False)
    paused = await patient.wait_for("track_paused", since=mark, within=10)
    assert (paused["track_id"], paused["paused"], paused["reason"]) == (
        video.track_id,
        True,
        "hidden",
    )
    await asyncio.sleep(0.5)  # what was in flight
    assert await frames_in(1.5)() <= 1

    mark = len(patient.history)
    await patient.send("track_view", track_id=video.track_id, width=640, height=360, visible=True)
    resumed = await patient.wait_for("track_paused", since=mark, within=10)
    assert resumed["paused"] is False
    assert await frames_in(2.0)() >= 10

    mark = len(patient.history)
    await patient.request("audio_only", enabled=True)
    paused = await patient.wait_for("track_paused", since=mark, within=10)
    assert paused["reason"] == "audio_only"
    await asyncio.sleep(0.5)
    assert await frames_in(1.5)() <= 1
    audio = _audio(patient, doctor)
    assert audio is not None
    before = audio.frames
    await asyncio.sleep(1.0)
    assert audio.frames - before >= 20  # audio goes on
    await patient.request("audio_only", enabled=False)
    assert await frames_in(3.0)() >= 10

    # Connection quality of both participants reaches both.
    for client in (doctor, patient):
        for who in (doctor, patient):
            await client.wait_for(
                "connection_quality",
                lambda f, who=who: f["participant_id"] == who.participant_id,
                within=15,
            )


class _CountedTone(ToneAudio):
    """A tone that counts how often it is read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def recv(self) -> Any:
        self.reads += 1
        return await super().recv()


async def test_a_closed_client_stops_reading_what_it_published(call: Call) -> None:
    """aiortc's MediaRelay reads a source until the source itself ends: a
    client closed long ago went on pulling a frame every 20 ms from each
    track it had published (issue 35's soak: by cycle 400 the load generator
    spent its time on a thousand tones nobody heard). The source is the
    caller's and stays live."""
    tone = _CountedTone()
    doctor = await call.join(_room(), "dr-leaves", role="doctor", admin=True)
    await doctor.publish({"microphone": tone})
    await doctor.wait_until(lambda: "publish" in doctor.connected_at, 20)
    await doctor.wait_until(lambda: tone.reads > 10, 10)
    await doctor.leave()
    await asyncio.sleep(0.1)  # at most the read that was under way
    reads = tone.reads
    await asyncio.sleep(0.5)
    assert tone.reads == reads, f"{tone.reads - reads} frames read after the client closed"
    assert tone.readyState == "live"


async def test_an_offer_under_way_when_the_client_leaves_is_not_an_error(call: Call) -> None:
    """Others leaving make the server ask for offers (``renegotiate``); one
    under way as the client leaves is stopped with the rest of its media,
    not failed on the closed socket (``could not offer again``)."""
    room = _room()
    await call.join(room, "dr-amina", role="doctor", admin=True)
    patient = await call.join(room, "pt-991")
    await patient.wait_until(lambda: "publish" in patient.connected_at, 20)
    patient.media.renegotiate({"audio": 1})
    await patient.leave()
    assert patient.errors == []
