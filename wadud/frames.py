"""The JSON frame envelope our WebSocket protocols share (chat, call signalling).

Every frame is one JSON object ``{"v": 1, "type": ..., "id": ..., ...}`` in a
text message (RFC 6455 section 5.6). ``v`` is the protocol version (absent
means 1); ``id`` is an optional client-chosen request id that the server
echoes as ``ref`` on the answer or error, so a client can match them. An
:class:`Envelope` turns a text frame into one of a protocol's typed client
frames or raises a :class:`ProtocolError` carrying the ``error`` frame's
``code``; server frames are plain dicts built by :func:`reply` and
:func:`error_frame` and serialised with :func:`encode`.

Only the envelope lives here; each protocol keeps its frames, its extra
checks (hooks of its :class:`Envelope`) and its docs in docs/protocol.md.
No I/O here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, NamedTuple, TypeVar, get_args

import pydantic
from pydantic import BaseModel, ConfigDict, StringConstraints

from wadud import jsonin
from wadud.errors import BadRequest

VERSION = 1

__all__ = [
    "SHARED_ERRORS",
    "VERSION",
    "BadFrame",
    "Envelope",
    "ErrorFamily",
    "Frame",
    "InvalidFrame",
    "ProtocolError",
    "RequestId",
    "UnknownType",
    "UnsupportedVersion",
    "encode",
    "error_frame",
    "reply",
    "sound_text",
    "types_of",
]


class ProtocolError(BadRequest):
    """The peer sent something the protocol does not allow. ``code`` is the
    ``error`` frame's code; ``ref`` the offending frame's ``id`` when it had a
    usable one. A ``BadRequest``, hence also a ``ValueError``."""

    code = "bad-frame"
    title = "Malformed frame"

    def __init__(self, detail: str, *, ref: str | None = None) -> None:
        super().__init__(detail)
        self.ref = ref


class BadFrame(ProtocolError):
    """Not JSON, not an object, no string ``type``."""

    code = "bad-frame"


class UnsupportedVersion(ProtocolError):
    code = "unsupported-version"
    title = "Unsupported protocol version"


class UnknownType(ProtocolError):
    code = "unknown-type"
    title = "Unknown frame type"


class InvalidFrame(ProtocolError):
    """A field missing, of the wrong type, out of range or unknown; ``errors``
    lists each (pydantic's locations and messages, never the input, so a
    token or message body is not echoed back)."""

    code = "invalid"
    title = "Invalid frame fields"

    def __init__(
        self, detail: str, *, ref: str | None = None, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail, ref=ref)
        self.errors = errors or []


class ErrorFamily(NamedTuple):
    """The classes an :class:`Envelope` raises: a protocol whose code catches
    errors by its package root passes subclasses that also inherit that root."""

    bad_frame: type[BadFrame] = BadFrame
    unsupported_version: type[UnsupportedVersion] = UnsupportedVersion
    unknown_type: type[UnknownType] = UnknownType
    invalid: type[InvalidFrame] = InvalidFrame


#: The shared classes themselves, for a protocol with no root of its own to add.
SHARED_ERRORS = ErrorFamily()

RequestId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class Frame(BaseModel):
    """The base of every client frame: strict (JSON has the types it has),
    closed (an unknown field is an error, not silently dropped) and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = 1
    id: RequestId | None = None


F = TypeVar("F", bound=Frame)

#: Before validation: the decoded object, the model its ``type`` names and the
#: ``ref``; returns the object to validate (or raises a ProtocolError).
Prepare = Callable[[dict[str, Any], type[Frame], str | None], dict[str, Any]]
#: After validation: the frame and the ``ref``; raises a ProtocolError to refuse it.
Check = Callable[[Frame, str | None], None]


def types_of(union: object) -> dict[str, type[Frame]]:
    """The ``type`` -> model table of a union of client frames, so a protocol
    names each frame once (in its ``ClientFrame`` union)."""
    models: tuple[type[Frame], ...] = get_args(union)
    return {m.model_fields["type"].default: m for m in models}


def sound_text(text: str) -> bool:
    """True if ``text`` encodes as UTF-8. A JSON escape can smuggle in a lone
    surrogate, which is no character at all and could not be sent back out."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Envelope(Generic[F]):
    """One protocol's parser: ``types`` maps each client ``type`` to its model."""

    types: Mapping[str, type[F]]
    errors: ErrorFamily = SHARED_ERRORS
    prepare: Prepare | None = None
    check: Check | None = None

    def parse(self, text: str | bytes) -> F:
        """One client frame from a text frame; a :class:`ProtocolError` (of
        ``errors``) if it is not one. The checks run in a fixed order, so the
        same bad frame always gets the same code: JSON, object, version,
        ``type``, known type, then the fields."""
        errors = self.errors
        try:
            data = jsonin.loads(text, "the frame")
        except jsonin.JsonTooDeep as exc:
            raise errors.bad_frame(exc.detail) from None
        except jsonin.NotJson:
            raise errors.bad_frame("the frame is not valid JSON") from None
        if not isinstance(data, dict):
            raise errors.bad_frame("a frame is a JSON object")
        raw_id = data.get("id")
        # Echoed only when it would itself pass as an ``id``.
        ok_id = isinstance(raw_id, str) and 0 < len(raw_id) <= 64 and sound_text(raw_id)
        ref = raw_id if ok_id else None
        version = data.get("v", VERSION)
        # True == 1 in Python; JSON's true is not a version.
        if version != VERSION or isinstance(version, bool):
            raise errors.unsupported_version(f"this server speaks version {VERSION}", ref=ref)
        kind = data.get("type")
        if not isinstance(kind, str):
            raise errors.bad_frame('a frame needs a string "type"', ref=ref)
        model = self.types.get(kind)
        if model is None:
            raise errors.unknown_type(f"unknown frame type {kind[:40]!r}", ref=ref)
        if self.prepare is not None:
            data = self.prepare(data, model, ref)
        try:
            frame = model.model_validate(data)
        except pydantic.ValidationError as exc:
            found = [
                {"loc": [str(p) for p in e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_input=False, include_context=False)
            ]
            first = found[0]
            raise errors.invalid(
                f"{'.'.join(first['loc']) or 'frame'}: {first['msg']}", ref=ref, errors=found
            ) from None
        if self.check is not None:
            self.check(frame, ref)
        return frame


def encode(frame: Frame | dict[str, Any]) -> str:
    """A frame as the JSON text sent on the wire (UTF-8 as is, not escaped:
    Urdu and Arabic travel as themselves)."""
    if isinstance(frame, Frame):
        fields = type(frame).model_fields
        # Leave out a None only where None is the default, so an explicit
        # null that means something (chat's ``"after": null``, signalling's
        # ``"candidate": null``) survives the round trip.
        data = {
            k: v
            for k, v in frame.model_dump(mode="json").items()
            if v is not None or fields[k].default is not None
        }
    else:
        data = frame
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def reply(kind: str, ref: str | None = None, **fields: Any) -> dict[str, Any]:
    """A server frame: an answer (with ``ref``) or an event (without)."""
    frame: dict[str, Any] = {"v": VERSION, "type": kind, **fields}
    if ref is not None:
        frame["ref"] = ref
    return frame


def error_frame(
    code: str, message: str, *, ref: str | None = None, fatal: bool = False, **extra: Any
) -> dict[str, Any]:
    """An ``error`` frame; ``fatal`` when the server closes right after it."""
    frame = reply("error", ref, code=code, message=message)
    if fatal:
        frame["fatal"] = True
    frame.update(extra)
    return frame
