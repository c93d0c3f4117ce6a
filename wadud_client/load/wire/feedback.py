"""A subscriber's bandwidth feedback, as a browser's receiver sends it:
transport-wide CC (draft-holmer-rmcat-transport-wide-cc-extensions-01).

The server numbers every packet it sends a subscriber transport-wide; the
subscriber says when each arrived, and the server's send-side estimate of
the path (which layer the subscriber gets, its probes and padding) is made of
that. :class:`TransportFeedback` notes arrivals and builds the feedback when
one is due, spaced as libwebrtc's receiver spaces it.
"""

from __future__ import annotations

from wadud_client.load.wire import rtp

__all__ = ["FEEDBACK_BITS", "FEEDBACK_EVERY", "FEEDBACK_SHARE", "TransportFeedback"]

#: libwebrtc's receiver: about 5 % of what arrives, a report taken as 68
#: bytes, every 50 to 250 ms.
FEEDBACK_SHARE = 0.05
FEEDBACK_BITS = 68 * 8
FEEDBACK_EVERY = (0.05, 0.25)
#: A jump of more transport sequence numbers than this starts the count anew
#: (the server's numbering of a new path), rather than reporting all as lost.
_JUMP = 1000


class TransportFeedback:
    """One subscriber transport's arrivals since its last feedback.

    ``extension``: the id the server's offer numbers packets with;
    ``sender``: the subscriber's RTCP SSRC.
    """

    def __init__(self, extension: int, sender: int) -> None:
        self.extension = extension
        self.sender = sender
        #: Feedback packets built.
        self.sent = 0
        self._arrivals: list[tuple[int, float]] = []
        self._octets = 0
        self._since = 0.0
        self._due = 0.0
        self._next: int | None = None
        self._media_ssrc = 0

    def arrived(self, data: bytes, ssrc: int, at: float) -> bytes | None:
        """A packet (protected or not: the header extension is in the clear)
        of ``ssrc`` arrived ``at``: the feedback to send now, if one is due.
        Built on arrival, not by a timer: a subscriber that receives nothing
        has nothing to report."""
        tseq = rtp.transport_sequence(data, self.extension)
        if tseq is None:
            return None
        self._arrivals.append((tseq, at))
        self._octets += len(data)
        self._media_ssrc = ssrc
        return self._build(at) if at >= self._due else None

    def restart(self) -> None:
        """A new transport: its numbering starts again."""
        self._arrivals.clear()
        self._next = None

    def _build(self, now: float) -> bytes | None:
        """Every number from the one after the last reported to the highest
        arrived, each with its arrival or as lost. One arriving after its
        number was reported lost is not reported again (as libwebrtc's
        receiver)."""
        arrivals = self._arrivals
        if not arrivals:
            return None
        base = self._next if self._next is not None else arrivals[0][0]
        got: dict[int, float] = {}
        for seq, at in arrivals:
            offset = (seq - base) & 0xFFFF
            if offset < 0x8000:
                got.setdefault(offset, at)
        arrivals.clear()
        if not got:
            return None
        low = min(got)
        if low > _JUMP:
            base, got = (base + low) & 0xFFFF, {k - low: v for k, v in got.items()}
        reference = int(min(got.values()) * 1000 / 64)  # in 64 ms units
        previous = reference * 256  # in 250 µs ticks
        deltas: list[int | None] = []
        for offset in range(max(got) + 1):
            when = got.get(offset)
            if when is None:
                deltas.append(None)
                continue
            ticks = round(when * 4000)
            if not -0x8000 <= ticks - previous <= 0x7FFF:
                # One feedback cannot carry this gap: the rest go in the next.
                arrivals.extend(((base + k) & 0xFFFF, got[k]) for k in got if k >= offset)
                break
            deltas.append(ticks - previous)
            previous = ticks
        while deltas and deltas[-1] is None:
            deltas.pop()
        packet = rtp.transport_feedback(
            self.sender, self._media_ssrc, base, reference, self.sent, deltas
        )
        self.sent += 1
        self._next = (base + len(deltas)) & 0xFFFF
        elapsed = now - self._since
        rate = self._octets * 8 / elapsed if elapsed > 0 else 0.0
        low_every, high_every = FEEDBACK_EVERY
        every = FEEDBACK_BITS / (FEEDBACK_SHARE * rate) if rate > 0 else high_every
        self._since, self._octets = now, 0
        self._due = now + min(high_every, max(low_every, every))
        return packet
