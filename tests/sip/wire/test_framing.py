"""SIP over a stream (sip/wire/framing.py, RFC 3261 section 18.3) and the
CRLF keepalives of RFC 5626 section 4.4.1: the same messages and pongs
wherever the stream is cut, and a connection that cannot be framed stays
refused."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipParseError
from sip.wire.framing import PONG, StreamFramer, is_keepalive
from sip.wire.message import MAX_MESSAGE, Request, Response, parse
from tests.sip.wire import samples

PING = b"\r\n\r\n"
STREAM = samples.INVITE + PING + samples.ACK + b"\r\n" + samples.INFO + PING + PING + samples.BYE
EXPECTED = [parse(m) for m in (samples.INVITE, samples.ACK, samples.INFO, samples.BYE)]


def _feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[Request | Response]:
    return [message for chunk in chunks for message in framer.feed(chunk)]


def test_a_stream_in_one_piece() -> None:
    framer = StreamFramer()
    assert framer.feed(STREAM) == EXPECTED
    assert framer.data_to_send() == PONG * 3
    assert framer.data_to_send() == b""


def test_a_stream_cut_at_every_byte_boundary_gives_the_same_messages() -> None:
    for cut in range(len(STREAM) + 1):
        framer = StreamFramer()
        assert _feed_all(framer, [STREAM[:cut], STREAM[cut:]]) == EXPECTED, cut
        assert framer.data_to_send() == PONG * 3, cut


def test_a_stream_a_byte_at_a_time() -> None:
    framer = StreamFramer()
    out = _feed_all(framer, [STREAM[i : i + 1] for i in range(len(STREAM))])
    assert out == EXPECTED and framer.data_to_send() == PONG * 3


def test_keepalives_alone_and_slack_before_a_start_line() -> None:
    framer = StreamFramer()
    assert framer.feed(PING) == [] and framer.data_to_send() == PONG
    # A lone CRLF is a pong (or slack, RFC 3261 section 7.5): no answer.
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"OPTIONS") == [] and framer.data_to_send() == b""
    assert framer.feed(samples.OPTIONS[len(b"OPTIONS") :]) == [parse(samples.OPTIONS)]


def test_a_message_without_content_length_breaks_the_stream() -> None:
    framer = StreamFramer()
    bare = samples.ACK.replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(SipParseError, match="Content-Length"):
        framer.feed(bare)
    # Whatever follows has no known start: the adapter closes the connection.
    with pytest.raises(SipParseError, match="Content-Length"):
        framer.feed(samples.ACK)


def test_a_malformed_head_breaks_the_stream() -> None:
    framer = StreamFramer()
    assert framer.feed(samples.OPTIONS) == [parse(samples.OPTIONS)]
    with pytest.raises(SipParseError) as caught:
        framer.feed(samples.OPTIONS.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
    assert caught.value.status == 505
    with pytest.raises(SipParseError):
        framer.feed(b"")


def test_a_head_that_never_ends_is_refused_once_past_max_message() -> None:
    framer = StreamFramer()
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    framer.feed(b"OPTIONS sip:a SIP/2.0\r\n")
    for _ in range(MAX_MESSAGE // len(line)):
        assert framer.feed(line) == []
    with pytest.raises(SipParseError) as caught:
        framer.feed(line)
    assert caught.value.status == 413


def test_a_body_past_max_message_is_refused_before_it_arrives() -> None:
    framer = StreamFramer()
    with pytest.raises(SipParseError) as caught:
        framer.feed(samples.INFO.replace(b"Content-Length: 24", b"Content-Length: 65535"))
    assert caught.value.status == 413
    with pytest.raises(SipParseError):
        framer.feed(b"anything")


def test_a_body_that_has_not_all_arrived_waits() -> None:
    framer = StreamFramer()
    assert framer.feed(samples.INFO[:-5]) == []
    assert framer.feed(samples.INFO[-5:]) == [parse(samples.INFO)]


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [(b"\r\n\r\n", True), (b"\r\n", True), (b"\n", True), (b"", False), (b"\r\nX", False),
     (b" \r\n", False), (samples.OPTIONS, False)],
)  # fmt: skip
def test_is_keepalive(datagram: bytes, expected: bool) -> None:
    assert is_keepalive(datagram) is expected


_PIECES = st.sampled_from([*samples.ALL.values(), PING, b"\r\n"])


@given(st.lists(_PIECES, max_size=6), st.lists(st.integers(0, 6000), max_size=6))
def test_any_sequence_cut_anywhere_frames_the_same(pieces: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(pieces)
    whole = StreamFramer()
    expected = whole.feed(stream)
    assert expected == [parse(p) for p in pieces if p not in (PING, b"\r\n")]
    points = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    framer = StreamFramer()
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    assert _feed_all(framer, chunks) == expected
    assert framer.data_to_send() == whole.data_to_send()


@given(st.binary(max_size=400), st.integers(0, 400))
def test_arbitrary_bytes_raise_only_sip_parse_error(data: bytes, cut: int) -> None:
    framer = StreamFramer()
    try:
        framer.feed(data[:cut])
        framer.feed(data[cut:])
    except SipParseError:
        pass
