"""Doctors' credential documents: upload (PDF, PNG or JPEG, judged by the
file's first bytes), listing, download, and an admin's verification or
rejection. The files live in the app's storage (:mod:`wadud.state.storage`); the
rows name them by content hash."""

from __future__ import annotations

import re
from uuid import UUID

import asyncpg

from booking.doctors import fetch_doctor
from wadud.errors import Conflict, NotFound
from wadud.messaging import outbox
from wadud.state.storage import Storage, sniff_type
from wadud.web.api import Principal

__all__ = [
    "ACCEPTED",
    "EXTENSIONS",
    "check_upload_allowed",
    "content",
    "listed",
    "review",
    "safe_filename",
    "sniff",
    "upload",
]

#: Accepted credential document types and the extension each is stored with.
EXTENSIONS = {"application/pdf": ".pdf", "image/png": ".png", "image/jpeg": ".jpg"}
ACCEPTED = set(EXTENSIONS)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._ -]")

_DOC_COLS = """id, doctor_id, kind, filename, content_type, size_bytes, sha256, status,
               review_note, reviewed_at, created_at"""


def sniff(data: bytes) -> tuple[str, str] | None:
    """``(content type, extension)`` of ``data`` judged by its first bytes,
    for the document types we accept."""
    ctype = sniff_type(data)
    if ctype not in EXTENSIONS:
        return None
    return ctype, EXTENSIONS[ctype]


def safe_filename(name: str | None, default: str) -> str:
    """``name``'s last path component, with only characters that are safe in
    a Content-Disposition header and on any file system; ``default`` when
    nothing is left."""
    if not name:
        return default
    base = re.split(r"[\\/]", name)[-1]
    base = _UNSAFE_NAME.sub("_", base).strip(" .")[:255]
    return base or default


async def check_upload_allowed(pool: asyncpg.Pool, me: Principal, doctor_id: UUID) -> None:
    """Refuse (404, 403) unless ``me`` may add documents to the doctor: asked
    before the upload is read."""
    async with pool.acquire() as conn:
        await fetch_doctor(conn, me, doctor_id, need="manage")


async def upload(
    pool: asyncpg.Pool,
    storage: Storage,
    me: Principal,
    doctor_id: UUID,
    *,
    kind: str,
    filename: str | None,
    data: bytes,
    found: tuple[str, str],
) -> asyncpg.Record:
    """Store a credential document (``found``: its type and extension, from
    :func:`sniff`) and its row, pending review; ``filename`` is kept for
    downloads (default: the kind and the extension)."""
    ctype, ext = found
    key = await storage.put(data)
    async with pool.acquire() as conn, conn.transaction():
        row = await fetch_doctor(conn, me, doctor_id, need="manage", lock=True)
        doc = await conn.fetchrow(
            f"""INSERT INTO doctor_documents (doctor_id, clinic_id, kind, filename,
                       content_type, size_bytes, sha256, storage_key)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7) RETURNING {_DOC_COLS}""",
            doctor_id,
            row["clinic_id"],
            kind,
            safe_filename(filename, kind + ext),
            ctype,
            len(data),
            key,
        )
        assert doc is not None
        await outbox.emit(
            conn,
            "doctor.document_uploaded",
            {
                "doctor_id": str(doctor_id),
                "clinic_id": str(row["clinic_id"]),
                "document_id": str(doc["id"]),
                "kind": kind,
            },
        )
    return doc


async def listed(pool: asyncpg.Pool, me: Principal, doctor_id: UUID) -> list[asyncpg.Record]:
    """A doctor's credential documents, oldest first (staff of the clinic,
    admins, the doctor)."""
    async with pool.acquire() as conn:
        row = await fetch_doctor(conn, me, doctor_id, need="manage")
        docs: list[asyncpg.Record] = await conn.fetch(
            f"SELECT {_DOC_COLS} FROM doctor_documents WHERE doctor_id = $1 ORDER BY created_at",
            row["id"],
        )
    return docs


async def _document(
    conn: asyncpg.Connection,
    me: Principal,
    doctor_id: UUID,
    document_id: UUID,
    *,
    lock: bool = False,
) -> tuple[asyncpg.Record, asyncpg.Record]:
    row = await fetch_doctor(conn, me, doctor_id, need="staff")
    doc = await conn.fetchrow(
        "SELECT * FROM doctor_documents WHERE id = $1 AND doctor_id = $2"
        + (" FOR UPDATE" if lock else ""),
        document_id,
        row["id"],
    )
    if doc is None:
        raise NotFound("no such document")
    return row, doc


async def content(
    pool: asyncpg.Pool, storage: Storage, me: Principal, doctor_id: UUID, document_id: UUID
) -> tuple[asyncpg.Record, bytes]:
    """A credential document's row and its file (staff of the clinic, admins)."""
    async with pool.acquire() as conn:
        _, doc = await _document(conn, me, doctor_id, document_id)
    return doc, await storage.get(doc["storage_key"])


async def review(
    pool: asyncpg.Pool,
    me: Principal,
    doctor_id: UUID,
    document_id: UUID,
    status: str,
    note: str,
) -> asyncpg.Record:
    """Mark a pending document ``status`` (verified, rejected) with ``note``;
    409 once it was reviewed."""
    async with pool.acquire() as conn, conn.transaction():
        row, doc = await _document(conn, me, doctor_id, document_id, lock=True)
        if doc["status"] != "pending":
            raise Conflict(f"the document was already {doc['status']}")
        new = await conn.fetchrow(
            f"""UPDATE doctor_documents
                SET status = $2, review_note = $3, reviewed_by = $4, reviewed_at = now()
                WHERE id = $1 RETURNING {_DOC_COLS}""",
            doc["id"],
            status,
            note or None,
            me.user_id,
        )
        assert new is not None
        await outbox.emit(
            conn,
            f"doctor.document_{status}",
            {
                "doctor_id": str(row["id"]),
                "clinic_id": str(row["clinic_id"]),
                "document_id": str(doc["id"]),
            },
        )
    return new
