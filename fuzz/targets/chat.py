"""The chat's untrusted input: WebSocket frames (chat/protocol.py) and attachment uploads.

A frame parses into a typed client frame (which encodes back to the same
frame, and whose body passes or fails :func:`chat.protocol.check_body` with
its typed error) or raises the protocol's :class:`ProtocolError`. An upload
is judged by its first bytes (:func:`wadud.state.storage.sniff_type`): the type
found must be one chat accepts, and must really be what the bytes begin
with.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from chat import protocol
from fuzz import Finding
from wadud import frames
from wadud.state.storage import sniff_type

# The types upload_attachment (chat/http.py) accepts.
ACCEPTED = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"})
# What each accepted type's bytes start with (the WebP RIFF header has a size in between).
_STARTS = {
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/gif": (b"GIF87a", b"GIF89a"),
    "application/pdf": (b"%PDF-",),
}


def _upload(data: bytes) -> None:
    found = sniff_type(data)
    if found is None:
        return
    if found not in ACCEPTED:
        raise Finding(f"sniff_type found {found!r}, which chat does not accept")
    if found == "image/webp":
        if not (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise Finding("sniff_type called bytes WebP that are not")
    elif not data.startswith(_STARTS[found]):
        raise Finding(f"sniff_type called bytes {found!r} that do not start as one")


def _frame(text: str | bytes) -> None:
    try:
        frame = protocol.parse(text)
    except protocol.ProtocolError as exc:
        # The error frame chat/socket.py sends back (its refusal).
        extra: dict[str, Any] = {}
        if isinstance(exc, protocol.InvalidFrame):
            extra["errors"] = exc.errors
        json.loads(frames.encode(protocol.error_frame(exc.code, exc.detail, **extra)))
        return
    if protocol.parse(frames.encode(frame)) != frame:
        raise Finding("a chat frame does not parse back from its own encoding")
    body = getattr(frame, "body", None)
    if isinstance(body, str):
        with contextlib.suppress(protocol.ProtocolError):
            protocol.check_body(body, 4096)


def check(data: bytes) -> None:
    _upload(data)
    _frame(data)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return
    _frame(text)
