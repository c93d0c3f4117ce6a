"""Data rights: a patient's export and erasure, put together from providers.

privacy/ stands below the features, so it never imports them. Each feature
that keeps a patient's data offers a :class:`Provider` (``booking.privacy``,
``chat.privacy``, ...) and the roles' assembly registers it on the app
(:func:`register`); this module runs them all in one transaction.

- :func:`export`: one ZIP archive, ``manifest.json`` first, then one JSON
  file per part (``<provider>/<part>.json``: a list of records) and the
  files the parts carry (``files/<provider>/...``: decrypted attachments).
  The manifest lists every entry with its SHA-256 and record count. Read in
  one REPEATABLE READ transaction, so the parts agree with each other.
- :func:`erase`: each provider deletes or irreversibly pseudonymises what it
  holds of the subject; then the subject's data key is destroyed
  (crypto-shredding, :mod:`privacy.subject_keys`), the account is blanked
  and disabled (which revokes every token: migration 0008's trigger), the
  audit rows about the subject forget whose they were (``subject_id`` set to
  NULL, the one change the audit table allows, which the chain does not hash),
  and one audit row records the erasure with no personal data. Stored files
  the providers name are deleted after the commit: a file whose delete fails
  is ciphertext under a destroyed key.

The account itself (the ``users`` row, sessions, idempotency answers,
published outbox events, consents and the audit of accesses) is this
module's own :class:`AccountProvider`, always run last.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

import asyncpg
from aiohttp import web

from privacy import audit as privacy_audit
from privacy import subject_keys
from privacy.errors import PrivacyError
from wadud.errors import Conflict, NotFound, Unprocessable
from wadud.state import audit
from wadud.state.storage import Storage

__all__ = [
    "PROVIDERS",
    "AccountProvider",
    "AlreadyErased",
    "ArchiveFile",
    "Erased",
    "ErasureNotConfirmed",
    "Part",
    "Provider",
    "Subject",
    "erase",
    "export",
    "register",
]

log = logging.getLogger("wadud.privacy")

FORMAT = "wadud-export"
FORMAT_VERSION = 1


class ErasureNotConfirmed(PrivacyError, Unprocessable):
    """The confirmation (token, phrase or password) is missing or wrong."""

    code = "erasure_not_confirmed"
    title = "Erasure not confirmed"


class AlreadyErased(PrivacyError, Conflict):
    code = "already_erased"
    title = "This account was erased"


@dataclass(frozen=True)
class Subject:
    """The patient whose data is exported or erased."""

    user_id: UUID
    email: str | None
    display_name: str


@dataclass(frozen=True)
class ArchiveFile:
    """A file in the export, at ``files/<provider>/<path>``."""

    path: str
    data: bytes
    content_type: str = "application/octet-stream"


@dataclass
class Part:
    """One named list of records (``<provider>/<name>.json``) and its files."""

    name: str
    records: list[dict[str, Any]]
    files: list[ArchiveFile] = field(default_factory=list)


@dataclass
class Erased:
    """What a provider erased: counts by kind, and stored files to delete
    once the transaction has committed."""

    counts: dict[str, int] = field(default_factory=dict)
    storage_keys: list[str] = field(default_factory=list)

    def count(self, kind: str, status: str) -> None:
        """Count under ``kind`` the rows a command touched, read from its
        status (``"UPDATE 3"``, ``"DELETE 0"``)."""
        self.counts[kind] = int(status.split()[-1])


class Provider(Protocol):
    """A feature's part of a patient's data. Both methods run inside the
    caller's transaction on ``conn``; neither commits."""

    @property
    def name(self) -> str:
        """A short slug: the folder of its parts in the archive."""
        ...

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        """Everything this feature holds of ``subject``, and nothing of anyone
        else's (another patient's name, messages or bookings)."""
        ...

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        """Delete or irreversibly pseudonymise ``subject``'s personal data,
        keeping what other invariants need (the ledger) without it."""
        ...


#: The providers of the app's features, registered by the assembly.
PROVIDERS: web.AppKey[list[Provider]] = web.AppKey("privacy_providers", list)


def register(app: web.Application, provider: Provider) -> None:
    app.setdefault(PROVIDERS, []).append(provider)


def providers_of(app: web.Application) -> list[Provider]:
    """The registered providers, then the account's own (always last)."""
    return [*app.get(PROVIDERS, []), AccountProvider()]


# -- records as JSON -------------------------------------------------------------


def plain(value: Any) -> Any:
    """A value from a row as JSON can carry it."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, UUID | Decimal):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | memoryview):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, asyncpg.Range):
        return {"lower": plain(value.lower), "upper": plain(value.upper)}
    return value


def records(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Rows (or dicts) as JSON-ready dicts."""
    return [{k: plain(v) for k, v in r.items()} for r in rows]


# -- export ----------------------------------------------------------------------


async def subject_of(conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID) -> Subject:
    row = await conn.fetchrow(
        "SELECT id, email, display_name, erased_at FROM users WHERE id = $1", user_id
    )
    if row is None:
        raise NotFound("no such account")
    if row["erased_at"] is not None:
        raise AlreadyErased("this account's data was erased")
    return Subject(row["id"], row["email"], row["display_name"])


def _zip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


async def export(
    pool: asyncpg.Pool,
    providers: Sequence[Provider],
    user_id: UUID,
    *,
    now: dt.datetime,
    audit_actor: Any = None,
) -> bytes:
    """The subject's archive (ZIP bytes). The export itself is audited."""
    entries: list[tuple[str, bytes]] = []
    manifest_parts: list[dict[str, Any]] = []
    manifest_files: list[dict[str, Any]] = []
    async with pool.acquire() as conn:
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            subject = await subject_of(conn, user_id)
            for p in providers:
                for part in await p.export(conn, subject):
                    name = f"{p.name}/{part.name}.json"
                    data = json.dumps(part.records, ensure_ascii=False, indent=1).encode()
                    entries.append((name, data))
                    manifest_parts.append(
                        {
                            "provider": p.name,
                            "part": part.name,
                            "file": name,
                            "records": len(part.records),
                            "sha256": hashlib.sha256(data).hexdigest(),
                        }
                    )
                    for f in part.files:
                        fname = f"files/{p.name}/{f.path}"
                        entries.append((fname, f.data))
                        manifest_files.append(
                            {
                                "file": fname,
                                "content_type": f.content_type,
                                "size": len(f.data),
                                "sha256": hashlib.sha256(f.data).hexdigest(),
                            }
                        )
        # Audited after the read (its own transaction): the row names the
        # subject and the parts, never their content.
        await audit.record(
            conn,
            actor=audit_actor if audit_actor is not None else user_id,
            role=None if audit_actor is not None else "patient",
            action="privacy.export",
            subject=user_id,
            object=f"user/{user_id}",
            detail={"parts": len(manifest_parts), "files": len(manifest_files)},
        )
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "subject": str(user_id),
        "generated_at": now.isoformat(),
        "parts": manifest_parts,
        "files": manifest_files,
    }
    head = ("manifest.json", json.dumps(manifest, ensure_ascii=False, indent=1).encode())
    return await asyncio.to_thread(_zip, [head, *entries])


# -- erasure ---------------------------------------------------------------------


async def erase(
    pool: asyncpg.Pool,
    providers: Sequence[Provider],
    user_id: UUID,
    *,
    storage: Storage | None,
    actor: Any = None,
) -> dict[str, int]:
    """Erase the subject in one transaction; return counts by kind."""
    counts: dict[str, int] = {}
    files: list[str] = []
    async with pool.acquire() as conn, conn.transaction():
        # The row lock makes two erasures of one account take turns; the
        # second finds it erased.
        await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
        subject = await subject_of(conn, user_id)
        for p in providers:
            done = await p.erase(conn, subject)
            for k, v in done.counts.items():
                counts[f"{p.name}.{k}"] = counts.get(f"{p.name}.{k}", 0) + v
            files += done.storage_keys
        counts["privacy.subject_keys"] = await subject_keys.shred(conn, user_id)
        await audit.record(
            conn,
            actor=actor if actor is not None else user_id,
            role=None if actor is not None else "patient",
            action="privacy.erasure",
            object=f"user/{user_id}",
            detail={"rows": sum(counts.values()), "files": len(files)},
        )
    deleted = 0
    for key in dict.fromkeys(files):
        if storage is None:
            break
        try:
            await storage.delete(key)
            deleted += 1
        except Exception:
            # Ciphertext under a destroyed key: unreadable; retention's
            # orphan sweep tries again.
            log.warning("erased file could not be deleted", extra={"storage_key": key})
    counts["files.deleted"] = deleted
    return counts


# -- the account's own part ------------------------------------------------------

_PROFILE_HIDDEN = ("password_hash", "totp_secret", "totp_last_step")


class AccountProvider:
    """The ``users`` row, sessions, consents, the audit of accesses, and the
    ground's tables that keep traces of a user (idempotency answers, published
    outbox events)."""

    name = "account"

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        hidden = "".join(f" - '{c}'" for c in _PROFILE_HIDDEN)
        profile = await conn.fetch(
            f"SELECT to_jsonb(u){hidden} AS row FROM users u WHERE id = $1", subject.user_id
        )
        sessions = await conn.fetch(
            """SELECT id, created_at, revoked_at, revoked_reason FROM token_families
               WHERE user_id = $1 ORDER BY created_at""",
            subject.user_id,
        )
        consents = await conn.fetch(
            """SELECT e.id, e.region, e.purpose, e.action, e.version, e.at,
                      t.language, t.title
               FROM consent_events e LEFT JOIN consent_texts t ON t.id = e.text_id
               WHERE e.user_id = $1 ORDER BY e.id""",
            subject.user_id,
        )
        accesses: list[asyncpg.Record] = []
        while True:
            page = await privacy_audit.accesses_to(
                conn, subject.user_id, before=accesses[-1]["seq"] if accesses else None
            )
            accesses += page
            if len(page) < 1000:
                break
        accesses.reverse()
        return [
            Part("profile", [plain(r["row"]) for r in profile]),
            Part("sessions", records(sessions)),
            Part("consents", records(consents)),
            Part("audit", [{**r, "detail": json.loads(r["detail"])} for r in records(accesses)]),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        uid = subject.user_id
        out = Erased()
        # Every session ends (each revocation tells live sockets, 0008).
        status = await conn.execute(
            """UPDATE token_families SET revoked_at = now(), revoked_reason = 'erased'
               WHERE user_id = $1 AND revoked_at IS NULL""",
            uid,
        )
        out.count("sessions_revoked", status)
        await conn.execute(
            """DELETE FROM refresh_tokens WHERE family_id IN
                   (SELECT id FROM token_families WHERE user_id = $1)""",
            uid,
        )
        status = await conn.execute("DELETE FROM idempotency_keys WHERE owner = $1", f"user:{uid}")
        out.count("idempotency_answers", status)
        # Published events are history nobody reads again; unpublished ones
        # still have to go out (and are pruned after outbox_retention).
        status = await conn.execute(
            """DELETE FROM outbox WHERE published_at IS NOT NULL
               AND strpos(payload::text, $1) > 0""",
            str(uid),
        )
        out.count("outbox_events", status)
        out.counts["audit_rows_unlinked"] = await privacy_audit.forget_subject(conn, uid)
        # The row stays (bookings and the ledger point at it) with nothing
        # personal in it, disabled: no sign-in, every token refused.
        blank = await _blank_columns(conn)
        await conn.execute(
            f"""UPDATE users SET email = NULL, password_hash = NULL, anonymous = true,
                   display_name = '', disabled = true, erased_at = now(){blank}
                WHERE id = $1""",
            uid,
        )
        out.counts["account"] = 1
        return out


# Personal columns other migrations add to users (TOTP 0009, notify 0011),
# cleared when present; checked against the catalogue so this module does not
# break when one of them is absent or renamed.
_NULLABLE_PERSONAL = (
    "totp_secret",
    "totp_confirmed_at",
    "totp_last_step",
    "phone",
    "locale",
    "time_zone",
    "upgraded_at",
)


async def _blank_columns(conn: asyncpg.Connection) -> str:
    present = await conn.fetch(
        """SELECT column_name FROM information_schema.columns
           WHERE table_schema = current_schema() AND table_name = 'users'
             AND is_nullable = 'YES' AND column_name = ANY($1::text[])""",
        list(_NULLABLE_PERSONAL),
    )
    names = sorted(r["column_name"] for r in present)
    return "".join(f", {n} = NULL" for n in names)
