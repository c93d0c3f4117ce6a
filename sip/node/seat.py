"""The phone's seat in the visit's room: an ordinary participant of the SFU.

The bridge joins the room as any client does (the signalling WebSocket, a
publish and a subscribe connection, DTLS-SRTP and Opus), through the
project's own Python client (:class:`wadud_client.call.CallClient`, on
aiortc), so the SFU still only forwards and never decodes. What is the
seat's own:

* **Up.** The phone's audio, 20 ms frames of mono at the phone codec's
  rate (8 kHz, 16 kHz for G.722) from the phone leg, goes out as one
  published microphone track, Opus-encoded at that rate by the seat's own
  :class:`PhoneOpus` in the event loop, with its audio level. Opus takes 8
  and 16 kHz input as it is (RFC 6716 section 2) and any receiver decodes
  it at 48 kHz, so the phone's voice is never resampled: upsampling it
  first cost 24 µs a frame and made libopus code a 48 kHz signal that
  carries nothing above 4 kHz (at 8 kHz it codes in about half the time).
* **Down.** Every other participant's audio track, as aiortc's receiver
  reassembles it, is decoded to 48 kHz mono in the event loop (aiortc's
  own decoder makes stereo) and pushed into an N-1
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
import collections
import contextlib
import fractions
import math
from typing import Any

import numpy as np

from sip.audio.mixer import Mixer
from sip.audio.pcm import ROOM_FRAME, Pcm, check_pcm
from sip.formats import FRAME_MS, frame_samples

__all__ = [
    "OPUS_BITRATE",
    "OPUS_INPUT_RATES",
    "PHONE",
    "PhoneOpus",
    "RoomOpus",
    "RoomSeat",
    "level_dbov",
]

#: The mixer's name for the phone: the one source that only listens.
PHONE = "phone"
_SILENCE = np.zeros(ROOM_FRAME, dtype=np.int16)
_SILENCE.setflags(write=False)
#: The phone's frames held for a sender that fell behind: 200 ms.
_UP_DEPTH = 10


#: The phone's voice in the room: narrowband speech needs no more (aiortc's
#: own encoder sends 96 kbit/s of stereo), and what it saves pays for
#: in-band FEC, which a subscriber on a lossy mobile link decodes in place of
#: the packet it lost (RFC 6716 section 2.1.7).
OPUS_BITRATE = 24_000
#: The loss the encoder plans its FEC for, percent (libopus enables it from
#: a few percent; at 24 kbit/s about half the frames then carry their
#: predecessor's redundancy).
OPUS_PLANNED_LOSS = 10

#: libopus's complexity (0 to 10), the ``sip_opus_complexity`` setting's
#: default. Coding is most of a call's cost on the bridge. At 8 kHz and
#: 24 kbit/s a frame of speech costs about 40 µs at 1 and 86 at 5 (above 1,
#: SILK's delayed-decision quantiser), 102 at 10; decoded again, the speech
#: is within half a dB of SNR at every complexity (measured on espeak-ng's
#: prompts through the bridge's own resampler): a G.711 line's narrowband
#: voice has nothing more for the extra work to keep.
OPUS_COMPLEXITY = 1
#: The phone codecs' rates, which Opus encodes as they are.
OPUS_INPUT_RATES = (8000, 16000)


class PhoneOpus:
    """The seat's microphone encoder: mono Opus at :data:`OPUS_BITRATE`
    with in-band FEC, from FFmpeg's libopus, fed 20 ms frames of PCM at
    ``rate`` (8000 or 16000: a phone codec's rate), at libopus's
    ``complexity``."""

    def __init__(self, rate: int, complexity: int = OPUS_COMPLEXITY) -> None:
        import av

        if rate not in OPUS_INPUT_RATES:
            raise ValueError(f"Opus does not take {rate} Hz input")
        self.rate = rate
        self.complexity = complexity
        self.samples = frame_samples(rate)
        self.codec = av.CodecContext.create("libopus", "w")
        self.codec.bit_rate = OPUS_BITRATE
        self.codec.format = "s16"
        self.codec.layout = "mono"
        self.codec.sample_rate = rate
        self.codec.time_base = fractions.Fraction(1, rate)
        self.codec.options = {
            "application": "voip",
            "fec": "1",
            "packet_loss": str(OPUS_PLANNED_LOSS),
            "compression_level": str(complexity),
        }
        self._frame = av.AudioFrame
        self._pts = 0

    def encode(self, pcm: Pcm) -> list[bytes]:
        """The Opus packets of the next 20 ms of PCM at :attr:`rate`: one
        packet of 20 ms each time (libopus's look-ahead delays the sound in
        it by a few milliseconds, not the packet)."""
        check_pcm(pcm, samples=self.samples)
        frame = self._frame(format="s16", layout="mono", samples=self.samples)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = self.codec.time_base
        self._pts += self.samples
        return [bytes(p) for p in self.codec.encode(frame)]


def level_dbov(pcm: Pcm) -> int:
    """RFC 6465 appendix A: the frame's level, 0 (loudest) to -127 dBov, as
    the audio level header extension carries it (aiortc's own reads each
    sample in Python: 80 µs a frame where this takes a few)."""
    samples = pcm.astype(np.float64)
    square = np.dot(samples, samples) / (pcm.shape[0] * 32767.0**2)
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
        self._decoder = RoomOpus()

    def get(self) -> Any:
        """The idle decoder thread's wait (a thread started after the swap
        reads from here): only the end ever comes."""
        return self._own.get()

    def put(self, task: Any) -> None:
        if task is None:
            self._own.put(None)
            return
        codec, encoded = task
        if codec.name.lower() != "opus":
            return  # the SFU forwards Opus audio only: nothing else is heard
        try:
            frames = self._decoder.decode(encoded.data)
        except Exception:  # a corrupt frame: the mixer rides out the gap
            return
        for pcm in frames:
            self._heard(pcm)


class RoomOpus:
    """A participant's Opus decoded to the mixer's format: 20 ms frames of
    48 kHz mono (aiortc's own decoder makes stereo, which would then be
    averaged back to one channel)."""

    def __init__(self) -> None:
        import av

        self._codec = av.CodecContext.create("libopus", "r")
        self._codec.format = "s16"
        self._codec.layout = "mono"
        self._codec.sample_rate = 48_000
        self._packet = av.Packet

    def decode(self, payload: bytes) -> list[Pcm]:
        """The PCM of one Opus packet: each decoded frame cut or padded to
        20 ms (:data:`~sip.audio.pcm.ROOM_FRAME` samples)."""
        out: list[Pcm] = []
        for frame in self._codec.decode(self._packet(payload)):
            # The plane's own memory, not a copy: the array keeps the frame alive.
            plane: Any = frame.planes[0]
            samples = np.frombuffer(plane, dtype=np.int16, count=frame.samples)
            out.append(
                samples[:ROOM_FRAME]
                if samples.shape[0] >= ROOM_FRAME
                else np.pad(samples, (0, ROOM_FRAME - samples.shape[0]))
            )
        return out


class RoomSeat:
    """The phone's participant in one room. ``url``: the server's /ws (or
    any URL the client takes); ``token``: a room token for the phone's role."""

    def __init__(
        self, url: str, token: str, *, label: str = "phone", complexity: int = OPUS_COMPLEXITY
    ) -> None:
        from wadud_client.call import CallClient

        self.client = CallClient(url, token, label=label, consume=False)
        self.mixer = Mixer()
        self.mixer.add_source(PHONE, listens=True)
        #: The phone's frames the sender has not taken yet, or the sender
        #: waiting for the next one.
        self._up: collections.deque[Pcm] = collections.deque()
        self._waiting: asyncio.Future[Pcm] | None = None
        #: The microphone's encoder, at the rate the phone's frames come in
        #: (8 kHz until a 16 kHz one comes), and the RTP timestamp of its
        #: next packet (48 kHz, RFC 7587).
        self.encoder = PhoneOpus(OPUS_INPUT_RATES[0], complexity)
        self._stamp = 0
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
        """20 ms of the phone's voice at its codec's rate, for the room: to
        the sender if it waits for it, else queued (the oldest dropped past
        200 ms: the room hears now, not then)."""
        waiting = self._waiting
        if waiting is not None:
            self._waiting = None
            if not waiting.done():
                waiting.set_result(pcm)
                return
        if len(self._up) >= _UP_DEPTH:
            self.dropped_up += 1
            self._up.popleft()
        self._up.append(pcm)

    async def _next_encoded(self, codec: Any) -> Any:
        """The next encoded frame of the phone's voice, for aiortc's sender,
        which asks again as soon as it has sent one: the phone leg's clock
        paces it, handing over a frame every 20 ms whether the phone sent
        audio, was concealed or is silent (:meth:`phone_audio`), so the
        sender needs no clock of its own (a timeout per frame cost more
        than the RTP it paced)."""
        from aiortc.rtcrtpsender import RTCEncodedFrame

        if self._up:
            pcm = self._up.popleft()
        else:
            self._waiting = waiting = asyncio.get_running_loop().create_future()
            pcm = await waiting
        if pcm.shape[0] != self.encoder.samples:
            # The call's codec changed rate (a re-INVITE): a new encoder;
            # the stream's timestamps carry on.
            self.encoder = PhoneOpus(pcm.shape[0] * 1000 // FRAME_MS, self.encoder.complexity)
        payloads = self.encoder.encode(pcm)
        if not payloads:
            return None
        timestamp = self._stamp
        self._stamp = (timestamp + len(payloads) * ROOM_FRAME) & 0xFFFFFFFF
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
