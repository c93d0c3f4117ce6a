"""Chat's part of a patient's data rights and of retention
(:mod:`privacy.rights`, :mod:`privacy.retention`).

A patient's chat is every conversation whose patient they are: the
doctor's and staff's messages in it are about the patient too.

- Export: the conversations, every event decrypted (messages, edits,
  deletes), attachments' metadata and their bytes decrypted.
- Erasure: the conversations are deleted whole (events, members,
  attachments' rows), their stored files deleted after the commit, and the
  patient's data key destroyed by :func:`privacy.rights.erase`, so copies in
  backups do not open either.
- Retention (``retention_chat_days``): a conversation idle that long is
  deleted whole, the same way. Whole conversations, never single old
  messages: a conversation's sequence numbers stay dense, which resuming
  clients rely on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from uuid import UUID

import asyncpg
from aiohttp import web

from chat.crypto import DecryptError, Keyring, Shredded, attachment_aad, message_aad
from privacy.retention import RoundContext, Rule
from privacy.rights import ArchiveFile, Erased, Part, Subject, records
from wadud.errors import NotFound
from wadud.state.storage import storage_of

__all__ = ["ChatProvider", "retention_rules"]

_EXT = {
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/gif": "gif",
    "image/webp": "webp",
    "application/pdf": "pdf",
}


class ChatProvider:
    name = "chat"

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def _keyring(self) -> Keyring:
        from chat.service import CHAT

        return self.app[CHAT].keyring

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        keyring = self._keyring()
        convs = await conn.fetch(
            """SELECT c.id, c.clinic_id, c.booking_id, c.doctor_id, d.display_name AS doctor_name,
                      c.created_at, c.last_event_at
               FROM chat_conversations c JOIN doctors d ON d.id = c.doctor_id
               WHERE c.patient_id = $1 ORDER BY c.created_at""",
            subject.user_id,
        )
        ids = [r["id"] for r in convs]
        events = await conn.fetch(
            """SELECT e.conversation_id, e.seq, e.kind, e.sender_id,
                      CASE WHEN e.sender_id = $2 THEN 'patient'
                           ELSE COALESCE(m.role, 'admin') END AS sender_role,
                      e.target_seq, e.attachment_id, e.created_at AS at,
                      e.key_id, e.nonce, e.body
               FROM chat_events e
               LEFT JOIN chat_members m
                      ON m.conversation_id = e.conversation_id AND m.user_id = e.sender_id
               WHERE e.conversation_id = ANY($1::uuid[])
               ORDER BY e.conversation_id, e.seq""",
            ids,
            subject.user_id,
        )
        await keyring.load(conn, {r["key_id"] for r in events if r["key_id"]})
        messages = []
        for r in events:
            text = None
            if r["body"] is not None:
                try:
                    aad = message_aad(r["conversation_id"])
                    text = keyring.open(r["key_id"], r["nonce"], r["body"], aad).decode()
                except (DecryptError, Shredded):
                    text = None
            rec = {k: v for k, v in r.items() if k not in ("key_id", "nonce", "body")}
            messages.append({**rec, "body": text})
        atts = await conn.fetch(
            """SELECT id, conversation_id, uploader_id, content_type, size_bytes, sha256,
                      storage_key, key_id, nonce, created_at
               FROM chat_attachments WHERE conversation_id = ANY($1::uuid[])
               ORDER BY created_at""",
            ids,
        )
        await keyring.load(conn, {r["key_id"] for r in atts})
        store = storage_of(self.app)
        files, meta = [], []
        for a in atts:
            path = f"{a['id']}.{_EXT.get(a['content_type'], 'bin')}"
            try:
                sealed = await store.get(a["storage_key"])
                data = keyring.open(a["key_id"], a["nonce"], sealed, attachment_aad(a["id"]))
            except (NotFound, DecryptError):
                path = ""
            else:
                files.append(ArchiveFile(path, data, a["content_type"]))
            meta.append(
                {
                    "id": str(a["id"]),
                    "conversation_id": str(a["conversation_id"]),
                    "uploaded_by_me": a["uploader_id"] == subject.user_id,
                    "content_type": a["content_type"],
                    "size_bytes": a["size_bytes"],
                    "sha256": a["sha256"],
                    "created_at": a["created_at"].isoformat(),
                    "file": f"files/chat/{path}" if path else None,
                }
            )
        return [
            Part("conversations", records(convs)),
            Part("messages", records(messages)),
            Part("attachments", meta, files),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        uid = subject.user_id
        out = Erased()
        keys = await conn.fetch(
            """SELECT a.storage_key FROM chat_attachments a
               JOIN chat_conversations c ON c.id = a.conversation_id
               WHERE c.patient_id = $1""",
            uid,
        )
        out.storage_keys = [r["storage_key"] for r in keys]
        out.counts["messages"] = await conn.fetchval(
            """SELECT count(*) FROM chat_events e JOIN chat_conversations c
               ON c.id = e.conversation_id WHERE c.patient_id = $1""",
            uid,
        )
        out.counts["attachments"] = len(out.storage_keys)
        status = await conn.execute("DELETE FROM chat_conversations WHERE patient_id = $1", uid)
        out.counts["conversations"] = int(status.split()[-1])
        await conn.execute("DELETE FROM chat_members WHERE user_id = $1", uid)
        with contextlib.suppress(KeyError):  # chat not started in this app
            self._keyring().subjects.forget(uid)
        return out


# -- retention -------------------------------------------------------------------


async def _delete_conversations(conn: asyncpg.Connection, ids: list[UUID]) -> list[str]:
    files = await conn.fetch(
        "SELECT storage_key FROM chat_attachments WHERE conversation_id = ANY($1::uuid[])", ids
    )
    await conn.execute("DELETE FROM chat_conversations WHERE id = ANY($1::uuid[])", ids)
    return [r["storage_key"] for r in files]


async def _idle_conversations(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    return await ctx.delete_batched_by(
        conn,
        "chat_conversations",
        "COALESCE(last_event_at, created_at) < $1",
        ctx.days_ago(days),
        delete=_delete_conversations,
    )


def retention_rules() -> list[Rule]:
    return [
        Rule(
            "chat",
            "Consultation chat: idle conversations with their messages and attachments",
            "retention_chat_days",
            _idle_conversations,
        )
    ]
