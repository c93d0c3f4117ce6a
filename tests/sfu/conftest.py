"""Real peers for the media worker's tests: aiortc publishers and subscribers on loopback.

aiortc encodes and decodes for real (VP8, Opus), so a subscriber counting
decoded frames proves the worker forwarded a decodable stream. Frames are
small (160x120) and few, to spare the shared CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fractions
import math
import secrets
import struct
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import av
import pytest
from aioice import stun as astun
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError

from rtc.dtls import DtlsCertificate, DtlsEndpoint, DtlsRole, HandshakeComplete
from rtc.ice import random_credentials
from rtc.sdp.session import SessionDescription
from rtc.srtp import SrtpSession
from sfu.control.messages import MediaEvent, TransportState
from sfu.node.worker import MediaWorker
from sfu.rooms.actions import ActionQueue, Emit

WIDTH, HEIGHT = 160, 120
AUDIO_RATE = 48000
AUDIO_SAMPLES = 960  # 20 ms


@pytest.fixture
def loopback_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves loopback out of its host candidates; a loopback call needs it."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


class Events:
    """Every event a worker emits, with waits on them."""

    def __init__(self) -> None:
        self.items: list[MediaEvent] = []
        self.times: dict[int, float] = {}
        """id(event) -> time.monotonic() when it was emitted."""

    def __call__(self, event: MediaEvent) -> None:
        self.items.append(event)
        self.times[id(event)] = time.monotonic()

    def transport(self, participant: str, direction: str) -> list[TransportState]:
        return [
            e
            for e in self.items
            if isinstance(e, TransportState)
            and e.participant == participant
            and e.direction == direction
        ]

    async def wait_state(
        self, participant: str, direction: str, state: str, limit: float = 10.0
    ) -> TransportState:
        """The first event that put this transport in ``state``; TimeoutError after ``limit``."""
        async with asyncio.timeout(limit):
            while True:
                for event in self.transport(participant, direction):
                    if event.state == state:
                        return event
                await asyncio.sleep(0.02)


@pytest.fixture(scope="module")
def certificate() -> DtlsCertificate:
    """The worker's certificate for the tests that build its cores without a worker."""
    return DtlsCertificate.generate(datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC))


@pytest.fixture
async def worker(loopback_aiortc: None) -> AsyncIterator[MediaWorker]:
    async with MediaWorker(host="127.0.0.1", port=0) as w:
        yield w


def take_events(core: ActionQueue, events: Events | None = None) -> None:
    """After a test calls a worker's core itself: its queued events go to
    ``events``, as the worker would hand them to its listeners; the rest of
    what it queued (RTCP to flush, timers) is dropped."""
    for action in core.take_actions():
        if isinstance(action, Emit) and events is not None:
            events(action.event)


@pytest.fixture
def events(worker: MediaWorker) -> Events:
    collected = Events()
    worker.add_listener(collected)
    return collected


# --- synthetic media -------------------------------------------------------------------


class MovingVideo(VideoStreamTrack):
    """A small frame with a moving bar, so the encoder has something to encode."""

    def __init__(self) -> None:
        super().__init__()
        self._count = 0
        row = bytes(range(0, 256, 2))[: WIDTH // 2] * 4
        self._luma = (row * (HEIGHT * 2))[: WIDTH * HEIGHT * 2]
        self._chroma = bytes([128]) * (WIDTH * HEIGHT // 4)

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = av.VideoFrame(WIDTH, HEIGHT, "yuv420p")
        offset = (self._count * 4) % WIDTH
        self._count += 1
        frame.planes[0].update(self._luma[offset : offset + WIDTH * HEIGHT])
        frame.planes[1].update(self._chroma)
        frame.planes[2].update(self._chroma)
        frame.pts = pts
        frame.time_base = time_base
        return frame


class Tone(MediaStreamTrack):
    """A 440 Hz tone in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        samples = [
            int(8000 * math.sin(2 * math.pi * 440 * n / AUDIO_RATE)) for n in range(AUDIO_RATE)
        ]
        self._pcm = struct.pack(f"<{len(samples)}h", *samples)
        self._start: float | None = None
        self._pts = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.time()
        else:
            self._pts += AUDIO_SAMPLES
            wait = self._start + self._pts / AUDIO_RATE - time.time()
            await asyncio.sleep(max(0.0, wait))
        frame = av.AudioFrame(format="s16", layout="mono", samples=AUDIO_SAMPLES)
        start = (self._pts % AUDIO_RATE) * 2
        chunk = self._pcm[start : start + AUDIO_SAMPLES * 2]
        if len(chunk) < AUDIO_SAMPLES * 2:
            chunk += self._pcm[: AUDIO_SAMPLES * 2 - len(chunk)]
        frame.planes[0].update(chunk)
        frame.pts = self._pts
        frame.sample_rate = AUDIO_RATE
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        return frame


# --- peers ---------------------------------------------------------------------------------


class Client:
    """An aiortc peer connection of ``participant`` in ``room``, on loopback to ``worker``."""

    def __init__(self, worker: MediaWorker, room: str, participant: str) -> None:
        self.worker = worker
        self.room = room
        self.participant = participant
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    async def close(self) -> None:
        await self.pc.close()


class Publisher(Client):
    """An aiortc client publishing through ``worker.publish`` (sendonly transceivers)."""

    def __init__(self, worker: MediaWorker, room: str, participant: str) -> None:
        super().__init__(worker, room, participant)
        self.tracks: dict[str, str] = {}
        """mid -> track id."""
        self.answer = ""

    def add(self, track: MediaStreamTrack) -> None:
        self.pc.addTransceiver(track, direction="sendonly")

    async def negotiate(self, sources: Mapping[str, Any] | None = None) -> Any:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        result = await self.worker.publish(
            self.room, self.participant, self.pc.localDescription.sdp, sources or {}
        )
        self.answer = result.answer
        await self.pc.setRemoteDescription(RTCSessionDescription(result.answer, "answer"))
        for info in result.added:
            self.tracks[info.mid] = info.track_id
        for track_id in result.removed:
            self.tracks = {m: t for m, t in self.tracks.items() if t != track_id}
        return result


class Subscriber(Client):
    """An aiortc client answering the worker's subscribe offers and counting what it decodes."""

    def __init__(self, worker: MediaWorker, room: str, participant: str) -> None:
        super().__init__(worker, room, participant)
        self.frames: dict[str, int] = {"audio": 0, "video": 0}
        self.first: dict[str, float] = {}
        self.offer = ""
        self.sizes: set[tuple[int, int]] = set()
        """Decoded video frame sizes: only the publisher's, if nothing got mixed up."""
        self._tasks: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                kind = track.kind
                self.frames[kind] += 1
                self.first.setdefault(kind, time.monotonic())
                if isinstance(frame, av.VideoFrame):
                    self.sizes.add((frame.width, frame.height))

    async def update(self, track_ids: list[str]) -> bool:
        """Ask the worker for ``track_ids``; answer its offer if it made one."""
        offer = await self.worker.subscribe(self.room, self.participant, track_ids)
        if offer is None:
            return False
        self.offer = offer
        await self.pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self.worker.answer(self.room, self.participant, self.pc.localDescription.sdp)
        return True

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await super().close()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
async def peers(worker: MediaWorker) -> AsyncIterator[Callable[..., Any]]:
    """``peers(Publisher|Subscriber, room, participant)``: made here, closed after the test."""
    made: list[Publisher | Subscriber | RawPublisher] = []

    def make(
        cls: type[Publisher] | type[Subscriber] | type[RawPublisher], room: str, participant: str
    ) -> Any:
        peer = cls(worker, room, participant)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        with contextlib.suppress(Exception):
            await peer.close()


# --- a publisher made of parts ---------------------------------------------------------------

_RAW_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0
a=msid-semantic: WMS raw
m=audio 9 UDP/TLS/RTP/SAVPF 111
c=IN IP4 0.0.0.0
a=ice-ufrag:{ufrag}
a=ice-pwd:{pwd}
a=ice-options:trickle
a=fingerprint:sha-256 {fingerprint}
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:raw raw-audio
a=rtcp-mux
a=rtpmap:111 opus/48000/2
a=fmtp:111 minptime=10;useinbandfec=1
a=ssrc:{ssrc} cname:raw
"""

_RAW_CERT: list[Any] = []


class RawPublisher(asyncio.DatagramProtocol):
    """An audio publisher built from parts, for what aiortc cannot do.

    aiortc sends RFC 6464 levels with the voice bit always clear, so the
    active-speaker path needs a peer that sets it. Connectivity checks are
    built by aioice's STUN codec; DTLS and SRTP are rtc.dtls and libsrtp. It
    sends a Chromium-like offer (one Opus track with ssrc-audio-level), then
    RTP with whatever level it is told, and keeps ICE consent fresh.
    """

    def __init__(self, worker: MediaWorker, room: str, participant: str) -> None:
        if not _RAW_CERT:
            _RAW_CERT.append(DtlsCertificate.generate(datetime.datetime.now(datetime.UTC)))
        self.certificate = _RAW_CERT[0]
        self.worker = worker
        self.room = room
        self.participant = participant
        self.ufrag, self.pwd = random_credentials()
        self.ssrc = secrets.randbits(32) or 1
        self.seq = 0
        self.level = 127
        self.voice = False
        self.srtp: Any = None
        self.track_id = ""
        self._transport: asyncio.DatagramTransport | None = None
        self._dtls: Any = None
        self._remote: tuple[str, str, tuple[str, int]] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        offer = _RAW_OFFER.format(
            ufrag=self.ufrag,
            pwd=self.pwd,
            fingerprint=self.certificate.fingerprint(),
            ssrc=self.ssrc,
        ).replace("\n", "\r\n")
        result = await self.worker.publish(self.room, self.participant, offer, {})
        self.track_id = result.added[0].track_id
        answer = SessionDescription.parse(result.answer)
        params = answer.transport()
        assert params.setup is not None and params.setup.value == "active"
        candidate = params.candidates[0]
        assert params.ice_ufrag is not None and params.ice_pwd is not None
        self._remote = (params.ice_ufrag, params.ice_pwd, (candidate.address, candidate.port))
        # The worker answered active: it is the DTLS client, we the server.
        self._dtls = DtlsEndpoint(
            self.certificate,
            DtlsRole.SERVER,
            [(f.algorithm, f.value) for f in params.fingerprints],
        )
        self._dtls.start(loop.time())
        self._tasks.append(asyncio.ensure_future(self._run()))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def _check(self) -> bytes:
        assert self._remote is not None
        msg = astun.Message(message_method=astun.Method.BINDING, message_class=astun.Class.REQUEST)
        msg.attributes["USERNAME"] = f"{self._remote[0]}:{self.ufrag}"
        msg.attributes["PRIORITY"] = 1853817087
        msg.attributes["ICE-CONTROLLING"] = 0x1234
        msg.attributes["USE-CANDIDATE"] = None
        msg.add_message_integrity(self._remote[1].encode())
        msg.add_fingerprint()
        return bytes(msg)

    def send(self, data: bytes) -> None:
        assert self._transport is not None and self._remote is not None
        self._transport.sendto(data, self._remote[2])

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not data or data[0] < 4 or self._dtls is None:
            return  # STUN responses
        self._dtls.receive(data, asyncio.get_running_loop().time())
        self._flush()
        while (event := self._dtls.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                self.srtp = SrtpSession.from_keys(event.keys, event.role)

    def _flush(self) -> None:
        for datagram in self._dtls.datagrams_to_send():
            self.send(datagram)

    def rtp(self) -> bytes:
        """One Opus-sized RTP packet with ssrc-audio-level (RFC 6464, one-byte id 1)."""
        self.seq = (self.seq + 1) & 0xFFFF
        header = struct.pack("!BBHII", 0x90, 111, self.seq, self.seq * 960, self.ssrc)
        level = (0x80 if self.voice else 0) | self.level
        extension = struct.pack("!HHBBBB", 0xBEDE, 1, 0x10, level, 0, 0)
        return header + extension + b"\xfc" + bytes(60)

    async def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            tick = 0
            while True:
                if tick % 25 == 0:  # a check every 0.5 s: nomination, then consent
                    self.send(self._check())
                now = asyncio.get_running_loop().time()
                timer = self._dtls.get_timer()
                if timer is not None and now >= timer:
                    self._dtls.handle_timer(now)
                    self._flush()
                if self.srtp is not None:
                    self.send(self.srtp.protect(self.rtp()))
                tick += 1
                await asyncio.sleep(0.02)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._transport is not None:
            self._transport.close()
