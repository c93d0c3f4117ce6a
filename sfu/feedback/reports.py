"""RTCP sender and receiver reports for the SFU's legs (RFC 3550 sections 6.1-6.4, 7.1).

The worker terminates RTCP per leg, as an RTP translator that rewrites SSRCs
and sequence numbers must (RFC 3550 section 7.1; RFC 7667 section 3.7): a
publisher gets receiver reports about what *we* received from it, and a
subscriber gets sender reports about what *we* sent it. Nothing a peer says
about its own leg is passed to another peer.

- :class:`ReportScheduler`: when each leg's compound report is due (timer
  output, aioquic's shape), what it holds, and round-trip times from the
  report blocks peers send back. What a compound says of each stream comes
  from the stream's statistics: :class:`sfu.feedback.receiving.ReceiveStatistics`
  for an incoming one (report blocks, RFC 3550 A.1, A.3, A.8) and
  :class:`sfu.feedback.sending.SendStatistics` for an outgoing one (sender reports).
- :func:`feedback_compounds`: feedback packets (NACK, PLI, FIR,
  transport-cc, REMB) packed into compounds, each opening with a report.

Sans-I/O (STYLE.md): ``now`` is seconds on the adapter's monotonic clock.
NTP timestamps need wall-clock time, so the scheduler is given the offset
from that monotonic clock to Unix time once; the core never reads a clock.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Hashable, Iterable, Iterator

from rtc.rtcp.compound import RtcpPacket
from rtc.rtcp.reports import (
    SDES_CNAME,
    Bye,
    ReceiverReport,
    ReportBlock,
    SdesChunk,
    SenderReport,
    SourceDescription,
    compact_ntp,
)
from sfu.errors import SfuStateError
from sfu.feedback.receiving import ReceiveStatistics
from sfu.feedback.sending import SendStatistics

__all__ = [
    "FEEDBACK_MAX",
    "Deadlines",
    "ReportScheduler",
    "feedback_compounds",
    "nack_interval_for",
    "ntp_timestamp",
    "rtt_from_block",
]

Key = Hashable

_NTP_UNIX_OFFSET = 2208988800  # seconds from 1900-01-01 (NTP era 0) to 1970-01-01
_U32 = 0xFFFFFFFF
_MAX_BLOCKS = 31  # a report's 5-bit count (RFC 3550 6.4.1)


def ntp_timestamp(unix_seconds: float) -> int:
    """64-bit NTP timestamp for a Unix time (RFC 3550 section 4): 32.32 fixed point since 1900.

    Seconds and fraction are converted apart, so the fraction keeps the full
    precision of the float rather than what is left after multiplying
    four billion seconds by 2**32.
    """
    whole = int(unix_seconds // 1)
    fraction = unix_seconds - whole
    return (((whole + _NTP_UNIX_OFFSET) & _U32) << 32) | (int(fraction * 4294967296.0) & _U32)


def rtt_from_block(block: ReportBlock, arrival_ntp: int) -> float | None:
    """Round-trip time in seconds from a report block about our stream (RFC 3550 6.4.1).

    ``arrival_ntp`` is our 64-bit NTP time when the report arrived: the RTT is
    arrival - LSR - DLSR, all in the compact 16.16 form. ``None`` when the
    peer has had no SR from us yet (LSR 0) or the result is absurd (negative
    beyond rounding, or a minute and more: an LSR that is not ours).
    """
    if block.lsr == 0:
        return None
    units = (compact_ntp(arrival_ntp) - block.lsr - block.dlsr) & _U32
    if units >= 0x80000000:
        # Our clock and the peer's DLSR rounding can land a hair below zero.
        units -= 0x100000000
        if units < -655:  # -10 ms
            return None
        return 0.0
    rtt = units / 65536.0
    return rtt if rtt < 60.0 else None


def nack_interval_for(rtt: float | None, *, low: float = 0.02, high: float = 0.4) -> float:
    """Spacing of NACK retries for a round-trip time (RFC 4585 section 3.2).

    A retransmission cannot arrive sooner than one RTT after its request, so
    asking again earlier only duplicates it; a little margin covers the
    sender's own processing. Clamped so a bad estimate neither floods nor
    starves the repair. ``None`` (no estimate yet) gives 100 ms, the
    Forwarder's default.
    """
    if rtt is None:
        return 0.1
    return min(high, max(low, rtt * 1.2 + 0.005))


# -- scheduling ---------------------------------------------------------------------


class Deadlines:
    """Keyed deadlines with the earliest first: a heap with lazy deletion.

    ``set`` replaces a key's deadline; ``pop_due`` yields keys whose deadline
    has passed, each once, and forgets them.
    """

    __slots__ = ("_at", "_counter", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Key]] = []
        self._at: dict[Key, tuple[float, int]] = {}
        self._counter = 0

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def set(self, key: Key, when: float) -> None:
        """Key ``key`` is due at ``when`` (instead of any earlier setting)."""
        self._counter += 1
        self._at[key] = (when, self._counter)
        heapq.heappush(self._heap, (when, self._counter, key))

    def discard(self, key: Key) -> None:
        """Forget ``key``'s deadline, if any."""
        self._at.pop(key, None)

    def earliest(self) -> float | None:
        """The earliest deadline, or ``None``."""
        heap, at = self._heap, self._at
        while heap:
            when, n, key = heap[0]
            if at.get(key) == (when, n):
                return when
            heapq.heappop(heap)
        return None

    def pop_due(self, now: float) -> Iterator[Key]:
        """Keys due at or before ``now``, earliest first, each removed."""
        heap, at = self._heap, self._at
        while heap and heap[0][0] <= now:
            when, n, key = heapq.heappop(heap)
            if at.get(key) == (when, n):
                del at[key]
                yield key


class _Leg:
    __slots__ = ("receives", "rtt", "rtt_at", "sends")

    def __init__(self) -> None:
        self.receives: dict[int, ReceiveStatistics] = {}
        self.sends: dict[int, SendStatistics] = {}
        self.rtt: float | None = None
        self.rtt_at = 0.0


class ReportScheduler:
    """Compound RTCP reports for every leg of a worker, as timer output (RFC 3550 6.1, 6.2).

    A leg is one peer transport (a publisher's or a subscriber's), keyed as
    the adapter likes. Register the incoming streams a leg receives
    (:meth:`add_receive`) and the outgoing streams it sends
    (:meth:`add_send`); :meth:`handle_timer` returns, for each leg that is
    due, its compound packets: one SR per outgoing stream that has sent
    (report blocks ride in the first, more in RRs after it), or an RR of
    ``ssrc`` when the leg only receives, then an SDES with each reporting
    SSRC's CNAME. A leg with nothing to report sends nothing. Compounds are
    split to stay under ``max_size`` bytes, each starting with its SR or RR
    and carrying its own SDES, as RFC 3550 6.1 asks of every compound.

    The interval is a fixed ``interval`` (1 s), randomised uniformly over
    [0.5, 1.5] times it, not RFC 3550 6.3's computed one. That computation
    shares a session's RTCP bandwidth among its members, and here each leg
    is a two-party session whose reports (a hundred bytes or so a second)
    are a fraction of a percent of the media they describe, well inside the
    5% RFC 3550 6.2 allows; with AVPF (RFC 4585 3.4) the 5 s minimum does not
    apply. One second is what libwebrtc uses for video, so browsers' stats
    (RTT, jitter, loss) and lip-sync are as fresh as with any other peer, and
    the randomisation keeps a worker's legs from reporting in lockstep
    (RFC 3550 6.2's reason for it, and an even load on the worker). A new
    leg's first report is due after half an interval (RFC 3550 6.2's
    initial halving), so lip-sync starts early.

    ``wall_offset`` turns ``now`` into Unix time (``now + wall_offset``) for
    NTP timestamps; the adapter computes it once as ``time.time() -
    loop.time()``. ``rng`` supplies the randomisation (seeded in tests).
    """

    def __init__(
        self,
        *,
        ssrc: int,
        cname: str,
        wall_offset: float,
        interval: float = 1.0,
        max_size: int = 1200,
        rng: random.Random | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.ssrc = ssrc
        self.cname = cname
        self.wall_offset = wall_offset
        self.interval = interval
        self.max_size = max_size
        self._rng = rng if rng is not None else random.Random()
        self._legs: dict[Key, _Leg] = {}
        self._due = Deadlines()

    # -- legs and streams ----------------------------------------------------------

    def add_leg(self, key: Key, now: float) -> None:
        """Start reporting on a leg; its first report is due in about half an interval."""
        if key in self._legs:
            raise SfuStateError(f"leg {key!r} already reports")
        self._legs[key] = _Leg()
        self._due.set(key, now + self.interval * 0.5 * self._rng.uniform(0.5, 1.5))

    def remove_leg(self, key: Key) -> None:
        """Stop reporting on a leg (it closed); unknown keys are ignored."""
        self._legs.pop(key, None)
        self._due.discard(key)

    def _leg(self, key: Key) -> _Leg:
        leg = self._legs.get(key)
        if leg is None:
            raise SfuStateError(f"no leg {key!r}")
        return leg

    def add_receive(self, key: Key, stats: ReceiveStatistics) -> None:
        """A stream the leg's peer sends us: report blocks about it go to that peer."""
        self._leg(key).receives[stats.ssrc] = stats

    def remove_receive(self, key: Key, ssrc: int) -> None:
        """Stop reporting on an incoming stream."""
        leg = self._legs.get(key)
        if leg is not None:
            leg.receives.pop(ssrc, None)

    def add_send(self, key: Key, stats: SendStatistics) -> None:
        """A stream we send on the leg: sender reports about it go to its peer."""
        self._leg(key).sends[stats.ssrc] = stats

    def remove_send(self, key: Key, ssrc: int) -> None:
        """Stop reporting on an outgoing stream."""
        leg = self._legs.get(key)
        if leg is not None:
            leg.sends.pop(ssrc, None)

    def receive_statistics(self, key: Key, ssrc: int) -> ReceiveStatistics | None:
        """The statistics of an incoming stream on a leg, if registered."""
        leg = self._legs.get(key)
        return None if leg is None else leg.receives.get(ssrc)

    # -- the clock ---------------------------------------------------------------------

    def ntp(self, now: float) -> int:
        """Our 64-bit NTP timestamp at ``now``."""
        return ntp_timestamp(now + self.wall_offset)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` next wants to run, or ``None`` without legs."""
        return self._due.earliest()

    def handle_timer(self, now: float) -> list[tuple[Key, bytes]]:
        """``[(leg, compound RTCP packet)]`` for every leg due at ``now``; re-arms them."""
        out: list[tuple[Key, bytes]] = []
        due = list(self._due.pop_due(now))
        for key in due:
            for compound in self.report(key, now):
                out.append((key, compound))
            self._due.set(key, now + self.interval * self._rng.uniform(0.5, 1.5))
        return out

    def report(self, key: Key, now: float) -> list[bytes]:
        """A leg's compound reports at ``now``, built now whatever the schedule."""
        return [_compound(packets) for packets in self._report_packets(key, now)]

    def goodbye(self, key: Key, ssrcs: Iterable[int], now: float) -> list[bytes]:
        """The leg's reports, the last compound ending with a BYE for ``ssrcs`` (RFC 3550 6.6).

        For a subscription that ends, so the browser closes the stream at
        once rather than after a timeout. The caller removes the streams from
        the leg afterwards.
        """
        groups = self._report_packets(key, now)
        if not groups:
            groups = [[ReceiverReport(self.ssrc), _sdes([(self.ssrc, self.cname)])]]
        groups[-1].append(Bye(sorted(s & _U32 for s in ssrcs)))
        return [_compound(packets) for packets in groups]

    def _report_packets(self, key: Key, now: float) -> list[list[RtcpPacket]]:
        leg = self._legs.get(key)
        if leg is None:
            return []
        ntp = self.ntp(now)
        blocks = [b for s in leg.receives.values() if (b := s.report_block(now)) is not None]
        senders: list[tuple[SenderReport, str]] = []
        for stats in leg.sends.values():
            sr = stats.sender_report(now, ntp)
            if sr is not None:
                senders.append((sr, stats.cname or self.cname))
        if not senders and not blocks:
            return []
        # Report blocks ride in the first SR (or an RR of ours when we send
        # nothing on the leg); more than 31 continue in RRs of the same SSRC.
        reports: list[tuple[SenderReport | ReceiverReport, int, str]] = []
        if senders:
            sr, cname = senders[0]
            sr.reports = blocks[:_MAX_BLOCKS]
            owner, owner_cname = sr.ssrc, cname
            reports.append((sr, owner, owner_cname))
        else:
            owner, owner_cname = self.ssrc, self.cname
            reports.append((ReceiverReport(owner, blocks[:_MAX_BLOCKS]), owner, owner_cname))
        for i in range(_MAX_BLOCKS, len(blocks), _MAX_BLOCKS):
            rr = ReceiverReport(owner, blocks[i : i + _MAX_BLOCKS])
            reports.append((rr, owner, owner_cname))
        reports.extend((sr, sr.ssrc, cname) for sr, cname in senders[1:])
        # Greedy packing under max_size: each compound opens with a report
        # (all of these are) and closes with an SDES naming its reporters.
        groups: list[list[RtcpPacket]] = []
        packets: list[RtcpPacket] = []
        names: dict[int, str] = {}
        size = 4
        for packet, ssrc, cname in reports:
            n = 4 + (24 if isinstance(packet, SenderReport) else 4) + 24 * len(packet.reports)
            if ssrc not in names:
                n += _chunk_size(cname)
            if packets and size + n > self.max_size:
                packets.append(_sdes(list(names.items())))
                groups.append(packets)
                packets, names, size = [], {}, 4
                n = 4 + (24 if isinstance(packet, SenderReport) else 4) + 24 * len(packet.reports)
                n += _chunk_size(cname)
            packets.append(packet)
            names.setdefault(ssrc, cname)
            size += n
        packets.append(_sdes(list(names.items())))
        groups.append(packets)
        return groups

    # -- what peers report back ----------------------------------------------------------

    def on_rtcp(self, key: Key, packets: Iterable[RtcpPacket], now: float) -> float | None:
        """Take in a leg's parsed compound: SRs and the report blocks about our streams.

        An SR for a stream the leg sends us updates its :class:`ReceiveStatistics`
        (LSR/DLSR, lip-sync mapping); report blocks (in SRs or RRs) about an
        SSRC we send on the leg give the leg's round-trip time (RFC 3550
        6.4.1). Feedback messages are the caller's (Forwarder, bandwidth).
        Returns the new RTT sample in seconds, if this compound gave one.
        """
        leg = self._legs.get(key)
        if leg is None:
            return None
        sample: float | None = None
        arrival: int | None = None
        for packet in packets:
            if isinstance(packet, SenderReport):
                stats = leg.receives.get(packet.ssrc)
                if stats is not None:
                    stats.on_sender_report(packet.ntp_timestamp, packet.rtp_timestamp, now)
                reports = packet.reports
            elif isinstance(packet, ReceiverReport):
                reports = packet.reports
            else:
                continue
            for block in reports:
                if block.ssrc not in leg.sends:
                    continue
                if arrival is None:
                    arrival = self.ntp(now)
                rtt = rtt_from_block(block, arrival)
                if rtt is not None:
                    sample = rtt
        if sample is not None:
            # RFC 6298's smoothing (alpha 1/8), as TCP and libwebrtc do.
            leg.rtt = sample if leg.rtt is None else leg.rtt + (sample - leg.rtt) / 8
            leg.rtt_at = now
        return sample

    def rtt(self, key: Key) -> float | None:
        """The leg's smoothed round-trip time in seconds, ``None`` before the first sample."""
        leg = self._legs.get(key)
        return None if leg is None else leg.rtt

    def slowest_rtt(self, keys: Iterable[Key]) -> float | None:
        """The largest smoothed round-trip time of these legs, ``None`` if none has one."""
        rtts = [rtt for rtt in map(self.rtt, keys) if rtt is not None]
        return max(rtts) if rtts else None


FEEDBACK_MAX = 1200
"""Feedback compounds are split to stay under this many bytes before SRTCP
(the size our transport-cc feedback is built for)."""


def feedback_compounds(
    pending: Iterable[tuple[Key, RtcpPacket]], ssrc: int
) -> list[tuple[Key, list[bytes], int]]:
    """Feedback packets (NACK, PLI, FIR, transport-cc, REMB) as compound packets,
    ``(peer, compounds, packets)`` per peer in the order first seen.

    A compound packet starts with a report (RFC 3550 6.1): an empty RR from
    ``ssrc`` keeps peers that did not negotiate rtcp-rsize (RFC 5506) happy.
    One compound per peer, split where it would pass :data:`FEEDBACK_MAX`.
    """
    by_peer: dict[Key, list[bytes]] = {}
    for key, packet in pending:
        by_peer.setdefault(key, []).append(bytes(packet))
    head = bytes(ReceiverReport(ssrc))
    out: list[tuple[Key, list[bytes], int]] = []
    for key, packets in by_peer.items():
        compounds: list[bytes] = []
        compound = [head]
        size = len(head)
        for data in packets:
            if len(compound) > 1 and size + len(data) > FEEDBACK_MAX:
                compounds.append(b"".join(compound))
                compound, size = [head], len(head)
            compound.append(data)
            size += len(data)
        compounds.append(b"".join(compound))
        out.append((key, compounds, len(packets)))
    return out


def _chunk_size(cname: str) -> int:
    # SSRC, one CNAME item, then 1-4 nulls to the word boundary (RFC 3550 6.5).
    n = 4 + 2 + len(cname.encode())
    return n + 4 - n % 4


def _sdes(names: list[tuple[int, str]]) -> SourceDescription:
    return SourceDescription([SdesChunk(ssrc, [(SDES_CNAME, c.encode())]) for ssrc, c in names])


def _compound(packets: list[RtcpPacket]) -> bytes:
    return b"".join(bytes(p) for p in packets)
