"""A visit's recordings: the rows, the state machine, and the API signalling calls.

The machine (one row per time a visit was asked to be recorded)::

    asking ──all agreed: start()──▶ recording ──stop()──▶ stopped ──recorder──▶ processing
      │                               │  │                                       │   │
      │ a refusal: answer()           │  │ a refusal: answer() (= stop())        │   ▼
      ▼                               │  ▼                                       │  ready
    refused                           │ stopped                                  ▼
                                      └──stop(failure)──▶ failed ◀──────────────┘ (an error,
                                                                                  or too many tries)
    asking ──stop() (the call ended before all agreed)──▶ refused

A refusal while recording stops the recording, and what was recorded
before it is kept and processed: everyone, the refuser included, had agreed
to that part, and a withdrawal of consent stops what follows it, not what
came before. The visible indicator goes away on every screen at the same
moment (signalling's part). A clinic that must discard it deletes the
recording (``DELETE /api/v1/recordings/{id}``).

Keys: :meth:`Recordings.request` makes the recording's own random AES-256
key and stores it sealed by the patient's data key
(:class:`privacy.subject_keys.SubjectKeys`). The media worker seals segments
with the raw key (:meth:`Recordings.start` hands it over) and the recorder
seals files with it. Erasing the patient shreds the patient's key, and with
it the only way to the recording key.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final
from uuid import UUID, uuid4

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hooks import events
from privacy import audit
from privacy.subject_keys import KeyShredded, SubjectKeys
from recording.errors import (
    AlreadyRecording,
    BadTransition,
    RecordingErased,
    RecordingError,
    RecordingNotFound,
)

__all__ = [
    "TRANSITIONS",
    "Recording",
    "RecordingState",
    "Recordings",
    "file_aad",
    "open_file",
    "recording_key",
    "seal_file",
]


class RecordingState(StrEnum):
    ASKING = "asking"
    REFUSED = "refused"
    RECORDING = "recording"
    STOPPED = "stopped"
    PROCESSING = "processing"
    READY = "ready"
    FAILED = "failed"


#: (from, verb) -> to. Verbs: start, refuse, stop, fail, claim, done.
TRANSITIONS: Final[dict[tuple[RecordingState, str], RecordingState]] = {
    (RecordingState.ASKING, "start"): RecordingState.RECORDING,
    (RecordingState.ASKING, "refuse"): RecordingState.REFUSED,
    (RecordingState.ASKING, "stop"): RecordingState.REFUSED,
    (RecordingState.ASKING, "fail"): RecordingState.FAILED,
    (RecordingState.RECORDING, "refuse"): RecordingState.STOPPED,
    (RecordingState.RECORDING, "stop"): RecordingState.STOPPED,
    (RecordingState.RECORDING, "fail"): RecordingState.FAILED,
    (RecordingState.STOPPED, "claim"): RecordingState.PROCESSING,
    (RecordingState.PROCESSING, "claim"): RecordingState.PROCESSING,  # a lease ran out: another try
    (RecordingState.PROCESSING, "done"): RecordingState.READY,
    (RecordingState.PROCESSING, "fail"): RecordingState.FAILED,
}

#: States a booking's recording is "live" in (at most one per booking).
LIVE: Final = (RecordingState.ASKING, RecordingState.RECORDING)
_KEY_BYTES = 32


def _next(state: str, verb: str) -> RecordingState:
    to = TRANSITIONS.get((RecordingState(state), verb))
    if to is None:
        raise BadTransition(f"a recording that is {state} cannot {verb}")
    return to


def key_aad(recording_id: UUID) -> bytes:
    """Binds the wrapped recording key to its row."""
    return b"wadud-recording-key:" + recording_id.bytes


def file_aad(recording_id: UUID, file_id: UUID) -> bytes:
    """Binds a sealed file to its recording and row: bytes moved onto
    another recording or file do not open."""
    return b"wadud-recording-file:" + recording_id.bytes + file_id.bytes


def seal_file(key: bytes, recording_id: UUID, file_id: UUID, data: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext) of a recorder's file under the recording key (AES-256-GCM)."""
    nonce = os.urandom(12)
    return nonce, AESGCM(key).encrypt(nonce, data, file_aad(recording_id, file_id))


def open_file(key: bytes, recording_id: UUID, file_id: UUID, nonce: bytes, sealed: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, sealed, file_aad(recording_id, file_id))
    except InvalidTag:
        raise RecordingError("a stored recording file failed authentication") from None


async def recording_key(
    conn: asyncpg.Connection | asyncpg.Pool, keys: SubjectKeys, row: asyncpg.Record
) -> bytes:
    """The raw recording key of a ``recordings`` row, unwrapped with the
    patient's key; :class:`RecordingErased` once that key is shredded."""
    try:
        return await keys.open(
            conn,
            row["key_id"],
            bytes(row["key_nonce"]),
            bytes(row["key_sealed"]),
            key_aad(row["id"]),
        )
    except KeyShredded:
        raise RecordingErased("the patient's data was erased") from None
    except InvalidTag:
        raise RecordingError("a recording key failed authentication") from None


@dataclass(frozen=True)
class Recording:
    id: UUID
    booking_id: UUID
    room: str
    state: str


def _recording(row: asyncpg.Record) -> Recording:
    return Recording(row["id"], row["booking_id"], row["room"], row["state"])


async def announce(
    conn: asyncpg.Connection, row: Mapping[str, Any], name: str, at: dt.datetime, **data: Any
) -> None:
    """Webhook event ``name`` of the recording ``row`` (its id, booking and
    room), with ``data`` besides its id, in ``conn``'s transaction."""
    await events.emit(
        conn,
        name,
        booking_id=str(row["booking_id"]),
        room=row["room"],
        at=at.isoformat(),
        data={"recording_id": str(row["id"]), **data},
    )


class Recordings:
    """The recordings API signalling calls (and the recorder's store): the
    pool and the patients' data keys it seals recording keys with."""

    def __init__(self, pool: asyncpg.Pool, keys: SubjectKeys) -> None:
        self.pool = pool
        self.keys = keys

    async def _locked(self, conn: asyncpg.Connection, recording_id: UUID) -> asyncpg.Record:
        row = await conn.fetchrow("SELECT * FROM recordings WHERE id = $1 FOR UPDATE", recording_id)
        if row is None:
            raise RecordingNotFound("no such recording")
        return row

    async def request(
        self,
        booking_id: UUID,
        room: str,
        requested_by: UUID | None,
        *,
        recording_id: UUID | None = None,
    ) -> UUID:
        """A new recording in state ``asking`` for the booking's visit, with a
        random 32-byte key stored wrapped under the booking's patient's data
        key. ``recording_id``: the id the call room gave it (new if None).
        :class:`AlreadyRecording` if one is already asking or recording for
        that booking; :class:`RecordingNotFound` for no such booking."""
        rid = recording_id or uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            booking = await conn.fetchrow(
                "SELECT id, clinic_id, patient_id FROM bookings WHERE id = $1 FOR UPDATE",
                booking_id,
            )
            if booking is None:
                raise RecordingNotFound("no such booking")
            key = await self.keys.key_for(conn, booking["patient_id"])
            nonce, sealed = key.seal(AESGCM.generate_key(_KEY_BYTES * 8), key_aad(rid))
            try:
                await conn.execute(
                    """INSERT INTO recordings (id, booking_id, clinic_id, patient_id, room,
                           requested_by, key_id, key_nonce, key_sealed)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
                    rid,
                    booking_id,
                    booking["clinic_id"],
                    booking["patient_id"],
                    room,
                    requested_by,
                    key.kid,
                    nonce,
                    sealed,
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyRecording(
                    "this visit already has a recording asking or recording"
                ) from None
        return rid

    async def answer(
        self,
        recording_id: UUID,
        participant: str,
        account_id: UUID | None,
        role: str,
        agreed: bool,
    ) -> str:
        """One participant's consent answer: a row, and an audit record. A
        refusal while ``asking`` makes it ``refused``; while ``recording``
        it stops it (``stopped``: what was recorded before is kept, see the
        module's docstring). Returns the recording's state after the answer."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, recording_id)
            state = row["state"]
            await conn.execute(
                """INSERT INTO recording_consents
                       (recording_id, clinic_id, participant, account_id, role, agreed)
                   VALUES ($1, $2, $3, $4, $5, $6)""",
                recording_id,
                row["clinic_id"],
                participant,
                account_id,
                role,
                agreed,
            )
            if not agreed and state in LIVE:
                state = _next(state, "refuse")
                await conn.execute(
                    """UPDATE recordings SET state = $2,
                           stopped_at = CASE WHEN $2 = 'stopped' THEN now() END
                       WHERE id = $1""",
                    recording_id,
                    state,
                )
            await audit.record(
                conn,
                actor=account_id,
                role=role or None,
                action="recording.consent",
                subject=row["patient_id"],
                clinic=row["clinic_id"],
                object=f"recording/{recording_id}",
                detail={"participant": participant, "agreed": agreed},
            )
        return str(state)

    async def start(self, recording_id: UUID) -> str:
        """``asking`` -> ``recording`` (``started_at``), with the webhook
        event ``room.recording_started`` in the same transaction. Returns the
        raw recording key, urlsafe base64, for the media worker's order."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, recording_id)
            _next(row["state"], "start")
            at = await conn.fetchval(
                """UPDATE recordings SET state = 'recording', started_at = now()
                   WHERE id = $1 RETURNING started_at""",
                recording_id,
            )
            await announce(conn, row, "recording_started", at)
            raw = await recording_key(conn, self.keys, row)
        return base64.urlsafe_b64encode(raw).decode()

    async def segment(
        self,
        recording_id: UUID,
        participant: str,
        track_id: str,
        kind: str,
        index: int,
        key: str,
        packets: int,
        size: int,
        started: float,
        ended: float,
    ) -> None:
        """One stored segment (idempotent per (recording, track_id, index)).
        Taken in any state, so every stored object has a row that deletion
        and erasure find; the recorder uses those that landed before it
        claimed the recording."""
        if kind not in ("audio", "video"):
            raise RecordingError(f"a segment's kind is audio or video, not {kind!r}")
        status = await self.pool.execute(
            """INSERT INTO recording_segments (recording_id, clinic_id, participant, track_id,
                   kind, index, storage_key, packets, size_bytes, started_at, ended_at)
               SELECT id, clinic_id, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9),
                      to_timestamp($10)
               FROM recordings WHERE id = $1
               ON CONFLICT (recording_id, track_id, index) DO NOTHING""",
            recording_id,
            participant,
            track_id,
            kind,
            index,
            key,
            packets,
            size,
            started,
            ended,
        )
        if status == "INSERT 0 0":
            exists = await self.pool.fetchval(
                "SELECT true FROM recordings WHERE id = $1", recording_id
            )
            if not exists:
                raise RecordingNotFound("no such recording")

    async def stop(self, recording_id: UUID, failure: str | None = None) -> None:
        """``recording`` -> ``stopped`` (a job for ``wadud recorder``), or,
        with ``failure``, -> ``failed`` with ``room.recording_failed``. A
        recording still ``asking`` (the call ended before everyone agreed)
        becomes ``refused``; one already stopped, refused or failed is left
        as it is (a second stop from another replica is no error)."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, recording_id)
            if row["state"] not in LIVE:
                return
            if failure is None:
                await conn.execute(
                    "UPDATE recordings SET state = $2, stopped_at = now() WHERE id = $1",
                    recording_id,
                    _next(row["state"], "stop"),
                )
                return
            await fail(conn, row, failure)

    async def active(self, booking_id: UUID) -> Recording | None:
        """The booking's recording that is asking or recording, if any."""
        row = await self.pool.fetchrow(
            """SELECT id, booking_id, room, state FROM recordings
               WHERE booking_id = $1 AND state IN ('asking', 'recording')""",
            booking_id,
        )
        return None if row is None else _recording(row)

    async def get(self, recording_id: UUID) -> Recording:
        row = await self.pool.fetchrow(
            "SELECT id, booking_id, room, state FROM recordings WHERE id = $1", recording_id
        )
        if row is None:
            raise RecordingNotFound("no such recording")
        return _recording(row)


async def fail(conn: asyncpg.Connection, row: asyncpg.Record, failure: str) -> None:
    """-> ``failed`` with ``failure`` and ``room.recording_failed`` (in the
    caller's transaction, the row locked by it). The event says why in a
    short reason with no personal data."""
    _next(row["state"], "fail")
    reason = failure[:500]
    at = await conn.fetchval(
        """UPDATE recordings SET state = 'failed', failure = $2, lease_until = NULL,
               stopped_at = coalesce(stopped_at, now())
           WHERE id = $1 RETURNING now()""",
        row["id"],
        reason,
    )
    await announce(conn, row, "recording_failed", at, reason=reason)
