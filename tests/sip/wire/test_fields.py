"""Typed header values (sip/wire/fields.py): addresses, Via and CSeq read
with the white space RFC 3261 allows, written back in one spelling, and
nothing but SipParseError from text that is not one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sip.errors import SipParseError
from sip.wire.fields import CSeq, NameAddr, Via, parse_via
from sip.wire.uri import SipUri
from tests.sip.wire.strategies import cseqs, name_addrs, printable, vias

ALICE = SipUri("sip", "alice", "atlanta.example.com")


def test_a_name_addr_with_a_quoted_display_name_and_a_tag() -> None:
    addr = NameAddr.parse('"Alice \\"Al\\" Liddell" <sip:alice@atlanta.example.com>;tag=1928301774')
    assert addr == NameAddr('Alice "Al" Liddell', ALICE, {"tag": "1928301774"})
    assert addr.tag == "1928301774"
    assert str(addr) == '"Alice \\"Al\\" Liddell" <sip:alice@atlanta.example.com>;tag=1928301774'


def test_the_bare_form_gives_its_parameters_to_the_header() -> None:
    # RFC 3261 section 20.10: ";tag" after a bare URI is the header's.
    addr = NameAddr.parse("sip:alice@atlanta.example.com;tag=88sja8x")
    assert addr == NameAddr("", ALICE, {"tag": "88sja8x"})
    assert str(addr) == "<sip:alice@atlanta.example.com>;tag=88sja8x"
    inside = NameAddr.parse("<sip:alice@atlanta.example.com;transport=tcp>;tag=x")
    assert inside.uri.params == {"transport": "tcp"} and inside.params == {"tag": "x"}


def test_token_display_names_white_space_and_parameters() -> None:
    addr = NameAddr.parse(
        "  Joe  Bloggs<sip:joe@example.com> ; newparam =  newvalue ; flag ; Q = 0.33 "
    )
    assert addr.display == "Joe  Bloggs"
    assert addr.params == {"newparam": "newvalue", "flag": None, "q": "0.33"}
    assert addr.tag is None
    assert NameAddr.parse("caller<sip:caller@example.com>;tag=323").display == "caller"


def test_quoted_parameter_values_keep_their_quotes() -> None:
    text = (
        '<sip:bridge@198.51.100.4>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'
    )
    addr = NameAddr.parse(text)
    assert addr.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'
    assert str(addr) == text


def test_with_tag_adds_the_tag_to_a_copy() -> None:
    addr = NameAddr.parse("<sip:4242@bridge.example.org>")
    assert addr.with_tag("wd-1").tag == "wd-1" and addr.tag is None


@pytest.mark.parametrize(
    "text",
    [
        "", "   ", '"Mr. J. User <sip:j.user@example.com>',
        "Bell, Alexander <sip:a.g.bell@example.com>",
        '"Watson, Thomas" < sip:t.watson@example.org >', "<sip:a@b", "<sip:a@b> junk",
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E", "sip:a@b, sip:c@d",
        '"x" sip:a@b', "<sip:a@b>;", "<sip:a@b>;;tag=1", "<sip:a@b>;tag=", "<sip:a@b>;tag=a b",
        '<sip:a@b>;x="open', '<sip:a@b>;x="q"z', "<sip:a@b>;ta g=1", "<>", "*", "<sip:a@b>\x00",
    ],
)  # fmt: skip
def test_malformed_addresses_raise_sip_parse_error(text: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(text)


def test_via_with_every_part() -> None:
    via = Via.parse(
        "SIP/2.0/udp pc33.atlanta.example.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1"
    )
    assert via == Via(
        "UDP", "pc33.atlanta.example.com", 5066,
        {"branch": "z9hG4bK776asdhds", "rport": None, "received": "192.0.2.1"},
    )  # fmt: skip
    assert (via.branch, via.received, via.rport, via.asks_rport) == (
        "z9hG4bK776asdhds", "192.0.2.1", None, True,
    )  # fmt: skip
    assert str(via) == (
        "SIP/2.0/UDP pc33.atlanta.example.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1"
    )
    filled = via.with_param("rport", "5066")
    assert filled.rport == 5066 and via.rport is None


def test_via_with_white_space_everywhere_the_grammar_allows_it() -> None:
    # RFC 4475 section 3.1.1.1's Via, in spirit.
    (first, second) = parse_via(
        "SIP  / 2.0  / TCP     spindle.example.com   ;  branch  =   z9hG4bK9ikj8  , "
        "sip /    2.0   / UDP  192.168.255.111 : 5062  ; branch= z9hG4bK30239"
    )
    assert (first.transport, first.host, first.port, first.branch) == (
        "TCP", "spindle.example.com", None, "z9hG4bK9ikj8",
    )  # fmt: skip
    assert (second.transport, second.host, second.port, second.branch) == (
        "UDP", "192.168.255.111", 5062, "z9hG4bK30239",
    )  # fmt: skip
    assert not first.asks_rport


def test_via_over_ipv6_and_unknown_transports() -> None:
    via = Via.parse("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK1;received=2001:db8::9")
    assert (via.host, via.port, via.received) == ("2001:db8::9", 5061, "2001:db8::9")
    assert str(via) == "SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bK1;received=2001:db8::9"
    assert Via.parse("SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasdd").transport == "UNKNOWN"


@pytest.mark.parametrize(
    "text",
    [
        "", "SIP/2.0/UDP", "SIP/2.0/UDP ", "SIP/2.0/UDPhost", "SIP/3.0/UDP host", "SIP/UDP host",
        "HTTP/2.0/UDP host", "SIP/2.0/ host", "SIP/2.0/UDP host;", "SIP/2.0/UDP 192.0.2.15;;",
        "SIP/2.0/UDP host:abc", "SIP/2.0/UDP host:70000", "SIP/2.0/UDP ho st",
        "SIP/2.0/UDP host;rport=x", "SIP/2.0/UDP host;rport=99999", "SIP/2.0/UDP [::1",
        "SIP/2.0/UDP host;branch=a,b", "SIP/2.0/UDP ::1",
    ],
)  # fmt: skip
def test_malformed_vias_raise_sip_parse_error(text: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(text)


def test_a_list_with_an_empty_element_is_refused() -> None:
    with pytest.raises(SipParseError):
        parse_via("SIP/2.0/UDP a;branch=1,,SIP/2.0/UDP b")


def test_cseq() -> None:
    assert CSeq.parse("0009 \t INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(314159, "INVITE")) == "314159 INVITE"
    for text in ("", "1", "INVITE", "1 2 INVITE", "-1 INVITE", "2147483648 INVITE",
                 "36893488147419103232 REGISTER", "1 INV ITE", "1 INV@TE", "٣ INVITE"):  # fmt: skip
        with pytest.raises(SipParseError):
            CSeq.parse(text)


@given(name_addrs)
def test_built_addresses_survive_a_round_trip(addr: NameAddr) -> None:
    assert NameAddr.parse(str(addr)) == addr


@given(vias)
def test_built_vias_survive_a_round_trip(via: Via) -> None:
    assert Via.parse(str(via)) == via


@given(st.lists(vias, min_size=1, max_size=4))
def test_several_vias_in_one_value_come_back_in_order(hops: list[Via]) -> None:
    assert parse_via(", ".join(map(str, hops))) == hops


@given(cseqs)
def test_built_cseqs_survive_a_round_trip(cseq: CSeq) -> None:
    assert CSeq.parse(str(cseq)) == cseq


_SHAPES = st.one_of(
    st.text(max_size=80),
    printable,
    st.from_regex(
        r'("[a-z\\" ]*" ?)?<?(sips?|tel):[a-z@;=\[\]:.0-9%?&]*>?( ?;[a-z =."]*)*', fullmatch=True
    ),
    st.from_regex(r"SIP ?/ ?2\.0 ?/ ?[A-Z]{0,4} [a-z0-9.:\[\] ]*(;[a-z=0-9 ]*)*", fullmatch=True),
)


@given(_SHAPES)
def test_arbitrary_text_parses_stably_or_raises_sip_parse_error(text: str) -> None:
    for kind in (NameAddr, Via, CSeq):
        try:
            value = kind.parse(text)
        except SipParseError:
            continue
        assert kind.parse(str(value)) == value
    try:
        hops = parse_via(text)
    except SipParseError:
        return
    assert parse_via(", ".join(map(str, hops))) == hops
