"""A doctor's part of the data rights (:mod:`privacy.rights`): doctors are data
subjects too, and ``GET /api/v1/me/export`` gives a doctor what Wadud holds
about them as a doctor.

Export, for the doctor profiles the account holds (``doctors.user_id``):
the profile, its documents (their record; the files are the clinic's
verification evidence and stay with it), the weekly schedule and its
per-day overrides, the payout bank details (opened with the doctor's data
key, :mod:`.payouts.details`), earnings per currency, manual payouts and
payout-batch lines. Nothing of a patient: earnings are the ledger's sums,
not the bookings behind them.

Erasure is a patient's right here (``POST /api/v1/me/erasure`` is for
patients); this provider erases nothing. The doctor's data key, which seals
their bank details, is still destroyed with any account that is erased.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import asyncpg
from aiohttp import web

from booking.payments.payouts import batches
from booking.payments.payouts.details import SEALED_COLUMNS, sealer_of
from booking.payments.payouts.service import doctor_earnings
from privacy.rights import Erased, Part, Subject, records

__all__ = ["DoctorProvider"]


class DoctorProvider:
    name = "doctor"

    def __init__(self, app: web.Application) -> None:
        self._app = app

    async def export(self, conn: asyncpg.Connection, subject: Subject) -> Sequence[Part]:
        profiles = await conn.fetch(
            """SELECT id, clinic_id, display_name, specialty, languages, bio, fee_minor,
                      currency, region, status, published_at, time_zone, buffer_before_min,
                      buffer_after_min, min_notice_min, horizon_days, slot_minutes,
                      rating_count, rating_sum, created_at, updated_at
               FROM doctors WHERE user_id = $1 ORDER BY created_at""",
            subject.user_id,
        )
        if not profiles:
            return []
        ids = [p["id"] for p in profiles]
        documents = await conn.fetch(
            """SELECT id, doctor_id, kind, filename, content_type, size_bytes, sha256, status,
                      reviewed_at, created_at
               FROM doctor_documents WHERE doctor_id = ANY($1::uuid[]) ORDER BY created_at""",
            ids,
        )
        rules = await conn.fetch(
            """SELECT doctor_id, weekday, start_local, end_local, types
               FROM availability_rules WHERE doctor_id = ANY($1::uuid[])
               ORDER BY doctor_id, weekday, start_local""",
            ids,
        )
        overrides = await conn.fetch(
            """SELECT doctor_id, day, windows, closed FROM availability_overrides
               WHERE doctor_id = ANY($1::uuid[]) ORDER BY doctor_id, day""",
            ids,
        )
        accounts = await conn.fetch(
            f"""SELECT {SEALED_COLUMNS.format(t="a")}, a.iban_last4, a.updated_at
                FROM doctor_payout_accounts a WHERE a.doctor_id = ANY($1::uuid[])
                ORDER BY a.doctor_id""",
            ids,
        )
        details = await sealer_of(self._app).open_rows(conn, accounts)
        manual = await conn.fetch(
            """SELECT id, doctor_id, amount_minor, currency, reference, created_at
               FROM payouts WHERE doctor_id = ANY($1::uuid[]) ORDER BY created_at""",
            ids,
        )
        earnings = []
        lines = []
        for doctor_id in ids:
            for e in await doctor_earnings(conn, doctor_id):
                earnings.append({"doctor_id": str(doctor_id), **dataclasses.asdict(e)})
            for line in await batches.doctor_lines(conn, doctor_id, limit=1_000_000):
                lines.append(
                    {
                        "doctor_id": str(doctor_id),
                        **{
                            k: line[k]
                            for k in (
                                "batch_reference",
                                "batch_created_at",
                                "reference",
                                "amount_minor",
                                "currency",
                                "status",
                                "failure_reason",
                                "settled_at",
                            )
                        },
                    }
                )
        return [
            Part("profiles", records(profiles)),
            Part("documents", records(documents)),
            Part("availability_rules", records(rules)),
            Part("availability_overrides", records(overrides)),
            Part(
                "payout_accounts",
                [
                    {
                        "doctor_id": str(a["doctor_id"]),
                        "iban": d.iban,
                        "account_title": d.account_title,
                        "updated_at": a["updated_at"].isoformat(),
                    }
                    for a, d in zip(accounts, details, strict=True)
                ],
            ),
            Part("earnings", records(earnings)),
            Part("payouts", records(manual)),
            Part("payout_batch_lines", records(lines)),
        ]

    async def erase(self, conn: asyncpg.Connection, subject: Subject) -> Erased:
        return Erased()
