"""Signed page cursors (wadud.web.cursor): only ours decode, and an (instant,
id) cursor comes back with its types."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wadud.web import cursor

_KEY = "cursor-test-key-" + "c" * 32


@given(st.text(max_size=80))
def test_cursor_parser_never_fails_untyped(text: str) -> None:
    with contextlib.suppress(cursor.InvalidCursor):
        cursor.decode_instant_id(_KEY, "bookings", text)


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(2199, 12, 31),
        timezones=st.just(dt.UTC),
    ),
    st.uuids(),
)
def test_cursor_round_trip(when: dt.datetime, ident: uuid.UUID) -> None:
    text = cursor.encode_instant_id(_KEY, "bookings", when, ident)
    assert cursor.decode_instant_id(_KEY, "bookings", text) == (when, ident)
    # Signed: another deployment's key does not read it, nor another list.
    with pytest.raises(cursor.InvalidCursor):
        cursor.decode_instant_id(_KEY + "x", "bookings", text)
    with pytest.raises(cursor.InvalidCursor):
        cursor.decode_instant_id(_KEY, "reviews", text)


def test_an_instant_cursor_refuses_values_we_never_hand_out() -> None:
    for parts in (("2030-01-01T00:00:00", str(uuid.uuid4())), ("0001-01-01T00:00:00+00:00", "x")):
        text = cursor.encode(_KEY, "bookings", *parts)
        with pytest.raises(cursor.InvalidCursor):
            cursor.decode_instant_id(_KEY, "bookings", text)
