"""What the phone bridge's audio costs per 20 ms frame, and per call.

Each step of ``sip.audio`` on one 20 ms frame of speech-like audio (a tone
and its harmonic): G.711 and G.722 decode and encode (ours and, for G.711,
PyAV's codec context for comparison), the room's mix resampled down to the
phone's rate, the seat's Opus (the phone's voice encoded at its own rate,
the room's decoded to 48 kHz mono), the jitter buffer's put and pop,
concealment, and the N-1 mixer's tick. Then the whole of one 1:1 phone
visit's tick: the phone's packet through the jitter buffer, decoded and
Opus-encoded for the room; the other participant's Opus decoded into the
mixer; the phone's mix resampled to 8 kHz and encoded. CPU
time of this process, microseconds per call, best of several runs, so load
on a shared machine moves the figures less than wall time would. Figures,
not assertions.

    .venv/bin/python -m benchmarks.sip.run [--runs 5] [--frames 2000] [--json PATH]

It writes the figures as JSON too (``--json``, default
``benchmarks/results/sip-audio.json``). It measures the audio cores alone:
the bridge's whole cost per call (SIP, RTP, SRTP, aiortc's peer
connections) is ``benchmarks/sip/capacity.py``'s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks.common import ROOT, write_results
from sip.audio.codecs import transcoder
from sip.audio.conceal import Concealer
from sip.audio.jitter import JitterBuffer
from sip.audio.mixer import Mixer
from sip.audio.pcm import ROOM_FRAME, ROOM_RATE
from sip.audio.resample import Downsampler
from sip.formats import G722, PCMA, PCMU
from sip.node.seat import PhoneOpus, RoomOpus


def speech_like(rate: int, samples: int) -> np.ndarray:
    t = np.arange(samples) / rate
    signal = 6000 * np.sin(2 * np.pi * 200 * t) + 2000 * np.sin(2 * np.pi * 1000 * t)
    return np.rint(signal).astype(np.int16)


def best_us(step: Callable[[int], Any], frames: int, runs: int) -> float:
    """CPU microseconds per call of ``step(k)`` for k in range(frames), best of ``runs``."""
    best = float("inf")
    for _ in range(runs):
        start = time.process_time()
        for k in range(frames):
            step(k)
        best = min(best, time.process_time() - start)
    return best / frames * 1e6


def pyav_context(name: str, mode: str) -> Any:
    context = av.CodecContext.create(name, mode)
    context.sample_rate = 8000
    context.layout = "mono"
    if mode == "w":
        context.format = "s16"
    return context


def pyav_encode(context: Any, pcm: np.ndarray) -> bytes:
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = 8000
    return b"".join(bytes(p) for p in context.encode(frame))


def pyav_decode(context: Any, payload: bytes) -> np.ndarray:
    return context.decode(av.Packet(payload))[0].to_ndarray().reshape(-1)


def steps(frames: int) -> dict[str, Callable[[int], Any]]:
    narrow = speech_like(8000, 160)
    wide = speech_like(16000, 320)
    room = speech_like(ROOM_RATE, ROOM_FRAME)
    out: dict[str, Callable[[int], Any]] = {}
    legs = ((PCMU, narrow, "pcm_mulaw"), (PCMA, narrow, "pcm_alaw"), (G722, wide, None))
    for codec, pcm, ffmpeg in legs:
        leg = transcoder(codec)
        payload = leg.encode(pcm)
        out[f"{codec.name} decode"] = lambda k, leg=leg, payload=payload: leg.decode(payload)
        out[f"{codec.name} encode"] = lambda k, leg=leg, pcm=pcm: leg.encode(pcm)
        if ffmpeg:
            dec, enc = pyav_context(ffmpeg, "r"), pyav_context(ffmpeg, "w")
            out[f"{codec.name} decode, PyAV"] = lambda k, d=dec, p=payload: pyav_decode(d, p)
            out[f"{codec.name} encode, PyAV"] = lambda k, e=enc, p=pcm: pyav_encode(e, p)
    for rate, pcm in ((8000, narrow), (16000, wide)):
        down = Downsampler(rate)
        out[f"resample 48k -> {rate // 1000}k"] = lambda k, r=down: r.resample(room)
        encoder = PhoneOpus(rate)
        out[f"Opus encode at {rate // 1000}k"] = lambda k, e=encoder, p=pcm: e.encode(p)
    decoder, packet = room_opus()
    out["Opus decode to 48k mono"] = lambda k: decoder.decode(packet)
    buffer = JitterBuffer()
    payload = transcoder(PCMU).encode(narrow)

    def jitter(k: int) -> None:
        buffer.put(k & 0xFFFF, k * 160, payload, k * 0.02 + 0.005)
        buffer.pop(k * 0.02 + 0.011)

    out["jitter put + pop"] = jitter
    concealer = Concealer(8000)
    concealer.accept(narrow)
    out["conceal (a 1-in-5 loss)"] = lambda k: (
        concealer.conceal() if k % 5 == 4 else concealer.accept(narrow)
    )
    for sources in (2, 4):
        mixer = Mixer()
        for s in range(sources):
            mixer.add_source(s, listens=s == 0)

        def tick(k: int, mixer: Mixer = mixer, sources: int = sources) -> None:
            for s in range(sources):
                mixer.push(s, room)
            mixer.mix()

        out[f"mixer tick, {sources} sources, 1 listener"] = tick
    return out


def room_opus() -> tuple[RoomOpus, bytes]:
    """The seat's decoder and a packet of a participant's Opus (a browser's
    32 kbit/s 48 kHz voice)."""
    context = av.CodecContext.create("libopus", "w")
    context.bit_rate, context.format, context.layout = 32_000, "s16", "mono"
    context.sample_rate = ROOM_RATE
    voice = speech_like(ROOM_RATE, ROOM_FRAME)
    packets: list[bytes] = []
    for k in range(5):
        frame = av.AudioFrame.from_ndarray(voice.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = ROOM_RATE, k * ROOM_FRAME
        packets += [bytes(p) for p in context.encode(frame)]
    return RoomOpus(), packets[-1]


def call_tick() -> Callable[[int], Any]:
    """One 1:1 phone visit (phone and one participant), one 20 ms tick."""
    phone = transcoder(PCMU)
    payload = phone.encode(speech_like(8000, 160))
    buffer, concealer = JitterBuffer(), Concealer(8000)
    down, encoder = Downsampler(8000), PhoneOpus(8000)
    decoder, packet = room_opus()
    mixer = Mixer()
    mixer.add_source("phone")
    mixer.add_source("doctor", listens=False)

    def tick(k: int) -> None:
        buffer.put(k & 0xFFFF, k * 160, payload, k * 0.02 + 0.005)
        got = buffer.pop(k * 0.02 + 0.011)
        pcm = concealer.conceal() if got is None else concealer.accept(phone.decode(got))
        encoder.encode(pcm)
        mixer.push("doctor", decoder.decode(packet)[0])
        phone.encode(down.resample(mixer.mix()["phone"]))

    return tick


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--frames", type=int, default=2000)
    default = ROOT / "benchmarks" / "results" / "sip-audio.json"
    parser.add_argument("--json", type=Path, default=default)
    args = parser.parse_args()
    print(f"{'per 20 ms frame':40} {'us':>8}")
    figures: dict[str, float] = {}
    for name, step in steps(args.frames).items():
        figures[name] = round(best_us(step, args.frames, args.runs), 2)
        print(f"{name:40} {figures[name]:8.1f}")
    per_call = best_us(call_tick(), args.frames, args.runs)
    print(f"{'one 1:1 phone visit, whole tick':40} {per_call:8.1f}")
    print(f"calls one core holds (20 ms / tick): {20_000 / per_call:.0f}")
    write_results(
        args.json,
        {
            "us_per_frame": figures,
            "us_per_call_tick": round(per_call, 2),
            "calls_per_core": round(20_000 / per_call),
            "runs": args.runs,
            "frames": args.frames,
        },
    )


if __name__ == "__main__":
    main()
