"""Session descriptions (RFC 8866, JSEP RFC 8829) as a publisher's offer reaches the SFU.

The text is parsed; what parses must serialise to text that parses to the
same description; then the SFU answers it (:func:`sfu.transport.offer_answer.answer`)
and reads the tracks it is to forward (:func:`sfu.transport.offered.parse_tracks`), as
:class:`sfu.negotiation.negotiator.Negotiator` does with every offer a signalling frame
carries. A description the SFU cannot answer raises
:class:`SdpNegotiationError`; nothing else may escape.
"""

from __future__ import annotations

from fuzz import Finding
from rtc.errors import SdpError
from rtc.sdp.session import SessionDescription
from rtc.sdp.transport import Fingerprint
from sfu.transport.offer_answer import LocalParameters, answer
from sfu.transport.offered import parse_tracks

_LOCAL = [
    LocalParameters(
        ice_ufrag="Wd5u",
        ice_pwd="sfuPasswordOf24Chars0123",
        fingerprints=[Fingerprint("sha-256", ":".join(f"{i * 7 % 256:02X}" for i in range(32)))],
        addresses=[("127.0.0.1", 9), ("::1", 9)],
        session_id="1234567890",
        simulcast=simulcast,
    )
    for simulcast in (False, True)
]


def check(data: bytes) -> None:
    try:
        desc = SessionDescription.parse(data)
    except SdpError:
        return
    text = str(desc)
    again = SessionDescription.parse(text)
    if again != desc:
        raise Finding("a description does not parse back from its own text")
    if str(again) != text:
        raise Finding("a description's text is not stable across a round trip")
    for local in _LOCAL:
        try:
            answered = answer(desc, local)
            parse_tracks(desc, answered)
        except SdpError:
            continue
        SessionDescription.parse(str(answered))
