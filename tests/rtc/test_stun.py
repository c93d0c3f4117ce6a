"""STUN codec: RFC 5769 test vectors, round trips, and property-based abuse."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc import stun
from rtc.errors import StunParseError

# RFC 5769 section 2.1: sample request, short-term password below.
SAMPLE_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e20746573742063 6c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf".replace(" ", "")
)
SAMPLE_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 section 2.2: IPv4 response, mapped 192.0.2.1:32853.
SAMPLE_V4_RESPONSE = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)

# RFC 5769 section 2.3: IPv6 response, mapped [2001:db8:1234:5678:11:2233:4455:6677]:32853.
SAMPLE_V6_RESPONSE = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

# RFC 5769 section 2.4: long-term credentials, SASLprep'd password "TheMatrIX".
SAMPLE_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c39465354767936347341"
    "0014000b6578616d706c652e6f726700"
    "00080014f67024656dd64a3e02b8e0712e85c9a28ca89666"
)


def test_rfc5769_request_parses_checks_and_round_trips() -> None:
    msg = stun.StunMessage.parse(SAMPLE_REQUEST)
    assert (msg.method, msg.cls) == (stun.BINDING, stun.REQUEST)
    assert msg.decoded("SOFTWARE") == "STUN test client"
    assert msg.decoded("USERNAME") == "evtj:h6vY"
    assert msg.decoded("PRIORITY") == 0x6E0001FF
    assert stun.check_integrity(SAMPLE_REQUEST, SAMPLE_PASSWORD)
    assert not stun.check_integrity(SAMPLE_REQUEST, b"wrong")
    assert stun.check_fingerprint(SAMPLE_REQUEST) is True
    # The vector pads USERNAME with spaces; the round trip keeps them.
    assert bytes(msg) == SAMPLE_REQUEST


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (SAMPLE_V4_RESPONSE, ("192.0.2.1", 32853)),
        (SAMPLE_V6_RESPONSE, ("2001:db8:1234:5678:11:2233:4455:6677", 32853)),
    ],
)
def test_rfc5769_responses(data: bytes, expected: tuple[str, int]) -> None:
    msg = stun.StunMessage.parse(data)
    assert msg.cls == stun.SUCCESS
    assert msg.decoded("XOR-MAPPED-ADDRESS") == expected
    assert stun.check_integrity(data, SAMPLE_PASSWORD)
    assert stun.check_fingerprint(data) is True
    assert bytes(msg) == data


def test_rfc5769_rebuilt_response_is_byte_identical() -> None:
    """Building the IPv4 response ourselves gives the vector's exact bytes."""
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    msg = stun.StunMessage(stun.BINDING, stun.SUCCESS, txid)
    # The vector pads the 11-byte SOFTWARE with a space.
    msg.attributes.append(stun.StunAttribute(stun.SOFTWARE, b"test vector", b" "))
    msg.set("XOR-MAPPED-ADDRESS", ("192.0.2.1", 32853))
    msg.add_integrity(SAMPLE_PASSWORD).add_fingerprint()
    assert bytes(msg) == SAMPLE_V4_RESPONSE


def test_rfc5769_long_term_credentials() -> None:
    msg = stun.StunMessage.parse(SAMPLE_LONG_TERM)
    username = msg.decoded("USERNAME")
    assert username == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert msg.decoded("REALM") == "example.org"
    key = stun.long_term_key(username, "example.org", "TheMatrIX")
    assert stun.check_integrity(SAMPLE_LONG_TERM, key)
    assert bytes(msg) == SAMPLE_LONG_TERM


def test_message_integrity_sha256_matches_an_independent_hmac() -> None:
    msg = stun.StunMessage(stun.ALLOCATE, stun.REQUEST, bytes(range(12)))
    msg.add(stun.USERNAME, b"user")
    msg.add_integrity(b"key", sha256=True)
    data = bytes(msg)
    assert stun.check_integrity(data, b"key", sha256=True)
    assert not stun.check_integrity(data, b"key", sha256=False)
    # HMAC input: header with length ending after the attribute, then USERNAME.
    header = data[:2] + struct.pack("!H", len(data) - 20) + data[4:20]
    expected = hmac.new(b"key", header + data[20:28], hashlib.sha256).digest()
    assert data[-32:] == expected


def test_type_interleaving_is_the_rfc_figure() -> None:
    # RFC 8489 section 5: Binding request 0x0001, success 0x0101, error 0x0111,
    # indication 0x0011; Allocate error 0x0113; Data indication 0x0017.
    assert stun.message_type(stun.BINDING, stun.SUCCESS) == 0x0101
    assert stun.message_type(stun.BINDING, stun.ERROR) == 0x0111
    assert stun.message_type(stun.BINDING, stun.INDICATION) == 0x0011
    assert stun.message_type(stun.ALLOCATE, stun.ERROR) == 0x0113
    assert stun.message_type(stun.DATA, stun.INDICATION) == 0x0017


@given(st.integers(0, 0xFFF), st.sampled_from([0x000, 0x010, 0x100, 0x110]))
def test_type_split_inverts_join(method: int, cls: int) -> None:
    assert stun.split_type(stun.message_type(method, cls)) == (method, cls)


attributes = st.lists(
    st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=70)).map(
        lambda tv: stun.StunAttribute(tv[0], tv[1], bytes(-len(tv[1]) & 3))
    ),
    max_size=8,
)
messages = st.builds(
    stun.StunMessage,
    st.integers(0, 0xFFF),
    st.sampled_from([0x000, 0x010, 0x100, 0x110]),
    st.binary(min_size=12, max_size=12),
    attributes,
)


@given(messages)
def test_round_trip(msg: stun.StunMessage) -> None:
    data = bytes(msg)
    parsed = stun.StunMessage.parse(data)
    assert parsed == msg
    assert bytes(parsed) == data


@given(st.binary(max_size=200))
def test_random_bytes_parse_or_raise_parse_error(data: bytes) -> None:
    try:
        msg = stun.StunMessage.parse(data)
    except ValueError:  # StunParseError is a ValueError, as callers expect
        return
    assert bytes(msg) == data


@given(messages.filter(lambda m: len(m.attributes) > 0), st.data())
def test_truncation_and_bad_framing_are_rejected(
    msg: stun.StunMessage, data: st.DataObject
) -> None:
    wire = bytes(msg)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(StunParseError):
        stun.StunMessage.parse(wire[:cut])
    # Wrong length field: anything but the true one is refused.
    bad_len = data.draw(st.integers(0, 0xFFFF).filter(lambda n: n != len(wire) - 20))
    with pytest.raises(StunParseError):
        stun.StunMessage.parse(wire[:2] + struct.pack("!H", bad_len) + wire[4:])
    # Wrong magic cookie.
    cookie = data.draw(st.binary(min_size=4, max_size=4).filter(lambda c: c != stun.COOKIE_BYTES))
    with pytest.raises(StunParseError):
        stun.StunMessage.parse(wire[:4] + cookie + wire[8:])
    # Top bits set (RFC 7983: not STUN).
    with pytest.raises(StunParseError):
        stun.StunMessage.parse(bytes([wire[0] | 0x40]) + wire[1:])


@given(st.binary(min_size=1, max_size=40))
def test_attribute_overrunning_the_message_is_rejected(value: bytes) -> None:
    good = bytes(stun.StunMessage(stun.BINDING, stun.REQUEST, bytes(12)).add(stun.SOFTWARE, value))
    # Claim the attribute is longer than what follows.
    bad = good[:22] + struct.pack("!H", len(value) + 4) + good[24:]
    with pytest.raises(StunParseError):
        stun.StunMessage.parse(bad)


@given(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
    | st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
    st.binary(min_size=12, max_size=12),
)
def test_xor_address_round_trip(addr: tuple[str, int], txid: bytes) -> None:
    assert stun.unxor_address(stun.xor_address(addr, txid), txid) == addr
    assert stun.unpack_address(stun.pack_address(addr)) == addr


@given(st.binary(max_size=24), st.binary(min_size=12, max_size=12))
def test_xor_address_garbage_raises_parse_error(raw: bytes, txid: bytes) -> None:
    with contextlib.suppress(StunParseError):
        stun.unxor_address(raw, txid)


def test_fingerprint_detects_corruption() -> None:
    corrupt = bytearray(SAMPLE_REQUEST)
    corrupt[25] ^= 1
    assert stun.check_fingerprint(bytes(corrupt)) is False
    assert stun.check_fingerprint(bytes(stun.StunMessage(1, 0, bytes(12)))) is None
