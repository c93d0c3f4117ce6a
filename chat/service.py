"""Chat operations shared by the WebSocket and REST adapters: who may do
what in a conversation, opening and listing conversations, reading events
(audited), send, edit, delete, read, typing; attachments in and out; the
clinic's chat policy. Each state change is one transaction committed before
it is acknowledged. The adapters find the service at ``app[CHAT]``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from chat import attachments, conversations, eventlog
from chat.access import (
    Access,
    access,
    conversation_view,
    list_for,
    require_write,
    set_staff_policy,
    staff_policy,
)
from chat.crypto import Keyring, attachment_aad
from chat.errors import AttachmentType, BadSequence, LinkExpired, SendingTooFast
from chat.eventlog import Event
from chat.hub import Hub
from chat.protocol import InvalidFrame, check_body
from privacy import audit
from wadud.config import Settings
from wadud.errors import NotFound
from wadud.principal import Principal, Role
from wadud.state.storage import Storage, sniff_type


class RateLimiter:
    """Token bucket per user (per node: a user spread over several nodes
    gets the rate on each, which is the price of not needing Redis to send)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[UUID, tuple[float, float]] = {}

    def take(self, user: UUID, now: float) -> float:
        """0 if allowed, else the seconds to wait."""
        tokens, at = self._buckets.get(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return (1.0 - tokens) / self.rate if self.rate > 0 else 60.0
        self._buckets[user] = (tokens - 1.0, now)
        if len(self._buckets) > 100_000:
            self._buckets = {u: v for u, v in self._buckets.items() if now - v[1] < 60}
        return 0.0


@dataclass(frozen=True)
class Ack:
    conversation_id: UUID
    client_id: str
    seq: int
    at: str
    duplicate: bool

    def fields(self) -> dict[str, Any]:
        return {
            "conversation_id": str(self.conversation_id),
            "client_id": self.client_id,
            "seq": self.seq,
            "at": self.at,
            "duplicate": self.duplicate,
        }


class ChatService:
    def __init__(
        self, pool: asyncpg.Pool, hub: Hub, keyring: Keyring, settings: Settings, storage: Storage
    ) -> None:
        self.pool = pool
        self.hub = hub
        self.keyring = keyring
        self.settings = settings
        self.storage = storage
        self.limiter = RateLimiter(settings.chat_rate_per_second, settings.chat_rate_burst)
        self.appender = eventlog.Appender(pool)
        self._staff_joined: set[tuple[UUID, UUID]] = set()

    # -- conversations ------------------------------------------------------------

    async def authorize(
        self, who: Principal, conversation_id: UUID, *, write: bool = False
    ) -> Access:
        """The caller's rights in a conversation (404 when they have none);
        with ``write``, refused unless they may write in it."""
        acc = await access(self.pool, who, conversation_id)
        if write:
            require_write(acc)
        return acc

    async def open_conversation(
        self,
        who: Principal,
        *,
        booking_id: UUID | None,
        patient_id: UUID | None,
        doctor_id: UUID | None,
    ) -> dict[str, Any]:
        """Open (or find) the conversation of a booking, or the one between
        a patient and a doctor of a clinic; the caller's view of it."""
        async with self.pool.acquire() as conn:
            if booking_id is not None:
                cid = await conversations.open_for_booking(conn, who, booking_id)
            else:
                assert patient_id is not None
                assert doctor_id is not None
                cid = await conversations.open_direct(conn, who, patient_id, doctor_id)
            return await conversation_view(conn, who, cid)

    async def list_conversations(self, who: Principal, *, limit: int) -> list[dict[str, Any]]:
        return await list_for(self.pool, who, limit=limit)

    async def get_conversation(self, who: Principal, conversation_id: UUID) -> dict[str, Any]:
        return await conversation_view(self.pool, who, conversation_id)

    async def get_policy(self, clinic_id: UUID) -> str:
        return await staff_policy(self.pool, clinic_id)

    async def set_policy(self, clinic_id: UUID, staff_access: str, by: UUID) -> None:
        await set_staff_policy(self.pool, clinic_id, staff_access, by)

    # -- reading ------------------------------------------------------------------

    async def _audit_read(
        self, who: Principal, acc: Access, action: str = "chat.read", obj: str = ""
    ) -> None:
        """An audit row when a doctor, staff member or admin reads a patient's
        chat (by default: the conversation's events) or its documents
        (docs/privacy.md); the patient's own reads are not accesses."""
        obj = obj or f"conversation/{acc.conversation_id}"
        if who.role is Role.PATIENT:
            return
        await audit.record(
            self.pool,
            actor=who,
            action=action,
            subject=acc.patient_id,
            clinic=acc.clinic_id,
            object=obj,
        )

    async def list_events(
        self,
        acc: Access,
        who: Principal,
        *,
        after: int | None,
        before: int | None,
        limit: int,
    ) -> list[Event]:
        """Events after ``after``, oldest first (resume), or else before
        ``before`` (all when None), newest first (history); a read, audited."""
        if after is not None:
            if after > acc.last_seq:
                raise BadSequence(f"after = {after} is past the last sequence ({acc.last_seq})")
            events = await eventlog.events_after(
                self.pool, self.keyring, acc.conversation_id, after, limit=limit
            )
        else:
            events = await eventlog.events_before(
                self.pool, self.keyring, acc.conversation_id, before, limit=limit
            )
        await self._audit_read(who, acc)
        return events

    async def start_reading(self, acc: Access, who: Principal, after: int | None) -> int:
        """Where a subscription from ``after`` starts: the conversation's last
        sequence now, which ``after`` may not pass. The backlog that follows
        is a read of the conversation, audited here."""
        last = await eventlog.last_seq(self.pool, acc.conversation_id)
        if after is not None and after > last:
            raise BadSequence(f"after = {after} is past the last sequence ({last})")
        await self._audit_read(who, acc)
        return last

    # -- writing ------------------------------------------------------------------

    def _rate(self, who: Principal) -> None:
        wait = self.limiter.take(who.user_id, time.monotonic())
        if wait > 0:
            raise SendingTooFast(
                f"at most {self.settings.chat_rate_per_second:g} messages per second",
                retry_after=round(wait, 3),
            )

    async def _append(
        self,
        acc: Access,
        who: Principal,
        *,
        client_id: str,
        kind: str,
        body: str | None,
        target_seq: int | None = None,
        attachment_id: UUID | None = None,
        ref: str | None = None,
    ) -> Ack:
        require_write(acc)
        data = check_body(body, self.settings.chat_max_body_bytes, ref=ref) if body else None
        if kind == "message" and data is None and attachment_id is None:
            raise InvalidFrame("a message needs a body or an attachment", ref=ref)
        if kind == "edit" and data is None:
            raise InvalidFrame("an edit needs a body", ref=ref)
        self._rate(who)
        attachment = None
        if attachment_id is not None:
            attachment = await attachments.attachment_meta(self.pool, acc, who, attachment_id)
        if target_seq is not None:
            await eventlog.check_target(self.pool, acc, who, kind, target_seq)
        if acc.member_role == "clinic_staff" and (acc.conversation_id, who.user_id) not in (
            self._staff_joined
        ):
            await conversations.ensure_member(self.pool, acc, who)
            self._staff_joined.add((acc.conversation_id, who.user_id))
        res = await eventlog.append(
            self.appender,
            self.keyring,
            acc,
            who.user_id,
            client_id=client_id,
            kind=kind,
            body=data,
            target_seq=target_seq,
            attachment_id=attachment_id,
        )
        if not res.duplicate:
            self.hub.committed(
                eventlog.event_of(
                    acc.conversation_id,
                    seq=res.seq,
                    kind=kind,
                    sender_id=who.user_id,
                    client_id=client_id,
                    body=body if data is not None else None,
                    target_seq=target_seq,
                    attachment=attachment,
                    at=res.at,
                )
            )
        return Ack(acc.conversation_id, client_id, res.seq, res.at.isoformat(), res.duplicate)

    async def send(
        self,
        acc: Access,
        who: Principal,
        *,
        client_id: str,
        body: str,
        attachment_id: UUID | None = None,
        ref: str | None = None,
    ) -> Ack:
        return await self._append(
            acc,
            who,
            client_id=client_id,
            kind="message",
            body=body,
            attachment_id=attachment_id,
            ref=ref,
        )

    async def edit(
        self,
        acc: Access,
        who: Principal,
        *,
        client_id: str,
        target_seq: int,
        body: str,
        ref: str | None = None,
    ) -> Ack:
        return await self._append(
            acc, who, client_id=client_id, kind="edit", body=body, target_seq=target_seq, ref=ref
        )

    async def delete(
        self,
        acc: Access,
        who: Principal,
        *,
        client_id: str,
        target_seq: int,
        ref: str | None = None,
    ) -> Ack:
        return await self._append(
            acc, who, client_id=client_id, kind="delete", body=None, target_seq=target_seq, ref=ref
        )

    async def read(self, acc: Access, who: Principal, seq: int) -> int:
        pos = await conversations.mark_read(self.pool, acc, who, seq)
        if acc.member_role is not None:
            self.hub.ephemeral(
                acc.conversation_id,
                {
                    "v": 1,
                    "type": "read",
                    "conversation_id": str(acc.conversation_id),
                    "user_id": str(who.user_id),
                    "seq": pos,
                },
            )
        return pos

    def typing(self, acc: Access, who: Principal) -> bool:
        require_write(acc)
        if not self.hub.typing_allowed(who.user_id, acc.conversation_id, time.monotonic()):
            return False
        self.hub.ephemeral(
            acc.conversation_id,
            {
                "v": 1,
                "type": "typing",
                "conversation_id": str(acc.conversation_id),
                "user_id": str(who.user_id),
            },
            skip_user=who.user_id,
        )
        return True

    # -- attachments --------------------------------------------------------------

    async def upload(self, acc: Access, who: Principal, data: bytes) -> dict[str, Any]:
        require_write(acc)
        ctype = sniff_type(data)
        if ctype is None:
            raise AttachmentType("the file is not a JPEG, PNG, GIF, WebP image or a PDF")
        attachment_id = uuid.uuid4()
        sealed = await self.keyring.seal_for(
            self.pool, acc.patient_id, data, attachment_aad(attachment_id)
        )
        key = await self.storage.put(sealed.data)
        return await attachments.insert_attachment(
            self.pool,
            acc,
            who,
            attachment_id=attachment_id,
            content_type=ctype,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            storage_key=key,
            key_id=sealed.key_id,
            nonce=sealed.nonce,
        )

    async def attachment_link(self, who: Principal, attachment_id: UUID) -> tuple[str, int]:
        """A signed link to an attachment (see :meth:`sign`) for a member of
        its conversation, whose asking is an audited read; anyone else is
        told there is no such attachment."""
        try:
            row = await attachments.attachment_row(self.pool, attachment_id)
            acc = await access(self.pool, who, row["conversation_id"])
        except NotFound:
            raise NotFound("no such attachment") from None
        await self._audit_read(who, acc, "chat.attachment_read", f"attachment/{attachment_id}")
        return self.sign(attachment_id, time.time())

    def _mac(self, attachment_id: UUID, expires: int) -> str:
        key = hashlib.sha256(b"wadud-chat-attachment-url" + self.settings.secret_key.encode())
        mac = hmac.new(key.digest(), f"{attachment_id}:{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=").decode()

    def sign(self, attachment_id: UUID, now: float) -> tuple[str, int]:
        """A short-lived link to an attachment's bytes: (path with query,
        expiry as Unix seconds). Whoever holds it may fetch until then, so it
        is only handed to members."""
        expires = int(now) + self.settings.chat_attachment_url_ttl
        sig = self._mac(attachment_id, expires)
        return f"/api/v1/chat/attachments/{attachment_id}/content?exp={expires}&sig={sig}", expires

    def verify(self, attachment_id: UUID, expires: int, sig: str, now: float) -> None:
        # Bytes, not str: compare_digest refuses non-ASCII text with a
        # TypeError, and a forged link must be a 403 like any other.
        good = hmac.compare_digest(self._mac(attachment_id, expires).encode(), sig.encode())
        if not good or expires < now:
            raise LinkExpired("ask a conversation member's client for a fresh link")

    async def download(self, attachment_id: UUID) -> tuple[str, bytes]:
        row = await attachments.attachment_row(self.pool, attachment_id)
        sealed = await self.storage.get(row["storage_key"])
        data = await self.keyring.open_any(
            self.pool, row["key_id"], row["nonce"], sealed, attachment_aad(row["id"])
        )
        return row["content_type"], data


CHAT = web.AppKey("chat", ChatService)
