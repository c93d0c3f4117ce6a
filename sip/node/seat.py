"""The phone's seat in the visit's room: an ordinary participant of the SFU.

The bridge joins the room as any client does (the signalling WebSocket, a
publish and a subscribe connection, DTLS-SRTP and Opus), through the
project's own Python client (:class:`wadud_client.call.CallClient`, on
aiortc), so the SFU still only forwards and never decodes. What is the
seat's own:

* **Up.** The phone's audio, 20 ms frames of 48 kHz mono from the phone
  leg, goes out as one published microphone track (:class:`PhoneTrack`),
  which aiortc encodes as Opus.
* **Down.** Every other participant's audio track is read as aiortc
  decodes it and pushed into an N-1 mixer (:class:`sip.audio.mixer.Mixer`)
  in which the phone only listens: :meth:`RoomSeat.mix` is what the phone
  hears for the next 20 ms, everyone in the room but itself (the room hears
  the phone through the SFU, not through this mix).

aiortc, PyAV and the client are imported when a seat is made, so the
server's other modules import without them (``pip install wadud[sip]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
from typing import Any

import numpy as np

from sip.audio.mixer import Mixer
from sip.audio.pcm import ROOM_FRAME, ROOM_RATE, Pcm

__all__ = ["OPUS_BITRATE", "PHONE", "PhoneOpus", "RoomSeat"]

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


class PhoneOpus:
    """aiortc's encoder interface (``encode``, ``pack``) for the seat's
    microphone: mono Opus at :data:`OPUS_BITRATE` with in-band FEC, from
    FFmpeg's libopus. The seat puts it on its sender before the first frame
    (:meth:`RoomSeat.admitted`); aiortc still computes the audio level each
    frame carries, so the room sees the phone speak."""

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
        }
        self._first: int | None = None

    def encode(self, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int | None]:
        packets = self.codec.encode(frame)
        if not packets:
            return [], None
        pts = int(packets[0].pts or 0)
        if self._first is None:
            # libopus's look-ahead starts the stamps below zero.
            self._first = pts
        return [bytes(p) for p in packets], pts - self._first

    def pack(self, packet: Any) -> tuple[list[bytes], int]:
        return [bytes(packet)], int(packet.pts)


def _phone_track(queue: asyncio.Queue[Pcm], ready: asyncio.Event) -> Any:
    """An aiortc audio track that sends what the phone leg hands the seat,
    20 ms at a time, and silence while it hands nothing (before the phone
    is answered, or a frame late): aiortc's sender reads it at its own
    pace, so a missing frame must not stall the track."""
    import av
    from aiortc.mediastreams import MediaStreamTrack

    class PhoneTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self) -> None:
            super().__init__()
            self._sent = 0
            self._start: float | None = None

        async def recv(self) -> Any:
            loop = asyncio.get_running_loop()
            if self._start is None:
                # The first frame waits for the seat's encoder to be on the
                # sender: aiortc makes its own at the first frame it encodes.
                await ready.wait()
                self._start = loop.time()
            due = self._start + self._sent * ROOM_FRAME / ROOM_RATE
            try:
                # Wait for the phone's frame until a little after this
                # frame's time; then send silence in its place.
                pcm = await asyncio.wait_for(queue.get(), max(0.0, due - loop.time()) + 0.01)
            except TimeoutError:
                pcm = _SILENCE
            frame = av.AudioFrame(format="s16", layout="mono", samples=ROOM_FRAME)
            frame.planes[0].update(pcm.tobytes())
            frame.sample_rate = ROOM_RATE
            frame.pts = self._sent * ROOM_FRAME
            frame.time_base = fractions.Fraction(1, ROOM_RATE)
            self._sent += 1
            return frame

    return PhoneTrack()


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
        ready = asyncio.Event()
        await self.client.publish({"microphone": _phone_track(self._up, ready)})
        for sender in self.client.publish_pc.getSenders():
            if sender.kind == "audio":
                # aiortc has no public way to choose a sender's encoder; it
                # makes one (stereo, 96 kbit/s, no FEC) only where none is set.
                sender._RTCRtpSender__encoder = PhoneOpus()
        ready.set()
        self._watch = asyncio.create_task(self._read_new_tracks(), name="seat tracks")

    def phone_audio(self, pcm: Pcm) -> None:
        """20 ms of the phone's voice at 48 kHz, for the room."""
        if self._up.full():
            self.dropped_up += 1
            self._up.get_nowait()  # the oldest goes: the room hears now, not then
        self._up.put_nowait(pcm)

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
                        self._read(source, received.track), name=f"seat {mid}"
                    )
            with contextlib.suppress(TimeoutError):
                await self.client.wait_until(
                    lambda: any(
                        m not in self._readers and r.kind == "audio" and r.track is not None
                        for m, r in self.client.received.items()
                    ),
                    within=3600.0,
                )

    async def _read(self, source: str, track: Any) -> None:
        """One remote audio track into the mixer (``source``: its
        participant and m= section, as a participant may send two)."""
        from aiortc.mediastreams import MediaStreamError

        self.mixer.add_source(source, listens=False)
        try:
            while True:
                try:
                    frame = await track.recv()
                except MediaStreamError:
                    return
                self.mixer.push(source, _mono(frame))
        finally:
            self.mixer.remove_source(source)
