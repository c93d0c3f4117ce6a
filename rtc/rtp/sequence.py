"""RTP sequence numbers and timestamps: serial-number arithmetic (RFC 1982
style, :func:`seq_newer`), :class:`SequenceUnwrapper` (RFC 3550 A.1), and
:class:`RtpRewriter`, the per-subscriber state that keeps a switched or
resumed source's sequence numbers and timestamps continuous.
"""

from __future__ import annotations

from array import array

__all__ = [
    "IN_MAX",
    "IN_START",
    "OUT_MAX_SEQ",
    "OUT_MAX_TS",
    "POSITION_LENGTH",
    "RESYNC",
    "SEQ_OFFSET",
    "TS_OFFSET",
    "RtpRewriter",
    "SequenceUnwrapper",
    "seq_add",
    "seq_diff",
    "seq_newer",
    "ts_diff",
    "ts_newer",
]


def seq_add(seq: int, n: int) -> int:
    """``seq + n`` modulo 2**16."""
    return (seq + n) & 0xFFFF


def seq_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between 16-bit sequence numbers, in [-32768, 32767]."""
    return ((a - b + 0x8000) & 0xFFFF) - 0x8000


def seq_newer(a: int, b: int) -> bool:
    """Whether sequence number ``a`` comes after ``b`` (RFC 1982 serial arithmetic, 16 bits).

    RFC 1982 leaves two numbers exactly 2**15 apart undefined; like libwebrtc we
    call the numerically larger one newer, so that exactly one of
    ``seq_newer(a, b)``, ``seq_newer(b, a)``, ``a == b`` holds.
    """
    d = (a - b) & 0xFFFF
    if d == 0x8000:
        return a > b
    return 0 < d < 0x8000


def ts_diff(a: int, b: int) -> int:
    """Signed distance ``a - b`` between 32-bit RTP timestamps."""
    return ((a - b + 0x80000000) & 0xFFFFFFFF) - 0x80000000


def ts_newer(a: int, b: int) -> bool:
    """Whether RTP timestamp ``a`` comes after ``b`` (RFC 1982, 32 bits, ties as in seq_newer)."""
    d = (a - b) & 0xFFFFFFFF
    if d == 0x80000000:
        return a > b
    return 0 < d < 0x80000000


class SequenceUnwrapper:
    """Extends 16-bit sequence numbers to unbounded ints (RFC 3550 A.1's extended seq).

    Each number is placed nearest to the previous one, so reordering of up to
    2**15 packets either way is understood.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: int | None = None

    def unwrap(self, seq: int) -> int:
        """The extended value of ``seq``."""
        last = self._last
        if last is None:
            self._last = seq
            return seq
        u = last + (((seq - last + 0x8000) & 0xFFFF) - 0x8000)
        self._last = u
        return u


# RtpRewriter.position: where a run stands, one flat array of int64 (what
# a C leaf reads and writes as a buffer, sfu/forward/_fanout.c, which
# checks the length). Indices:
RESYNC = 0
"""1 when the next packet starts a run (:meth:`RtpRewriter.switch`)."""
IN_START = 1
"""Unwrapped input sequence number of this run's first packet."""
IN_MAX = 2
"""Unwrapped input sequence number of this run's highest packet."""
SEQ_OFFSET = 3
"""What this run adds to input sequence numbers (mod 2**16)."""
TS_OFFSET = 4
"""What this run adds to input timestamps (mod 2**32)."""
OUT_MAX_SEQ = 5
"""Highest outgoing sequence number so far."""
OUT_MAX_TS = 6
"""Its timestamp."""
POSITION_LENGTH = 7


class RtpRewriter:
    """Continuous sequence numbers and timestamps for one outgoing stream (RFC 3550 5.1).

    A subscriber's stream must look like one RTP source even when the SFU
    switches what feeds it (another simulcast layer, another speaker) or pauses
    and resumes it (mute, a subscription paused for bandwidth). Each run of
    packets from one source gets fixed offsets, chosen at its first packet so
    that it continues one sequence number after the highest sent so far and
    with a timestamp advanced by the wall-clock time elapsed. Fixed offsets map
    a subscriber's NACK back (:meth:`original_sequence`) and the packet found
    for it exactly as the first time (:meth:`sent_as`).

    Pure state: the caller passes ``now`` (seconds) and calls :meth:`switch`
    before the first packet of a new run; it should start a video run on a
    keyframe. Where the run stands is :attr:`position`, flat integers (the
    indices above), so a native fan-out can rewrite past a run's first packet
    without touching Python objects; ``last_now`` is when the highest was sent.
    """

    __slots__ = ("_clock_rate", "_started", "last_now", "position")

    def __init__(self, clock_rate: int) -> None:
        self._clock_rate = clock_rate
        self._started = False
        self.position = array("q", bytes(8 * POSITION_LENGTH))
        self.position[RESYNC] = 1
        self.last_now = 0.0

    def switch(self) -> None:
        """Start a new run at the next packet: another source, or this one resumed."""
        self.position[RESYNC] = 1

    def rewrite(self, seq: int, ts: int, now: float) -> tuple[int, int] | None:
        """Outgoing ``(sequence_number, timestamp)`` for an incoming packet.

        ``None`` for a packet older than the first one of the current run: its
        outgoing number would collide with the previous run's, so drop it.
        """
        p = self.position
        if p[RESYNC]:
            if self._started:
                # Never step back in time, and never repeat a timestamp a decoder
                # would merge into the previous frame.
                gap = max(1, round((now - self.last_now) * self._clock_rate))
                out_seq = (p[OUT_MAX_SEQ] + 1) & 0xFFFF
                out_ts = (p[OUT_MAX_TS] + gap) & 0xFFFFFFFF
            else:
                out_seq, out_ts = seq, ts
            p[SEQ_OFFSET] = (out_seq - seq) & 0xFFFF
            p[TS_OFFSET] = (out_ts - ts) & 0xFFFFFFFF
            p[IN_START] = p[IN_MAX] = seq
            p[OUT_MAX_SEQ], p[OUT_MAX_TS] = out_seq, out_ts
            self.last_now = now
            p[RESYNC] = 0
            self._started = True
            return out_seq, out_ts
        in_max = p[IN_MAX]
        d = ((seq - in_max + 0x8000) & 0xFFFF) - 0x8000
        u = in_max + d
        if u < p[IN_START]:
            return None
        out_seq = (seq + p[SEQ_OFFSET]) & 0xFFFF
        out_ts = (ts + p[TS_OFFSET]) & 0xFFFFFFFF
        if d > 0:
            p[IN_MAX] = u
            p[OUT_MAX_SEQ], p[OUT_MAX_TS] = out_seq, out_ts
            self.last_now = now
        return out_seq, out_ts

    def sent_as(self, seq: int, ts: int) -> tuple[int, int] | None:
        """The ``(sequence_number, timestamp)`` an incoming packet of the latest
        run was sent under, for a retransmission (RFC 4588 section 4: it repeats
        the original's sequence number and timestamp, RFC 3550 section 5.1).

        Unlike :meth:`rewrite` it changes nothing: a retransmission never starts
        a run, even after :meth:`switch` (the previous run still answers until
        the next run's first packet), and never moves the highest sent. ``None``
        if ``seq`` was not sent in the latest run (an earlier run's, or not sent
        yet): its number is no longer known.
        """
        if not self._started:
            return None
        p = self.position
        in_max = p[IN_MAX]
        u = in_max + (((seq - in_max + 0x8000) & 0xFFFF) - 0x8000)
        if u < p[IN_START] or u > in_max:
            return None
        return (seq + p[SEQ_OFFSET]) & 0xFFFF, (ts + p[TS_OFFSET]) & 0xFFFFFFFF

    def original_sequence(self, out_seq: int) -> int | None:
        """Incoming sequence number behind an outgoing one, for answering NACKs.

        ``None`` if ``out_seq`` was not sent in the latest run (an earlier
        run's, or not sent yet). After :meth:`switch` the previous run still
        answers until the next run's first packet.
        """
        if not self._started:
            return None
        p = self.position
        seq = (out_seq - p[SEQ_OFFSET]) & 0xFFFF
        in_max = p[IN_MAX]
        u = in_max + (((seq - in_max + 0x8000) & 0xFFFF) - 0x8000)
        if u < p[IN_START] or u > in_max:
            return None
        return seq

    @property
    def highest(self) -> tuple[int, int]:
        """Highest outgoing ``(sequence_number, timestamp)`` so far (for sender reports)."""
        p = self.position
        return p[OUT_MAX_SEQ], p[OUT_MAX_TS]

    @property
    def timestamp_offset(self) -> int | None:
        """What this run adds to incoming timestamps (mod 2**32), or None before the
        first packet: a sender report maps the publisher's NTP/RTP pair through it
        so the subscriber's lip-sync stays right (RFC 3550 section 6.4.1)."""
        return self.position[TS_OFFSET] if self._started else None
