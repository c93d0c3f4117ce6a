"""The in-memory link under the pair helpers of the transport tests (aioquic's
``transfer()``, h11's ConnectionPair): datagrams cross it in two named
directions on a fake clock, each numbered in its own direction, and a filter
may drop any of them. A pair helper owns its two endpoints and asks the link,
datagram by datagram, whether each one arrives."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Drop", "MemoryLink"]

# A filter sees (direction, index of the datagram in that direction, data) and
# says whether to drop it.
Drop = Callable[[str, int, bytes], bool]


class MemoryLink:
    """Counts what is sent each way and drops what ``drop`` picks; ``now`` is the fake clock."""

    def __init__(self, directions: tuple[str, str], drop: Drop | None = None) -> None:
        self.drop = drop or (lambda direction, index, data: False)
        self.sent = dict.fromkeys(directions, 0)
        self.dropped = 0
        self.now = 0.0

    def arrives(self, direction: str, data: bytes) -> bool:
        """Send ``data`` in ``direction``: False when the filter drops it."""
        index = self.sent[direction]
        self.sent[direction] += 1
        if self.drop(direction, index, data):
            self.dropped += 1
            return False
        return True
