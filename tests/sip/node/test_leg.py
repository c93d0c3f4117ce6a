"""One phone call's media (sip/node/leg.py) over real UDP sockets on
loopback: two legs back to back, one standing in for the phone, agree
their media through the SDP offer/answer of sip/wire/sdp.py, then audio,
digits, keys, prompts, latching and timeouts are checked on what actually
crossed the sockets.

The leg that stands in for the phone runs on a loop of its own, in its own
thread: a phone's clock is not the bridge's. On one loop the two clocks'
timers fall due in the same iteration whenever the loop is late, and the
receiver's tick then runs before the sender's packet is read: a frame of
jitter no network made."""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from rtc.sdp.attributes import Direction
from sip.audio.dtmf import event_packets
from sip.audio.pcm import ROOM_FRAME, ROOM_RATE, Pcm
from sip.audio.tones import tone as key_tone
from sip.formats import PHONE_CODECS
from sip.node.leg import PhoneLeg
from sip.node.sdes import SdesSession
from sip.node.voice import Voice
from sip.wire.sdp import Crypto, PhoneMedia, SrtpSuite, answer_offer, make_offer, read_answer
from tests.conftest import free_udp_port
from tests.polling import wait_until
from tests.sip.audio.signals import peak_frequency, rms_db, tone

HOST = "127.0.0.1"
#: UDP ports these tests' legs bind in: below the ephemeral range and away
#: from the ports tests.conftest draws (10000-19999) and tests.cluster's.
PORTS = range(20000, 24000)
PIN = "40981275#"
FRAME = 0.02


@dataclass
class Ear:
    """What a leg handed out; ``feed`` is called each tick before the leg
    sends, so audio pushed from it goes out in that same tick."""

    frames: list[tuple[float, Pcm]] = field(default_factory=list)
    digits: list[str] = field(default_factory=list)
    dead: list[str] = field(default_factory=list)
    feed: Callable[[], None] | None = None

    def on_audio(self, pcm: Pcm) -> None:
        # The phone's voice at its codec's rate: 8 kHz, 16 kHz for G.722.
        assert pcm.dtype == np.int16 and pcm.shape in ((160,), (320,))
        self.frames.append((time.monotonic(), pcm))
        if self.feed is not None:
            self.feed()

    def audio(self) -> Pcm:
        return np.concatenate([pcm for _, pcm in self.frames])

    @property
    def rate(self) -> int:
        """The sample rate of what the leg handed out (20 ms frames)."""
        return self.frames[0][1].shape[0] * 50


async def open_leg(ear: Ear, **options: Any) -> PhoneLeg:
    return await PhoneLeg.open(
        HOST,
        PORTS,
        on_audio=ear.on_audio,
        on_digit=ear.digits.append,
        on_dead=ear.dead.append,
        **options,
    )


def phone_offer(codec: str, port: int, *, dtmf: bool = True, crypto: Crypto | None = None) -> str:
    """What a phone offering only ``codec`` would send."""
    pt = PHONE_CODECS[codec].payload_type
    lines = [
        "v=0", f"o=phone 1 1 IN IP4 {HOST}", "s=-", f"c=IN IP4 {HOST}", "t=0 0",
        f"m=audio {port} {'RTP/SAVP' if crypto else 'RTP/AVP'} {pt}{' 101' if dtmf else ''}",
        f"a=rtpmap:{pt} {codec}/8000",
    ]  # fmt: skip
    if dtmf:
        lines += ["a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-15"]
    lines += ["a=ptime:20", "a=sendrecv"]
    if crypto is not None:
        lines.append(f"a=crypto:{crypto}")
    return "\r\n".join(lines) + "\r\n"


class PhoneSide:
    """A loop in a thread of its own, for the leg that stands in for the phone."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        async def inside() -> Any:
            return function(*args)

        return await self.run(inside())

    async def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        await asyncio.to_thread(self.thread.join, 5)
        self.loop.close()


@dataclass
class Call:
    bridge: PhoneLeg
    phone: PhoneLeg
    bridge_ear: Ear
    phone_ear: Ear
    bridge_media: PhoneMedia
    phone_media: PhoneMedia
    side: PhoneSide

    async def close_phone(self) -> None:
        await self.side.call(self.phone.close)

    async def close(self) -> None:
        self.bridge.close()
        await self.close_phone()
        await self.side.stop()


async def call(
    codec: str = "PCMU",
    *,
    dtmf: bool = True,
    suite: SrtpSuite | None = None,
    **options: Any,
) -> Call:
    """The bridge's leg and a phone's, media agreed by offer and answer."""
    bridge_ear, phone_ear = Ear(), Ear()
    side = PhoneSide()
    bridge = await open_leg(bridge_ear, **options)
    phone: PhoneLeg = await side.run(open_leg(phone_ear))
    bridge_key = phone_key = None
    if suite is not None:
        bridge_key, phone_key = os.urandom(30), os.urandom(30)
    if codec == "G722" and dtmf and suite in (None, SrtpSuite.AES_CM_128_HMAC_SHA1_80):
        # The bridge's own offer (dial-out) lists G.722 first and digits.
        offer = make_offer(HOST, phone.port, session_id=2, key=phone_key)
    else:
        crypto = Crypto(1, suite, phone_key) if suite and phone_key else None
        offer = phone_offer(codec, phone.port, dtmf=dtmf, crypto=crypto)
    bridge_media, answer = answer_offer(offer, HOST, bridge.port, session_id=1, key=bridge_key)
    phone_media = read_answer(answer, key=phone_key)
    assert bridge_media.codec == phone_media.codec == codec
    bridge.start(bridge_media)
    await side.call(phone.start, phone_media)
    return Call(bridge, phone, bridge_ear, phone_ear, bridge_media, phone_media, side)


def feeder(leg_holder: list[PhoneLeg], signal: Pcm) -> Callable[[], None]:
    """Pushes ``signal`` into the leg one 48 kHz frame per tick, then stops."""
    frames = iter(signal[i : i + ROOM_FRAME] for i in range(0, len(signal), ROOM_FRAME))

    def feed() -> None:
        frame = next(frames, None)
        if frame is not None and frame.shape[0] == ROOM_FRAME:
            leg_holder[0].send_audio(frame)

    return feed


def stall(ear: Ear) -> float:
    """How much later than 20 ms after the one before a tick of the leg
    came, at worst, in seconds."""
    times = np.array([t for t, _ in ear.frames])
    return float(np.max(np.diff(times)) - FRAME) if len(times) > 1 else 0.0


class Pulse:
    """A beat every 2 ms on one loop, by that loop's clock: ``worst`` is the
    longest the loop (or the whole process) was held up between two beats.

    The ears see the legs' ticks only, 20 ms apart. A loop held up from
    before a packet came until just past the tick that plays it shows there
    as a tick a few milliseconds late, and yet the tick misses the packet:
    the packet waits in the socket, and the loop, when it runs again, runs
    its due timers before it reads. Held up here, it shows."""

    PERIOD = 0.002

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.worst = 0.0
        self._last: float | None = None
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Begin beating; on the loop's own thread."""
        now = self.loop.time()
        if self._last is not None:
            self.worst = max(self.worst, now - self._last - self.PERIOD)
        self._last = now
        self._handle = self.loop.call_at(now + self.PERIOD, self.start)

    def stop(self) -> None:
        """Stop beating; on the loop's own thread."""
        if self._handle is not None:
            self._handle.cancel()


def first_loud(frames: list[tuple[float, Pcm]], threshold_db: float = 60.0) -> int:
    return next(i for i, (_, pcm) in enumerate(frames) if rms_db(pcm) > threshold_db)


class Collector(asyncio.DatagramProtocol):
    """A raw UDP socket: a NATed phone, a stranger, or where the SDP points."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.transport.get_extra_info("sockname")[:2]
        return host, port


async def collector() -> Collector:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Collector, local_addr=(HOST, free_udp_port()))
    return protocol


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, *, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq, ts, ssrc) + payload


def media_to(address: tuple[str, int], **changes: Any) -> PhoneMedia:
    fields: dict[str, Any] = {
        "host": address[0],
        "port": address[1],
        "codec": "PCMU",
        "payload_type": 0,
        "dtmf_payload_type": 101,
        "direction": Direction.SENDRECV,
    }
    return PhoneMedia(**(fields | changes))


# --- audio ------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["PCMU", "PCMA", "G722"])
async def test_a_tone_crosses_the_call_both_ways_in_a_few_frames(codec: str) -> None:
    c = await call(codec)
    try:
        lead = np.zeros(ROOM_FRAME * 10, dtype=np.int16)
        to_phone = np.concatenate((lead, tone(1000, ROOM_RATE, ROOM_RATE)))
        to_bridge = np.concatenate((lead, tone(700, ROOM_RATE, ROOM_RATE)))
        pulses = Pulse(asyncio.get_running_loop()), Pulse(c.side.loop)
        pulses[0].start()
        await c.side.call(pulses[1].start)
        c.bridge_ear.feed = feeder([c.bridge], to_phone)
        c.phone_ear.feed = feeder([c.phone], to_bridge)
        await asyncio.sleep(1.2)
        pulses[0].stop()
        await c.side.call(pulses[1].stop)
        # Packets arrive halfway between ticks (the clock is phased to the
        # stream): only the two loops held up for half a frame between them
        # (a late send, a late read), by this machine being busy elsewhere,
        # can make one late. Then the jitter buffer grows, as it should, and
        # the delay with it.
        held_up = pulses[0].worst + pulses[1].worst
        stalled = max(stall(c.bridge_ear), stall(c.phone_ear), held_up) > FRAME / 2
        for sender, listener, leg, frequency in (
            (c.bridge_ear, c.phone_ear, c.phone, 1000),
            (c.phone_ear, c.bridge_ear, c.bridge, 700),
        ):
            # The sender pushed the tone's first frame in its tick 10 (its
            # on_audio's 11th call); when did the listener first hear it?
            pushed = sender.frames[10][0]
            heard = listener.frames[first_loud(listener.frames)][0]
            delay_frames = (heard - pushed) / FRAME
            held = leg.stats.jitter_target_ms / 1000 / FRAME if stalled else 0
            assert -0.5 < delay_frames <= 3 + held, (delay_frames, leg.stats, held_up)
            start = first_loud(listener.frames) + 3
            steady = np.concatenate([pcm for _, pcm in listener.frames[start : start + 30]])
            assert len(steady) == 30 * listener.rate // 50
            assert abs(peak_frequency(steady, listener.rate) - frequency) < 5
        for leg in (c.bridge, c.phone):
            stats = leg.stats
            if stalled:
                assert stats.concealed <= 10 and stats.late <= 10, (stats, held_up)
            else:
                assert stats.concealed == 0 and stats.late == 0, (stats, held_up)
            assert stats.packets_in >= 50 and stats.packets_out >= 50
            assert stats.malformed == stats.other_payload == stats.stray == 0
        assert c.bridge.stats.latched == (HOST, c.phone.port)
    finally:
        await c.close()


async def test_the_leg_sends_from_the_port_it_receives_on() -> None:
    c = await call()
    try:
        await asyncio.sleep(0.2)
        # Each side latched to the other's one socket: symmetric RTP.
        assert c.bridge.stats.latched == (HOST, c.phone.port)
        assert c.phone.stats.latched == (HOST, c.bridge.port)
        assert c.bridge.stats.relatches == c.phone.stats.relatches == 0
    finally:
        await c.close()


async def test_ports_are_even_and_from_the_range() -> None:
    ear = Ear()
    legs = [await open_leg(ear) for _ in range(4)]
    try:
        assert len({leg.port for leg in legs}) == 4
        assert all(leg.port % 2 == 0 and leg.port in PORTS for leg in legs)
    finally:
        for leg in legs:
            leg.close()


# --- latching ---------------------------------------------------------------------


async def test_a_phone_behind_nat_gets_audio_where_its_packets_come_from() -> None:
    sdp_address, nat, stranger = await collector(), await collector(), await collector()
    ear = Ear()
    bridge = await open_leg(ear)
    try:
        bridge.start(media_to(sdp_address.address))
        # Until something comes, the SDP's address is all the leg knows.
        await wait_until(lambda: sdp_address.received)
        assert {addr for _, addr in sdp_address.received} == {(HOST, bridge.port)}
        silence = bytes([0xFF]) * 160
        for i in range(10):
            nat.transport.sendto(rtp(0, i, i * 160, 1111, silence), (HOST, bridge.port))
            await asyncio.sleep(FRAME)
        await wait_until(lambda: bridge.stats.latched == nat.address)
        sent_to_sdp = len(sdp_address.received)
        nat.received.clear()
        await wait_until(lambda: len(nat.received) >= 3)
        assert len(sdp_address.received) <= sent_to_sdp + 1  # one may have been under way
        header = struct.unpack("!BBHII", nat.received[0][0][:12])
        assert header[0] == 0x80 and header[1] & 0x7F == 0 and len(nat.received[0][0]) == 172

        # A stranger's packets, same SSRC or not, do not take the call away.
        for i in range(5):
            stranger.transport.sendto(rtp(0, 50 + i, 0, 2222, silence), (HOST, bridge.port))
            nat.transport.sendto(rtp(0, 10 + i, (10 + i) * 160, 1111, silence), (HOST, bridge.port))
            await asyncio.sleep(FRAME)
        await wait_until(lambda: bridge.stats.stray == 5)
        assert bridge.stats.latched == nat.address
        # The phone's NAT gives it a new port: its stream, same SSRC, comes
        # from elsewhere while the old source falls silent. Once that has
        # lasted RELATCH_SILENCE, the leg follows it (one-way audio, else).
        moved = await collector()
        for i in range(40):
            moved.transport.sendto(
                rtp(0, 20 + i, (20 + i) * 160, 1111, silence), (HOST, bridge.port)
            )
            await asyncio.sleep(FRAME)
            if bridge.stats.latched == moved.address:
                break
        await wait_until(lambda: bridge.stats.latched == moved.address)
        assert bridge.stats.relatches == 1
        moved.received.clear()
        # The phone hears the bridge again.
        await wait_until(lambda: len(moved.received) >= 3)
        # And then the provider moves the call to another media server, a
        # new stream, after the old one fell silent.
        await asyncio.sleep(0.6)
        stranger.transport.sendto(rtp(0, 61, 0, 3333, silence), (HOST, bridge.port))
        await wait_until(lambda: bridge.stats.latched == stranger.address)
        assert bridge.stats.relatches == 2
        moved.transport.close()
    finally:
        bridge.close()
        for c in (sdp_address, nat, stranger):
            c.transport.close()


# --- digits -----------------------------------------------------------------------


@pytest.mark.parametrize("marked", [True, False], ids=["marker", "no marker"])
async def test_a_pin_keyed_as_rfc4733_events_arrives_once_per_digit(marked: bool) -> None:
    phone = await collector()
    ear = Ear()
    bridge = await open_leg(ear)
    try:
        bridge.start(media_to(phone.address))
        seq, ts = 100, 8000
        for digit in PIN:
            for payload, marker in event_packets(digit, 800):
                packet = rtp(101, seq, ts, 4444, payload, marker=marker and marked)
                phone.transport.sendto(packet, (HOST, bridge.port))
                seq += 1
                await asyncio.sleep(0.002)
            ts += 1600
        await asyncio.sleep(0.1)
        assert "".join(ear.digits) == PIN
        assert bridge.stats.dtmf_digits == len(PIN)
    finally:
        bridge.close()
        phone.transport.close()


@pytest.mark.parametrize("codec", ["PCMU", "G722"])
async def test_a_pin_keyed_as_tones_is_heard_without_telephone_event(codec: str) -> None:
    c = await call(codec, dtmf=False)
    try:
        assert c.bridge_media.dtmf_payload_type is None
        gap = np.zeros(ROOM_RATE // 10, dtype=np.int16)
        parts = [gap]
        for digit in PIN:
            parts += [key_tone(digit, 80, rate=ROOM_RATE), gap]
        c.phone_ear.feed = feeder([c.phone], np.concatenate(parts))
        await asyncio.sleep(0.1 + len(PIN) * 0.18 + 0.3)
        assert "".join(c.bridge_ear.digits) == PIN
        assert c.bridge.stats.dtmf_digits == len(PIN)
    finally:
        await c.close()


async def test_keys_keyed_while_the_loop_stalls_are_all_heard() -> None:
    """The bridge's loop held up half a second while a PIN is keyed as
    tones (its process starved; ci172's dial-in test, whose phone, bridge
    and server share one loop, waited in vain for a PIN): the ticks the
    stall skipped still hold keys. The room is spared that stale half
    second, the tone detector is not, so every key is heard once."""
    c = await call("PCMU", dtmf=False)
    try:
        gap = np.zeros(ROOM_RATE // 10, dtype=np.int16)
        parts = [gap]
        for digit in PIN:
            parts += [key_tone(digit, 80, rate=ROOM_RATE), gap]
        c.phone_ear.feed = feeder([c.phone], np.concatenate(parts))
        await wait_until(lambda: len(c.bridge_ear.digits) >= 2)
        # The bridge's loop stalls; the phone's, on its own thread, goes on.
        time.sleep(0.5)  # noqa: ASYNC251 - the stall is the point
        await wait_until(lambda: len(c.bridge_ear.digits) >= len(PIN), within=5.0)
        # A jitter buffer's worth of ticks more: no key is heard twice.
        played = len(c.bridge_ear.frames)
        await wait_until(lambda: len(c.bridge_ear.frames) >= played + 15)
        assert "".join(c.bridge_ear.digits) == PIN
        assert c.bridge.stats.dtmf_digits == len(PIN)
    finally:
        await c.close()


async def test_a_stalled_loop_neither_conceals_nor_grows_the_jitter_buffer() -> None:
    """The bridge's loop busy elsewhere for 100 ms (a burst of other calls'
    work): the phone's packets wait in the socket, and are read, with the
    time the kernel received them, before the late ticks play. So none is
    late or concealed, and the jitter buffer does not grow for a delay that
    was the bridge's, not the network's (read at the loop's time, five
    packets at once would look like a 100 ms burst)."""
    c = await call("PCMU")
    try:
        c.phone_ear.feed = feeder([c.phone], tone(1000, ROOM_RATE, ROOM_RATE * 3))
        await wait_until(lambda: len(c.bridge_ear.frames) > 50)
        before = c.bridge.stats
        # The bridge's loop stalls; the phone's, on its own thread, goes on.
        time.sleep(0.1)  # noqa: ASYNC251 - the stall is the point
        played = len(c.bridge_ear.frames)
        await wait_until(lambda: len(c.bridge_ear.frames) >= played + 25)
        after = c.bridge.stats
        assert after.late == before.late, (before, after)
        assert after.concealed - before.concealed <= 1, (before, after)
        assert after.jitter_target_ms < 100, (before, after)
    finally:
        await c.close()


async def test_tones_count_only_while_the_call_listens_for_them() -> None:
    """In the room the bridge stops searching the phone's audio for keys
    until it asks for one: keys then are not heard; asked again, they are."""
    c = await call("PCMU", dtmf=False)
    try:
        gap = np.zeros(ROOM_RATE // 10, dtype=np.int16)
        keyed = [gap]
        for digit in "123":
            keyed += [key_tone(digit, 80, rate=ROOM_RATE), gap]
        c.bridge.listen_for_tones(False)
        c.phone_ear.feed = feeder([c.phone], np.concatenate(keyed))
        # Every keyed frame (32 ticks' worth) has been played by the bridge,
        # with a jitter buffer's worth to spare, and not one key was heard.
        played = len(c.bridge_ear.frames)
        await wait_until(lambda: len(c.bridge_ear.frames) >= played + 32 + 15)
        assert c.bridge_ear.digits == [] and c.bridge.stats.dtmf_digits == 0
        c.bridge.listen_for_tones(True)
        c.phone_ear.feed = feeder([c.phone], np.concatenate(keyed))
        await wait_until(lambda: len(c.bridge_ear.digits) >= 3)
        assert "".join(c.bridge_ear.digits) == "123"
    finally:
        await c.close()


# --- SRTP -------------------------------------------------------------------------


@pytest.mark.parametrize("suite", list(SrtpSuite))
async def test_sdes_srtp_carries_audio_both_ways_and_drops_a_wrong_key(
    suite: SrtpSuite,
) -> None:
    c = await call("PCMA", suite=suite)
    stranger = await collector()
    try:
        assert c.bridge_media.local is not None and c.bridge_media.local.suite is suite
        c.bridge_ear.feed = feeder([c.bridge], tone(1000, ROOM_RATE, ROOM_RATE))
        c.phone_ear.feed = feeder([c.phone], tone(700, ROOM_RATE, ROOM_RATE))
        await asyncio.sleep(0.6)
        start = first_loud(c.phone_ear.frames) + 3
        heard = np.concatenate([pcm for _, pcm in c.phone_ear.frames[start : start + 10]])
        assert abs(peak_frequency(heard, c.phone_ear.rate) - 1000) < 10
        start = first_loud(c.bridge_ear.frames) + 3
        heard = np.concatenate([pcm for _, pcm in c.bridge_ear.frames[start : start + 10]])
        assert abs(peak_frequency(heard, c.bridge_ear.rate) - 700) < 10
        assert c.bridge.stats.srtp_failures == c.phone.stats.srtp_failures == 0
        # A packet protected with another key: dropped, counted, not latched to.
        wrong = Crypto(1, suite, os.urandom(30))
        forged = SdesSession(wrong, wrong).protect(rtp(8, 1, 160, 5555, bytes(160)))
        stranger.transport.sendto(forged, (HOST, c.bridge.port))
        await asyncio.sleep(0.05)
        assert c.bridge.stats.srtp_failures == 1
        assert c.bridge.stats.latched == (HOST, c.phone.port)
        # What the bridge sends is not clear RTP: the phone's plain decoder
        # would not hear a tone in it. The tag is 10 or 4 bytes long.
        tag = 10 if suite is SrtpSuite.AES_CM_128_HMAC_SHA1_80 else 4
        assert c.bridge.stats.bytes_out == c.bridge.stats.packets_out * (12 + 160 + tag)
    finally:
        await c.close()
        stranger.transport.close()


# --- prompts ----------------------------------------------------------------------


def spoken(seconds: float, rate: int = 8000) -> Pcm:
    """Speech-like audio: a voiced buzz whose pitch wanders."""
    t = np.arange(round(seconds * rate)) / rate
    pitch = 150 + 30 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    buzz = np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase)
    return np.rint(6000 * buzz).astype(np.int16)


async def test_a_prompt_plays_for_its_length_and_says_when_it_is_done(tmp_path: Path) -> None:
    voice = Voice(None, cache_dir=tmp_path)
    await voice.prepare(["en"], [8000])
    prompt = voice.pcm("joined", "en", 8000)  # "You are in the visit.", about 1.4 s
    c = await call("PCMU")
    done: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        await asyncio.sleep(0.1)
        sent_before = c.bridge.stats.packets_out
        heard_before = len(c.phone_ear.frames)
        started = loop.time()
        c.bridge.play(prompt, lambda: done.append(loop.time()))
        assert c.bridge.playing
        seconds = prompt.shape[0] / 8000
        await asyncio.sleep(seconds + 0.3)
        assert len(done) == 1 and not c.bridge.playing
        frames = math.ceil(prompt.shape[0] / 160)
        assert frames <= c.bridge.stats.packets_out - sent_before <= frames + 20
        assert abs(done[0] - started - frames * FRAME) < 0.1 + stall(c.bridge_ear)
        # The phone heard speech, then silence after it.
        heard = [rms_db(pcm) for _, pcm in c.phone_ear.frames[heard_before:]]
        assert sum(level > 60 for level in heard) > frames // 3
        assert max(heard[-5:]) < 30
    finally:
        await c.close()


async def test_stop_prompt_interrupts_and_the_room_is_heard_again() -> None:
    c = await call("G722")
    done: list[bool] = []
    try:
        await asyncio.sleep(0.1)
        c.bridge.play(spoken(3.0, rate=16000), lambda: done.append(True))
        c.bridge.play(spoken(1.0, rate=16000), lambda: done.append(True))
        await asyncio.sleep(0.3)
        c.bridge.stop_prompt()
        assert not c.bridge.playing
        heard = len(c.phone_ear.frames)
        c.bridge_ear.feed = feeder([c.bridge], tone(1000, ROOM_RATE, ROOM_RATE))
        await asyncio.sleep(0.5)
        assert done == []
        after = np.concatenate([pcm for _, pcm in c.phone_ear.frames[heard + 8 :]])
        assert abs(peak_frequency(after, c.phone_ear.rate) - 1000) < 5
    finally:
        await c.close()


# --- timeouts ---------------------------------------------------------------------


async def test_the_media_timeout_fires_once_when_the_phone_stops() -> None:
    c = await call("PCMU", media_timeout=0.3)
    try:
        await asyncio.sleep(0.5)
        assert c.bridge_ear.dead == []
        await c.close_phone()
        await asyncio.sleep(0.5)
        assert len(c.bridge_ear.dead) == 1
        await asyncio.sleep(0.4)
        assert len(c.bridge_ear.dead) == 1
    finally:
        await c.close()


async def test_no_media_timeout_while_the_phone_holds_the_call() -> None:
    c = await call("PCMU", media_timeout=0.3)
    try:
        await asyncio.sleep(0.1)
        # The phone's re-INVITE holds the call (RFC 3264 section 8.4), and
        # its RTP stops; the bridge stops sending to it too.
        c.bridge.start(replace(c.bridge_media, direction=Direction.SENDONLY))
        await c.close_phone()
        await asyncio.sleep(0.1)
        sent = c.bridge.stats.packets_out
        await asyncio.sleep(0.6)
        assert c.bridge_ear.dead == []
        assert c.bridge.stats.packets_out == sent
        # Resumed, and still silent: now it is dead.
        c.bridge.start(c.bridge_media)
        await asyncio.sleep(0.5)
        assert len(c.bridge_ear.dead) == 1
        assert c.bridge.stats.packets_out > sent
    finally:
        await c.close()


# --- the peer breaks the protocol -------------------------------------------------


async def test_random_bytes_never_raise_and_are_counted() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    noise = await collector()
    ear = Ear()
    bridge = await open_leg(ear)
    rng = random.Random(38)
    try:
        bridge.start(media_to(noise.address, dtmf_payload_type=None))
        count = 400
        for i in range(count):
            data = rng.randbytes(rng.randrange(0, 200))
            if i % 4 == 0 and data:
                data = bytes([0x80 | (data[0] & 0x3F)]) + data[1:]  # version 2
            noise.transport.sendto(data, (HOST, bridge.port))
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        stats = bridge.stats
        assert stats.packets_in == count
        assert stats.malformed > count // 2
        assert errors == []
        assert ear.frames and stats.packets_out > 0  # the clock still ticks
    finally:
        bridge.close()
        noise.transport.close()
        loop.set_exception_handler(None)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(11),
        bytes([0x8F, 0]) + bytes(10),  # 15 CSRCs in a 12-byte packet
        bytes([0x90, 0]) + bytes(10),  # an extension with no room for its header
        bytes([0x90, 0]) + bytes(10) + b"\xbe\xde\xff\xff",  # an extension far too long
        bytes([0xA0, 0]) + bytes(10) + b"\x00",  # padding of zero octets
        bytes([0xA0, 0]) + bytes(10) + b"\xff",  # more padding than packet
        bytes([0x80, 101]) + bytes(10) + b"\x01",  # an RFC 4733 payload too short
        bytes([0x80, 0xC8]) + bytes(10),  # RTCP sender report on the RTP port
    ],
    ids=["empty", "short", "csrc", "ext-head", "ext-len", "pad-0", "pad-long", "dtmf", "rtcp"],
)
async def test_malformed_rtp_is_counted_and_dropped(data: bytes) -> None:
    bridge = await open_leg(Ear())
    # A plain socket: asyncio's transports send no empty datagram.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as phone:
        phone.bind((HOST, 0))
        try:
            bridge.start(media_to(phone.getsockname()))
            phone.sendto(data, (HOST, bridge.port))
            await wait_until(lambda: bridge.stats.packets_in == 1)
            assert bridge.stats.malformed == 1
            assert bridge.stats.dtmf_digits == 0
        finally:
            bridge.close()


async def test_other_payload_types_and_comfort_noise_are_counted_not_played() -> None:
    bridge = await open_leg(Ear())
    phone = await collector()
    try:
        bridge.start(media_to(phone.address))
        for packet in (
            rtp(13, 1, 0, 7, b"\x40"),
            rtp(96, 2, 0, 7, bytes(20)),
            rtp(8, 3, 0, 7, bytes(160)),  # PCMA, not agreed
        ):
            phone.transport.sendto(packet, (HOST, bridge.port))
        await wait_until(lambda: bridge.stats.packets_in == 3)
        stats = bridge.stats
        assert (stats.comfort_noise, stats.other_payload, stats.malformed) == (1, 2, 0)
    finally:
        bridge.close()
        phone.transport.close()
