"""Chat's errors: one root under :class:`wadud.errors.WadudError`, typed
children that also carry an HTTP status class, so REST handlers raise them and
the WebSocket adapter turns the same ones into ``error`` frames by ``code``."""

from __future__ import annotations

from wadud.errors import (
    Conflict,
    Forbidden,
    NotFound,
    TooManyRequests,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    WadudError,
)


class ChatError(WadudError):
    code = "chat-error"
    title = "Chat error"


class ConversationNotFound(ChatError, NotFound):
    code = "not-found"
    title = "No such conversation"


class PatientNotFound(ChatError, NotFound):
    """The same for an id that names no one and for another clinic's patient."""

    code = "patient-not-found"
    title = "No such patient at this clinic"


class NotAllowed(ChatError, Forbidden):
    code = "forbidden"
    title = "Not allowed in this conversation"


class BadSequence(ChatError, Unprocessable):
    code = "bad-sequence"
    title = "Bad sequence number"


class SendingTooFast(ChatError, TooManyRequests):
    code = "rate-limited"
    title = "Sending too fast"


class AttachmentNotFound(ChatError, NotFound):
    code = "attachment-not-found"
    title = "No such attachment"


class AttachmentType(ChatError, UnsupportedMediaType):
    code = "attachment-type"
    title = "Attachments are images (JPEG, PNG, GIF, WebP) or PDF"


class LinkExpired(ChatError, Forbidden):
    code = "link-expired"
    title = "The attachment link expired or is not valid"


class ClientIdReused(ChatError, Conflict):
    code = "client-id-reused"
    title = "This client_id was used for a different event"


class SessionRevoked(ChatError, Unauthorized):
    """The sign-in session behind a chat WebSocket ended (a logout, a revoked
    session, a change of rights); the connection's last frame."""

    code = "session-revoked"
    title = "This session ended"
