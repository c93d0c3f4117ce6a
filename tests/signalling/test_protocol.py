"""The call frame codec, without sockets: every client frame of
docs/protocol.md parses and round-trips, bad input gets the documented codes
(and keeps its ``ref``), and nothing but a ProtocolError ever escapes parse."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signalling import errors
from signalling import protocol as p
from tests.wadud.framing import OUTCOMES, frame_objects, outcome

VALID: list[dict[str, Any]] = [
    {"type": "join", "token": "t.o.k"},
    {"type": "join", "token": "t.o.k", "resume": "SESSION", "id": "1"},
    {"type": "join", "token": "t.o.k", "name": "بلال احمد"},
    {
        "type": "join",
        "token": "t.o.k",
        "client": {"platform": "ios", "sdk": "react-native-webrtc", "version": "124.0.4"},
    },
    {
        "type": "join",
        "token": "t.o.k",
        "client": {"platform": "android", "sdk": "flutter_webrtc", "version": "0.12.0"},
    },
    {"type": "publish", "sdp": "v=0\r\n", "sources": {"0": "microphone", "1": "camera"}},
    {"type": "publish", "sdp": "v=0\r\n"},
    {"type": "answer", "sdp": "v=0\r\n", "id": "a"},
    {
        "type": "candidate",
        "transport": "publish",
        "candidate": {
            "candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "abcd",
        },
    },
    {"type": "candidate", "transport": "subscribe", "candidate": None},
    {"type": "mute", "track_id": "t-1", "muted": True},
    {"type": "unpublish", "track_id": "t-1"},
    {"type": "admit", "participant_id": "p-1"},
    {"type": "deny", "participant_id": "p-1"},
    {"type": "remove", "participant_id": "p-1"},
    {"type": "room_settings", "require_admission": False},
    {"type": "end", "v": 1},
    {"type": "record", "on": True, "id": "7"},
    {"type": "recording_consent", "recording_id": "rec-1", "agree": False},
    {"type": "approve_guest", "invite_id": "5b0e2c1d-9f3a-4b6e-8f00-2d1c3b4a5e6f", "agree": True},
    {"type": "call_phone", "id": "c1"},
    {"type": "call_phone", "number": "+923001234534"},
    {"type": "track_view", "track_id": "t-1", "width": 640, "height": 360, "visible": True},
    {"type": "track_view", "track_id": "t-1", "width": 0, "height": 0, "visible": False},
    {"type": "audio_only", "enabled": True, "id": "a1"},
    {"type": "ice_restart", "id": "r1"},
    {"type": "reconnect_media", "id": "r2"},
    {"type": "leave"},
    {"type": "ping", "id": "x" * 64},
    {"type": "pong"},
]


@pytest.mark.parametrize("data", VALID, ids=lambda d: str(d["type"]))
def test_every_client_frame_parses_and_round_trips(data: dict[str, Any]) -> None:
    frame = p.parse(json.dumps(data))
    assert frame.type == data["type"]
    assert frame.id == data.get("id")
    again = json.loads(p.encode(frame))
    # What was sent comes back as sent; defaults (``sources: {}``) are added.
    assert {k: again[k] for k in data} == data
    assert again["v"] == 1
    assert p.parse(p.encode(frame)) == frame


def test_every_documented_type_is_known() -> None:
    assert set(p.TYPES) == {str(d["type"]) for d in VALID}


def test_end_of_candidates() -> None:
    end = p.parse('{"type":"candidate","transport":"publish","candidate":null}')
    assert isinstance(end, p.Candidate) and end.end_of_candidates
    legacy = p.parse('{"type":"candidate","transport":"publish","candidate":{"candidate":""}}')
    assert isinstance(legacy, p.Candidate) and legacy.end_of_candidates
    some = p.parse(json.dumps(next(d for d in VALID if d["type"] == "candidate")))
    assert isinstance(some, p.Candidate) and not some.end_of_candidates


def test_unknown_keys_inside_a_browser_candidate_are_ignored_but_not_on_frames() -> None:
    frame = p.parse(
        '{"type":"candidate","transport":"publish","candidate":{"candidate":"c","relayProtocol":"udp"}}'
    )
    assert isinstance(frame, p.Candidate) and frame.candidate is not None
    with pytest.raises(p.InvalidFrame) as exc:
        p.parse('{"type":"leave","extra":1,"id":"r"}')
    assert exc.value.ref == "r"
    assert exc.value.errors[0]["loc"] == ["extra"]


def j(**kw: Any) -> str:
    return json.dumps(kw)


BAD: list[tuple[str | bytes, str, str | None]] = [
    ("{not json", "bad-frame", None),
    (b"\xff\xfe", "bad-frame", None),
    ("[1, 2]", "bad-frame", None),
    ('"join"', "bad-frame", None),
    (j(id="a"), "bad-frame", "a"),
    (j(type=7, id="b"), "bad-frame", "b"),
    (j(type="dance", id="c"), "unknown-type", "c"),
    (j(v=2, type="ping", id="d"), "unsupported-version", "d"),
    (j(v=True, type="ping", id="e"), "unsupported-version", "e"),
    (j(type="join", id="f"), "invalid", "f"),
    (j(type="join", token="", id="g"), "invalid", "g"),
    (j(type="join", token="x" * 5000, id="h"), "invalid", "h"),
    (j(type="publish", sdp="v=0", sources={"0": "webcam"}, id="i"), "invalid", "i"),
    (j(type="publish", sdp="v=0", sources={"a b": "camera"}, id="j"), "invalid", "j"),
    (j(type="publish", sdp=7, id="k"), "invalid", "k"),
    (j(type="mute", track_id="t", muted="yes", id="l"), "invalid", "l"),
    (j(type="mute", track_id="t", muted=1, id="m"), "invalid", "m"),
    (j(type="candidate", transport="both", candidate=None, id="n"), "invalid", "n"),
    (j(type="candidate", transport="publish", id="o"), "invalid", "o"),
    (j(type="admit", participant_id="", id="q"), "invalid", "q"),
    (j(type="room_settings", id="r"), "invalid", "r"),
    (j(type="call_phone", number="0300 1234567", id="r1"), "invalid", "r1"),
    (j(type="call_phone", number="+92" + "1" * 40, id="r2"), "invalid", "r2"),
    ('{"type":"join","token":"\\ud800","id":"s"}', "invalid", "s"),
    ('{"type":"ping","id":"\\udc00"}', "invalid", None),
    (j(type="ping", id=""), "invalid", None),
    (j(type="ping", id="x" * 65), "invalid", None),
    (j(type="join", token="t", name="", id="t1"), "invalid", "t1"),
    (j(type="join", token="t", name="   ", id="t2"), "invalid", "t2"),
    (j(type="join", token="t", name="x" * 65, id="t3"), "invalid", "t3"),
    (j(type="join", token="t", name="Dr\nAmina", id="t4"), "invalid", "t4"),
    (j(type="join", token="t", name="\u202eanimA", id="t5"), "invalid", "t5"),
    (j(type="join", token="t", name=7, id="t6"), "invalid", "t6"),
    (j(type="join", token="t", client={"platform": "symbian"}, id="t7"), "invalid", "t7"),
    (j(type="join", token="t", client={"sdk": "flutter_webrtc"}, id="t8"), "invalid", "t8"),
    (j(type="join", token="t", client={"platform": "ios", "grace": 600}, id="t9"), "invalid", "t9"),
    (
        j(type="track_view", track_id="t", width=-1, height=1, visible=True, id="u1"),
        "invalid",
        "u1",
    ),
    (j(type="track_view", track_id="t", width=1, height=16385, visible=True), "invalid", None),
    (j(type="track_view", track_id="t", width=1.5, height=1, visible=True), "invalid", None),
    (j(type="track_view", track_id="t", width="1", height=1, visible=True), "invalid", None),
    (j(type="track_view", track_id="t", width=1, height=1, visible=1), "invalid", None),
    (j(type="track_view", track_id="t", width=1, height=1), "invalid", None),
    (j(type="track_view", track_id="", width=1, height=1, visible=True), "invalid", None),
    (j(type="audio_only", id="w"), "invalid", "w"),
    (j(type="audio_only", enabled="yes"), "invalid", None),
]


@pytest.mark.parametrize(("text", "code", "ref"), BAD)
def test_bad_frames_get_typed_errors_with_their_ref(
    text: str | bytes, code: str, ref: str | None
) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.parse(text)
    assert exc.value.code == code
    assert exc.value.ref == ref
    assert isinstance(exc.value, ValueError)
    frame = p.error_from(exc.value)
    assert frame["type"] == "error" and frame["code"] == code and "fatal" not in frame
    assert frame.get("ref") == ref
    json.dumps(frame)  # always sendable


def test_error_frames_of_refusals_are_fatal_with_their_close_codes() -> None:
    cases = [
        (errors.BadRoomToken("x"), "unauthorized", 4401),
        (errors.WrongRoom("x"), "forbidden", 4403),
        (errors.RoomEnded("x"), "room-ended", 4410),
        (errors.RoomFull("x"), "room-full", 4429),
        (errors.JoinTimeout("x"), "join-timeout", 4408),
    ]
    for exc, code, close in cases:
        frame = p.error_from(exc, "r1")
        assert (frame["code"], frame["fatal"], frame["ref"]) == (code, True, "r1")
        assert exc.close_code == close
    for soft in (
        errors.NotJoined(),
        errors.NotAllowed(),
        errors.UnknownTarget(),
        errors.BadState(),
        errors.BadSdp(),
    ):
        assert soft.close_code is None and "fatal" not in p.error_from(soft)
    assert {e.code for e in (errors.NotJoined(), errors.NotAllowed(), errors.BadSdp())} == {
        "not-joined",
        "forbidden",
        "bad-sdp",
    }


def test_server_frames_keep_text_as_utf8() -> None:
    text = p.encode(p.reply("participant_joined", participant={"name": "ڈاکٹر آمنہ"}))
    assert "ڈاکٹر آمنہ" in text
    assert json.loads(text) == {
        "v": 1,
        "type": "participant_joined",
        "participant": {"name": "ڈاکٹر آمنہ"},
    }


@given(st.text() | st.binary())
def test_parse_arbitrary_input_only_raises_protocol_errors(data: str | bytes) -> None:
    assert outcome(p.parse, p.ProtocolError, data) in OUTCOMES


@settings(max_examples=300)
@given(frame_objects(p.TYPES, max_size=5))
def test_parse_frames_with_arbitrary_fields(obj: dict[str, Any]) -> None:
    text = json.dumps(obj)
    try:
        frame = p.parse(text)
    except p.ProtocolError as exc:
        code = exc.code
        json.dumps(p.error_from(exc))
    else:
        code = "parsed"
        # Whatever parses encodes back to the same frame.
        assert p.parse(p.encode(frame)) == frame
    assert code in OUTCOMES


def test_a_typed_name_is_trimmed_and_normalised() -> None:
    frame = p.parse(j(type="join", token="t", name="  Jose\u0301  "))
    assert isinstance(frame, p.Join)
    assert frame.name == "Jos\u00e9"


@given(st.text(max_size=80))
def test_names_that_parse_are_one_clean_line(name: str) -> None:
    try:
        frame = p.parse(j(type="join", token="t", name=name))
    except p.InvalidFrame:
        return
    assert isinstance(frame, p.Join) and frame.name is not None
    assert 0 < len(frame.name) <= 64 and frame.name == frame.name.strip()
    assert not any(c in frame.name for c in "\n\r\t\x00\u202e\u200b")


@given(
    st.integers(min_value=-10, max_value=20_000),
    st.integers(min_value=-10, max_value=20_000),
    st.booleans(),
)
def test_track_view_sizes_are_bounded(width: int, height: int, visible: bool) -> None:
    text = j(type="track_view", track_id="t-1", width=width, height=height, visible=visible)
    ok = 0 <= width <= 16_384 and 0 <= height <= 16_384
    try:
        frame = p.parse(text)
    except p.InvalidFrame:
        assert not ok
    else:
        assert ok and isinstance(frame, p.TrackView)
        assert (frame.width, frame.height, frame.visible) == (width, height, visible)


# -- server events ---------------------------------------------------------------

EVENTS: list[dict[str, Any]] = [
    {"type": "connection_quality", "participant_id": "p-1", "quality": "excellent"},
    {"type": "connection_quality", "participant_id": "p-1", "quality": "lost"},
    {"type": "track_paused", "track_id": "t-1", "paused": True, "reason": "bandwidth"},
    {"type": "track_paused", "track_id": "t-1", "paused": False, "reason": "hidden"},
    {
        "type": "set_encodings",
        "track_id": "t-1",
        "encodings": [{"rid": "q", "active": True}, {"rid": "f", "active": False}],
    },
    {"type": "participant_media", "participant_id": "p-1", "state": "reconnecting"},
    {"type": "participant_media", "participant_id": "p-1", "state": "connected"},
]


@pytest.mark.parametrize("data", EVENTS, ids=lambda d: str(d["type"]))
def test_server_events_build_and_read_back(data: dict[str, Any]) -> None:
    event = p.parse_event(data)
    sent = json.loads(p.encode(event.frame()))
    assert sent == {"v": 1, **data}
    assert p.parse_event(sent) == event


def test_every_server_event_is_listed() -> None:
    assert set(p.EVENTS) == {str(d["type"]) for d in EVENTS}
    assert p.QUALITIES == ("excellent", "good", "poor", "lost")


@pytest.mark.parametrize(
    "data",
    [
        {"type": "connection_quality", "participant_id": "p-1", "quality": "great"},
        {"type": "connection_quality", "participant_id": "p-1"},
        {"type": "track_paused", "track_id": "t-1", "paused": "yes", "reason": "bandwidth"},
        {"type": "track_paused", "track_id": "t-1", "paused": True, "reason": "boredom"},
        {"type": "set_encodings", "track_id": "t-1", "encodings": []},
        {"type": "set_encodings", "track_id": "t-1", "encodings": [{"rid": "a b", "active": True}]},
        {"type": "set_encodings", "track_id": "t-1", "encodings": [{"rid": "q", "active": 1}]},
        {"type": "set_encodings", "track_id": "t-1", "encodings": [{"rid": "q"}]},
        {"type": "offer", "sdp": "v=0"},
        {"quality": "good"},
    ],
)
def test_bad_server_events_are_value_errors(data: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        p.parse_event(data)


@given(frame_objects(p.EVENTS, max_size=5))
def test_reading_arbitrary_server_events_only_raises_value_errors(obj: dict[str, Any]) -> None:
    try:
        event = p.parse_event(obj)
    except ValueError:
        return
    assert p.parse_event(json.loads(p.encode(event.frame()))) == event
