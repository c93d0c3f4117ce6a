"""Signalling's errors: one root under :class:`wadud.errors.WadudError`.

Every error carries its wire ``code`` (the ``error`` frame's code, see
docs/protocol.md "Calls (signalling)") and, for the refusals that end a
connection, the WebSocket ``close_code`` (RFC 6455 section 7.4.2 leaves
4000-4999 to applications; ours mirror HTTP statuses). An error with no
close code leaves the connection open.

As in h11, "the peer broke the protocol" (:class:`signalling.protocol.ProtocolError`
and its children, also ``ValueError``) is kept apart from "the peer asked for
something the room does not allow" (the children of :class:`CallError` here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from prometheus_client import Counter

from wadud.errors import Conflict, Forbidden, Gone, NotFound, TooManyRequests, WadudError

#: Close codes of the call WebSocket.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
#: "Service Restart" (RFC 6455 section 7.4.1's registry): reconnect and resume.
CLOSE_RECONNECT = 1012
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TIMEOUT = 4408
CLOSE_REPLACED = 4409
CLOSE_ENDED = 4410
CLOSE_FULL = 4429
#: HTTP's 426 Upgrade Required: no protocol version both sides speak.
CLOSE_PROTOCOL = 4426

#: Every refusal of an action a role does not grant (:meth:`NotAllowed.lacking`).
REFUSED = Counter(
    "wadud_call_refused_actions",
    "Actions refused because the participant's role does not grant them, by action and role.",
    ["action", "role"],
)


class SignallingError(WadudError):
    """Root of every error signalling raises on purpose."""

    code = "internal-error"
    title = "Signalling failed"
    #: Set on refusals: send the error with ``fatal: true`` and close with it.
    close_code: ClassVar[int | None] = None

    @property
    def fatal(self) -> bool:
        return self.close_code is not None


# -- refusals: the error frame is fatal and the connection is closed -----------


class BadRoomToken(SignallingError):
    """Bad signature, expired or not yet valid token, not a room token."""

    http_status = 401
    code = "unauthorized"
    title = "Invalid or expired room token"
    close_code = CLOSE_UNAUTHORIZED


class WrongRoom(SignallingError, Forbidden):
    """The token grants another room than the one the URL names."""

    code = "forbidden"
    title = "The token is for another room"
    close_code = CLOSE_FORBIDDEN


class RoomEnded(SignallingError, Gone):
    code = "room-ended"
    title = "The room was ended"
    close_code = CLOSE_ENDED


class OtherRegion(SignallingError, Forbidden):
    """The link names a home region whose control plane this replica does not
    hold (signalling.edge.planes): it is joined through that region's replicas."""

    code = "other-region"
    title = "This visit is held in another region"
    close_code = CLOSE_FORBIDDEN


class BookingUnverifiable(SignallingError):
    """A booking's link cannot be checked: the database is out of reach (a
    region cut off from it). Not a refusal: the page tries again."""

    http_status = 503
    code = "booking-unverifiable"
    title = "The booking cannot be checked now"


class BookingClosed(SignallingError, Gone):
    """A booking's video link whose booking was cancelled, completed, marked
    no-show or moved to another slot: the link no longer opens the room."""

    code = "booking-closed"
    title = "This consultation is no longer open"
    close_code = CLOSE_ENDED


class InviteClosed(SignallingError, Gone):
    """A guest's invite was revoked, refused by the patient, used up or is
    outside its window: the link no longer opens the room."""

    code = "invite-closed"
    title = "This invite no longer opens the visit"
    close_code = CLOSE_ENDED


class ConsentMissing(SignallingError, Forbidden):
    """The patient has not accepted (or withdrew) a consent the clinic's
    region requires for a consultation; the message names each purpose."""

    code = "consent_required"
    title = "Consent required"
    close_code = CLOSE_FORBIDDEN

    def __init__(self, missing: Sequence[str], *, region: str) -> None:
        super().__init__(
            "accept these consents before joining: " + ", ".join(missing),
            missing=list(missing),
            region=region,
        )
        self.missing = tuple(missing)


class RoomFull(SignallingError, TooManyRequests):
    code = "room-full"
    title = "The room is full"
    close_code = CLOSE_FULL


class UnsupportedProtocol(SignallingError):
    """A ``join`` asked for a protocol version this server does not speak;
    ``supported`` lists those it does."""

    http_status = 426
    code = "unsupported-protocol"
    title = "Protocol version not supported"
    close_code = CLOSE_PROTOCOL


class JoinTimeout(SignallingError):
    code = "join-timeout"
    title = "No join in time"
    close_code = CLOSE_TIMEOUT


# -- requests the room refuses; the connection stays ---------------------------


class CallError(SignallingError):
    """A well-formed request that the room's state or the caller's rights do not allow."""

    code = "bad-state"
    title = "Not possible now"


class NotJoined(CallError):
    code = "not-joined"
    title = "Join the room first"


class NotAllowed(CallError, Forbidden):
    """An action the participant's role does not grant (``action`` and
    ``role`` go out with it: :meth:`lacking`), or one the room does not
    allow them now."""

    code = "forbidden"
    title = "Not allowed"

    @classmethod
    def lacking(cls, action: str, role: str) -> NotAllowed:
        """A refusal of ``action``, which ``role`` does not grant (counted)."""
        REFUSED.labels(action, role).inc()
        return cls(f"a {role or 'participant'} may not {action}", action=action, role=role)


class UnknownTarget(CallError, NotFound):
    """No such participant or track in this room."""

    code = "not-found"
    title = "No such participant or track"


class BadState(CallError, Conflict):
    """The target exists but is not in a state for this (an ``answer`` with no
    offer outstanding; admitting someone who is not waiting)."""

    code = "bad-state"
    title = "Not in a state for this"


class PhoneCallRefused(CallError, Conflict):
    """A ``call_phone`` the visit cannot make now: no booking behind the room,
    no trunk that places calls, the visit not open, the patient without a
    number, or a call of the visit already under way."""

    code = "phone-call-refused"
    title = "The visit cannot call a phone now"


class BadSdp(CallError):
    """Malformed or unanswerable SDP (from :class:`rtc.errors.SdpError`)."""

    http_status = 400
    code = "bad-sdp"
    title = "Malformed or unanswerable SDP"


class MediaUnavailable(SignallingError):
    """No media worker is live, or the room's did not answer: our fault, not
    the peer's; retry (the room is placed again when its worker died)."""

    code = "media-unavailable"
    title = "No media worker"
