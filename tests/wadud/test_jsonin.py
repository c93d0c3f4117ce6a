"""The one reader of JSON from outside (:mod:`wadud.jsonin`): the depth limit
is exact, brackets in strings do not count, and no input, however deep or
odd, raises anything but :class:`~wadud.jsonin.NotJson` (the
``RecursionError`` of issue 35 was a 500)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.wadud.framing import json_values
from wadud import jsonin
from wadud.jsonin import MAX_DEPTH, JsonTooDeep, NotJson
from wadud.web.api import ApiModel


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _nested(depth: int, kind: str) -> Any:
    value: Any = "[{" * 40  # brackets in a string are no nesting
    for level in range(depth):
        value = [value] if kind == "list" or (kind == "mixed" and level % 2) else {"k": value}
    return value


@pytest.mark.parametrize("kind", ["list", "dict", "mixed"])
@pytest.mark.parametrize("encoding", ["str", "utf-8", "utf-16", "utf-32-be"])
def test_the_limit_is_exact(kind: str, encoding: str) -> None:
    for depth, ok in ((MAX_DEPTH, True), (MAX_DEPTH + 1, False)):
        text = json.dumps(_nested(depth, kind))
        data: str | bytes = text if encoding == "str" else text.encode(encoding)
        if ok:
            assert jsonin.loads(data) == _nested(depth, kind)
        else:
            with pytest.raises(JsonTooDeep) as info:
                jsonin.loads(data)
            assert (info.value.http_status, info.value.code) == (400, "json-too-deep")


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"a":' * 100_000 + "1" + "}" * 100_000,
        "[" * 1_048_576,
        # A string the scan must not let swallow real brackets after it.
        '["\\\\", ' + "[" * 5_000 + "]" * 5_000 + "]",
        '["\\"]", ' + "[" * 5_000,
    ],
)
def test_deep_input_is_refused_before_the_parser_recurses(text: str) -> None:
    with pytest.raises(JsonTooDeep):
        jsonin.loads(text)
    with pytest.raises(JsonTooDeep):
        jsonin.loads(text.encode("utf-16"))


def test_an_unterminated_string_ends_the_text_for_the_scan_and_the_parser() -> None:
    with pytest.raises(NotJson) as info:
        jsonin.loads('["abc' + "[" * 100_000)
    assert not isinstance(info.value, JsonTooDeep)


def test_not_json_is_a_400_and_a_value_error() -> None:
    for data in (b"\xff\xfe\xfd", b"{nope", "", b"[1,]", "NaN]"):
        with pytest.raises(NotJson) as info:
            jsonin.loads(data, "the IPN")
        assert isinstance(info.value, ValueError)
        assert info.value.http_status == 400 and info.value.detail.startswith("the IPN")


class _Deep(ApiModel):
    x: Any = None


def test_a_models_body_is_held_to_the_same_limit() -> None:
    ok = json.dumps({"x": _nested(MAX_DEPTH - 1, "list")}).encode()
    assert jsonin.validate(_Deep, ok).x == _nested(MAX_DEPTH - 1, "list")
    for deep in (
        json.dumps({"x": _nested(MAX_DEPTH, "list")}).encode(),
        b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    ):
        with pytest.raises(JsonTooDeep):
            jsonin.validate(_Deep, deep)
    with pytest.raises(NotJson):
        jsonin.validate(_Deep, b'{"x": ')


@given(json_values)
def test_values_within_the_limit_read_back(value: Any) -> None:
    assert jsonin.loads(json.dumps(value)) == value


@given(st.integers(0, 3 * MAX_DEPTH), st.sampled_from(["list", "dict", "mixed"]))
def test_the_scan_agrees_with_the_depth_of_the_value(depth: int, kind: str) -> None:
    value = _nested(depth, kind)
    text = json.dumps(value)
    if _depth(value) <= MAX_DEPTH:
        assert jsonin.loads(text) == value
    else:
        with pytest.raises(JsonTooDeep):
            jsonin.loads(text)


@given(st.text(alphabet='[]{}",:\\ 1a\ud800', max_size=400), st.integers(0, 3000))
def test_any_text_parses_or_is_not_json(text: str, deep: int) -> None:
    """Nothing else escapes, however it is nested and quoted."""
    for data in (text + "[" * deep, "[" * deep + text):
        with contextlib.suppress(NotJson):
            jsonin.loads(data)
