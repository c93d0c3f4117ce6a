"""Doctors' bank details sealed at rest (booking.payments.payouts.details):
no clear IBAN or title in the tables, the details still in the bank file
and on the doctor's page, rows from before the migration sealed at start,
and the doctor's erasure shredding them; and a doctor's own data export."""

from __future__ import annotations

import csv
import io
import json
import uuid
import zipfile
from typing import Any

import asyncpg

from booking.payments.payouts import details
from privacy import subject_keys
from tests.booking.factories import Clinic, Doctor, make_doctor
from tests.booking.payments.checkout.test_payments_api import owed, pool_of
from tests.conftest import Api

IBAN = "PK36SCBL0000001123456702"
TITLE = "Dr Ayesha Khan"


def account_url(doctor: Doctor) -> str:
    return f"/api/v1/doctors/{doctor.id}/payout-account"


async def in_clear(pool: asyncpg.Pool) -> list[str]:
    """Tables whose rows hold the IBAN or the title anywhere, as text or bytes."""
    found = []
    for table in ("doctor_payout_accounts", "payout_batch_lines"):
        hit = await pool.fetchval(
            f"""SELECT count(*) FROM {table} t
                WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0
                   OR position(convert_to($1, 'UTF8') IN COALESCE(t.sealed, '')) > 0""",
            IBAN,
            TITLE,
        )
        if hit:
            found.append(table)
    return found


async def bank_file(api: Api, clinic: Clinic, batch_id: str) -> list[dict[str, str]]:
    resp = await api.client.get(
        f"/api/v1/payout-batches/{batch_id}/export.csv",
        headers={"Authorization": f"Bearer {clinic.staff_token}"},
    )
    assert resp.status == 200, await resp.text()
    return list(csv.DictReader(io.StringIO(await resp.text())))


async def test_bank_details_are_sealed_and_open_for_the_doctor_and_the_bank_file(
    api: Api,
) -> None:
    clinic, doctor = await owed(api)
    saved = await api.put(
        account_url(doctor), {"iban": IBAN, "account_title": TITLE}, token=doctor.token
    )
    assert (saved["iban"], saved["account_title"]) == (IBAN, TITLE)
    pool = pool_of(api)
    row = await pool.fetchrow(
        "SELECT * FROM doctor_payout_accounts WHERE doctor_id = $1", uuid.UUID(doctor.id)
    )
    assert row["iban"] is None and row["account_title"] is None
    assert row["iban_last4"] == "6702"
    # Under the doctor's own data key: erasing them shreds it.
    key = await pool.fetchval(
        "SELECT 's:' || replace(id::text, '-', '') FROM subject_keys WHERE subject_id = $1",
        uuid.UUID(doctor.user_id),
    )
    assert row["key_id"] == key
    for who in (doctor.token, clinic.staff_token):
        shown = await api.get(account_url(doctor), token=who)
        assert (shown["iban"], shown["account_title"]) == (IBAN, TITLE)

    made = await api.post(
        f"/api/v1/clinics/{clinic.id}/payout-batches",
        {"threshold_minor": 1},
        token=clinic.staff_token,
        expect=201,
    )
    (line,) = made["lines"]
    assert line["iban_last4"] == "6702"
    assert "iban" not in line and "account_title" not in line
    assert await in_clear(pool) == []
    (out,) = await bank_file(api, clinic, made["id"])
    assert (out["iban"], out["account_title"], out["amount"]) == (IBAN, TITLE, "1000.00")

    # Bytes moved onto another doctor's row do not open.
    other = await make_doctor(api, clinic, fee_minor=100_000)
    await pool.execute(
        """INSERT INTO doctor_payout_accounts
               (doctor_id, clinic_id, key_id, nonce, sealed, iban_last4)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        uuid.UUID(other.id),
        uuid.UUID(clinic.id),
        row["key_id"],
        row["nonce"],
        row["sealed"],
        "6702",
    )
    resp = await api.client.get(
        account_url(other), headers={"Authorization": f"Bearer {other.token}"}
    )
    assert resp.status == 500


async def test_details_in_clear_from_before_are_sealed_at_start(api: Api) -> None:
    clinic, doctor = await owed(api)
    pool = pool_of(api)
    # A row as migration 0018 wrote it, and a batch line made from it.
    await pool.execute(
        """INSERT INTO doctor_payout_accounts (doctor_id, clinic_id, iban, account_title)
           VALUES ($1, $2, $3, $4)""",
        uuid.UUID(doctor.id),
        uuid.UUID(clinic.id),
        IBAN,
        TITLE,
    )
    made = await api.post(
        f"/api/v1/clinics/{clinic.id}/payout-batches",
        {"threshold_minor": 1},
        token=clinic.staff_token,
        expect=201,
    )
    assert made["lines"][0]["iban_last4"] == "6702"
    assert await in_clear(pool) == ["doctor_payout_accounts", "payout_batch_lines"]
    sealer = details.sealer_of(api.app)
    assert await details.seal_clear_rows(pool, sealer) == 2
    assert await details.seal_clear_rows(pool, sealer) == 0
    assert await in_clear(pool) == []
    (out,) = await bank_file(api, clinic, made["id"])
    assert (out["iban"], out["account_title"]) == (IBAN, TITLE)
    shown = await api.get(account_url(doctor), token=doctor.token)
    assert (shown["iban"], shown["account_title"]) == (IBAN, TITLE)


async def test_a_doctor_without_an_account_is_sealed_under_the_server_key(api: Api) -> None:
    clinic, _ = await owed(api)
    pool = pool_of(api)
    doctor_id = await pool.fetchval(
        """INSERT INTO doctors (clinic_id, display_name, specialty, fee_minor, currency, region)
           VALUES ($1, 'Dr. No Account', 'general', 100000, 'PKR', 'PK') RETURNING id""",
        uuid.UUID(clinic.id),
    )
    await api.put(
        f"/api/v1/doctors/{doctor_id}/payout-account",
        {"iban": IBAN, "account_title": TITLE},
        token=clinic.staff_token,
    )
    kid = await pool.fetchval(
        "SELECT key_id FROM doctor_payout_accounts WHERE doctor_id = $1", doctor_id
    )
    assert not subject_keys.is_subject_kid(kid)
    assert await in_clear(pool) == []
    shown = await api.get(f"/api/v1/doctors/{doctor_id}/payout-account", token=clinic.staff_token)
    assert shown["iban"] == IBAN


async def test_erasing_the_doctor_shreds_their_bank_details(api: Api) -> None:
    clinic, doctor = await owed(api)
    await api.put(account_url(doctor), {"iban": IBAN, "account_title": TITLE}, token=doctor.token)
    made = await api.post(
        f"/api/v1/clinics/{clinic.id}/payout-batches",
        {"threshold_minor": 1},
        token=clinic.staff_token,
        expect=201,
    )
    pool = pool_of(api)
    async with pool.acquire() as conn:
        assert await subject_keys.shred(conn, uuid.UUID(doctor.user_id)) == 1
    details.sealer_of(api.app).keyring.subjects.forget(uuid.UUID(doctor.user_id))
    gone = await api.get(account_url(doctor), token=clinic.staff_token, expect=410)
    assert gone["code"] == "payout_account_erased"
    resp = await api.client.get(
        f"/api/v1/payout-batches/{made['id']}/export.csv",
        headers={"Authorization": f"Bearer {clinic.staff_token}"},
    )
    assert resp.status == 410


async def test_a_doctor_exports_their_profile_schedule_bank_details_and_earnings(
    api: Api,
) -> None:
    clinic, doctor = await owed(api)
    await api.put(account_url(doctor), {"iban": IBAN, "account_title": TITLE}, token=doctor.token)
    await api.post(
        f"/api/v1/clinics/{clinic.id}/payout-batches",
        {"threshold_minor": 1},
        token=clinic.staff_token,
        expect=201,
    )
    pool = pool_of(api)
    await pool.execute(
        """INSERT INTO availability_rules (doctor_id, clinic_id, weekday, start_local, end_local)
           VALUES ($1, $2, 0, '09:00', '13:00')""",
        uuid.UUID(doctor.id),
        uuid.UUID(clinic.id),
    )
    resp = await api.client.get(
        "/api/v1/me/export", headers={"Authorization": f"Bearer {doctor.token}"}
    )
    assert resp.status == 200, await resp.text()
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(files["manifest.json"])
    assert {"doctor/profiles.json", "doctor/payout_accounts.json"} <= {
        p["file"] for p in manifest["parts"]
    }

    def part(name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(files[f"doctor/{name}.json"])
        return found

    (profile,) = part("profiles")
    assert profile["id"] == doctor.id
    (account,) = part("payout_accounts")
    assert (account["iban"], account["account_title"]) == (IBAN, TITLE)
    rules = part("availability_rules")
    assert {"doctor_id": doctor.id, "weekday": 0, "start_local": "09:00:00"}.items() <= next(
        r for r in rules if r["start_local"] == "09:00:00" and r["end_local"] == "13:00:00"
    ).items()
    (pkr,) = part("earnings")
    assert (pkr["currency"], pkr["gross_minor"], pkr["payable_minor"]) == ("PKR", 100_000, 100_000)
    (line,) = part("payout_batch_lines")
    assert (line["amount_minor"], line["status"]) == (100_000, "pending")
    # Nothing of the patient who paid: earnings are the ledger's sums.
    patient = await pool.fetchval(
        "SELECT patient_id FROM bookings WHERE doctor_id = $1", uuid.UUID(doctor.id)
    )
    assert str(patient).encode() not in b"".join(files.values())
    assert "patient" not in {p["provider"] for p in manifest["parts"]}
