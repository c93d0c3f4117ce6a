"""A mobile app's longer resume grace in the room core, with a fake ``now``:
``joined`` states the grace that applies, a drop keeps the seat that long,
and a takeover from a snapshot keeps it too."""

from __future__ import annotations

from signalling.room.members import MemberState
from tests.signalling.room.test_room import DOCTOR, GRACE, PATIENT, frames, new_room, types

APP = 60.0


def test_joined_states_the_grace_and_a_drop_keeps_the_app_that_long() -> None:
    room = new_room()
    d = room.join("c-doc", DOCTOR, 0.0)
    assert frames(d.outputs, "c-doc")[0]["resume_grace"] == GRACE
    p = room.join("c-pt", PATIENT, 1.0, grace=APP)
    assert frames(p.outputs, "c-pt")[0]["resume_grace"] == APP
    room.disconnect("c-pt", 10.0)
    assert p.participant.deadline == 10.0 + APP
    assert room.get_timer() == 10.0 + APP
    # Past the web's grace, the app is still in.
    assert room.handle_timer(10.0 + GRACE + 1) == []
    back = room.join("c-pt2", PATIENT, 10.0 + APP - 1, resume=p.participant.session, grace=APP)
    assert back.resumed and back.participant.id == p.participant.id
    assert types(back.outputs, "c-pt2") == ["joined"]
    # The same person back from a browser gets the browser's.
    room.disconnect("c-pt2", 100.0)
    web = room.join("c-pt3", PATIENT, 101.0, resume=p.participant.session)
    assert frames(web.outputs, "c-pt3")[0]["resume_grace"] == GRACE
    room.disconnect("c-pt3", 102.0)
    out = room.handle_timer(102.0 + GRACE)
    left = [f for f in frames(out, "c-doc") if f["type"] == "participant_left"]
    assert [(f["participant_id"], f["reason"]) for f in left] == [(p.participant.id, "timeout")]


def test_a_takeover_keeps_the_app_grace() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    p = room.join("c-pt", PATIENT, 0.0, grace=APP)
    data = room.snapshot(5.0, lambda conn: f"r/{conn}")
    again = new_room()
    again.restore(
        data,
        50.0,
        conn_of=lambda ref: "c-doc" if ref == "r/c-doc" else None,
        grant_of=lambda g: DOCTOR if g["identity"] == DOCTOR.identity else PATIENT,
    )
    member = again.members.get(p.participant.id)
    assert member is not None and member.state is MemberState.DETACHED
    assert member.deadline == 50.0 + APP
