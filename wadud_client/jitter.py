"""Starting a stalled aiortc video receiver over at a keyframe, as browsers do.

aiortc's video jitter buffer (``aiortc.jitterbuffer.JitterBuffer``, 512
packets) hands frames to the decoder strictly in sequence order: one packet
that never comes holds every later frame back until 512 newer packets have
arrived (about 10 s of 320x240 VP8 at 15 fps), and only then does it drop
the gap and send a PLI. A keyframe that arrives meanwhile waits in the
buffer behind the gap like any other frame. Packets do stop coming for good:
after a NAT rebinding the server sends to the old address until the client's
next RTCP shows it the new one (up to 1.5 s for a receive-only aiortc
connection), and what it sent there is past repair once its NACK history
(``sfu.forward.history.DEFAULT_MAX_AGE``, 1 s) has let it go. The server asks the
publisher for a keyframe exactly then, so the decoder can start clean;
Chromium's frame buffer does that, decoding a complete keyframe at once and
dropping the older frames it could not complete.

:class:`KeyframeResync` gives an aiortc receiver that behaviour: when the
first packet of a VP8 keyframe (RFC 7741 section 4.3, RFC 6386 section 9.1)
arrives while the buffer holds an incomplete frame before it, everything
before the keyframe is dropped and no longer NACKed, so the keyframe is the
next frame decoded; a late packet from before the keyframe is ignored rather
than allowed to reset the buffer. It reaches into aiortc's receiver (1.x
internals); when they are not there it does nothing.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KeyframeResync"]


def _behind(a: int, b: int) -> bool:
    """Whether 16-bit sequence number ``a`` comes before ``b`` (RFC 3550 A.1 arithmetic)."""
    return 0 < ((b - a) & 0xFFFF) < 0x8000


def vp8_keyframe_start(payload: bytes) -> bool:
    """Whether an RTP payload starts a VP8 keyframe: S set and PID 0 in the
    payload descriptor (RFC 7741 4.2) and the P bit of the frame tag clear
    (RFC 6386 9.1)."""
    if not payload or payload[0] & 0x17 != 0x10:
        return False
    pos = 1
    if payload[0] & 0x80:  # X: extended control bits follow
        if len(payload) < 2:
            return False
        x = payload[1]
        pos = 2
        if x & 0x80:  # I: picture id, 7 or 15 bits (M)
            if len(payload) <= pos:
                return False
            pos += 2 if payload[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX
            pos += 1
    return pos < len(payload) and not payload[pos] & 0x01


class KeyframeResync:
    """Makes one aiortc video receiver's jitter buffer skip to a keyframe past a gap.

    ``resyncs`` counts the times it did, ``skipped`` the sequence numbers
    given up on.
    """

    def __init__(self, receiver: Any) -> None:
        self.resyncs = 0
        self.skipped = 0
        self._floor: int | None = None
        self._buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        self._nack = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
        self._codecs = getattr(receiver, "_RTCRtpReceiver__codecs", None)
        buffer = self._buffer
        if (
            buffer is None
            or self._codecs is None
            or not all(hasattr(buffer, a) for a in ("add", "remove", "_origin", "_packets"))
        ):
            self._buffer = None
            return
        add = buffer.add

        def add_resyncing(packet: Any) -> Any:
            seq = packet.sequence_number
            if self._floor is not None:
                if _behind(seq, self._floor):
                    # Before the keyframe we started over at: too late to use.
                    return False, None
                if (seq - self._floor) & 0xFFFF >= buffer.capacity:
                    self._floor = None
            if self._vp8(packet) and vp8_keyframe_start(packet.payload):
                self._resync(seq)
            return add(packet)

        buffer.add = add_resyncing

    def _vp8(self, packet: Any) -> bool:
        assert self._codecs is not None
        codec = self._codecs.get(packet.payload_type)
        return codec is not None and str(codec.mimeType).lower() == "video/vp8"

    def _resync(self, seq: int) -> None:
        buffer = self._buffer
        assert buffer is not None
        origin = buffer._origin
        if origin is None or not _behind(origin, seq):
            return
        count = (seq - origin) & 0xFFFF
        if count >= buffer.capacity:
            return  # aiortc itself drops that much on this packet
        slots = buffer._packets
        cap = buffer.capacity
        if all(slots[(origin + i) % cap] is not None for i in range(count)):
            return  # nothing missing: the frames before complete on this packet
        buffer.remove(count)
        if self._nack is not None:
            missing = self._nack.missing
            for lost in [s for s in missing if _behind(s, seq)]:
                missing.discard(lost)
        self._floor = seq
        self.resyncs += 1
        self.skipped += count
