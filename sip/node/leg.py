"""The phone side's media for one call: RTP over UDP, as the phone hears it.

One :class:`PhoneLeg` per call owns the call's UDP socket and a steady
20 ms clock, and joins the audio cores of :mod:`sip.audio` to the network:

* Incoming RTP (RFC 3550 section 5.1): the agreed codec's payload type
  into the jitter buffer; ``telephone-event`` into the RFC 4733 receiver,
  whose digits go to ``on_digit``; comfort noise (payload type 13, RFC 3389)
  counted and left to concealment, which plays comfort noise of its own;
  anything else counted and dropped. With no ``telephone-event`` agreed,
  digits are heard as tones in the decoded audio (ITU-T Q.24), while the
  call listens for them (:meth:`PhoneLeg.listen_for_tones`: the IVR does,
  a call in the room only while it asks the caller something).
* Each tick plays one frame: the jitter buffer's next payload decoded, or
  concealment, for ``on_audio`` at the codec's rate (the seat's Opus
  encoder takes 8 and 16 kHz as they are); and sends one frame: a prompt
  if one plays, else the room's mix (``send_audio``, 48 kHz, resampled
  down), else silence.
* SDES-SRTP (RFC 4568, RFC 3711) when the SDP carried keys.

**Arrival times are the kernel's.** The jitter buffer sizes itself by the
spread of the packets' arrival times. Read when the event loop gets to
them, a bridge busy with other calls would stamp a packet late by however
long the loop was away, and the buffer would grow (and the caller's delay
with it) for a delay that was the bridge's, not the network's. So the leg
reads its socket itself (``recvmsg``), with each datagram's kernel receive
time (Linux's ``SO_TIMESTAMPNS``; elsewhere the loop's time), and each tick
first reads what arrived before it: a loop runs timers before it polls
sockets, so a late tick would otherwise play before the packet it is for
was read.

**Symmetric RTP and latching.** Phones behind NAT put their private
address in the SDP and wait for media to come back where theirs left from;
trunks behind session border controllers send from an address the SDP does
not name. So the leg sends from the socket it receives on (RFC 4961
symmetric RTP), to the SDP's address only until the first valid packet
(the agreed payload types, and authentic when keyed) comes, and from then
on to that packet's source. A packet from another source is dropped unless
the latched source has been silent for :data:`RELATCH_SILENCE`: then the
leg latches to it. That is the phone's path moving while the call goes on
(its NAT gave it a new port, a handset moved from Wi-Fi to mobile data: the
same SSRC from a new address), or the provider moving the call to another
media server (a new SSRC). Waiting for the old source's silence is what
keeps a stranger who guesses the port from taking the call's audio (the
"RTP bleed" of other bridges): a phone sends every 20 ms for the whole
call, so a live source is never silent that long. With SRTP a stranger's
packets fail authentication before latching is asked.

**Why silence, not comfort noise, when there is nothing to say.** The leg
sends a packet every 20 ms for the whole call. NATs forget an idle UDP
binding within 30 s or so, and trunks end calls whose RTP stops (the same
media timeout this leg keeps). RFC 3389 comfort noise would save a little
bandwidth, but only if both ends agreed payload type 13 in the SDP, which
the bridge neither offers nor answers (:mod:`sip.wire.sdp`); and its
packets come seldom enough to trip those same timers. G.711 silence is
64 kbit/s of nothing, which every trunk is built for.

Sending stops while the far end holds the call (its SDP says ``sendonly``
or ``inactive``, or its address is 0.0.0.0, RFC 3264 section 8.4); the
timestamps keep advancing with time, and the first packet after it carries
the marker bit, as a talkspurt after silence does (RFC 3551 section 4.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import socket
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rtc.errors import SrtpError
from rtc.rtp.extensions import EXTENSION_HEADER
from rtc.rtp.header import FIXED_HEADER
from rtc.sdp.attributes import Direction
from rtc.stamps import TIMESPEC, on_loop_clock
from sip.audio.codecs import Transcoder, transcoder
from sip.audio.conceal import Concealer
from sip.audio.dtmf import EventReceiver
from sip.audio.jitter import JitterBuffer
from sip.audio.pcm import ROOM_FRAME, Pcm, check_pcm
from sip.audio.resample import Downsampler
from sip.audio.tones import ToneDetector
from sip.errors import DtmfParseError, MediaPortError
from sip.formats import FRAME_MS, PHONE_CODECS, PhoneCodec
from sip.node.sdes import SdesSession
from sip.wire.sdp import PhoneMedia
from wadud.clocks import WallLead

__all__ = [
    "MEDIA_TIMEOUT",
    "RELATCH_SILENCE",
    "LegStats",
    "PhoneLeg",
]

#: Seconds without any valid RTP before a call is dead. Phones send RTP for
#: the whole call (G.711 has no silence suppression unless CN was agreed),
#: so 30 s is a phone gone, not a quiet one.
MEDIA_TIMEOUT = 30.0
#: Seconds the latched source must be silent before another may take over.
RELATCH_SILENCE = 0.5
#: Comfort noise's static payload type (RFC 3551 table 4, RFC 3389).
COMFORT_NOISE = 13

_FRAME = FRAME_MS / 1000
# Ticks further behind than this (the loop was stalled) are skipped, not
# run back to back: a burst of a second's packets helps no listener.
_MAX_LAG = 0.2
# version 2, no padding, extension or CSRC | marker, payload type | seq | ts | SSRC
_VERSION = 0x80
_MARKER = 0x80
# RTCP packet types 200-204 read as RTP's marker bit and payload types 72-76
# (RFC 5761 section 4): RTCP multiplexed on the RTP port, which a phone
# should not send us, is told apart and dropped.
_RTCP_TYPES = range(72, 77)
_RECEIVERS = (Direction.SENDRECV, Direction.RECVONLY)
_NO_ADDRESS = ("0.0.0.0", "::")
#: Linux's SO_TIMESTAMPNS (and its control message, SCM_TIMESTAMPNS): each
#: datagram comes with the time the kernel received it, a struct timespec.
#: Python's socket module does not name it.
_SCM_TIMESTAMPNS = 35
_ANCILLARY = socket.CMSG_SPACE(TIMESPEC.size)
#: Larger than any RTP packet a phone sends (a G.722 frame is 172 bytes).
_MAX_DATAGRAM = 2048
#: Datagrams read per wake-up at most, so one flooded leg cannot hold the loop.
_READ_BATCH = 32

Address = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class LegStats:
    """What one phone leg did since it opened (RFC 3550 section 6.4's
    counts, and this bridge's own)."""

    packets_in: int
    """Datagrams that arrived, whatever they were."""
    bytes_in: int
    packets_out: int
    bytes_out: int
    late: int
    """Audio packets that came after their slot was played (jitter buffer)."""
    concealed: int
    """Ticks played from concealment while audio was expected."""
    duplicate: int
    dtmf_digits: int
    """Digits handed to ``on_digit``, as events or heard as tones."""
    comfort_noise: int
    """Comfort noise packets (RFC 3389), accepted and not decoded."""
    other_payload: int
    """RTP packets of a payload type not agreed: dropped."""
    stray: int
    """Valid packets from a source other than the latched one, or before
    :meth:`PhoneLeg.start`: dropped."""
    malformed: int
    """Datagrams that are not RTP (RFC 3550 section 5.1), or RFC 4733
    payloads too short, or RTCP on the RTP port: dropped."""
    srtp_failures: int
    """Packets that failed SRTP authentication or replay checks: dropped."""
    latched: tuple[str, int] | None
    """Where the leg sends: the source it latched to, else the SDP's address."""
    relatches: int
    clock_slips: int
    """Times the loop stalled so long that ticks were skipped."""
    jitter_delay_ms: float
    """The delay the jitter buffer added to the last frame played."""
    jitter_target_ms: float
    send_late_ms: float = 0.0
    """The most a frame went out after its tick's time: how busy the loop
    has been. Past half a frame (10 ms), the phone's jitter buffer may have
    had to conceal one (our packets arrive halfway between its ticks)."""


class _Codec:
    """One codec's state for the call: kept across a re-INVITE that keeps
    the codec (predictors, buffers and filters carry on), replaced when it
    changes."""

    __slots__ = (
        "codec",
        "concealer",
        "down",
        "frame",
        "heard",
        "jitter",
        "silence",
        "ticks",
        "transcoder",
    )

    def __init__(self, codec: PhoneCodec) -> None:
        self.codec = codec
        self.frame = codec.frame_samples
        self.ticks = codec.frame_ticks
        self.transcoder: Transcoder = transcoder(codec)
        self.jitter = JitterBuffer(codec.clock_rate)
        self.concealer = Concealer(codec.sample_rate)
        self.down = Downsampler(codec.sample_rate)
        self.silence = np.zeros(self.frame, dtype=np.int16)
        self.silence.setflags(write=False)
        self.heard = False  # a packet was decoded: before it, hand out silence as is


def _fit(pcm: Pcm, samples: int) -> Pcm:
    """A decoded payload cut or padded to one frame: a far end that ignored
    ``ptime:20`` is heard, a little wrong, rather than not at all."""
    if pcm.shape[0] == samples:
        return pcm
    if pcm.shape[0] > samples:
        return pcm[:samples]
    return np.concatenate((pcm, np.zeros(samples - pcm.shape[0], dtype=np.int16)))


def _bind(host: str, ports: range) -> socket.socket:
    """A UDP socket on an even port of ``ports`` (RFC 3550 section 11: RTP
    on the even port, its RTCP on the odd one above), tried in random
    order so that calls do not queue for the same few ports."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    first = ports.start + ports.start % 2
    evens = range(first, ports.stop, 2)
    for port in random.sample(evens, len(evens)):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            continue
        sock.setblocking(False)
        if sys.platform == "linux":
            sock.setsockopt(socket.SOL_SOCKET, _SCM_TIMESTAMPNS, 1)
        return sock
    raise MediaPortError(f"no even UDP port free on {host} in {ports.start}-{ports.stop - 1}")


class PhoneLeg:
    """The RTP side of one phone call (RFC 3550, RFC 3551, RFC 4733, RFC 4568).

    Made by :meth:`open`, which binds the socket (its :attr:`port` goes in
    the SDP answer); :meth:`start` once the call's media is agreed, and
    again for each re-INVITE; :meth:`close` at the end. Callbacks, all
    called from the loop:

    * ``on_audio(pcm)``: every 20 ms, the phone's audio as one frame at
      the codec's sample rate (160 samples at 8 kHz, 320 at 16 kHz;
      silence before the first packet);
    * ``on_digit(digit)``: each key the caller pressed, once, as one
      character of :data:`sip.audio.dtmf.DIGITS`;
    * ``on_dead(reason)``: once, when no RTP came for ``media_timeout``
      seconds while the far end was not holding the call.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        on_audio: Callable[[Pcm], None],
        on_digit: Callable[[str], None],
        on_dead: Callable[[str], None],
        media_timeout: float = MEDIA_TIMEOUT,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._sock = sock
        self._lead = WallLead()
        self.port: int = sock.getsockname()[1]
        self._on_audio = on_audio
        self._on_digit = on_digit
        self._on_dead = on_dead
        self._timeout = media_timeout
        self._media: PhoneMedia | None = None
        self._codec: _Codec | None = None
        self._srtp: SdesSession | None = None
        self._events = EventReceiver()
        self._tones: ToneDetector | None = None
        self._tones_wanted = True
        # Where to send: the SDP's address until latched, then the source.
        self._sdp_address: Address | None = None
        self._latched: Address | None = None
        self._latched_ssrc = 0
        self._heard_at = 0.0  # the last valid packet from the latched source
        self._phased = False  # the clock was phased to the phone's stream
        self._sending = False
        # Our stream (RFC 3550 section 5.1: random SSRC, sequence and timestamp).
        self._ssrc = secrets.randbits(32)
        self._seq = secrets.randbits(16)
        self._timestamp = secrets.randbits(32)
        self._marker = True
        # Prompts queued for the phone: (audio at the codec's rate, on_done),
        # and how far into the first one the leg has sent.
        self._prompts: deque[tuple[Pcm, Callable[[], None] | None]] = deque()
        self._prompt_at = 0
        # The room's latest frames; a few, so that the mixer's clock and
        # this one may drift by a frame without a gap or a skip.
        self._mix: deque[Pcm] = deque(maxlen=3)
        self._clock: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._last_rtp = 0.0
        self._dead = False
        self._closed = False
        self._packets_in = self._bytes_in = self._packets_out = self._bytes_out = 0
        self._digits = self._comfort_noise = self._other = self._stray = 0
        self._malformed = self._srtp_failures = self._relatches = self._slips = 0
        self._send_late = 0.0
        #: Inside :meth:`_tick` (its drain of the socket).
        self._ticking = False

    @classmethod
    async def open(
        cls,
        host: str,
        ports: range,
        *,
        on_audio: Callable[[Pcm], None],
        on_digit: Callable[[str], None],
        on_dead: Callable[[str], None],
        media_timeout: float = MEDIA_TIMEOUT,
    ) -> PhoneLeg:
        """A leg bound on ``host`` at an even port of ``ports``, ready for
        the SDP answer. Raises :class:`~sip.errors.MediaPortError` when no
        port is free."""
        sock = _bind(host, ports)
        try:
            leg = cls(
                sock,
                on_audio=on_audio,
                on_digit=on_digit,
                on_dead=on_dead,
                media_timeout=media_timeout,
            )
            leg._loop.add_reader(sock.fileno(), leg._readable)
        except BaseException:
            sock.close()
            raise
        return leg

    # --- control ------------------------------------------------------------------

    def start(self, media: PhoneMedia) -> None:
        """Use the media the call agreed (RFC 3264): at the answer, and again
        at each re-INVITE (hold, resume, a new address, codec or key)."""
        if self._closed:
            return
        codec = PHONE_CODECS[media.codec]
        if self._codec is None or self._codec.codec != codec:
            self._codec = _Codec(codec)
        if media.local is None or media.remote is None:
            self._srtp = None
        elif self._srtp is None or self._srtp.keys != (media.local, media.remote):
            # A new key, a new context; the same key keeps its context (and
            # its rollover counter, RFC 3711 section 3.3.1).
            self._srtp = SdesSession(media.local, media.remote)
        self._tones = ToneDetector() if media.dtmf_payload_type is None else None
        address = (media.host, media.port)
        if address != self._sdp_address:
            # A new address is a new far end (a transfer, another media
            # server): latch afresh. Hold at 0.0.0.0 keeps what it knew.
            if media.host not in _NO_ADDRESS:
                self._latched = None
                self._phased = False
            self._sdp_address = address
        sending = media.direction in _RECEIVERS and media.host not in _NO_ADDRESS
        if sending and not self._sending:
            self._marker = True
        self._sending = sending
        self._media = media
        now = self._loop.time()
        self._heard_at = max(self._heard_at, now)
        self._last_rtp = now
        if self._clock is None:
            self._next_tick = now + _FRAME
            self._clock = self._loop.call_at(self._next_tick, self._tick)

    def send_audio(self, pcm48: Pcm) -> None:
        """The room's mix for the phone: one 20 ms frame at 48 kHz (960
        samples), sent at the next tick unless a prompt plays."""
        self._mix.append(check_pcm(pcm48, samples=ROOM_FRAME))

    def listen_for_tones(self, wanted: bool) -> None:
        """Whether keys heard as tones count (they do from the start). Where
        no ``telephone-event`` was agreed, each frame is searched for tones
        (about 15 µs), which a call in the room needs only while it asks
        the caller to press a key. Listening again starts afresh: a tone
        half heard before is not finished by one heard now."""
        if wanted and not self._tones_wanted and self._tones is not None:
            self._tones = ToneDetector()
        self._tones_wanted = wanted

    def play(self, pcm: Pcm, on_done: Callable[[], None] | None = None) -> None:
        """Queue a prompt: audio at the codec's sample rate (8 kHz, 16 kHz for
        G.722), sent ahead of the room's mix. ``on_done()`` is called once
        its last frame was sent; not if :meth:`stop_prompt` stops it."""
        check_pcm(pcm)
        self._prompts.append((pcm, on_done))

    def stop_prompt(self) -> None:
        """Stop the prompt playing and drop those queued (the caller keyed
        over it); their ``on_done`` is not called."""
        self._prompts.clear()
        self._prompt_at = 0

    @property
    def playing(self) -> bool:
        """Whether a prompt is playing or queued."""
        return bool(self._prompts)

    def close(self) -> None:
        """Release the socket and the clock. Nothing is called back after."""
        if self._closed:
            return
        self._closed = True
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        self._prompts.clear()
        with contextlib.suppress(Exception):  # a loop already closed
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    @property
    def delay(self) -> float:
        """Seconds the phone's last frame waited in the jitter buffer: what
        the leg adds to the phone's way into the room, besides one tick."""
        return self._codec.jitter.delay if self._codec is not None else 0.0

    @property
    def stats(self) -> LegStats:
        jitter = self._codec.jitter.stats if self._codec is not None else None
        destination = self._destination()
        return LegStats(
            packets_in=self._packets_in,
            bytes_in=self._bytes_in,
            packets_out=self._packets_out,
            bytes_out=self._bytes_out,
            late=jitter.late if jitter else 0,
            concealed=jitter.concealed if jitter else 0,
            duplicate=jitter.duplicate if jitter else 0,
            dtmf_digits=self._digits,
            comfort_noise=self._comfort_noise,
            other_payload=self._other,
            stray=self._stray,
            malformed=self._malformed,
            srtp_failures=self._srtp_failures,
            latched=(destination[0], destination[1]) if destination else None,
            relatches=self._relatches,
            clock_slips=self._slips,
            jitter_delay_ms=jitter.delay_ms if jitter else 0.0,
            jitter_target_ms=jitter.target_ms if jitter else 0.0,
            send_late_ms=self._send_late * 1000,
        )

    # --- the socket ---------------------------------------------------------------

    def _readable(self) -> None:
        """Read what the socket holds (a bounded batch: the loop comes back
        for the rest), each datagram with the time the kernel received it."""
        sock = self._sock
        now = self._loop.time()
        for _ in range(_READ_BATCH):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # An ICMP error from a far end that went away: the media
                # timeout tells, not this.
                continue
            arrival = now
            for level, kind, value in ancillary:
                if level == socket.SOL_SOCKET and kind == _SCM_TIMESTAMPNS and len(value) >= 16:
                    # The wall clock's lead on the loop's (monotonic, to a
                    # millisecond on uvloop), not read against ``now``.
                    arrival = on_loop_clock(value, now, self._lead(now))
            self._datagram(data, addr, arrival)

    def _datagram(self, data: bytes, addr: Address, now: float) -> None:
        """One datagram from the network, received at ``now`` (the loop's
        clock): never raises (a malformed packet is counted and dropped,
        STYLE.md)."""
        self._packets_in += 1
        self._bytes_in += len(data)
        media = self._media
        if len(data) < FIXED_HEADER.size or data[0] & 0xC0 != _VERSION:
            self._malformed += 1
            return
        if data[1] & 0x7F in _RTCP_TYPES:
            self._malformed += 1
            return
        if media is None:
            self._stray += 1
            return
        if self._srtp is not None:
            try:
                data = self._srtp.unprotect(data)
            except SrtpError:
                self._srtp_failures += 1
                return
        first, second, seq, timestamp, ssrc = FIXED_HEADER.unpack_from(data)
        start = FIXED_HEADER.size + 4 * (first & 0x0F)
        end = len(data)
        if first & 0x10:  # header extension (RFC 3550 section 5.3.1)
            if start + 4 > end:
                self._malformed += 1
                return
            start += 4 + 4 * EXTENSION_HEADER.unpack_from(data, start)[1]
        if first & 0x20:  # padding: its count is the last octet
            end -= data[-1]
        if start > end or (first & 0x20 and data[-1] == 0):
            self._malformed += 1
            return
        payload_type = second & 0x7F
        if payload_type == media.payload_type:
            kind = 0
        elif payload_type == media.dtmf_payload_type:
            kind = 1
        elif payload_type == COMFORT_NOISE:
            kind = 2
        else:
            self._other += 1
            return
        if not self._accept_source(addr, ssrc, now):
            self._stray += 1
            return
        self._last_rtp = now
        if kind == 0:
            assert self._codec is not None
            self._codec.jitter.put(seq, timestamp, data[start:end], now)
            if not self._phased:
                self._phase_clock(now)
        elif kind == 1:
            try:
                digits = self._events.receive(data[start:end], timestamp, second >= _MARKER, now)
            except DtmfParseError:
                self._malformed += 1
                return
            self._digits_found(digits)
        else:
            self._comfort_noise += 1

    def _accept_source(self, addr: Address, ssrc: int, now: float) -> bool:
        """Whether a valid packet from ``addr`` is the call's: latching, as
        the module docstring explains."""
        latched = self._latched
        if latched is None:
            self._latched, self._latched_ssrc, self._heard_at = addr, ssrc, now
            return True
        if addr == latched:
            self._latched_ssrc, self._heard_at = ssrc, now
            return True
        if now - self._heard_at >= RELATCH_SILENCE:
            self._latched, self._latched_ssrc, self._heard_at = addr, ssrc, now
            self._relatches += 1
            self._phased = False
            return True
        return False

    def _destination(self) -> Address | None:
        return self._latched if self._latched is not None else self._sdp_address

    def _digits_found(self, digits: str) -> None:
        for digit in digits:
            self._digits += 1
            self._on_digit(digit)

    # --- the clock ----------------------------------------------------------------

    def _phase_clock(self, arrival: float) -> None:
        """Move the clock's ticks halfway between the phone's packets, once
        per stream, at its first audio packet. The phone's clock has a phase
        of its own; were its packets to arrive just before our ticks, the
        least lateness would make one a frame late, and the jitter buffer
        would conceal and hold a frame more for the rest of the call. Half
        a frame each side is the most margin one phase can give. The shift
        (at most 10 ms, once) comes before anyone speaks."""
        self._phased = True
        if self._clock is None:
            return
        self._next_tick = arrival + _FRAME / 2
        if self._ticking:
            # Read in a tick's drain: it plays in this tick, which schedules
            # the next (a second clock here would play a slot early).
            return
        self._clock.cancel()
        self._clock = self._loop.call_at(self._next_tick, self._tick)

    def _tick(self) -> None:
        """Every 20 ms on absolute times (``call_at``), so the clock keeps
        the phone's pace however long a tick takes: one frame played, one
        sent, the digit and media timers checked."""
        if self._closed:
            return
        due = self._next_tick
        # What came before this tick goes in the jitter buffer before it
        # plays: a loop busy elsewhere runs timers before it reads sockets.
        self._ticking = True
        try:
            self._readable()
        finally:
            self._ticking = False
        now = self._loop.time()
        self._next_tick += _FRAME
        skipped = 0
        if now - self._next_tick > _MAX_LAG:
            skipped = int((now - self._next_tick) / _FRAME) + 1
            self._next_tick += skipped * _FRAME
            self._slips += 1
        self._clock = self._loop.call_at(self._next_tick, self._tick)
        codec = self._codec
        media = self._media
        assert codec is not None
        assert media is not None
        self._play_frame(codec)
        self._send_frame(codec, media, skipped)
        self._send_late = max(self._send_late, self._loop.time() - due)
        timer = self._events.get_timer()
        if timer is not None and now >= timer:
            self._digits_found(self._events.handle_timer(now))
        # A far end that holds the call may stop sending (RFC 3264 section
        # 8.4): silence then is no sign of a dead phone.
        if not self._dead and not media.on_hold and now - self._last_rtp > self._timeout:
            self._dead = True
            self._on_dead(f"no RTP for {self._timeout:g} s")

    def _play_frame(self, codec: _Codec) -> None:
        """The phone's next 20 ms, decoded or concealed, to ``on_audio``; searched for
        keys after what the jitter buffer cut (a stall's backlog: unheard, keys kept)."""
        jitter = codec.jitter
        payload = jitter.pop(self._loop.time())
        for old in jitter.cut if self._tones is not None and self._tones_wanted else ():
            self._detect(codec, _fit(codec.transcoder.decode(old), codec.frame))
        if payload is None:
            if not codec.heard:
                self._on_audio(codec.silence)
                return
            pcm = codec.concealer.conceal()
        else:
            codec.heard = True
            pcm = codec.concealer.accept(_fit(codec.transcoder.decode(payload), codec.frame))
        self._detect(codec, pcm)
        self._on_audio(pcm)

    def _detect(self, codec: _Codec, pcm: Pcm) -> None:
        """Search a frame of the phone's audio for keys, while asked to."""
        if self._tones is None or not self._tones_wanted:
            return
        # At 8 kHz: G.722's 16 kHz halved by averaging pairs (a two-tap low-pass,
        # -0.2 dB at 1633 Hz, the top DTMF tone: plenty for Q.24's checks).
        low = pcm if codec.frame == 160 else (pcm[0::2] >> 1) + (pcm[1::2] >> 1)
        self._digits_found(self._tones.receive(low))

    def _send_frame(self, codec: _Codec, media: PhoneMedia, skipped: int) -> None:
        """One 20 ms frame to the phone: prompt, else room, else silence."""
        mix = self._mix.popleft() if self._mix else None
        done: Callable[[], None] | None = None
        if self._prompts:
            prompt, on_done = self._prompts[0]
            if self._prompt_at == 0:
                self._marker = True
            pcm = prompt[self._prompt_at : self._prompt_at + codec.frame]
            self._prompt_at += codec.frame
            if pcm.shape[0] < codec.frame:
                pcm = _fit(pcm, codec.frame)
            if self._prompt_at >= prompt.shape[0]:
                self._prompts.popleft()
                self._prompt_at = 0
                done = on_done
        elif mix is not None:
            pcm = codec.down.resample(mix)
        else:
            pcm = codec.silence
        # The timestamp follows time (RFC 3550 section 5.1), sent or not.
        timestamp = self._timestamp
        self._timestamp = (timestamp + (1 + skipped) * codec.ticks) & 0xFFFFFFFF
        destination = self._destination()
        if self._sending and destination is not None:
            header = FIXED_HEADER.pack(
                _VERSION,
                (_MARKER if self._marker else 0) | media.payload_type,
                self._seq,
                timestamp,
                self._ssrc,
            )
            packet = header + codec.transcoder.encode(pcm)
            if self._srtp is not None:
                packet = self._srtp.protect(packet)
            # A full socket buffer or an ICMP error: the next tick sends again.
            with contextlib.suppress(OSError):
                self._sock.sendto(packet, destination)
            self._seq = (self._seq + 1) & 0xFFFF
            self._marker = False
            self._packets_out += 1
            self._bytes_out += len(packet)
        if done is not None:
            done()
