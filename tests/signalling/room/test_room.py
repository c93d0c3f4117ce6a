"""The room core without sockets or clocks: admission, the waiting room,
rights, replace and resume with a fake ``now``, tracks and subscriptions, and
a hypothesis state machine that drives random sequences through the
transition table and checks the room's invariants after every step."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sfu.control.messages import TrackInfo
from signalling import errors, protocol
from signalling.room.core import Room
from signalling.room.members import TRANSITIONS, MemberEvent, MemberState
from signalling.room.outputs import (
    Close,
    MediaCloseRoom,
    MediaLeave,
    Output,
    Resubscribe,
    SendFrame,
)
from wadud.web.auth import RoomGrant
from wadud.web.roles import Action

ROOM = "consult-1"
GRACE = 20.0


def grant(identity: str, role: str = "patient", **kw: Any) -> RoomGrant:
    fields: dict[str, Any] = {
        "room": ROOM,
        "identity": identity,
        "name": identity.title(),
        "role": role,
        "admin": role in ("doctor", "staff"),
    }
    fields.update(kw)
    return RoomGrant(**fields)


DOCTOR = grant("dr-amina", "doctor")
PATIENT = grant("pt-bilal")
FAMILY = grant("fam-sara")


def new_room(**kw: Any) -> Room:
    counter = itertools.count(1)
    sessions = itertools.count(1)
    args: dict[str, Any] = {
        "max_participants": 16,
        "resume_grace": GRACE,
        "ping_interval": 15.0,
        "ice_servers": lambda pid: [{"urls": ["turn:x"], "username": pid, "credential": "c"}],
        "new_id": lambda: f"p-{next(counter)}",
        "new_session": lambda: f"s-{next(sessions)}",
    }
    args.update(kw)
    return Room(ROOM, **args)


def joined_room(*people: tuple[str, RoomGrant]) -> Room:
    """A new room that each (connection, grant) of ``people`` joined, in
    order, at time 0."""
    room = new_room()
    for conn, person in people:
        room.join(conn, person, 0.0)
    return room


def frames(outputs: list[Output], conn: str) -> list[dict[str, Any]]:
    return [o.frame for o in outputs if isinstance(o, SendFrame) and o.conn == conn]


def types(outputs: list[Output], conn: str) -> list[str]:
    return [f["type"] for f in frames(outputs, conn)]


def closes(outputs: list[Output]) -> dict[Any, int]:
    return {o.conn: o.code for o in outputs if isinstance(o, Close)}


def track(tid: str, pid: str, kind: str = "video") -> TrackInfo:
    return TrackInfo(tid, pid, kind, "camera" if kind == "video" else "microphone", "0")  # type: ignore[arg-type]


def test_doctor_first_then_patient_joins_directly() -> None:
    room = new_room()
    d = room.join("c-doc", DOCTOR, 0.0, ref="1")
    [joined] = frames(d.outputs, "c-doc")
    assert joined["type"] == "joined" and joined["ref"] == "1"
    assert joined["participant"] == {
        "id": "p-1",
        "identity": "dr-amina",
        "name": "Dr-Amina",
        "role": "doctor",
        "grants": {"publish": True, "subscribe": True, "admin": True},
        "actions": [
            "admit",
            "chat",
            "consent",
            "invite",
            "publish_audio",
            "publish_video",
            "record",
            "remove",
            "share_screen",
            "subscribe",
        ],
    }
    assert joined["session"] == "s-1"
    assert joined["ice_servers"][0]["username"] == "dr-amina"
    assert (joined["participants"], joined["tracks"], joined["waiting"]) == ([], [], [])
    assert joined["ping_interval"] == 15.0
    pt = room.join("c-pt", PATIENT, 1.0, ref="j")
    assert types(pt.outputs, "c-pt") == ["joined"]
    assert frames(pt.outputs, "c-pt")[0]["participants"] == [
        {"id": "p-1", "identity": "dr-amina", "name": "Dr-Amina", "role": "doctor"}
    ]
    [event] = frames(pt.outputs, "c-doc")
    assert event == {
        "v": 1,
        "type": "participant_joined",
        "participant": {"id": "p-2", "identity": "pt-bilal", "name": "Pt-Bilal", "role": "patient"},
    }
    assert pt.participant.state is MemberState.JOINED


def test_patient_before_doctor_waits_until_admitted() -> None:
    room = new_room()
    pt = room.join("c-pt", PATIENT, 0.0, ref="1")
    assert pt.participant.state is MemberState.WAITING
    [waiting] = frames(pt.outputs, "c-pt")
    assert (waiting["type"], waiting["ref"], waiting["session"]) == ("waiting", "1", "s-1")
    assert waiting["participant"]["id"] == "p-1"
    # A waiting participant can do nothing but leave (and ping, in the adapter).
    with pytest.raises(errors.NotJoined):
        room.check_publish("c-pt", {Action.PUBLISH_VIDEO})
    with pytest.raises(errors.NotJoined):
        room.admit("c-pt", "p-1")
    d = room.join("c-doc", DOCTOR, 1.0, ref="2")
    [joined] = frames(d.outputs, "c-doc")
    assert joined["waiting"] == [
        {"id": "p-1", "identity": "pt-bilal", "name": "Pt-Bilal", "role": "patient"}
    ]
    assert frames(d.outputs, "c-pt") == []  # the waiting one sees nothing of the room
    out = room.admit("c-doc", "p-1")
    [admitted] = frames(out, "c-pt")
    assert admitted["type"] == "joined" and "ref" not in admitted
    assert admitted["participants"][0]["identity"] == "dr-amina"
    assert types(out, "c-doc") == ["participant_joined", "waiting"]
    assert frames(out, "c-doc")[1]["waiting"] == []
    assert (
        room.members.get("p-1") is not None and room.members.get("p-1").state is MemberState.JOINED
    )  # type: ignore[union-attr]
    with pytest.raises(errors.BadState):
        room.admit("c-doc", "p-1")
    with pytest.raises(errors.UnknownTarget):
        room.admit("c-doc", "p-nobody")


def test_deny_closes_the_waiting_connection_with_4403() -> None:
    room = joined_room(("c-pt", PATIENT), ("c-doc", DOCTOR))
    out = room.deny("c-doc", "p-1")
    assert types(out, "c-pt") == ["denied"]
    assert closes(out) == {"c-pt": 4403}
    assert frames(out, "c-doc")[0] == {"v": 1, "type": "waiting", "waiting": []}
    assert not any(isinstance(o, MediaLeave) for o in out)  # never had media
    assert room.members.get("p-1") is None


def test_patient_cannot_use_admin_rights() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT), ("c-fam", FAMILY))
    calls: list[Callable[[], object]] = [
        lambda: room.admit("c-pt", "p-3"),
        lambda: room.deny("c-pt", "p-3"),
        lambda: room.remove("c-pt", "p-1"),
        lambda: room.end("c-pt"),
        lambda: room.members.set_require_admission("c-pt", True),
    ]
    for call in calls:
        with pytest.raises(errors.NotAllowed) as exc:
            call()
        assert exc.value.code == "forbidden" and exc.value.close_code is None
    with pytest.raises(errors.NotJoined):
        room.leave("c-stranger")


def test_require_admission_makes_everyone_without_admin_wait() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    out = room.members.set_require_admission("c-doc", True)
    assert frames(out, "c-doc") == [{"v": 1, "type": "room_settings", "require_admission": True}]
    assert room.join("c-pt", PATIENT, 0.0).participant.state is MemberState.WAITING
    staff = room.join("c-staff", grant("nurse-1", "staff"), 0.0)
    assert staff.participant.state is MemberState.JOINED
    assert frames(staff.outputs, "c-staff")[0]["waiting"][0]["identity"] == "pt-bilal"


def test_a_new_connection_for_the_same_identity_replaces_the_old() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.media.published("p-2", [track("t-1", "p-2")], [])
    again = room.join("c-pt2", PATIENT, 5.0, ref="9")
    assert again.participant.id == "p-3" and not again.resumed
    out = again.outputs
    assert types(out, "c-pt") == ["replaced"]
    assert closes(out) == {"c-pt": 4409}
    assert types(out, "c-doc") == ["track_unpublished", "participant_left", "participant_joined"]
    assert frames(out, "c-doc")[1] == {
        "v": 1,
        "type": "participant_left",
        "participant_id": "p-2",
        "reason": "replaced",
    }
    assert MediaLeave("p-2") in out
    assert types(out, "c-pt2") == ["joined"]
    assert [p.id for p in room.members.present()] == ["p-1", "p-3"]


def test_resume_within_grace_keeps_the_participant() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    pt = room.join("c-pt", PATIENT, 0.0)
    room.media.published("p-2", [track("t-1", "p-2")], [])
    assert room.disconnect("c-pt", 10.0) == []  # nobody is told: media still flows
    assert pt.participant.state is MemberState.DETACHED
    assert room.get_timer() == 10.0 + GRACE
    assert room.handle_timer(29.0) == []
    res = room.join("c-pt-new", PATIENT, 29.5, ref="r", resume="s-2")
    assert res.resumed and res.participant is pt.participant
    [joined] = frames(res.outputs, "c-pt-new")
    assert joined["participant"]["id"] == "p-2" and joined["ref"] == "r"
    assert [t["track_id"] for t in joined["tracks"]] == ["t-1"]  # its own, as the room has it
    assert frames(res.outputs, "c-doc") == []
    assert room.get_timer() is None
    # A disconnect of the old connection, noticed late, changes nothing.
    assert room.disconnect("c-pt", 30.0) == []
    assert room.members.get("p-2") is not None and room.members.get("p-2").state.value == "joined"  # type: ignore[union-attr]


def test_resume_takes_over_a_half_open_connection() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    res = room.join("c-doc-2", DOCTOR, 1.0, resume="s-1")
    assert res.resumed
    assert types(res.outputs, "c-doc") == ["replaced"]
    assert closes(res.outputs) == {"c-doc": 4409}


def test_grace_over_means_gone_and_the_last_one_closes_the_room() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.disconnect("c-pt", 1.0)
    out = room.handle_timer(1.0 + GRACE)
    assert frames(out, "c-doc") == [
        {"v": 1, "type": "participant_left", "participant_id": "p-2", "reason": "timeout"}
    ]
    assert MediaLeave("p-2") in out and MediaCloseRoom() not in out
    # A resume after the grace period is a fresh join: a new participant id.
    late = room.join("c-pt-late", PATIENT, 40.0, resume="s-2")
    assert not late.resumed and late.participant.id == "p-3"
    room.disconnect("c-doc", 41.0)
    room.leave("c-pt-late")
    out = room.handle_timer(41.0 + GRACE)
    assert out[-1] == MediaCloseRoom()
    assert room.members.empty


def test_resume_with_other_rights_starts_afresh() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.disconnect("c-pt", 1.0)
    res = room.join("c-pt2", grant("pt-bilal", publish=False), 2.0, resume="s-2")
    assert not res.resumed and res.participant.id == "p-3"
    assert MediaLeave("p-2") in res.outputs


def test_a_waiting_participant_who_drops_is_gone() -> None:
    room = new_room()
    room.join("c-doc", DOCTOR, 0.0)
    room.members.set_require_admission("c-doc", True)
    room.join("c-pt", PATIENT, 0.0)
    out = room.disconnect("c-pt", 1.0)
    assert frames(out, "c-doc") == [{"v": 1, "type": "waiting", "waiting": []}]
    assert room.members.get("p-2") is None


def test_control_frames_are_answered_ok_then_carried_out() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT), ("c-fam", FAMILY))
    out = room.receive("c-doc", protocol.RoomSettings(id="s", require_admission=True))
    assert out[0] == SendFrame("c-doc", {"v": 1, "type": "ok", "ref": "s"})
    assert types(out, "c-doc") == ["ok", "room_settings"] and room.members.require_admission
    out = room.receive("c-doc", protocol.Remove(id="r", participant_id="p-3"))
    assert types(out, "c-doc") == ["ok", "participant_left"] and closes(out) == {"c-fam": 4403}
    # A refusal changes nothing and answers nothing.
    with pytest.raises(errors.NotAllowed):
        room.receive("c-pt", protocol.End())
    out = room.receive("c-pt", protocol.Leave(id="l"))
    assert types(out, "c-pt") == ["ok"] and closes(out) == {"c-pt": 1000}
    out = room.receive("c-doc", protocol.End(id="e"))
    assert types(out, "c-doc") == ["ok", "room_ended"] and out[-1] == MediaCloseRoom()


def test_remove_and_end() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT), ("c-fam", FAMILY))
    out = room.remove("c-doc", "p-3")
    assert types(out, "c-fam") == ["removed"] and closes(out) == {"c-fam": 4403}
    assert types(out, "c-pt") == ["participant_left"]
    assert frames(out, "c-pt")[0]["reason"] == "removed"
    assert MediaLeave("p-3") in out
    with pytest.raises(errors.UnknownTarget):
        room.remove("c-doc", "p-3")
    out = room.end("c-doc")
    assert types(out, "c-doc") == ["room_ended"] and types(out, "c-pt") == ["room_ended"]
    assert closes(out) == {"c-doc": 4410, "c-pt": 4410}
    assert out[-1] == MediaCloseRoom()
    assert room.ended and room.members.empty
    with pytest.raises(errors.RoomEnded) as exc:
        room.join("c-x", DOCTOR, 1.0)
    assert exc.value.close_code == 4410


def test_room_full_counts_the_waiting_and_frees_a_replaced_seat() -> None:
    room = new_room(max_participants=2)
    room.join("c-pt", PATIENT, 0.0)  # waiting
    room.join("c-doc", DOCTOR, 0.0)
    with pytest.raises(errors.RoomFull) as exc:
        room.join("c-fam", FAMILY, 0.0)
    assert exc.value.close_code == 4429
    # The same identity again replaces: no extra seat needed, and nothing
    # happened to the room when the join was refused. (The doctor is in now,
    # so the patient no longer waits.)
    again = room.join("c-pt2", PATIENT, 1.0)
    assert again.participant.state is MemberState.JOINED
    assert closes(again.outputs) == {"c-pt": 4409}
    assert len(room.members.participants) == 2


def test_tracks_subscriptions_and_mute_rights() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.join("c-obs", grant("observer", subscribe=True, publish=False), 0.0)
    with pytest.raises(errors.NotAllowed):
        room.check_publish("c-obs", {Action.PUBLISH_VIDEO})
    out = room.media.published("p-2", [track("t-a", "p-2", "audio"), track("t-v", "p-2")], [])
    assert types(out, "c-pt") == []
    assert types(out, "c-doc") == ["track_published", "track_published"]
    assert frames(out, "c-doc")[0]["track"] == {
        "track_id": "t-a",
        "participant": "p-2",
        "kind": "audio",
        "source": "microphone",
        "mid": "0",
        "muted": False,
    }
    assert Resubscribe(("p-1", "p-3")) in out
    assert [t.track_id for t in room.media.wanted("p-1")] == ["t-a", "t-v"]
    assert room.media.wanted("p-2") == []  # never its own
    # Mute: one's own tracks, admins any; everyone hears of it.
    with pytest.raises(errors.NotAllowed):
        room.media.check_mute("c-obs", "t-a")
    with pytest.raises(errors.UnknownTarget):
        room.media.check_mute("c-pt", "t-none")
    by, t = room.media.check_mute("c-doc", "t-a")
    out = room.media.muted(by.id, t.track_id, True)
    assert {o.conn for o in out if isinstance(o, SendFrame)} == {"c-doc", "c-pt", "c-obs"}
    assert frames(out, "c-pt")[0] == {
        "v": 1,
        "type": "track_muted",
        "track_id": "t-a",
        "muted": True,
        "by": "p-1",
    }
    assert room.media.tracks_of("p-2")[0].muted
    # Unpublish: one's own tracks only.
    with pytest.raises(errors.NotAllowed):
        room.media.check_unpublish("c-doc", "t-v")
    room.media.check_unpublish("c-pt", "t-v")
    out = room.media.unpublished("p-2", "t-v")
    assert frames(out, "c-doc") == [{"v": 1, "type": "track_unpublished", "track_id": "t-v"}]
    # A subscriber without the grant receives nothing.
    assert room.media.wanted("p-3") == [t for t in room.media.tracks() if t.participant != "p-3"]
    room.join("c-deaf", grant("deaf", subscribe=False), 0.0)
    assert room.media.wanted("p-4") == []


def test_leaving_with_tracks_unpublishes_them_and_renegotiates_others() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.media.published("p-2", [track("t-1", "p-2")], [])
    out = room.leave("c-pt")
    assert closes(out) == {"c-pt": 1000}
    assert types(out, "c-doc") == ["track_unpublished", "participant_left"]
    assert Resubscribe(("p-1",)) in out and MediaLeave("p-2") in out
    assert room.media.wanted("p-1") == []


def test_active_speaker_is_deduplicated_and_cleared_on_leave() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    out = room.media.speaker("p-2")
    assert frames(out, "c-doc") == [{"v": 1, "type": "active_speaker", "participant_id": "p-2"}]
    assert room.media.speaker("p-2") == []
    # Someone not in the room is nobody.
    assert frames(room.media.speaker("p-nobody"), "c-pt")[0]["participant_id"] is None
    assert room.media.speaker(None) == []
    room.media.speaker("p-2")
    out = room.leave("c-pt")
    assert frames(out, "c-doc")[-1] == {"v": 1, "type": "active_speaker", "participant_id": None}


def test_the_transition_table_has_one_terminal_state() -> None:
    assert not any(state is MemberState.GONE for state, _ in TRANSITIONS)
    reachable = {MemberState.WAITING, MemberState.JOINED}
    for (state, _), new in TRANSITIONS.items():
        if state in reachable:
            reachable.add(new)
    assert reachable == set(MemberState)
    assert all(
        (s, MemberEvent.END) in TRANSITIONS for s in MemberState if s is not MemberState.GONE
    )


# -- random sequences ----------------------------------------------------------

IDENTITIES = ["dr-a", "dr-b", "pt-1", "pt-2", "fam-1"]
CONNS = [f"c{i}" for i in range(8)]


class RoomMachine(RuleBasedStateMachine):
    """Random joins, resumes, drops, admin actions, publishes and timer ticks;
    only typed errors may come out, and the room stays consistent."""

    def __init__(self) -> None:
        super().__init__()
        self.room = new_room(max_participants=4)
        self.now = 0.0
        self.closed: set[str] = set()
        self.tracks = itertools.count()

    def _apply(self, outputs: list[Output]) -> None:
        for o in outputs:
            if isinstance(o, SendFrame):
                assert o.conn not in self.closed, f"frame after close on {o.conn}"
            elif isinstance(o, Close):
                assert o.conn not in self.closed
                self.closed.add(str(o.conn))

    def _try(self, call: Any) -> None:
        code = ""
        try:
            out = call()
        except errors.SignallingError as exc:
            code = exc.code
        else:
            self._apply(out.outputs if hasattr(out, "outputs") else out)
        # Only the room's own refusals, never a crash or a protocol error.
        assert code in {
            "",
            "not-joined",
            "forbidden",
            "not-found",
            "bad-state",
            "room-full",
            "room-ended",
        }

    @rule(conn=st.sampled_from(CONNS), who=st.sampled_from(IDENTITIES), resume=st.booleans())
    def join(self, conn: str, who: str, resume: bool) -> None:
        if conn in self.closed or self.room.members.of(conn) is not None:
            return
        role = "doctor" if who.startswith("dr") else "patient"
        session = None
        if resume:
            session = next(
                (
                    p.session
                    for p in self.room.members.participants.values()
                    if p.grant.identity == who
                ),
                "stale",
            )
        self._try(lambda: self.room.join(conn, grant(who, role), self.now, resume=session))

    @rule(conn=st.sampled_from(CONNS))
    def drop(self, conn: str) -> None:
        self._apply(self.room.disconnect(conn, self.now))
        self.closed.add(conn)

    @rule(conn=st.sampled_from(CONNS))
    def leave(self, conn: str) -> None:
        self._try(lambda: self.room.leave(conn))

    @rule(conn=st.sampled_from(CONNS), victim=st.integers(1, 12), op=st.integers(0, 2))
    def admin(self, conn: str, victim: int, op: int) -> None:
        fn = (self.room.admit, self.room.deny, self.room.remove)[op]
        self._try(lambda: fn(conn, f"p-{victim}"))

    @rule(conn=st.sampled_from(CONNS), flag=st.booleans())
    def admission(self, conn: str, flag: bool) -> None:
        self._try(lambda: self.room.members.set_require_admission(conn, flag))

    @precondition(lambda self: not self.room.ended)
    @rule(conn=st.sampled_from(CONNS))
    def end(self, conn: str) -> None:
        self._try(lambda: self.room.end(conn))

    @rule(conn=st.sampled_from(CONNS))
    def publish(self, conn: str) -> None:
        try:
            p = self.room.check_publish(conn, {Action.PUBLISH_VIDEO})
        except errors.CallError:
            return
        self._apply(self.room.media.published(p.id, [track(f"t-{next(self.tracks)}", p.id)], []))

    @rule(dt=st.floats(0.5, 30.0))
    def tick(self, dt: float) -> None:
        self.now += dt
        when = self.room.get_timer()
        if when is not None and when <= self.now:
            self._apply(self.room.handle_timer(self.now))
        assert all(
            p.deadline is None or p.deadline > self.now
            for p in self.room.members.participants.values()
        ) or (when is not None and when > self.now)

    @invariant()
    def consistent(self) -> None:
        room = self.room
        people = list(room.members.participants.values())
        assert len(people) <= room.members.max_participants
        identities = [p.grant.identity for p in people]
        assert len(identities) == len(set(identities)), "one participant per identity"
        conns = [p.conn for p in people if p.conn is not None]
        assert len(conns) == len(set(conns)), "one participant per connection"
        for p in people:
            assert p.state is not MemberState.GONE
            assert (p.state is MemberState.DETACHED) == (p.conn is None)
            assert (p.deadline is not None) == (p.state is MemberState.DETACHED)
            if p.state is MemberState.WAITING:
                assert not p.admin
                assert not room.media.tracks_of(p.id)
            for t in room.media.wanted(p.id):
                assert t.participant != p.id
                owner = room.members.get(t.participant)
                assert owner is not None and owner.present
        if room.ended:
            assert room.members.empty


TestRoomMachine = RoomMachine.TestCase
TestRoomMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def test_a_removed_or_denied_identity_waits_again_until_admitted() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.remove("c-doc", "p-2")
    # The same link again: the doctor is in and admission is off, yet it waits.
    again = room.join("c-pt2", PATIENT, 1.0)
    assert again.participant.state is MemberState.WAITING
    assert types(again.outputs, "c-doc") == ["waiting"]
    room.deny("c-doc", again.participant.id)
    third = room.join("c-pt3", PATIENT, 2.0)
    assert third.participant.state is MemberState.WAITING
    # Others are not affected, and an admit lifts the block for good.
    assert room.join("c-fam", FAMILY, 2.0).participant.state is MemberState.JOINED
    room.admit("c-doc", third.participant.id)
    room.leave("c-pt3")
    assert room.join("c-pt4", PATIENT, 3.0).participant.state is MemberState.JOINED


def test_media_reset_forgets_tracks_and_tells_joined_now_and_detached_on_resume() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.media.published("p-2", [track("t-v", "p-2")], [])
    room.media.speaker("p-2")
    room.disconnect("c-pt", 1.0)
    out = room.media_reset("media-lost")
    assert types(out, "c-doc") == ["track_unpublished", "media_reconnect", "active_speaker"]
    assert frames(out, "c-doc")[1]["reason"] == "media-lost"
    assert room.media.tracks() == []
    resumed = room.join("c-pt2", PATIENT, 2.0, resume="s-2")
    assert resumed.resumed
    assert types(resumed.outputs, "c-pt2") == ["joined", "media_reconnect"]
    # Only once.
    room.disconnect("c-pt2", 3.0)
    again = room.join("c-pt3", PATIENT, 4.0, resume="s-2")
    assert types(again.outputs, "c-pt3") == ["joined"]


def test_media_reset_of_one_site_keeps_the_other_sites_tracks() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    room.media.published("p-1", [track("t-doc", "p-1")], [])
    room.media.published("p-2", [track("t-pt", "p-2")], [])
    room.media.speaker("p-1")
    out = room.media_reset("media-lost", ["p-2"])
    assert types(out, "c-pt") == ["media_reconnect"]
    assert types(out, "c-doc") == ["track_unpublished"]
    assert frames(out, "c-doc")[0]["track_id"] == "t-pt"
    assert [t.track_id for t in room.media.tracks()] == ["t-doc"]


def test_snapshot_and_restore_keep_the_room_and_detach_lost_connections() -> None:
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT), ("c-fam", FAMILY))
    room.media.published("p-1", [track("t-v", "p-1")], [])
    room.remove("c-doc", "p-3")
    room.join("c-fam2", FAMILY, 1.0)  # waits: removed before
    room.disconnect("c-pt", 2.0)  # detached, 20 s grace from 2.0
    data = room.snapshot(5.0, lambda conn: f"r/{conn}")

    copy = new_room()
    standing = {"r/c-doc"}
    out = copy.restore(
        data,
        100.0,
        conn_of=lambda ref: ref.removeprefix("r/") if ref in standing else None,
        grant_of=lambda d: RoomGrant(**d),
        elapsed=1.0,
    )
    doc, pt = copy.members.get("p-1"), copy.members.get("p-2")
    assert doc is not None and doc.state is MemberState.JOINED and doc.conn == "c-doc"
    assert [t.track_id for t in copy.media.tracks()] == ["t-v"]
    # Detached stays detached, its deadline carried over (17 s left - 1 s).
    assert pt is not None and pt.state is MemberState.DETACHED
    assert pt.deadline == pytest.approx(100.0 + 16.0)
    # The waiting family member's connection is gone with the old owner.
    assert copy.members.get("p-4") is None and "fam-sara" in copy.members.blocked
    assert types(out, "c-doc") == ["waiting"]
    # The detached one resumes on the new owner with its session.
    assert copy.join("c-pt9", PATIENT, 101.0, resume="s-2").resumed
    # A joined participant whose replica died is detached with a fresh grace.
    lost = new_room()
    lost.restore(data, 50.0, conn_of=lambda ref: None, grant_of=lambda d: RoomGrant(**d))
    d = lost.members.get("p-1")
    assert d is not None and d.state is MemberState.DETACHED and d.deadline == 50.0 + GRACE


def test_restore_gives_the_grace_its_caller_names_per_lost_connection() -> None:
    """A new owner keeps the participants of a replica that fell silent (a
    region cut off) for the cut-off grace, as a live owner does, so their
    resume after the heal finds them rather than making strangers of them."""
    room = joined_room(("c-doc", DOCTOR), ("c-pt", PATIENT))
    data = room.snapshot(5.0, lambda conn: f"cut/{conn}" if conn == "c-pt" else f"gone/{conn}")
    copy = new_room()
    copy.restore(
        data,
        50.0,
        conn_of=lambda ref: None,
        grant_of=lambda d: RoomGrant(**d),
        grace_of=lambda ref: 120.0 if ref.startswith("cut/") else None,
    )
    doc, pt = copy.members.get("p-1"), copy.members.get("p-2")
    assert doc is not None and doc.state is MemberState.DETACHED and doc.deadline == 50.0 + GRACE
    assert pt is not None and pt.state is MemberState.DETACHED and pt.deadline == 50.0 + 120.0
    # Still there past the resume grace: its resume is the same participant.
    copy.handle_timer(50.0 + GRACE + 1.0)
    assert copy.members.get("p-1") is None
    assert copy.join("c-pt2", PATIENT, 50.0 + GRACE + 2.0, resume="s-2").resumed
