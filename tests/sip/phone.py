"""A phone for the bridge's end-to-end tests: SIPp on the SIP side (the
trunk's signalling, and SIP INFO digits), and the test's own UDP socket on
the RTP side, which speaks G.711 µ-law as a phone does, keys digits in the
three RTP forms providers use (RFC 4733 with the marker bit, without it,
in-band tones) and keeps what it hears.

The µ-law coding here is FFmpeg's (PyAV's ``pcm_mulaw``), not the bridge's
own tables, so that the two ends do not share a mistake.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import av
import numpy as np

from tests.cluster import free_udp_ports
from tests.conftest import free_udp_port

HOST = "127.0.0.1"
RATE = 8000
FRAME = 160  # 20 ms at 8 kHz
DTMF_PT = 101
_EVENTS = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
# ITU-T Q.23: each key is one low and one high frequency.
_ROWS = (697, 770, 852, 941)
_COLUMNS = (1209, 1336, 1477, 1633)
_KEYPAD = ("123A", "456B", "789C", "*0#D")


def _codec(mode: str) -> av.CodecContext:
    ctx = av.CodecContext.create("pcm_mulaw", mode)
    ctx.sample_rate = RATE  # type: ignore[attr-defined]
    ctx.format = "s16"  # type: ignore[attr-defined]
    ctx.layout = "mono"  # type: ignore[attr-defined]
    return ctx


def ulaw(pcm: np.ndarray) -> bytes:
    frame = av.AudioFrame.from_ndarray(
        pcm.reshape(1, -1).astype(np.int16), format="s16", layout="mono"
    )
    frame.sample_rate = RATE
    return b"".join(bytes(p) for p in _codec("w").encode(frame))  # type: ignore[attr-defined]


def linear(payload: bytes) -> np.ndarray:
    packet = av.Packet(payload)
    frames = _codec("r").decode(packet)  # type: ignore[attr-defined]
    return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.int16)


def sine(frequency: float, samples: int, start: int = 0, amplitude: float = 8000.0) -> np.ndarray:
    t = (np.arange(samples) + start) / RATE
    return (amplitude * np.sin(2 * np.pi * frequency * t)).astype(np.int16)


def key_tone(key: str, samples: int) -> np.ndarray:
    row = next(i for i, r in enumerate(_KEYPAD) if key in r)
    column = _KEYPAD[row].index(key)
    return (
        sine(_ROWS[row], samples, amplitude=7000) + sine(_COLUMNS[column], samples, amplitude=7000)
    ).astype(np.int16)


class Phone(asyncio.DatagramProtocol):
    """The phone's RTP socket: what it hears, kept as 8 kHz PCM; what it
    says, sent every 20 ms once it knows where the bridge sends from."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport
        self.bridge: tuple[str, int] | None = None
        self.heard: list[np.ndarray] = []
        self.arrived = asyncio.Event()
        self._seq = 1000
        self._ts = 50_000
        self._ssrc = 0x5EED1234

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[1] & 0x7F != 0:
            return
        self.bridge = self.bridge or addr
        self.heard.append(linear(data[12:]))
        self.arrived.set()

    @property
    def port(self) -> int:
        return cast(int, self.transport.get_extra_info("sockname")[1])

    async def first_audio(self, within: float = 20.0) -> None:
        """Wait until the bridge's first audio came: a bounded wait, so a
        bridge that sends nothing fails the test, not its worker (ci128: an
        unbounded one hung until pytest-timeout killed the xdist worker)."""
        try:
            await asyncio.wait_for(self.arrived.wait(), within)
        except TimeoutError:
            raise AssertionError(
                f"no audio from the bridge at port {self.port} in {within} s"
            ) from None

    def _send(
        self, pt: int, payload: bytes, *, marker: bool = False, ts: int | None = None
    ) -> None:
        assert self.bridge is not None
        header = struct.pack(
            "!BBHII", 0x80, (0x80 if marker else 0) | pt, self._seq & 0xFFFF,
            (self._ts if ts is None else ts) & 0xFFFFFFFF, self._ssrc,
        )  # fmt: skip
        self._seq += 1
        self.transport.sendto(header + payload, self.bridge)

    async def _paced(self, steps: Sequence[tuple[int, bytes, bool, int | None, bool]]) -> None:
        """Send one packet per 20 ms: (payload type, payload, marker,
        timestamp or None for the running one, whether it advances time)."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        for pt, payload, marker, ts, advances in steps:
            self._send(pt, payload, marker=marker, ts=ts)
            if advances:
                self._ts += FRAME
                due += FRAME / RATE
                await asyncio.sleep(max(0.0, due - loop.time()))

    async def speak(self, pcm: np.ndarray) -> None:
        """``pcm`` (8 kHz) as 20 ms PCMU packets, in real time."""
        coded = ulaw(pcm)
        await self._paced(
            [
                (0, coded[i : i + FRAME], False, None, True)
                for i in range(0, len(coded) - FRAME + 1, FRAME)
            ]
        )

    async def key_events(self, keys: str, *, marker: bool) -> None:
        """Each key as RFC 4733 events: 100 ms of updates, the end packet
        three times, then 100 ms of the tone's audio between keys."""
        silence = ulaw(np.zeros(FRAME, dtype=np.int16))
        for key in keys:
            start = self._ts
            steps: list[tuple[int, bytes, bool, int | None, bool]] = []
            for k in range(1, 6):
                payload = struct.pack("!BBH", _EVENTS[key], 10, k * FRAME)
                steps.append((DTMF_PT, payload, marker and k == 1, start, True))
            end = struct.pack("!BBH", _EVENTS[key], 0x80 | 10, 5 * FRAME)
            steps += [(DTMF_PT, end, False, start, False)] * 2 + [
                (DTMF_PT, end, False, start, True)
            ]
            steps += [(0, silence, False, None, True)] * 5
            await self._paced(steps)

    async def key_tones(self, keys: str) -> None:
        """Each key as its two tones in the audio (ITU-T Q.23): 120 ms on, 120 ms off."""
        silence = np.zeros(6 * FRAME, dtype=np.int16)
        await self.speak(
            np.concatenate([np.concatenate((key_tone(k, 6 * FRAME), silence)) for k in keys])
        )

    def heard_pcm(self, seconds: float) -> np.ndarray:
        frames = self.heard[-round(seconds * RATE / FRAME) :]
        return np.concatenate(frames) if frames else np.zeros(0, dtype=np.int16)


async def phone() -> Phone:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(Phone, local_addr=(HOST, free_udp_port()))
    return protocol


#: SIPp's answer to the request it just took in a dialog (a BYE): 200 OK.
OK_TO_IT = """  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Content-Length: 0

]]></send>
"""


def invite_scenario(
    media_port: int, *, dtmf: bool, info_keys: str = "", caller: str = "+923001234534"
) -> str:
    """SIPp as the trunk: INVITE with a G.711 offer on ``media_port`` (with
    ``telephone-event`` when ``dtmf``), ACK, ``info_keys`` as SIP INFO
    (``application/dtmf-relay``), then wait for the bridge's BYE and answer it."""
    payloads = "0 8 101" if dtmf else "0 8"
    events = "a=rtpmap:101 telephone-event/8000\na=fmtp:101 0-15\n" if dtmf else ""
    dialog = (
        f'From: "{caller}" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n'
        "To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]\n"
        "Call-ID: [call_id]\n"
    )
    infos = ""
    for n, key in enumerate(info_keys, start=2):
        body = f"Signal={key}\r\nDuration=160\r\n"
        infos += f"""  <send retrans="500"><![CDATA[
INFO [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}CSeq: {n} INFO
Max-Forwards: 70
Content-Type: application/dtmf-relay
Content-Length: [len]

{body}]]></send>
  <recv response="200"/>
  <pause milliseconds="150"/>
"""
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="dial in">
  <send retrans="500"><![CDATA[
INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog.replace("[peer_tag_param]", "")}CSeq: 1 INVITE
Contact: <sip:sipp@[local_ip]:[local_port]>
Max-Forwards: 70
Content-Type: application/sdp
Content-Length: [len]

v=0
o=trunk 53655765 2353687637 IN IP4 [local_ip]
s=-
c=IN IP4 [local_ip]
t=0 0
m=audio {media_port} RTP/AVP {payloads}
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
{events}a=ptime:20
]]></send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rrs="true"/>
  <send><![CDATA[
ACK [next_url] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch];rport
{dialog}CSeq: 1 ACK
Max-Forwards: 70
Content-Length: 0

]]></send>
{infos}  <recv request="BYE" timeout="60000"/>
{OK_TO_IT}</scenario>
"""


class Sipp:
    """One SIPp call run in the background: from ``xml`` to the bridge on
    ``port``, or (:meth:`callee`) a phone the bridge calls, on
    :attr:`listen`."""

    def __init__(self, folder: Path, xml: str, port: int | None) -> None:
        self.folder = folder
        self.xml = xml
        self.port = port
        #: The address SIPp sends from (a trunk's, or not).
        self.host = HOST
        #: The UDP port SIPp takes SIP on.
        self.listen = free_udp_port()
        self.process: asyncio.subprocess.Process | None = None
        self.stderr = ""

    @classmethod
    def callee(cls, folder: Path, xml: str, listen: int | None = None) -> Sipp:
        """SIPp as a phone that waits for the bridge's call (a UAS), on
        ``listen`` (a free port unless told)."""
        sipp = cls(folder, xml, None)
        if listen is not None:
            sipp.listen = listen
        return sipp

    async def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        scenario = self.folder / "scenario.xml"
        scenario.write_text(self.xml)
        # A callee names no one to call; its media ports are its own too.
        # SIPp binds four from -mp (audio and video RTP and RTCP): one free
        # port with a neighbour another test had bound failed its start
        # (ci126, errno 98 on the video socket) and the call never came.
        where = ["-mp", str(free_udp_ports(4))] if self.port is None else [f"{HOST}:{self.port}"]
        self.process = await asyncio.create_subprocess_exec(
            *("sipp", "-sf", str(scenario), "-s", "visit", "-i", self.host),
            *("-p", str(self.listen)),
            *("-t", "u1", "-m", "1", "-timeout", "90", "-trace_err", "-nostdin"),
            *where,
            cwd=self.folder,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

    async def finished(self, within: float = 30.0) -> int:
        """SIPp's exit code once the call is over (0: every step as scripted)."""
        assert self.process is not None
        _, stderr = await asyncio.wait_for(self.process.communicate(), within)
        self.stderr = stderr.decode(errors="replace")
        return cast(int, self.process.returncode)

    def errors(self) -> str:
        return self.stderr + "".join(p.read_text() for p in self.folder.glob("*_errors.log"))

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            # SIPp may have ended on its own and not yet been reaped (ci154).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            await self.process.wait()
