"""Who is in a call room, without I/O: its participants and their
connections, the waiting room, who may do what, and how to reach them.

Participants and their connections
----------------------------------

A participant is identified by an id the room assigns; its connection by an
opaque handle the adapter passes in (``conn``). A connection can be replaced
under a participant (a resume), so everything addressed to a person goes to
``participant.conn`` at the moment it is produced.

Each participant is in one :class:`MemberState`, and moves only along
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
  the room's resume grace period, the deadline it holds here; a ``join``
  with its ``session`` makes it JOINED again with the same id.
* GONE: out of the room for good; nothing is ever sent to it again.

A connection's participant is WAITING when it has no ``admin`` grant and
either nobody with ``admin`` is in the room (JOINED or DETACHED), the room
requires admission, or an admin denied or removed that identity before (a
removal holds: the same link waits for admission again, until an admin admits
it); an admin admits or denies. A ``join`` without a resume for an identity
already in the room replaces the older participant.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

from signalling import errors
from signalling.protocol import reply
from signalling.room.outputs import ConnId, Output, SendFrame
from wadud.web.roles import Action

if TYPE_CHECKING:
    # Only its shape: the core has no business with tokens or their crypto.
    from wadud.web.auth import RoomGrant

__all__ = [
    "PRESENT",
    "TRANSITIONS",
    "Member",
    "MemberEvent",
    "MemberState",
    "Members",
    "participant_info",
    "random_participant_id",
    "random_session",
]


class MemberState(Enum):
    WAITING = "waiting"
    JOINED = "joined"
    DETACHED = "detached"
    GONE = "gone"


class MemberEvent(Enum):
    ADMIT = "admit"
    DENY = "deny"
    DISCONNECT = "disconnect"
    RESUME = "resume"
    LEAVE = "leave"
    REMOVE = "remove"
    REPLACE = "replace"
    EXPIRE = "expire"
    END = "end"


W, J, D, G = MemberState.WAITING, MemberState.JOINED, MemberState.DETACHED, MemberState.GONE

#: Every allowed move; a pair not here is :class:`errors.BadState`.
TRANSITIONS: dict[tuple[MemberState, MemberEvent], MemberState] = {
    (W, MemberEvent.ADMIT): J,
    (W, MemberEvent.RESUME): W,
    (W, MemberEvent.DENY): G,
    (W, MemberEvent.DISCONNECT): G,
    (W, MemberEvent.LEAVE): G,
    (W, MemberEvent.REMOVE): G,
    (W, MemberEvent.REPLACE): G,
    (W, MemberEvent.END): G,
    (J, MemberEvent.RESUME): J,
    (J, MemberEvent.DISCONNECT): D,
    (J, MemberEvent.LEAVE): G,
    (J, MemberEvent.REMOVE): G,
    (J, MemberEvent.REPLACE): G,
    (J, MemberEvent.END): G,
    (D, MemberEvent.RESUME): J,
    (D, MemberEvent.EXPIRE): G,
    (D, MemberEvent.REMOVE): G,
    (D, MemberEvent.REPLACE): G,
    (D, MemberEvent.END): G,
}

#: States that count as "in the room" (seen by others, media alive).
PRESENT = frozenset({J, D})


@dataclass(eq=False)
class Member:
    id: str
    grant: RoomGrant
    session: str
    state: MemberState
    conn: ConnId | None
    #: When a DETACHED participant is gone, unless it resumes.
    deadline: float | None = None
    #: Its own resume grace (a mobile app's, longer); None: the room's.
    resume_grace: float | None = None
    #: It publishes and receives on one peer connection (``join.connection``).
    single: bool = False

    @property
    def admin(self) -> bool:
        """A host: admits others (hears who waits, never waits)."""
        return self.grant.can(Action.ADMIT)

    @property
    def present(self) -> bool:
        return self.state in PRESENT


def participant_info(p: Member, *, grants: bool = False) -> dict[str, Any]:
    """A participant as frames show it to others (``grants`` for its own view)."""
    info: dict[str, Any] = {
        "id": p.id,
        "identity": p.grant.identity,
        "name": p.grant.name,
        "role": p.grant.role,
    }
    if p.grant.device:
        info["device"] = p.grant.device
    if grants:
        info["grants"] = {
            "publish": p.grant.publish,
            "subscribe": p.grant.subscribe,
            "admin": p.grant.admin,
        }
        info["actions"] = list(p.grant.actions or ())
    return info


def random_participant_id() -> str:
    """A participant id no one can guess (``p-`` and 12 hex digits)."""
    return "p-" + secrets.token_hex(6)


def random_session() -> str:
    """A resume session: a secret the participant's page keeps."""
    return secrets.token_urlsafe(24)


class Members:
    """A room's participants, in joining order, and its waiting room's rules;
    see the module docstring."""

    def __init__(
        self,
        *,
        max_participants: int,
        new_id: Callable[[], str] = random_participant_id,
        new_session: Callable[[], str] = random_session,
    ) -> None:
        self.max_participants = max_participants
        self._new_id = new_id
        self._new_session = new_session
        self.require_admission = False
        #: Everyone not GONE, in joining order.
        self.participants: dict[str, Member] = {}
        self._sessions: dict[str, str] = {}
        #: Identities an admin denied or removed: they wait for admission,
        #: whatever the room's setting, until an admin admits them.
        self.blocked: set[str] = set()
        #: Invites the patient agreed to here: their guests need it no more.
        self.approved: set[str] = set()
        #: The guests awaiting approval whom approvers last heard of (ids).
        self._awaiting_told: tuple[str, ...] = ()

    # -- views -----------------------------------------------------------------

    @property
    def empty(self) -> bool:
        return not self.participants

    def get(self, participant_id: str) -> Member | None:
        return self.participants.get(participant_id)

    def of(self, conn: ConnId) -> Member | None:
        """The participant whose connection ``conn`` is, if any."""
        for p in self.participants.values():
            if p.conn == conn:
                return p
        return None

    def present(self) -> list[Member]:
        return [p for p in self.participants.values() if p.present]

    def waiting(self) -> list[Member]:
        return [p for p in self.participants.values() if p.state is W]

    def count(self, state: MemberState) -> int:
        return sum(p.state is state for p in self.participants.values())

    def subscribers(self, *, besides: str | None = None) -> tuple[str, ...]:
        """The present participants that receive others' tracks."""
        return tuple(
            p.id
            for p in self.participants.values()
            if p.present and p.grant.can(Action.SUBSCRIBE) and p.id != besides
        )

    def typed_name(self, session: str) -> str:
        """The display name the participant of ``session`` typed (their
        token named nobody), so a resume without it keeps it."""
        pid = self._sessions.get(session)
        p = self.participants.get(pid) if pid is not None else None
        return p.grant.name if p is not None else ""

    # -- rights ----------------------------------------------------------------

    def check_joined(self, conn: ConnId, *, waiting_ok: bool = False) -> Member:
        """The participant of ``conn``, joined (or waiting, with ``waiting_ok``)."""
        p = self.of(conn)
        if p is None or (p.state is W and not waiting_ok):
            raise errors.NotJoined("join the room first" if p is None else "you are waiting")
        return p

    def check(self, conn: ConnId, *actions: Action) -> Member:
        """The joined participant of ``conn``, if its role grants every one
        of ``actions``; else :meth:`errors.NotAllowed.lacking` the first it
        does not."""
        p = self.check_joined(conn)
        for action in actions:
            if not p.grant.can(action):
                raise errors.NotAllowed.lacking(action, p.grant.role)
        return p

    def target(self, participant_id: str) -> Member:
        """The participant an admin's frame names."""
        p = self.participants.get(participant_id)
        if p is None:
            raise errors.UnknownTarget(f"no participant {participant_id!r}")
        return p

    # -- reaching them -----------------------------------------------------------

    def to(self, p: Member, frame: dict[str, Any]) -> list[Output]:
        return [SendFrame(p.conn, frame)] if p.conn is not None else []

    def listeners(self) -> list[Member]:
        """Those who hear room events: joined and connected. Waiting ones see
        nothing of the room; detached ones get a fresh snapshot on resume."""
        return [p for p in self.participants.values() if p.state is J and p.conn is not None]

    def broadcast(self, frame: dict[str, Any], besides: Member | None = None) -> list[Output]:
        return [SendFrame(p.conn, frame) for p in self.listeners() if p is not besides]

    def to_admins(self, frame: dict[str, Any]) -> list[Output]:
        return [SendFrame(p.conn, frame) for p in self.listeners() if p.admin]

    def waiting_frame(self, p: Member, ref: str | None) -> dict[str, Any]:
        """``waiting``, as the waiting participant ``p`` is told."""
        return reply(
            "waiting", ref, participant=participant_info(p, grants=True), session=p.session
        )

    def waiting_changed(self) -> list[Output]:
        """The admins hear who waits now; those who approve guests, who
        waits for their agreement."""
        out = self.to_admins(reply("waiting", waiting=self.waiting_list()))
        guests = self.guests_awaiting()
        ids = tuple(g["id"] for g in guests)
        if ids == self._awaiting_told:
            return out
        self._awaiting_told = ids
        return out + [
            SendFrame(p.conn, reply("guests_awaiting", guests=guests))
            for p in self.listeners()
            if p.grant.can(Action.APPROVE_GUESTS)
        ]

    def waiting_list(self) -> list[dict[str, Any]]:
        """Who waits, as a host sees them: a guest still waiting for the
        patient's agreement says so (``awaiting_approval``)."""
        return [
            {**participant_info(w), "awaiting_approval": True}
            if self.awaits_approval(w.grant)
            else participant_info(w)
            for w in self.waiting()
        ]

    def guests_awaiting(self) -> list[dict[str, Any]]:
        """The waiting guests whose invite needs the patient's agreement."""
        return [
            {**participant_info(w), "invite_id": w.grant.invite}
            for w in self.waiting()
            if self.awaits_approval(w.grant)
        ]

    def awaits_approval(self, grant: RoomGrant) -> bool:
        """Whether ``grant``'s guest still needs the patient's agreement."""
        return grant.approval and grant.invite not in self.approved

    # -- admission ---------------------------------------------------------------

    def set_require_admission(self, conn: ConnId, value: bool) -> list[Output]:
        self.check(conn, Action.ADMIT)
        self.require_admission = value
        return self.to_admins(reply("room_settings", require_admission=value))

    def must_wait(self, grant: RoomGrant) -> bool:
        """Whether a new participant with ``grant`` waits to be admitted."""
        admin_present = any(p.admin and p.present for p in self.participants.values())
        return self.awaits_approval(grant) or (
            not grant.admin
            and (self.require_admission or not admin_present or grant.identity in self.blocked)
        )

    def block(self, p: Member) -> None:
        """``p``'s identity waits for admission from now on (denied, removed)."""
        # An admin's token comes back as admin whatever we note here.
        if not p.admin:
            self.blocked.add(p.grant.identity)

    # -- comings and goings ------------------------------------------------------

    def resumable(self, grant: RoomGrant, resume: str | None) -> Member | None:
        """The participant a ``join`` with ``resume`` (a session) takes up again."""
        if resume is None:
            return None
        pid = self._sessions.get(resume)
        p = self.participants.get(pid) if pid is not None else None
        # The same person with the same rights: a token that grants other
        # rights starts afresh, so a resume never keeps rights a new token
        # took away.
        if p is None or p.grant != grant or (p.state, MemberEvent.RESUME) not in TRANSITIONS:
            return None
        return p

    def replaced_by(self, grant: RoomGrant) -> list[Member]:
        """Those a new participant with ``grant`` replaces (its identity's);
        :class:`errors.RoomFull` when there is no seat for it even so."""
        older = [p for p in self.participants.values() if p.grant.identity == grant.identity]
        if len(self.participants) - len(older) >= self.max_participants:
            raise errors.RoomFull(f"the room has {self.max_participants} participants")
        return older

    def add(self, conn: ConnId, grant: RoomGrant, state: MemberState) -> Member:
        """A new participant, WAITING or JOINED, with a new id and session."""
        pid = self._new_id()
        while pid in self.participants:
            pid = self._new_id()
        p = Member(pid, grant, self._new_session(), state, conn)
        self._enter(p)
        return p

    def move(self, p: Member, event: MemberEvent) -> None:
        new = TRANSITIONS.get((p.state, event))
        if new is None:
            raise errors.BadState(f"{p.id} is {p.state.value}; cannot {event.value}")
        p.state = new

    def detach(self, p: Member, deadline: float) -> None:
        """``p``'s connection is gone: DETACHED until ``deadline``."""
        self.move(p, MemberEvent.DISCONNECT)
        p.conn, p.deadline = None, deadline

    def forget(self, p: Member) -> None:
        self.participants.pop(p.id, None)
        self._sessions.pop(p.session, None)
        p.conn, p.deadline = None, None

    def _enter(self, p: Member) -> None:
        self.participants[p.id] = p
        self._sessions[p.session] = p.id

    # -- deadlines -------------------------------------------------------------

    def deadline(self) -> float | None:
        """The earliest resume deadline, or None."""
        deadlines = [p.deadline for p in self.participants.values() if p.deadline is not None]
        return min(deadlines) if deadlines else None

    def expired(self, now: float) -> list[Member]:
        """DETACHED participants whose grace period is over at ``now``."""
        return [
            p
            for p in self.participants.values()
            if p.state is D and p.deadline is not None and p.deadline <= now
        ]

    # -- snapshots ---------------------------------------------------------------

    def snapshot(
        self, p: Member, now: float, conn_ref: Callable[[ConnId], str | None]
    ) -> dict[str, Any]:
        """``p`` as plain data; its deadline as seconds left after ``now``."""
        return {
            "id": p.id,
            "grant": asdict(p.grant),
            "session": p.session,
            "state": p.state.value,
            "conn": conn_ref(p.conn) if p.conn is not None else None,
            "grace_left": None if p.deadline is None else p.deadline - now,
            "resume_grace": p.resume_grace,
            "single": p.single,
        }

    def clear(self) -> None:
        self.participants.clear()
        self._sessions.clear()

    def restore(
        self,
        data: dict[str, Any],
        now: float,
        *,
        grant: RoomGrant,
        conn: ConnId | None,
        elapsed: float,
    ) -> Member:
        """A participant back from :meth:`snapshot` (``elapsed`` seconds old),
        with the ``grant`` and connection handle the adapter made of it."""
        p = Member(
            id=data["id"],
            grant=grant,
            session=data["session"],
            state=MemberState(data["state"]),
            conn=conn,
            resume_grace=data.get("resume_grace"),
            single=bool(data.get("single", False)),
        )
        left = data.get("grace_left")
        if p.state is D and left is not None:
            p.deadline = now + max(0.0, left - elapsed)
        self._enter(p)
        return p
