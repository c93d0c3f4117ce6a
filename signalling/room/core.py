"""One call room's core, without I/O: its members, its media and its
recording's consent, composed, and what to tell whom when something changes.

The adapter (the call service, :mod:`signalling.service`) feeds it joins,
control frames (:meth:`Room.receive`), the media worker's answers, dropped
connections and the time, and carries out what comes back
(:mod:`signalling.room.outputs`): frames to send on a connection,
connections to close, media to clean up, participants whose subscriptions
to renegotiate, the recording's steps. Deadlines (the resume grace period)
are timer output: :meth:`Room.get_timer` and :meth:`Room.handle_timer`, as
in aioquic. Nothing here reads the clock or touches a socket.

A room holds three parts, each an object of its own:

* ``members`` (:class:`~signalling.room.members.Members`): who is in the
  room, who waits, their connections, states and rights;
* ``media`` (:class:`~signalling.room.media.RoomMedia`): what they publish
  and who speaks, handed the members to tell them;
* ``recording`` (:class:`~signalling.room.consent.RoomConsent`): the visit's
  recording and who agreed to it.

What crosses them is here: a join (the welcome shows all three), a
departure (its tracks go, the others hear, the recording has one voter
fewer), the end of the room, a media move (which stops a recording), and
snapshots.

Snapshots
---------

:meth:`Room.snapshot` and :meth:`Room.restore` turn the room into plain data
and back, so an API replica can take over a room whose owner died; the
adapter maps connection handles to strings and back and says which of them
still stand.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sfu.control.messages import TrackInfo
from signalling import errors
from signalling.contract import offered
from signalling.protocol import (
    Admit,
    ApproveGuest,
    Deny,
    End,
    Leave,
    Record,
    RecordingConsent,
    Remove,
    RoomSettings,
    reply,
)
from signalling.room.consent import RecordingOutput, RoomConsent, Voter
from signalling.room.media import RoomMedia, track_info
from signalling.room.members import (
    Member,
    MemberEvent,
    Members,
    MemberState,
    participant_info,
    random_participant_id,
    random_session,
)
from signalling.room.outputs import (
    Close,
    ConnId,
    InviteDecided,
    MediaCloseRoom,
    MediaLeave,
    Output,
    Resubscribe,
    SendFrame,
)
from wadud.web.roles import Action

if TYPE_CHECKING:
    # Only its shape: the core has no business with tokens or their crypto.
    from wadud.web.auth import RoomGrant

__all__ = ["ControlFrame", "JoinResult", "Room"]


@dataclass(frozen=True)
class JoinResult:
    participant: Member
    outputs: list[Output]
    resumed: bool


IceServers = Callable[[str], list[dict[str, Any]]]

#: The frames the room answers by itself, with no media call.
ControlFrame = (
    Admit | Deny | Remove | RoomSettings | End | Leave | Record | RecordingConsent | ApproveGuest
)


class Room:
    """A call room: its members, media and recording; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        max_participants: int,
        resume_grace: float,
        ping_interval: float,
        ice_servers: IceServers | None = None,
        phone_calls: bool = False,
        new_id: Callable[[], str] = random_participant_id,
        new_session: Callable[[], str] = random_session,
    ) -> None:
        self.name = name
        self.resume_grace = resume_grace
        self.ping_interval = ping_interval
        #: Whether a phone bridge places calls here (``call_phone``).
        self.phone_calls = phone_calls
        self._ice_servers = ice_servers or (lambda _pid: [])
        self.ended = False
        self.members = Members(
            max_participants=max_participants, new_id=new_id, new_session=new_session
        )
        self.media = RoomMedia(self.members)
        #: The visit's recording and who agreed to it.
        self.recording = RoomConsent()

    # -- control frames ----------------------------------------------------------

    def receive(self, conn: ConnId, frame: ControlFrame) -> list[Output]:
        """A control frame from ``conn``: its ``ok`` and what it changes.
        Raises the :class:`errors.CallError` of a refusal, having changed nothing."""
        outputs = _CONTROL[type(frame)](self, conn, frame)
        return [SendFrame(conn, reply("ok", frame.id)), *outputs]

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest resume deadline, or None."""
        return self.members.deadline()

    def handle_timer(self, now: float) -> list[Output]:
        """Participants whose grace period is over leave (reason ``timeout``)."""
        out: list[Output] = []
        for p in self.members.expired(now):
            out += self._depart(p, MemberEvent.EXPIRE, "timeout")
        return out + self._maybe_close()

    # -- joining ---------------------------------------------------------------

    def join(
        self,
        conn: ConnId,
        grant: RoomGrant,
        now: float,
        *,
        ref: str | None = None,
        resume: str | None = None,
        grace: float | None = None,
        single: bool = False,
    ) -> JoinResult:
        """A connection presents a valid token for this room: resume, replace,
        wait or join. ``grace``: the participant's resume grace when its
        connection drops (a mobile app's), None for the room's
        ``resume_grace``. ``single``: it asked for one peer connection
        (docs/protocol.md, "Media: one peer connection"). Raises
        :class:`errors.RoomEnded` or :class:`errors.RoomFull`."""
        if self.ended:
            raise errors.RoomEnded("the room was ended")
        if grant.room != self.name:
            raise errors.WrongRoom(f"the token is for room {grant.room!r}")
        members = self.members
        out: list[Output] = []
        old = members.resumable(grant, resume)
        if old is not None:
            if old.conn is not None:
                # A half-open older connection (the server had not noticed the
                # drop yet): the resumed one takes over.
                out += members.to(old, reply("replaced"))
                out.append(Close(old.conn, errors.CLOSE_REPLACED, "resumed elsewhere"))
            members.move(old, MemberEvent.RESUME)
            old.conn, old.deadline, old.resume_grace = conn, None, grace
            old.single = single
            out += self._welcome(old, ref)
            out += self.media.resumed(old)
            return JoinResult(old, out, resumed=True)
        for p in members.replaced_by(grant):
            out += self._depart(p, MemberEvent.REPLACE, "replaced")
        waits = members.must_wait(grant)
        p = members.add(conn, grant, MemberState.WAITING if waits else MemberState.JOINED)
        p.resume_grace = grace
        p.single = single
        if waits:
            out += members.to(p, members.waiting_frame(p, ref))
            out += members.waiting_changed()
        else:
            out += self._welcome(p, ref)
            out += self._announce_joined(p)
        return JoinResult(p, out, resumed=False)

    def _welcome(self, p: Member, ref: str | None) -> list[Output]:
        """``joined`` (or ``waiting`` again, on a resume in the waiting room)."""
        members = self.members
        if p.state is MemberState.WAITING:
            return members.to(p, members.waiting_frame(p, ref))
        others = [participant_info(o) for o in members.present() if o is not p]
        frame = reply(
            "joined",
            ref,
            room=self.name,
            participant=participant_info(p, grants=True),
            session=p.session,
            # TURN credentials name the person, not this participant: the
            # relay's quota is per stable identity, however often one rejoins.
            ice_servers=self._ice_servers(p.grant.identity),
            participants=others,
            tracks=[track_info(t) for t in self.media.tracks()],
            waiting=members.waiting_list() if p.admin else [],
            require_admission=members.require_admission,
            active_speaker=self.media.active_speaker,
            ping_interval=self.ping_interval,
            # Seconds its seat is kept once its socket is taken for dropped.
            resume_grace=self.grace_of(p),
            # One peer connection both ways, or the two (what the join asked).
            connection="single" if p.single else "pair",
            recording={**self.recording.view(), "asked": self.recording.must_answer(_voter(p))},
            guests_awaiting=(
                members.guests_awaiting() if p.grant.can(Action.APPROVE_GUESTS) else []
            ),
            # The protocol and server version, codecs and features.
            **offered(),
            # An admin of a booked visit may have the bridge call the patient.
            phone_calls=self.phone_calls and p.admin and bool(p.grant.booking),
        )
        return members.to(p, frame) + self._consent(*self.recording.arrived(_voter(p)))

    def grace_of(self, p: Member) -> float:
        """How long ``p`` keeps its seat once its connection dropped."""
        return self.resume_grace if p.resume_grace is None else p.resume_grace

    def phone_call(self, step: dict[str, Any]) -> list[Output]:
        """A step of a call the bridge places for this visit, for its admins."""
        return self.members.to_admins(reply("phone_call", None, **step))

    def _announce_joined(self, p: Member) -> list[Output]:
        out = self.members.broadcast(
            reply("participant_joined", participant=participant_info(p)), p
        )
        if p.grant.can(Action.SUBSCRIBE) and self.media.tracks():
            out.append(Resubscribe((p.id,)))
        return out

    # -- admission -------------------------------------------------------------

    def admit(self, conn: ConnId, target_id: str) -> list[Output]:
        members = self.members
        members.check(conn, Action.ADMIT)
        p = members.target(target_id)
        if members.awaits_approval(p.grant):
            raise errors.BadState("the patient has not agreed to this guest yet")
        members.move(p, MemberEvent.ADMIT)
        members.blocked.discard(p.grant.identity)
        return self._welcome(p, None) + self._announce_joined(p) + members.waiting_changed()

    def deny(self, conn: ConnId, target_id: str) -> list[Output]:
        members = self.members
        members.check(conn, Action.ADMIT)
        p = members.target(target_id)
        if p.state is not MemberState.WAITING:
            raise errors.BadState(f"{target_id} is not waiting")
        members.block(p)
        out = members.to(p, reply("denied"))
        return out + self._depart(
            p, MemberEvent.DENY, "denied", close=(errors.CLOSE_FORBIDDEN, "denied")
        )

    def approve_guest(self, conn: ConnId, invite_id: str, agree: bool) -> list[Output]:
        """The patient's answer about an invite that needs it: its waiting
        guests go in (unless they still wait for a host, as anyone would)
        or are turned away; either way the answer is kept (:class:`InviteDecided`)."""
        members = self.members
        by = members.check(conn, Action.APPROVE_GUESTS)
        guests = [w for w in members.waiting() if w.grant.invite == invite_id]
        out: list[Output] = [InviteDecided(invite_id, by.grant.identity, agree)]
        if not agree:
            members.approved.discard(invite_id)
            for g in guests:
                out += members.to(g, reply("denied", reason="refused"))
                out += self._depart(
                    g, MemberEvent.DENY, "refused", close=(errors.CLOSE_FORBIDDEN, "refused")
                )
            return out + self._maybe_close()
        members.approved.add(invite_id)
        for g in guests:
            if not members.must_wait(g.grant):
                members.move(g, MemberEvent.ADMIT)
                out += self._welcome(g, None) + self._announce_joined(g)
        return out + members.waiting_changed()

    def revoke_invite(self, invite_id: str) -> list[Output]:
        """Invite ``invite_id`` was taken back: its guests leave (``removed``,
        reason ``invite-revoked``; close 4403)."""
        out: list[Output] = []
        self.members.approved.discard(invite_id)
        for p in list(self.members.participants.values()):
            if p.grant.invite != invite_id:
                continue
            out += self.members.to(p, reply("removed", reason="invite-revoked"))
            out += self._depart(
                p,
                MemberEvent.REMOVE,
                "invite-revoked",
                close=(errors.CLOSE_FORBIDDEN, "invite revoked"),
            )
        return out + self._maybe_close()

    # -- leaving ---------------------------------------------------------------

    def disconnect(self, conn: ConnId, now: float, grace: float | None = None) -> list[Output]:
        """A connection ended (closed, dropped, timed out). Its participant, if
        it still has that connection, waits ``grace`` (else its own,
        :meth:`grace_of`) or goes."""
        p = self.members.of(conn)
        if p is None:
            return []
        if p.state is MemberState.WAITING:
            return self._depart(p, MemberEvent.DISCONNECT, "left") + self._maybe_close()
        self.members.detach(p, now + (self.grace_of(p) if grace is None else grace))
        return []

    def leave(self, conn: ConnId) -> list[Output]:
        p = self.members.check_joined(conn, waiting_ok=True)
        out = self._depart(p, MemberEvent.LEAVE, "left", close=(errors.CLOSE_NORMAL, "left"))
        return out + self._maybe_close()

    def remove(self, conn: ConnId, target_id: str) -> list[Output]:
        members = self.members
        members.check(conn, Action.REMOVE)
        target = members.target(target_id)
        members.block(target)
        out = members.to(target, reply("removed"))
        out += self._depart(
            target, MemberEvent.REMOVE, "removed", close=(errors.CLOSE_FORBIDDEN, "removed")
        )
        return out + self._maybe_close()

    def end(self, conn: ConnId) -> list[Output]:
        """A host who may remove ends the room: everyone is told and closed;
        joins are refused from now on."""
        self.members.check(conn, Action.REMOVE)
        return self._ended(reply("room_ended"), "room ended")

    def close(self, reason: str) -> list[Output]:
        """The server ends the room (its booking was cancelled): everyone is
        told ``room_ended`` with ``reason`` and closed; joins are refused."""
        return self._ended(reply("room_ended", reason=reason), reason)

    def _ended(self, told: dict[str, Any], reason: str) -> list[Output]:
        # Everyone hears ``told`` and is closed with ``reason``.
        out: list[Output] = []
        for p in list(self.members.participants.values()):
            out += self.members.to(p, told)
            if p.conn is not None:
                out.append(Close(p.conn, errors.CLOSE_ENDED, reason))
            self.members.move(p, MemberEvent.END)
            self._forget(p)
        self.ended = True
        out += self.recording.close()
        out.append(MediaCloseRoom())
        return out

    def revoke(self, identity: str, sid: str | None) -> list[Output]:
        """The account ``identity`` signed out of session ``sid`` (None: every
        session; its rights changed): its participants whose links came from
        that session leave (``removed``, reason ``signed-out``; close 4401)."""
        out: list[Output] = []
        for p in list(self.members.participants.values()):
            if p.grant.identity != identity or (sid is not None and p.grant.sid != sid):
                continue
            out += self.members.to(p, reply("removed", reason="signed-out"))
            out += self._depart(
                p, MemberEvent.REMOVE, "signed-out", close=(errors.CLOSE_UNAUTHORIZED, "signed out")
            )
        return out + self._maybe_close()

    def _depart(
        self,
        p: Member,
        event: MemberEvent,
        reason: str,
        *,
        close: tuple[int, str] | None = None,
    ) -> list[Output]:
        """``p`` leaves the room by ``event``: its connection (if any) is closed
        (``replaced`` first on a replacement), the others hear of it and the
        media side forgets it."""
        members = self.members
        was = p.state
        out: list[Output] = []
        if event is MemberEvent.REPLACE:
            out += members.to(p, reply("replaced"))
            close = (errors.CLOSE_REPLACED, "replaced")
        if p.conn is not None and close is not None:
            out.append(Close(p.conn, *close))
        members.move(p, event)
        tracks = self._forget(p)
        if was is MemberState.WAITING:
            return out + members.waiting_changed()
        for t in tracks:
            out += members.broadcast(reply("track_unpublished", track_id=t.track_id))
        out += members.broadcast(reply("participant_left", participant_id=p.id, reason=reason))
        out.append(MediaLeave(p.id))
        if tracks and (subs := members.subscribers()):
            out.append(Resubscribe(subs))
        out += self.media.silenced(p.id)
        return out + self._consent(*self.recording.departed(self._voters()))

    def _forget(self, p: Member) -> list[TrackInfo]:
        """``p`` is GONE: out of the members, its tracks (returned) out of the media."""
        self.members.forget(p)
        return self.media.forget(p.id)

    def _maybe_close(self) -> list[Output]:
        # The last one out closes the room on the media side; the adapter
        # forgets an empty room.
        if not self.members.empty or self.ended:
            return []
        return [*self.recording.close(), MediaCloseRoom()]

    # -- recording (signalling.room.consent) -------------------------------------

    def record(self, conn: ConnId, on: bool) -> list[Output]:
        """Who may record asks to (everyone present who counts is asked) or stops it."""
        by = _voter(self.members.check(conn, Action.RECORD))
        if on:
            return self._consent(*self.recording.request(by, self._voters()))
        return self._consent(*self.recording.stop(by))

    def answer_recording(self, conn: ConnId, recording_id: str, agree: bool) -> list[Output]:
        voter = _voter(self.members.check(conn, Action.CONSENT))
        return self._consent(*self.recording.answer(voter, recording_id, agree, self._voters()))

    def recording_failed(self, recording_id: str, detail: str) -> list[Output]:
        """The recording could not be kept (the media side or its storage)."""
        return self._consent(*self.recording.failed(recording_id, detail))

    def _voters(self) -> list[Voter]:
        return [_voter(p) for p in self.members.present()]

    def _consent(
        self, frames: list[tuple[str | None, dict[str, Any]]], outputs: list[RecordingOutput]
    ) -> list[Output]:
        out: list[Output] = []
        for pid, frame in frames:
            if pid is None:
                out += self.members.broadcast(frame)
            elif (p := self.members.get(pid)) is not None:
                out += self.members.to(p, frame)
        return out + list(outputs)

    # -- media -------------------------------------------------------------------

    def check_publish(
        self, conn: ConnId, needs: Collection[Action], receives: bool = False
    ) -> Member:
        """The participant of ``conn``, if its role grants what its publish
        offer ``needs`` (:func:`signalling.room.media.offer_actions`); an
        offer that only ``receives``, on a single connection, needs
        ``subscribe`` (one that also sends gets its receiving sections
        filled only with that right: :meth:`RoomMedia.wanted`)."""
        sends = bool(needs)
        if receives and not sends and self.members.check_joined(conn).single:
            needs = {Action.SUBSCRIBE}
        p = self.members.check(conn, *sorted(needs))
        if not needs and not p.grant.publish:
            # An offer that sends nothing still opens a transport to send on.
            raise errors.NotAllowed.lacking("publish", p.grant.role)
        if (
            sends
            and not self.media.tracks_of(p.id)
            and self.recording.state == "on"
            and self.recording.must_answer(_voter(p))
        ):
            # Someone who came in while the visit is recorded sends nothing
            # before answering; whoever was already sending keeps sending
            # (a refusal stops the recording, not their media).
            raise errors.NotAllowed("answer whether this visit may be recorded first")
        return p

    def media_reset(self, reason: str, only: Collection[str] | None = None) -> list[Output]:
        """A media worker is gone (or draining): see
        :meth:`signalling.room.media.RoomMedia.reset`, for everyone or the
        participants in ``only``. A recording stops (its worker may be the
        one lost). The adapter points the room at the new worker first."""
        moved = any(only is None or p.id in only for p in self.members.present())
        out = self.media.reset(reason, only)
        if moved and self.recording.recording_id is not None:
            # The worker writing it may be the one lost: a recording is not
            # carried across, it stops (asking again starts a new one).
            out += self.recording_failed(
                self.recording.recording_id, "the call's media moved to another server"
            )
        return out

    # -- snapshots ---------------------------------------------------------------

    def snapshot(self, now: float, conn_ref: Callable[[ConnId], str | None]) -> dict[str, Any]:
        """The room as plain data; deadlines as seconds left after ``now``."""
        members = self.members
        return {
            "name": self.name,
            "require_admission": members.require_admission,
            "ended": self.ended,
            "speaker": self.media.active_speaker,
            "blocked": sorted(members.blocked),
            "approved": sorted(members.approved),
            "recording": self.recording.snapshot(),
            "participants": [
                {**members.snapshot(p, now, conn_ref), **self.media.snapshot(p.id)}
                for p in members.participants.values()
            ],
        }

    def restore(
        self,
        data: dict[str, Any],
        now: float,
        *,
        conn_of: Callable[[str], ConnId | None],
        grant_of: Callable[[dict[str, Any]], RoomGrant],
        elapsed: float = 0.0,
        grace_of: Callable[[str], float | None] | None = None,
    ) -> list[Output]:
        """Take over a room from :meth:`snapshot` (``elapsed`` seconds old).
        ``conn_of`` gives the handle of a connection that still stands, or
        None: its participant is DETACHED with a fresh grace period (or gone,
        if it was waiting), ``grace_of(ref)`` seconds for that connection's
        reference, the participant's own (:meth:`Room.grace_of`) where it
        gives None. Returns what that changes for the others."""
        members = self.members
        members.require_admission = bool(data.get("require_admission", False))
        self.ended = bool(data.get("ended", False))
        members.blocked = set(data.get("blocked", ()))
        members.approved = set(data.get("approved", ()))
        self.recording.restore(data.get("recording") or {})
        members.clear()
        self.media.clear(data.get("speaker"))
        lost: list[tuple[Member, float | None]] = []
        for d in data.get("participants", ()):
            grant = grant_of(d["grant"])
            ref = d.get("conn")
            conn = conn_of(ref) if ref else None
            p = members.restore(d, now, grant=grant, conn=conn, elapsed=elapsed)
            self.media.restore(p.id, d)
            if p.conn is None and p.state is not MemberState.DETACHED:
                lost.append((p, grace_of(ref) if ref and grace_of is not None else None))
        out: list[Output] = []
        for p, grace in lost:
            if p.state is MemberState.WAITING:
                out += self._depart(p, MemberEvent.DISCONNECT, "left")
            else:
                members.detach(p, now + (self.grace_of(p) if grace is None else grace))
        return out + self._maybe_close()


def _voter(p: Member) -> Voter:
    return Voter(p.id, p.grant.identity, p.grant.role, p.grant.can(Action.CONSENT))


#: Each control frame's handler (:meth:`Room.receive`).
_CONTROL: dict[type[ControlFrame], Callable[[Room, ConnId, Any], list[Output]]] = {
    Admit: lambda room, conn, f: room.admit(conn, f.participant_id),
    Deny: lambda room, conn, f: room.deny(conn, f.participant_id),
    Remove: lambda room, conn, f: room.remove(conn, f.participant_id),
    RoomSettings: lambda room, conn, f: room.members.set_require_admission(
        conn, f.require_admission
    ),
    End: lambda room, conn, f: room.end(conn),
    Leave: lambda room, conn, f: room.leave(conn),
    Record: lambda room, conn, f: room.record(conn, f.on),
    RecordingConsent: lambda room, conn, f: room.answer_recording(conn, f.recording_id, f.agree),
    ApproveGuest: lambda room, conn, f: room.approve_guest(conn, f.invite_id, f.agree),
}
