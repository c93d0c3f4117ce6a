"""The media worker with real aiortc peers on loopback: ICE-lite, DTLS-SRTP and
forwarding end to end, through the MediaControl calls signalling makes."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import re
import signal
import statistics
import time
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web
from aioice import stun as astun
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpRrPacket,
    RtcpSrPacket,
    unpack_remb_fci,
)
from prometheus_client import REGISTRY, generate_latest

from benchmarks.sfu import peer
from rtc.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole
from rtc.errors import SdpError, SdpNegotiationError, SdpParseError
from rtc.sdp.session import SessionDescription
from sfu.control.messages import ActiveSpeaker
from sfu.errors import SfuStateError
from sfu.feedback.reports import nack_interval_for
from sfu.node.worker import MediaWorker
from sfu.rooms.actions import Emit
from sfu.rooms.inputs import LeaveRoom
from tests.chromium import CHROMIUM, FLAGS, reporting_site
from tests.polling import wait_until
from tests.sfu.conftest import (
    HEIGHT,
    WIDTH,
    Events,
    MovingVideo,
    Publisher,
    RawPublisher,
    Subscriber,
    Tone,
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


async def watched_call(peers: Any, events: Events, frames: int) -> tuple[Publisher, Subscriber]:
    """The doctor's call (:func:`start_call`) with the patient subscribed to
    all of its tracks until ``frames`` video frames were decoded."""
    publisher = await start_call(peers, events)
    sub = peers(Subscriber, ROOM, "patient")
    await sub.update(list(publisher.tracks.values()))
    await wait_until(lambda: sub.frames["video"] >= frames)
    return publisher, sub


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
    publisher, early = await watched_call(peers, events, 5)
    # aiortc restarts its encoder, a keyframe, when a REMB moves its target
    # bitrate by more than 10%: let the first REMB (from 250 kbit/s on, its
    # floor, it holds) pass, or its keyframe may serve the late subscriber
    # before the worker's own request goes out.
    await wait_until(lambda: _publisher_row(worker)["remb_bitrate"] is not None)
    frames = early.frames["video"]
    await wait_until(lambda: early.frames["video"] >= frames + 10)
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    requests = forwarder.stats.keyframe_requests
    held = forwarder.stats.waiting_keyframe

    late = peers(Subscriber, ROOM, "family")
    await late.update(list(publisher.tracks.values()))
    connected = await events.wait_state("family", "subscribe", "connected")
    await wait_until(lambda: late.frames["video"] >= 1, within=5.0)
    elapsed = late.first["video"] - events.times[id(connected)]
    assert elapsed < 1.0, f"first frame {elapsed:.3f} s after the transport connected"
    # It got there by asking: a PLI went upstream for the late subscriber.
    assert forwarder.stats.keyframe_requests > requests
    assert forwarder.stats.waiting_keyframe >= held


def _publisher_row(worker: MediaWorker) -> dict[str, Any]:
    rows = worker.snapshot()["rooms"][0]["peers"]
    return next(r for r in rows if r["direction"] == "publish")


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
    before = dict(worker.tables.counters)
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
                worker.tables.counters[k] - before.get(k, 0) >= 20 * len(v) for k, v in bad.items()
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
    # The call comes back below by NACKs answered from the history. A loaded
    # machine once stretched this pause past the history's 1 s (ci184's
    # pure-Python pass): no resend repairs that gap, and aiortc, which never
    # asks for a keyframe over a gap, sat it out until its jitter buffer
    # overflowed, 15 s on. What the pause costs is kept repairable here.
    fwd = worker.room_forwarder(ROOM)
    assert fwd is not None
    for track in fwd.tracks:
        track.history.max_age = 10.0
    worker.pause_writing()
    await wait_until(lambda: worker.tables.counters["send_dropped"] >= 20)
    stalled = sub.frames["video"]
    await asyncio.sleep(0.3)
    assert sub.frames["video"] <= stalled + 2
    worker.resume_writing()
    try:
        await wait_until(lambda: sub.frames["video"] >= stalled + 10)
    except TimeoutError:
        # How the subscriber was to get back what the pause cost it: NACKs
        # answered from the history, or a keyframe its PLI asked for.
        raise AssertionError(
            f"frames {dict(sub.frames)} after {stalled} at the pause; forwarder "
            f"{fwd.stats.as_dict()}; counters {dict(worker.tables.counters)}"
        ) from None
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
    publisher, sub = await watched_call(peers, events, 5)
    audio_id, video_id = publisher.tracks["0"], publisher.tracks["1"]
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
    await wait_until(lambda: all(t.state == "closed" for t in transports), within=5.0)


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
            strangers = worker.tables.counters["srtp_stranger"]
            await wait_until(lambda: worker.tables.counters["srtp_stranger"] > strangers)
        finally:
            await publisher.close()


async def test_metrics_name_no_room_or_participant(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    """Issue 12, finding 1: /metrics labelled series by room (a booking's id)
    and participant while a call ran. Now everything is summed per worker."""
    publisher, _ = await watched_call(peers, events, 3)
    text = generate_latest(REGISTRY).decode()
    samples = [line for line in text.splitlines() if line.startswith("sfu_")]
    for secret in (ROOM, "doctor", "patient", "room=", "participant="):
        assert not [line for line in samples if secret in line], secret
    forwarded = re.search(r'^sfu_rtp_total\{event="forwarded"\} (\S+)$', text, re.M)
    assert forwarded is not None and float(forwarded.group(1)) > 0
    received = re.search(
        r'^sfu_peer_packets_received_total\{direction="publish"\} (\S+)$', text, re.M
    )
    assert received is not None and float(received.group(1)) > 0
    sent = re.search(r'^sfu_peer_packets_sent_total\{direction="subscribe"\} (\S+)$', text, re.M)
    assert sent is not None and float(sent.group(1)) > 0
    assert re.search(r'^sfu_peers\{direction="subscribe",state="connected"\} 1\.0$', text, re.M)
    assert re.search(r"^sfu_participants 2\.0$", text, re.M)
    # Counters keep what a departed peer counted.
    before = float(received.group(1))
    await publisher.close()
    await events.wait_state("doctor", "publish", "closed")
    text = generate_latest(REGISTRY).decode()
    after = re.search(r'^sfu_peer_packets_received_total\{direction="publish"\} (\S+)$', text, re.M)
    assert after is not None and float(after.group(1)) >= before


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
    await wait_until(lambda: speakers() == ["doctor"], within=5.0)
    # The patient talks louder, and the doctor falls silent: after the hold, a change.
    doctor.voice, doctor.level = False, 127
    patient.voice, patient.level = True, 10
    await wait_until(lambda: speakers() == ["doctor", "patient"], within=5.0)

    # A muted participant cannot take the floor, however loud.
    await worker.set_muted(ROOM, patient.track_id, True)
    doctor.voice, doctor.level = True, 30
    await wait_until(lambda: speakers() == ["doctor", "patient", "doctor"], within=5.0)
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

    # New ICE credentials on the same connection (same certificate) are an
    # ICE restart (RFC 8445 section 9): the transport stays, with its tracks,
    # and the answer carries new credentials of ours.
    before = SessionDescription.parse(first.pc.remoteDescription.sdp).transport()
    restart = first.pc.localDescription.sdp
    restart = re.sub(r"a=ice-ufrag:\S+", "a=ice-ufrag:rstU", restart)
    restart = re.sub(r"a=ice-pwd:\S+", "a=ice-pwd:restartpassword0123456789", restart)
    restarted = await worker.publish(ROOM, "doctor", restart, {})
    assert restarted.added == [] and restarted.removed == []
    after = SessionDescription.parse(restarted.answer).transport()
    assert (after.ice_ufrag, after.ice_pwd) != (before.ice_ufrag, before.ice_pwd)
    assert worker.tables.paths["ice_restart"] == 1
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
    publisher, sub = await watched_call(peers, events, 3)

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
    assert await sub.update(list(publisher.tracks.values()))
    offer = SessionDescription.parse(sub.offer)
    assert [m.mid for m in offer.media] == ["0", "1", "2", "3"]
    assert offer.bundle is not None and offer.bundle.mids == ["0", "2", "3"]
    await wait_until(lambda: sub.frames["video"] >= frames + 5)
    assert [e.state for e in events.transport("patient", "subscribe")] == ["connected"]


def test_the_worker_takes_each_cores_actions_the_callers_first() -> None:
    """No core takes another's actions, even a core it called (sfu.rooms.actions):
    after an input the worker carries out every core's own queue, the
    negotiator's and the links' before the transports' (which they call),
    and the transports' before the layers' (which they call)."""
    worker = MediaWorker()
    events = Events()
    worker.add_listener(events)
    cores = [worker.negotiator, worker.links, worker.transports, worker.layers]
    said = [ActiveSpeaker(type(core).__name__, None) for core in cores]
    for core, event in reversed(list(zip(cores, said, strict=True))):
        core._out.append(Emit(event))
    worker._receive(worker.transports, LeaveRoom("no room", "nobody"), 0.0)
    assert events.items == said
    assert all(core.take_actions() == [] for core in cores)


# --- RTCP reports and bandwidth feedback --------------------------------------------------


def _ntp_seconds(ntp: int) -> float:
    """Unix time of a 64-bit NTP timestamp (RFC 3550 section 4)."""
    return (ntp >> 32) - 2208988800 + (ntp & 0xFFFFFFFF) / 2**32


def _signed32(value: int) -> int:
    return ((value + 0x80000000) & 0xFFFFFFFF) - 0x80000000


class ReceiverLog:
    """What one aiortc receiver is handed: its RTP packets, SRs and BYEs, with arrival times.

    aiortc's transport calls the receiver's handlers for each packet it routes
    there; this wraps them on the instance, records, and lets aiortc carry on.
    """

    def __init__(self, receiver: Any) -> None:
        self.rtp: list[tuple[float, int, int]] = []
        """(arrival, SSRC, RTP timestamp)."""
        self.srs: list[tuple[float, int, int, int]] = []
        """(arrival, SSRC, NTP timestamp, RTP timestamp)."""
        self.byes: list[tuple[float, list[int]]] = []
        handle_rtp, handle_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def on_rtp(packet: Any, arrival_time_ms: int) -> None:
            self.rtp.append((time.time(), packet.ssrc, packet.timestamp))
            await handle_rtp(packet, arrival_time_ms=arrival_time_ms)

        async def on_rtcp(packet: Any) -> None:
            if isinstance(packet, RtcpSrPacket):
                info = packet.sender_info
                self.srs.append((time.time(), packet.ssrc, info.ntp_timestamp, info.rtp_timestamp))
            elif isinstance(packet, RtcpByePacket):
                self.byes.append((time.time(), list(packet.sources)))
            await handle_rtcp(packet)

        receiver._handle_rtp_packet = on_rtp
        receiver._handle_rtcp_packet = on_rtcp


def _check_sender_reports(log: ReceiverLog, clock_rate: int) -> None:
    """The SRs' NTP time is now, their RTP clock runs at the clock rate and agrees with the
    timestamps of the packets arriving meanwhile (RFC 3550 6.4.1)."""
    assert len(log.srs) >= 3, log.srs
    (ssrc,) = {s for _, s, _, _ in log.srs}
    # The media SSRC's packets (a retransmission, if any, has the RTX SSRC).
    media = [(t, ts) for t, s, ts in log.rtp if s == ssrc]
    assert media
    aheads, lags = [], []
    for arrival, _, ntp, rtp_ts in log.srs:
        # The SR's NTP time is when the worker sent it: this process reads it
        # that much later, more on a loaded machine (checked below, together).
        lags.append(arrival - _ntp_seconds(ntp))
        # Each packet read in the two seconds before the SR, advanced from
        # when it was read to the SR's own NTP time, predicts the SR's
        # timestamp, short by how late this process read that packet (it was
        # sent before the SR: one socket, in order). So the least of those
        # predictions' errors is the SR's own, give or take the one packet
        # this process read promptly. A starved process reads in bursts
        # (ci171: the SR and the packets before it read together, a median
        # over their read times off by 0.35 s both tries), which this does
        # not count against the worker.
        recent = [(t, ts) for t, ts in media if arrival - 2.0 <= t <= arrival]
        if recent:
            sent = _ntp_seconds(ntp)
            aheads.append(
                min(_signed32(rtp_ts - ts) - round((sent - t) * clock_rate) for t, ts in recent)
            )
    # The worker's SRs follow the publisher's NTP/RTP pair, advanced from the
    # pair's own NTP time. aiortc pairs its last packet's send time with that
    # packet's timestamp, so after its encoder stalled (CI saw 0.7 and 1.6 s)
    # its SR leaves with an old pair; read as if it were fresh, the worker's
    # next SRs were behind by the stall. Nor are they behind the newest
    # packet the worker forwarded (a pair taken from a packet aiortc sent
    # late: ci178 saw SRs 0.22 s behind the packets). What is left is this
    # process reading
    # late, so most SRs agree with the packets closely, and none is off by the
    # gross errors (a wrong clock rate, no offset, a stale pair), which are
    # seconds or more.
    assert statistics.median(abs(lag) for lag in lags) < 0.5, lags
    assert max(abs(lag) for lag in lags) < 2.0, lags
    assert aheads
    assert statistics.median(abs(a) for a in aheads) < 0.2 * clock_rate, aheads
    assert max(abs(a) for a in aheads) < 1.5 * clock_rate, aheads
    # The RTP clock runs at the packets' rate, first SR to last: the clock
    # rate, unless the publisher's source fell behind the wall clock (this
    # process starved: ci162 saw 1.7 s lost in 3.5 s, and the publisher's
    # own SRs, which the worker's follow, said so). So the slope is held to
    # that of the packets' timestamps against their arrival over the same
    # span, within 35 %: the clock-rate mistakes (90 kHz for 48 kHz, 8 or
    # 16 kHz) are off by half or more.
    first, last = log.srs[0], log.srs[-1]
    elapsed = _ntp_seconds(last[2]) - _ntp_seconds(first[2])
    assert elapsed > 2.0, log.srs
    rate = _signed32(last[3] - first[3]) / elapsed
    span = [(t, ts) for t, ts in media if first[0] <= t <= last[0]]
    assert len(span) >= 2, (first, last)
    (t0, ts0), (t1, ts1) = span[0], span[-1]
    packets = _signed32(ts1 - ts0) / (t1 - t0)
    assert packets > 0.35 * clock_rate, (packets, span[0], span[-1])
    assert abs(rate - packets) < 0.35 * clock_rate, (rate, packets, elapsed, log.srs)


async def test_subscribers_get_sender_reports_and_the_worker_learns_their_rtt(
    worker: MediaWorker, events: Events, peers: Any
) -> None:
    publisher = await start_call(peers, events)
    audio_id, video_id = publisher.tracks["0"], publisher.tracks["1"]
    sub = peers(Subscriber, ROOM, "patient")
    assert await sub.update([audio_id, video_id])
    logs = {r.track.kind: ReceiverLog(r) for r in sub.pc.getReceivers()}
    await events.wait_state("patient", "subscribe", "connected")

    # Enough SRs to hold their clock to the clock rate: four, over more than
    # two seconds of the worker's own NTP time (its interval is randomized,
    # RFC 3550 6.3.1, so four can come closer together; ci46 saw 1.85 s).
    def spanning(log: ReceiverLog) -> bool:
        srs = log.srs
        return len(srs) >= 4 and _ntp_seconds(srs[-1][2]) - _ntp_seconds(srs[0][2]) > 2.0

    await wait_until(lambda: all(spanning(log) for log in logs.values()), within=15.0)
    _check_sender_reports(logs["audio"], 48000)
    _check_sender_reports(logs["video"], 90000)
    # aiortc turned them into remote-outbound-rtp stats.
    for receiver in sub.pc.getReceivers():
        stats = [s for s in (await receiver.getStats()).values() if s.type == "remote-outbound-rtp"]
        assert stats and stats[0].packetsSent > 0

    # aiortc's receiver reports echo our SRs (LSR/DLSR): the worker has the
    # leg's RTT and spaces upstream NACKs by it.
    def patient_rtt() -> float | None:
        rows = worker.snapshot()["rooms"][0]["peers"]
        (row,) = [r for r in rows if r["participant"] == "patient"]
        return cast(float | None, row["rtt"])

    await wait_until(lambda: patient_rtt() is not None, within=10.0)
    forwarder = worker.room_forwarder(ROOM)
    assert forwarder is not None
    rtt = patient_rtt()
    # Loopback: what it measures is how late the two loaded processes' loops
    # answer, bounded loosely; the point is that it is measured and used.
    assert rtt is not None and 0.0 <= rtt < 2.0, rtt
    assert forwarder.nack_interval == nack_interval_for(rtt)
    text = generate_latest(REGISTRY).decode()
    assert re.search(r'sfu_peer_rtt_seconds\{direction="subscribe",stat="max"\} \S+', text)

    # Unsubscribing from the video says BYE for its SSRC, and its SRs stop.
    video_ssrc = logs["video"].srs[-1][1]
    assert await sub.update([audio_id])
    await wait_until(lambda: bool(logs["video"].byes), within=5.0)
    bye_at, sources = logs["video"].byes[0]
    assert video_ssrc in sources
    audio_reports = len(logs["audio"].srs)
    await wait_until(lambda: len(logs["audio"].srs) >= audio_reports + 2, within=5.0)
    assert [sr for sr in logs["video"].srs if sr[0] > bye_at] == []


async def test_publishers_get_receiver_reports_and_remb(loopback_aiortc: None) -> None:
    # aiortc offers goog-remb and no transport-cc, so it gets REMB, capped here.
    cap = 300_000
    async with MediaWorker(remb_max_bitrate=cap) as worker:
        events = Events()
        worker.add_listener(events)
        publisher = Publisher(worker, ROOM, "doctor")
        publisher.add(Tone())
        publisher.add(MovingVideo())
        try:
            await publisher.negotiate()
            await events.wait_state("doctor", "publish", "connected")
            senders: dict[str, Any] = {s.track.kind: s for s in publisher.pc.getSenders()}
            video = senders["video"]
            rembs: list[tuple[int, list[int]]] = []
            reports: list[Any] = []
            handle_rtcp = video._handle_rtcp_packet

            async def on_rtcp(packet: Any) -> None:
                if isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
                    rembs.append(unpack_remb_fci(packet.fci))
                elif isinstance(packet, RtcpRrPacket):
                    reports.extend(r for r in packet.reports if r.ssrc == video._ssrc)
                await handle_rtcp(packet)

            video._handle_rtcp_packet = on_rtcp

            async def round_trips() -> dict[str, float | None]:
                out: dict[str, float | None] = {}
                for kind, sender in senders.items():
                    for s in (await sender.getStats()).values():
                        if s.type == "remote-inbound-rtp":
                            out[kind] = s.roundTripTime
                return out

            # Our RRs echo aiortc's SRs (LSR/DLSR), so aiortc works out the RTT.
            async with asyncio.timeout(15.0):
                while True:
                    rtts = await round_trips()
                    if len(rtts) == 2 and all(v is not None for v in rtts.values()):
                        break
                    await asyncio.sleep(0.1)
            assert all(0.0 <= cast(float, v) < 0.5 for v in rtts.values()), rtts
            assert reports and reports[-1].packets_lost == 0
            assert reports[-1].lsr != 0

            await wait_until(lambda: len(rembs) >= 2, within=10.0)
            for bitrate, ssrcs in rembs:
                assert ssrcs == [video._ssrc]
                assert 50_000 <= bitrate <= cap
            # aiortc's encoder takes the REMB as its target (within its own
            # bounds, 250 kbit/s to 1.5 Mbit/s): below its 500 kbit/s default.
            encoder = video._RTCRtpSender__encoder
            assert encoder is not None
            assert encoder.target_bitrate == max(250_000, min(rembs[-1][0], 1_500_000))
            assert encoder.target_bitrate <= cap

            rows = worker.snapshot()["rooms"][0]["peers"]
            (row,) = [r for r in rows if r["direction"] == "publish"]
            assert row["remb_bitrate"] is not None and row["remb_bitrate"] <= cap
            assert row["packets_lost"] == 0
            assert row["rtcp_out"] >= len(rembs)
        finally:
            await publisher.close()


async def test_a_failed_subscribe_transport_gets_a_fresh_offer_despite_an_unanswered_one(
    loopback_aiortc: None,
) -> None:
    # The subscribe transport fails (never connected within the timeout)
    # while its offer waits for an answer; signalling then asks for a new one.
    async with MediaWorker(connect_timeout=3.0) as worker:
        events = Events()
        worker.add_listener(events)
        publisher = Publisher(worker, ROOM, "doctor")
        publisher.add(MovingVideo())
        sub = Subscriber(worker, ROOM, "patient")
        try:
            await publisher.negotiate()
            await events.wait_state("doctor", "publish", "connected")
            track_ids = list(publisher.tracks.values())
            assert await worker.subscribe(ROOM, "patient", track_ids) is not None
            await events.wait_state("patient", "subscribe", "failed", limit=8.0)
            assert await sub.update(track_ids)
            await wait_until(lambda: sub.frames["video"] >= 3)
        finally:
            await sub.close()
            await publisher.close()


# --- what the hot path costs -----------------------------------------------------------


async def test_forwarded_packets_per_cpu_second_at_fan_out_10(
    worker: MediaWorker, events: Events, capsys: pytest.CaptureFixture[str]
) -> None:
    """The full worker path, in process: SRTP in, statistics, transport-cc, route, SRTP out, send.

    One synthetic publisher (benchmarks/sfu/peer.py: a Chromium-like VP8 offer
    with RTX, abs-send-time and transport-wide-cc) and ten synthetic
    subscribers do real ICE and DTLS-SRTP with the worker; then pre-protected
    packets go straight into ``datagram_received`` and the subscribers'
    copies out through the real socket. Prints forwarded packets per
    CPU-second of the process (the figure benchmarks/sfu/run.py measures
    across processes). No timing assertion: the machine is shared.
    """
    ssrc = 0x1234
    async with peer.fan_out_in_process(worker, ROOM, ssrc, 0x5678) as publisher:
        # The worker's side of DTLS may finish a flight after the peer's.
        await events.wait_state("doctor", "publish", "connected", limit=5.0)
        for i in range(10):
            await events.wait_state(f"s{i}", "subscribe", "connected", limit=5.0)
        assert publisher.srtp is not None
        stream = peer.Stream(0, ssrc)
        warmup, measured = 60, 6 * 600  # packets: a keyframe first, then 20 s of video
        plain = peer.build_frames(stream, (warmup + measured) // 6, 6, fps=30)
        packets = peer.protect_all(publisher.srtp, plain)
        address = ("127.0.0.1", publisher.port)
        forwarder = worker.room_forwarder(ROOM)
        assert forwarder is not None
        for data in packets[:warmup]:
            worker.datagram_received(data, address)
        forwarded = forwarder.stats.forwarded
        begin = time.process_time()
        for data in packets[warmup:]:
            worker.datagram_received(data, address)
        cpu = time.process_time() - begin
        forwarded = forwarder.stats.forwarded - forwarded
        with capsys.disabled():
            print(
                f"\nworker path at fan-out 10: {forwarded / cpu:,.0f} forwarded packets per "
                f"CPU-second ({cpu / measured * 1e6:.1f} us per packet in)"
            )
        assert forwarded == 10 * measured

        # The measured path recorded transport-cc arrivals: they become feedback.
        def doctor() -> dict[str, Any]:
            rows = worker.snapshot()["rooms"][0]["peers"]
            return next(r for r in rows if r["participant"] == "doctor")

        await wait_until(lambda: (doctor()["twcc_feedback"] or 0) > 0, within=5.0)


# --- Chromium as a publisher: transport-cc ----------------------------------------------

# What Chromium's estimate must reach on our feedback, whether or not its
# start-up probes are measured well (see the test's docstring).
BWE_FLOOR = 600_000  # bit/s: twice the 300 kbit/s it starts at
BWE_OVER_SENT = 1.25  # times what it sent over the last second

# Publishes camera and microphone to the worker (the test serves /offer), then
# reads its own getStats() every 100 ms: the sender's bandwidth estimate
# (candidate-pair availableOutgoingBitrate), what it sent over the last second
# (outbound-rtp payload and header bytes, audio and video) and what our
# receiver reports told it (remote-inbound-rtp); posts them once the estimate
# passed the bar of the test below with both RTTs known, or after 25 s.
PUBLISH_PAGE = """<!doctype html><html><body><script>
const sleep = ms => new Promise(r => setTimeout(r, ms));
async function main() {
  const pc = new RTCPeerConnection();
  const stream = await navigator.mediaDevices.getUserMedia(
    {audio: true, video: {width: 640, height: 480}});
  stream.getTracks().forEach(t => pc.addTransceiver(t, {direction: 'sendonly', streams: [stream]}));
  await pc.setLocalDescription(await pc.createOffer());
  const answer = await (await fetch('/offer', {method: 'POST', body: pc.localDescription.sdp}));
  await pc.setRemoteDescription({type: 'answer', sdp: await answer.text()});
  const history = [];  // [stats time in ms, bytes sent so far]
  const deadline = performance.now() + 45000;
  let row = {};
  while (performance.now() < deadline) {
    await sleep(100);
    row = {bwe: 0, sent: null, remote: {}};
    let at = 0, bytes = 0;
    (await pc.getStats()).forEach(s => {
      if (s.type === 'candidate-pair' && s.nominated && s.availableOutgoingBitrate)
        row.bwe = s.availableOutgoingBitrate;
      if (s.type === 'outbound-rtp') {
        bytes += s.bytesSent + s.headerBytesSent;
        at = s.timestamp;
      }
      if (s.type === 'remote-inbound-rtp')
        row.remote[s.kind] = {rtt: s.roundTripTime, lost: s.packetsLost, jitter: s.jitter};
    });
    history.push([at, bytes]);
    const before = history.filter(([t]) => t <= at - 1000).pop();
    if (before) row.sent = (bytes - before[1]) * 8000 / (at - before[0]);
    const rtts = Object.values(row.remote).filter(r => r.rtt !== undefined);
    const bar = Math.max(BWE_FLOOR, BWE_OVER_SENT * row.sent);
    if (row.sent && row.bwe >= bar && rtts.length === 2) break;
  }
  await fetch('/result', {method: 'POST', body: JSON.stringify(row)});
}
main().catch(e => fetch('/result', {method: 'POST', body: JSON.stringify({error: String(e)})}));
</script></body></html>""".replace("BWE_FLOOR", str(BWE_FLOOR)).replace(
    "BWE_OVER_SENT", str(BWE_OVER_SENT)
)


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="needs /usr/bin/chromium")
async def test_chromium_publisher_gets_transport_cc_feedback_and_receiver_reports(
    worker: MediaWorker, events: Events, tmp_path: Path
) -> None:
    """Chromium negotiates transport-cc; fed back, its estimator ramps up.

    Without the feedback its estimate falls from the 300 kbit/s it starts at
    (to under 100 kbit/s here within 20 s, the video held at 30 kbit/s for
    "bandwidth"). With it, the estimate rises past what Chromium sends: the
    fake camera's 640x480 VP8 at 20 fps is only 500 to 600 kbit/s of audio and
    video whatever the encoder is allowed, so a fixed 1 Mbit/s bar was met
    only through the start-up probes (idle here: 3.3 Mbit/s within 0.4 s).
    A probe's result is read from our arrival times, so when a probe
    cluster's arrivals come out bunched the result comes out low, and in the
    application-limited region the estimate then climbs on feedback only to
    about 1.5 times the acknowledged rate (GoogCC's cap: about 870 kbit/s
    here with the probes held to 600 kbit/s by field trial, 856 kbit/s once
    in CI under load), where it stays however long one waits; and a stall
    that reads as queueing drops the estimate to 0.85 times the acknowledged
    rate, to climb back on feedback (here from 509 to 728 kbit/s in 6 s).
    Both were what a worker starved of CPU did while it stamped arrivals
    when its loop read them; the kernel's stamps (sfu/node/arrival.py, the test
    above) leave only the kernel's own delays. Hence time to get there: 45 s
    (25 s fell short once, in the pure-Python pass of a full run). So the bar
    is relative to what was sent and met in each case, while a worker that
    sends no feedback, or feedback that keeps reading as queueing or loss,
    holds the estimate under 100 kbit/s and the traffic with it (checked here
    by patching the recorder to each, 84 kbit/s both times).
    """

    async def offer(request: web.Request) -> web.Response:
        published = await worker.publish(ROOM, "doctor", await request.text(), {})
        return web.Response(text=published.answer)

    async with reporting_site(PUBLISH_PAGE, [web.post("/offer", offer)]) as site:
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", site.url,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            outcome = await asyncio.wait_for(site.result, 60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            await browser.wait()
    assert "error" not in outcome, outcome
    assert outcome["sent"], outcome
    assert outcome["bwe"] >= max(BWE_FLOOR, BWE_OVER_SENT * outcome["sent"]), outcome
    # Chromium worked out the RTT from our RRs' LSR/DLSR; nothing was lost on loopback.
    assert set(outcome["remote"]) == {"audio", "video"}, outcome
    for kind, remote in outcome["remote"].items():
        assert 0 <= remote["rtt"] < 0.5, (kind, remote)
        assert remote["lost"] == 0, (kind, remote)
    rows = worker.snapshot()["rooms"][0]["peers"]
    (row,) = [r for r in rows if r["participant"] == "doctor"]
    assert row["twcc_feedback"] > 0 and row["remb_bitrate"] is None
