"""The native fan-out leaf (sfu/forward/_fanout.c) against real UDP sockets and real libsrtp.

Each test sends routed copies through :class:`sfu.forward._fanout.Fanout` and checks
what arrives: the same bytes the pure-Python path (pylibsrtp's protect, then
``sendto``) would have sent, since SRTP with the same key, SSRC and index is
deterministic. The worker-level tests (tests/sfu/node/test_worker.py and the rest)
run on whichever path ``WADUD_NATIVE`` selects; CI runs them on both.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pylibsrtp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.targets.fanout import Record, drain, view_fields
from rtc.rtp.view import RtpView
from rtc.sdp.attributes import ABS_SEND_TIME, MID, TRANSPORT_CC
from rtc.srtp import SrtpSession
from sfu.forward import native
from tests.rtc.test_rtp import packets

needs_native = pytest.mark.skipif(not native.AVAILABLE, reason="native fan-out not built or off")

KEY = bytes(range(30))


def rtp(seq: int, ssrc: int, size: int = 1200) -> bytes:
    return struct.pack("!BBHII", 0x80, 96, seq, seq * 3000, ssrc) + bytes([seq & 0xFF]) * (
        size - 12
    )


def twins() -> tuple[SrtpSession, SrtpSession]:
    """Two sessions with one key: one for the leaf, one for the expected bytes."""
    return SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY), SrtpSession(
        "SRTP_AES128_CM_SHA1_80", KEY, KEY
    )


@contextlib.contextmanager
def loopback_sockets(
    *, count: int = 3, rcvbuf: int = 1 << 20, timeout: float | None = None
) -> Iterator[tuple[socket.socket, list[socket.socket]]]:
    """A non-blocking sender and ``count`` receivers on 127.0.0.1 (with
    ``timeout``: blocking reads that give up after it), closed after."""
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.bind(("127.0.0.1", 0))
    sender.setblocking(False)
    receivers = []
    try:
        for _ in range(count):
            r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            receivers.append(r)
            r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            r.bind(("127.0.0.1", 0))
            if timeout is None:
                r.setblocking(False)
            else:
                r.settimeout(timeout)
        yield sender, receivers
    finally:
        for s in (sender, *receivers):
            s.close()


@contextlib.contextmanager
def native_leaf(
    *, count: int = 3, rcvbuf: int = 1 << 20, timeout: float | None = None
) -> Iterator[tuple[native.Fanout, list[socket.socket]]]:
    """The leaf on the sender of :func:`loopback_sockets`, and its receivers."""
    with loopback_sockets(count=count, rcvbuf=rcvbuf, timeout=timeout) as (sender, receivers):
        fan = native.fanout(sender)
        assert fan is not None
        yield fan, receivers


def keyed(receiver: socket.socket) -> tuple[Record, SrtpSession]:
    """A record addressed to ``receiver``, and the twin session that says what it gets."""
    ours, expected = twins()
    return Record(ours.outbound.protect, receiver.getsockname()), expected


def twin_records(receivers: list[socket.socket]) -> tuple[list[Record], list[Record]]:
    """A record per receiver for the leaf, and its twin (a session of the same
    key) for what the Python loop would send there."""
    pairs = [twins() for _ in receivers]
    addrs = [r.getsockname() for r in receivers]
    ours = [Record(a.outbound.protect, at) for (a, _), at in zip(pairs, addrs, strict=True)]
    theirs = [Record(b.outbound.protect, at) for (_, b), at in zip(pairs, addrs, strict=True)]
    return ours, theirs


Leaf = tuple[native.Fanout, list[socket.socket]]


@pytest.fixture
def leaf() -> Iterator[Leaf]:
    with native_leaf(timeout=2.0) as pair:
        yield pair


def test_enabled_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WADUD_NATIVE", "0")
    assert not native.enabled()
    monkeypatch.setenv("WADUD_NATIVE", "1")
    assert native.enabled()
    monkeypatch.delenv("WADUD_NATIVE")
    assert native.enabled()


@needs_native
def test_copies_arrive_as_the_python_path_would_send_them(leaf: Leaf) -> None:
    fan, receivers = leaf
    pairs = [twins() for _ in receivers]
    records = [
        Record(ours.outbound.protect, r.getsockname())
        for (ours, _), r in zip(pairs, receivers, strict=True)
    ]
    # One packet to three subscribers at a time, then 90 copies in one call:
    # more than one sendmmsg batch (64).
    for seq in range(10):
        routed = [(rec, rtp(seq, 1000 + i)) for i, rec in enumerate(records)]
        assert fan.send(routed) == 3
    routed = [(rec, rtp(seq, 1000 + i)) for seq in range(10, 40) for i, rec in enumerate(records)]
    assert fan.send(routed) == 90
    for i, ((_, expected), r) in enumerate(zip(pairs, receivers, strict=True)):
        for seq in range(40):
            data = r.recv(2048)
            assert data == expected.outbound.protect(rtp(seq, 1000 + i))
            assert expected.inbound.unprotect(data) == rtp(seq, 1000 + i)
    assert fan.counters() == {"sent": 120, "dropped": 0, "send_errors": 0}
    assert all(rec.srtp_errors == 0 for rec in records)


@needs_native
def test_the_cached_leg_follows_a_new_address_and_a_new_session(leaf: Leaf) -> None:
    fan, (first, second, _) = leaf
    rec, expected = keyed(first)
    fan.send([(rec, rtp(1, 7))])
    assert first.recv(2048) == expected.outbound.protect(rtp(1, 7))
    leg = rec.wire
    assert leg is not None
    fan.send([(rec, rtp(2, 7))])
    assert rec.wire is leg  # cached, not rebuilt
    assert first.recv(2048) == expected.outbound.protect(rtp(2, 7))

    # ICE selected another address (a new tuple object): the next copy goes there.
    rec.addr = second.getsockname()
    fan.send([(rec, rtp(3, 7))])
    assert rec.wire is not leg
    assert second.recv(2048) == expected.outbound.protect(rtp(3, 7))

    # A new DTLS association (new keys): the new session protects.
    fresh = SrtpSession("SRTP_AES128_CM_SHA1_80", bytes(30), bytes(30))
    check = SrtpSession("SRTP_AES128_CM_SHA1_80", bytes(30), bytes(30))
    rec.protect = fresh.outbound.protect
    fan.send([(rec, rtp(4, 7))])
    assert check.inbound.unprotect(second.recv(2048)) == rtp(4, 7)


@needs_native
def test_unkeyed_and_unaddressed_records_are_skipped(leaf: Leaf) -> None:
    fan, (first, *_) = leaf
    ours, expected = twins()
    routed = [
        (Record(None, first.getsockname()), rtp(1, 5)),
        (Record(ours.outbound.protect, None), rtp(1, 6)),
        (Record(ours.outbound.protect, first.getsockname()), rtp(1, 7)),
    ]
    assert fan.send(routed) == 1
    assert first.recv(2048) == expected.outbound.protect(rtp(1, 7))


@needs_native
def test_a_protect_that_is_not_pylibsrtps_is_called_and_its_errors_counted(leaf: Leaf) -> None:
    fan, (first, *_) = leaf
    calls: list[bytes] = []

    def protect(packet: bytes) -> bytes:
        calls.append(packet)
        if len(calls) == 2:
            raise pylibsrtp.Error("refused")
        return b"P" + packet

    rec = Record(protect, first.getsockname())
    assert fan.send([(rec, rtp(1, 9)), (rec, rtp(2, 9)), (rec, rtp(3, 9))]) == 2
    assert first.recv(2048) == b"P" + rtp(1, 9)
    assert first.recv(2048) == b"P" + rtp(3, 9)
    assert rec.srtp_errors == 1


@needs_native
def test_an_oversized_packet_is_counted_not_sent_and_the_rest_go(leaf: Leaf) -> None:
    fan, (first, *_) = leaf
    rec, expected = keyed(first)
    assert fan.send([(rec, rtp(1, 9, size=4000)), (rec, rtp(2, 9))]) == 1
    assert rec.srtp_errors == 1
    # The oversized one never reached libsrtp, so the next index is the same as
    # the twin's first.
    assert first.recv(2048) == expected.outbound.protect(rtp(2, 9))


@needs_native
def test_a_refused_destination_is_counted_and_the_batch_goes_on(leaf: Leaf) -> None:
    fan, (first, *_) = leaf
    good, expected = keyed(first)
    # Port 0 is not a destination the kernel sends to (EINVAL).
    bad = Record(twins()[0].outbound.protect, ("127.0.0.1", 0))
    assert fan.send([(bad, rtp(1, 3)), (good, rtp(1, 4)), (bad, rtp(2, 3))]) == 1
    assert first.recv(2048) == expected.outbound.protect(rtp(1, 4))
    assert fan.counters()["send_errors"] == 2


@needs_native
def test_bad_input_raises_typed_errors_without_sending(leaf: Leaf) -> None:
    fan, (first, *_) = leaf
    ours, _ = twins()
    with pytest.raises(TypeError):
        fan.send(((Record(ours.outbound.protect, first.getsockname()), rtp(1, 1)),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not an IP address"):
        fan.send([(Record(ours.outbound.protect, ("example.org", 5)), rtp(1, 1))])
    with pytest.raises(TypeError):
        fan.send([(Record(ours.outbound.protect, first.getsockname()), "text")])  # type: ignore[list-item]


@needs_native
def test_ipv6_destinations() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        sender = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        sender.bind(("::1", 0))
    except OSError:
        pytest.skip("no ::1 here")
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.bind(("::1", 0))
    receiver.settimeout(2.0)
    try:
        fan = native.fanout(sender)
        assert fan is not None
        ours, expected = twins()
        rec = Record(ours.outbound.protect, receiver.getsockname()[:2])
        assert fan.send([(rec, rtp(1, 2))]) == 1
        assert receiver.recv(2048) == expected.outbound.protect(rtp(1, 2))
    finally:
        sender.close()
        receiver.close()


def test_wadud_native_0_leaves_the_worker_on_python(tmp_path: Any) -> None:
    """A fresh interpreter with WADUD_NATIVE=0 sees no native path."""
    import subprocess
    import sys

    code = (
        "import pylibsrtp; from sfu.forward import native;"
        "p = pylibsrtp.Policy(key=bytes(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND);"
        "print(native.AVAILABLE, type(native.unprotector(pylibsrtp.Session(p))).__name__)"
    )
    env = dict(os.environ, WADUD_NATIVE="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False method"
    env["WADUD_NATIVE"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    from sfu.forward import _fanout  # type: ignore[attr-defined]  # built here, whatever WADUD_NATIVE says

    built = _fanout is not None
    assert out.stdout.strip() == f"{built} {'Unprotect' if built else 'method'}"


@needs_native
async def test_the_worker_sends_through_the_leaf_unless_writing_is_paused() -> None:
    from sfu.node.worker import MediaWorker

    async with MediaWorker() as worker:
        assert worker._fanout is not None
        assert worker._fan is worker._fanout
        worker.pause_writing()
        assert worker._fan is None  # the Python loop drops and counts
        worker.resume_writing()
        assert worker._fan is worker._fanout
    assert worker._fanout is None


# -- the forwarder's loop: native and Python send the same bytes ---------------------

PUB_EXTS = {ABS_SEND_TIME: 2, TRANSPORT_CC: 3, MID: 4}


def route_native(f: Any, fan: Any, packet: bytes, now: float, out: list[Any]) -> None:
    """What the worker does with the leaf: the forwarder's steady-state copies to
    ``fan.forward``, the rest made by the forwarder into ``out`` (for ``fan.send``)."""
    steady = f.route_into(packet, now, out, True)
    if steady is not None:
        fan.forward(*steady)
        if steady[3]:
            f.route_rest(steady, out)


def with_extensions(seq: int, ts: int, size: int) -> bytes:
    """RTP with an RFC 8285 one-byte block: abs-send-time (id 2), transport-cc (3), mid (4)."""
    block = bytes([0x22, 1, 2, 3, 0x31, 0, 7, 0x40, ord("v"), 0, 0, 0])
    header = struct.pack("!BBHII", 0x90, 96, seq, ts, 1111)
    header += struct.pack("!HH", 0xBEDE, len(block) // 4) + block
    return header + bytes([seq & 0xFF]) * (size - len(header))


def forwarder_with_three(records: list[Record], now: float) -> Any:
    """A VP9 track (no keyframe wait) to three subscribers negotiated
    differently; a record whose ``protect`` is None is not sent to, as the
    worker's forwarders do with peers not keyed yet."""
    from sfu.forward.forwarder import Forwarder

    f = Forwarder(sendable=lambda r: isinstance(r, Record) and r.protect is not None)
    f.add_track("pub", 1111, kind="video", codec="vp9", clock_rate=90000, extensions=PUB_EXTS)
    # Other ids and payload type, transport-cc with the estimator's rings.
    f.subscribe(
        records[0], 1111, now, ssrc=0xA0, payload_types={96: 100},
        extensions={TRANSPORT_CC: 5, ABS_SEND_TIME: 6, MID: 1},
    )  # fmt: skip
    f.set_send_rings(records[0], [0.0] * 65536, [0] * 65536)
    # As published.
    f.subscribe(records[1], 1111, now, ssrc=0xB0)
    # No abs-send-time (blanked), no mid; transport-cc without rings.
    f.subscribe(records[2], 1111, now, ssrc=0xC0, extensions={TRANSPORT_CC: 3})
    return f


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(-4, 6),  # sequence step (reordering, duplicates, gaps)
            st.integers(0, 6000),  # timestamp step
            st.integers(60, 1300),  # size
            # What happens to the third first: paused by the layers, or
            # its transport unkeyed (as before DTLS ends) and keyed again.
            st.sampled_from([None, "pause", "resume", "unkey", "rekey"]),
        ),
        min_size=1,
        max_size=40,
    )
)
@needs_native
def test_native_forward_sends_what_the_python_loop_would(
    steps: list[tuple[int, int, int, str | None]],
) -> None:
    with native_leaf() as (fan, receivers):
        ours, theirs = twin_records(receivers)
        protects = ours[2].protect, theirs[2].protect
        now = 100.0
        fast = forwarder_with_three(ours, now)
        slow = forwarder_with_three(theirs, now)
        expected: list[list[bytes]] = [[], [], []]
        by_python = 0
        seq, ts = 65530, 4_294_960_000  # both wrap on the way
        for step, (dseq, dts, size, event) in enumerate(steps):
            now += 0.01
            if event in ("pause", "resume"):
                fast.set_paused(ours[2], 1111, event == "pause", now)
                slow.set_paused(theirs[2], 1111, event == "pause", now)
            elif event is not None:
                ours[2].protect = None if event == "unkey" else protects[0]
                theirs[2].protect = None if event == "unkey" else protects[1]
            seq, ts = (seq + dseq) & 0xFFFF, (ts + dts) & 0xFFFFFFFF
            packet = with_extensions(seq, ts, size)
            out: list[tuple[Any, bytes]] = []
            route_native(fast, fan, packet, now, out)
            by_python += fan.send(out)
            for key, copy in slow.route(packet, now):
                i = theirs.index(key)
                expected[i].append(key.protect(copy))
            assert fast.stats.as_dict() == slow.stats.as_dict(), step
        assert drain(receivers) == expected
        assert fast.stats.malformed == 0
        assert expected[1]
        assert fan.counters()["sent"] == sum(map(len, expected))
        subs = zip(fast.track(1111).subscriptions, slow.track(1111).subscriptions, strict=True)
        for mine, ref in subs:
            assert (mine.packets_sent, mine.octets_sent) == (ref.packets_sent, ref.octets_sent)
            assert mine.rewriter.highest == ref.rewriter.highest
            assert mine.transport.twcc_seq == ref.transport.twcc_seq
            assert mine.transport.sent_at == ref.transport.sent_at
            assert mine.transport.sizes == ref.transport.sizes


@needs_native
def test_copies_past_a_runs_first_packet_go_native(leaf: Leaf) -> None:
    """The first packet of each run goes round the Python loop, the rest do not."""
    fan, receivers = leaf
    records = [Record(twins()[0].outbound.protect, r.getsockname()) for r in receivers]
    f = forwarder_with_three(records, 100.0)
    for i in range(5):
        out: list[tuple[Any, bytes]] = []
        route_native(f, fan, with_extensions(100 + i, 3000 * i, 500), 100.0 + i / 100, out)
        assert len(out) == (3 if i == 0 else 0)
        fan.send(out)
    assert fan.counters()["sent"] == 15
    assert f.stats.forwarded == 15
    # A resumed subscription starts a new run: its next copy is Python's again.
    f.set_paused(records[2], 1111, True, 100.1)
    f.set_paused(records[2], 1111, False, 100.1)
    out = []
    route_native(f, fan, with_extensions(105, 15000, 500), 100.11, out)
    assert [key for key, _ in out] == [records[2]]


# -- the receive side's unprotect (sfu/forward/_unprotect.c) -------------------------------


def rtcp_rr(ssrc: int) -> bytes:
    """A receiver report with no blocks (RFC 3550 section 6.4.2)."""
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


@needs_native
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(min_value=12, max_value=1300), min_size=1, max_size=12))
def test_native_unprotect_gives_what_pylibsrtp_gives(sizes: list[int]) -> None:
    """Packets one sender protected come out of the native unprotect as they
    come out of pylibsrtp's, RTP and RTCP, each with a session of its own."""
    sender, python, leaf = (SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY) for _ in range(3))
    unprotect = native.unprotector(leaf.inbound)
    unprotect_rtcp = native.unprotector(leaf.inbound, rtcp=True)
    assert type(unprotect).__name__ == "Unprotect"
    for seq, size in enumerate(sizes, start=1):
        wire = sender.protect(rtp(seq, 0x1234, size))
        assert unprotect(wire) == python.inbound.unprotect(wire) == rtp(seq, 0x1234, size)
        report = sender.protect_rtcp(rtcp_rr(0x1234))
        assert unprotect_rtcp(report) == python.inbound.unprotect_rtcp(report) == rtcp_rr(0x1234)


@needs_native
def test_native_unprotect_refuses_as_pylibsrtp_does() -> None:
    """A replay, a forgery, a stranger's key: pylibsrtp.Error with pylibsrtp's
    message; a packet that is not bytes or too short: TypeError, ValueError.
    The packet handed in is never written."""
    sender, python, leaf = (SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY) for _ in range(3))
    unprotect = native.unprotector(leaf.inbound)
    wire = sender.protect(rtp(7, 0x1234))
    kept = bytes(wire)
    assert unprotect(wire) == python.inbound.unprotect(wire)
    assert wire == kept
    refusals = []
    for inbound in (python.inbound.unprotect, unprotect):
        with pytest.raises(pylibsrtp.Error) as replay:
            inbound(wire)
        refusals.append(str(replay.value))
    assert refusals == ["replay check failed (bad index)"] * 2
    forged = bytearray(sender.protect(rtp(8, 0x1234)))
    forged[-1] ^= 1
    with pytest.raises(pylibsrtp.Error, match="authentication failure"):
        unprotect(bytes(forged))
    stranger = SrtpSession("SRTP_AES128_CM_SHA1_80", bytes(30), bytes(30))
    with pytest.raises(pylibsrtp.Error, match="authentication failure"):
        unprotect(stranger.protect(rtp(9, 0x1234)))
    with pytest.raises(TypeError):
        unprotect(bytearray(sender.protect(rtp(10, 0x1234))))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size"):
        unprotect(wire[:11])
    # After every refusal the session still unprotects what follows.
    assert unprotect(sender.protect(rtp(11, 0x1234))) == rtp(11, 0x1234)


@needs_native
def test_the_native_unprotect_keeps_its_session_alive() -> None:
    """The unprotect holds the pylibsrtp session whose libsrtp state it uses,
    so dropping every other reference frees nothing under it."""
    import gc

    sender, leaf = (SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY) for _ in range(2))
    unprotect = native.unprotector(leaf.inbound)
    assert unprotect.session is leaf.inbound  # type: ignore[attr-defined]
    del leaf
    gc.collect()
    for seq in range(1, 50):
        assert unprotect(sender.protect(rtp(seq, 0x99))) == rtp(seq, 0x99)


@needs_native
def test_bound_srtp_unprotects_natively() -> None:
    """What the hot path calls per datagram (``Peer.unprotect``, bound by
    ``bind_srtp``) is the native unprotect; unbinding leaves None."""
    from sfu.rooms.records import Link, bind_srtp

    record = Link.__new__(Link)
    session = SrtpSession("SRTP_AES128_CM_SHA1_80", KEY, KEY)
    bind_srtp(record, session)
    assert type(record.unprotect).__name__ == type(record.unprotect_rtcp).__name__ == "Unprotect"
    assert record.protect == session.outbound.protect
    bind_srtp(record, None)
    assert record.unprotect is record.unprotect_rtcp is None


# -- the header parse ---------------------------------------------------------------


@needs_native
@settings(max_examples=300)
@given(st.one_of(packets().map(bytes), st.binary(max_size=80)))
def test_the_native_parse_fills_the_view_as_rtp_view_parse_does(data: bytes) -> None:
    # Whole packets of every extension form, and any bytes (refusals, with
    # their messages, and the fields read before them).
    assert view_fields(native.PARSE, data) == view_fields(RtpView.parse, data)


@needs_native
def test_the_native_parse_refuses_each_malformed_header_with_python_s_message() -> None:
    head = bytes([0x80, 96, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3])
    cases = [
        head[:11],
        bytes([0x40]) + head[1:],
        bytes([0x90]) + head[1:] + b"\xbe\xde",
        bytes([0x90]) + head[1:] + b"\xbe\xde\x00\x02" + b"\x00" * 4,
        bytes([0x90]) + head[1:] + b"\xbe\xde\x00\x01" + b"\x13\x00\x00\x00",
        bytes([0x90]) + head[1:] + b"\x10\x00\x00\x01" + b"\x00\x00\x01\x05",
        bytes([0x90]) + head[1:] + b"\x10\x00\x00\x01" + b"\x00\x00\x00\x01",
        bytes([0x82]) + head[1:],
        bytes([0xA0]) + head[1:] + b"\x00",
        bytes([0xA0]) + head[1:] + b"\x05",
    ]
    for data in cases:
        fields, refused = view_fields(native.PARSE, data)
        assert refused is not None, data
        assert (fields, refused) == view_fields(RtpView.parse, data), data
