"""JSON that comes from outside: request bodies, WebSocket frames, payment
gateways' notifications and answers. Every such read goes through here, so
each is bounded the same way:

- Size: at most the app's ``max_body_bytes`` (1 MiB; aiohttp's
  ``client_max_size`` stops the read), or less where a route asks; more is
  a 413 ``payload-too-large``, from ``Content-Length`` before reading where
  it is sent. A WebSocket frame is bounded by its socket's ``max_msg_size``.
- Depth: at most :data:`MAX_DEPTH` arrays and objects nested in each other;
  deeper is a 400 :class:`JsonTooDeep` (``json-too-deep``). The standard
  library's parser recurses in C once per level and raises
  ``RecursionError`` near a thousand levels: no ``ValueError``, so it went
  past every handler's ``except`` as a 500 with a traceback.

The depth is measured before parsing, so the parser never goes deep. A text
with no more opening brackets than the limit cannot be deeper and is not
scanned (nearly every body and frame); otherwise strings are cut out with one
linear regular expression and the brackets' running depth is summed in C:
cheaper than parsing the same text (docs/api.md gives the measured cost).
The parser stays the standard library's, so what counts as JSON is what it
always was; pydantic's (``model_validate_json``) gets the same check first.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Final, TypeVar

import pydantic
from aiohttp import web

from wadud.errors import BadRequest, PayloadTooLarge

__all__ = [
    "MAX_DEPTH",
    "JsonTooDeep",
    "NotJson",
    "check",
    "loads",
    "read_bytes",
    "validate",
]

#: Arrays and objects nested in each other. Our own documents nest at most
#: five or six deep (a Stripe-shaped event: event, data, object, metadata);
#: code that walks a parsed value (``json.dumps`` into jsonb, pydantic) stays
#: far from Python's recursion limit.
MAX_DEPTH: Final = 64

M = TypeVar("M", bound=pydantic.BaseModel)

# A string, to its closing quote or to the end if it has none (the parser
# stops there too, so nothing after it is read); linear, no backtracking.
_STRING: Final = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"?', re.DOTALL)
# Openers to +1 and closers to -1 (as signed bytes), everything else gone.
_STEPS: Final = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")
_NOT_BRACKET: Final = bytes(c for c in range(256) if c not in b"[]{}")


class NotJson(BadRequest):
    """The text is not JSON (RFC 8259); a ``ValueError`` too, so callers that
    turned ``json.loads``'s errors into their own still do."""


class JsonTooDeep(NotJson):
    code = "json-too-deep"
    title = "JSON nested too deep"


def _openers(data: str | bytes) -> int:
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def _refuse_deep(text: str, what: str) -> None:
    """:class:`JsonTooDeep` if ``text`` nests brackets more than
    :data:`MAX_DEPTH` deep. The depth at a point is the openers before it
    less the closers, of either kind (a mismatch is the parser's to find, and
    it stops there); the running sum and its maximum are taken in C."""
    if _openers(text) <= MAX_DEPTH:
        return
    steps = _STRING.sub("", text).encode("utf-8", "surrogatepass")
    steps = steps.translate(_STEPS, _NOT_BRACKET)
    if max(accumulate(memoryview(steps).cast("b")), default=0) > MAX_DEPTH:
        raise JsonTooDeep(f"{what} nests arrays and objects more than {MAX_DEPTH} deep")


def _text(data: str | bytes, what: str) -> str:
    """``data`` as text, decoded as ``json.loads`` decodes bytes (UTF-8, -16
    or -32, told by the first bytes), so the depth is measured on exactly
    what the parser reads."""
    if isinstance(data, str):
        return data
    try:
        return data.decode(json.detect_encoding(data), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise NotJson(f"{what} is not valid JSON: {exc}") from None


def check(data: str | bytes, what: str = "the body") -> None:
    """Refuse ``data`` as :func:`loads` would for its depth, without parsing
    it: for a caller whose own parser reads it next."""
    if _openers(data) > MAX_DEPTH:
        _refuse_deep(_text(data, what), what)


def loads(data: str | bytes, what: str = "the body") -> Any:
    """The value of the JSON text ``data``: :class:`NotJson` if it is not
    JSON, :class:`JsonTooDeep` past :data:`MAX_DEPTH`. ``what`` names it in
    the error's detail."""
    text = _text(data, what)
    _refuse_deep(text, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise NotJson(f"{what} is not valid JSON: {exc}") from None


def validate(model: type[M], data: bytes, *, context: Any = None) -> M:
    """``model`` from the JSON body ``data``, validated in JSON mode (strict),
    within :data:`MAX_DEPTH`; pydantic's own ``ValidationError`` for values
    that are JSON but not a ``model``."""
    check(data)
    try:
        return model.model_validate_json(data or b"", strict=True, context=context)
    except pydantic.ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            raise NotJson("the body is not valid JSON") from exc
        raise


async def read_bytes(request: web.Request, limit: int | None = None) -> bytes:
    """A request body: 413 past ``limit`` bytes (None: only the app's
    ``client_max_size``, past which aiohttp's own 413 stops the read). A
    ``Content-Length`` over the limit is refused before anything is read."""
    if limit is not None and (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"the body is at most {limit} bytes")
    data = await request.read()
    if limit is not None and len(data) > limit:
        raise PayloadTooLarge(f"the body is at most {limit} bytes")
    return data
