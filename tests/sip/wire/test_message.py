"""SIP messages as bytes (sip/wire/message.py, RFC 3261 section 7): what a
trunk sends is read, what we build comes back unchanged from its bytes, a
response copies what section 8.2.6 says, and nothing but SipParseError
ever comes out of a datagram."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipBuildError, SipParseError
from sip.wire.fields import CSeq, NameAddr, parse_via
from sip.wire.message import (
    MAX_HEADERS,
    MAX_MESSAGE,
    REASONS,
    Headers,
    Request,
    Response,
    parse,
    parse_head,
    response_to,
)
from tests.sip.wire import samples
from tests.sip.wire.strategies import messages


def _request(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def test_a_trunks_invite_is_read() -> None:
    invite = _request(samples.INVITE)
    assert (invite.method, invite.uri, invite.body) == (
        "INVITE", "sip:4242@bridge.example.org", samples.OFFER,
    )  # fmt: skip
    assert invite.headers.get("Content-Type") == "application/sdp"
    # Content-Length is the framing's: dropped here, written from the body.
    assert "Content-Length" not in invite.headers
    (via,) = parse_via(invite.headers.get("Via") or "")
    assert (via.host, via.port, via.branch, via.asks_rport) == (
        "192.0.2.7",
        5060,
        "z9hG4bK2d4790.1",
        True,
    )
    caller = NameAddr.parse(invite.headers.get("From") or "")
    assert (caller.display, caller.uri.user, caller.tag) == (
        "+1 555 0100",
        "+15550100",
        "as58f4201b",
    )
    assert caller.uri.params == {"user": "phone"}
    assert CSeq.parse(invite.headers.get("CSeq") or "") == CSeq(102, "INVITE")
    assert invite.headers.get_all("Allow")[-1] == "INFO"


def test_a_response_and_its_reason_phrase() -> None:
    challenge = parse(samples.CHALLENGE)
    assert isinstance(challenge, Response)
    assert (challenge.status, challenge.reason, challenge.body) == (401, "Unauthorized", b"")
    assert challenge.headers.get_all("WWW-Authenticate") == [
        'Digest realm="pbx.example.com", nonce="5f2a0c1e9b", algorithm=MD5, qop="auth"'
    ]


@pytest.mark.parametrize("name", sorted(samples.ALL))
def test_every_sample_comes_back_from_its_own_bytes(name: str) -> None:
    message = parse(samples.ALL[name])
    assert parse(bytes(message)) == message


def test_a_built_message_is_written_as_rfc_3261_shows() -> None:
    request = Request(
        "OPTIONS", "sip:pbx.example.com",
        Headers([
            ("Via", "SIP/2.0/UDP 198.51.100.4;branch=z9hG4bKx"), ("Max-Forwards", "70"),
            ("To", "<sip:pbx.example.com>"), ("From", "<sip:bridge@example.org>;tag=1"),
            ("Call-ID", "c@198.51.100.4"), ("CSeq", "1 OPTIONS"), ("Content-Length", "99"),
        ]),
    )  # fmt: skip
    assert bytes(request) == (
        b"OPTIONS sip:pbx.example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 198.51.100.4;branch=z9hG4bKx\r\nMax-Forwards: 70\r\n"
        b"To: <sip:pbx.example.com>\r\nFrom: <sip:bridge@example.org>;tag=1\r\n"
        b"Call-ID: c@198.51.100.4\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    # The stale Content-Length was the body's to write, and the headers keep it.
    assert request.headers.get("Content-Length") == "99"


def test_response_to_copies_what_rfc_3261_8_2_6_says() -> None:
    invite = _request(
        samples.INVITE.replace(
            b"Max-Forwards: 70\r\n",
            b"Timestamp: 54\r\nVia: SIP/2.0/TCP p.example.com;branch=z9hG4bK2\r\n",
        )
    )
    ringing = response_to(invite, 180, to_tag="wd-7f3a91")
    assert (ringing.status, ringing.reason, ringing.body) == (180, "Ringing", b"")
    assert ringing.headers.items() == [
        ("Via", "SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2d4790.1;rport"),
        ("Via", "SIP/2.0/TCP p.example.com;branch=z9hG4bK2"),
        ("To", "<sip:4242@bridge.example.org>;tag=wd-7f3a91"),
        ("From", invite.headers.get("From")),
        ("Call-ID", "3848276298220188511@192.0.2.7"),
        ("CSeq", "102 INVITE"),
    ]
    assert parse(bytes(ringing)) == ringing
    trying = response_to(invite, 100)
    assert trying.reason == "Trying" and trying.headers.get("Timestamp") == "54"
    assert trying.headers.get("To") == "<sip:4242@bridge.example.org>"
    # A To that has a tag keeps it (a re-INVITE inside the dialog).
    again = _request(samples.INFO)
    assert response_to(again, 200, to_tag="other").headers.get("To") == (
        "<sip:4242@bridge.example.org>;tag=wd-7f3a91"
    )
    assert response_to(again, 599).reason == "Server Error"
    assert response_to(again, 486, "Busy, come back later").reason == "Busy, come back later"


def test_the_reason_table_covers_the_codes_the_bridge_sends() -> None:
    codes = (100, 180, 183, 200, 202, 400, 401, 403, 404, 405, 407, 408, 413, 415, 420, 480,
             481, 482, 483, 486, 487, 488, 491, 500, 501, 503, 505, 513, 603)  # fmt: skip
    assert set(codes) <= set(REASONS)
    assert response_to(_request(samples.BYE), 699).reason == "Global Failure"


@pytest.mark.parametrize(
    ("status", "reason", "to_tag"), [(99, None, None), (700, None, None), (200, None, "a b")]
)
def test_response_to_refuses_what_is_not_sip(
    status: int, reason: str | None, to_tag: str | None
) -> None:
    with pytest.raises(SipBuildError):
        response_to(_request(samples.BYE), status, reason, to_tag=to_tag)


@pytest.mark.parametrize(
    "message",
    [
        Request("IN VITE", "sip:a", Headers()), Request("INVITE", "sip:a b", Headers()),
        Request("INVITE", "", Headers()), Request("INVITE", "sip:a\r\n", Headers()),
        Response(99, "x", Headers()), Response(200, "OK\r\nVia: x", Headers()),
    ],
)  # fmt: skip
def test_writing_what_is_not_sip_is_refused(message: Request | Response) -> None:
    with pytest.raises(SipBuildError):
        bytes(message)


def test_content_length_on_a_datagram() -> None:
    # Without it the body runs to the end of the datagram; past it, octets
    # are dropped; short of it, the message is refused (RFC 3261 section 18.3).
    bare = samples.INFO.replace(b"Content-Length: 24\r\n", b"")
    assert b"Content-Length" not in bare
    assert parse(bare).body == b"Signal=5\r\nDuration=160\r\n"
    assert parse(samples.INFO + b"garbage").body == b"Signal=5\r\nDuration=160\r\n"
    with pytest.raises(SipParseError, match="shorter"):
        parse(samples.INFO[:-1])
    assert parse(samples.INFO.replace(b"Content-Length: 24", b"l: 6")).body == b"Signal"


def test_a_message_over_max_message_is_answered_413() -> None:
    big = samples.INFO.replace(b"Content-Length: 24", b"Content-Length: 70000") + bytes(70000)
    with pytest.raises(SipParseError) as caught:
        parse(big)
    assert caught.value.status == 413
    assert len(samples.INFO) + 100 < MAX_MESSAGE


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"OPTIONS sip:a@b SIP/2.0\r\n", 400),
        (samples.OPTIONS.replace(b"Call-ID: 7c1d", "Call-ID: \u00e9".encode("latin-1")), 400),
        (samples.OPTIONS.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (samples.OPTIONS.replace(b"SIP/2.0\r\n", b"SIP/2\r\n", 1), 400),
        (samples.OPTIONS.replace(b"SIP/2.0\r\n", b"sip/2.0\r\n", 1), None),
        (samples.OPTIONS.replace(b"Max-Forwards: 70", b"Max-Forwards: 256"), 400),
        (samples.OPTIONS.replace(b"Max-Forwards: 70\r\n", b""), None),
        (samples.OPTIONS.replace(b"Accept", b"Call-ID: second@x\r\nAccept"), 400),
        (samples.OPTIONS.replace(b"Call-ID: 7c1d2f93-options", b"Call-ID: two words"), 400),
        (samples.OPTIONS.replace(b"Content-Length: 0", b"Content-Length: 0x10"), 400),
        (samples.OPTIONS.replace(b"Accept", b"l: 0\r\nAccept"), 400),
        (samples.OPTIONS.replace(b"Via: SIP/2.0/TCP [2001:db8::7]:5060;branch=", b"X-Old: "), 400),
        (samples.OPTIONS.replace(b"To: <", b"To: bare <"), None),
        (samples.OPTIONS.replace(b"To: <", b"To: b\x00re <"), 400),
        (samples.OPTIONS.replace(b"OPTIONS sip", b"OPTIONS\x07sip", 1), 400),
        (samples.CHALLENGE.replace(b"401 Unauthorized", b"401"), None),
        (samples.CHALLENGE.replace(b"401 Unauthorized", b"40 Unauthorized"), 400),
        (samples.CHALLENGE.replace(b"401 Unauthorized", b"099 Unauthorized"), 400),
        (samples.CHALLENGE.replace(b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"), None),
        (samples.CHALLENGE.replace(b"From", b"X-From"), 400),
        (samples.OPTIONS.replace(b"Accept: application/sdp", b"X: 1\r\n" * MAX_HEADERS), 400),
        (samples.OPTIONS.replace(b"\r\n\r\n", b"\r\n"), 400),
    ],
)  # fmt: skip
def test_what_is_refused_and_with_which_status(data: bytes, status: int | None) -> None:
    if status is None:
        parse(data)
        return
    with pytest.raises(SipParseError) as caught:
        parse(data)
    assert caught.value.status == status


def test_parse_head_gives_the_content_length_apart() -> None:
    head = samples.INFO[: samples.INFO.index(b"\r\n\r\n")]
    message, length = parse_head(head)
    assert length == 24 and message.body == b"" and "Content-Length" not in message.headers
    assert parse_head(head.replace(b"\r\nContent-Length: 24", b""))[1] is None


def test_a_reason_never_echoes_the_peer_at_length() -> None:
    for data in (
        b"X" * 60000 + b" sip:a SIP/2.0\r\n\r\n",
        samples.OPTIONS.replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 " + b"Z" * 30000),
        samples.OPTIONS.replace(b"SIP/2.0\r\n", b"SIP/9999" + b"9" * 30000 + b".0\r\n", 1),
    ):
        with pytest.raises(SipParseError) as caught:
            parse(data)
        assert len(caught.value.reason) < 100


@given(messages)
def test_built_messages_survive_a_round_trip(message: Request | Response) -> None:
    assert parse(bytes(message)) == message


def _only_parse_errors(data: bytes) -> None:
    try:
        message = parse(data)
    except SipParseError as exc:
        status = exc.status
    else:
        assert parse(bytes(message)) == message
        return
    assert status in (400, 413, 505)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_sip_parse_error(data: bytes) -> None:
    _only_parse_errors(data)


_MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(("insert", "delete", "replace")),
        st.integers(0, 2000),
        st.sampled_from(b'\r\n \t:;,<>"\\@=%/\x00\xff\xc3' + b"0123456789") | st.integers(0, 255),
    ),
    min_size=1,
    max_size=8,
)


@given(st.sampled_from(sorted(samples.ALL)), _MUTATIONS)
def test_mutated_messages_raise_only_sip_parse_error(
    name: str, mutations: list[tuple[str, int, int]]
) -> None:
    data = bytearray(samples.ALL[name])
    for kind, at, byte in mutations:
        at %= len(data) + 1
        if kind == "insert":
            data[at:at] = bytes([byte])
        elif kind == "delete":
            del data[at : at + 1]
        else:
            data[at : at + 1] = bytes([byte])
    _only_parse_errors(bytes(data))
