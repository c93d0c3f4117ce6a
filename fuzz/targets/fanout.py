"""The SFU's native leaves (sfu/forward/_fanout.c, _fanout_red.c, _unprotect.c, _view.c)
on publisher RTP.

The input's first byte picks a track, the rest is an RTP packet (its SSRC
set to that track's). The packet goes through what the worker does with the
leaf: :meth:`Forwarder.route_into` parses it (its
:class:`~rtc.rtp.view.RtpView`) and hands ``Fanout.forward`` the view and
the offsets it found, the leaf rewrites, SRTP-protects and sends the copies
over loopback. A second forwarder, on the pure-Python path with SRTP
sessions of the same keys, must make byte-identical datagrams: the leaf
trusts offsets Python computed, and a disagreement between the two is where
an out-of-bounds write would hide. RED's two native steps are held to their
Python twins directly as well, the receive side's unprotect
(sfu/forward/_unprotect.c) to pylibsrtp's, and its header parse
(sfu/forward/_view.c) to RtpView.parse.

Two tracks: VP9 video with abs-send-time, transport-cc and mid (subscribers
with other ids, as published, and fewer extensions) and Opus audio with RED
(subscribers with RED, and without it, who get the primary block).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from typing import Any

import pylibsrtp

from fuzz import Finding
from rtc import red
from rtc.errors import RtpParseError
from rtc.rtp.header import payload_range
from rtc.rtp.view import RtpView
from rtc.sdp.attributes import ABS_SEND_TIME, MID, TRANSPORT_CC
from rtc.srtp import SrtpSession
from sfu.forward import native
from sfu.forward.forwarder import Forwarder

KEY = bytes(range(30))
VIDEO, AUDIO = 1111, 2222
RED_PT, OPUS_PT = 63, 111
NOW = 100.0


class Record:
    """What the leaf reads of a subscriber record (sfu.rooms.records.Peer's slots);
    also the records of the leaf's tests (tests/sfu/forward/)."""

    __slots__ = ("addr", "protect", "srtp_errors", "wire")

    def __init__(self, protect: Any, addr: tuple[str, int] | None) -> None:
        self.protect = protect
        self.addr = addr
        self.srtp_errors = 0
        self.wire: object = None


class World:
    def __init__(self) -> None:
        self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sender.bind(("127.0.0.1", 0))
        self.sender.setblocking(False)
        self.receivers = []
        for _ in range(5):
            r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            r.bind(("127.0.0.1", 0))
            r.setblocking(False)
            self.receivers.append(r)
        self.fan = native.fanout(self.sender)
        # transport-cc send rings of the subscriber that has them, one per
        # path; whatever an input writes, both must have written the same.
        self.rings = [([0.0] * 65536, [0] * 65536) for _ in range(2)]


def drain(receivers: list[socket.socket]) -> list[list[bytes]]:
    """What each non-blocking receiver has waiting, in order (the leaf's
    tests read their receivers with it too)."""
    got: list[list[bytes]] = []
    for r in receivers:
        got.append([])
        while True:
            try:
                got[-1].append(r.recv(4096))
            except BlockingIOError:
                break
    return got


_world: World | None = None


def _forwarder(
    records: list[Record], leaf: bool, rings: tuple[list[float], list[int]]
) -> Forwarder:
    f = Forwarder(red_leaf=native.RED if leaf else None)
    exts = {ABS_SEND_TIME: 2, TRANSPORT_CC: 3, MID: 4}
    f.add_track("pub", VIDEO, kind="video", codec="vp9", clock_rate=90000, extensions=exts)
    f.add_track(
        "pub", AUDIO, kind="audio", codec="opus", clock_rate=48000, extensions={MID: 4},
        red_payload_type=RED_PT,
    )  # fmt: skip
    f.subscribe(
        records[0], VIDEO, NOW, ssrc=0xA0, payload_types={96: 100, 98: 98},
        extensions={TRANSPORT_CC: 5, ABS_SEND_TIME: 6, MID: 1},
    )  # fmt: skip
    f.set_send_rings(records[0], *rings)
    f.subscribe(records[1], VIDEO, NOW, ssrc=0xB0)
    f.subscribe(records[2], VIDEO, NOW, ssrc=0xC0, extensions={TRANSPORT_CC: 3})
    f.subscribe(records[3], AUDIO, NOW, ssrc=0xD0, payload_types={RED_PT: RED_PT, OPUS_PT: 111})
    f.subscribe(records[4], AUDIO, NOW, ssrc=0xE0, payload_types={OPUS_PT: 109})
    return f


def _tag(packet: bytes) -> bytes:
    return packet + b"\xa5" * 10


def _red_twins(first: bytes, second: bytes) -> None:
    """sfu.forward._fanout's RED steps against rtc.red's on the two packets."""
    assert native.RED is not None
    try:
        p_start, p_end = payload_range(first)
        start, end = payload_range(second)
    except RtpParseError:
        return
    found = red.primary(second, start, end)
    if native.RED.red_primary(second, start, end) != found:
        raise Finding("sfu.forward._fanout.red_primary disagrees with rtc.red.primary")
    if found < 0 or red.primary(first, p_start, p_end) < 0:
        return  # deepen's contract: both payloads are RED that primary() accepted
    for depth in (1, 2, 3):
        fast = native.RED.red_deepen(first, p_start, p_end, 960, second, start, end, depth)
        if fast is NotImplemented:
            continue
        if fast != red.deepen(first, p_start, p_end, 960, second, start, end, depth):
            raise Finding(
                f"sfu.forward._fanout.red_deepen disagrees with rtc.red.deepen at depth {depth}"
            )


def _unprotect(inbound: Any, datagram: bytes) -> bytes | str:
    try:
        plain: bytes = inbound(datagram)
    except (pylibsrtp.Error, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return plain


def _unprotect_twins(raw: bytes, packet: bytes) -> None:
    """The receive side's native unprotect (sfu/forward/_unprotect.c) against
    pylibsrtp's, each with a session of one key: on the input as it came
    (nearly always refused) and on the packet protected, SRTP and SRTCP.
    They must give the same plain packet or the same refusal."""
    sender, python, leaf = (SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY) for _ in range(3))
    for rtcp in (False, True):
        fast = native.unprotector(leaf.inbound, rtcp=rtcp)
        slow = python.inbound.unprotect_rtcp if rtcp else python.inbound.unprotect
        protect = sender.outbound.protect_rtcp if rtcp else sender.outbound.protect
        datagrams = [raw]
        with contextlib.suppress(pylibsrtp.Error, ValueError):
            datagrams.append(protect(packet))  # libsrtp takes no malformed header
        for datagram in datagrams:
            if _unprotect(fast, datagram) != _unprotect(slow, datagram):
                kind = "SRTCP" if rtcp else "SRTP"
                raise Finding(f"the native {kind} unprotect disagrees with pylibsrtp's")


def view_fields(parse: Any, data: bytes) -> tuple[tuple[Any, ...], str | None]:
    """Every field of a view ``parse`` filled from ``data`` (those a refusal
    left as they were included), and the refusal's message (None without
    one); also the native parse's tests (tests/sfu/forward/test_native.py)."""
    view = RtpView()
    refused = None
    try:
        parse(view, data)
    except RtpParseError as exc:
        refused = str(exc)
    return tuple(getattr(view, name) for name in RtpView.__slots__), refused


def _parse_twins(raw: bytes) -> None:
    """The native header parse against RtpView.parse: the same fields, the
    same refusal (and the fields read before it)."""
    if view_fields(native.PARSE, raw) != view_fields(RtpView.parse, raw):
        raise Finding("sfu.forward._fanout.parse_view disagrees with RtpView.parse")


def check(data: bytes) -> None:
    global _world
    if not native.AVAILABLE or len(data) < 13:
        return
    if _world is None:
        _world = World()
    w = _world
    assert w.fan is not None
    drain(w.receivers)
    track = AUDIO if data[0] & 1 else VIDEO
    packet = bytearray(data[1:])
    packet[8:12] = struct.pack("!I", track)
    seq, ts = struct.unpack_from("!HI", packet, 2)
    # The run's first packet goes round the Python loop, the next ones native.
    first = bytearray(packet)
    struct.pack_into("!HI", first, 2, (seq - 1) & 0xFFFF, (ts - 960) & 0xFFFFFFFF)
    packets = (bytes(first), bytes(packet))
    _red_twins(*packets)
    _unprotect_twins(data[1:], packets[1])
    _parse_twins(data[1:])
    _parse_twins(packets[1])

    # Real SRTP for one subscriber of each track (the leaf calls libsrtp on
    # its slot); a tag-appending stand-in, which the leaf calls back into
    # Python, for the rest: sessions cost more to make than all the routing.
    addrs = [r.getsockname() for r in w.receivers]
    ours, theirs = [], []
    for i, at in enumerate(addrs):
        if i in (1, 3):
            a, b = (SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY) for _ in range(2))
            ours.append(Record(a.outbound.protect, at))
            theirs.append(Record(b.outbound.protect, at))
        else:
            ours.append(Record(_tag, at))
            theirs.append(Record(_tag, at))
    fast, slow = _forwarder(ours, True, w.rings[0]), _forwarder(theirs, False, w.rings[1])
    expected: list[list[bytes]] = [[] for _ in w.receivers]
    index = {id(record): i for i, record in enumerate(theirs)}
    for step, p in enumerate(packets):
        now = NOW + 0.02 * (step + 1)
        out: list[tuple[Any, bytes]] = []
        steady = fast.route_into(p, now, out, True)
        if steady is not None:
            w.fan.forward(*steady)
            if steady[3]:
                fast.route_rest(steady, out)
        w.fan.send(out)
        for key, copy in slow.route(p, now):
            i = index[id(key)]
            expected[i].append(theirs[i].protect(copy))
        if fast.stats.as_dict() != slow.stats.as_dict():
            raise Finding(f"the native path counts otherwise than Python at packet {step}")
    if drain(w.receivers) != expected:
        raise Finding("the native fan-out sent other datagrams than the Python path")
    if w.rings[0] != w.rings[1]:
        raise Finding("the native fan-out wrote other transport-cc send times or sizes")
