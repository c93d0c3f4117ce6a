"""The copies of one packet, one per subscription: the fan-out of the forwarder's hot path.

:meth:`sfu.forward.forwarder.Forwarder.route_into` takes a publisher's
packet in (reception, repair, RED, keyframes) and hands it to
:func:`fan_out`, which rewrites one working ``bytearray`` in place for each
subscriber in turn (mediasoup's "rewrite, emit, reuse": payload type, SSRC,
sequence number and timestamp, a simulcast layer's VP8 PictureID and
TL0PICIDX, the extension ids, the transport-wide sequence number and
abs-send-time) and appends one ``bytes`` copy per subscriber, which is what
SRTP protect takes. A subscription that waits for a keyframe starts at one; a
subscriber whose payload type map lacks RED gets the primary block alone.

With the native leaf (``sfu/forward/_fanout.c``, :mod:`sfu.forward.native`)
``forward`` is this function's twin in C for the steady state: it takes the
:data:`Steady` tuple ``route_view`` hands back and leaves what needs more to
:meth:`~sfu.forward.forwarder.Forwarder.route_rest`, which calls
:func:`fan_out` for it. The leaf's RED steps are :class:`NativeRed`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Hashable
from typing import Protocol

from rtc.rtp.header import HEADER_REWRITE
from rtc.rtp.view import RtpView
from sfu.forward.simulcast import vp8_picture
from sfu.forward.table import ForwarderStats, SourceStream, Subscription, remap_extensions

__all__ = ["NativeRed", "Routed", "Steady", "fan_out"]

Routed = list[tuple[Hashable, bytes]]
"""``(subscriber, packet)`` pairs, each packet ready for the subscriber's SRTP ``protect``."""
Steady = tuple[
    list[Subscription],  # the track's subscriptions
    RtpView,  # the packet as its copies start, parsed
    float,  # now
    list[Subscription],  # rest: the copies the native leaf leaves to route_rest
    int,  # transport-wide sequence number's offset, -1 for none
    int,  # abs-send-time's offset, -1 for none
    int,  # abs-send-time's value
    int,  # RED's primary block (payload type << 16 | offset), -1 for none
    ForwarderStats,
    # The rest is route_rest's; the native leaf does not read it.
    SourceStream,
    bool,  # a keyframe starts here
]
"""What :meth:`sfu.forward.forwarder.Forwarder.route_view` hands back for the
native leaf: the arguments of ``Fanout.forward`` (sfu/forward/_fanout.c), then
what :meth:`~sfu.forward.forwarder.Forwarder.route_rest` needs for the copies
the leaf leaves."""


class NativeRed(Protocol):
    """:func:`rtc.red.primary` and :func:`rtc.red.deepen` natively (``sfu.forward._fanout``'s
    pure functions on bytes, :data:`sfu.forward.native.RED`): the same results, faster."""

    def red_primary(self, packet: bytes, start: int, end: int, /) -> int:
        """:func:`rtc.red.primary`, natively."""

    def red_deepen(
        self,
        previous: bytes,
        prev_start: int,
        prev_end: int,
        delta: int,
        packet: bytes,
        start: int,
        end: int,
        depth: int,
        /,
    ) -> object:
        """:func:`rtc.red.deepen` for Chromium's shape (one redundant frame in
        each, depth 2); ``NotImplemented`` for any other."""


_U16 = struct.Struct("!H")


def fan_out(
    subs: list[Subscription],
    track: SourceStream,
    view: RtpView,
    now: float,
    keyframe: bool,
    tcc_off: int,
    abs_off: int,
    abs_value: int,
    primary: int,
    stats: ForwarderStats,
    out: Routed,
    sendable: Callable[[Hashable], bool] | None = None,
) -> None:
    """One rewritten copy of ``view``'s packet per subscription of ``subs``,
    appended to ``out`` (the counts go to ``stats``). A subscriber
    ``sendable`` says no to (its transport not keyed yet) gets none, and its
    subscription stands still: no sequence number spent, no keyframe taken,
    nothing counted as sent."""
    packet = view.packet
    b1, seq, ts, pt = view.b1, view.seq, view.timestamp, view.payload_type
    start, end, n = view.start, view.end, view.size
    elements, two_byte = view.elements, view.two_byte
    ext_start, ext_end = view.ext_start, view.ext_end
    payload_octets = end - start
    buf = bytearray(packet)
    # The extension table ``buf`` holds now (None: the publisher's ids).
    # Subscribers with equal tables share one interned table object, so a
    # room of one browser kind remaps once per packet, not once per copy.
    applied: bytes | None = None
    # A simulcast layer's PictureID/TL0PICIDX, read once for every subscriber.
    picture = vp8_picture(packet, start, end) if track.group is not None else None
    pack_header = HEADER_REWRITE.pack_into
    marker = b1 & 0x80
    forwarded = 0
    # A RED packet for a subscription whose map lacks RED: the RTP header
    # and the primary block (its payload type mapped), made once.
    cut: bytearray | None = None
    cut_applied: bytes | None = None
    for sub in subs:
        if sub.paused or (sendable is not None and not sendable(sub.key)):
            continue
        if sub.waiting_keyframe:
            if not keyframe:
                stats.waiting_keyframe += 1
                continue
            sub.waiting_keyframe = False
            track.waiting -= 1
            # The keyframe starts a run of both rewriters: after a move
            # through no layer it is another layer's, with its own picture
            # numbers (RFC 7741 section 4.2).
            sub.rewriter.switch()
            vp8 = sub.vp8
            if vp8 is not None:
                vp8.switch()
            sub.sent_from = track
        pt_map = sub.pt_map
        out_pt = pt if pt_map is None else pt_map.get(pt)
        target = buf
        out_size = n
        octets = payload_octets
        if out_pt is None:
            if primary < 0 or pt_map is None:
                continue
            out_pt = pt_map.get(primary >> 16)
            if out_pt is None:
                continue
            if cut is None:
                cut = bytearray(packet[:start])
                cut += packet[primary & 0xFFFF : end]
                cut[0] &= 0xDF  # the padding stays behind
            target = cut
            out_size = len(cut)
            octets = end - (primary & 0xFFFF)
        mapped = sub.rewriter.rewrite(seq, ts, now)
        if mapped is None:
            continue
        if target is not buf:
            stats.red_stripped += 1
        pack_header(target, 1, marker | out_pt, mapped[0], mapped[1], sub.ssrc)
        vp8 = sub.vp8
        if vp8 is not None and picture is not None:
            vp8.apply(buf, picture)
        if elements:
            table = sub.ext_table
            if target is buf:
                if table is not applied:
                    if applied is not None:
                        buf[ext_start:ext_end] = packet[ext_start:ext_end]
                    if table is not None:
                        remap_extensions(buf, elements, table, two_byte)
                    applied = table
            elif table is not cut_applied:
                if cut_applied is not None:
                    target[ext_start:ext_end] = packet[ext_start:ext_end]
                if table is not None:
                    remap_extensions(target, elements, table, two_byte)
                cut_applied = table
            if sub.twcc and tcc_off >= 0:
                transport = sub.transport
                tseq = transport.twcc_seq
                _U16.pack_into(target, tcc_off, tseq)
                transport.twcc_seq = (tseq + 1) & 0xFFFF
                sent_at = transport.sent_at
                if sent_at is not None:
                    # The rings' length is a power of two (SendSideEstimator.rings).
                    slot = tseq & (len(sent_at) - 1)
                    sent_at[slot] = now
                    transport.sizes[slot] = out_size  # type: ignore[index]
            if sub.abs_send_time and abs_off >= 0:
                target[abs_off] = abs_value >> 16
                target[abs_off + 1] = (abs_value >> 8) & 0xFF
                target[abs_off + 2] = abs_value & 0xFF
        out.append((sub.key, bytes(target)))
        sub.packets_sent += 1
        sub.octets_sent += octets
        forwarded += 1
    stats.forwarded += forwarded
