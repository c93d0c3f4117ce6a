"""What a room core hands its adapter to carry out, without I/O.

Frames to send and connections to close name the connection the
participant had when the output was made (a resume may replace it later);
media to clean up and subscriptions to renegotiate name participants; the
recording's steps are :mod:`signalling.room.consent`'s. A connection is an
opaque handle the adapter passes in (:data:`ConnId`).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from signalling.room.consent import RecordingOutput

__all__ = [
    "Close",
    "ConnId",
    "InviteDecided",
    "MediaCloseRoom",
    "MediaLeave",
    "Output",
    "Resubscribe",
    "SendFrame",
]

ConnId = Hashable


@dataclass(frozen=True)
class SendFrame:
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
    subscribe connections towards :meth:`signalling.room.media.RoomMedia.wanted`."""

    participants: tuple[str, ...]


@dataclass(frozen=True)
class InviteDecided:
    """The patient (``by``, their identity) agreed to a guest's invite or
    refused it: keep the answer (a refusal kills the link)."""

    invite: str
    by: str
    agreed: bool


Output = (
    SendFrame | Close | MediaLeave | MediaCloseRoom | Resubscribe | InviteDecided | RecordingOutput
)
