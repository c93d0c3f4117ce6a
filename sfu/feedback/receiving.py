"""What the SFU received on a stream: RFC 3550 receiver statistics (Appendix A.1, A.3, A.8).

:class:`ReceiveStatistics`, one per incoming media SSRC: fed each packet's
sequence number, RTP timestamp and arrival time on the hot path, it keeps
RFC 3550 Appendix A.1's extended highest sequence number, A.3's loss
counters and A.8's interarrival jitter, and the publisher's latest sender
report (for LSR/DLSR, and as the NTP/RTP mapping lip-sync needs). The
report blocks it builds ride in the leg's compound reports
(:class:`sfu.feedback.reports.ReportScheduler`).

Sans-I/O (STYLE.md): ``now`` is seconds on the adapter's monotonic clock.
"""

from __future__ import annotations

from collections import deque

from rtc.rtcp.reports import ReportBlock, compact_ntp
from rtc.rtp.sequence import ts_newer

__all__ = ["ReceiveStatistics"]

# RFC 3550 A.1: a forward jump of at least MAX_DROPOUT, or a backward one of
# more than MAX_MISORDER, is not a loss or a reordering but a source that
# restarted its sequence numbers; two such packets in a row confirm it.
MAX_DROPOUT = 3000
MAX_MISORDER = 100
_SEQ_MOD = 0x10000

_U32 = 0xFFFFFFFF
_NTP_UNIT = 2.0**-32
# How many of the publisher's recent SRs the quickest is looked for among, and
# how much later than it an SR may come before its clock is taken to have
# stepped (an SR stalls behind its sender by a second or two, not ten).
SR_HISTORY = 8
CLOCK_STEP = 10.0
_LOST_MAX = 0x7FFFFF
_LOST_MIN = -0x800000


class ReceiveStatistics:
    """Reception state of one incoming RTP stream (RFC 3550 Appendix A.1, A.3, A.8).

    :meth:`on_packet` runs on the forwarding hot path for every packet of the
    stream as it arrives (originals only: an RTX repair is a different SSRC,
    and counting repaired packets as received would hide from the sender's
    loss-based controller the loss the network really caused). It does a few
    integer operations and allocates nothing beyond the ints themselves.

    Sequence numbers follow A.1 without the probation period: the stream is
    authenticated by SRTP and announced in SDP, so its first packet is
    trusted. Jitter follows A.8 in its integer form (scaled by 16), updated
    for in-order packets that start a new RTP timestamp only, as libwebrtc
    and aiortc do: a video frame's packets share a timestamp and leave the
    sender's pacer in a burst, so their spacing measures the pacer, not the
    network, and a reordered or late packet would count its lateness twice.
    """

    __slots__ = (
        "_bad_seq",
        "_base_seq",
        "_cycles",
        "_expected_prior",
        "_jitter_q4",
        "_last_arrival",
        "_last_timestamp",
        "_max_seq",
        "_received_prior",
        "_rtp_rate",
        "_sr_offsets",
        "clock_rate",
        "ignored",
        "last_arrival",
        "octets",
        "received",
        "sr_arrival",
        "sr_at",
        "sr_ntp",
        "sr_rtp",
        "ssrc",
    )

    def __init__(self, ssrc: int, clock_rate: int) -> None:
        if clock_rate <= 0:
            raise ValueError("clock rate must be positive")
        self.ssrc = ssrc
        self.clock_rate = clock_rate
        self._rtp_rate = float(clock_rate)
        self._max_seq = -1  # -1: no packet yet
        self._base_seq = 0
        self._cycles = 0
        self._bad_seq = _SEQ_MOD + 1
        self.received = 0
        """Packets counted as received since the (re)start, duplicates included (A.3)."""
        self.octets = 0
        """Bytes of every packet fed, for bitrate estimates."""
        self.ignored = 0
        """Packets dropped from the statistics as an unconfirmed sequence jump (A.1)."""
        self._expected_prior = 0
        self._received_prior = 0
        self._jitter_q4 = 0
        self._last_arrival = 0
        self._last_timestamp = -1
        self.last_arrival = 0.0
        """``now`` of the newest in-order packet, with :attr:`last_timestamp`."""
        self.sr_ntp = -1
        """NTP timestamp of the publisher's latest SR, -1 before the first."""
        self.sr_rtp = 0
        self.sr_arrival = 0.0
        self.sr_at = 0.0
        """``now`` at which the latest SR's NTP/RTP pair held (its NTP time on our clock)."""
        self._sr_offsets: deque[float] = deque(maxlen=SR_HISTORY)

    # -- the hot path ---------------------------------------------------------------

    def on_packet(self, seq: int, timestamp: int, now: float, size: int = 0) -> None:
        """Count one received packet: its sequence number, RTP timestamp, arrival and size."""
        self.octets += size
        max_seq = self._max_seq
        udelta = (seq - max_seq) & 0xFFFF
        if max_seq < 0:
            self._restart(seq, timestamp, now)
        elif 0 < udelta < MAX_DROPOUT:
            # In order, with a permissible gap (A.1).
            if seq < max_seq:
                self._cycles += _SEQ_MOD
            self._max_seq = seq
            arrival = int(now * self._rtp_rate)
            if timestamp != self._last_timestamp:
                # A.8: D = (Rj - Ri) - (Sj - Si); the RTP part wraps at 2**32.
                d = (arrival - self._last_arrival) - (
                    ((timestamp - self._last_timestamp + 0x80000000) & _U32) - 0x80000000
                )
                if d < 0:
                    d = -d
                self._jitter_q4 += d - ((self._jitter_q4 + 8) >> 4)
                self._last_timestamp = timestamp
            self._last_arrival = arrival
            self.last_arrival = now
        elif MAX_DROPOUT <= udelta <= _SEQ_MOD - MAX_MISORDER:
            # A very large jump: a restarted source if the next packet follows it.
            if seq != self._bad_seq:
                self._bad_seq = (seq + 1) & 0xFFFF
                self.ignored += 1
                return
            self._restart(seq, timestamp, now)
        # Else a duplicate or a reordered packet: received, nothing else moves.
        self.received += 1

    def _restart(self, seq: int, timestamp: int, now: float) -> None:
        """A.1's init_seq: a new base, counters from zero."""
        self._base_seq = seq
        self._max_seq = seq
        self._bad_seq = _SEQ_MOD + 1
        self._cycles = 0
        self.received = 0
        self._expected_prior = 0
        self._received_prior = 0
        self._last_arrival = int(now * self._rtp_rate)
        self._last_timestamp = timestamp
        self.last_arrival = now

    # -- reading --------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether any packet was counted."""
        return self._max_seq >= 0

    @property
    def extended_highest(self) -> int:
        """Extended highest sequence number received (A.1): cycles and max_seq."""
        return self._cycles + max(self._max_seq, 0)

    @property
    def expected(self) -> int:
        """Packets expected since the (re)start (A.3)."""
        if self._max_seq < 0:
            return 0
        return self._cycles + self._max_seq - self._base_seq + 1

    @property
    def cumulative_lost(self) -> int:
        """Expected less received, clamped to the 24-bit signed field (A.3)."""
        return max(_LOST_MIN, min(_LOST_MAX, self.expected - self.received))

    @property
    def jitter(self) -> int:
        """Interarrival jitter in RTP timestamp units (A.8)."""
        return self._jitter_q4 >> 4

    @property
    def last_timestamp(self) -> int:
        """RTP timestamp of the newest in-order packet that changed it, -1 before any."""
        return self._last_timestamp

    def on_sender_report(self, ntp: int, rtp_timestamp: int, now: float) -> None:
        """The publisher's SR for this stream arrived (RFC 3550 section 6.4.1).

        Its NTP time is echoed as LSR in our next report block, with DLSR the
        delay since ``now``; its NTP/RTP pair is what :class:`SendStatistics`
        translates into each subscriber's sender reports.
        """
        self.sr_ntp = ntp
        self.sr_rtp = rtp_timestamp & _U32
        self.sr_arrival = now
        # The pair held at the SR's own NTP time, which need not be when it
        # was sent: aiortc pairs its last packet's send time with that
        # packet's timestamp, so after its encoder stalled a second, its SR
        # leaves with a pair a second old. Our clock and the publisher's
        # differ by an unknown offset, but the SR among the recent ones that
        # came quickest tells it up to the network's least delay: this SR
        # came later than that one by its pair's age.
        offsets = self._sr_offsets
        held = ntp * _NTP_UNIT
        offset = now - held
        if offsets and offset - min(offsets) > CLOCK_STEP:
            offsets.clear()  # the publisher's clock stepped back
        offsets.append(offset)
        self.sr_at = held + min(offsets)

    def rtp_timestamp_at(self, now: float) -> int | None:
        """The stream's RTP timestamp at ``now``, as the publisher's clock would read it.

        From the latest SR's NTP/RTP pair, advanced by the clock rate since
        the pair held (:attr:`sr_at`), but never behind the newest packet's
        timestamp advanced the same way from its arrival: that is a lower
        bound (the packet was captured before it arrived), and a pair behind
        it is one the publisher took from a packet it sent late (aiortc pairs
        its last packet's send time with that packet's timestamp; a sender
        stalled 0.2 s pairs a timestamp 0.2 s old with now). Before any SR,
        the bound alone. ``None`` before any packet or SR.
        """
        rate = self._rtp_rate
        bound = pair = None
        if self._last_timestamp >= 0:
            bound = (self._last_timestamp + round((now - self.last_arrival) * rate)) & _U32
        if self.sr_ntp >= 0:
            pair = (self.sr_rtp + round((now - self.sr_at) * rate)) & _U32
        if pair is None or (bound is not None and ts_newer(bound, pair)):
            return bound
        return pair

    def report_block(self, now: float) -> ReportBlock | None:
        """A reception report block for this stream at ``now`` (RFC 3550 6.4.1, A.3).

        Starts a new interval for the fraction lost. ``None`` when no packet
        arrived since the previous block: RFC 3550 6.4 reports only on
        sources heard since the last report.
        """
        if self._max_seq < 0:
            return None
        expected = self.expected
        received = self.received
        expected_interval = expected - self._expected_prior
        received_interval = received - self._received_prior
        if received_interval <= 0:
            return None
        self._expected_prior = expected
        self._received_prior = received
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        lsr = dlsr = 0
        if self.sr_ntp >= 0:
            lsr = compact_ntp(self.sr_ntp)
            dlsr = max(0, round((now - self.sr_arrival) * 65536.0)) & _U32
        return ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=self.cumulative_lost,
            highest_sequence=self.extended_highest & _U32,
            jitter=self.jitter & _U32,
            lsr=lsr,
            dlsr=dlsr,
        )
