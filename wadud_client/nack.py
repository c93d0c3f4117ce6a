"""Repeated NACKs for an aiortc video receiver, as browsers send them."""

from __future__ import annotations

import time
from collections.abc import Callable
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
    receiver).

    A packet still missing an ``interval`` after its last NACK will not
    come: the server keeps what it sent for about a second
    (``sfu.forward.history``), and one it never received (lost before the server)
    it cannot send at all. Then the picture cannot be repaired, only
    replaced: a PLI (RFC 4585 section 6.3.1) asks the publisher for a
    keyframe, at most once per ``KEYFRAME_EVERY`` seconds, as a browser
    asks when its frame buffer has nothing it can decode. The keyframe
    starts the decoder over past the gap (:class:`~wadud_client.jitter.KeyframeResync`);
    without the PLI aiortc's jitter buffer waits for 512 more packets,
    about 16 s of 30 fps video. ``keyframes_asked`` counts those PLIs.

    ``clock`` times the NACKs aiortc sends by itself; :meth:`tick` is
    given times of the same clock. It reaches into aiortc's receiver (1.x
    internals); when they are not there it does nothing.
    """

    #: Seconds between PLIs for packets given up on.
    KEYFRAME_EVERY = 1.0

    def __init__(
        self,
        receiver: Any,
        interval: float,
        retries: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.retries = retries
        self.generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
        self.ssrc: int | None = None
        self.resent = 0
        self.keyframes_asked = 0
        #: Sequence number -> (when last asked, times asked).
        self.asked: dict[int, tuple[float, int]] = {}
        #: Sequence numbers given up on (a PLI went for them), while missing.
        self.given_up: set[int] = set()
        self._keyframe_at = float("-inf")
        self._send = getattr(receiver, "_send_rtcp_nack", None)
        self._send_pli = getattr(receiver, "_send_rtcp_pli", None)
        if self.generator is None or self._send is None:
            return
        send = self._send

        async def remember(media_ssrc: int, lost: list[int]) -> None:
            self.ssrc = media_ssrc
            now = clock()
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
        self.given_up &= missing
        due = []
        lost = []
        for seq, (last, count) in self.asked.items():
            if now - last < self.interval:
                continue
            if count <= self.retries:
                due.append(seq)
            elif seq not in self.given_up:
                lost.append(seq)
        if lost and self._send_pli is not None and now - self._keyframe_at >= self.KEYFRAME_EVERY:
            self.given_up.update(lost)
            self._keyframe_at = now
            self.keyframes_asked += 1
            await self._send_pli(self.ssrc)
        if not due:
            return
        for seq in due:
            self.asked[seq] = (now, self.asked[seq][1] + 1)
        self.resent += len(due)
        await self._send(self.ssrc, sorted(due))
