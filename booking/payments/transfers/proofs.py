"""Bank transfer proofs of payment: a photo or PDF of the receipt the patient
uploads, sealed under their data key (so erasure shreds it), stored with the
attachment storage and recorded against the live transfer."""

from __future__ import annotations

from typing import Final
from uuid import UUID, uuid4

import asyncpg
from cryptography.exceptions import InvalidTag

from booking.payments.errors import BookingNotPayable
from booking.payments.transfers.core import LIVE, TransferError
from privacy.subject_keys import KeyShredded, SubjectKeys
from wadud.errors import Conflict, Gone
from wadud.state.storage import Storage

__all__ = [
    "MAX_PROOFS",
    "PROOF_COLUMNS",
    "TooManyProofs",
    "add_proof",
    "proof_aad",
    "proofs_of",
    "read_proof",
]

#: Proofs one transfer takes (a receipt and a retake or two, not an album).
MAX_PROOFS: Final = 10
PROOF_COLUMNS: Final = (
    "id, payment_intent_id, clinic_id, patient_id, content_type, size_bytes, created_at"
)


class TooManyProofs(TransferError, Conflict):
    """The transfer holds :data:`MAX_PROOFS` proofs already."""

    http_status = 409
    code = "too_many_proofs"


def proof_aad(proof_id: UUID) -> bytes:
    """Binds a sealed proof to its row: bytes copied onto another row do not open."""
    return b"wadud-bank-transfer-proof:" + proof_id.bytes


async def add_proof(
    conn: asyncpg.Connection,
    subjects: SubjectKeys,
    storage: Storage,
    intent: asyncpg.Record,
    data: bytes,
    content_type: str,
) -> asyncpg.Record:
    """Seal ``data`` under the patient's data key, store it, and record it
    against the live transfer ``intent`` (409 once it is no longer live or
    holds :data:`MAX_PROOFS`)."""
    if intent["status"] not in LIVE:
        raise BookingNotPayable(f"the transfer is {intent['status']}; it takes no more proofs")
    count = await conn.fetchval(
        "SELECT count(*) FROM bank_transfer_proofs WHERE payment_intent_id = $1", intent["id"]
    )
    if count >= MAX_PROOFS:
        raise TooManyProofs(f"a transfer takes at most {MAX_PROOFS} proofs")
    proof_id = uuid4()
    key = await subjects.key_for(conn, intent["patient_id"])
    nonce, sealed = key.seal(data, proof_aad(proof_id))
    storage_key = await storage.put(sealed)
    row = await conn.fetchrow(
        f"""INSERT INTO bank_transfer_proofs (id, payment_intent_id, clinic_id, patient_id,
               content_type, size_bytes, storage_key, key_id, nonce)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {PROOF_COLUMNS}""",
        proof_id,
        intent["id"],
        intent["clinic_id"],
        intent["patient_id"],
        content_type,
        len(data),
        storage_key,
        key.kid,
        nonce,
    )
    assert row is not None
    return row


async def read_proof(
    conn: asyncpg.Connection | asyncpg.Pool,
    subjects: SubjectKeys,
    storage: Storage,
    proof: asyncpg.Record,
) -> bytes:
    """A proof's bytes, opened with its patient's key (410 once erased)."""
    sealed = await storage.get(proof["storage_key"])
    try:
        return await subjects.open(
            conn, proof["key_id"], bytes(proof["nonce"]), sealed, proof_aad(proof["id"])
        )
    except KeyShredded:
        raise Gone("this proof was erased at the patient's request") from None
    except InvalidTag:
        raise TransferError("a stored proof failed authentication") from None


async def proofs_of(conn: asyncpg.Connection, intent_id: UUID) -> list[asyncpg.Record]:
    """The records of a transfer's proofs (not their files), oldest first."""
    return list(
        await conn.fetch(
            f"""SELECT {PROOF_COLUMNS} FROM bank_transfer_proofs
                WHERE payment_intent_id = $1 ORDER BY created_at, id""",
            intent_id,
        )
    )
