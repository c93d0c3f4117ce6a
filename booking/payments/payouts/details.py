"""Doctors' payout bank details, sealed at rest.

The IBAN and the account title are sealed together (AES-256-GCM, NIST SP
800-38D) under the doctor's own data key (:mod:`privacy.subject_keys`:
doctors are data subjects too, and erasing the doctor's account shreds the
key, so no copy of the details opens again, in backups included). A doctor
profile with no account of its own is sealed under the server keyring
(chat's, which wraps the subject keys). The associated data is the doctor's
id, so a batch line takes its doctor's sealed details as they are (the line
keeps the details it was made with, and opens as the doctor's), and sealed
bytes moved onto another doctor's row do not open. Only the IBAN's last four
characters stay in clear, for lists.

The details are opened only where they are shown to the doctor (and the
clinic's finance staff who keep them, ``GET .../payout-account``), in the
bank's bulk-upload file, and in the doctor's own data export.

Rows written before migration 0024 hold the details in clear;
:func:`seal_clear_rows` (run at start) seals them, and until then they are
read as they are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from uuid import UUID

import asyncpg
from aiohttp import web

from booking.payments.errors import PaymentError
from chat.crypto import DecryptError, Keyring, Shredded
from wadud.errors import Gone
from wadud.state import keys

__all__ = [
    "SEALED_COLUMNS",
    "Details",
    "DetailsErased",
    "PayoutSealer",
    "SealedDetails",
    "iban_last4",
    "seal_clear_rows",
    "sealer_of",
]

log = logging.getLogger("wadud.payments.payouts")

#: What a row needs to be opened (``a`` or ``l``: the account or the line),
#: clear columns included for rows not yet sealed.
SEALED_COLUMNS: Final = (
    "{t}.doctor_id, {t}.key_id, {t}.nonce, {t}.sealed, {t}.iban, {t}.account_title"
)
_EXTRAS_KEY: Final = "payments_keyring"
#: Rows :func:`seal_clear_rows` seals per transaction.
_SEAL_BATCH: Final = 500


class DetailsErased(PaymentError, Gone):
    """The doctor's account was erased: their sealed bank details are gone."""

    http_status = 410
    code = "payout_account_erased"
    title = "These bank details were erased at the doctor's request"


@dataclass(frozen=True, slots=True)
class Details:
    iban: str
    account_title: str


@dataclass(frozen=True, slots=True)
class SealedDetails:
    key_id: str
    nonce: bytes
    sealed: bytes
    iban_last4: str


def iban_last4(iban: str) -> str:
    return iban[-4:]


def _aad(doctor_id: UUID) -> bytes:
    return b"wadud-payout-account:" + doctor_id.bytes


class PayoutSealer:
    """Seals and opens doctors' bank details with ``keyring`` (see the module
    docstring)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def seal(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        doctor_id: UUID,
        user_id: UUID | None,
        details: Details,
    ) -> SealedDetails:
        """Seal under the doctor's data key (``user_id``: the doctor's
        account), or the server key for a doctor without one."""
        plain = json.dumps(
            {"iban": details.iban, "account_title": details.account_title}, separators=(",", ":")
        ).encode()
        if user_id is not None:
            sealed = await self.keyring.seal_for(conn, user_id, plain, _aad(doctor_id))
        else:
            sealed = self.keyring.seal(plain, _aad(doctor_id))
        return SealedDetails(sealed.key_id, sealed.nonce, sealed.data, iban_last4(details.iban))

    async def open_rows(
        self, conn: asyncpg.Connection | asyncpg.Pool, rows: Iterable[Mapping[str, Any]]
    ) -> list[Details]:
        """The details of rows holding :data:`SEALED_COLUMNS`, in their order
        (:class:`DetailsErased` if a doctor's key was shredded)."""
        rows = list(rows)
        await self.keyring.load(conn, {r["key_id"] for r in rows if r["key_id"] is not None})
        return [self._open(r) for r in rows]

    def _open(self, row: Mapping[str, Any]) -> Details:
        if row["sealed"] is None:  # not sealed yet (seal_clear_rows)
            return Details(row["iban"], row["account_title"])
        try:
            plain = self.keyring.open(
                row["key_id"], bytes(row["nonce"]), bytes(row["sealed"]), _aad(row["doctor_id"])
            )
        except Shredded:
            raise DetailsErased(
                f"doctor {row['doctor_id']}'s bank details were erased with their account"
            ) from None
        except DecryptError as exc:
            raise PaymentError(f"doctor {row['doctor_id']}'s bank details do not open") from exc
        data = json.loads(plain)
        return Details(str(data["iban"]), str(data["account_title"]))


def sealer_of(app: web.Application) -> PayoutSealer:
    """The app's sealer, over the keyring that wraps subject keys (made once
    per app, so the doctors' keys are cached once)."""
    extras = app[keys.EXTRAS]
    found: PayoutSealer | None = extras.get(_EXTRAS_KEY)
    if found is None:
        found = PayoutSealer(Keyring.from_settings(app[keys.SETTINGS]))
        extras[_EXTRAS_KEY] = found
    return found


async def seal_clear_rows(pool: asyncpg.Pool, sealer: PayoutSealer) -> int:
    """Seal the bank details still held in clear (rows from before migration
    0024), accounts and batch lines alike, a batch per transaction; rows are
    taken ``SKIP LOCKED``, so replicas starting together share the work.
    Returns how many rows were sealed."""
    done = 0
    for table in ("doctor_payout_accounts", "payout_batch_lines"):
        key = "doctor_id" if table == "doctor_payout_accounts" else "id"
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"""SELECT t.{key} AS row_key, t.doctor_id, d.user_id, t.iban,
                               t.account_title
                        FROM {table} t JOIN doctors d ON d.id = t.doctor_id
                        WHERE t.sealed IS NULL LIMIT $1 FOR UPDATE OF t SKIP LOCKED""",
                    _SEAL_BATCH,
                )
                sealed = [
                    await sealer.seal(
                        conn, r["doctor_id"], r["user_id"], Details(r["iban"], r["account_title"])
                    )
                    for r in rows
                ]
                await conn.execute(
                    f"""UPDATE {table} t
                        SET iban = NULL, account_title = NULL, key_id = x.key_id,
                            nonce = x.nonce, sealed = x.sealed, iban_last4 = x.last4
                        FROM unnest($1::uuid[], $2::text[], $3::bytea[], $4::bytea[],
                                    $5::text[]) AS x(row_key, key_id, nonce, sealed, last4)
                        WHERE t.{key} = x.row_key""",
                    [r["row_key"] for r in rows],
                    [s.key_id for s in sealed],
                    [s.nonce for s in sealed],
                    [s.sealed for s in sealed],
                    [s.iban_last4 for s in sealed],
                )
            done += len(rows)
            if len(rows) < _SEAL_BATCH:
                break
    if done:
        log.info("payout bank details sealed", extra={"rows": done})
    return done
