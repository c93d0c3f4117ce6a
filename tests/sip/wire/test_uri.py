"""SIP, SIPS and tel URIs (sip/wire/uri.py, RFC 3261 section 19.1): parts
unescaped on the way in, escaped again on the way out, and nothing but
SipParseError from text that is not a URI."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipParseError
from sip.wire.uri import SipUri
from tests.sip.wire.strategies import uris


def test_every_part_of_a_sip_uri() -> None:
    uri = SipUri.parse(
        "sips:alice:secret@atlanta.example.com:5061;transport=TCP;lr?subject=hi&priority=urgent"
    )
    assert uri == SipUri(
        "sips",
        "alice",
        "atlanta.example.com",
        5061,
        {"transport": "TCP", "lr": None},
        {"subject": "hi", "priority": "urgent"},
        "secret",
    )
    assert (
        str(uri)
        == "sips:alice:secret@atlanta.example.com:5061;transport=TCP;lr?subject=hi&priority=urgent"
    )


def test_a_uri_without_a_user_and_the_scheme_in_capitals() -> None:
    uri = SipUri.parse("SIP:pbx.example.com")
    assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", None, "pbx.example.com", None)
    assert str(uri) == "sip:pbx.example.com"


def test_ipv6_references_lose_their_brackets_and_get_them_back() -> None:
    uri = SipUri.parse("sip:bob@[2001:db8::10]:5070;maddr=[2001:db8::1]")
    assert (uri.host, uri.port, uri.params) == ("2001:db8::10", 5070, {"maddr": "[2001:db8::1]"})
    assert str(uri) == "sip:bob@[2001:db8::10]:5070;maddr=[2001:db8::1]"
    assert SipUri.parse("sip:[::1]").host == "::1"


def test_escapes_are_undone_and_redone_where_needed() -> None:
    # RFC 4475 section 3.1.1.3: an escaped colon and at-sign in the user part.
    uri = SipUri.parse("sip:sips%3Auser%40example.com@example.net")
    assert (uri.user, uri.host) == ("sips:user@example.com", "example.net")
    assert str(uri) == "sip:sips%3Auser%40example.com@example.net"
    assert SipUri.parse("sip:%75se%72@example.com").user == "user"
    # Parameter names are case-insensitive and may be escaped themselves.
    uri = SipUri.parse("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31")
    assert uri.params == {"lr": None, "name": "value%41"}
    assert str(uri) == "sip:caller@host5.example.net;lr;name=value%2541"
    # A NUL escaped (RFC 4475 section 3.1.1.4) and an escape that is not UTF-8.
    assert SipUri.parse("sip:null-%00-null@example.com").user == "null-\x00-null"
    odd = SipUri.parse("sip:%FF%fe@example.com")
    assert str(odd) == "sip:%FF%FE@example.com"


def test_a_semicolon_in_the_user_part_is_the_users() -> None:
    # RFC 4475 section 3.1.1.9.
    uri = SipUri.parse("sip:user;par=u%40example.net@example.com")
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})


def test_tel_uris_carry_the_number_in_user() -> None:
    uri = SipUri.parse("tel:+1-201-555-0123;phone-context=example.com")
    assert (uri.scheme, uri.user, uri.host) == ("tel", "+1-201-555-0123", "")
    assert uri.params == {"phone-context": "example.com"}
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"
    assert str(SipUri.parse("tel:%2A72%23")) == "tel:*72%23"


def test_other_schemes_are_carried_opaque() -> None:
    # RFC 4475 sections 3.3.2 to 3.3.4: unknown schemes are read, not refused.
    for text in (
        "nobodyKnowsThisScheme:totallyopaquecontent",
        "soap.beep://192.0.2.103:3002",
        "http://www.example.com/a?b=c",
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
    ):
        scheme, rest = text.split(":", 1)
        uri = SipUri.parse(text)
        assert (uri.scheme, uri.user, uri.host) == (scheme.lower(), rest, "")
        assert str(uri) == f"{scheme.lower()}:{rest}"


@pytest.mark.parametrize(
    "text",
    [
        "", "sip:", "sip:@host", "sip:user@", "sip:host:", "sip:host:65536", "sip:host:+1",
        "sip:host:٥٠٦٠", "sip:a b@host", "sip:host;", "sip:host;;lr", "sip:host;x=", "sip:ho st",
        "sip:[::1", "sip:[zz::1]", "sip:[::1]x", "sip:host?h", "sip:host?h=1;x", "sip:us%2er",
        "sip:user@host@host", "sip:a:b:c@host", "<sip:host>", "1sip:host", ":host", "tel:",
        "tel:+1;;x", "http:", "http:a b", "sip:host%", "sip:ä@host",
    ],
)  # fmt: skip
def test_malformed_uris_raise_sip_parse_error(text: str) -> None:
    with pytest.raises(SipParseError) as caught:
        SipUri.parse(text)
    assert caught.value.status == 400


def test_an_error_quotes_little_of_the_input() -> None:
    with pytest.raises(SipParseError) as caught:
        SipUri.parse("sip:" + "x" * 5000 + "@[")
    assert len(caught.value.reason) < 100


@given(uris())
def test_built_uris_survive_a_round_trip(uri: SipUri) -> None:
    assert SipUri.parse(str(uri)) == uri


@given(
    st.text(max_size=60) | st.from_regex(r"(sips?|tel):[a-z%0-9@:;=?&\[\].]{0,30}", fullmatch=True)
)
def test_arbitrary_text_parses_stably_or_raises_sip_parse_error(text: str) -> None:
    try:
        uri = SipUri.parse(text)
    except SipParseError:
        return
    assert SipUri.parse(str(uri)) == uri
