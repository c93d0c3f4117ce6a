"""RFC 4475's torture tests for SIP parsers, those a message parser can
answer, each written here after the RFC's description of it (the test's
name is the RFC's tag for it): the valid ones read as the RFC says, the
invalid ones refused with the status the RFC expects.

Left out: 3.1.1.2's display name with escaped BEL, NUL and DEL (the bridge
refuses every raw control character in a head, quoted or not: a NUL is
how a header is cut short for the next C parser down the line); the Date,
Retry-After and Warning values of 3.1.2.5 and 3.1.2.12, which this layer
carries as text without reading.
"""

from __future__ import annotations

import pytest

from sip.errors import SipParseError
from sip.wire.fields import CSeq, NameAddr, parse_via
from sip.wire.message import Request, Response, parse
from sip.wire.uri import SipUri


def sip(*lines: str, body: bytes = b"") -> bytes:
    return "".join(f"{line}\r\n" for line in lines).encode() + b"\r\n" + body


def _request(data: bytes) -> Request:
    message = parse(data)
    assert isinstance(message, Request)
    return message


def _usual(method: str, *, cseq: int = 1) -> list[str]:
    return [
        "To: <sip:clinic@example.org>",
        "From: <sip:patient@example.com>;tag=tt1",
        "Call-ID: torture-1@example.com",
        f"CSeq: {cseq} {method}",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKtt1",
        "Max-Forwards: 70",
    ]


SDP = (
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\n"
    b"m=audio 5004 RTP/AVP 0\r\n"
)


def test_wsinv_white_space_folding_and_case_everywhere_it_is_allowed() -> None:
    invite = _request(
        sip(
            "INVITE sip:nurse@ward-b.example.org;unknownflag SIP/2.0",
            "TO :",
            " sip:nurse@ward-b.example.org ;   tag    = 77a3c1",
            'fRoM   : "Dr. Q \\\\\\""       <sip:q@clinic.example.com>',
            "  ;",
            "  tag = ab12cd",
            "MaX-fOrWaRdS: 0042",
            "Call-ID",
            " : wsinv-77aa@192.0.2.1",
            f"Content-Length   : {len(SDP)}",
            "cseq: 0012",
            "  INVITE",
            "Via  : SIP  /   2.0",
            " /UDP",
            "    192.0.2.2;branch=z9hG4bKws1",
            "s :",
            "OddlyNamedHeader:   first part",
            " second part",
            "HeaderWithStrangeValue: ;;,,;;,;",
            "c: application/sdp",
            "Route:",
            " <sip:proxy.example.org;lr;unknown=value;unknown-flag>",
            "v:  SIP  / 2.0  / TCP     edge.example.org   ;",
            "  branch  =   z9hG4bKws2  ,",
            " SIP  /    2.0   / UDP  192.168.1.20   ; branch=",
            " z9hG4bKws3",
            'm:"Quoted \\"\\" text" <sip:q@clinic.example.com> ; extra =',
            "      value ;",
            "  flag ; q = 0.5",
            body=SDP,
        )
    )
    assert invite.uri == "sip:nurse@ward-b.example.org;unknownflag"
    to = NameAddr.parse(invite.headers.get("To") or "")
    assert (to.uri.user, to.tag) == ("nurse", "77a3c1")
    caller = NameAddr.parse(invite.headers.get("From") or "")
    assert (caller.display, caller.tag) == ('Dr. Q \\"', "ab12cd")
    assert invite.headers.get("Max-Forwards") == "0042"
    assert invite.headers.get("Call-ID") == "wsinv-77aa@192.0.2.1"
    assert CSeq.parse(invite.headers.get("CSeq") or "") == CSeq(12, "INVITE")
    assert invite.headers.get("Subject") == ""
    assert invite.headers.get("OddlyNamedHeader") == "first part second part"
    assert invite.headers.get("HeaderWithStrangeValue") == ";;,,;;,;"
    hops = [hop for value in invite.headers.get_all("Via") for hop in parse_via(value)]
    assert [(h.transport, h.host, h.branch) for h in hops] == [
        ("UDP", "192.0.2.2", "z9hG4bKws1"),
        ("TCP", "edge.example.org", "z9hG4bKws2"),
        ("UDP", "192.168.1.20", "z9hG4bKws3"),
    ]
    contact = NameAddr.parse(invite.headers.get("Contact") or "")
    assert contact.display == 'Quoted "" text'
    assert contact.params == {"extra": "value", "flag": None, "q": "0.5"}
    assert invite.body == SDP
    assert parse(bytes(invite)) == invite


def test_intmeth_the_whole_range_of_token_and_uri_characters() -> None:
    method = "!odd-Method0123456789_*+`.%surely'~"
    uri = "sip:1_odd.URI~(to-be!sure)&it's+so$/wild?,/;;*:&pass+word=1,yes!*p$s~d_(ok)@example.com"
    message = _request(
        sip(
            f"{method} {uri} SIP/2.0",
            "Via: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~",
            'To: "quoted \\<hello\\> name" '
            "<sip:1_odd.URI~(to-be!sure)&it's+so$/wild?,/;;*@example.com>",
            "From: word1~` word2'+_ word3*%!.- <sip:plain@example.com>"
            ";oddParam''~+*_!.-%=\"рабочий\";tag=_t~1'+`*%!-.",
            "Call-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{",
            f"CSeq: 139122385 {method}",
            "Max-Forwards: 255",
            "extensionHeader-!.%*+_`'~: \ufeff大停電",
            "Content-Length: 0",
        )
    )
    assert message.method == method
    target = SipUri.parse(message.uri)
    assert (target.user, target.password) == (
        "1_odd.URI~(to-be!sure)&it's+so$/wild?,/;;*",
        "&pass+word=1,yes!*p$s~d_(ok)",
    )
    to = NameAddr.parse(message.headers.get("To") or "")
    assert to.display == "quoted <hello> name"
    caller = NameAddr.parse(message.headers.get("From") or "")
    assert caller.display == "word1~` word2'+_ word3*%!.-"
    assert caller.params == {"oddparam''~+*_!.-%": '"рабочий"', "tag": "_t~1'+`*%!-."}
    assert message.headers.get("EXTENSIONHEADER-!.%*+_`'~") == "\ufeff大停電"
    assert parse(bytes(message)) == message


def test_esc01_escapes_in_uris() -> None:
    message = _request(
        sip(
            "INVITE sip:sips%3Apatient%40example.com@example.net SIP/2.0",
            "To: sip:%70atient@example.com",
            "From: <sip:I%20have%20spaces@example.net>;tag=938",
            "Max-Forwards: 87",
            "i: esc01.239409asdfakjkn23onasd0-3234",
            "CSeq: 234234 INVITE",
            "Via: SIP/2.0/UDP host5.example.net;branch=z9hG4bKkdjuw",
            "C: application/sdp",
            "Contact:",
            "  <sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31>",
            f"Content-Length: {len(SDP)}",
            body=SDP,
        )
    )
    assert SipUri.parse(message.uri).user == "sips:patient@example.com"
    assert NameAddr.parse(message.headers.get("To") or "").uri.user == "patient"
    assert NameAddr.parse(message.headers.get("From") or "").uri.user == "I have spaces"
    contact = NameAddr.parse(message.headers.get("Contact") or "")
    assert (contact.uri.user, contact.uri.params) == ("caller", {"lr": None, "name": "value%41"})


def test_escnull_escaped_nuls_in_uris() -> None:
    message = _request(
        sip(
            "REGISTER sip:example.com SIP/2.0",
            "To: sip:null-%00-null@example.com",
            "From: sip:null-%00-null@example.com;tag=839923423",
            "Max-Forwards: 70",
            "Call-ID: escnull.39203ndfvkjdasfkq3w4otrq0adsfdfnavd",
            "CSeq: 14398234 REGISTER",
            "Via: SIP/2.0/UDP host5.example.com;branch=z9hG4bKkdjuw",
            "Contact: <sip:%00@host5.example.com>",
            "Contact: <sip:%00%00@host5.example.com>",
            "L:0",
        )
    )
    assert NameAddr.parse(message.headers.get("To") or "").uri.user == "null-\x00-null"
    users = [NameAddr.parse(c).uri.user for c in message.headers.get_all("Contact")]
    assert users == ["\x00", "\x00\x00"]


def test_esc02_percent_where_it_is_no_escape() -> None:
    message = _request(
        sip(
            "RE%47IST%45R sip:registrar.example.com SIP/2.0",
            'To: "%Z%45" <sip:resource@example.com>',
            'From: "%Z%45" <sip:resource@example.com>;tag=f232jadfj23',
            "Call-ID: esc02.asdfnqwo34rq23i34jrjasdcnl23nrlknsdf",
            "Via: SIP/2.0/TCP host.example.com;rport;branch=z9hG4bKkdjuw",
            "CSeq: 29344 RE%47IST%45R",
            "Max-Forwards: 70",
            "Contact: <sip:alias1@host1.example.com>",
            "C%6Fntact: <sip:alias2@host2.example.com>",
            "Contact: <sip:alias3@host3.example.com>",
            "l: 0",
        )
    )
    # Not REGISTER: a method is a token, escapes mean nothing in it.
    assert message.method == "RE%47IST%45R"
    assert NameAddr.parse(message.headers.get("To") or "").display == "%Z%45"
    assert len(message.headers.get_all("Contact")) == 2
    assert message.headers.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def test_lwsdisp_no_space_before_the_angle_bracket() -> None:
    lines = _usual("OPTIONS")
    lines[1] = "From: caller<sip:caller@example.com>;tag=323"
    message = parse(sip("OPTIONS sip:user@example.com SIP/2.0", *lines))
    assert NameAddr.parse(message.headers.get("From") or "").display == "caller"


def test_longreq_long_values_everywhere() -> None:
    name = "I have a very long name" * 40
    hops = [f"Via: SIP/2.0/TCP sip{i}.example.com;branch=z9hG4bK{'x' * 100}{i}" for i in range(40)]
    message = _request(
        sip(
            "INVITE sip:user@example.com SIP/2.0",
            f'To: "{name}" <sip:{"L" * 500}@example.com>',
            f"From: <sip:caller@example.com>;tag={'t' * 2000}",
            f"Call-ID: longreq.{'c' * 2000}",
            "CSeq: 1 INVITE",
            "Max-Forwards: 70",
            *hops,
            f"X-Long: {'v' * 10000}",
        )
    )
    assert NameAddr.parse(message.headers.get("To") or "").display == name
    assert len(message.headers.get_all("Via")) == 40


def test_dblreq_octets_past_content_length_are_dropped() -> None:
    register = sip("REGISTER sip:example.com SIP/2.0", *_usual("REGISTER"), "Content-Length: 0")
    invite = sip("INVITE sip:a@example.com SIP/2.0", *_usual("INVITE"), f"l: {len(SDP)}", body=SDP)
    message = parse(register + invite)
    assert isinstance(message, Request) and message.method == "REGISTER" and message.body == b""


def test_semiuri_semicolons_in_the_user_part() -> None:
    message = _request(
        sip("OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0", *_usual("OPTIONS"))
    )
    uri = SipUri.parse(message.uri)
    assert (uri.user, uri.host, uri.params) == ("user;par=u@example.net", "example.com", {})


def test_transports_varied_and_unknown() -> None:
    message = parse(
        sip(
            "OPTIONS sip:user@example.com SIP/2.0",
            *_usual("OPTIONS")[:4],
            "Via: SIP/2.0/UDP t1.example.com;branch=z9hG4bKkdjuw",
            "Via: SIP/2.0/SCTP t2.example.com;branch=z9hG4bKklasjdhf",
            "Via: SIP/2.0/TLS t3.example.com;branch=z9hG4bK2980unddj",
            "Via: SIP/2.0/UNKNOWN t4.example.com;branch=z9hG4bKasd0f3en",
            "Via: SIP/2.0/TCP t5.example.com;branch=z9hG4bK0a9idfnee",
        )
    )
    transports = [parse_via(v)[0].transport for v in message.headers.get_all("Via")]
    assert transports == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def test_mpart01_a_multipart_body_is_carried_whole() -> None:
    body = (
        b"--7a9cbec.Qw\r\nContent-Type: application/sdp\r\n\r\n" + SDP
        + b"\r\n--7a9cbec.Qw\r\nContent-Type: application/pkcs7-signature\r\n\r\n"
        + b"\x30\x82\x00\xff\x00"
        + b"\r\n--7a9cbec.Qw--\r\n"
    )  # fmt: skip
    message = parse(
        sip(
            "MESSAGE sip:kumiko@example.org SIP/2.0",
            *_usual("MESSAGE"),
            "Content-Type: multipart/signed;boundary=7a9cbec.Qw"
            ';protocol="application/pkcs7-signature"',
            f"Content-Length: {len(body)}",
            body=body,
        )
    )
    assert message.body == body


def test_unreason_and_noreason() -> None:
    reason = "= 2**3 * 5**2 ٹھیک ہے, ¿sí? 大丈夫"
    ok = parse(sip(f"SIP/2.0 200 {reason}", *_usual("INVITE")[:5]))
    assert isinstance(ok, Response) and (ok.status, ok.reason) == (200, reason)
    trying = parse(sip("SIP/2.0 100 ", *_usual("INVITE")[:5]))
    assert isinstance(trying, Response) and (trying.status, trying.reason) == (100, "")


@pytest.mark.parametrize(
    "uri", ["nobodyKnowsThisScheme:totallyopaquecontent", "soap.beep://192.0.2.103:3002"]
)
def test_unksm_novelsc_unknown_request_uri_schemes_are_read(uri: str) -> None:
    # Answered 416 above this layer (RFC 3261 section 8.2.2.1), not refused here.
    assert _request(sip(f"OPTIONS {uri} SIP/2.0", *_usual("OPTIONS"))).uri == uri


def test_unkscm_unknown_schemes_in_addresses() -> None:
    message = parse(
        sip(
            "OPTIONS sip:user@example.com SIP/2.0",
            "To: sip:user@example.com",
            "From: <http://www.example.com>;tag=3234233",
            "Call-ID: unkscm.nasdfasser0q239nwsdfasdkl34",
            "CSeq: 3923423 OPTIONS",
            "Via: SIP/2.0/TCP host9.example.com;branch=z9hG4bKkdjuw39234",
            "Max-Forwards: 70",
            "Contact: <name:John_Smith>",
        )
    )
    assert NameAddr.parse(message.headers.get("From") or "").uri == SipUri(
        "http", "//www.example.com", ""
    )
    assert NameAddr.parse(message.headers.get("Contact") or "").uri.scheme == "name"


def test_regaut01_a_bare_uri_with_headers_is_refused() -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E")


def _with(method: str, uri: str = "sip:user@example.com", **replace: str) -> bytes:
    lines = [f"{method} {uri} SIP/2.0", *_usual(method)]
    for old, new in replace.items():
        lines = [new if line.startswith(old.replace("_", "-")) else line for line in lines]
    return sip(*lines)


INVALID = {
    "badinv01": _with("INVITE", Via="Via: SIP/2.0/UDP 192.0.2.15;;,;,,"),
    "clerr": sip(
        "INVITE sip:user@example.com SIP/2.0", *_usual("INVITE"), "Content-Length: 9999", body=SDP
    ),
    "ncl": sip(
        "INVITE sip:user@example.com SIP/2.0", *_usual("INVITE"), "Content-Length: -999", body=SDP
    ),
    "scalar02": _with("REGISTER", CSeq="CSeq: 36893488147419103232 REGISTER"),
    "scalar02-max-forwards": _with("REGISTER", Max_Forwards="Max-Forwards: 300"),
    "quotbal": _with("INVITE", To='To: "Mr. J. User <sip:j.user@example.com>'),
    "ltgtruri": _with("INVITE", "<sip:user@example.com>"),
    "lwsruri": _with("INVITE", "sip:user@example.com; lr"),
    "lwsstart": sip("INVITE  sip:user@example.com  SIP/2.0", *_usual("INVITE")),
    "trws": sip("OPTIONS sip:remote-target@example.com SIP/2.0 ", *_usual("OPTIONS")),
    "escruri": _with("INVITE", "sip:user@example.com?Route=%3Csip:example.com%3E"),
    "badaspec": _with("OPTIONS", To='To: "Watson, Thomas" < sip:t.watson@example.org >'),
    "baddn": _with("OPTIONS", From="From: Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
    "mismatch01": _with("OPTIONS", CSeq="CSeq: 8 INVITE"),
    "mismatch02": _with("NEWMETHOD", CSeq="CSeq: 8 INVITE"),
    "bigcode": sip("SIP/2.0 4294967301 better not break the receiver", *_usual("INVITE")[:5]),
    "insuf": sip(
        "INVITE sip:user@example.com SIP/2.0",
        "CSeq: 1 INVITE",
        "Via: SIP/2.0/UDP host.example.com;branch=z9hG4bKkdjuw",
        "Max-Forwards: 70",
    ),
    "mcl01": sip(
        "OPTIONS sip:user@example.com SIP/2.0",
        *_usual("OPTIONS"),
        "Content-Length: 0",
        "Content-Length: 2",
        "l: 81",
        body=b"ab",
    ),
    "multi01": sip(
        "INVITE sip:user@example.com SIP/2.0",
        *_usual("INVITE"),
        "To: <sip:other@example.org>",
        "Call-ID: second@example.com",
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_messages_are_answered_400(name: str) -> None:
    with pytest.raises(SipParseError) as caught:
        parse(INVALID[name])
    assert caught.value.status == 400


def test_badvers_another_sip_version_is_answered_505() -> None:
    with pytest.raises(SipParseError) as caught:
        parse(sip("OPTIONS sip:t.watson@example.org SIP/7.0", *_usual("OPTIONS")))
    assert caught.value.status == 505


def test_zeromf_and_inv2543_are_read() -> None:
    # Max-Forwards 0 is for the proxy to refuse (483), and an RFC 2543 Via
    # without a branch for the transaction layer to match the old way.
    assert parse(_with("OPTIONS", Max_Forwards="Max-Forwards: 0"))
    assert parse(_with("INVITE", Via="Via: SIP/2.0/UDP 192.0.2.15"))
