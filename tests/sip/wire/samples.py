"""SIP messages as trunks and PBXs send them to the bridge: one call's
dialog, a DTMF INFO, a keepalive OPTIONS and a registration challenged
with 401. Written for these tests in the shapes RFC 3261 section 24 and
RFC 3665 show; the fuzz target is seeded with them too (fuzz/seed.py)."""

from __future__ import annotations


def wire(*lines: str, body: bytes = b"") -> bytes:
    """The lines CRLF-ended, a Content-Length of ``body``, the blank line, ``body``."""
    head = "".join(f"{line}\r\n" for line in lines)
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


OFFER = (
    b"v=0\r\n"
    b"o=trunk 53655765 2353687637 IN IP4 192.0.2.7\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.0.2.7\r\n"
    b"t=0 0\r\n"
    b"m=audio 6000 RTP/AVP 9 0 8 101\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)
ANSWER = OFFER.replace(b"192.0.2.7", b"198.51.100.4").replace(b"6000", b"40000")

_DIALOG = (
    'From: "+1 555 0100" <sip:+15550100@trunk.example.net;user=phone>;tag=as58f4201b',
    "Call-ID: 3848276298220188511@192.0.2.7",
)
_TRUNK_VIA = "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2d4790.1;rport"

INVITE = wire(
    "INVITE sip:4242@bridge.example.org SIP/2.0",
    _TRUNK_VIA,
    "Max-Forwards: 70",
    "To: <sip:4242@bridge.example.org>",
    *_DIALOG,
    "CSeq: 102 INVITE",
    "Contact: <sip:+15550100@192.0.2.7:5060;transport=udp>",
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO",
    "Supported: replaces, timer",
    "User-Agent: TrunkGW 5.2",
    "Content-Type: application/sdp",
    body=OFFER,
)

OK = wire(
    "SIP/2.0 200 OK",
    _TRUNK_VIA.replace(";rport", ";rport=5060;received=192.0.2.7"),
    "To: <sip:4242@bridge.example.org>;tag=wd-7f3a91",
    *_DIALOG,
    "CSeq: 102 INVITE",
    "Contact: <sip:bridge@198.51.100.4:5060>",
    "Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, INFO",
    "Content-Type: application/sdp",
    body=ANSWER,
)

ACK = wire(
    "ACK sip:bridge@198.51.100.4:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2d4790.2;rport",
    "Max-Forwards: 70",
    "To: <sip:4242@bridge.example.org>;tag=wd-7f3a91",
    *_DIALOG,
    "CSeq: 102 ACK",
)

INFO = wire(
    "INFO sip:bridge@198.51.100.4:5060 SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2d4790.3;rport",
    "Max-Forwards: 70",
    "To: <sip:4242@bridge.example.org>;tag=wd-7f3a91",
    *_DIALOG,
    "CSeq: 103 INFO",
    "Content-Type: application/dtmf-relay",
    body=b"Signal=5\r\nDuration=160\r\n",
)

BYE = wire(
    "BYE sip:bridge@198.51.100.4:5060 SIP/2.0",
    "v: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK2d4790.4;rport",
    "Max-Forwards: 70",
    "t: <sip:4242@bridge.example.org>;tag=wd-7f3a91",
    'f: "+1 555 0100" <sip:+15550100@trunk.example.net;user=phone>;tag=as58f4201b',
    "i: 3848276298220188511@192.0.2.7",
    "CSeq: 104 BYE",
    'Reason: Q.850;cause=16;text="Normal call clearing"',
)

OPTIONS = wire(
    "OPTIONS sip:bridge.example.org SIP/2.0",
    "Via: SIP/2.0/TCP [2001:db8::7]:5060;branch=z9hG4bKopt77",
    "Max-Forwards: 70",
    "To: <sip:bridge.example.org>",
    "From: <sip:ping@pbx.example.com>;tag=8a8f2",
    "Call-ID: 7c1d2f93-options@pbx.example.com",
    "CSeq: 1 OPTIONS",
    "Accept: application/sdp",
)

REGISTER = wire(
    "REGISTER sip:pbx.example.com SIP/2.0",
    "Via: SIP/2.0/UDP 198.51.100.4:5060;branch=z9hG4bKreg1;rport",
    "Max-Forwards: 70",
    "To: <sip:bridge@pbx.example.com>",
    "From: <sip:bridge@pbx.example.com>;tag=reg-41b2",
    "Call-ID: reg-9e0d4c@198.51.100.4",
    "CSeq: 1 REGISTER",
    "Contact: <sip:bridge@198.51.100.4:5060>;expires=3600"
    ';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"',
    "Expires: 3600",
)

CHALLENGE = wire(
    "SIP/2.0 401 Unauthorized",
    "Via: SIP/2.0/UDP 198.51.100.4:5060;branch=z9hG4bKreg1;rport=5060;received=198.51.100.4",
    "To: <sip:bridge@pbx.example.com>;tag=pbx-0b1e",
    "From: <sip:bridge@pbx.example.com>;tag=reg-41b2",
    "Call-ID: reg-9e0d4c@198.51.100.4",
    "CSeq: 1 REGISTER",
    'WWW-Authenticate: Digest realm="pbx.example.com", nonce="5f2a0c1e9b", '
    'algorithm=MD5, qop="auth"',
)

# A digest trunk's INVITE sent again with its answer to our 401 (RFC 3261
# section 22.2; the response is RFC 2617's worked example's).
INVITE_DIGEST = wire(
    "INVITE sip:visit@192.0.2.1 SIP/2.0",
    _TRUNK_VIA.replace("z9hG4bK2d4790.1", "z9hG4bK2d4790.2"),
    "Max-Forwards: 70",
    "To: <sip:visit@192.0.2.1>",
    'From: "+923001234534" <sip:+923001234534@192.0.2.7>;tag=1928301774',
    "Call-ID: a84b4c76e66710@192.0.2.7",
    "CSeq: 2 INVITE",
    "Contact: <sip:trunk@192.0.2.7:5060>",
    'Authorization: Digest username="shifa", realm="wadud", nonce="1000.000.9f1c",'
    ' uri="sip:visit@192.0.2.1", response="6629fae49393a05397450978507c4ef1",'
    ' algorithm=MD5, qop=auth, nc=00000001, cnonce="0a4f113b"',
)

#: Every sample, by the name fuzz/seed.py gives its seed file.
ALL = {
    "invite-sdp": INVITE,
    "200-ok-sdp": OK,
    "ack": ACK,
    "info-dtmf-relay": INFO,
    "bye-compact": BYE,
    "options-ipv6-tcp": OPTIONS,
    "register": REGISTER,
    "401-challenge": CHALLENGE,
    "invite-digest": INVITE_DIGEST,
}
