"""Hypothesis strategies for the SIP wire layer's values and messages, as
our own code builds them: every one must survive a trip to text and back."""

from __future__ import annotations

import string

from hypothesis import strategies as st

from sip.wire.fields import CSeq, NameAddr, Via
from sip.wire.headers import Headers, canonical_name
from sip.wire.message import Request, Response
from sip.wire.uri import SipUri

TOKEN_CHARS = string.ascii_letters + string.digits + "-.!%*_+`'~"

tokens = st.text(TOKEN_CHARS, min_size=1, max_size=12)
lower_tokens = tokens.map(str.lower)

# Text a display name, reason phrase or header value may hold: anything but
# control characters (HTAB aside) and lone surrogates.
printable = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.just("\t"), max_size=24)
# What escaping must carry through a URI's parts: reserved, non-ASCII and NUL.
escapable = st.text(
    st.sampled_from(string.ascii_letters + "09-_.!~*'()[]/:&+$@;=?,% é\x00\t\"<>#大"),
    min_size=1,
    max_size=10,
)

hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9\-_]{0,8}[a-z0-9])?(\.[a-z0-9]{1,8}){0,3}", fullmatch=True
)
hosts = st.one_of(
    hostnames,
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
ports = st.none() | st.integers(0, 65535)

uri_params = st.dictionaries(escapable.map(str.lower), st.none() | escapable, max_size=3)


@st.composite
def sip_uris(draw: st.DrawFn, *, uri_headers: bool = True) -> SipUri:
    user = draw(st.none() | escapable)
    return SipUri(
        draw(st.sampled_from(("sip", "sips"))),
        user,
        draw(hosts),
        draw(ports),
        draw(uri_params),
        draw(st.dictionaries(escapable, escapable | st.just(""), max_size=2))
        if uri_headers
        else {},
        None if user is None else draw(st.none() | st.text("ab:@%&=+$,", max_size=6)),
    )


tel_uris = st.builds(
    lambda number, params: SipUri("tel", number, "", params=params),
    escapable,
    uri_params,
)
opaque_uris = st.builds(
    lambda scheme, rest: SipUri(scheme, rest, ""),
    st.from_regex(r"[a-z][a-z0-9+.\-]{0,6}", fullmatch=True).filter(
        lambda s: s not in ("sip", "sips", "tel")
    ),
    st.from_regex(r"[A-Za-z0-9\-_.!~*'()%;/?:@&=+$,\[\]#]{1,20}", fullmatch=True),
)


def uris(*, uri_headers: bool = True) -> st.SearchStrategy[SipUri]:
    return sip_uris(uri_headers=uri_headers) | tel_uris | opaque_uris


gen_values = st.one_of(
    st.none(),
    st.text(TOKEN_CHARS + ":[]", min_size=1, max_size=12),
    printable.map(lambda text: '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'),
)
header_params = st.dictionaries(lower_tokens, gen_values, max_size=3)

name_addrs = st.builds(NameAddr, printable, uris(), header_params)

via_params = st.dictionaries(
    lower_tokens.filter(lambda name: name != "rport"), gen_values, max_size=3
).flatmap(
    lambda params: st.builds(
        lambda rport: params if rport == "absent" else {**params, "rport": rport},
        st.sampled_from(("absent", None)) | st.integers(0, 65535).map(str),
    )
)
vias = st.builds(Via, tokens.map(str.upper), hosts, ports, via_params)
cseqs = st.builds(CSeq, st.integers(0, 2**31 - 1), tokens)

# Names our checks read, which a random extra header must not repeat.
_CHECKED = {"To", "From", "Call-ID", "CSeq", "Max-Forwards", "Content-Length", "Via"}
extra_headers = st.lists(
    st.tuples(tokens.filter(lambda name: canonical_name(name) not in _CHECKED), printable),
    max_size=6,
)


@st.composite
def headers_for(draw: st.DrawFn, method: str) -> Headers:
    hops = draw(st.lists(vias, min_size=1, max_size=3))
    fields: list[tuple[str, str]] = []
    if draw(st.booleans()):
        fields.append(("Via", ", ".join(map(str, hops))))
    else:
        fields += [(draw(st.sampled_from(("Via", "v"))), str(hop)) for hop in hops]
    fields += [
        (draw(st.sampled_from(("To", "t"))), str(draw(name_addrs))),
        (draw(st.sampled_from(("From", "f"))), str(draw(name_addrs))),
        ("Call-ID", draw(tokens) + "@" + draw(hostnames)),
        ("CSeq", str(CSeq(draw(st.integers(0, 2**31 - 1)), method))),
    ]
    if draw(st.booleans()):
        fields.append(("Max-Forwards", str(draw(st.integers(0, 255)))))
    fields += draw(extra_headers)
    return Headers(draw(st.permutations(fields)))


@st.composite
def requests(draw: st.DrawFn) -> Request:
    method = draw(tokens)
    uri = str(draw(uris(uri_headers=False)))
    return Request(method, uri, draw(headers_for(method)), draw(st.binary(max_size=64)))


@st.composite
def responses(draw: st.DrawFn) -> Response:
    return Response(
        draw(st.integers(100, 699)),
        draw(printable),
        draw(headers_for(draw(tokens))),
        draw(st.binary(max_size=64)),
    )


messages = requests() | responses()
