"""The phone's seat in the visit's room: an ordinary participant of the SFU.

The bridge joins the room as any client does (the signalling WebSocket, a
publish and a subscribe connection, DTLS-SRTP and Opus), through the
project's own Python client (:class:`wadud_client.call.CallClient`, on
aiortc), so the SFU still only forwards and never decodes. What is the
seat's own:

* **Up.** The phone's audio, 20 ms frames of 48 kHz mono from the phone
  leg, goes out as one published microphone track, Opus-encoded by the
  seat's own :class:`PhoneOpus` in the event loop, with its audio level.
* **Down.** Every other participant's audio track, as aiortc's receiver
  reassembles it, is decoded in the event loop and pushed into an N-1
  mixer (:class:`sip.audio.mixer.Mixer`) in which the phone only listens:
  :meth:`RoomSeat.mix` is what the phone hears for the next 20 ms, everyone
  in the room but itself (the room hears the phone through the SFU, not
  through this mix).

aiortc encodes and decodes each frame on another thread: an executor job
per frame sent, a decoder thread per track received, and a hand-back to
the event loop for every frame. For 20 ms of voice, which libopus codes in
tens of microseconds, that traffic between threads and for the GIL cost
more than the coding (a bridge core held about 20 calls with it). The seat
keeps aiortc for ICE, DTLS, SRTP and RTCP and does its audio inline: its
sender's ``_next_encoded_frame`` is the seat's, and each audio receiver's
decoder queue is decoded as it is filled. Both are aiortc internals
(aiortc has no public hook for either), checked by tests/sip/node/test_seat.py.

aiortc, PyAV and the client are imported when a seat is made, so the
server's other modules import without them (``pip install wadud[sip]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import math
from typing import Any

import numpy as np

from sip.audio.mixer import Mixer
from sip.audio.pcm import ROOM_FRAME, ROOM_RATE, Pcm

__all__ = ["OPUS_BITRATE", "PHONE", "PhoneOpus", "RoomSeat", "level_dbov"]

#: The mixer's name for the phone: the one source that only listens.
PHONE = "phone"
_SILENCE = np.zeros(ROOM_FRAME, dtype=np.int16)


#: The phone's voice in the room: narrowband speech needs no more (aiortc's
#: own encoder sends 96 kbit/s of stereo), and what it saves pays for
#: in-band FEC, which a subscriber on a lossy mobile link decodes in place of
#: the packet it lost (RFC 6716 section 2.1.7).
OPUS_BITRATE = 24_000
#: The loss the encoder plans its FEC for, percent (libopus enables it from
#: a few percent; at 24 kbit/s about half the frames then carry their
#: predecessor's redundancy).
OPUS_PLANNED_LOSS = 10

#: libopus's complexity (0 to 10; its default, 10, costs 140 µs a frame
#: here, 5 costs 95): what libwebrtc uses on phones, and ample for a phone
#: line's narrowband voice. Coding is most of a call's cost on the bridge.
OPUS_COMPLEXITY = 5


class PhoneOpus:
    """The seat's microphone encoder: mono Opus at :data:`OPUS_BITRATE`
    with in-band FEC, from FFmpeg's libopus: a frame of PCM
    (:meth:`encode_pcm`), or an ``av.AudioFrame`` (:meth:`encode`)."""

    def __init__(self) -> None:
        import av

        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = OPUS_BITRATE
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = ROOM_RATE
        self.codec.time_base = fractions.Fraction(1, ROOM_RATE)
        self.codec.options = {
            "application": "voip",
            "fec": "1",
            "packet_loss": str(OPUS_PLANNED_LOSS),
            "compression_level": str(OPUS_COMPLEXITY),
        }
        self._first: int | None = None

    def encode(self, frame: Any) -> tuple[list[bytes], int | None]:
        packets = self.codec.encode(frame)
        if not packets:
            return [], None
        pts = int(packets[0].pts or 0)
        if self._first is None:
            # libopus's look-ahead starts the stamps below zero.
            self._first = pts
        return [bytes(p) for p in packets], pts - self._first

    def encode_pcm(self, pcm: Pcm, pts: int) -> tuple[list[bytes], int | None]:
        """20 ms of 48 kHz mono at sample ``pts``: the Opus packets and
        their RTP timestamp offset (none while libopus fills its look-ahead)."""
        import av

        frame = av.AudioFrame(format="s16", layout="mono", samples=ROOM_FRAME)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = ROOM_RATE
        frame.pts = pts
        frame.time_base = fractions.Fraction(1, ROOM_RATE)
        return self.encode(frame)


def level_dbov(pcm: Pcm) -> int:
    """RFC 6465 appendix A: the frame's level, 0 (loudest) to -127 dBov, as
    the audio level header extension carries it (aiortc's own reads each
    sample in Python: 80 µs a frame where this takes a few)."""
    square = np.dot(pcm.astype(np.float64), pcm.astype(np.float64)) / (pcm.shape[0] * 32767.0**2)
    if square <= 0:
        return -127
    return round(max(-127.0, min(0.0, 10 * math.log10(square))))


def _phone_track() -> Any:
    """The seat's published microphone: aiortc's sender needs a track, but
    the seat hands it encoded frames itself (:meth:`RoomSeat._next_encoded`),
    so the track is never read."""
    from aiortc.mediastreams import AudioStreamTrack

    return AudioStreamTrack()


class _InlineDecoding:
    """Stands in for one aiortc receiver's decoder queue: each reassembled
    Opus frame is decoded as it is put, and its PCM goes to ``heard``. The
    end (``None``) goes on to the receiver's own queue, where its idle
    decoder thread waits, so the thread and the track end as aiortc ends them."""

    def __init__(self, own: Any, heard: Any) -> None:
        self._own = own
        self._heard = heard
        self._decoder: Any = None
        self._codec: str | None = None

    def get(self) -> Any:
        """The idle decoder thread's wait (a thread started after the swap
        reads from here): only the end ever comes."""
        return self._own.get()

    def put(self, task: Any) -> None:
        if task is None:
            self._own.put(None)
            return
        codec, encoded = task
        if codec.name != self._codec:
            from aiortc.codecs import get_decoder

            self._decoder, self._codec = get_decoder(codec), codec.name
        try:
            frames = self._decoder.decode(encoded)
        except Exception:  # a corrupt frame: the mixer rides out the gap
            return
        for frame in frames:
            self._heard(_mono(frame))


def _mono(frame: Any) -> Pcm:
    """A decoded aiortc audio frame as 48 kHz mono int16 (Opus decodes to
    interleaved stereo s16 there: the channels are averaged)."""
    samples = np.frombuffer(bytes(frame.planes[0]), dtype=np.int16)
    channels = len(frame.layout.channels)
    if channels == 2:
        # In integers: 3 µs a frame where a float mean took 14.
        samples = ((samples[0::2].astype(np.int32) + samples[1::2]) >> 1).astype(np.int16)
    elif channels > 2:
        samples = samples.reshape(-1, channels).mean(axis=1).astype(np.int16)
    return (
        samples[:ROOM_FRAME]
        if samples.shape[0] >= ROOM_FRAME
        else np.pad(samples, (0, ROOM_FRAME - samples.shape[0]))
    )


class RoomSeat:
    """The phone's participant in one room. ``url``: the server's /ws (or
    any URL the client takes); ``token``: a room token for the phone's role."""

    def __init__(self, url: str, token: str, *, label: str = "phone") -> None:
        from wadud_client.call import CallClient

        self.client = CallClient(url, token, label=label, consume=False)
        self.mixer = Mixer()
        self.mixer.add_source(PHONE, listens=True)
        self._up: asyncio.Queue[Pcm] = asyncio.Queue(maxsize=10)
        #: The microphone's encoder, and its pacing: frames sent, from when.
        self.encoder = PhoneOpus()
        self._sent = 0
        self._start: float | None = None
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._watch: asyncio.Task[None] | None = None
        #: Frames of the phone's audio dropped because the room's sender
        #: fell more than 200 ms behind.
        self.dropped_up = 0

    async def join(self) -> dict[str, Any]:
        """Ask to join the room: the ``joined`` frame, or ``waiting`` where
        the doctor admits people (then :meth:`admitted`). Raises what the
        client raises for a refused join."""
        return await self.client.join()

    async def admitted(self, within: float) -> None:
        """Wait until the room has the phone (at once when ``joined``), then
        publish its microphone and start hearing the room. Raises
        TimeoutError when no one admits it ``within`` seconds."""
        await self.client.wait_admitted(within)
        await self.client.publish({"microphone": _phone_track()})
        for sender in self.client.publish_pc.getSenders():
            if sender.kind == "audio":
                # Where aiortc's sender asks its track for a frame and
                # encodes it on the executor: the seat's frame, coded here.
                sender._next_encoded_frame = self._next_encoded
        self._watch = asyncio.create_task(self._read_new_tracks(), name="seat tracks")

    def phone_audio(self, pcm: Pcm) -> None:
        """20 ms of the phone's voice at 48 kHz, for the room."""
        if self._up.full():
            self.dropped_up += 1
            self._up.get_nowait()  # the oldest goes: the room hears now, not then
        self._up.put_nowait(pcm)

    async def _next_encoded(self, codec: Any) -> Any:
        """The next encoded frame of the phone's voice, for aiortc's sender:
        every 20 ms, what the leg handed the seat, or silence when it handed
        nothing in time (before the phone is answered, or a frame late): the
        sender reads at its own pace, so a missing frame must not stall it."""
        from aiortc.rtcrtpsender import RTCEncodedFrame

        loop = asyncio.get_running_loop()
        if self._start is None:
            self._start = loop.time()
        due = self._start + self._sent * ROOM_FRAME / ROOM_RATE
        try:
            # Not wait_for: it makes a task per frame.
            async with asyncio.timeout_at(max(due, loop.time()) + 0.01):
                pcm = await self._up.get()
        except TimeoutError:
            pcm = _SILENCE
        payloads, timestamp = self.encoder.encode_pcm(pcm, self._sent * ROOM_FRAME)
        self._sent += 1
        if not payloads or timestamp is None:
            return None
        return RTCEncodedFrame(payloads, timestamp, level_dbov(pcm))

    def mix(self) -> Pcm:
        """The next 20 ms the phone hears: everyone in the room but itself."""
        return self.mixer.mix().get(PHONE, _SILENCE)

    async def leave(self) -> None:
        for task in (self._watch, *self._readers.values()):
            if task is not None:
                task.cancel()
        for task in (self._watch, *self._readers.values()):
            if task is not None:
                with contextlib.suppress(BaseException):
                    await task
        await self.client.close()

    async def _read_new_tracks(self) -> None:
        """Start a reader for each audio track the room sends us, as it comes."""
        while True:
            for mid, received in list(self.client.received.items()):
                if (
                    received.kind == "audio"
                    and received.track is not None
                    and mid not in self._readers
                ):
                    source = f"{received.participant}/{mid}"
                    self._readers[mid] = asyncio.create_task(
                        self._read(source, mid, received.track), name=f"seat {mid}"
                    )
            with contextlib.suppress(TimeoutError):
                await self.client.wait_until(
                    lambda: any(
                        m not in self._readers and r.kind == "audio" and r.track is not None
                        for m, r in self.client.received.items()
                    ),
                    within=3600.0,
                )

    async def _read(self, source: str, mid: str, track: Any) -> None:
        """One remote audio track into the mixer (``source``: its
        participant and m= section, as a participant may send two), decoded
        as its receiver reassembles it; until the track ends."""
        from aiortc.mediastreams import MediaStreamError

        self.mixer.add_source(source, listens=False)
        try:
            receiver = next(
                t.receiver for t in self.client.subscribe_pc.getTransceivers() if t.mid == mid
            )
            own = receiver._RTCRtpReceiver__decoder_queue
            if not isinstance(own, _InlineDecoding):
                receiver._RTCRtpReceiver__decoder_queue = _InlineDecoding(
                    own, lambda pcm: self.mixer.push(source, pcm)
                )
            # Nothing comes out of the track now but its end.
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
        finally:
            self.mixer.remove_source(source)
