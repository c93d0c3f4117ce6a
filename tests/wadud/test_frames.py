"""The shared frame envelope (wadud.frames), without sockets: the checks run
in their documented order, a protocol's own error classes and hooks are the
ones used, and nothing but a ProtocolError escapes parse."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.wadud.framing import OUTCOMES, outcome
from wadud import frames
from wadud.errors import BadRequest


class Hello(frames.Frame):
    type: Literal["hello"] = "hello"
    name: str
    after: int | None = 0
    note: str | None = None


class Bye(frames.Frame):
    type: Literal["bye"] = "bye"


TYPES = frames.types_of(Hello | Bye)
PLAIN = frames.Envelope(TYPES)


class Root(Exception):
    """Stands for a package root such as SignallingError."""


class MyBad(frames.BadFrame, Root):
    pass


class MyVersion(frames.UnsupportedVersion, Root):
    pass


class MyUnknown(frames.UnknownType, Root):
    pass


class MyInvalid(frames.InvalidFrame, Root):
    pass


def test_types_of_names_each_model_by_its_type() -> None:
    assert {"hello": Hello, "bye": Bye} == TYPES


@pytest.mark.parametrize(
    ("text", "error", "code", "ref"),
    [
        ("not json", MyBad, "bad-frame", None),
        ("[1]", MyBad, "bad-frame", None),
        ('{"v": 2, "type": "nope", "id": "a"}', MyVersion, "unsupported-version", "a"),
        ('{"v": true, "type": "bye", "id": "a"}', MyVersion, "unsupported-version", "a"),
        ('{"type": 3, "id": "a"}', MyBad, "bad-frame", "a"),
        ('{"type": "nope", "id": "a"}', MyUnknown, "unknown-type", "a"),
        ('{"type": "hello", "id": "a"}', MyInvalid, "invalid", "a"),
        # An id that could not itself be valid is not echoed.
        ('{"type": "hello", "id": ""}', MyInvalid, "invalid", None),
        ('{"type": "hello", "id": "\\ud800"}', MyInvalid, "invalid", None),
        # Nested past wadud.jsonin.MAX_DEPTH, however deep (issue 35).
        ("[" * 100_000 + "]" * 100_000, MyBad, "bad-frame", None),
        ('{"type": "hello", "x": ' + "[" * 65 + "]" * 65 + "}", MyBad, "bad-frame", None),
    ],
)
def test_each_refusal_raises_the_protocols_class(
    text: str, error: type[frames.ProtocolError], code: str, ref: str | None
) -> None:
    envelope = frames.Envelope(
        TYPES, errors=frames.ErrorFamily(MyBad, MyVersion, MyUnknown, MyInvalid)
    )
    with pytest.raises(error) as info:
        envelope.parse(text)
    assert isinstance(info.value, Root)
    assert isinstance(info.value, BadRequest)
    assert isinstance(info.value, ValueError)
    assert (info.value.code, info.value.ref) == (code, ref)
    # The same text through the shared classes gets the same code.
    with pytest.raises(frames.ProtocolError) as plain:
        PLAIN.parse(text)
    assert not isinstance(plain.value, Root)
    assert plain.value.code == code


def test_invalid_lists_fields_without_the_input() -> None:
    with pytest.raises(frames.InvalidFrame) as info:
        PLAIN.parse('{"type": "hello", "name": 5, "secret": "s3cr3t"}')
    assert info.value.detail == "name: Input should be a valid string"
    assert {tuple(e["loc"]) for e in info.value.errors} == {("name",), ("secret",)}
    assert "s3cr3t" not in json.dumps(info.value.errors)


def test_hooks_run_around_validation_in_order() -> None:
    seen: list[str] = []

    def prepare(data: dict[str, Any], model: type[frames.Frame], ref: str | None) -> dict[str, Any]:
        seen.append(f"prepare {model.__name__} {ref}")
        return {**data, "name": data["name"].upper()}

    def check(frame: frames.Frame, ref: str | None) -> None:
        seen.append(f"check {frame.type if isinstance(frame, Hello) else '?'} {ref}")
        if isinstance(frame, Hello) and frame.name == "NO":
            raise frames.InvalidFrame("name: refused", ref=ref)

    envelope = frames.Envelope(TYPES, prepare=prepare, check=check)
    frame = envelope.parse('{"type": "hello", "name": "amna", "id": "1"}')
    assert frame == Hello(name="AMNA", id="1")
    assert seen == ["prepare Hello 1", "check hello 1"]
    with pytest.raises(frames.InvalidFrame, match="refused"):
        envelope.parse('{"type": "hello", "name": "no"}')


def test_encode_keeps_a_null_that_is_not_the_default() -> None:
    assert json.loads(frames.encode(Hello(name="ڈاکٹر", after=None))) == {
        "v": 1,
        "type": "hello",
        "name": "ڈاکٹر",
        "after": None,
    }
    assert "ڈاکٹر" in frames.encode(Hello(name="ڈاکٹر"))
    assert frames.encode(Hello(name="x")) == '{"v":1,"type":"hello","name":"x","after":0}'


def test_server_frames() -> None:
    assert frames.reply("ok", "r", n=1) == {"v": 1, "type": "ok", "n": 1, "ref": "r"}
    assert frames.reply("joined") == {"v": 1, "type": "joined"}
    assert frames.encode(frames.error_frame("x", "m", ref="r", fatal=True, errors=[])) == (
        '{"v":1,"type":"error","code":"x","message":"m","ref":"r","fatal":true,"errors":[]}'
    )
    assert "fatal" not in frames.error_frame("x", "m")


@given(st.text() | st.binary())
def test_parse_arbitrary_input_only_raises_protocol_errors(data: str | bytes) -> None:
    assert outcome(PLAIN.parse, frames.ProtocolError, data) in OUTCOMES
