"""What the Hypothesis tests of every parser built on :mod:`wadud.frames`
(its plain envelope, chat's and the call's protocols) share: arbitrary JSON
values to put in a frame's fields, objects shaped like a protocol's frames
with such values in their fields, the outcome of parsing arbitrary
input, which is a frame or a protocol error with one of the envelope's
codes, never anything else, and the texts every protocol refuses for the
envelope alone."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from wadud import frames

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def frame_objects(
    models: Mapping[str, type[BaseModel]], max_size: int
) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects shaped like the frames of ``models`` (a protocol's
    ``type`` -> model table): a ``type`` of the table, and up to ``max_size``
    fields, each with an arbitrary JSON value, named from those its models
    have and one (``extra``) that none has."""
    fields = {name for model in models.values() for name in model.model_fields}
    return st.builds(
        lambda kind, values: {"type": kind, **values},
        st.sampled_from(sorted(models)),
        st.dictionaries(
            st.sampled_from(sorted(fields - {"type"} | {"extra"})), json_values, max_size=max_size
        ),
    )


#: What parsing arbitrary input may come to: a frame, or one of these codes.
OUTCOMES = frozenset({"parsed", "bad-frame", "unsupported-version", "unknown-type", "invalid"})


def outcome(
    parse: Callable[[str | bytes], object], error: type[frames.ProtocolError], data: str | bytes
) -> str:
    """``"parsed"``, or the wire code of the ``error`` that ``parse(data)``
    raised (any other exception propagates)."""
    try:
        parse(data)
    except error as exc:
        return exc.code
    return "parsed"


#: Texts that any protocol on the envelope refuses before reading its own
#: fields, each with the wire code of the error frame it answers.
ENVELOPE_REFUSALS: tuple[tuple[str, str], ...] = (
    ("{not json", "bad-frame"),
    ("[]", "bad-frame"),
    ("[1, 2]", "bad-frame"),
    (json.dumps({"type": 1, "id": "envelope-1"}), "bad-frame"),
    (json.dumps({"type": 7, "id": "envelope-2"}), "bad-frame"),
    (json.dumps({"type": "dance", "id": "envelope-3"}), "unknown-type"),
    (json.dumps({"v": 2, "type": "ping", "id": "envelope-4"}), "unsupported-version"),
    (json.dumps({"v": 3, "type": "ping", "id": "envelope-5"}), "unsupported-version"),
    # Nested past wadud.jsonin.MAX_DEPTH; 4,000 deep (the standard library's
    # parser gave up near 1,000) fits the 8 KiB frames the tests allow.
    ("[" * 4_000 + "]" * 4_000, "bad-frame"),
    ('{"type": "ping", "id": "envelope-6", "x": ' + "[" * 65 + "]" * 65 + "}", "bad-frame"),
)
