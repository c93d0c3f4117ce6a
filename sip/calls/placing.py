"""The requests of a call the bridge places (dial-out), written without I/O:
our INVITE, the ACK of its 2xx (RFC 3261 section 13.2.2.4) and its CANCEL
(section 9.1). :class:`sip.calls.agent.UserAgent` sends them and keeps the
dialog.
"""

from __future__ import annotations

import secrets

from sip.wire.fields import CSeq, NameAddr
from sip.wire.headers import Headers
from sip.wire.message import Request

__all__ = ["ALLOW", "ack", "cancel", "invite"]

#: The methods the bridge takes (RFC 3261 section 20.5).
ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO"


def invite(contact: str, target: str, call_id: str, local_tag: str, offer: str) -> Request:
    """Our INVITE to ``target`` with the SDP ``offer``, from our ``contact``
    (a SIP URI) with ``local_tag``. No Via: the endpoint writes ours into
    this same request, which a CANCEL then copies."""
    own = NameAddr.parse(f"<{contact}>")
    headers = Headers()
    headers.add("Max-Forwards", "70")
    headers.add("From", str(own.with_tag(local_tag)))
    headers.add("To", str(NameAddr.parse(f"<{target}>")))
    headers.add("Call-ID", call_id)
    headers.add("CSeq", str(CSeq(1, "INVITE")))
    headers.add("Contact", str(own))
    headers.add("Allow", ALLOW)
    headers.add("Content-Type", "application/sdp")
    return Request("INVITE", target, headers, offer.encode())


def ack(request: Request, to: str, remote_target: str, contact: str, reliable: bool) -> Request:
    """The ACK of the 2xx to our INVITE ``request``: the dialog's, sent to
    the far end's ``remote_target`` outside any transaction, so it carries a
    Via of its own (our ``contact``'s host and port); ``to`` is the far end
    with its tag."""
    uri = NameAddr.parse(f"<{contact}>").uri
    transport = "TCP" if reliable else "UDP"
    via = f"SIP/2.0/{transport} {uri.host}:{uri.port or 5060}"
    headers = Headers()
    headers.add("Via", f"{via};branch=z9hG4bK{secrets.token_hex(8)};rport")
    headers.add("Max-Forwards", "70")
    headers.add("From", request.headers.get("From") or "")
    headers.add("To", to)
    headers.add("Call-ID", request.headers.get("Call-ID") or "")
    headers.add("CSeq", str(CSeq(1, "ACK")))
    return Request("ACK", remote_target, headers)


def cancel(request: Request) -> Request:
    """The CANCEL of our unanswered INVITE ``request``: its Request-URI,
    Call-ID, From, To, CSeq number and top Via, branch included."""
    headers = Headers()
    for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
        value = request.headers.get(name)
        if value is not None:
            headers.add(name, value)
    headers.add("CSeq", str(CSeq(1, "CANCEL")))
    return Request("CANCEL", request.uri, headers)
