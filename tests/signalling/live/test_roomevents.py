"""What the room events observer (signalling.live.events) reads off a room
core, without sockets or a database: every webhook event of a visit, denied
and given-up waits, replacements, an ended room, a room that is no
booking's, and a room taken over by another replica."""

from __future__ import annotations

from typing import Any

from sfu.control.messages import TrackInfo
from signalling.live.events import ObservedRoom, changes
from signalling.room.core import Room
from signalling.room.outputs import Output
from tests.signalling.room.test_room import grant, new_room

BOOKING = "7b0c6a1e-5c55-4c1b-9a51-0d7f3f1e2a10"
DOCTOR = grant("dr-amina", "doctor", booking=BOOKING)
PATIENT = grant("pt-bilal", booking=BOOKING)


class Watch:
    """The observer's loop: the view kept between changes."""

    def __init__(self) -> None:
        self.view: ObservedRoom | None = None
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, core: Room, outputs: list[Output]) -> list[str]:
        found, self.view = changes(self.view, core, outputs)
        self.seen += [(c.name, c.data) for c in found]
        return [c.name for c in found]


def video(pid: str) -> TrackInfo:
    return TrackInfo(track_id="t-1", participant=pid, kind="video", source="camera", mid="0")


def test_a_visit_gives_every_event_once_in_order() -> None:
    room, watch = new_room(), Watch()
    pt = room.join("c-pt", PATIENT, 0.0)
    assert watch(room, pt.outputs) == ["room_started", "participant_waiting"]
    dr = room.join("c-dr", DOCTOR, 1.0)
    assert watch(room, dr.outputs) == ["participant_joined"]
    admitted = room.admit("c-dr", pt.participant.id)
    assert watch(room, admitted) == ["participant_admitted", "participant_joined"]
    published = room.media.published(dr.participant.id, [video(dr.participant.id)], ())
    assert watch(room, published) == ["track_published"]
    assert watch(room, room.leave("c-dr")) == ["track_unpublished", "participant_left"]
    assert watch(room, room.leave("c-pt")) == ["participant_left", "room_finished"]
    assert watch.view is None
    data = dict(watch.seen)
    assert data["track_published"]["track"] == {
        "id": "t-1", "kind": "video", "source": "camera", "participant": dr.participant.id,
    }  # fmt: skip
    assert data["participant_waiting"] == {
        "participant": {"id": pt.participant.id, "role": "patient"}
    }
    assert data["room_finished"] == {"reason": "empty"}
    # Nothing personal: no names or identities anywhere.
    assert "Bilal" not in repr(watch.seen) and "pt-bilal" not in repr(watch.seen)


def test_denied_given_up_and_replaced() -> None:
    room, watch = new_room(), Watch()
    room.members.require_admission = True
    watch(room, room.join("c-dr", DOCTOR, 0.0).outputs)
    pt = room.join("c-pt", PATIENT, 1.0)
    watch(room, pt.outputs)
    assert watch(room, room.deny("c-dr", pt.participant.id)) == ["participant_denied"]
    again = room.join("c-pt2", PATIENT, 2.0)
    watch(room, again.outputs)
    assert watch(room, room.disconnect("c-pt2", 3.0)) == ["participant_left"]
    assert watch.seen[-1][1]["reason"] == "left-waiting"
    # The doctor's new connection replaces the old participant.
    assert watch(room, room.join("c-dr2", DOCTOR, 4.0).outputs) == [
        "participant_left",
        "participant_joined",
    ]
    assert watch.seen[-2][1]["reason"] == "replaced"


def test_an_ended_room_says_everyone_left_then_finished() -> None:
    room, watch = new_room(), Watch()
    dr = room.join("c-dr", DOCTOR, 0.0)
    watch(room, dr.outputs)
    watch(room, room.media.published(dr.participant.id, [video(dr.participant.id)], ()))
    assert watch(room, room.end("c-dr")) == [
        "track_unpublished",
        "participant_left",
        "room_finished",
    ]
    assert watch.seen[-2][1]["reason"] == "room-ended"
    assert watch.seen[-1][1] == {"reason": "ended"}


def test_a_room_of_no_booking_and_a_taken_over_room_say_nothing() -> None:
    room, watch = new_room(), Watch()
    assert watch(room, room.join("c", grant("dr-x", "doctor"), 0.0).outputs) == []
    # A replica taking over a room sees two people at once: no re-announcement.
    taken, later = new_room(), Watch()
    taken.join("c-dr", DOCTOR, 0.0)
    taken.join("c-pt", PATIENT, 0.0)
    assert later(taken, []) == []
    assert later(taken, taken.leave("c-pt")) == ["participant_left"]
