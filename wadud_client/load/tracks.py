"""What one subscriber received of one track, counted from headers as a
browser's receiver counts them (RFC 3550 appendix A.1, A.3, section 6.4.1),
and from the tool's stamps where the subscriber reads them."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TrackStats"]


@dataclass
class TrackStats:
    """What one subscriber received of one track."""

    kind: str
    ssrc: int
    #: Whether the stamps were read (latency, exact loss); else the header only.
    sampled: bool = True
    #: The RTP clock rate: Opus's 48 kHz, video's 90 kHz.
    rate: int = 90_000
    packets: int = 0
    octets: int = 0
    first_at: float = 0.0
    last_at: float = 0.0
    stamped: int = 0
    first_index: int = 0
    last_index: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    jitter: float = 0.0  # RTP timestamp units, RFC 3550 §6.4.1
    _transit: float | None = None
    highest_seq: int = -1
    first_seq: int = 0
    cycles: int = 0
    #: Sequence numbers asked again (NACK), retransmissions received (RTX),
    #: and keyframes asked for (PLI): what a browser's receiver does.
    nacked: int = 0
    repaired: int = 0
    plis: int = 0
    #: (expected, received) by sequence number at the last receiver report.
    reported: tuple[int, int] = (0, 0)
    #: After a NACK: the repairs that would make it whole, and when to ask
    #: for a keyframe if they have not come (-1: none pending).
    pli_want: int = -1
    pli_due: float = 0.0
    last_pli: float = -1e9

    def arrived(self, seq: int, timestamp: int, at: float, size: int) -> int:
        """One packet's header: counts, the extended highest sequence number
        (RFC 3550 A.1, without probation) and interarrival jitter (§6.4.1).
        Returns how many sequence numbers it skipped (a gap: 0 for none)."""
        self.packets += 1
        self.octets += size
        self.last_at = at
        gap = 0
        if self.highest_seq < 0:
            self.highest_seq = self.first_seq = seq
        elif (step := (seq - self.highest_seq) & 0xFFFF) < 0x8000:
            gap = step - 1 if step > 1 else 0
            if seq < self.highest_seq:
                self.cycles += 1 << 16
            self.highest_seq = seq
        rate = self.rate
        transit = at * rate - timestamp
        if self._transit is not None:
            d = abs(transit - self._transit)
            if d < rate:  # a wrap or a layer switch is not jitter
                self.jitter += (d - self.jitter) / 16
        self._transit = transit
        return gap

    @property
    def sequence_expected(self) -> int:
        """Packets the sequence numbers span (RFC 3550 A.3), sampled or not."""
        return self.cycles + self.highest_seq - self.first_seq + 1 if self.packets else 0

    @property
    def expected(self) -> int:
        """Packets that should have arrived: the stamps' span when sampled,
        else the sequence numbers'."""
        if self.sampled:
            return self.last_index - self.first_index + 1 if self.stamped else 0
        return self.sequence_expected

    @property
    def received(self) -> int:
        return self.stamped if self.sampled else self.packets

    @property
    def loss_pct(self) -> float:
        expected = self.expected
        return 0.0 if expected <= 0 else max(0.0, 100 * (1 - self.received / expected))
