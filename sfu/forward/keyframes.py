"""Where a video keyframe starts, and what size it says the picture is.

The forwarder holds a new (or switched) subscriber until a keyframe, so it
must see one start in a packet's payload without decoding: VP8 (RFC 7741
section 4.3, RFC 6386 section 9.1) and H.264 (RFC 6184 section 5). Pure
functions over a packet's buffer and its payload's ``[start, end)``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["KEYFRAME_DETECTORS", "h264_keyframe_start", "vp8_keyframe_start", "vp8_size"]

Buffer = bytes | bytearray | memoryview


def vp8_keyframe_start(data: Buffer, start: int, end: int) -> bool:
    """Whether the payload ``data[start:end]`` starts a VP8 keyframe (RFC 7741 4.2, 4.3).

    True for the first packet of partition 0 (S bit set, PID 0) whose VP8
    payload header has the P (inverse key frame) bit clear (RFC 6386 9.1).
    """
    if start >= end:
        return False
    b = data[start]
    if b & 0x17 != 0x10:  # S set, PID 0
        return False
    pos = start + 1
    if b & 0x80:  # X: extended control bits follow
        if pos >= end:
            return False
        x = data[pos]
        pos += 1
        if x & 0x80:  # I: picture id, 7 or 15 bits (M)
            if pos >= end:
                return False
            pos += 2 if data[pos] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            pos += 1
        if x & 0x30:  # T or K: TID/Y/KEYIDX byte
            pos += 1
    return pos < end and not data[pos] & 0x01


_H264_IDR = 5
_H264_SPS = 7
_H264_STAP_A = 24
_H264_FU_A = 28


def h264_keyframe_start(data: Buffer, start: int, end: int) -> bool:
    """Whether the payload ``data[start:end]`` starts an H.264 IDR access unit (RFC 6184 5.6-5.8).

    True for an IDR NAL unit (type 5) or an SPS (type 7) alone, inside a
    STAP-A, or as the start fragment of an FU-A. The SPS counts because
    browsers send SPS and PPS just before each IDR of the same access unit:
    a subscriber that started at the IDR itself would miss the parameter sets
    it needs to decode it.
    """
    if start >= end:
        return False
    nal = data[start] & 0x1F
    if nal in (_H264_IDR, _H264_SPS):
        return True
    if nal == _H264_STAP_A:
        pos = start + 1
        while pos + 2 < end:
            size = (data[pos] << 8) | data[pos + 1]
            pos += 2
            if size == 0 or pos + size > end:
                return False
            t = data[pos] & 0x1F
            if t in (_H264_IDR, _H264_SPS):
                return True
            pos += size
        return False
    if nal == _H264_FU_A:
        # FU header: S bit and the fragmented NAL unit's type.
        return start + 1 < end and data[start + 1] & 0x9F == 0x80 | _H264_IDR
    return False


KEYFRAME_DETECTORS: dict[str, Callable[[Buffer, int, int], bool]] = {
    "vp8": vp8_keyframe_start,
    "h264": h264_keyframe_start,
}


def vp8_size(data: Buffer, start: int, end: int) -> tuple[int, int] | None:
    """``(width, height)`` of a VP8 keyframe (RFC 6386 9.1) whose payload
    descriptor starts at ``start``, or None when the packet does not say."""
    pos = start + 1
    if data[start] & 0x80:
        x = data[pos]
        pos += 1
        if x & 0x80:
            pos += 2 if data[pos] & 0x80 else 1
        if x & 0x40:
            pos += 1
        if x & 0x30:
            pos += 1
    # 3-octet frame tag, start code 9d 01 2a, then 14-bit width and height.
    if pos + 10 <= end and data[pos + 3] == 0x9D and data[pos + 4] == 0x01:
        width = (data[pos + 6] | data[pos + 7] << 8) & 0x3FFF
        height = (data[pos + 8] | data[pos + 9] << 8) & 0x3FFF
        return width, height
    return None
