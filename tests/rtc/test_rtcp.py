"""Compound RTCP codec: round trips, malformed input, aiortc and pion cross-checks."""

from __future__ import annotations

import contextlib
import random
import struct

import pytest
from aiortc import rtp as artp
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.errors import RtcError, RtcpParseError
from rtc.rtcp import compound, feedback, framing, reports, transport_cc

U8 = st.integers(0, 0xFF)
U16 = st.integers(0, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U64 = st.integers(0, 2**64 - 1)

blocks = st.builds(
    reports.ReportBlock,
    ssrc=U32,
    fraction_lost=U8,
    packets_lost=st.integers(-0x800000, 0x7FFFFF),
    highest_sequence=U32,
    jitter=U32,
    lsr=U32,
    dlsr=U32,
)
words = st.binary(max_size=12).map(lambda b: b + bytes(-len(b) % 4))
senders = st.builds(
    reports.SenderReport,
    ssrc=U32,
    ntp_timestamp=U64,
    rtp_timestamp=U32,
    packet_count=U32,
    octet_count=U32,
    reports=st.lists(blocks, max_size=4),
    extension=words,
)
receivers = st.builds(
    reports.ReceiverReport, ssrc=U32, reports=st.lists(blocks, max_size=4), extension=words
)
sdes_items = st.lists(st.tuples(st.integers(1, 255), st.binary(max_size=20)), max_size=4)
sdes = st.builds(
    reports.SourceDescription,
    chunks=st.lists(st.builds(reports.SdesChunk, ssrc=U32, items=sdes_items), max_size=4),
)
byes = st.builds(
    reports.Bye, sources=st.lists(U32, max_size=5), reason=st.none() | st.binary(max_size=30)
)
nacks = st.builds(
    feedback.Nack, sender_ssrc=U32, media_ssrc=U32, pairs=st.lists(st.tuples(U16, U16))
)
plis = st.builds(feedback.Pli, sender_ssrc=U32, media_ssrc=U32)
firs = st.builds(
    feedback.Fir, sender_ssrc=U32, entries=st.lists(st.tuples(U32, U8), max_size=4), media_ssrc=U32
)
# Only bitrates the 18-bit mantissa holds exactly round-trip as values.
rembs = st.builds(
    feedback.Remb,
    sender_ssrc=U32,
    bitrate=st.builds(lambda m, e: m << e, st.integers(0, 0x3FFFF), st.integers(0, 63)),
    ssrcs=st.lists(U32, max_size=5),
    media_ssrc=U32,
)
tccs = st.builds(
    transport_cc.TransportCc,
    sender_ssrc=U32,
    media_ssrc=U32,
    base_sequence=U16,
    reference_time=st.integers(0, 0xFFFFFF),
    fb_count=U8,
    deltas=st.lists(
        st.none() | st.integers(0, 255) | st.integers(-0x8000, 0x7FFF), min_size=0, max_size=60
    ),
)
unknowns = st.builds(
    compound.UnknownRtcp,
    packet_type=st.sampled_from([framing.APP, framing.XR, 195, 210]),
    count=st.integers(0, 31),
    payload=words,
)
any_packet = st.one_of(senders, receivers, sdes, byes, nacks, plis, firs, rembs, tccs, unknowns)


@given(any_packet)
def test_every_packet_round_trips(packet: compound.RtcpPacket) -> None:
    data = bytes(packet)
    parsed = type(packet).parse(data)
    assert parsed == packet
    assert bytes(parsed) == data
    assert compound.parse_compound(memoryview(data)) == [packet]


@given(st.lists(any_packet, min_size=1, max_size=6))
def test_compound_round_trips(packets: list[compound.RtcpPacket]) -> None:
    data = compound.build_compound(packets)
    assert compound.parse_compound(data) == packets
    assert compound.build_compound(compound.parse_compound(data)) == data


@settings(max_examples=400)
@given(st.binary(max_size=120))
def test_random_bytes_raise_only_our_parse_error(data: bytes) -> None:
    with contextlib.suppress(RtcpParseError):
        compound.parse_compound(data)


def test_parse_error_is_a_value_error_under_the_root() -> None:
    assert issubclass(RtcpParseError, RtcError)
    assert issubclass(RtcpParseError, ValueError)


@given(st.lists(any_packet, min_size=1, max_size=3), st.data())
def test_mangled_compounds_raise_only_our_parse_error(
    packets: list[compound.RtcpPacket], data: st.DataObject
) -> None:
    buf = bytearray(compound.build_compound(packets))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(U8)
    cut = data.draw(st.integers(0, len(buf)))
    for candidate in (bytes(buf), bytes(buf[:cut])):
        with contextlib.suppress(RtcpParseError):
            compound.parse_compound(candidate)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "empty"),
        (b"\x80\xc9\x00", "truncated"),
        (b"\x40\xc9\x00\x01" + bytes(4), "version"),
        (b"\x80\xc9\x00\x02" + bytes(4), "longer"),
        (b"\xa0\xc9\x00\x01" + bytes(4), "padding"),
        (b"\xa0\xc9\x00\x01\x00\x00\x00\x05", "padding"),
        (b"\x81\xc9\x00\x01" + bytes(4), "report count"),
        (b"\x80\xc8\x00\x01" + bytes(4), "report count"),
        (b"\x81\xca\x00\x02" + bytes(4) + b"\x01\x05ab", "truncated"),
        (b"\x81\xca\x00\x02" + bytes(4) + b"\x01\x02ab", "null"),
        (b"\x81\xcb\x00\x00", "source count"),
        (b"\x81\xcd\x00\x01" + bytes(4), "NACK"),
        (b"\x81\xce\x00\x03" + bytes(12), "PLI"),
        (b"\x84\xce\x00\x03" + bytes(12), "FIR"),
        (b"\x8f\xce\x00\x04" + bytes(8) + b"REMB\x02\x00\x00\x00", "REMB"),
        (b"\x8f\xcd\x00\x03" + bytes(12), "transport-cc"),
        (b"\x8f\xcd\x00\x04" + bytes(10) + b"\x00\x01" + bytes(4), "chunks"),
        (
            b"\x8f\xcd\x00\x05" + bytes(10) + b"\x00\x01" + bytes(4) + b"\x60\x01\x00\x00",
            "reserved",
        ),
    ],
)
def test_malformed_packets(data: bytes, why: str) -> None:
    with pytest.raises(RtcpParseError, match=why):
        compound.parse_compound(data)


def test_parse_wants_exactly_one_packet_of_its_class() -> None:
    rr = bytes(reports.ReceiverReport(1))
    with pytest.raises(RtcpParseError, match="expected one"):
        reports.ReceiverReport.parse(rr + rr)
    with pytest.raises(RtcpParseError, match="expected SenderReport"):
        reports.SenderReport.parse(rr)


def test_padding_on_the_last_packet_is_accepted() -> None:
    rr = reports.ReceiverReport(7)
    padded = b"\xa0\xc9\x00\x02" + struct.pack("!I", 7) + b"\x00\x00\x00\x04"
    assert compound.parse_compound(bytes(feedback.Pli(1, 2)) + padded) == [feedback.Pli(1, 2), rr]
    app = b"\xa3\xcc\x00\x03nameabcdef\x00\x02"
    (unknown,) = compound.parse_compound(app)
    assert unknown == compound.UnknownRtcp(framing.APP, 3, app[4:], padded=True)
    assert bytes(unknown) == app


def test_report_block_signed_loss() -> None:
    block = reports.ReportBlock(1, packets_lost=-5)
    assert bytes(block)[5:8] == b"\xff\xff\xfb"
    assert reports.ReportBlock.parse(bytes(block)) == block
    with pytest.raises(ValueError, match="clamp"):
        bytes(reports.ReportBlock(1, packets_lost=1 << 23))


def test_sdes_cname_and_canonical_nulls() -> None:
    for n in range(0, 8):
        packet = reports.SourceDescription.for_cname(0x1234, "x" * n)
        data = bytes(packet)
        assert len(data) % 4 == 0
        assert reports.SourceDescription.parse(data).chunks[0].cname == "x" * n


def test_bye_reason_padding() -> None:
    data = bytes(reports.Bye([1, 2], b"bye"))
    assert data == b"\x82\xcb\x00\x03" + b"\x00\x00\x00\x01\x00\x00\x00\x02\x03bye"


# -- NACK -----------------------------------------------------------------------------


@given(st.sets(U16, max_size=80), st.randoms(use_true_random=False))
def test_nack_pairs_expand_back_to_the_lost_set(lost: set[int], rnd: random.Random) -> None:
    order = sorted(lost)
    assert set(feedback.expand_nack(feedback.nack_pairs(order))) == lost
    shuffled = list(lost) * 2
    rnd.shuffle(shuffled)
    assert set(feedback.expand_nack(feedback.nack_pairs(shuffled))) == lost


@given(U16, st.lists(st.integers(1, 40), max_size=40))
def test_nack_across_the_wrap_is_compact(start: int, gaps: list[int]) -> None:
    lost, seq = [start], start
    for g in gaps:
        seq = (seq + g) & 0xFFFF
        lost.append(seq)
    nack = feedback.Nack.from_lost(1, 2, lost)
    assert nack.lost() == list(dict.fromkeys(lost))
    span = sum(gaps)
    assert len(nack.pairs) <= span // 17 + 1 + sum(1 for g in gaps if g > 16)


def test_nack_pair_layout_rfc4585() -> None:
    # PID, then BLP bit i for PID + i + 1, across the wrap.
    nack = feedback.Nack.from_lost(1, 2, [65535, 0, 15, 16])
    assert nack.pairs == [(65535, 0b1 | (1 << 15)), (16, 0)]
    assert nack.lost() == [65535, 0, 15, 16]


# -- cross-checks against aiortc's codec ---------------------------------------------


def to_aiortc_block(b: reports.ReportBlock) -> artp.RtcpReceiverInfo:
    return artp.RtcpReceiverInfo(
        ssrc=b.ssrc,
        fraction_lost=b.fraction_lost,
        packets_lost=b.packets_lost,
        highest_sequence=b.highest_sequence,
        jitter=b.jitter,
        lsr=b.lsr,
        dlsr=b.dlsr,
    )


@given(senders.filter(lambda p: not p.extension), receivers.filter(lambda p: not p.extension))
def test_reports_match_aiortc_both_ways(
    sr: reports.SenderReport, rr: reports.ReceiverReport
) -> None:
    theirs_sr = artp.RtcpSrPacket(
        ssrc=sr.ssrc,
        sender_info=artp.RtcpSenderInfo(
            sr.ntp_timestamp, sr.rtp_timestamp, sr.packet_count, sr.octet_count
        ),
        reports=[to_aiortc_block(b) for b in sr.reports],
    )
    theirs_rr = artp.RtcpRrPacket(ssrc=rr.ssrc, reports=[to_aiortc_block(b) for b in rr.reports])
    assert bytes(theirs_sr) == bytes(sr)
    assert bytes(theirs_rr) == bytes(rr)
    assert compound.parse_compound(bytes(theirs_sr) + bytes(theirs_rr)) == [sr, rr]
    assert artp.RtcpPacket.parse(bytes(sr) + bytes(rr)) == [theirs_sr, theirs_rr]


@given(U32, sdes_items, st.lists(U32, max_size=5), st.none() | st.binary(min_size=1, max_size=20))
def test_sdes_and_bye_match_aiortc(
    ssrc: int, items: list[tuple[int, bytes]], sources: list[int], reason: bytes | None
) -> None:
    # aiortc writes two nulls per chunk and aligns only the whole packet, which
    # misplaces a second chunk; one chunk is the case both agree on.
    ours = reports.SourceDescription([reports.SdesChunk(ssrc, items)])
    theirs = artp.RtcpSdesPacket(chunks=[artp.RtcpSourceInfo(ssrc=ssrc, items=items)])
    assert reports.SourceDescription.parse(bytes(theirs)) == ours
    (back,) = artp.RtcpPacket.parse(bytes(ours))
    assert isinstance(back, artp.RtcpSdesPacket)
    assert back.chunks[0].ssrc == ssrc and back.chunks[0].items == items
    bye = reports.Bye(sources)
    assert bytes(bye) == bytes(artp.RtcpByePacket(sources=sources))
    assert artp.RtcpPacket.parse(bytes(reports.Bye(sources, reason))) == [
        artp.RtcpByePacket(sources=sources)
    ]


@given(U32, U32, st.sets(st.integers(0, 2000), min_size=1, max_size=60))
def test_nack_matches_aiortc(sender: int, media: int, lost: set[int]) -> None:
    ordered = sorted(lost)
    theirs = artp.RtcpRtpfbPacket(fmt=1, ssrc=sender, media_ssrc=media, lost=ordered)
    ours = feedback.Nack.from_lost(sender, media, ordered)
    assert bytes(ours) == bytes(theirs)
    assert feedback.Nack.parse(bytes(theirs)).lost() == ordered
    (back,) = artp.RtcpPacket.parse(bytes(ours))
    assert isinstance(back, artp.RtcpRtpfbPacket)
    assert back.lost == ordered


@given(U32, U32, st.lists(st.tuples(U32, U8), max_size=4))
def test_pli_and_fir_match_aiortc(sender: int, media: int, entries: list[tuple[int, int]]) -> None:
    theirs = artp.RtcpPsfbPacket(fmt=1, ssrc=sender, media_ssrc=media)
    assert bytes(feedback.Pli(sender, media)) == bytes(theirs)
    assert artp.RtcpPacket.parse(bytes(feedback.Pli(sender, media))) == [theirs]
    fci = b"".join(struct.pack("!IB3x", s, n) for s, n in entries)
    fir = artp.RtcpPsfbPacket(fmt=4, ssrc=sender, media_ssrc=0, fci=fci)
    assert feedback.Fir.parse(bytes(fir)) == feedback.Fir(sender, entries)
    assert artp.RtcpPacket.parse(bytes(feedback.Fir(sender, entries))) == [fir]


@given(U32, st.integers(0, 2**40), st.lists(U32, max_size=6))
def test_remb_matches_aiortc(sender: int, bitrate: int, ssrcs: list[int]) -> None:
    theirs = artp.RtcpPsfbPacket(
        fmt=15, ssrc=sender, media_ssrc=0, fci=artp.pack_remb_fci(bitrate, ssrcs)
    )
    ours = feedback.Remb.parse(bytes(theirs))
    # Both round down to an 18-bit mantissa.
    assert (ours.bitrate, ours.ssrcs) == artp.unpack_remb_fci(theirs.fci)
    assert ours.bitrate <= bitrate < ours.bitrate * 2 + 2
    assert bytes(feedback.Remb(sender, bitrate, ssrcs)) == bytes(theirs)
    (back,) = artp.RtcpPacket.parse(bytes(feedback.Remb(sender, bitrate, ssrcs)))
    assert isinstance(back, artp.RtcpPsfbPacket)
    assert artp.unpack_remb_fci(back.fci) == (ours.bitrate, ssrcs)


def test_psfb_application_feedback_other_than_remb_stays_opaque() -> None:
    data = bytes(artp.RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=2, fci=b"ABCD\x00\x00\x00\x00"))
    (packet,) = compound.parse_compound(data)
    assert isinstance(packet, compound.UnknownRtcp)
    assert bytes(packet) == data


# -- transport-wide congestion control --------------------------------------------------

# Feedback packets as pion/rtcp's tests record them (Chrome's layout: the P bit
# with a padding count), with the values they decode to.
PION_VECTORS = [
    (
        "afcd0005fa17fa1743032fa0009900013de8021720019401",
        (4195875351, 1124282272, 153, 4057090, 23, [37000 // 250]),
    ),
    (
        "afcd0007fa17fa17193dd8bb0004000710636e0120074c2424100c0c10000003",
        (4195875351, 423483579, 4, 1074030, 1, [76, 36, 36, 16, 12, 12, 16]),
    ),
    (
        "afcd0006fa17fa17193dd8bb0001000e10636d00ba00100c0c100002",
        (4195875351, 423483579, 1, 1074029, 0, [16, 12, 12, None, 16] + [None] * 9),
    ),
    (
        "afcd0007fa17fa1743032fa09c14000c75842000bec0c13f3b3f53903b000003",
        (
            4195875351,
            1124282272,
            39956,
            7701536,
            0,
            [193, 63, 59, 63, 83, None, 144, 59, None, None, None, None],
        ),
    ),
]


@pytest.mark.parametrize(("hex_data", "values"), PION_VECTORS)
def test_transport_cc_known_answers(hex_data: str, values: tuple[object, ...]) -> None:
    data = bytes.fromhex(hex_data)
    packet = transport_cc.TransportCc.parse(data)
    assert packet == transport_cc.TransportCc(*values)  # type: ignore[arg-type]
    assert bytes(packet) == data


def test_transport_cc_accepts_zero_padding_without_p_bit() -> None:
    data = bytes.fromhex("8fcd0005fa17fa1743032fa0009900013de8021720019400")
    assert transport_cc.TransportCc.parse(data).deltas == [148]


def test_transport_cc_chunk_kinds() -> None:
    # Draft section 3.1.3/3.1.4 examples: a run of 221 lost, a 1-bit and a 2-bit vector.
    lost_run = transport_cc.TransportCc(1, 2, 0, 0, 0, [None] * 221)
    assert bytes(lost_run)[20:22] == b"\x00\xdd"
    one_bit = [None, 1, 1, 1, 1, 1, None, None, None, 1, 1, 1, None, None]
    assert bytes(transport_cc.TransportCc(1, 2, 0, 0, 0, one_bit))[20:22] == b"\x9f\x1c"
    two_bit = [1, 300, None, None, None, None, None]  # small, large, then lost
    assert bytes(transport_cc.TransportCc(1, 2, 0, 0, 0, two_bit))[20:22] == b"\xd8\x00"
    long_run = transport_cc.TransportCc(1, 2, 0, 0, 0, [5] * 10000)
    assert transport_cc.TransportCc.parse(bytes(long_run)) == long_run


@st.composite
def arrival_sets(draw: st.DrawFn) -> list[tuple[int, float]]:
    base = draw(U16)
    start = draw(st.floats(1.0, 100_000.0))
    seqs = draw(st.sets(st.integers(0, 400), min_size=1, max_size=120))
    times = {}
    t = start
    for s in sorted(seqs):
        t += draw(st.floats(0.0, 0.2))
        times[s] = t
    if draw(st.booleans()):
        # Reordering in the network: some packets arrive before earlier ones.
        for s in list(times)[::7]:
            times[s] -= draw(st.floats(0.0, 0.05))
    return [((base + s) & 0xFFFF, t) for s, t in times.items()]


@given(arrival_sets(), st.randoms(use_true_random=False))
def test_transport_cc_from_arrivals_and_back(
    arrivals: list[tuple[int, float]], rnd: random.Random
) -> None:
    shuffled = list(arrivals)
    rnd.shuffle(shuffled)
    packet = transport_cc.TransportCc.from_arrivals(1, 2, shuffled, fb_count=300)
    assert packet.fb_count == 300 & 0xFF
    data = bytes(packet)
    back = transport_cc.TransportCc.parse(data)
    assert back == packet
    assert bytes(back) == data
    got = dict(back.arrivals())
    want = dict(arrivals)
    assert got.keys() == want.keys()
    for seq, t in want.items():
        assert abs(got[seq] - t) <= 0.000125 + 1e-9
    # Everything between the lowest and highest not in the set is reported lost.
    assert len(back.lost()) + len(want) == len(back.deltas)
    assert not set(back.lost()) & want.keys()


def test_transport_cc_from_arrivals_edge_cases() -> None:
    one = transport_cc.TransportCc.from_arrivals(
        9, 8, [(65535, 1.0), (1, 1.001), (65535, 0.9995)], 1
    )
    assert one.base_sequence == 65535
    assert one.lost() == [0]
    assert [s for s, _ in one.arrivals()] == [65535, 1]
    assert one.arrivals()[0][1] == pytest.approx(0.9995, abs=0.000125)
    with pytest.raises(ValueError, match="at least one"):
        transport_cc.TransportCc.from_arrivals(1, 2, [], 0)
    with pytest.raises(ValueError, match="split"):
        transport_cc.TransportCc.from_arrivals(1, 2, [(1, 0.0), (2, 9.0)], 0)
