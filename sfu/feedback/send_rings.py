"""What was sent to one subscriber transport, by transport-wide sequence number.

The send-side estimator (:mod:`sfu.feedback.estimator`) matches each
transport-wide CC feedback (draft-holmer-rmcat-transport-wide-cc-extensions-01)
to the send time, size and probe cluster of the packets it reports. The
forwarder's hot path stores the first two for every packet it numbers
(``sent_at[seq & mask]``, ``sizes[seq & mask]``: no call, no object), so they
are flat arrays (nothing for the garbage collector to walk) whose length is a
power of two.

They hold what is in flight until its feedback comes back: a feedback
interval and a round trip, a fraction of a second of packets, not the whole
16-bit space (65,536 slots were 0.9 MB per subscriber). They start sized
for ``HORIZON`` seconds of the transport's starting bitrate in packets of
``PACKET`` octets (``FEWEST`` slots at least, 3.5 KB), and double in place
(the hot path keeps the very arrays it was handed), up to ``MOST`` slots,
when a feedback shows that more was sent while its oldest packet was in
flight than half of them hold (a longer round trip, a higher packet rate),
or that a slot was overwritten before its feedback came.
"""

from __future__ import annotations

from array import array

__all__ = ["FEWEST", "HORIZON", "MOST", "PACKET", "SendRings", "slots_for"]

HORIZON, PACKET, FEWEST, MOST = 1.0, 1000, 256, 1 << 16


def slots_for(bitrate: float) -> int:
    """Slots of new rings for a transport that starts at ``bitrate``: a
    power of two between FEWEST and MOST."""
    need = bitrate / (8 * PACKET) * HORIZON
    slots = FEWEST
    while slots < need and slots < MOST:
        slots *= 2
    return slots


class SendRings:
    """Send time (-1: none), size and probe cluster (0: none) by ``seq & mask``."""

    __slots__ = ("cluster", "mask", "sent_at", "sizes")

    def __init__(self, bitrate: float) -> None:
        slots = slots_for(bitrate)
        self.mask = slots - 1
        self.sent_at = array("d", [-1.0]) * slots
        self.sizes = array("I", [0]) * slots
        self.cluster = array("H", [0]) * slots

    def forget(self) -> None:
        """Nothing is in flight any more (a new path): sizes may stay."""
        slots = self.mask + 1
        self.sent_at[:] = array("d", [-1.0]) * slots
        self.cluster[:] = array("H", [0]) * slots

    def fit(self, reported: int, first: float, last: float, now: float) -> None:
        """A feedback reported ``reported`` packets, the first received of
        them sent at ``first`` and the last at ``last``: double the rings
        while what was sent since ``first`` (at that rate) would fill over
        half of them, or once if ``last < first`` (a newer packet's time in
        an older one's slot: it was overwritten)."""
        if last < first:
            in_flight = float(self.mask + 1)
        else:
            rate = (reported - 1) / max(last - first, 0.01)
            in_flight = rate * (now - first)
        while 2 * in_flight > self.mask + 1 and self.mask + 1 < MOST:
            # Each slot is copied into its twin: a packet at seq s sat at
            # s & mask and is found at s & (2 * mask + 1), either one.
            self.sent_at.extend(self.sent_at)
            self.sizes.extend(self.sizes)
            self.cluster.extend(self.cluster)
            self.mask = 2 * self.mask + 1
