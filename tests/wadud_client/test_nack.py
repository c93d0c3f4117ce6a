"""wadud_client.nack: NACKs repeated for what stays missing, then a keyframe asked for.

Times step by eighths of a second, which floats hold exactly."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiortc.rtcrtpreceiver import NackGenerator
from aiortc.rtp import RtpPacket

from wadud_client.nack import NackRetry

SSRC = 0x1234


class _Receiver(SimpleNamespace):
    """What NackRetry reads of an aiortc RTCRtpReceiver (its 1.x internals),
    with the RTCP it sends written down instead of sent."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self._RTCRtpReceiver__nack_generator = NackGenerator()
        self.sent: list[tuple[str, Any]] = []

    async def _send_rtcp_nack(self, media_ssrc: int, lost: list[int]) -> None:
        self.sent.append(("nack", sorted(lost)))

    async def _send_rtcp_pli(self, media_ssrc: int) -> None:
        self.sent.append(("pli", media_ssrc))

    def clock(self) -> float:
        return self.now

    async def arrive(self, seq: int) -> None:
        """A packet in, as aiortc's receiver takes it: its first NACK for a new gap."""
        generator = self._RTCRtpReceiver__nack_generator
        if generator.add(RtpPacket(payload_type=96, sequence_number=seq, ssrc=SSRC)):
            await self._send_rtcp_nack(SSRC, sorted(generator.missing))


async def _tick(receiver: _Receiver, retry: NackRetry, now: float) -> None:
    receiver.now = now
    await retry.tick(now)


async def test_a_packet_that_never_comes_is_nacked_ten_times_more_then_replaced_by_a_keyframe() -> (
    None
):
    receiver = _Receiver()
    retry = NackRetry(receiver, 0.125, 10, receiver.clock)
    receiver.now = 100.0
    for seq in (1, 2, 4):
        await receiver.arrive(seq)
    assert receiver.sent == [("nack", [3])]  # aiortc's own, once
    for i in range(1, 11):
        await _tick(receiver, retry, 100.0 + i / 8)
    assert receiver.sent.count(("nack", [3])) == 11 and retry.resent == 10
    assert retry.keyframes_asked == 0
    # One interval after the last NACK the packet is given up: one PLI.
    await _tick(receiver, retry, 101.375)
    assert receiver.sent[-1] == ("pli", SSRC) and retry.keyframes_asked == 1
    # Neither asked again for the same packet nor NACKed any more.
    for i in range(12, 40):
        await _tick(receiver, retry, 100.0 + i / 8)
    assert retry.keyframes_asked == 1 and retry.resent == 10


async def test_keyframes_for_packets_given_up_are_asked_at_most_once_a_second() -> None:
    receiver = _Receiver()
    retry = NackRetry(receiver, 0.125, 0, receiver.clock)
    receiver.now = 10.0
    await receiver.arrive(1)
    await receiver.arrive(3)  # 2 missing: aiortc NACKs it
    await _tick(receiver, retry, 10.125)  # asked once already: given up, a PLI
    assert retry.keyframes_asked == 1 and retry.resent == 0
    await receiver.arrive(5)  # 4 missing too (2 is NACKed along with it)
    await _tick(receiver, retry, 10.25)
    assert retry.keyframes_asked == 1  # 4 given up too, within the second
    await receiver.arrive(7)
    await _tick(receiver, retry, 11.25)
    assert retry.keyframes_asked == 2
    assert receiver.sent.count(("pli", SSRC)) == 2


async def test_a_packet_that_comes_late_asks_for_no_keyframe() -> None:
    receiver = _Receiver()
    retry = NackRetry(receiver, 0.125, 2, receiver.clock)
    for seq in (1, 3):
        await receiver.arrive(seq)
    await _tick(receiver, retry, 0.125)
    await receiver.arrive(2)  # the retransmission
    for i in range(2, 20):
        await _tick(receiver, retry, i / 8)
    assert retry.keyframes_asked == 0 and ("pli", SSRC) not in receiver.sent
    assert retry.asked == {}
