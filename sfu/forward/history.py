"""A bounded history of one publisher track's RTP packets, to answer NACKs.

A subscriber that loses a packet on its leg asks for it with a generic NACK
(RFC 4585 section 6.2.1) naming its own sequence numbers; the forwarder maps
them back to the publisher's and looks here. The history keeps the
*unprotected* packets exactly as they arrived (``bytes``, never copied: the
forwarding path already holds them), in a ring indexed by sequence number.

Entries age out two ways: by count (the ring holds ``capacity`` consecutive
sequence numbers; a newer packet overwrites the slot of one ``capacity``
older) and by time (an entry older than ``max_age`` seconds is not answered:
a retransmission that late would arrive after the receiver's jitter buffer
gave up, so a keyframe request serves better). So the ring holds on to a
packet's bytes only while it may be answered: each ``put`` lets go of those
that aged past ``max_age`` since (oldest first, a step or two per packet),
and the memory a track's history holds is ``max_age`` of its bitrate, not
``capacity`` packets whatever the rate (512 of a 180 packet/s video were
0.6 MB). Its sequence number stays, so a late duplicate is still known for
one (:meth:`PacketHistory.contains`). Sequence numbers and times are flat
arrays: no int or float object per slot.

Sequence numbers wrap at 2**16; the ring stores each packet's *extended*
number (unwrapped relative to the newest packet), so a slot left over from a
previous cycle of the 16-bit space is never mistaken for a recent one.
"""

from __future__ import annotations

from array import array

__all__ = ["DEFAULT_CAPACITY", "DEFAULT_MAX_AGE", "PacketHistory"]

DEFAULT_CAPACITY = 512
"""Packets kept per track: about 2 s of 2.5 Mbit/s video, 10 s of Opus."""
DEFAULT_MAX_AGE = 1.0
"""Seconds an entry stays answerable."""


class PacketHistory:
    """Ring buffer of one track's packets by sequence number (RFC 4585 6.2.1 repair).

    Pure state: the caller passes ``now`` (seconds, any monotonic origin).
    """

    __slots__ = (
        "_ext",
        "_mask",
        "_newest",
        "_packets",
        "_tail",
        "_times",
        "capacity",
        "max_age",
    )

    def __init__(self, capacity: int = DEFAULT_CAPACITY, max_age: float = DEFAULT_MAX_AGE) -> None:
        if capacity < 1 or capacity & (capacity - 1):
            raise ValueError("capacity must be a power of two")
        self.capacity = capacity
        self.max_age = max_age
        self._mask = capacity - 1
        self._packets: list[bytes | None] = [None] * capacity
        self._ext = array("q", [-1]) * capacity
        self._times = array("d", [0.0]) * capacity
        # Extended sequence number of the newest packet stored, -1 before the first.
        self._newest = -1
        # Extended sequence number from which bytes may still be held: those
        # before it were let go of (or never stored).
        self._tail = -1

    def _extend(self, seq: int) -> int:
        newest = self._newest
        if newest < 0:
            return seq
        return newest + (((seq - newest + 0x8000) & 0xFFFF) - 0x8000)

    def put(self, seq: int, packet: bytes, now: float) -> bool:
        """Store ``packet`` under its sequence number; ``False`` if too old for the ring."""
        ext = self._extend(seq)
        newest = self._newest
        if newest < 0:
            # Start far from zero so a first packet followed by older ones never
            # extends below zero (extended numbers are only compared, never sent).
            ext = seq + 0x10000
            self._newest = ext
        elif ext > newest:
            self._newest = ext
        elif newest - ext >= self.capacity:
            return False
        i = ext & self._mask
        self._packets[i] = packet
        self._ext[i] = ext
        self._times[i] = now
        if ext < self._tail:
            self._tail = ext  # a gap filled late: let go of it once it ages
        self._release(now - self.max_age)
        return True

    def _release(self, limit: float) -> None:
        """Let go of the bytes of packets stored before ``limit``, oldest
        first, up to the first younger one (put times rise with each put)."""
        newest = self._newest
        tail = max(self._tail, newest - self.capacity + 1)
        mask, ext, times, packets = self._mask, self._ext, self._times, self._packets
        while tail < newest:
            j = tail & mask
            if ext[j] == tail:
                if times[j] >= limit:
                    break
                packets[j] = None
            tail += 1
        self._tail = tail

    def get(self, seq: int, now: float) -> bytes | None:
        """The packet with this sequence number, if still kept and younger than ``max_age``."""
        if self._newest < 0:
            return None
        ext = self._extend(seq)
        i = ext & self._mask
        if (
            self._ext[i] != ext
            or self._newest - ext >= self.capacity
            or now - self._times[i] > self.max_age
        ):
            return None
        return self._packets[i]

    def contains(self, seq: int) -> bool:
        """Whether the packet was stored and not overwritten or expired,
        whatever its age (duplicate check)."""
        if self._newest < 0:
            return False
        ext = self._extend(seq)
        return self._ext[ext & self._mask] == ext and self._newest - ext < self.capacity

    def expire(self, now: float) -> int:
        """Forget entries older than ``max_age`` (frees memory of a paused
        track; a later packet with their number is no duplicate); the count."""
        limit = now - self.max_age
        dropped = 0
        ext, times = self._ext, self._times
        for i in range(self.capacity):
            if ext[i] >= 0 and times[i] < limit:
                self._packets[i] = None
                ext[i] = -1
                dropped += 1
        return dropped

    def clear(self) -> None:
        """Forget everything (the publisher restarted its stream)."""
        self._packets = [None] * self.capacity
        self._ext = array("q", [-1]) * self.capacity
        self._newest = self._tail = -1

    def __len__(self) -> int:
        return sum(1 for p in self._packets if p is not None)
