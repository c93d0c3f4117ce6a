"""Bank transfer's part of a patient's data rights (:mod:`privacy.rights`).

Export: the patient's transfers (reference, amount, state), the credits
that paid them or are owed back, and their proofs of payment, decrypted.

Erasure: proofs are deleted (their stored files after the commit; the data
key that sealed them is shredded by erasure anyway), and the free text of
the patient's credits (the bank's description, which may carry the payer's
name, and finance staff's notes) is blanked. The amounts, dates and states
stay: the ledger stands on them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Final

import asyncpg
from aiohttp import web

from booking.payments.gateway import BANK_TRANSFER
from booking.payments.transfers.proofs import PROOF_COLUMNS, read_proof
from privacy.rights import ArchiveFile, Erased, Part, Subject, records
from privacy.subject_keys import SubjectKeys
from wadud.errors import WadudError
from wadud.state import keys
from wadud.state.storage import storage_of

__all__ = ["BankTransferProvider", "subject_keys_of"]

log = logging.getLogger("wadud.payments.transfer")

_SUBJECT_KEYS: Final = "bank_transfer_subject_keys"
_EXTENSIONS: Final = {
    "application/pdf": "pdf",
    "image/gif": "gif",
    "image/jpeg": "jpg",
    "image/png": "png",
    "image/webp": "webp",
}


def subject_keys_of(app: web.Application) -> SubjectKeys:
    """Patients' data keys, wrapped by the server keyring that chat's keys
    form (the one ``subject_keys`` rows are wrapped with), made once per app."""
    extras = app[keys.EXTRAS]
    found: SubjectKeys | None = extras.get(_SUBJECT_KEYS)
    if found is None:
        # Imported here: chat is a neighbour, and only proofs need its keyring.
        from chat.crypto import Keyring

        found = Keyring.from_settings(app[keys.SETTINGS]).subjects
        extras[_SUBJECT_KEYS] = found
    return found


class BankTransferProvider:
    name = "bank_transfer"

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        uid = subject.user_id
        transfers = await conn.fetch(
            """SELECT id AS payment_id, booking_id, clinic_id, gateway_ref AS reference,
                      amount_minor, currency, status, expires_at, created_at, updated_at
               FROM payment_intents WHERE patient_id = $1 AND gateway = $2
               ORDER BY created_at""",
            uid,
            BANK_TRANSFER,
        )
        credits = await conn.fetch(
            """SELECT c.id, c.payment_intent_id AS payment_id, c.source, c.booked_on,
                      c.amount_minor, c.currency, c.narration, c.reference, c.status,
                      c.reason, c.note, c.created_at, c.resolved_at
               FROM bank_credits c JOIN payment_intents p ON p.id = c.payment_intent_id
               WHERE p.patient_id = $1 ORDER BY c.created_at""",
            uid,
        )
        proofs = await conn.fetch(
            f"""SELECT {PROOF_COLUMNS}, storage_key, key_id, nonce
                FROM bank_transfer_proofs WHERE patient_id = $1 ORDER BY created_at, id""",
            uid,
        )
        files: list[ArchiveFile] = []
        subjects, storage = subject_keys_of(self._app), storage_of(self._app)
        for p in proofs:
            try:
                data = await read_proof(conn, subjects, storage, p)
            except WadudError:
                log.warning("a proof could not be exported", extra={"proof_id": str(p["id"])})
                continue
            ext = _EXTENSIONS.get(p["content_type"], "bin")
            files.append(ArchiveFile(f"proofs/{p['id']}.{ext}", data, p["content_type"]))
        meta = [
            {k: v for k, v in r.items() if k not in ("storage_key", "key_id", "nonce")}
            for r in records(proofs)
        ]
        return [
            Part("transfers", records(transfers)),
            Part("credits", records(credits)),
            Part("proofs", meta, files),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        uid = subject.user_id
        out = Erased()
        gone = await conn.fetch(
            "DELETE FROM bank_transfer_proofs WHERE patient_id = $1 RETURNING storage_key", uid
        )
        out.counts["proofs"] = len(gone)
        out.storage_keys += [r["storage_key"] for r in gone]
        out.count(
            "credits",
            await conn.execute(
                """UPDATE bank_credits c SET narration = '', note = ''
                   FROM payment_intents p
                   WHERE p.id = c.payment_intent_id AND p.patient_id = $1""",
                uid,
            ),
        )
        return out
