"""The phone's seat in a room (sip/node/seat.py) on the real server with its
media worker: the seat is an ordinary participant, so the room hears the
phone through the SFU, and the seat's mix is everyone but the phone.

Two seats and one plain client share a room: seat A's phone says 1 kHz
at 8 kHz (G.711's rate), seat B's 450 Hz at 16 kHz (G.722's), the client
plays 650 Hz (wadud_client's ToneAudio, which
repeats one 20 ms frame: hence tones that fit 20 ms a whole number of
times). What each seat's mix holds is read by FFT: the other two tones,
never its own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import numpy as np
import pytest

from sip.errors import AudioFrameError
from sip.node.seat import OPUS_BITRATE, PhoneOpus, RoomSeat, level_dbov
from tests.conftest import Api, free_udp_port
from tests.signalling.test_client_call import Call, calling
from wadud.config import Settings
from wadud_client.sources import ToneAudio

RATE = 48_000


@pytest.fixture
def settings(settings: Settings) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, media_port=free_udp_port())


@pytest.fixture
async def call(api: Api, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Call]:
    import aioice.ice

    # aioice leaves loopback out of its host candidates; a loopback call needs it.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])
    async with calling(api) as c:
        yield c


def tone(frequency: float, n: int, rate: int = RATE) -> np.ndarray:
    t = (np.arange(n) + n) / rate
    return (8000 * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def strongest(pcm: np.ndarray, count: int) -> set[int]:
    """The ``count`` strongest frequencies of ``pcm``, rounded to 10 Hz."""
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    freqs = np.fft.rfftfreq(pcm.shape[0], 1 / RATE)
    found: set[int] = set()
    for index in np.argsort(spectrum)[::-1]:
        f = int(round(freqs[index] / 10) * 10)
        if all(abs(f - g) > 40 for g in found):
            found.add(f)
        if len(found) == count:
            break
    return found


def level_at(pcm: np.ndarray, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    freqs = np.fft.rfftfreq(pcm.shape[0], 1 / RATE)
    band = (freqs > frequency - 30) & (freqs < frequency + 30)
    return float(spectrum[band].max() / spectrum.max())


async def speak_and_listen(seat: RoomSeat, frequency: float, rate: int, ticks: int) -> np.ndarray:
    """As the phone leg does: every 20 ms, 20 ms of the phone's voice up (at
    ``rate``, its codec's) and 20 ms of the mix down; the last second of the mix."""
    loop = asyncio.get_running_loop()
    start, heard = loop.time(), []
    frame = rate // 50
    for k in range(ticks):
        seat.phone_audio(tone(frequency, frame * (k + 1), rate)[-frame:])
        heard.append(seat.mix())
        await asyncio.sleep(max(0.0, start + (k + 1) * 0.02 - loop.time()))
    return np.concatenate(heard[-50:])


def _hears(seat: RoomSeat) -> set[str]:
    """Whose audio ``seat``'s connection receives."""
    return {
        str(r.participant)
        for r in seat.client.received.values()
        if r.kind == "audio" and r.track is not None
    }


async def test_each_seat_hears_the_room_but_never_its_own_phone(call: Call) -> None:
    room = "room-" + uuid.uuid4().hex[:8]
    seats = [
        RoomSeat(call.url, call.token(room, f"phone-{name}"), label=f"phone-{name}")
        for name in ("a", "b")
    ]
    try:
        # A phone that calls before the doctor is there waits, as a patient
        # does, until the doctor lets it in.
        asked = await seats[0].join()
        assert asked["type"] == "waiting", asked
        doctor = await call.join(room, "doctor", role="doctor", admin=True)
        await doctor.publish({"microphone": ToneAudio(650)})
        await doctor.wait_until(lambda: doctor.waiting)
        await doctor.admit(str(doctor.waiting[0]["id"]))
        await seats[0].admitted(10.0)
        assert (await seats[1].join())["type"] == "joined"
        await seats[1].admitted(10.0)
        # Each seat receives the doctor's and the other phone's audio before
        # the measured seconds: what a connection receives follows the room
        # by another offer, which a starved machine takes its time over.
        ids = {str(doctor.participant_id), *(str(s.client.participant_id) for s in seats)}
        for seat in seats:
            own = str(seat.client.participant_id)
            await seat.client.wait_until(lambda seat=seat, own=own: ids - {own} <= _hears(seat), 15)
        # Three seconds of both phones speaking, each seat's mix listened to.
        a, b = await asyncio.gather(
            speak_and_listen(seats[0], 1000, 8000, 150),
            speak_and_listen(seats[1], 450, 16000, 150),
        )
        # Each seat's microphone went out through its own encoder (mono,
        # with FEC, at its phone's rate), coded in the event loop: aiortc
        # never made its own, and decoded what it heard there too, each
        # track's decoder thread idle.
        for seat, rate in zip(seats, (8000, 16000), strict=True):
            # Those that send: a single connection's receiving sections
            # have (idle) senders too.
            senders = [
                s
                for s in seat.client.publish_pc.getSenders()
                if s.kind == "audio" and s.track is not None
            ]
            assert [s._RTCRtpSender__encoder for s in senders] == [None]
            assert isinstance(seat.encoder, PhoneOpus)
            assert seat.encoder.rate == rate and seat.encoder._pts > 0
            receivers = [t.receiver for t in seat.client.subscribe_pc.getTransceivers()]
            inline = [
                r._RTCRtpReceiver__decoder_queue
                for r in receivers
                if r.track is not None and r.track.kind == "audio"
            ]
            assert inline and all(type(q).__name__ == "_InlineDecoding" for q in inline)
    finally:
        await asyncio.gather(*(seat.leave() for seat in seats), return_exceptions=True)
    assert strongest(a, 2) == {450, 650}, strongest(a, 3)
    assert strongest(b, 2) == {650, 1000}, strongest(b, 3)
    # A phone's own voice is not in its mix at all, not merely quieter: at
    # its frequency there is only the floor either side of it (a frame the
    # room's audio came late for is a gap, whose edges splatter across the
    # spectrum on a busy machine, so a fixed bound would measure the gaps).
    for pcm, own in ((a, 1000), (b, 450)):
        floor = (level_at(pcm, own - 100) + level_at(pcm, own + 100)) / 2
        assert level_at(pcm, own) < max(1.5 * floor, 0.01), (own, floor, level_at(pcm, own))


def test_the_audio_level_is_rfc_6465s() -> None:
    """A full-scale square wave is 0 dBov, silence -127, and a sine 3 dB
    under its peak; aiortc's own computation agrees frame for frame."""
    import av
    from aiortc.rtp import compute_audio_level_dbov

    square = np.where(np.arange(960) % 96 < 48, 32767, -32767).astype(np.int16)
    assert level_dbov(square) == 0
    assert level_dbov(np.zeros(960, dtype=np.int16)) == -127
    for amplitude in (30000, 3000, 300, 30):
        pcm = tone(1000, 960) * 0 + (amplitude * np.sin(np.arange(960) / 7.6)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        assert level_dbov(pcm) == compute_audio_level_dbov(frame), amplitude


@pytest.mark.parametrize(("rate", "bandwidths"), [(8000, range(0, 4)), (16000, range(0, 12))])
def test_the_phones_opus_is_mono_at_its_bitrate_and_carries_fec(
    rate: int, bandwidths: range
) -> None:
    """RFC 6716 section 4.2.3: in a 20 ms mono SILK frame the second
    symbol, coded with probability one half and so the second bit of the
    byte after the TOC, is the LBRR flag: this frame carries its
    predecessor again, at lower quality, for a receiver that lost it.
    The phone's rate is coded as it is: SILK, no wider than narrowband
    from 8 kHz, than wideband from 16 kHz (the TOC's configuration,
    section 3.1; the encoder narrows further where the sound has nothing
    above)."""
    encoder = PhoneOpus(rate)
    frame = rate // 50
    rng = np.random.default_rng(38)
    payloads: list[bytes] = []
    for k in range(100):
        voice = tone(300, frame * (k + 1), rate)[-frame:] + rng.normal(0, 500, frame).astype(
            np.int16
        )
        sent = encoder.encode(voice)
        assert len(sent) == 1  # one packet for every frame, from the first
        payloads += sent
    steady = payloads[5:]
    # The TOC's stereo flag (bit 2) is clear: one channel.
    assert all(not p[0] & 0x04 for p in steady)
    assert {p[0] >> 3 for p in steady} <= set(bandwidths)
    # About the bitrate asked for (20 ms a packet), far from aiortc's 96 kbit/s.
    bitrate = 8 * sum(len(p) for p in steady) / (0.02 * len(steady))
    assert 0.7 * OPUS_BITRATE < bitrate < 1.3 * OPUS_BITRATE, bitrate
    # In-band FEC: frames carry the one before again (none at all without it).
    assert sum(1 for p in steady if p[1] & 0x40) > 0.1 * len(steady)


def test_the_phones_opus_takes_only_a_phones_rates() -> None:
    with pytest.raises(ValueError, match="44100"):
        PhoneOpus(44100)
    with pytest.raises(AudioFrameError):
        PhoneOpus(8000).encode(np.zeros(960, dtype=np.int16))
