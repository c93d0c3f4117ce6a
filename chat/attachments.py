"""Attachments' rows: an upload's metadata and where its sealed bytes are
stored (``chat_attachments``), and the checks a message naming one needs."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from chat.access import Access, Conn
from chat.errors import AttachmentNotFound
from wadud.principal import Principal


async def attachment_meta(
    conn: Conn, acc: Access, who: Principal, attachment_id: UUID
) -> dict[str, Any]:
    row = await conn.fetchrow(
        """SELECT id, content_type, size_bytes FROM chat_attachments
           WHERE id = $1 AND conversation_id = $2 AND uploader_id = $3""",
        attachment_id,
        acc.conversation_id,
        who.user_id,
    )
    if row is None:
        raise AttachmentNotFound("no such attachment of yours in this conversation")
    return {"id": str(row["id"]), "content_type": row["content_type"], "size": row["size_bytes"]}


async def insert_attachment(
    conn: Conn,
    acc: Access,
    who: Principal,
    *,
    attachment_id: UUID,
    content_type: str,
    size: int,
    sha256: str,
    storage_key: str,
    key_id: str,
    nonce: bytes,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        """INSERT INTO chat_attachments (id, conversation_id, clinic_id, uploader_id,
               content_type, size_bytes, sha256, storage_key, key_id, nonce)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
           RETURNING id, conversation_id, content_type, size_bytes, sha256, created_at""",
        attachment_id,
        acc.conversation_id,
        acc.clinic_id,
        who.user_id,
        content_type,
        size,
        sha256,
        storage_key,
        key_id,
        nonce,
    )
    assert row is not None
    return dict(row)


async def attachment_row(conn: Conn, attachment_id: UUID) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM chat_attachments WHERE id = $1", attachment_id)
    if row is None:
        raise AttachmentNotFound("no such attachment")
    return row
