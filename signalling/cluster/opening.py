"""A call connection's first message, read once.

A replica with two control planes (:mod:`signalling.edge.planes`) must read a
connection's first frame, a ``join``, and decode its room token to learn
which plane holds the room (the token's ``home``). The plane's service
then takes that reading as its own: the frame is not parsed again and the
token is not decoded again (:meth:`signalling.service.calls.CallService.serve`).
A text that is no frame, or a token that is no good, keeps its error, which
the service answers where it would have met it: the same error frame and
close code as a connection that reached the service directly.
"""

from __future__ import annotations

import dataclasses

from aiohttp import WSMessage, WSMsgType

from signalling import errors, protocol
from wadud.config import Settings
from wadud.web.auth import InvalidToken, RoomGrant, decode_room_token

#: A join's token decoded: its claims (signature and validity times good; the
#: checks against the room are the service's ``admit``), or why it is refused.
Claims = RoomGrant | errors.BadRoomToken


def claims_of(settings: Settings, token: str) -> RoomGrant:
    """The claims of a ``join``'s room token; :class:`errors.BadRoomToken`
    (close 4401) when it is not a good one."""
    try:
        return decode_room_token(settings, token)
    except InvalidToken as exc:
        raise errors.BadRoomToken(exc.detail) from exc


@dataclasses.dataclass(frozen=True)
class Opening:
    """A connection's first message and what was read from it: for a text
    message its frame, or the :class:`protocol.ProtocolError` it is not one
    by; for a ``join`` its token's :data:`Claims`."""

    message: WSMessage
    frame: protocol.ClientFrame | protocol.ProtocolError | None = None
    claims: Claims | None = None

    @classmethod
    def read(cls, settings: Settings, message: WSMessage) -> Opening:
        if message.type != WSMsgType.TEXT:
            return cls(message)
        try:
            frame = protocol.parse(message.data)
        except protocol.ProtocolError as exc:
            return cls(message, exc)
        if not isinstance(frame, protocol.Join):
            return cls(message, frame)
        try:
            return cls(message, frame, claims_of(settings, frame.token))
        except errors.BadRoomToken as exc:
            return cls(message, frame, exc)

    @property
    def home(self) -> str:
        """The region whose own plane holds the room the join names (empty:
        the global plane, also for anything that is not a good join)."""
        return self.claims.home if isinstance(self.claims, RoomGrant) else ""
