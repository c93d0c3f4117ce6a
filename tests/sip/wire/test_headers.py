"""The header multi-map (sip/wire/headers.py, RFC 3261 section 7.3): names
case-insensitive and compact forms long, folding undone, list fields split
only where their grammar says, and no way to write a line break into one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipBuildError, SipParseError
from sip.wire.headers import MAX_HEADERS, Headers, canonical_name
from tests.sip.wire.strategies import extra_headers


def test_names_are_matched_case_insensitively_and_compact_forms_are_long() -> None:
    headers = Headers.parse(
        "v: SIP/2.0/UDP a;branch=1\r\ncall-id: x@y\r\nI: ignored@y\r\nX-Thing: 1"
    )
    assert headers.items() == [
        ("Via", "SIP/2.0/UDP a;branch=1"), ("Call-ID", "x@y"), ("Call-ID", "ignored@y"),
        ("X-Thing", "1"),
    ]  # fmt: skip
    assert headers.get("VIA") == headers.get("v") == "SIP/2.0/UDP a;branch=1"
    assert headers.get("i") == "x@y" and headers.get_all("CALL-ID") == ["x@y", "ignored@y"]
    assert "x-thing" in headers and "Contact" not in headers and 7 not in headers
    assert headers.get("Contact") is None and headers.get_all("Contact") == []


def test_every_compact_form() -> None:
    expected = {
        "i": "Call-ID", "m": "Contact", "e": "Content-Encoding", "l": "Content-Length",
        "c": "Content-Type", "f": "From", "s": "Subject", "k": "Supported", "t": "To", "v": "Via",
        "o": "Event", "u": "Allow-Events", "r": "Refer-To", "b": "Referred-By",
        "x": "Session-Expires", "y": "Identity", "a": "Accept-Contact", "j": "Reject-Contact",
        "d": "Request-Disposition",
    }  # fmt: skip
    for letter, name in expected.items():
        assert canonical_name(letter) == canonical_name(letter.upper()) == name
    assert (
        canonical_name("cseq") == "CSeq"
        and canonical_name("www-authenticate") == "WWW-Authenticate"
    )
    assert canonical_name("X-Unknown-Thing") == "X-Unknown-Thing"


def test_folded_lines_are_unfolded_even_before_the_colon() -> None:
    headers = Headers.parse(
        "Subject: one\r\n  two\r\n\tthree\r\n"
        "Call-ID\r\n : abc@host\r\n"
        "TO :\r\n sip:a@b ;  tag = 1\r\n"
    )
    assert headers.items() == [
        ("Subject", "one two three"), ("Call-ID", "abc@host"), ("To", "sip:a@b ;  tag = 1"),
    ]  # fmt: skip


def test_list_fields_are_split_outside_quotes_and_brackets() -> None:
    headers = Headers.parse(
        "Via: SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2\r\n"
        "Via: SIP/2.0/TCP c;branch=3\r\n"
        'Contact: "Lovelace, Ada" <sip:ada@example.com;x=1,2>;q=0.5, <sip:b@example.com>\r\n'
        "Supported: timer, , replaces,\r\n"
        "Allow: INVITE,ACK\r\n"
        'WWW-Authenticate: Digest realm="a, b", nonce="n", qop="auth,auth-int"\r\n'
        "Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n"
        "X-Custom: a, b\r\n"
    )
    assert headers.get_all("Via") == [
        "SIP/2.0/UDP a;branch=1", "SIP/2.0/UDP b;branch=2", "SIP/2.0/TCP c;branch=3",
    ]  # fmt: skip
    assert headers.get_all("m") == [
        '"Lovelace, Ada" <sip:ada@example.com;x=1,2>;q=0.5', "<sip:b@example.com>",
    ]  # fmt: skip
    assert headers.get_all("k") == ["timer", "replaces"]
    assert headers.get_all("Allow") == ["INVITE", "ACK"]
    assert headers.get_all("WWW-Authenticate") == [
        'Digest realm="a, b", nonce="n", qop="auth,auth-int"'
    ]
    assert headers.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
    assert headers.get_all("X-Custom") == ["a, b"]
    assert headers.get("Via") == "SIP/2.0/UDP a;branch=1, SIP/2.0/UDP b;branch=2"


def test_an_empty_value_is_kept() -> None:
    headers = Headers.parse("Subject:\r\ns :  \r\nSupported:")
    assert headers.items() == [("Subject", ""), ("Subject", ""), ("Supported", "")]
    assert headers.get_all("Supported") == []


def test_add_set_and_remove() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a"), ("To", "<sip:a@b>"), ("v", "SIP/2.0/UDP b")])
    headers.add("Contact", "  <sip:c@d>\t")
    headers.set("via", "SIP/2.0/UDP z")
    assert headers.items() == [
        ("Via", "SIP/2.0/UDP z"), ("To", "<sip:a@b>"), ("Contact", "<sip:c@d>"),
    ]  # fmt: skip
    headers.set("Max-Forwards", "70")
    headers.remove("t")
    headers.remove("Nothing-Here")
    assert list(headers) == ["Via", "Contact", "Max-Forwards"] and len(headers) == 3
    copy = headers.copy()
    copy.remove("Via")
    assert "Via" in headers and copy != headers
    assert str(headers) == "Via: SIP/2.0/UDP z\r\nContact: <sip:c@d>\r\nMax-Forwards: 70\r\n"
    assert Headers.parse(str(headers)) == headers
    assert headers != "Via: SIP/2.0/UDP z"


@pytest.mark.parametrize(
    ("name", "value"),
    [("Bad Name", "x"), ("", "x"), ("X:Y", "x"), ("Subject", "a\r\nVia: evil"), ("Subject", "a\n"),
     ("Subject", "a\x00"), ("Subject", "a\rb")],
)  # fmt: skip
def test_what_would_rewrite_the_message_cannot_be_added(name: str, value: str) -> None:
    with pytest.raises(SipBuildError):
        Headers().add(name, value)


@pytest.mark.parametrize(
    "text",
    [
        " leading: continuation",
        "No colon here",
        "Bad Name: x",
        ": no name",
        "A: b\r\n\r\nC: d",
        "A: b\nC: d",
        "A: b\rC: d",
        "A: \x00",
        "A: b\x7f",
        "Ä: b",
    ],
)
def test_malformed_header_blocks_raise_sip_parse_error(text: str) -> None:
    with pytest.raises(SipParseError):
        Headers.parse(text)


def test_at_most_max_headers_fields() -> None:
    assert len(Headers.parse("X: 1\r\n" * MAX_HEADERS)) == MAX_HEADERS
    with pytest.raises(SipParseError, match="more than"):
        Headers.parse("X: 1\r\n" * (MAX_HEADERS + 1))
    # Continuation lines are not fields, and join in linear time.
    (field,) = Headers.parse("X: 1\r\n" + " 2\r\n" * 20000).items()
    assert len(field[1]) == 1 + 2 * 20000


@given(extra_headers)
def test_built_headers_survive_a_round_trip(fields: list[tuple[str, str]]) -> None:
    headers = Headers(fields)
    assert Headers.parse(str(headers)) == headers


@given(
    st.text(max_size=120)
    | st.lists(st.sampled_from(["A: b", " c", "\t", "v: x", ":", "d"])).map("\r\n".join)
)
def test_arbitrary_text_parses_stably_or_raises_sip_parse_error(text: str) -> None:
    try:
        headers = Headers.parse(text)
    except SipParseError:
        return
    assert Headers.parse(str(headers)) == headers
    for name in headers:
        assert headers.get(name) is not None
        headers.get_all(name)
