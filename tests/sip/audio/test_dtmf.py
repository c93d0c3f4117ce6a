"""Digits as events (sip/audio/dtmf.py): a PIN keyed through RFC 4733
telephone-event, as providers really send it (with and without marker bits,
with packets lost, repeated and reordered), and through SIP INFO bodies;
each digit counted exactly once."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.audio.dtmf import DIGITS, EventReceiver, digit_event, event_packets, parse_info
from sip.errors import DtmfParseError

PIN = "4821#"
FRAME = 0.02


@dataclass(frozen=True)
class Packet:
    payload: bytes
    timestamp: int
    marker: bool


def provider(
    pin: str,
    *,
    base: int = 48_000,
    marked: bool = True,
    press: int = 800,
    pause: int = 640,
    interval: int = 160,
) -> list[list[Packet]]:
    """A provider keying ``pin``: per event, its packets as sent (RFC 4733
    section 2.5.1), each event's timestamp ``press + pause`` after the last."""
    events = []
    for i, digit in enumerate(pin):
        timestamp = (base + i * (press + pause)) % 2**32
        events.append(
            [
                Packet(payload, timestamp, marker and marked)
                for payload, marker in event_packets(digit, press, packet_samples=interval)
            ]
        )
    return events


def flat(events: list[list[Packet]]) -> list[Packet]:
    return [packet for event in events for packet in event]


def hear(packets: list[Packet], receiver: EventReceiver | None = None, start: float = 0.0) -> str:
    """What a receiver reports from ``packets`` arriving one per 20 ms."""
    receiver = receiver or EventReceiver()
    digits = ""
    for i, packet in enumerate(packets):
        now = start + i * FRAME
        digits += receiver.handle_timer(now)
        digits += receiver.receive(packet.payload, packet.timestamp, packet.marker, now)
    return digits


def test_a_provider_with_marker_bits_keys_the_pin() -> None:
    packets = flat(provider(PIN))
    # Five updates then three copies of the final packet per digit.
    assert len(packets) == 5 * (4 + 3)
    assert hear(packets) == PIN


def test_a_provider_without_marker_bits_keys_the_pin() -> None:
    receiver = EventReceiver()
    assert hear(flat(provider(PIN, marked=False)), receiver) == PIN
    assert receiver.unmarked_starts == len(PIN)


def test_a_lost_first_packet_loses_no_digit() -> None:
    receiver = EventReceiver()
    assert hear(flat([event[1:] for event in provider(PIN)]), receiver) == PIN
    # The marker bit went with the first packets.
    assert receiver.unmarked_starts == len(PIN)


def test_an_event_whose_final_packets_were_all_lost_ends_with_the_next_one() -> None:
    receiver = EventReceiver()
    events = [event[:-3] for event in provider(PIN)]
    reported = [hear(event, receiver, start=i) for i, event in enumerate(events)]
    # Each digit comes out when the next event's first packet arrives.
    assert reported == ["", "4", "8", "2", "1"]
    # The last one when its duration has not grown for `hold` seconds.
    last = len(events) - 1 + 3 * FRAME
    assert receiver.get_timer() == pytest.approx(last + receiver.hold)
    assert receiver.handle_timer(last + receiver.hold - 0.01) == ""
    assert receiver.handle_timer(last + receiver.hold) == "#"
    assert receiver.get_timer() is None
    assert receiver.handle_timer(last + 10) == ""


def test_two_digits_come_out_of_one_packet_when_it_must_be_so() -> None:
    # "4" lost its final packets, "8" all but one final packet.
    events = provider("48")
    assert hear([*events[0][:2], events[1][-1]]) == "48"


def test_repeated_final_and_duplicated_packets_count_once() -> None:
    packets = [copy for packet in flat(provider(PIN)) for copy in (packet, packet)]
    assert hear(packets) == PIN


def test_reordered_packets_count_once() -> None:
    packets = flat(provider(PIN))
    # Every pair swapped: finals before updates, the next digit's first
    # packet before the last final copy of the one before it.
    swapped = [packets[i ^ 1] for i in range(len(packets) - 1)] + packets[-1:]
    assert hear(swapped) == PIN
    # The next event's first packet before any final packet of the last.
    events = provider("48")
    assert hear([*events[0][:3], events[1][0], *events[0][3:], *events[1][1:]]) == "48"


def test_a_late_retransmission_of_an_old_event_is_not_heard_again() -> None:
    events = provider(PIN)
    receiver = EventReceiver()
    assert hear(flat(events), receiver) == PIN
    assert hear([*events[0], *events[3]], receiver, start=10.0) == ""


def test_timestamps_wrap_around() -> None:
    events = provider(PIN, base=2**32 - 1_000)
    timestamps = [event[0].timestamp for event in events]
    assert timestamps[1] < timestamps[0]
    receiver = EventReceiver()
    assert hear(flat(events), receiver) == PIN
    # An event from before the wrap, retransmitted after it, stays old.
    assert hear(events[0], receiver, start=10.0) == ""


def test_a_timestamp_base_that_jumps_back_loses_no_digit() -> None:
    receiver = EventReceiver()
    assert hear(flat(provider("48", base=3_000_000)), receiver) == "48"
    assert hear(flat(provider("21#", base=1_000)), receiver, start=5.0) == "21#"


def test_a_long_press_in_segments_is_one_digit() -> None:
    # RFC 4733 section 2.5.1.3: a new timestamp every 0xFFFF samples, the
    # same event, the E bit only on the last segment.
    segment = [
        Packet(struct.pack("!BBH", 5, 10, duration), 1_000, duration == 160)
        for duration in range(160, 0xFFFF, 160)
    ]
    last = [Packet(payload, 1_000 + 0xFFFF, False) for payload, _ in event_packets("5", 1_600)]
    assert hear([*segment, *last]) == "5"


def test_events_that_are_no_digits_are_counted_and_end_a_pending_digit() -> None:
    receiver = EventReceiver()
    # A hook flash (event 16) keyed after the 7, whose final packets were lost.
    later = 48_000 + 1_440
    flash = [Packet(struct.pack("!BBH", 16, 10, d), later, d == 160) for d in (160, 320)]
    flash.append(Packet(struct.pack("!BBH", 16, 0x8A, 480), later, False))
    assert hear([*provider("7")[0][:2], *flash], receiver) == "7"
    assert receiver.non_digit_packets == 3
    assert receiver.get_timer() is None


def test_a_payload_too_short_raises_the_parse_error() -> None:
    with pytest.raises(DtmfParseError):
        EventReceiver().receive(b"\x05\x8a\x03", 1_000, True, 0.0)


def test_event_packets_are_the_rfc_4733_sequence() -> None:
    packets = event_packets("#", 800, volume=7)
    assert [marker for _, marker in packets] == [True, False, False, False, False, False, False]
    fields = [struct.unpack("!BBH", payload) for payload, _ in packets]
    assert [event for event, _, _ in fields] == [11] * 7
    assert [flags for _, flags, _ in fields] == [7] * 4 + [0x87] * 3
    assert [duration for _, _, duration in fields] == [160, 320, 480, 640, 800, 800, 800]
    # A press shorter than one interval: the first packet is final.
    assert event_packets("a", 100, end_copies=2) == [
        (bytes([12, 0x8A, 0, 100]), True),
        (bytes([12, 0x8A, 0, 100]), False),
    ]


@pytest.mark.parametrize(
    ("digit", "duration", "volume"),
    [("E", 800, 10), ("", 800, 10), ("1", 0, 10), ("1", 70_000, 10), ("1", 800, 64)],
)
def test_event_packets_refuse_what_cannot_be_sent(digit: str, duration: int, volume: int) -> None:
    with pytest.raises(ValueError, match=r".") as raised:
        event_packets(digit, duration, volume=volume)
    assert not isinstance(raised.value, DtmfParseError)


def test_digit_events_are_rfc_4733_codes() -> None:
    assert [digit_event(d) for d in "0123456789*#ABCDabcd"] == [*range(16), 12, 13, 14, 15]
    assert DIGITS[10:12] == "*#"


@given(
    st.lists(
        st.tuples(
            st.binary(max_size=12),
            st.integers(min_value=0, max_value=2**32 - 1),
            st.booleans(),
        ),
        max_size=60,
    )
)
def test_arbitrary_packets_raise_nothing_but_the_parse_error(
    packets: list[tuple[bytes, int, bool]],
) -> None:
    receiver = EventReceiver()
    for i, (payload, timestamp, marker) in enumerate(packets):
        try:
            digits = receiver.receive(payload, timestamp, marker, i * FRAME)
        except DtmfParseError:
            assert len(payload) < 4
            continue
        assert len(digits) <= 2 and set(digits) <= set(DIGITS)
        assert set(receiver.handle_timer(i * FRAME + 0.01)) <= set(DIGITS)


@given(
    pin=st.text(alphabet=DIGITS, min_size=1, max_size=8),
    base=st.integers(min_value=0, max_value=2**32 - 1),
    marked=st.booleans(),
    losses=st.lists(st.integers(min_value=0, max_value=2**7 - 2), min_size=8, max_size=8),
    copies=st.lists(st.integers(min_value=1, max_value=3), min_size=56, max_size=56),
)
def test_any_losses_and_duplicates_count_each_digit_once(
    pin: str, base: int, marked: bool, losses: list[int], copies: list[int]
) -> None:
    """Whatever is lost of an event (but all of it) and however often the
    rest arrives, the PIN comes out once, digit by digit, in order."""
    events = provider(pin, base=base, marked=marked)
    packets = []
    for event, lost in zip(events, losses, strict=False):
        # `lost` is a bit mask over the event's seven packets, never all of them.
        packets += [p for bit, p in enumerate(event) if not lost >> bit & 1]
    packets = [copy for packet, n in zip(packets, copies, strict=False) for copy in [packet] * n]
    receiver = EventReceiver()
    digits = hear(packets, receiver)
    digits += receiver.handle_timer(len(packets) * FRAME + receiver.hold)
    assert digits == pin


# --- SIP INFO ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "digit"),
    [
        (b"Signal=5\r\nDuration=160\r\n", "5"),
        (b"signal=5\nduration=160\n", "5"),
        (b"SIGNAL = 9\r\nDuration= 250\r\n", "9"),
        (b"Signal= *\r\nDuration=160\r\n", "*"),
        (b"Signal=#\r\n", "#"),
        (b"Signal=10\r\nDuration=160\r\n", "*"),
        (b"Signal=11\r\nDuration=160\r\n", "#"),
        (b"Signal=12\r\n", "A"),
        (b"Signal=d\r\n", "D"),
        (b"Duration=160\r\n\r\nSignal=0", "0"),
    ],
)
def test_dtmf_relay_bodies_as_pbxs_send_them(body: bytes, digit: str) -> None:
    assert parse_info("application/dtmf-relay", body) == digit


@pytest.mark.parametrize(
    ("content_type", "body", "digit"),
    [
        ("application/dtmf", b"7", "7"),
        ("application/dtmf", b"#\r\n", "#"),
        ("application/dtmf", b"11", "#"),
        ("Application/DTMF; charset=us-ascii", b" 3 ", "3"),
        ("APPLICATION/DTMF-RELAY;x=y", b"Signal=1", "1"),
    ],
)
def test_dtmf_bodies_and_content_types_in_any_case(
    content_type: str, body: bytes, digit: str
) -> None:
    assert parse_info(content_type, body) == digit


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/dtmf-relay", b""),
        ("application/dtmf-relay", b"Duration=160\r\n"),
        ("application/dtmf-relay", b"Signal=\r\n"),
        ("application/dtmf-relay", b"Signal=16\r\n"),
        ("application/dtmf-relay", b"Signal=E\r\n"),
        ("application/dtmf-relay", b"Signal=12345\r\n"),
        ("application/dtmf-relay", b"Signal=1\r\nSignal=2\r\n"),
        ("application/dtmf-relay", b"Signal=\xd9\xa5\r\n"),
        ("application/dtmf-relay", b"Signal=1" + b" " * 600),
        ("application/dtmf", b""),
        ("application/dtmf", b"12 3"),
        ("application/dtmf", b"-1"),
        ("application/sdp", b"Signal=1"),
        ("text/plain", b"1"),
        ("", b"1"),
    ],
)
def test_bodies_that_name_no_one_key_are_refused(content_type: str, body: bytes) -> None:
    with pytest.raises(DtmfParseError):
        parse_info(content_type, body)


@given(
    st.sampled_from(["application/dtmf-relay", "application/dtmf", "application/x"]) | st.text(),
    st.binary() | st.text().map(str.encode),
)
def test_arbitrary_bodies_raise_nothing_but_the_parse_error(content_type: str, body: bytes) -> None:
    try:
        digit = parse_info(content_type, body)
    except DtmfParseError:
        return
    assert len(digit) == 1 and digit in DIGITS
