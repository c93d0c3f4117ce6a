"""The call signalling frames (signalling/protocol.py): JSON text from a WebSocket.

A frame either parses into a typed client frame, which must encode back to
JSON that parses to the same frame, or raises the protocol's
:class:`ProtocolError`, whose error frame (what the server sends back) must
encode as JSON. An offer or answer's SDP then goes to the SDP target's
checks, as the SFU would read it.
"""

from __future__ import annotations

import json

from fuzz import Finding
from fuzz.targets import sdp
from signalling import protocol
from wadud import frames


def _one(text: str | bytes) -> None:
    try:
        frame = protocol.parse(text)
    except protocol.ProtocolError as exc:
        json.loads(frames.encode(protocol.error_from(exc)))
        return
    encoded = frames.encode(frame)
    if protocol.parse(encoded) != frame:
        raise Finding("a signalling frame does not parse back from its own encoding")
    offer = getattr(frame, "sdp", None)
    if isinstance(offer, str):
        sdp.check(offer.encode("utf-8"))


def check(data: bytes) -> None:
    _one(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return  # aiohttp refuses a text frame that is not UTF-8
    _one(text)
