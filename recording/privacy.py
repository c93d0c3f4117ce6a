"""Recordings' part of a patient's data rights (:mod:`privacy.rights`) and
their retention rule (:mod:`privacy.retention`).

A recording belongs to the patient of the visit it recorded
(``recordings.patient_id``): its key is sealed by that patient's data key.

- Export: every recording of the patient's visits (state, times, everyone's
  consent answers, the files' durations) and the files themselves, decrypted
  (``files/recordings/<recording>/<file>.webm``): the consultation as it was
  recorded, every participant's picture and voice, as the participants
  agreed when they consented.
- Erasure: the recordings' rows are deleted with their consents, segments
  and files; the stored objects are deleted after the commit. The patient's
  data key is shredded by erasure anyway (:func:`privacy.rights.erase`), so
  an object whose delete failed is ciphertext under a key that no longer
  exists.
- Retention: ``recording_retention_days`` after the call (or its
  processing), a recording goes the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol
from uuid import UUID

import asyncpg

from privacy.retention import RoundContext, Rule
from privacy.rights import ArchiveFile, Erased, Part, Subject, records
from privacy.subject_keys import SubjectKeys
from recording.errors import RecordingError
from recording.store import open_file, recording_key
from wadud.errors import WadudError
from wadud.state.storage import Storage

__all__ = ["RecordingProvider", "delete_recordings", "retention_rules"]

log = logging.getLogger("wadud.recording")


class _Parts(Protocol):
    @property
    def keys(self) -> SubjectKeys: ...
    @property
    def storage(self) -> Storage: ...


async def delete_recordings(conn: asyncpg.Connection, ids: Sequence[UUID]) -> list[str]:
    """Delete recordings ``ids`` with every row of theirs (in the caller's
    transaction); return the storage keys of their segments and files, for
    the caller to delete after the commit."""
    if not ids:
        return []
    rows = await conn.fetch(
        """SELECT storage_key FROM recording_segments WHERE recording_id = ANY($1::uuid[])
           UNION ALL
           SELECT storage_key FROM recording_files WHERE recording_id = ANY($1::uuid[])""",
        list(ids),
    )
    await conn.execute("DELETE FROM recordings WHERE id = ANY($1::uuid[])", list(ids))
    return [r["storage_key"] for r in rows]


class RecordingProvider:
    name = "recordings"

    def __init__(self, parts: _Parts) -> None:
        # The keys and storage are the app's, made on first use: hold what
        # gives them, not them.
        self._parts = parts

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        recs = await conn.fetch(
            """SELECT id, booking_id, clinic_id, room, state, failure, key_id, key_nonce,
                      key_sealed, created_at, started_at, stopped_at, ready_at
               FROM recordings WHERE patient_id = $1 ORDER BY created_at, id""",
            subject.user_id,
        )
        if not recs:
            return []
        ids = [r["id"] for r in recs]
        consents = await conn.fetch(
            """SELECT recording_id, participant, role, agreed, at FROM recording_consents
               WHERE recording_id = ANY($1::uuid[]) ORDER BY id""",
            ids,
        )
        files = await conn.fetch(
            """SELECT id, recording_id, participant, kind, storage_key, nonce,
                      duration_seconds, size_bytes, audio, video, created_at
               FROM recording_files WHERE recording_id = ANY($1::uuid[])
               ORDER BY recording_id, created_at, id""",
            ids,
        )
        out: list[ArchiveFile] = []
        by_id = {r["id"]: r for r in recs}
        keys, storage = self._parts.keys, self._parts.storage
        for f in files:
            try:
                key = await recording_key(conn, keys, by_id[f["recording_id"]])
                sealed = await storage.get(f["storage_key"])
                data = open_file(key, f["recording_id"], f["id"], bytes(f["nonce"]), sealed)
            except (RecordingError, WadudError):
                log.warning("a recording file could not be exported", extra={"file": str(f["id"])})
                continue
            out.append(ArchiveFile(f"{f['recording_id']}/{f['id']}.webm", data, "video/webm"))
        hidden = {"key_id", "key_nonce", "key_sealed", "storage_key", "nonce"}
        return [
            Part(
                "recordings",
                [{k: v for k, v in r.items() if k not in hidden} for r in records(recs)],
            ),
            Part("consents", records(consents)),
            Part(
                "files",
                [{k: v for k, v in r.items() if k not in hidden} for r in records(files)],
                out,
            ),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        ids = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM recordings WHERE patient_id = $1 FOR UPDATE", subject.user_id
            )
        ]
        keys = await delete_recordings(conn, ids)
        return Erased(counts={"recordings": len(ids)}, storage_keys=keys)


async def _old(conn: asyncpg.Connection, ctx: RoundContext, days: float) -> int:
    # Not one a recorder holds right now: it would write its files after us.
    where = """coalesce(ready_at, stopped_at, created_at) < $1
               AND (state <> 'processing' OR lease_until < now())"""
    return await ctx.delete_batched_by(
        conn, "recordings", where, ctx.days_ago(days), delete=delete_recordings
    )


def retention_rules() -> list[Rule]:
    return [
        Rule(
            "recordings",
            "Visit recordings: their files, segments, consents and rows",
            "recording_retention_days",
            _old,
        )
    ]
