"""Transport-wide congestion control feedback
(draft-holmer-rmcat-transport-wide-cc-extensions-01 section 3.1): receive
times of every packet by transport-wide sequence number, which a sender's
bandwidth estimator reads (:meth:`TransportCc.arrivals`) and a receiver
builds from what arrived (:meth:`TransportCc.from_arrivals`).

A :class:`~rtc.rtcp.framing.Framed` dataclass like every RTCP packet here,
and the one whose payload needs RTCP padding: our encoder pads it to a word
boundary with the P bit (RFC 3550 section 6.4.1), and the parser also takes
the up to three zero bytes some senders pad with instead.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Self

from rtc.errors import RtcpParseError
from rtc.rtcp.framing import FMT_TCC, RTPFB, Framed

__all__ = ["TransportCc"]

_U16 = struct.Struct("!H")
_I16 = struct.Struct("!h")
_TCC_HEAD = struct.Struct("!IIHHI")

_TICKS_PER_SECOND = 4000  # receive deltas count 250 us
_TICKS_PER_REFERENCE = 256  # the reference time counts 64 ms
_MAX_RUN = 0x1FFF


@dataclass(slots=True)
class TransportCc(Framed):
    """Transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01 3.1).

    ``deltas`` has one entry per transport sequence number from
    ``base_sequence`` on: ``None`` for a packet not received, else its receive
    delta in 250 us ticks after the previous received packet (the first one's
    after ``reference_time``). ``reference_time`` is the raw 24-bit field in
    64 ms units; only differences between feedbacks mean anything to a sender.

    The status chunks are chosen deterministically from the statuses (a run
    chunk for a run of one status covering 14 or more packets or all that
    remain, else a 1-bit vector when no large delta is among the next 14, else a
    run chunk for 7 or more, else a 2-bit vector), so our own packets round-trip
    byte for byte; others' may choose differently and still parse to equal values.
    """

    PACKET_TYPE = RTPFB
    FMT = FMT_TCC

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int
    fb_count: int
    deltas: list[int | None] = field(default_factory=list)

    @classmethod
    def from_arrivals(
        cls,
        sender_ssrc: int,
        media_ssrc: int,
        arrivals: Iterable[tuple[int, float]],
        fb_count: int,
    ) -> Self:
        """Feedback for ``(transport sequence number, arrival time in seconds)`` pairs.

        The pairs may come in any order and span a wrap of the sequence number
        (they are placed around the first one); numbers between the lowest and
        highest that are missing are reported lost; a duplicate keeps its
        earliest arrival. Times are quantized to 250 us ticks without drift.
        Raises ``ValueError`` for no arrivals, or for two consecutive received
        packets more than 8.19 s apart, which one feedback cannot express: the
        caller sends what it has and starts another.
        """
        items = list(arrivals)
        if not items:
            raise ValueError("transport-cc feedback needs at least one arrival")
        first = items[0][0]
        times: dict[int, float] = {}
        for seq, t in items:
            u = ((seq - first + 0x8000) & 0xFFFF) - 0x8000
            if u not in times or t < times[u]:
                times[u] = t
        lo, hi = min(times), max(times)
        base_ticks = round(times[lo] * _TICKS_PER_SECOND)
        reference = base_ticks // _TICKS_PER_REFERENCE
        prev = reference * _TICKS_PER_REFERENCE
        deltas: list[int | None] = []
        for u in range(lo, hi + 1):
            arrival = times.get(u)
            if arrival is None:
                deltas.append(None)
                continue
            ticks = round(arrival * _TICKS_PER_SECOND)
            d = ticks - prev
            if not -0x8000 <= d <= 0x7FFF:
                raise ValueError("receive delta out of range: split the feedback")
            deltas.append(d)
            prev = ticks
        return cls(
            sender_ssrc,
            media_ssrc,
            (first + lo) & 0xFFFF,
            reference & 0xFFFFFF,
            fb_count & 0xFF,
            deltas,
        )

    def arrivals(self) -> list[tuple[int, float]]:
        """``(transport sequence number, arrival time in seconds)`` of each received packet.

        Times are on the reference time's clock (reference_time * 64 ms), so
        they are comparable within one feedback and across feedbacks until the
        24-bit field wraps (about 12 days).
        """
        ticks = self.reference_time * _TICKS_PER_REFERENCE
        out = []
        for i, d in enumerate(self.deltas):
            if d is None:
                continue
            ticks += d
            out.append(((self.base_sequence + i) & 0xFFFF, ticks / _TICKS_PER_SECOND))
        return out

    def lost(self) -> list[int]:
        """Transport sequence numbers reported not received."""
        return [(self.base_sequence + i) & 0xFFFF for i, d in enumerate(self.deltas) if d is None]

    @classmethod
    def decode(cls, count: int, body: bytes) -> Self:
        n = len(body)
        if n < 16:
            raise RtcpParseError("RTCP transport-cc feedback is truncated")
        sender, media, base, status_count, ref_fb = _TCC_HEAD.unpack_from(body)
        statuses: list[int] = []
        pos = 16
        while len(statuses) < status_count:
            if pos + 2 > n:
                raise RtcpParseError("RTCP transport-cc status chunks are truncated")
            (chunk,) = _U16.unpack_from(body, pos)
            pos += 2
            left = status_count - len(statuses)
            if not chunk & 0x8000:
                # Run length chunk: T=0, 2-bit symbol, 13-bit run.
                statuses.extend([(chunk >> 13) & 0x3] * min(chunk & _MAX_RUN, left))
            elif not chunk & 0x4000:
                # Status vector of fourteen 1-bit symbols (received with small delta or not).
                statuses.extend([(chunk >> s) & 1 for s in range(13, 13 - min(14, left), -1)])
            else:
                # Status vector of seven 2-bit symbols.
                statuses.extend([(chunk >> s) & 0x3 for s in range(12, 12 - 2 * min(7, left), -2)])
        deltas: list[int | None] = []
        for status in statuses:
            if status == 0:
                deltas.append(None)
            elif status == 1:
                if pos >= n:
                    raise RtcpParseError("RTCP transport-cc receive deltas are truncated")
                deltas.append(body[pos])
                pos += 1
            elif status == 2:
                if pos + 2 > n:
                    raise RtcpParseError("RTCP transport-cc receive deltas are truncated")
                deltas.append(_I16.unpack_from(body, pos)[0])
                pos += 2
            else:
                raise RtcpParseError("RTCP transport-cc uses the reserved status symbol")
        # Senders that do not set the P bit pad with up to three zero bytes.
        if n - pos > 3:
            raise RtcpParseError("RTCP transport-cc has data after its receive deltas")
        return cls(sender, media, base, ref_fb >> 8, ref_fb & 0xFF, deltas)

    def _encode(self) -> tuple[int, int, bytes]:
        statuses = []
        delta_bytes = bytearray()
        for d in self.deltas:
            if d is None:
                statuses.append(0)
            elif 0 <= d <= 0xFF:
                statuses.append(1)
                delta_bytes.append(d)
            elif -0x8000 <= d <= 0x7FFF:
                statuses.append(2)
                delta_bytes += _I16.pack(d)
            else:
                raise ValueError("receive delta out of range")
        if len(statuses) > 0xFFFF:
            raise ValueError("too many packets for one transport-cc feedback")
        out = bytearray(
            _TCC_HEAD.pack(
                self.sender_ssrc,
                self.media_ssrc,
                self.base_sequence,
                len(statuses),
                ((self.reference_time & 0xFFFFFF) << 8) | self.fb_count,
            )
        )
        for chunk in _status_chunks(statuses):
            out += _U16.pack(chunk)
        out += delta_bytes
        return FMT_TCC, RTPFB, bytes(out)


def _status_chunks(statuses: Sequence[int]) -> Iterable[int]:
    i, n = 0, len(statuses)
    while i < n:
        status = statuses[i]
        run = 1
        while i + run < n and run < _MAX_RUN and statuses[i + run] == status:
            run += 1
        left = n - i
        if run >= 14 or run == left:
            yield (status << 13) | run
            i += run
        elif 2 not in statuses[i : i + 14]:
            vector = statuses[i : i + 14]
            bits = 0
            for s in vector:
                bits = (bits << 1) | s
            yield 0x8000 | (bits << (14 - len(vector)))
            i += 14
        elif run >= 7:
            yield (status << 13) | run
            i += run
        else:
            vector = statuses[i : i + 7]
            bits = 0
            for s in vector:
                bits = (bits << 2) | s
            yield 0xC000 | (bits << (2 * (7 - len(vector))))
            i += 7
