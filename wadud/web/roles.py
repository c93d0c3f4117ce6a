"""What a participant of a call may do: roles as data.

A room token names a role and carries the actions it grants
(:class:`~wadud.web.auth.RoomGrant`'s ``actions``). The server checks each
action where it happens: signalling (publishing audio, video or a screen,
receiving the others, admitting, removing, inviting, recording and its
consent) and the consultation's chat; a page only hides what it cannot do.

The built-in roles (:data:`ROLES`) are a visit's usual people. A clinic may
define its own on top, each a name and a set of these actions; a token
minted for one carries its actions like any other, so no check ever looks
a role up by name.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

__all__ = ["ADMIN", "PUBLISH", "ROLES", "Action", "actions_of", "narrowed", "parse_actions"]


class Action(StrEnum):
    """One thing a participant may do in a call (docs/guests.md)."""

    #: Send a microphone track.
    PUBLISH_AUDIO = "publish_audio"
    #: Send a camera track.
    PUBLISH_VIDEO = "publish_video"
    #: Send a screen (and its audio).
    SHARE_SCREEN = "share_screen"
    #: Write in the consultation's chat (everyone present reads it).
    CHAT = "chat"
    #: See and hear the others: receive their tracks.
    SUBSCRIBE = "subscribe"
    #: Let people in from the waiting room (or turn them away), hear who
    #: waits, and set whether everyone waits.
    ADMIT = "admit"
    #: Take someone out of the visit, mute their tracks, end it for all.
    REMOVE = "remove"
    #: Invite a guest, or call a phone into the visit.
    INVITE = "invite"
    #: Ask to record the visit and stop its recording.
    RECORD = "record"
    #: Be asked, and count, in the recording's consent: a recording starts
    #: only when everyone present with this action agreed.
    CONSENT = "consent"
    #: Agree, or refuse, that a family member or observer is let in (the
    #: patient's own say over who sees them).
    APPROVE_GUESTS = "approve_guests"


#: What publishing means, source by source: a token's ``publish`` right.
PUBLISH = frozenset({Action.PUBLISH_AUDIO, Action.PUBLISH_VIDEO, Action.SHARE_SCREEN})
#: A host's actions: a token's ``admin`` right.
ADMIN = frozenset({Action.ADMIT, Action.REMOVE, Action.INVITE, Action.RECORD})
_TALK = PUBLISH | {Action.CHAT, Action.SUBSCRIBE, Action.CONSENT}

#: The built-in roles and what each grants.
ROLES: dict[str, frozenset[Action]] = {
    # Runs the visit.
    "doctor": frozenset(Action) - {Action.APPROVE_GUESTS},
    # The person the visit is about: says who else may see them.
    "patient": _TALK | {Action.APPROVE_GUESTS},
    # A second doctor, a specialist, a nurse: lets people in, no more.
    "clinician": _TALK | {Action.ADMIT},
    # Speaks for the patient; no screen of their own to share.
    "interpreter": _TALK - {Action.SHARE_SCREEN},
    "family": _TALK - {Action.SHARE_SCREEN},
    # A trainee or an auditor: watches and listens, is neither seen nor heard
    # nor asked about a recording they are not in.
    "observer": frozenset({Action.SUBSCRIBE}),
    # The clinic's front desk: a host that need not be seen.
    "staff": frozenset(Action) - {Action.APPROVE_GUESTS},
}


def actions_of(
    role: str, *, publish: bool = True, subscribe: bool = True, admin: bool = False
) -> frozenset[Action]:
    """The actions of a token that names ``role`` and only the rights of
    old: a built-in role's, else talking and chatting; ``publish`` and
    ``subscribe`` false take theirs away, ``admin`` adds a host's."""
    base = ROLES.get(role, _TALK)
    if admin:
        base |= ADMIN
    return narrowed(base, publish=publish, subscribe=subscribe)


def narrowed(actions: frozenset[Action], *, publish: bool, subscribe: bool) -> frozenset[Action]:
    """``actions`` less every publish action (``publish`` false) and less
    ``subscribe`` (``subscribe`` false)."""
    if not publish:
        actions -= PUBLISH
    if not subscribe:
        actions -= {Action.SUBSCRIBE}
    return actions


def parse_actions(names: Iterable[str]) -> frozenset[Action]:
    """Actions by name; :class:`ValueError` names an unknown one."""
    return frozenset(Action(n) for n in names)
