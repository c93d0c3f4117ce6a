"""A visit's recording and everyone's consent, in the room core
(signalling.room.consent through signalling.room.core): nothing starts until
all present agree, a late joiner is asked and sends nothing before answering,
one refusal stops it, and the adapter is told each step in order."""

from __future__ import annotations

from typing import Any

import pytest

from signalling import errors, protocol
from signalling.room.consent import ConsentAnswered, RecordingAsked, RecordingStart, RecordingStop
from signalling.room.core import Room
from signalling.room.outputs import MediaCloseRoom, Output
from tests.signalling.room.test_room import DOCTOR, FAMILY, PATIENT, frames, new_room, track
from wadud.web.roles import Action


def steps(outputs: list[Output]) -> list[Any]:
    return [
        o
        for o in outputs
        if isinstance(o, RecordingAsked | ConsentAnswered | RecordingStart | RecordingStop)
    ]


def states(outputs: list[Output], conn: str) -> list[str]:
    return [f["state"] for f in frames(outputs, conn) if f["type"] == "recording"]


def asked(outputs: list[Output], conn: str) -> list[str]:
    return [f["recording_id"] for f in frames(outputs, conn) if f["type"] == "recording_asked"]


def in_call() -> Room:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    room.join("c-pt", PATIENT, 0.0)
    room.join("c-fam", FAMILY, 0.0)
    return room


def ask(room: Room) -> tuple[str, list[Output]]:
    out = room.receive("c-doc", protocol.Record(on=True, id="r1"))
    [made] = [o for o in out if isinstance(o, RecordingAsked)]
    return made.recording_id, out


def test_nothing_starts_until_everyone_present_agrees() -> None:
    room = in_call()
    rid, out = ask(room)
    assert next(f["type"] for f in frames(out, "c-doc")) == "ok"
    # Everyone sees it is being asked; the two others are asked, the doctor is not.
    assert states(out, "c-pt") == states(out, "c-fam") == states(out, "c-doc") == ["asking"]
    assert asked(out, "c-pt") == asked(out, "c-fam") == [rid] and asked(out, "c-doc") == []
    assert [type(s) for s in steps(out)] == [RecordingAsked, ConsentAnswered]
    out = room.receive("c-pt", protocol.RecordingConsent(recording_id=rid, agree=True))
    assert not any(isinstance(s, RecordingStart) for s in steps(out))
    assert states(out, "c-doc") == []
    out = room.receive("c-fam", protocol.RecordingConsent(recording_id=rid, agree=True))
    answered, start = steps(out)
    assert answered == ConsentAnswered(rid, answered.voter, True)
    assert answered.voter.identity == FAMILY.identity
    assert start == RecordingStart(rid)
    for conn in ("c-doc", "c-pt", "c-fam"):
        assert states(out, conn) == ["on"]
    assert room.recording.view() == {"state": "on", "recording_id": rid, "requested_by": "p-1"}


def test_one_refusal_stops_it_while_asking_and_while_recording() -> None:
    room = in_call()
    rid, _ = ask(room)
    out = room.receive("c-pt", protocol.RecordingConsent(recording_id=rid, agree=False))
    assert steps(out)[-1] == RecordingStop(rid, "refused", started=False)
    [state] = [f for f in frames(out, "c-doc") if f["type"] == "recording"]
    assert state["state"] == "off" and state["reason"] == "refused" and state["by"] == "p-2"
    # A stale answer to that recording changes nothing.
    with pytest.raises(errors.BadState):
        room.receive("c-fam", protocol.RecordingConsent(recording_id=rid, agree=True))
    # Asked again: a new recording, everyone asked again.
    rid2, out = ask(room)
    assert rid2 != rid and asked(out, "c-pt") == [rid2]
    room.receive("c-pt", protocol.RecordingConsent(recording_id=rid2, agree=True))
    room.receive("c-fam", protocol.RecordingConsent(recording_id=rid2, agree=True))
    out = room.receive("c-fam", protocol.RecordingConsent(recording_id=rid2, agree=False))
    assert steps(out)[-1] == RecordingStop(rid2, "refused", started=True)


def test_a_late_joiner_is_asked_and_sends_nothing_before_answering() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    rid, out = ask(room)
    # Alone, the doctor's own request is everyone's agreement.
    assert RecordingStart(rid) in steps(out)
    res = room.join("c-pt", PATIENT, 1.0)
    [joined] = [f for f in frames(res.outputs, "c-pt") if f["type"] == "joined"]
    assert joined["recording"]["state"] == "on"
    assert asked(res.outputs, "c-pt") == [rid]
    with pytest.raises(errors.NotAllowed, match="recorded"):
        room.check_publish("c-pt", {Action.PUBLISH_VIDEO})
    room.receive("c-pt", protocol.RecordingConsent(recording_id=rid, agree=True))
    assert room.check_publish("c-pt", {Action.PUBLISH_VIDEO}).grant == PATIENT
    # A resume keeps the answer: not asked again.
    res = room.join("c-pt2", PATIENT, 2.0, resume=room.members.participants["p-2"].session)
    assert res.resumed and asked(res.outputs, "c-pt2") == []


def test_someone_already_sending_keeps_sending_while_asked() -> None:
    room = in_call()
    room.media.published("p-2", [track("t1", "p-2")], ())
    ask(room)
    assert room.check_publish("c-pt", {Action.PUBLISH_VIDEO}).id == "p-2"


def test_only_an_admin_records_or_stops_it() -> None:
    room = in_call()
    with pytest.raises(errors.NotAllowed):
        room.receive("c-pt", protocol.Record(on=True))
    rid, _ = ask(room)
    with pytest.raises(errors.BadState):
        ask(room)
    with pytest.raises(errors.NotAllowed):
        room.receive("c-pt", protocol.Record(on=False))
    out = room.receive("c-doc", protocol.Record(on=False))
    assert steps(out) == [RecordingStop(rid, "stopped", started=False)]
    with pytest.raises(errors.BadState):
        room.receive("c-doc", protocol.Record(on=False))


def test_an_undecided_one_leaving_lets_it_start() -> None:
    room = in_call()
    rid, _ = ask(room)
    room.receive("c-pt", protocol.RecordingConsent(recording_id=rid, agree=True))
    out = room.leave("c-fam")
    assert RecordingStart(rid) in steps(out)
    assert states(out, "c-doc") == ["on"]


def test_the_room_closing_stops_it_before_the_media_goes() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    rid, _ = ask(room)
    out = room.leave("c-doc")
    stops = [i for i, o in enumerate(out) if isinstance(o, RecordingStop)]
    closes = [i for i, o in enumerate(out) if isinstance(o, MediaCloseRoom)]
    assert stops and closes and stops[0] < closes[0]
    assert out[stops[0]] == RecordingStop(rid, "stopped", started=True)
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    rid, _ = ask(room)
    assert RecordingStop(rid, "stopped", started=True) in room.end("c-doc")


def test_a_failure_stops_it_and_says_so() -> None:
    room = in_call()
    rid, _ = ask(room)
    for conn in ("c-pt", "c-fam"):
        room.receive(conn, protocol.RecordingConsent(recording_id=rid, agree=True))
    assert room.recording_failed("other", "x") == []
    out = room.recording_failed(rid, "storage too slow")
    assert steps(out) == [RecordingStop(rid, "failed", started=True, detail="storage too slow")]
    assert [f["reason"] for f in frames(out, "c-pt") if f["type"] == "recording"] == ["failed"]


def test_a_taken_over_room_keeps_its_recording_and_answers() -> None:
    room = in_call()
    rid, _ = ask(room)
    room.receive("c-pt", protocol.RecordingConsent(recording_id=rid, agree=True))
    data = room.snapshot(0.0, lambda c: str(c))
    other = new_room()
    other.restore(data, 0.0, conn_of=lambda ref: ref, grant_of=lambda g: type(DOCTOR)(**g))
    assert other.recording.view() == room.recording.view()
    out = other.receive("c-fam", protocol.RecordingConsent(recording_id=rid, agree=True))
    assert RecordingStart(rid) in steps(out)


def test_the_frames_parse() -> None:
    assert protocol.parse('{"type": "record", "on": true}') == protocol.Record(on=True)
    frame = protocol.parse('{"type": "recording_consent", "recording_id": "r", "agree": false}')
    assert frame == protocol.RecordingConsent(recording_id="r", agree=False)
    with pytest.raises(protocol.InvalidFrame):
        protocol.parse('{"type": "recording_consent", "agree": "yes"}')


def test_the_call_s_media_moving_stops_it() -> None:
    room = in_call()
    rid, _ = ask(room)
    for conn in ("c-pt", "c-fam"):
        room.receive(conn, protocol.RecordingConsent(recording_id=rid, agree=True))
    out = room.media_reset("media-lost")
    [stop] = [s for s in steps(out) if isinstance(s, RecordingStop)]
    assert (stop.reason, stop.started) == ("failed", True) and "moved" in stop.detail
    assert states(out, "c-pt") == ["off"]
    # Nothing under way: nothing to stop.
    assert steps(room.media_reset("media-lost")) == []
