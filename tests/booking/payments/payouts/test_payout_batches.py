"""Payout batches: the pure core (IBANs, the line's machine, the bank file)
and the whole flow over HTTP against a real PostgreSQL.

Doctors' balances are seeded with SQL in bulk (one statement for 500 doctors,
their bank details and one balanced ledger posting each), so the 500-doctor
batch runs in seconds; the batch itself goes through the endpoints.
"""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.payments.intent import Currency
from booking.payments.payouts import batch, details, service
from booking.payments.payouts.batch import FileLine, LineStatus
from booking.payments.postings import ledger_is_balanced
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.booking.payments.checkout.test_payments_api import owed, paid_booking, pool_of
from tests.conftest import Api
from wadud.web.api import Role

# --- the pure core --------------------------------------------------------------------

#: Published examples (banks' and registries' documentation).
VALID = [
    "PK36SCBL0000001123456702",
    "AE070331234567890123456",
    "QA58DOHB00001234567890ABCDEFG",
    "SA0380000000608010167519",
]


def make_iban(country: str, bban: str) -> str:
    """An IBAN with correct check digits (ISO 13616: 98 - mod 97 of the BBAN + CC00)."""
    digits = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(digits) % 97:02d}{bban}"


def pk_iban(n: int) -> str:
    return make_iban("PK", f"SCBL{n:016d}")


@pytest.mark.parametrize("value", VALID)
def test_published_ibans_are_valid(value: str) -> None:
    assert batch.iban(value) == value
    spaced = " ".join(value[i : i + 4] for i in range(0, len(value), 4)).lower()
    assert batch.iban(spaced) == value


@pytest.mark.parametrize(
    "value",
    [
        "PK36SCBL0000001123456703",  # check digits off by one
        "PK63SCBL0000001123456702",  # check digits swapped
        "PK36SCBL000000112345670",  # short
        "GB82WEST12345698765432",  # valid, but not a country we pay
        "PK36SCB10000001123456702",  # digit in the bank code
        "PK36-SCBL-0000-0011-2345-6702",
        "",
        "PKXXSCBL0000001123456702",
        "٣٦",
    ],
)
def test_bad_ibans_are_refused(value: str) -> None:
    with pytest.raises(batch.InvalidIban):
        batch.iban(value)


@given(st.integers(min_value=0, max_value=10**16 - 1), st.data())
def test_any_one_digit_change_breaks_the_checksum(n: int, data: st.DataObject) -> None:
    good = pk_iban(n)
    assert batch.iban(good) == good
    # mod 97 catches every single-character substitution.
    where = data.draw(st.sampled_from([2, 3, *range(8, 24)]))
    digit = data.draw(st.sampled_from([d for d in "0123456789" if d != good[where]]))
    with pytest.raises(batch.InvalidIban):
        batch.iban(good[:where] + digit + good[where + 1 :])


@pytest.mark.parametrize(
    "title", ["=HYPERLINK(1)", "+92300", "-x", "@x", "", " ", "Ali\nKhan", "علی", "x" * 101]
)
def test_bad_titles_are_refused(title: str) -> None:
    with pytest.raises(batch.InvalidAccountTitle):
        batch.account_title(title)


def test_titles_are_tidied() -> None:
    assert batch.account_title("  Dr.  Ayesha   Khan, (Pvt) ") == "Dr. Ayesha Khan, (Pvt)"


@given(st.sampled_from(list(LineStatus)), st.sampled_from(list(LineStatus)))
def test_the_line_machine(current: LineStatus, verdict: LineStatus) -> None:
    allowed = {
        (LineStatus.PENDING, LineStatus.PAID),
        (LineStatus.PENDING, LineStatus.FAILED),
        (LineStatus.PAID, LineStatus.PAID),
        (LineStatus.FAILED, LineStatus.FAILED),
    }
    if (current, verdict) in allowed:
        assert batch.settle(current, verdict) is verdict
    else:
        with pytest.raises(batch.LineSettled):
            batch.settle(current, verdict)


_titles = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 .,&'()/-]{0,30}", fullmatch=True).map(
    batch.account_title
)


@given(
    st.lists(st.tuples(st.integers(0, 10**16 - 1), _titles, st.integers(1, 10**12)), max_size=20)
)
def test_the_bank_file_reads_back(rows: list[tuple[int, str, int]]) -> None:
    lines = [
        FileLine(pk_iban(n), title, amount, Currency.PKR, batch.line_reference("PB-X", i + 1))
        for i, (n, title, amount) in enumerate(rows)
    ]
    text = batch.bank_file(lines)
    assert text.endswith("\r\n")
    header, *body = list(csv.reader(io.StringIO(text)))
    assert tuple(header) == batch.CSV_COLUMNS
    assert body == [
        [x.iban, x.account_title, batch.major_units(x.amount_minor, x.currency), "PKR", x.reference]
        for x in lines
    ]
    assert [int(Decimal(r[2]) * 100) for r in body] == [x.amount_minor for x in lines]


def test_major_units() -> None:
    assert batch.major_units(123450, Currency.PKR) == "1234.50"
    assert batch.major_units(5, Currency.SAR) == "0.05"


# --- helpers over the database ---------------------------------------------------------


async def seed_doctors(
    api: Api, clinic: Clinic, amounts: list[int], *, accounts: bool = True
) -> list[uuid.UUID]:
    """``len(amounts)`` doctors of ``clinic`` owed ``amounts``: the doctors,
    their bank details and a balanced adjustment each, three statements in all."""
    pool = pool_of(api)
    clinic_id = uuid.UUID(clinic.id)
    async with pool.acquire() as conn, conn.transaction():
        ids: list[uuid.UUID] = [
            r["id"]
            for r in await conn.fetch(
                """INSERT INTO doctors (clinic_id, display_name, specialty, fee_minor, currency,
                                        region)
                   SELECT $1, 'Dr. Bulk ' || g, 'general', 100000, $2, $3
                   FROM generate_series(1, $4) AS g RETURNING id""",
                clinic_id,
                clinic.currency,
                clinic.region,
                len(amounts),
            )
        ]
        if accounts:
            await conn.execute(
                """INSERT INTO doctor_payout_accounts (doctor_id, clinic_id, iban, account_title)
                   SELECT x.id, $1, x.iban, 'Dr Bulk ' || x.n
                   FROM unnest($2::uuid[], $3::text[]) WITH ORDINALITY AS x(id, iban, n)""",
                clinic_id,
                ids,
                [pk_iban(abs(hash(i)) % 10**16) for i in ids],
            )
        await conn.execute(
            """WITH x AS (SELECT * FROM unnest($2::uuid[], $3::bigint[]) AS x(doctor_id, amount)),
               t AS (INSERT INTO ledger_transactions (clinic_id, kind, reference)
                     SELECT $1, 'adjustment', 'seed:' || x.doctor_id FROM x
                     RETURNING id, reference)
               INSERT INTO ledger_entries (transaction_id, clinic_id, account, amount_minor,
                                           currency)
               SELECT t.id, $1, v.account, v.amount, $4
               FROM t JOIN x ON t.reference = 'seed:' || x.doctor_id
                    CROSS JOIN LATERAL (VALUES ('gateway_clearing:sandbox', x.amount),
                                               ('doctor_payable:' || x.doctor_id, -x.amount))
                        AS v(account, amount)""",
            clinic_id,
            ids,
            amounts,
            clinic.currency,
        )
    if accounts:
        # Inserted in clear, as before migration 0024; sealed as start-up does.
        await details.seal_clear_rows(pool, details.sealer_of(api.app))
    return ids


async def payables(api: Api, doctor_ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
    rows = await pool_of(api).fetch(
        """SELECT d.id, COALESCE((SELECT -sum(e.amount_minor) FROM ledger_entries e
                                  WHERE e.account = 'doctor_payable:' || d.id::text), 0) AS p
           FROM doctors d WHERE d.id = ANY($1::uuid[])""",
        doctor_ids,
    )
    return {r["id"]: int(r["p"]) for r in rows}


async def clinic_payable(api: Api, clinic: Clinic) -> int:
    return int(
        await pool_of(api).fetchval(
            """SELECT COALESCE(-sum(amount_minor), 0) FROM ledger_entries
               WHERE clinic_id = $1 AND account LIKE 'doctor_payable:%'""",
            uuid.UUID(clinic.id),
        )
    )


async def audit_count(api: Api, action: str) -> int:
    return int(
        await pool_of(api).fetchval("SELECT count(*) FROM audit_log WHERE action = $1", action)
    )


async def owed_with_account(api: Api, commission_bp: int) -> tuple[Clinic, Doctor]:
    """:func:`~tests.booking.payments.checkout.test_payments_api.owed`, and the
    doctor's bank details on file."""
    clinic, doctor = await owed(api, commission_bp)
    await api.put(
        f"/api/v1/doctors/{doctor.id}/payout-account",
        {"iban": VALID[0], "account_title": "Dr Test"},
        token=doctor.token,
    )
    return clinic, doctor


def batches_url(clinic: Clinic) -> str:
    return f"/api/v1/clinics/{clinic.id}/payout-batches"


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def minor(amount: str) -> int:
    return int(Decimal(amount) * 100)


async def state_of(api: Api, clinic: Clinic) -> tuple[Any, ...]:
    """Everything a payout-batch request may change, to show a refusal changed nothing."""
    pool = pool_of(api)
    cid = uuid.UUID(clinic.id)
    return (
        await pool.fetch("SELECT * FROM payout_batches WHERE clinic_id = $1 ORDER BY id", cid),
        await pool.fetch("SELECT * FROM payout_batch_lines WHERE clinic_id = $1 ORDER BY id", cid),
        await pool.fetchval("SELECT count(*) FROM ledger_entries WHERE clinic_id = $1", cid),
        await pool.fetchval("SELECT count(*) FROM payouts WHERE clinic_id = $1", cid),
        await pool.fetch(
            "SELECT * FROM doctor_payout_accounts WHERE clinic_id = $1 ORDER BY doctor_id", cid
        ),
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE action LIKE 'payout%'"),
    )


# --- 500 doctors ----------------------------------------------------------------------


async def test_a_batch_of_500_doctors_exports_what_the_ledger_pays(api: Api) -> None:
    clinic = await make_clinic(api)
    staff = clinic.staff_token
    amounts = [10_000 + 37 * i for i in range(500)]
    paid = await seed_doctors(api, clinic, amounts)
    below = await seed_doctors(api, clinic, [999, 1, 500])
    unbanked = await seed_doctors(api, clinic, [50_000, 60_000], accounts=False)
    owed = dict(zip(paid, amounts, strict=True))
    before = await clinic_payable(api, clinic)

    started = time.perf_counter()
    made = await api.post(batches_url(clinic), {"threshold_minor": 1000}, token=staff, expect=201)
    created_s = time.perf_counter() - started
    assert made["line_count"] == 500
    assert made["status"] == "open"
    assert made["total_minor"] == made["pending_minor"] == sum(amounts)
    assert {line["doctor_id"]: line["amount_minor"] for line in made["lines"]} == {
        str(k): v for k, v in owed.items()
    }
    assert sorted((s["doctor_id"], s["reason"]) for s in made["skipped"]) == sorted(
        (str(d), "no_payout_account") for d in unbanked
    )
    assert not {str(d) for d in below} & {line["doctor_id"] for line in made["lines"]}
    # Creating posts nothing: the money has not left yet.
    assert await clinic_payable(api, clinic) == before

    started = time.perf_counter()
    resp = await api.client.get(
        f"/api/v1/payout-batches/{made['id']}/export.csv",
        headers={"Authorization": f"Bearer {staff}"},
    )
    assert resp.status == 200
    assert resp.content_type == "text/csv"
    text = await resp.text()
    export_s = time.perf_counter() - started
    rows = read_csv(text)
    assert len(rows) == 500 == int(resp.headers["Wadud-Batch-Lines"])
    csv_total = sum(minor(r["amount"]) for r in rows)
    assert csv_total == int(resp.headers["Wadud-Batch-Total-Minor"]) == sum(amounts)
    assert len({r["reference"] for r in rows}) == 500
    assert all(batch.iban(r["iban"]) == r["iban"] for r in rows)
    assert {r["currency"] for r in rows} == {"PKR"}
    assert rows[0]["reference"] == made["reference"] + "-0001"

    # The bank refused three transfers and paid the rest.
    failed_rows = rows[7], rows[250], rows[499]
    marks = [
        {"reference": r["reference"], "status": "failed", "reason": "account closed"}
        for r in failed_rows
    ]
    await api.post(f"/api/v1/payout-batches/{made['id']}/marks", {"lines": marks}, token=staff)
    by_ref = {line["reference"]: line for line in made["lines"]}
    failed_ids = {uuid.UUID(by_ref[r["reference"]]["doctor_id"]) for r in failed_rows}
    failed_sum = sum(minor(r["amount"]) for r in failed_rows)
    # At once: owed in full and reserved by nothing, so payable again.
    async with pool_of(api).acquire() as conn:
        for d in failed_ids:
            assert await service.payable_and_pending(conn, d, "PKR") == (owed[d], 0)
    rest = [
        {"line_id": line["id"], "status": "paid"}
        for line in made["lines"]
        if uuid.UUID(line["doctor_id"]) not in failed_ids
    ]
    started = time.perf_counter()
    done = await api.post(
        f"/api/v1/payout-batches/{made['id']}/marks", {"lines": rest}, token=staff
    )
    marked_s = time.perf_counter() - started
    assert done["status"] == "closed"
    assert done["paid_minor"] == csv_total - failed_sum
    assert done["failed_minor"] == failed_sum
    assert done["pending_minor"] == 0

    # The ledger's payable moved by exactly what the bank paid ...
    after = await clinic_payable(api, clinic)
    assert before - after == csv_total - failed_sum
    assert before - after + failed_sum == csv_total
    now_owed = await payables(api, paid)
    # ... the three failed lines are payable again, exactly ...
    assert {d: now_owed[d] for d in failed_ids} == {d: owed[d] for d in failed_ids}
    # ... and everyone else is owed nothing.
    assert {d for d, v in now_owed.items() if v} == failed_ids
    assert await ledger_is_balanced(pool_of(api), uuid.UUID(clinic.id))
    pool = pool_of(api)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM payouts WHERE clinic_id = $1", uuid.UUID(clinic.id)
        )
        == 497
    )
    assert await audit_count(api, "payout_batch.create") == 1
    assert await audit_count(api, "payout_line.failed") == 3
    assert await audit_count(api, "payout_line.paid") == 497

    # The next batch takes exactly the three returned amounts.
    again = await api.post(batches_url(clinic), {"threshold_minor": 1000}, token=staff, expect=201)
    assert {uuid.UUID(line["doctor_id"]): line["amount_minor"] for line in again["lines"]} == {
        d: owed[d] for d in failed_ids
    }
    listed = await api.get(batches_url(clinic), token=staff)
    assert [b["id"] for b in listed] == [again["id"], made["id"]]
    assert all("lines" not in b or b["lines"] is None for b in listed)
    closed = await api.get(batches_url(clinic) + "?status=closed", token=staff)
    assert [b["id"] for b in closed] == [made["id"]]
    print(
        f"\n500-doctor batch: create {created_s * 1000:.0f} ms, export {export_s * 1000:.0f} ms,"
        f" mark 497 paid {marked_s * 1000:.0f} ms; CSV total {csv_total}, ledger moved"
        f" {before - after}, returned {failed_sum}"
    )


# --- concurrency ----------------------------------------------------------------------


async def test_concurrent_creations_never_batch_a_doctor_twice(api: Api) -> None:
    clinic = await make_clinic(api)
    amounts = [20_000 + i for i in range(60)]
    ids = await seed_doctors(api, clinic, amounts)
    results = await asyncio.gather(
        *[
            api.client.post(
                batches_url(clinic),
                json={"threshold_minor": 1000},
                headers={"Authorization": f"Bearer {clinic.staff_token}"},
            )
            for _ in range(4)
        ]
    )
    assert sorted(r.status for r in results) == [201, 409, 409, 409]
    for r in results:
        body = await r.json()
        if r.status == 409:
            assert body["code"] == "no_payable_doctors"
            assert {s["reason"] for s in body["skipped"]} == {"in_open_batch"}
    pool = pool_of(api)
    lines = await pool.fetch(
        "SELECT doctor_id, amount_minor FROM payout_batch_lines WHERE clinic_id = $1",
        uuid.UUID(clinic.id),
    )
    assert sorted(r["doctor_id"] for r in lines) == sorted(ids)
    assert sum(r["amount_minor"] for r in lines) == sum(amounts)


async def test_a_batch_and_a_manual_payout_at_once_never_pay_twice(api: Api) -> None:
    clinic, doctor = await owed_with_account(api, 0)
    auth = {"Authorization": f"Bearer {clinic.staff_token}"}
    for _ in range(5):
        made, manual = await asyncio.gather(
            api.client.post(batches_url(clinic), json={"threshold_minor": 1}, headers=auth),
            api.client.post(
                f"/api/v1/doctors/{doctor.id}/payouts", json={"amount_minor": 100_000}, headers=auth
            ),
        )
        assert sorted([made.status, manual.status]) == [201, 409]
        if made.status == 201:
            # Reserved: a manual payout cannot take it meanwhile.
            refused = await api.post(
                f"/api/v1/doctors/{doctor.id}/payouts",
                {"amount_minor": 1},
                token=clinic.staff_token,
                expect=409,
            )
            assert "in a payout batch" in refused["detail"]
            batch_id = (await made.json())["id"]
            await api.post(
                f"/api/v1/payout-batches/{batch_id}/marks",
                {
                    "lines": [
                        {
                            "reference": (await made.json())["lines"][0]["reference"],
                            "status": "failed",
                        }
                    ]
                },
                token=clinic.staff_token,
            )
        else:
            # The manual payout took it all; give the doctor another paid visit.
            await paid_booking(api, doctor)
        (owed,) = (await payables(api, [uuid.UUID(doctor.id)])).values()
        assert owed == 100_000


async def test_concurrent_marks_post_a_line_once(api: Api) -> None:
    clinic = await make_clinic(api)
    await seed_doctors(api, clinic, [30_000, 40_000])
    made = await api.post(
        batches_url(clinic), {"threshold_minor": 1}, token=clinic.staff_token, expect=201
    )
    first, second = made["lines"]
    url = f"/api/v1/payout-batches/{made['id']}/marks"
    auth = {"Authorization": f"Bearer {clinic.staff_token}"}
    paid = {"lines": [{"line_id": first["id"], "status": "paid"}]}
    results = await asyncio.gather(
        *[api.client.post(url, json=paid, headers=auth) for _ in range(4)]
    )
    assert [r.status for r in results] == [200] * 4
    split = await asyncio.gather(
        api.client.post(
            url, json={"lines": [{"line_id": second["id"], "status": "paid"}]}, headers=auth
        ),
        api.client.post(
            url, json={"lines": [{"line_id": second["id"], "status": "failed"}]}, headers=auth
        ),
    )
    assert sorted(r.status for r in split) == [200, 409]
    pool = pool_of(api)
    posted = await pool.fetch(
        """SELECT p.doctor_id, p.amount_minor FROM payouts p WHERE p.clinic_id = $1""",
        uuid.UUID(clinic.id),
    )
    won = next(r for r in split if r.status == 200)
    second_paid = (await won.json())["lines"][1]["status"] == "paid"
    assert sorted(r["amount_minor"] for r in posted) == sorted(
        [first["amount_minor"], *([second["amount_minor"]] if second_paid else [])]
    )
    assert await ledger_is_balanced(pool, uuid.UUID(clinic.id))


# --- bad input ------------------------------------------------------------------------


async def test_bad_bank_details_change_nothing(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    url = f"/api/v1/doctors/{doctor.id}/payout-account"
    await api.get(url, token=doctor.token, expect=404)
    before = await state_of(api, clinic)
    for body, code in [
        ({"iban": "PK36SCBL0000001123456703", "account_title": "Dr A"}, "invalid_iban"),
        ({"iban": "GB82WEST12345698765432", "account_title": "Dr A"}, "invalid_iban"),
        ({"iban": "PK36SCBL00000011234567", "account_title": "Dr A"}, "invalid_iban"),
        ({"iban": VALID[0], "account_title": "=cmd|' /C calc'!A0"}, "invalid_account_title"),
        ({"iban": VALID[0], "account_title": ""}, "invalid_account_title"),
    ]:
        problem = await api.put(url, body, token=doctor.token, expect=422)
        assert problem["code"] == code, problem
    for body in [
        {"iban": VALID[0]},
        {"iban": 5, "account_title": "x"},
        {**{"iban": VALID[0], "account_title": "x"}, "bank": "y"},
    ]:
        await api.put(url, body, token=doctor.token, expect=422)
    assert await state_of(api, clinic) == before

    other = await make_doctor(api, clinic)
    await api.put(url, {"iban": VALID[0], "account_title": "x"}, token=other.token, expect=404)
    stranger = await make_clinic(api, name="Elsewhere")
    await api.put(
        url, {"iban": VALID[0], "account_title": "x"}, token=stranger.staff_token, expect=404
    )
    saved = await api.put(
        url,
        {"iban": "pk36 scbl 0000 0011 2345 6702", "account_title": " Dr  A "},
        token=doctor.token,
    )
    assert (saved["iban"], saved["account_title"]) == (VALID[0], "Dr A")
    assert (await api.get(url, token=clinic.staff_token))["iban"] == VALID[0]
    assert await audit_count(api, "payout_account.update") == 1


async def test_bad_batch_requests_change_nothing(api: Api) -> None:
    clinic = await make_clinic(api)
    staff = clinic.staff_token
    await seed_doctors(api, clinic, [5_000])
    before = await state_of(api, clinic)
    for body in [
        {},
        {"threshold_minor": 0},
        {"threshold_minor": -5},
        {"threshold_minor": "9"},
        {"threshold_minor": 1.5},
        {"threshold_minor": 10**13},
        {"threshold_minor": 1, "extra": 1},
    ]:
        await api.post(batches_url(clinic), body, token=staff, expect=422)
    nobody = await api.post(
        batches_url(clinic), {"threshold_minor": 5_001}, token=staff, expect=409
    )
    assert nobody["code"] == "no_payable_doctors"
    doctor_token = await api.user(Role.DOCTOR, clinic_id=clinic.id)
    await api.post(batches_url(clinic), {"threshold_minor": 1}, token=doctor_token, expect=403)
    stranger = await make_clinic(api, name="Elsewhere")
    await api.post(
        batches_url(clinic), {"threshold_minor": 1}, token=stranger.staff_token, expect=404
    )
    assert await state_of(api, clinic) == before
    assert await api.get(batches_url(clinic), token=staff) == []


async def test_bad_marks_change_nothing(api: Api) -> None:
    clinic = await make_clinic(api)
    staff = clinic.staff_token
    await seed_doctors(api, clinic, [10_000, 20_000, 30_000])
    made = await api.post(batches_url(clinic), {"threshold_minor": 1}, token=staff, expect=201)
    a, b, c = made["lines"]
    url = f"/api/v1/payout-batches/{made['id']}/marks"
    await api.post(url, {"lines": [{"line_id": a["id"], "status": "paid"}]}, token=staff)
    before = await state_of(api, clinic)
    cases: list[tuple[dict[str, Any], int, str | None]] = [
        ({"lines": []}, 422, None),
        ({"lines": [{"status": "paid"}]}, 422, None),
        (
            {"lines": [{"line_id": b["id"], "reference": b["reference"], "status": "paid"}]},
            422,
            None,
        ),
        ({"lines": [{"line_id": b["id"], "status": "settled"}]}, 422, None),
        (
            {
                "lines": [
                    {"line_id": b["id"], "status": "paid"},
                    {"line_id": str(uuid.uuid4()), "status": "paid"},
                ]
            },
            422,
            "unknown_payout_line",
        ),
        (
            {
                "lines": [
                    {"line_id": b["id"], "status": "paid"},
                    {"reference": "PB-20260101-00000000-0001", "status": "failed"},
                ]
            },
            422,
            "unknown_payout_line",
        ),
        (
            {
                "lines": [
                    {"line_id": b["id"], "status": "paid"},
                    {"reference": b["reference"], "status": "paid"},
                ]
            },
            422,
            "duplicate_payout_line",
        ),
        # One good verdict and one that contradicts a paid line: neither applies.
        (
            {
                "lines": [
                    {"line_id": b["id"], "status": "paid"},
                    {"line_id": a["id"], "status": "failed"},
                ]
            },
            409,
            "payout_line_settled",
        ),
        ({"lines": [{"line_id": c["id"], "status": "failed", "reason": "x" * 501}]}, 422, None),
    ]
    for body, status, code in cases:
        problem = await api.post(url, body, token=staff, expect=status)
        if code is not None:
            assert problem["code"] == code, problem
    stranger = await make_clinic(api, name="Elsewhere")
    ok = {"lines": [{"line_id": b["id"], "status": "paid"}]}
    await api.post(url, ok, token=stranger.staff_token, expect=404)
    await api.get(f"/api/v1/payout-batches/{made['id']}", token=stranger.staff_token, expect=404)
    await api.get(
        f"/api/v1/payout-batches/{made['id']}/export.csv", token=stranger.staff_token, expect=404
    )
    await api.post(f"/api/v1/payout-batches/{uuid.uuid4()}/marks", ok, token=staff, expect=404)
    assert await state_of(api, clinic) == before
    # Repeating a verdict changes nothing either.
    again = await api.post(url, {"lines": [{"line_id": a["id"], "status": "paid"}]}, token=staff)
    assert again["paid_minor"] == a["amount_minor"]
    assert await state_of(api, clinic) == before


# --- earnings and the document --------------------------------------------------------


async def test_earnings_show_the_doctors_batches(api: Api) -> None:
    clinic, doctor = await owed_with_account(api, 1000)
    staff = clinic.staff_token
    made = await api.post(batches_url(clinic), {"threshold_minor": 1}, token=staff, expect=201)
    earnings = await api.get(f"/api/v1/doctors/{doctor.id}/earnings", token=doctor.token)
    (line,) = earnings["payout_batches"]
    assert (line["batch_id"], line["status"], line["amount_minor"]) == (
        made["id"],
        "pending",
        90_000,
    )
    assert earnings["currencies"][0]["payable_minor"] == 90_000
    await api.post(
        f"/api/v1/payout-batches/{made['id']}/marks",
        {"lines": [{"line_id": made["lines"][0]["id"], "status": "paid"}]},
        token=staff,
    )
    earnings = await api.get(f"/api/v1/doctors/{doctor.id}/earnings", token=doctor.token)
    (line,) = earnings["payout_batches"]
    assert (line["status"], line["batch_status"]) == ("paid", "closed")
    (pkr,) = earnings["currencies"]
    assert (pkr["paid_out_minor"], pkr["payable_minor"]) == (90_000, 0)


async def test_openapi_documents_the_payout_batch_endpoints(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    paths = doc["paths"]
    assert set(paths["/api/v1/doctors/{doctor_id}/payout-account"]) == {"get", "put"}
    assert set(paths["/api/v1/clinics/{clinic_id}/payout-batches"]) == {"get", "post"}
    assert "get" in paths["/api/v1/payout-batches/{batch_id}"]
    export = paths["/api/v1/payout-batches/{batch_id}/export.csv"]["get"]
    assert "text/csv" in export["responses"]["200"]["content"]
    marks = paths["/api/v1/payout-batches/{batch_id}/marks"]["post"]
    assert {"200", "404", "409", "422"} <= set(marks["responses"])
