"""One call room's state, without I/O: who is in it, who waits, what is
published, and what to tell whom when something changes.

The adapter (:mod:`signalling.service.calls`) feeds it joins, frames' requests,
dropped connections and the time, and carries out what comes back: frames to
send on a connection, connections to close, media to clean up, participants
whose subscriptions to renegotiate. Deadlines (the resume grace period) are
timer output: :meth:`Room.get_timer` and :meth:`Room.handle_timer`, as in
aioquic. Nothing here reads the clock or touches a socket.

Participants and their connections
----------------------------------

A participant is identified by an id the room assigns; its connection by an
opaque handle the adapter passes in (``conn``). A connection can be replaced
under a participant (a resume), so everything addressed to a person goes to
``participant.conn`` at the moment it is produced.

Each participant is in one :class:`State`, and moves only along
:data:`TRANSITIONS`::

                admit                      disconnect
    WAITING ----------------> JOINED ----------------------> DETACHED
       |   \\                   | ^  \\                       |   |
       |    resume (new conn)  | |   resume (new conn)     |   | resume
       |                       | +-------------------------+---+
       |  deny, leave,         |  leave, remove,            | expire (grace over),
       |  remove, replace,     |  replace, end              | remove, replace, end
       |  disconnect, end      v                            v
       +-----------------> GONE <---------------------------+

* WAITING: in the waiting room, connected; sees nothing of the room. A
  waiting participant whose connection drops is gone at once: it has no media
  to keep, and joining again puts it back in the queue.
* JOINED: admitted (or never needed admission) and connected; hears every
  room event.
* DETACHED: joined, but its connection dropped. Its media keeps flowing for
  ``resume_grace`` seconds, the deadline this core hands out as a timer; a
  ``join`` with its ``session`` makes it JOINED again with the same id.
* GONE: out of the room for good; nothing is ever sent to it again.

A connection's participant is WAITING when it has no ``admin`` grant and
either nobody with ``admin`` is in the room (JOINED or DETACHED), the room
requires admission, or an admin denied or removed that identity before (a
removal holds: the same link waits for admission again, until an admin admits
it); an admin admits or denies. A ``join`` without a resume for an identity
already in the room replaces the older participant.

Media moves
-----------

When the room's media worker is lost or drained, :meth:`Room.media_reset`
forgets every track and tells each connected participant ``media_reconnect``
(new peer connections, publish again); a DETACHED one hears it when it
resumes.

Snapshots
---------

:meth:`Room.snapshot` and :meth:`Room.restore` turn the room into plain data
and back, so an API replica can take over a room whose owner died; the
adapter maps connection handles to strings and back and says which of them
still stand.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

from sfu.control.messages import TrackInfo
from signalling import errors
from signalling.protocol import (
    Admit,
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

if TYPE_CHECKING:
    # Only its shape: the core has no business with tokens or their crypto.
    from wadud.auth import RoomGrant

ConnId = Hashable

__all__ = [
    "TRANSITIONS",
    "Close",
    "ConnId",
    "ControlFrame",
    "Event",
    "JoinResult",
    "MediaCloseRoom",
    "MediaLeave",
    "Output",
    "Participant",
    "Resubscribe",
    "Room",
    "Send",
    "State",
    "participant_info",
    "track_info",
]


class State(Enum):
    WAITING = "waiting"
    JOINED = "joined"
    DETACHED = "detached"
    GONE = "gone"


class Event(Enum):
    ADMIT = "admit"
    DENY = "deny"
    DISCONNECT = "disconnect"
    RESUME = "resume"
    LEAVE = "leave"
    REMOVE = "remove"
    REPLACE = "replace"
    EXPIRE = "expire"
    END = "end"


W, J, D, G = State.WAITING, State.JOINED, State.DETACHED, State.GONE

#: Every allowed move; a pair not here is :class:`errors.BadState`.
TRANSITIONS: dict[tuple[State, Event], State] = {
    (W, Event.ADMIT): J,
    (W, Event.RESUME): W,
    (W, Event.DENY): G,
    (W, Event.DISCONNECT): G,
    (W, Event.LEAVE): G,
    (W, Event.REMOVE): G,
    (W, Event.REPLACE): G,
    (W, Event.END): G,
    (J, Event.RESUME): J,
    (J, Event.DISCONNECT): D,
    (J, Event.LEAVE): G,
    (J, Event.REMOVE): G,
    (J, Event.REPLACE): G,
    (J, Event.END): G,
    (D, Event.RESUME): J,
    (D, Event.EXPIRE): G,
    (D, Event.REMOVE): G,
    (D, Event.REPLACE): G,
    (D, Event.END): G,
}

#: States that count as "in the room" (seen by others, media alive).
PRESENT = frozenset({J, D})


# -- outputs -------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``frame`` on connection ``conn``."""

    conn: ConnId
    frame: dict[str, Any]


@dataclass(frozen=True)
class Close:
    """Close connection ``conn`` with ``code`` once what was sent before is out."""

    conn: ConnId
    code: int
    reason: str


@dataclass(frozen=True)
class MediaLeave:
    """The participant's transports, tracks and subscriptions go (media.leave)."""

    participant: str


@dataclass(frozen=True)
class MediaCloseRoom:
    """The room is over on the media side too (media.close_room)."""


@dataclass(frozen=True)
class Resubscribe:
    """What these participants should receive changed: renegotiate their
    subscribe connections towards :meth:`Room.wanted`."""

    participants: tuple[str, ...]


Output = Send | Close | MediaLeave | MediaCloseRoom | Resubscribe | RecordingOutput


# -- participants --------------------------------------------------------------


@dataclass(eq=False)
class Participant:
    id: str
    grant: RoomGrant
    session: str
    state: State
    conn: ConnId | None
    #: When a DETACHED participant is gone, unless it resumes.
    deadline: float | None = None
    #: Its published tracks, by id, in publish order.
    tracks: dict[str, TrackInfo] = field(default_factory=dict)
    #: The room's media moved while it was DETACHED: tell it on resume.
    media_stale: bool = False

    @property
    def admin(self) -> bool:
        return self.grant.admin

    @property
    def present(self) -> bool:
        return self.state in PRESENT


def participant_info(p: Participant, *, grants: bool = False) -> dict[str, Any]:
    """A participant as frames show it to others (``grants`` for its own view)."""
    info: dict[str, Any] = {
        "id": p.id,
        "identity": p.grant.identity,
        "name": p.grant.name,
        "role": p.grant.role,
    }
    if grants:
        info["grants"] = {
            "publish": p.grant.publish,
            "subscribe": p.grant.subscribe,
            "admin": p.grant.admin,
        }
    return info


def track_info(t: TrackInfo) -> dict[str, Any]:
    return {
        "track_id": t.track_id,
        "participant": t.participant,
        "kind": t.kind,
        "source": t.source,
        "mid": t.mid,
        "muted": t.muted,
    }


@dataclass(frozen=True)
class JoinResult:
    participant: Participant
    outputs: list[Output]
    resumed: bool


def _new_participant_id() -> str:
    return "p-" + secrets.token_hex(6)


def _new_session() -> str:
    return secrets.token_urlsafe(24)


IceServers = Callable[[str], list[dict[str, Any]]]

#: The frames the room answers by itself, with no media call.
ControlFrame = Admit | Deny | Remove | RoomSettings | End | Leave | Record | RecordingConsent


class Room:
    """A room's participants, waiting room, tracks and rules; see the module docstring."""

    def __init__(
        self,
        name: str,
        *,
        max_participants: int,
        resume_grace: float,
        ping_interval: float,
        ice_servers: IceServers | None = None,
        new_id: Callable[[], str] = _new_participant_id,
        new_session: Callable[[], str] = _new_session,
    ) -> None:
        self.name = name
        self.max_participants = max_participants
        self.resume_grace = resume_grace
        self.ping_interval = ping_interval
        self._ice_servers = ice_servers or (lambda _pid: [])
        self._new_id = new_id
        self._new_session = new_session
        self.require_admission = False
        self.ended = False
        #: Everyone not GONE, in joining order.
        self.participants: dict[str, Participant] = {}
        self._sessions: dict[str, str] = {}
        self._speaker: str | None = None
        #: Identities an admin denied or removed: they wait for admission,
        #: whatever the room's setting, until an admin admits them.
        self.blocked: set[str] = set()
        #: The visit's recording and who agreed to it (signalling.room.consent).
        self.recording = RoomConsent()

    # -- views -----------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self.participants

    def get(self, participant_id: str) -> Participant | None:
        return self.participants.get(participant_id)

    def present(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.present]

    def waiting(self) -> list[Participant]:
        return [p for p in self.participants.values() if p.state is W]

    def tracks(self) -> list[TrackInfo]:
        return [t for p in self.present() for t in p.tracks.values()]

    def tracks_of(self, participant_id: str) -> list[TrackInfo]:
        p = self.participants.get(participant_id)
        return list(p.tracks.values()) if p is not None else []

    def wanted(self, participant_id: str) -> list[TrackInfo]:
        """The tracks this participant should receive: every other present
        participant's, if it is present and has the subscribe grant."""
        p = self.participants.get(participant_id)
        if p is None or not p.present or not p.grant.subscribe:
            return []
        return [t for t in self.tracks() if t.participant != participant_id]

    def count(self, state: State) -> int:
        return sum(p.state is state for p in self.participants.values())

    def _admin_present(self) -> bool:
        return any(p.admin and p.present for p in self.participants.values())

    def _subscribers(self, *, besides: str | None = None) -> tuple[str, ...]:
        return tuple(
            p.id
            for p in self.participants.values()
            if p.present and p.grant.subscribe and p.id != besides
        )

    # -- timers ----------------------------------------------------------------

    def get_timer(self) -> float | None:
        """The earliest resume deadline, or None."""
        deadlines = [p.deadline for p in self.participants.values() if p.deadline is not None]
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> list[Output]:
        """Participants whose grace period is over leave (reason ``timeout``)."""
        out: list[Output] = []
        for p in list(self.participants.values()):
            if p.state is D and p.deadline is not None and p.deadline <= now:
                out += self._depart(p, Event.EXPIRE, "timeout")
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
    ) -> JoinResult:
        """A connection presents a valid token for this room: resume, replace,
        wait or join. Raises :class:`errors.RoomEnded` or :class:`errors.RoomFull`."""
        if self.ended:
            raise errors.RoomEnded("the room was ended")
        if grant.room != self.name:
            raise errors.WrongRoom(f"the token is for room {grant.room!r}")
        out: list[Output] = []
        old = self._resumable(grant, resume)
        if old is not None:
            if old.conn is not None:
                # A half-open older connection (the server had not noticed the
                # drop yet): the resumed one takes over.
                out += self._to(old, reply("replaced"))
                out.append(Close(old.conn, errors.CLOSE_REPLACED, "resumed elsewhere"))
            self._move(old, Event.RESUME)
            old.conn, old.deadline = conn, None
            out += self._welcome(old, ref)
            if old.media_stale and old.state is J:
                old.media_stale = False
                out += self._to(old, reply("media_reconnect", reason="media-moved"))
            return JoinResult(old, out, resumed=True)
        older = [p for p in self.participants.values() if p.grant.identity == grant.identity]
        if len(self.participants) - len(older) >= self.max_participants:
            raise errors.RoomFull(f"the room has {self.max_participants} participants")
        for p in older:
            out += self._depart(p, Event.REPLACE, "replaced")
        pid = self._new_id()
        while pid in self.participants:
            pid = self._new_id()
        waits = not grant.admin and (
            self.require_admission or not self._admin_present() or grant.identity in self.blocked
        )
        p = Participant(pid, grant, self._new_session(), W if waits else J, conn)
        self.participants[pid] = p
        self._sessions[p.session] = pid
        if waits:
            out += self._to(p, self._waiting_frame(p, ref))
            out += self._waiting_changed()
        else:
            out += self._welcome(p, ref)
            out += self._announce_joined(p)
        return JoinResult(p, out, resumed=False)

    def _waiting_frame(self, p: Participant, ref: str | None) -> dict[str, Any]:
        return reply(
            "waiting", ref, participant=participant_info(p, grants=True), session=p.session
        )

    def typed_name(self, session: str) -> str:
        """The display name the participant of ``session`` typed (their
        token named nobody), so a resume without it keeps it."""
        pid = self._sessions.get(session)
        p = self.participants.get(pid) if pid is not None else None
        return p.grant.name if p is not None else ""

    def _resumable(self, grant: RoomGrant, resume: str | None) -> Participant | None:
        if resume is None:
            return None
        pid = self._sessions.get(resume)
        p = self.participants.get(pid) if pid is not None else None
        # The same person with the same rights: a token that grants other
        # rights starts afresh, so a resume never keeps rights a new token
        # took away.
        if p is None or p.grant != grant or (p.state, Event.RESUME) not in TRANSITIONS:
            return None
        return p

    def _welcome(self, p: Participant, ref: str | None) -> list[Output]:
        """``joined`` (or ``waiting`` again, on a resume in the waiting room)."""
        if p.state is W:
            return self._to(p, self._waiting_frame(p, ref))
        others = [participant_info(o) for o in self.present() if o is not p]
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
            tracks=[track_info(t) for t in self.tracks()],
            waiting=[participant_info(w) for w in self.waiting()] if p.admin else [],
            require_admission=self.require_admission,
            active_speaker=self._speaker,
            ping_interval=self.ping_interval,
            recording={**self.recording.view(), "asked": self.recording.must_answer(_voter(p))},
        )
        return self._to(p, frame) + self._consent(*self.recording.arrived(_voter(p)))

    def _announce_joined(self, p: Participant) -> list[Output]:
        out = self._broadcast(reply("participant_joined", participant=participant_info(p)), p)
        if p.grant.subscribe and self.tracks():
            out.append(Resubscribe((p.id,)))
        return out

    # -- leaving ---------------------------------------------------------------

    def disconnect(self, conn: ConnId, now: float, grace: float | None = None) -> list[Output]:
        """A connection ended (closed, dropped, timed out). Its participant, if
        it still has that connection, waits ``grace`` (``resume_grace``) or goes."""
        p = self._by_conn(conn)
        if p is None:
            return []
        if p.state is W:
            return self._depart(p, Event.DISCONNECT, "left") + self._maybe_close()
        self._move(p, Event.DISCONNECT)
        p.conn, p.deadline = None, now + (self.resume_grace if grace is None else grace)
        return []

    def leave(self, conn: ConnId) -> list[Output]:
        p = self._caller(conn, waiting_ok=True)
        out = self._depart(p, Event.LEAVE, "left", close=(errors.CLOSE_NORMAL, "left"))
        return out + self._maybe_close()

    def remove(self, conn: ConnId, target_id: str) -> list[Output]:
        self._admin(conn)
        target = self._target(target_id)
        self._block(target)
        out = self._to(target, reply("removed"))
        out += self._depart(
            target, Event.REMOVE, "removed", close=(errors.CLOSE_FORBIDDEN, "removed")
        )
        return out + self._maybe_close()

    def end(self, conn: ConnId) -> list[Output]:
        """An admin ends the room: everyone is told and closed; joins are refused from now on."""
        self._admin(conn)
        return self._ended(reply("room_ended"), "room ended")

    def close(self, reason: str) -> list[Output]:
        """The server ends the room (its booking was cancelled): everyone is
        told ``room_ended`` with ``reason`` and closed; joins are refused."""
        return self._ended(reply("room_ended", reason=reason), reason)

    def _ended(self, told: dict[str, Any], reason: str) -> list[Output]:
        # Everyone hears ``told`` and is closed with ``reason``.
        out: list[Output] = []
        for p in list(self.participants.values()):
            out += self._to(p, told)
            if p.conn is not None:
                out.append(Close(p.conn, errors.CLOSE_ENDED, reason))
            self._move(p, Event.END)
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
        for p in list(self.participants.values()):
            if p.grant.identity != identity or (sid is not None and p.grant.sid != sid):
                continue
            out += self._to(p, reply("removed", reason="signed-out"))
            out += self._depart(
                p, Event.REMOVE, "signed-out", close=(errors.CLOSE_UNAUTHORIZED, "signed out")
            )
        return out + self._maybe_close()

    def _depart(
        self,
        p: Participant,
        event: Event,
        reason: str,
        *,
        close: tuple[int, str] | None = None,
    ) -> list[Output]:
        """``p`` leaves the room by ``event``: its connection (if any) is closed
        (``replaced`` first on a replacement), the others hear of it and the
        media side forgets it."""
        was = p.state
        out: list[Output] = []
        if event is Event.REPLACE:
            out += self._to(p, reply("replaced"))
            close = (errors.CLOSE_REPLACED, "replaced")
        if p.conn is not None and close is not None:
            out.append(Close(p.conn, *close))
        self._move(p, event)
        self._forget(p)
        if was is W:
            return out + self._waiting_changed()
        for t in p.tracks.values():
            out += self._broadcast(reply("track_unpublished", track_id=t.track_id))
        out += self._broadcast(reply("participant_left", participant_id=p.id, reason=reason))
        out.append(MediaLeave(p.id))
        if p.tracks and (subs := self._subscribers()):
            out.append(Resubscribe(subs))
        if self._speaker == p.id:
            self._speaker = None
            out += self._broadcast(reply("active_speaker", participant_id=None))
        return out + self._consent(*self.recording.departed(self._voters()))

    def _forget(self, p: Participant) -> None:
        self.participants.pop(p.id, None)
        self._sessions.pop(p.session, None)
        p.conn, p.deadline = None, None

    def _maybe_close(self) -> list[Output]:
        # The last one out closes the room on the media side; the adapter
        # forgets an empty room.
        if not self.empty or self.ended:
            return []
        return [*self.recording.close(), MediaCloseRoom()]

    # -- control frames ----------------------------------------------------------

    def receive(self, conn: ConnId, frame: ControlFrame) -> list[Output]:
        """A control frame from ``conn``: its ``ok`` and what it changes.
        Raises the :class:`errors.CallError` of a refusal, having changed nothing."""
        outputs = _CONTROL[type(frame)](self, conn, frame)
        return [Send(conn, reply("ok", frame.id)), *outputs]

    # -- admission -------------------------------------------------------------

    def admit(self, conn: ConnId, target_id: str) -> list[Output]:
        self._admin(conn)
        p = self._target(target_id)
        self._move(p, Event.ADMIT)
        self.blocked.discard(p.grant.identity)
        return self._welcome(p, None) + self._announce_joined(p) + self._waiting_changed()

    def deny(self, conn: ConnId, target_id: str) -> list[Output]:
        self._admin(conn)
        p = self._target(target_id)
        if p.state is not W:
            raise errors.BadState(f"{target_id} is not waiting")
        self._block(p)
        out = self._to(p, reply("denied"))
        return out + self._depart(p, Event.DENY, "denied", close=(errors.CLOSE_FORBIDDEN, "denied"))

    def _block(self, p: Participant) -> None:
        # An admin's token comes back as admin whatever we note here.
        if not p.admin:
            self.blocked.add(p.grant.identity)

    def set_require_admission(self, conn: ConnId, value: bool) -> list[Output]:
        self._admin(conn)
        self.require_admission = value
        frame = reply("room_settings", require_admission=value)
        return [Send(p.conn, frame) for p in self._listeners() if p.admin]

    # -- recording (signalling.room.consent) ---------------------------------

    def record(self, conn: ConnId, on: bool) -> list[Output]:
        """An admin asks to record (everyone present is asked) or stops it."""
        by = _voter(self._admin(conn))
        if on:
            return self._consent(*self.recording.request(by, self._voters()))
        return self._consent(*self.recording.stop(by))

    def answer_recording(self, conn: ConnId, recording_id: str, agree: bool) -> list[Output]:
        voter = _voter(self._caller(conn))
        return self._consent(*self.recording.answer(voter, recording_id, agree, self._voters()))

    def recording_failed(self, recording_id: str, detail: str) -> list[Output]:
        """The recording could not be kept (the media side or its storage)."""
        return self._consent(*self.recording.failed(recording_id, detail))

    def _voters(self) -> list[Voter]:
        return [_voter(p) for p in self.present()]

    def _consent(
        self, frames: list[tuple[str | None, dict[str, Any]]], outputs: list[RecordingOutput]
    ) -> list[Output]:
        out: list[Output] = []
        for pid, frame in frames:
            if pid is None:
                out += self._broadcast(frame)
            elif (p := self.participants.get(pid)) is not None:
                out += self._to(p, frame)
        return out + list(outputs)

    # -- tracks ----------------------------------------------------------------

    def check_publish(self, conn: ConnId) -> Participant:
        p = self._caller(conn)
        if not p.grant.publish:
            raise errors.NotAllowed("your token does not grant publish")
        if not p.tracks and self.recording.state == "on" and self.recording.must_answer(_voter(p)):
            # Someone who came in while the visit is recorded sends nothing
            # before answering; whoever was already sending keeps sending
            # (a refusal stops the recording, not their media).
            raise errors.NotAllowed("answer whether this visit may be recorded first")
        return p

    def published(
        self, participant_id: str, added: Sequence[TrackInfo], removed: Iterable[str]
    ) -> list[Output]:
        """The media worker answered a publish offer: tracks came and went."""
        p = self.participants.get(participant_id)
        if p is None or not p.present:
            return []
        out: list[Output] = []
        changed = False
        for track_id in removed:
            if p.tracks.pop(track_id, None) is not None:
                changed = True
                out += self._broadcast(reply("track_unpublished", track_id=track_id), p)
        for t in added:
            if t.participant != p.id:
                t = replace(t, participant=p.id)
            p.tracks[t.track_id] = t
            changed = True
            out += self._broadcast(reply("track_published", track=track_info(t)), p)
        if changed and (subs := self._subscribers(besides=p.id)):
            out.append(Resubscribe(subs))
        return out

    def check_joined(self, conn: ConnId) -> Participant:
        return self._caller(conn)

    def check_subscribe(self, conn: ConnId) -> Participant:
        p = self._caller(conn)
        if not p.grant.subscribe:
            raise errors.NotAllowed("your token does not grant subscribe")
        return p

    def check_mute(self, conn: ConnId, track_id: str) -> tuple[Participant, TrackInfo]:
        p = self._caller(conn)
        t = self._track(track_id)
        if t.participant != p.id and not p.admin:
            raise errors.NotAllowed("only admins mute others' tracks")
        return p, t

    def muted(self, by: str, track_id: str, muted: bool) -> list[Output]:
        """A track was muted or unmuted on the media side; everyone is told."""
        for p in self.present():
            if track_id in p.tracks:
                p.tracks[track_id] = replace(p.tracks[track_id], muted=muted)
                frame = reply("track_muted", track_id=track_id, muted=muted, by=by)
                return self._broadcast(frame)
        return []

    def check_unpublish(self, conn: ConnId, track_id: str) -> Participant:
        p = self._caller(conn)
        t = self._track(track_id)
        if t.participant != p.id:
            raise errors.NotAllowed("you can unpublish only your own tracks")
        return p

    def unpublished(self, participant_id: str, track_id: str) -> list[Output]:
        return self.published(participant_id, (), (track_id,))

    def speaker(self, participant_id: str | None) -> list[Output]:
        """The media worker's active speaker changed."""
        if participant_id is not None and participant_id not in self.participants:
            participant_id = None
        if participant_id == self._speaker:
            return []
        self._speaker = participant_id
        return self._broadcast(reply("active_speaker", participant_id=participant_id))

    # -- media moves -----------------------------------------------------------

    def media_reset(self, reason: str, only: Collection[str] | None = None) -> list[Output]:
        """A media worker is gone (or draining): the tracks of everyone on it
        (everyone, or the participants in ``only`` when the room spans
        several workers) are forgotten, those connected are told
        ``media_reconnect`` and DETACHED ones will be told when they resume.
        The adapter points the room at the new worker first."""
        out: list[Output] = []
        moved = [p for p in self.present() if only is None or p.id in only]
        for p in moved:
            for t in p.tracks.values():
                out += self._broadcast(reply("track_unpublished", track_id=t.track_id), p)
            p.tracks.clear()
        for p in moved:
            if p.state is J and p.conn is not None:
                out += self._to(p, reply("media_reconnect", reason=reason))
            else:
                p.media_stale = True
        if self._speaker is not None and (only is None or self._speaker in only):
            self._speaker = None
            out += self._broadcast(reply("active_speaker", participant_id=None))
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
        return {
            "name": self.name,
            "require_admission": self.require_admission,
            "ended": self.ended,
            "speaker": self._speaker,
            "blocked": sorted(self.blocked),
            "recording": self.recording.snapshot(),
            "participants": [
                {
                    "id": p.id,
                    "grant": asdict(p.grant),
                    "session": p.session,
                    "state": p.state.value,
                    "conn": conn_ref(p.conn) if p.conn is not None else None,
                    "grace_left": None if p.deadline is None else p.deadline - now,
                    "tracks": [asdict(t) for t in p.tracks.values()],
                    "media_stale": p.media_stale,
                }
                for p in self.participants.values()
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
        reference, ``resume_grace`` where it gives None. Returns what that
        changes for the others."""
        self.require_admission = bool(data.get("require_admission", False))
        self.ended = bool(data.get("ended", False))
        self._speaker = data.get("speaker")
        self.blocked = set(data.get("blocked", ()))
        self.recording.restore(data.get("recording") or {})
        self.participants.clear()
        self._sessions.clear()
        lost: list[tuple[Participant, float | None]] = []
        for d in data.get("participants", ()):
            grant = grant_of(d["grant"])
            ref = d.get("conn")
            conn = conn_of(ref) if ref else None
            p = Participant(
                id=d["id"],
                grant=grant,
                session=d["session"],
                state=State(d["state"]),
                conn=conn,
                media_stale=bool(d.get("media_stale", False)),
            )
            p.tracks = {t["track_id"]: TrackInfo(**t) for t in d.get("tracks", ())}
            left = d.get("grace_left")
            if p.state is D and left is not None:
                p.deadline = now + max(0.0, left - elapsed)
            self.participants[p.id] = p
            self._sessions[p.session] = p.id
            if p.conn is None and p.state is not D:
                lost.append((p, grace_of(ref) if ref and grace_of is not None else None))
        out: list[Output] = []
        for p, grace in lost:
            if p.state is W:
                out += self._depart(p, Event.DISCONNECT, "left")
            else:
                self._move(p, Event.DISCONNECT)
                p.deadline = now + (self.resume_grace if grace is None else grace)
        return out + self._maybe_close()

    # -- helpers ---------------------------------------------------------------

    def participant_of(self, conn: ConnId) -> Participant | None:
        return self._by_conn(conn)

    def _by_conn(self, conn: ConnId) -> Participant | None:
        for p in self.participants.values():
            if p.conn == conn:
                return p
        return None

    def _caller(self, conn: ConnId, *, waiting_ok: bool = False) -> Participant:
        p = self._by_conn(conn)
        if p is None or (p.state is W and not waiting_ok):
            raise errors.NotJoined("join the room first" if p is None else "you are waiting")
        return p

    def _admin(self, conn: ConnId) -> Participant:
        p = self._caller(conn)
        if not p.admin:
            raise errors.NotAllowed("this needs the admin right")
        return p

    def _target(self, participant_id: str) -> Participant:
        p = self.participants.get(participant_id)
        if p is None:
            raise errors.UnknownTarget(f"no participant {participant_id!r}")
        return p

    def _track(self, track_id: str) -> TrackInfo:
        for p in self.present():
            if track_id in p.tracks:
                return p.tracks[track_id]
        raise errors.UnknownTarget(f"no track {track_id!r}")

    def _move(self, p: Participant, event: Event) -> None:
        new = TRANSITIONS.get((p.state, event))
        if new is None:
            raise errors.BadState(f"{p.id} is {p.state.value}; cannot {event.value}")
        p.state = new

    def _to(self, p: Participant, frame: dict[str, Any]) -> list[Output]:
        return [Send(p.conn, frame)] if p.conn is not None else []

    def _listeners(self) -> list[Participant]:
        # Those who hear room events: joined and connected. Waiting ones see
        # nothing of the room; detached ones get a fresh snapshot on resume.
        return [p for p in self.participants.values() if p.state is J and p.conn is not None]

    def _broadcast(self, frame: dict[str, Any], besides: Participant | None = None) -> list[Output]:
        return [Send(p.conn, frame) for p in self._listeners() if p is not besides]

    def _waiting_changed(self) -> list[Output]:
        frame = reply("waiting", waiting=[participant_info(w) for w in self.waiting()])
        return [Send(p.conn, frame) for p in self._listeners() if p.admin]


def _voter(p: Participant) -> Voter:
    return Voter(p.id, p.grant.identity, p.grant.role, p.grant.admin)


#: Each control frame's handler (:meth:`Room.receive`).
_CONTROL: dict[type[ControlFrame], Callable[[Room, ConnId, Any], list[Output]]] = {
    Admit: lambda room, conn, f: room.admit(conn, f.participant_id),
    Deny: lambda room, conn, f: room.deny(conn, f.participant_id),
    Remove: lambda room, conn, f: room.remove(conn, f.participant_id),
    RoomSettings: lambda room, conn, f: room.set_require_admission(conn, f.require_admission),
    End: lambda room, conn, f: room.end(conn),
    Leave: lambda room, conn, f: room.leave(conn),
    Record: lambda room, conn, f: room.record(conn, f.on),
    RecordingConsent: lambda room, conn, f: room.answer_recording(conn, f.recording_id, f.agree),
}
