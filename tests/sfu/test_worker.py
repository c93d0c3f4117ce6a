"""The media worker with real aiortc peers on loopback: ICE-lite, DTLS-SRTP and
forwarding end to end, through the MediaControl calls signalling makes."""

from __future__ import annotations

import asyncio
import datetime
import re
from typing import Any

import pytest
from aioice import stun as astun
from prometheus_client import REGISTRY, generate_latest

from rtc.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole
from rtc.errors import SdpError, SdpNegotiationError, SdpParseError
from rtc.sdp import SessionDescription
from sfu.control import ActiveSpeaker
from sfu.errors import SfuStateError
from sfu.worker import MediaWorker
from tests.sfu.conftest import (
    HEIGHT,
    WIDTH,
    Events,
    MovingVideo,
    Publisher,
    RawPublisher,
    Subscriber,
    Tone,
    wait_until,
)

ROOM = "consult-1"


async def start_call(peers: Any, events: Events, *, video: bool = True) -> Publisher:
    publisher: Publisher = peers(Publisher, ROOM, "doctor")
    publisher.add(Tone())
    if video:
        publisher.add(MovingVideo())
    result = await publisher.negotiate()
    kinds = ["audio", "video"] if video else ["audio"]
    assert [t.kind for t in result.added] == kinds
    assert [t.source for t in result.added] == ["microphone", "camera"][: len(kinds)]
    assert result.removed == []
    await events.wait_state("doctor", "publish", "connected")
    return publisher


async def test_one_publisher_two_subscribers_decode_audio_and_video(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events)
    track_ids = list(publisher.tracks.values())
    subs = [peers(Subscriber, ROOM, name) for name in ("patient", "interpreter")]
    for sub in subs:
        assert await sub.update(track_ids)
        # The offer names each track by msid, so signalling can map mids to tracks.
        for track_id in track_ids:
            assert f"a=msid:doctor {track_id}" in sub.offer
    for sub in subs:
        await events.wait_state(sub.participant, "subscribe", "connected")
    await wait_until(lambda: all(s.frames["video"] >= 10 and s.frames["audio"] >= 10 for s in subs))
    for sub in subs:
        assert sub.sizes == {(WIDTH, HEIGHT)}
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    assert forwarder.stats.forwarded > 0
    assert forwarder.stats.malformed == 0
    assert forwarder.stats.unknown_ssrc == 0
    # Nothing changed: no new offer.
    assert await subs[0].update(track_ids) is False


async def test_late_subscriber_gets_a_keyframe_within_a_second(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events)
    track_ids = list(publisher.tracks.values())
    early = peers(Subscriber, ROOM, "patient")
    await early.update(track_ids)
    await wait_until(lambda: early.frames["video"] >= 5)
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    requests = forwarder.stats.keyframe_requests
    held = forwarder.stats.waiting_keyframe

    late = peers(Subscriber, ROOM, "family")
    await late.update(track_ids)
    connected = await events.wait_state("family", "subscribe", "connected")
    await wait_until(lambda: late.frames["video"] >= 1, limit=5.0)
    elapsed = late.first["video"] - events.times[id(connected)]
    assert elapsed < 1.0, f"first frame {elapsed:.3f} s after the transport connected"
    # It got there by asking: a PLI went upstream for the late subscriber.
    assert forwarder.stats.keyframe_requests > requests
    assert forwarder.stats.waiting_keyframe >= held


class _Sink(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)


def _stun(username: str, pwd: str) -> bytes:
    msg = astun.Message(message_method=astun.Method.BINDING, message_class=astun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLING"] = 42
    msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity(pwd.encode())
    msg.add_fingerprint()
    return bytes(msg)


async def test_bad_input_is_dropped_and_counted_while_the_call_flows(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events)
    sub = peers(Subscriber, ROOM, "patient")
    await sub.update(list(publisher.tracks.values()))
    await wait_until(lambda: sub.frames["video"] >= 5 and sub.frames["audio"] >= 5)
    match = re.search(r"a=ice-ufrag:(\S+)", publisher.answer)
    assert match is not None
    ufrag = match.group(1)

    hello = DtlsEndpoint(
        DtlsCertificate.generate(datetime.datetime.now(datetime.UTC)),
        DtlsRole.CLIENT,
        [("sha-256", "AA:" * 31 + "AA")],
    )
    hello.start(0.0)
    client_hello = hello.datagrams_to_send()[0]
    bad = {
        "garbage": [b"\xff" * 50, b"\x50\x00\x00\x04abcd", b"\x10" * 30],
        "dtls_stranger": [client_hello],
        "srtp_stranger": [b"\x80\x60" + bytes(100), b"\x80\xc8" + bytes(60)],
        "stun_unknown_ufrag": [_stun("nobody:browser", "x" * 22)],
        "stun_refused": [_stun(f"{ufrag}:browser", "not-the-right-password")],
    }
    before = dict(worker.counters)
    frames = sub.frames["video"]
    loop = asyncio.get_running_loop()
    sink = _Sink()
    transport, _ = await loop.create_datagram_endpoint(lambda: sink, local_addr=("127.0.0.1", 0))
    try:
        for _ in range(20):
            for datagrams in bad.values():
                for data in datagrams:
                    transport.sendto(data, worker.address)
            # An empty datagram (the loop may not even deliver it) must not hurt either.
            transport.sendto(b"", worker.address)
            await asyncio.sleep(0.01)
        await wait_until(
            lambda: all(
                worker.counters[k] - before.get(k, 0) >= 20 * len(v) for k, v in bad.items()
            )
        )
        # The wrong password got a 401 (RFC 8445 7.3.1.1), nothing else came back.
        await wait_until(lambda: len(sink.received) >= 20)
        answers = [astun.parse_message(d) for d in sink.received]
        assert {(m.message_class, m.attributes["ERROR-CODE"][0]) for m in answers} == {
            (astun.Class.ERROR, 401)
        }
    finally:
        transport.close()
    # The call never noticed.
    await wait_until(lambda: sub.frames["video"] >= frames + 15)

    # When the socket pushes back, the worker drops (and counts) rather than queue.
    worker.pause_writing()
    await wait_until(lambda: worker.counters["send_dropped"] >= 20)
    stalled = sub.frames["video"]
    await asyncio.sleep(0.3)
    assert sub.frames["video"] <= stalled + 2
    worker.resume_writing()
    await wait_until(lambda: sub.frames["video"] >= stalled + 10)
    assert events.transport("doctor", "publish")[-1].state == "connected"
    assert events.transport("patient", "subscribe")[-1].state == "connected"

    # Malformed and unanswerable SDP are typed errors and leave nothing behind.
    transports = worker.snapshot()["transports"]
    with pytest.raises(SdpParseError):
        await worker.publish(ROOM, "mallory", "v=0\r\nthis is not sdp", {})
    offer = SessionDescription.parse(publisher.pc.localDescription.sdp)
    for media in offer.media:
        media.ice_ufrag = media.ice_pwd = None
    offer.ice_ufrag = offer.ice_pwd = None
    with pytest.raises(SdpNegotiationError):
        await worker.publish(ROOM, "mallory", str(offer), {})
    with pytest.raises(SdpError):
        await worker.publish("elsewhere", "mallory", "v=0\r\n", {})
    assert worker.snapshot()["transports"] == transports
    assert sorted(worker.rooms()) == [ROOM]
    with pytest.raises(SfuStateError):
        await worker.answer(ROOM, "patient", sub.pc.localDescription.sdp)
    with pytest.raises(SfuStateError):
        await sub.update(["t-nope"])


async def test_renegotiation_adds_a_track_and_subscribers_follow(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events, video=False)
    sub = peers(Subscriber, ROOM, "patient")
    assert await sub.update(list(publisher.tracks.values()))
    await wait_until(lambda: sub.frames["audio"] >= 5)

    # The same connection now offers a screen share too.
    publisher.add(MovingVideo())
    result = await publisher.negotiate({"1": "screen"})
    assert [(t.kind, t.source, t.mid) for t in result.added] == [("video", "screen", "1")]
    assert result.removed == []
    assert len(events.transport("doctor", "publish")) == 1  # same transport, still up

    assert await sub.update(list(publisher.tracks.values()))
    await wait_until(lambda: sub.frames["video"] >= 5)
    assert sub.sizes == {(WIDTH, HEIGHT)}

    # A section that no longer sends removes its track (aiortc still offers
    # a stopped transceiver as sendonly, so make it inactive).
    screen_id = publisher.tracks["1"]
    publisher.pc.getTransceivers()[1].direction = "inactive"
    result = await publisher.negotiate()
    assert result.added == []
    assert result.removed == [screen_id]
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    assert [t.is_video for t in forwarder.tracks] == [False]


async def test_mute_unpublish_and_leave_clean_up(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events)
    audio_id, video_id = publisher.tracks["0"], publisher.tracks["1"]
    sub = peers(Subscriber, ROOM, "patient")
    await sub.update([audio_id, video_id])
    await wait_until(lambda: sub.frames["video"] >= 5)
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None

    # Muting stops forwarding; unmuting resumes video from a keyframe.
    await worker.set_muted(ROOM, video_id, True)
    await asyncio.sleep(0.3)
    frozen = sub.frames["video"]
    await asyncio.sleep(0.5)
    assert sub.frames["video"] <= frozen + 1
    requests = forwarder.stats.keyframe_requests
    await worker.set_muted(ROOM, video_id, False)
    await wait_until(lambda: sub.frames["video"] >= frozen + 5)
    assert forwarder.stats.keyframe_requests > requests

    await worker.unpublish(ROOM, "doctor", video_id)
    assert [t.is_video for t in forwarder.tracks] == [False]
    assert [len(t.subscriptions) for t in forwarder.tracks] == [1]
    with pytest.raises(SfuStateError):
        await sub.update([audio_id, video_id])
    # The next offer keeps the video section, stopped (port 0), so mids line up.
    assert await sub.update([audio_id])
    stopped = SessionDescription.parse(sub.offer).media_by_mid("1")
    assert stopped is not None and stopped.port == 0
    audio = sub.frames["audio"]
    await wait_until(lambda: sub.frames["audio"] >= audio + 5)

    with pytest.raises(SfuStateError):
        await worker.unpublish(ROOM, "patient", audio_id)  # not theirs
    await worker.leave(ROOM, "doctor")
    assert forwarder.tracks == []
    closed = await events.wait_state("doctor", "publish", "closed")
    assert closed.reason == "left"
    await worker.leave(ROOM, "patient")
    await events.wait_state("patient", "subscribe", "closed")
    assert worker.rooms() == []
    assert worker.snapshot()["transports"] == 0
    await worker.leave(ROOM, "patient")  # idempotent
    await worker.close_room(ROOM)


async def test_close_room_closes_everyone(worker: MediaWorker, events: Events, peers: Any) -> None:
    publisher = await start_call(peers, events)
    sub = peers(Subscriber, ROOM, "patient")
    await sub.update(list(publisher.tracks.values()))
    await events.wait_state("patient", "subscribe", "connected")
    await worker.close_room(ROOM)
    assert worker.rooms() == []
    assert {(e.participant, e.state) for e in events.transport("doctor", "publish")} >= {
        ("doctor", "closed")
    }
    assert events.transport("patient", "subscribe")[-1].state == "closed"
    # The worker said goodbye with a DTLS close_notify, which aiortc heard.
    transports = [p.pc.getTransceivers()[0].sender.transport for p in (publisher, sub)]
    await wait_until(lambda: all(t.state == "closed" for t in transports), limit=5.0)


async def test_a_transport_whose_consent_checks_stop_fails(loopback_aiortc: None) -> None:
    # aioice sends consent checks every 5 s (RFC 7675 allows that), so a
    # 1 s consent timeout sees them stop.
    async with MediaWorker(consent_timeout=1.0) as worker:
        events = Events()
        worker.add_listener(events)
        publisher = Publisher(worker, ROOM, "doctor")
        publisher.add(Tone())
        try:
            await publisher.negotiate()
            await events.wait_state("doctor", "publish", "connected")
            failed = await events.wait_state("doctor", "publish", "failed", limit=5.0)
            assert "consent" in failed.reason
            assert worker.snapshot()["transports"] == 0
            strangers = worker.counters["srtp_stranger"]
            await wait_until(lambda: worker.counters["srtp_stranger"] > strangers)
        finally:
            await publisher.close()


async def test_metrics_per_room_and_peer(worker: MediaWorker, events: Events, peers: Any) -> None:
    publisher = await start_call(peers, events)
    sub = peers(Subscriber, ROOM, "patient")
    await sub.update(list(publisher.tracks.values()))
    await wait_until(lambda: sub.frames["video"] >= 3)
    text = generate_latest(REGISTRY).decode()
    forwarded = re.search(r'sfu_room_rtp_total\{event="forwarded",room="consult-1"\} (\S+)', text)
    assert forwarded is not None and float(forwarded.group(1)) > 0
    received = re.search(
        r'sfu_peer_packets_received_total\{direction="publish",participant="doctor",'
        r'room="consult-1"\} (\S+)',
        text,
    )
    assert received is not None and float(received.group(1)) > 0
    sent = re.search(
        r'sfu_peer_packets_sent_total\{direction="subscribe",participant="patient",'
        r'room="consult-1"\} (\S+)',
        text,
    )
    assert sent is not None and float(sent.group(1)) > 0
    assert (
        'sfu_peer_connected{direction="subscribe",participant="patient",room="consult-1"} 1.0'
        in text
    )


async def test_active_speaker_follows_audio_levels(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    doctor: RawPublisher = peers(RawPublisher, ROOM, "doctor")
    patient: RawPublisher = peers(RawPublisher, ROOM, "patient")
    await doctor.start()
    await patient.start()
    await events.wait_state("doctor", "publish", "connected")
    await events.wait_state("patient", "publish", "connected")

    def speakers() -> list[str | None]:
        return [e.participant for e in events.items if isinstance(e, ActiveSpeaker)]

    doctor.voice, doctor.level = True, 20  # -20 dBov, speaking
    await wait_until(lambda: speakers() == ["doctor"], limit=5.0)
    # The patient talks louder, and the doctor falls silent: after the hold, a change.
    doctor.voice, doctor.level = False, 127
    patient.voice, patient.level = True, 10
    await wait_until(lambda: speakers() == ["doctor", "patient"], limit=5.0)

    # A muted participant cannot take the floor, however loud.
    await worker.set_muted(ROOM, patient.track_id, True)
    doctor.voice, doctor.level = True, 30
    await wait_until(lambda: speakers() == ["doctor", "patient", "doctor"], limit=5.0)
    patient.voice, patient.level = False, 127
    await worker.set_muted(ROOM, patient.track_id, False)

    # SRTP that fails authentication from a connected peer's own address is
    # counted on that peer and dropped; its real packets keep flowing.
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    received = forwarder.stats.received
    for _ in range(10):
        doctor.send(doctor.rtp()[:12] + b"\x00" * 80)
    await wait_until(lambda: forwarder.stats.received > received + 10)
    peer_rows = worker.snapshot()["rooms"][0]["peers"]
    errors = {r["participant"]: r["srtp_errors"] for r in peer_rows}
    assert errors["doctor"] >= 10

    # Silence for longer than the detector's window, then the speaker leaves:
    # nobody else is loud enough to take over.
    doctor.voice, doctor.level = False, 127
    await asyncio.sleep(1.2)
    assert speakers()[-1] == "doctor"  # the floor stays through silence
    await worker.leave(ROOM, "doctor")
    assert speakers()[-1] is None


async def test_a_new_publish_connection_replaces_the_old_one(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    first = await start_call(peers, events, video=False)
    old_ids = list(first.tracks.values())

    # An ICE restart on the same connection (same certificate) is refused:
    # its DTLS association would have to survive on a new transport.
    restart = first.pc.localDescription.sdp
    restart = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:rstU", restart)
    restart = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:restartpassword0123456789", restart)
    with pytest.raises(SdpNegotiationError):
        await worker.publish(ROOM, "doctor", restart, {})
    assert list(first.tracks.values()) == old_ids

    # A new RTCPeerConnection (new credentials and certificate) takes over.
    second: Publisher = peers(Publisher, ROOM, "doctor")
    second.add(Tone())
    result = await second.negotiate()
    assert result.removed == old_ids
    assert [t.kind for t in result.added] == ["audio"]
    closed = await events.wait_state("doctor", "publish", "closed")
    assert "replaced" in closed.reason
    connected = [e for e in events.transport("doctor", "publish") if e.state == "connected"]
    await wait_until(
        lambda: (
            len(connected)
            < len([e for e in events.transport("doctor", "publish") if e.state == "connected"])
        )
    )
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    assert len(forwarder.tracks) == 1


async def test_the_bundle_tagged_section_is_parked_not_rejected(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events)
    track_ids = list(publisher.tracks.values())
    sub = peers(Subscriber, ROOM, "patient")
    await sub.update(track_ids)
    await wait_until(lambda: sub.frames["video"] >= 3)

    # Unsubscribing from everything still offers: the first section keeps its
    # port and the BUNDLE tag, inactive, so the transport stays the same.
    assert await sub.update([])
    offer = SessionDescription.parse(sub.offer)
    first, second = offer.media
    assert first.mid == "0" and first.port != 0
    assert first.direction is not None and first.direction.value == "inactive"
    assert first.ssrcs == [] and first.msids == []
    assert second.port == 0
    assert offer.bundle is not None and offer.bundle.mids == ["0"]
    frames = sub.frames["video"]
    await asyncio.sleep(0.3)
    assert sub.frames["video"] <= frames + 1

    # Subscribing again adds sections on the same, still connected transport.
    assert await sub.update(track_ids)
    offer = SessionDescription.parse(sub.offer)
    assert [m.mid for m in offer.media] == ["0", "1", "2", "3"]
    assert offer.bundle is not None and offer.bundle.mids == ["0", "2", "3"]
    await wait_until(lambda: sub.frames["video"] >= frames + 5)
    assert [e.state for e in events.transport("patient", "subscribe")] == ["connected"]
