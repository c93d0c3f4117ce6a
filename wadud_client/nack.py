"""Repeated NACKs for an aiortc video receiver, as browsers send them."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["NackRetry"]


class NackRetry:
    """Asks again for packets that stay missing, as browsers do.

    aiortc's receiver NACKs a gap once, when it first sees it, and again only
    when a later gap appears; its video jitter buffer then waits for the
    missing packet for up to 512 packets before it gives up and sends a PLI.
    So one lost NACK or one lost retransmission freezes its video for seconds
    (about 6 s at 15 fps in our loss test), while a browser re-asks every
    round trip (Chromium's NackRequester) and recovers in a few. This repeats
    the NACK for every packet still missing after ``interval``, at most
    ``retries`` times (RFC 4585 section 6.2.1 leaves the policy to the
    receiver). It reaches into aiortc's receiver (1.x internals); when they
    are not there it does nothing.
    """

    def __init__(self, receiver: Any, interval: float, retries: int) -> None:
        self.interval = interval
        self.retries = retries
        self.generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
        self.ssrc: int | None = None
        self.resent = 0
        #: Sequence number -> (when last asked, times asked).
        self.asked: dict[int, tuple[float, int]] = {}
        self._send = getattr(receiver, "_send_rtcp_nack", None)
        if self.generator is None or self._send is None:
            return
        send = self._send

        async def remember(media_ssrc: int, lost: list[int]) -> None:
            self.ssrc = media_ssrc
            now = time.monotonic()
            for seq in lost:
                count = self.asked.get(seq, (now, 0))[1]
                self.asked[seq] = (now, count + 1)
            await send(media_ssrc, lost)

        receiver._send_rtcp_nack = remember

    async def tick(self, now: float) -> None:
        if self.generator is None or self._send is None or self.ssrc is None:
            return
        missing = self.generator.missing
        for seq in [s for s in self.asked if s not in missing]:
            del self.asked[seq]
        due = [
            seq
            for seq, (last, count) in self.asked.items()
            if now - last >= self.interval and count <= self.retries
        ]
        if not due:
            return
        for seq in due:
            self.asked[seq] = (now, self.asked[seq][1] + 1)
        self.resent += len(due)
        await self._send(self.ssrc, sorted(due))
