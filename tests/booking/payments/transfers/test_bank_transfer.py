"""Bank transfer against a real PostgreSQL: the hold and its reference, the
proof, statement import and confirmation by hand, expiry and late money,
the audit trail, and bad input that changes nothing.

Held bookings are SQL rows (tests/booking/payments/checkout/test_payments_api.py's
helpers); the race after expiry goes through the bookings endpoint, as
patients do.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from booking.bookings import holds as bookings
from booking.payments.checkout import settle
from booking.payments.checkout.sweeper import sweep_once
from booking.payments.gateway import BANK_TRANSFER, PaymentStatus, Verdict
from booking.payments.intent import Currency, Money
from booking.payments.keys import GATEWAYS
from booking.payments.postings import ledger_is_balanced
from booking.payments.transfers import reconcile
from booking.payments.transfers.core import (
    MalformedStatement,
    _check_char,
    find_references,
    new_reference,
    normalise_reference,
    parse_amount,
    parse_statement,
)
from notify.plan import Context, InboxEvent, PlanSettings, plan_event
from notify.store import context_for
from tests.booking.bookings.test_bookings import anon, local
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.booking.payments.checkout.test_payments_api import (
    account_balances,
    anon_patient,
    booking_status,
    held_booking,
    pool_of,
    set_commission,
)
from tests.booking.payments.checkout.test_settle import _written
from tests.chromium import CHROMIUM, FLAGS
from tests.conftest import Api
from wadud.config import Settings
from wadud.state import keys

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
IBAN = "PK36SCBL0000001123456702"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(
        settings,
        payments_bank_transfer_bank_name="Standard Chartered",
        payments_bank_transfer_account_title="Wadud Health (Pvt) Ltd",
        payments_bank_transfer_account_number="01123456702",
        payments_bank_transfer_iban=IBAN,
        payments_bank_transfer_proof_max_bytes=4096,
        limits_anonymous_burst=0,
    )


async def start(api: Api, token: str, booking: str, expect: int = 201) -> dict[str, Any]:
    out: dict[str, Any] = await api.post(
        f"/api/v1/bookings/{booking}/bank-transfer", token=token, expect=expect
    )
    return out


async def statement(
    api: Api, clinic: Clinic, text: str, *, token: str | None = None, expect: int = 201
) -> dict[str, Any]:
    resp = await api.client.post(
        f"/api/v1/clinics/{clinic.id}/bank-statements",
        data=text.encode(),
        headers={
            "Authorization": f"Bearer {token or clinic.staff_token}",
            "Content-Type": "text/csv",
        },
    )
    body = await resp.json(content_type=None)
    assert resp.status == expect, body
    return dict(body)


async def upload(api: Api, token: str, booking: str, data: bytes, ctype: str) -> tuple[int, Any]:
    resp = await api.client.post(
        f"/api/v1/bookings/{booking}/bank-transfer/proofs",
        data=data,
        headers={"Authorization": f"Bearer {token}", "Content-Type": ctype},
    )
    return resp.status, await resp.json(content_type=None)


async def audit_actions(api: Api, obj: str) -> list[str]:
    rows = await pool_of(api).fetch(
        "SELECT action FROM audit_log WHERE object = $1 ORDER BY seq", obj
    )
    return [r["action"] for r in rows]


async def told(api: Api, topic: str) -> list[tuple[str, str]]:
    """What the notifier plans for the latest ``topic`` event in its inbox
    (where the outbox trigger copied it): (template, recipient) pairs, with
    the people looked up as the notifier does."""
    pool = pool_of(api)
    row = await pool.fetchrow(
        """SELECT event_id AS id, payload FROM notify_inbox WHERE topic = $1
           ORDER BY event_id DESC LIMIT 1""",
        topic,
    )
    assert row is not None, f"no {topic} event"
    data = row["payload"]
    data = json.loads(data) if isinstance(data, str) else data
    event = InboxEvent(row["id"], topic, data, dt.datetime.now(dt.UTC))
    async with pool.acquire() as conn:
        ctx = await context_for(conn, event)
    return [(j.template, str(j.recipient_id)) for j in plan_event(event, ctx, PlanSettings()).jobs]


async def setup(api: Api) -> tuple[Clinic, Doctor]:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, fee_minor=150_000)
    await set_commission(api, clinic, 1250, 1_000)
    return clinic, doctor


async def started(api: Api) -> tuple[Clinic, str, str, dict[str, Any]]:
    """A held booking of a new anonymous patient, paying by bank transfer:
    the clinic, the patient's token, the booking id and the transfer."""
    clinic, doctor = await setup(api)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    return clinic, token, booking, await start(api, token, booking)


async def confirm_in_full(api: Api, clinic: Clinic, transfer: dict[str, Any]) -> None:
    """The clinic's staff confirm by hand that the whole fee arrived."""
    await api.post(
        f"/api/v1/bank-transfers/{transfer['reference']}/confirm",
        {"amount_minor": 150_000, "note": "seen"},
        token=clinic.staff_token,
        expect=200,
    )


# --- the pure part ----------------------------------------------------------------


def test_references_survive_how_people_write_them() -> None:
    for _ in range(200):
        ref = new_reference()
        assert normalise_reference(ref) == ref
        spaced = f"{ref[:2]} {ref[2:6]}-{ref[6:]}".lower()
        assert normalise_reference(spaced) == ref
        assert find_references(f"IBFT FROM ALI KHAN REF {spaced} THANKS") == [ref]
        # Any one character mistyped is caught by the check character.
        body = ref[2:]
        i = len(body) // 2
        wrong = "0" if body[i] != "0" else "1"
        assert normalise_reference(ref[:2] + body[:i] + wrong + body[i + 1 :]) is None
    ref = "WD" + "0" * 7
    ref += next(c for c in "0123456789ABCDEFGHJKMNPQRSTVWXYZ" if normalise_reference(ref + c))
    assert normalise_reference(ref.replace("0", "O")) == ref  # O read as zero
    assert find_references("WDWDWD nothing here") == []


def test_the_words_after_a_reference_make_no_second_one() -> None:
    """A reference with ``WD`` in its body, then a word that completes a
    valid reference from that inner ``WD``: still the one reference."""
    body = "VEPPWD4"
    ref = "WD" + body + _check_char(body)
    # The inner WD's body: "4", the reference's check character, and five
    # letters of the next word, whose sixth is that body's check character.
    word = "THANK" + _check_char(ref[8:] + "THANK")
    assert normalise_reference(ref[6:] + word) is not None  # the trap is real
    spaced = f"{ref[:2]} {ref[2:6]}-{ref[6:]}".lower()
    for text in (
        f"IBFT REF {spaced} {word} JAZAKALLAH",
        f"IBFT REF {ref}{word}",  # run together: still one, leftmost first
        f"{ref} {word} {ref}",
    ):
        assert find_references(text) == [ref], text
    # A reference run into the words around it is still found when no other is.
    other = new_reference()
    assert find_references(f"IBFTREF{other}THANKS") == [other]
    assert find_references(f"REF {other} AND {ref}") == [other, ref]
    # A word with WD in it before the reference hides nothing.
    for _ in range(200):
        one = new_reference()
        assert find_references(f"SHOWDOWN {one} THANKS") == [one]


def test_amounts_and_statement_lines() -> None:
    assert parse_amount("2,500.00", Currency.PKR) == 250_000
    assert parse_amount("PKR 1500.5", Currency.PKR) == 150_050
    assert parse_amount("1500", Currency.PKR) == 150_000
    for bad in ("1.234", "-1500", "abc", "", "1500 DR"):
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies by case
            parse_amount(bad, Currency.PKR)
    text = (
        "Value Date,Description,Credit,Transaction ID\n"
        '24/11/2026,IBFT WD1234567,"1,500.00",T1\n'
        "\n"
        "not a date,x,10,T2\n"
        "2026-11-24,x,-10,T3\n"
        "2026-11-24,x,10\n"
        '2026-11-24,"unterminated,10,T5\n'
    )
    parsed = parse_statement(text.encode(), Currency.PKR)
    assert [line.line_no for line in parsed.lines] == [2]
    assert parsed.lines[0].amount.amount_minor == 150_000
    assert [r.line_no for r in parsed.rejected] == [4, 5, 6, 7]


# NUL makes a file no statement at all: refused whole, its own test below.
_CELL = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20,
)


@given(st.lists(st.lists(_CELL, min_size=1, max_size=5), max_size=8))
def test_a_statement_never_breaks_the_parser(rows: list[list[str]]) -> None:
    """Whatever the lines, each non-blank one after the header is a credit
    or a rejection with its number; only a file that is no statement at all
    is refused whole."""
    text = "date,description,amount\n" + "\n".join(",".join(r) for r in rows)
    parsed = parse_statement(text.encode(), Currency.PKR)
    numbers = [line.line_no for line in parsed.lines] + [r.line_no for r in parsed.rejected]
    physical = text.splitlines()
    expected = [i for i, line in enumerate(physical, start=1) if i > 1 and line.strip()]
    assert sorted(numbers) == expected


@given(st.binary(max_size=200))
def test_any_bytes_are_a_statement_or_a_typed_refusal(data: bytes) -> None:
    with contextlib.suppress(MalformedStatement):
        parse_statement(data, Currency.PKR)


@given(st.text(max_size=80))
def test_finding_references_in_any_text(text: str) -> None:
    for ref in find_references(text):
        assert normalise_reference(ref) == ref


# --- hold, proof, statement ----------------------------------------------------------


async def test_hold_proof_statement_confirms(api: Api) -> None:
    clinic, doctor = await setup(api)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    before = dt.datetime.now(dt.UTC)

    transfer = await start(api, token, booking)
    ref = transfer["reference"]
    assert normalise_reference(ref) == ref
    assert transfer["amount_minor"] == 150_000
    assert transfer["status"] == "requires_payment"
    assert transfer["bank"]["iban"] == IBAN
    expires = dt.datetime.fromisoformat(transfer["expires_at"])
    assert expires >= before + dt.timedelta(hours=23) or expires == await pool_of(api).fetchval(
        "SELECT starts_at FROM bookings WHERE id = $1", uuid.UUID(booking)
    )
    hold = await pool_of(api).fetchval(
        "SELECT hold_expires_at FROM bookings WHERE id = $1", uuid.UUID(booking)
    )
    assert hold == expires
    # Asked again (a reload): the same transfer.
    again = await start(api, token, booking, expect=200)
    assert again["reference"] == ref
    # The patient is told the account and the reference.
    requested = await pool_of(api).fetchrow(
        "SELECT payload FROM outbox WHERE topic = 'payment.bank_transfer.requested'"
    )
    payload = requested["payload"]
    payload = json.loads(payload) if isinstance(payload, str) else payload
    assert payload["reference"] == ref
    assert payload["bank"]["iban"] == IBAN
    assert await told(api, "payment.bank_transfer.requested") == [
        ("bank_transfer_instructions", patient)
    ]

    # The proof: stored sealed under the patient's key, readable by staff (audited).
    status, proof = await upload(api, token, booking, PNG, "image/png")
    assert status == 201, proof
    assert proof["content_type"] == "image/png"
    key = await pool_of(api).fetchval(
        "SELECT storage_key FROM bank_transfer_proofs WHERE id = $1", uuid.UUID(proof["id"])
    )
    root = api.app[keys.SETTINGS].data_dir / "uploads"
    sealed = (root / key[:2] / key[2:4] / key).read_bytes()
    assert PNG[:8] not in sealed
    resp = await api.client.get(
        f"/api/v1/bookings/{booking}/bank-transfer/proofs/{proof['id']}",
        headers={"Authorization": f"Bearer {clinic.staff_token}"},
    )
    assert resp.status == 200
    assert await resp.read() == PNG
    assert "payment.bank_transfer.proof_read" in await audit_actions(api, f"proof/{proof['id']}")
    assert key is not None

    # The statement: one line pays it, one is nobody's, two are malformed.
    spaced = f"{ref[:4]} {ref[4:]}".lower()
    csv_text = (
        "Date,Description,Amount,Transaction ID\n"
        f'{dt.date.today():%d/%m/%Y},IBFT FROM ALI KHAN {spaced},"1,500.00",TX-1\n'
        f"{dt.date.today():%d/%m/%Y},RAAST WD00000000 SOMEONE,900.00,TX-2\n"
        "31/02/2026,broken date,100.00,TX-3\n"
        f"{dt.date.today():%d/%m/%Y},bad amount,1.2.3,TX-4\n"
    )
    done = await statement(api, clinic, csv_text)
    assert [c["reference"] for c in done["matched"]] == [ref]
    assert [c["reason"] for c in done["unmatched"]] == ["unknown_reference"]
    assert [r["line"] for r in done["rejected"]] == [4, 5]
    assert done["duplicates"] == 0

    assert await booking_status(api, booking) == "requested"
    payment = await api.get(f"/api/v1/payments/{transfer['payment_id']}", token=token)
    assert payment["status"] == "succeeded"
    # Balanced ledger entries, split like any capture.
    assert await account_balances(api, clinic) == {
        "gateway_clearing:bank_transfer": 150_000,
        f"doctor_payable:{doctor.id}": -130_250,
        "platform_revenue": -19_750,
    }
    assert await ledger_is_balanced(pool_of(api))
    # In the audit trail: the confirmation and the import.
    assert "payment.bank_transfer.confirm" in await audit_actions(
        api, f"payment/{transfer['payment_id']}"
    )
    assert await audit_actions(api, f"bank_statement/{done['statement_id']}") == [
        "payment.bank_statement.import"
    ]

    # The unmatched line stays listed.
    listed = await api.get(
        f"/api/v1/clinics/{clinic.id}/bank-credits?status=unmatched",
        token=clinic.staff_token,
        expect=200,
    )
    assert [c["bank_txn_id"] for c in listed] == ["TX-2"]
    # The same statement again adds nothing.
    again_done = await statement(api, clinic, csv_text)
    assert again_done["duplicates"] == 2
    assert again_done["matched"] == again_done["unmatched"] == []
    assert await account_balances(api, clinic) == {
        "gateway_clearing:bank_transfer": 150_000,
        f"doctor_payable:{doctor.id}": -130_250,
        "platform_revenue": -19_750,
    }


async def test_a_statement_line_writes_what_the_general_path_writes(api: Api) -> None:
    """A credit for a held transfer settles in two statements
    (booking.payments.checkout.settle with a Credit); it writes exactly what the
    general path (lock, apply the verdict, announce) writes."""
    clinic, doctor = await setup(api)
    made = []
    for _ in range(2):
        token, patient = await anon_patient(api)
        booking = await held_booking(api, doctor, patient)
        made.append((booking, await start(api, token, booking)))
    (short, t1), (general, t2) = made
    source = "statement line 1"
    pool = pool_of(api)
    now = dt.datetime.now(dt.UTC)
    async with pool.acquire() as conn, conn.transaction():
        done = await settle.settle(
            conn,
            "bank_transfer",
            settle.Credit(
                uuid.UUID(clinic.id),
                reconcile.CONFIRMED,
                {"reference": t1["reference"], "source": source},
            ),
            Verdict(
                "bank_transfer",
                t1["reference"],
                PaymentStatus.SUCCEEDED,
                Money(150_000, Currency.PKR),
                source=source,
            ),
            default_bp=1500,
            now=now,
        )
        assert done == settle.Settled(False, uuid.UUID(t1["payment_id"]), "succeeded")
        target = await reconcile._lock_transfer(conn, t2["reference"], uuid.UUID(clinic.id))
        assert target is not None
        outcome = await reconcile._settle(conn, target, now, default_bp=1500, source=source)
        assert outcome[0] == "matched"
        one = await _written(conn, short, {"id": t1["payment_id"]})
        other = await _written(conn, general, {"id": t2["payment_id"]})
    # The two transfers differ by their references and their holds' ends.
    refs = {t1["reference"]: "ref", t2["reference"]: "ref"}
    a, b = _plain(one, refs), _plain(other, refs)
    # Before either settled: the transfer's instructions (their signed links differ).
    for w in (a, b):
        w["events"] = [e for e in w["events"] if e["topic"] != "payment.bank_transfer.requested"]
    assert a == b
    assert [e["topic"] for e in a["events"]] == [
        "payment.succeeded",
        "booking.requested",
        reconcile.CONFIRMED,
    ]
    assert one["booking"]["status"] == "requested"
    assert await ledger_is_balanced(pool)
    # A hold that lapsed is not the short path's: the general path says so.
    token, patient = await anon_patient(api)
    lapsed = await held_booking(api, doctor, patient)
    t3 = await start(api, token, lapsed)
    await pool.execute(
        "UPDATE bookings SET hold_expires_at = $2 WHERE id = $1",
        uuid.UUID(lapsed),
        now - dt.timedelta(seconds=1),
    )

    async def short(clinic_id: uuid.UUID, at: dt.datetime) -> settle.Settled | None:
        async with pool.acquire() as conn:
            return await settle.settle(
                conn,
                "bank_transfer",
                settle.Credit(clinic_id, reconcile.CONFIRMED, {}),
                Verdict(
                    "bank_transfer",
                    t3["reference"],
                    PaymentStatus.SUCCEEDED,
                    Money(150_000, Currency.PKR),
                ),
                default_bp=1500,
                now=at,
            )

    assert await short(uuid.UUID(clinic.id), now) is None
    # Nor is another clinic's transfer, even before the hold lapsed.
    assert await short(uuid.uuid4(), now - dt.timedelta(minutes=1)) is None
    assert await booking_status(api, lapsed) == "held"


_ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00")


def _plain(written: Any, refs: dict[str, str]) -> Any:
    text = _ISO.sub("time", json.dumps(written, default=str))
    for ref, name in refs.items():
        text = text.replace(ref, name)
    return json.loads(text)


# --- expiry ---------------------------------------------------------------------------


async def test_expired_hold_frees_the_slot_and_late_money_is_owed_back(api: Api) -> None:
    clinic, doctor = await setup(api)
    first = await anon(api)
    at = local(2, "10:00").isoformat()
    held = await api.post(
        "/api/v1/bookings",
        {"doctor_id": doctor.id, "type": "video", "starts_at": at},
        token=first,
        expect=201,
    )
    transfer = await start(api, first, held["id"])
    # A day passes with no money.
    pool = pool_of(api)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    await pool.execute(
        "UPDATE bookings SET hold_expires_at = $2 WHERE id = $1", uuid.UUID(held["id"]), past
    )
    await pool.execute(
        "UPDATE payment_intents SET expires_at = $2 WHERE id = $1",
        uuid.UUID(transfer["payment_id"]),
        past,
    )
    assert await bookings.sweep_holds(pool) == 1
    await sweep_once(pool, api.app[GATEWAYS], dt.datetime.now(dt.UTC), default_bp=1500)
    assert await booking_status(api, held["id"]) == "expired"
    got = await api.get(f"/api/v1/bookings/{held['id']}/bank-transfer", token=first)
    assert got["status"] == "cancelled"
    # The patient hears that the hold ended.
    patient_id = (await api.get("/api/v1/me", token=first))["id"]
    assert await told(api, "payment.expired") == [("bank_transfer_expired", patient_id)]

    # Two patients race for the freed slot: exactly one gets it.
    second, third = await anon(api), await anon(api)

    async def book(token: str) -> int:
        resp = await api.client.post(
            "/api/v1/bookings",
            json={"doctor_id": doctor.id, "type": "video", "starts_at": at},
            headers={"Authorization": f"Bearer {token}"},
        )
        return resp.status

    assert sorted(await asyncio.gather(book(second), book(third))) == [201, 409]

    # The first patient's money arrives late: owed back, never kept.
    line = f"{dt.date.today().isoformat()},TRANSFER {transfer['reference']},1500.00,LATE-1\n"
    done = await statement(api, clinic, "date,narration,amount,txn id\n" + line)
    assert done["matched"] == []
    assert [(c["status"], c["reason"]) for c in done["refund_due"]] == [
        ("refund_due", "arrived_after_cancelled")
    ]
    assert await booking_status(api, held["id"]) == "expired"
    assert await account_balances(api, clinic) == {
        "gateway_clearing:bank_transfer": 150_000,
        "patient_refunds_due": -150_000,
    }
    assert "payment.bank_transfer.refund_due" in await audit_actions(
        api, f"payment/{transfer['payment_id']}"
    )
    # The patient hears that it came too late and will be sent back...
    assert await told(api, "payment.bank_transfer.refund_due") == [
        ("payment_received_late", patient_id)
    ]
    credit = done["refund_due"][0]
    sent = await api.post(
        f"/api/v1/bank-credits/{credit['id']}/refunded",
        {"note": "sent back by IBFT"},
        token=clinic.staff_token,
        expect=200,
    )
    assert sent["status"] == "refunded"
    # ... and again when finance has sent it.
    assert await told(api, "payment.bank_transfer.refunded") == [("payment_refunded", patient_id)]
    assert set((await account_balances(api, clinic)).values()) == {0}
    assert await ledger_is_balanced(pool)


async def test_a_lapsed_hold_not_yet_swept_is_not_confirmed(api: Api) -> None:
    clinic, _, booking, transfer = await started(api)
    await pool_of(api).execute(
        "UPDATE bookings SET hold_expires_at = now() - interval '1 second' WHERE id = $1",
        uuid.UUID(booking),
    )
    done = await api.post(
        f"/api/v1/bank-transfers/{transfer['reference']}/confirm",
        {"amount_minor": 150_000, "note": "seen in the bank's app"},
        token=clinic.staff_token,
        expect=200,
    )
    assert done["credit"]["status"] == "refund_due"
    assert done["payment_status"] == "cancelled"
    assert done["booking_status"] == "expired"


# --- by hand, audit, bad input ------------------------------------------------------


async def test_manual_confirmation_and_bad_input_change_nothing(api: Api) -> None:
    clinic, doctor = await setup(api)
    other = await make_clinic(api, name="Other Clinic")
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    transfer = await start(api, token, booking)
    ref = transfer["reference"]
    pool = pool_of(api)

    async def unchanged() -> None:
        assert await booking_status(api, booking) == "held"
        assert (
            await pool.fetchval(
                "SELECT status FROM payment_intents WHERE id = $1",
                uuid.UUID(transfer["payment_id"]),
            )
            == "requires_payment"
        )
        assert await pool.fetchval("SELECT count(*) FROM bank_credits") == 0
        assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == 0

    confirm = f"/api/v1/bank-transfers/{ref}/confirm"
    staff = clinic.staff_token
    wrong = await api.post(confirm, {"amount_minor": 149_999, "note": "x"}, token=staff, expect=409)
    assert wrong["code"] == "amount_mismatch"
    unknown = "WD" + ("1" if ref[2] != "1" else "2") + ref[3:]
    missing = await api.post(
        f"/api/v1/bank-transfers/{unknown}/confirm",
        {"amount_minor": 150_000, "note": "x"},
        token=staff,
        expect=404,
    )
    assert missing["code"] == "unknown_reference"
    await api.post(
        "/api/v1/bank-transfers/WDNOTAREF/confirm",
        {"amount_minor": 150_000, "note": "x"},
        token=staff,
        expect=404,
    )
    # Another clinic's staff does not see it at all.
    await api.post(confirm, {"amount_minor": 150_000, "note": "x"}, token=other.staff_token,
                   expect=404)  # fmt: skip
    await api.post(confirm, {"amount_minor": 150_000, "note": ""}, token=staff, expect=422)
    await api.post(confirm, {"amount_minor": 150_000, "note": "x"}, token=token, expect=403)

    # Proofs: not an image or PDF, claimed as one, or too large.
    status, body = await upload(api, token, booking, b"MZ\x90\x00 an executable", "image/png")
    assert (status, body["code"]) == (415, "proof_not_image_or_pdf")
    status, body = await upload(api, token, booking, b"hello", "text/plain")
    assert (status, body["code"]) == (415, "proof_not_image_or_pdf")
    status, body = await upload(api, token, booking, PNG + b"\x00" * 5000, "image/png")
    assert (status, body["code"]) == (413, "proof_too_large")
    assert await pool.fetchval("SELECT count(*) FROM bank_transfer_proofs") == 0

    # Statements that are not statements: refused whole.
    for text in ("just some words\nmore words\n", "date,amount\n2026-01-01,10\n", ""):
        bad = await statement(api, clinic, text, expect=422)
        assert bad["code"] == "malformed_statement"
    resp = await api.client.post(
        f"/api/v1/clinics/{clinic.id}/bank-statements",
        data=b"date,description,amount\n\xff\xfe\n",
        headers={"Authorization": f"Bearer {staff}", "Content-Type": "text/csv"},
    )
    assert resp.status == 422
    await statement(api, clinic, "date,description,amount\n", token=other.staff_token, expect=404)
    assert await pool.fetchval("SELECT count(*) FROM bank_statements") == 0
    await unchanged()

    # By hand, with a note: confirmed, and in the audit trail.
    done = await api.post(
        confirm, {"amount_minor": 150_000, "note": "seen on the statement"}, token=staff
    )
    assert done["payment_status"] == "succeeded"
    assert done["booking_status"] == "requested"
    assert done["credit"]["source"] == "manual"
    assert done["credit"]["note"] == "seen on the statement"
    assert await audit_actions(api, f"payment/{transfer['payment_id']}") == [
        "payment.bank_transfer.manual_match"
    ]
    assert await ledger_is_balanced(pool)
    again = await api.post(confirm, {"amount_minor": 150_000, "note": "x"}, token=staff,
                           expect=409)  # fmt: skip
    assert again["code"] == "already_confirmed"
    status, body = await upload(api, token, booking, PNG, "image/png")
    assert status == 409, body


async def test_manual_match_of_a_mistyped_statement_line(api: Api) -> None:
    clinic, _, booking, transfer = await started(api)
    done = await statement(
        api, clinic, "date,description,amount\n2026-11-24,PAYMENT FOR DOCTOR,1500\n"
    )
    (line,) = done["unmatched"]
    confirm = f"/api/v1/bank-transfers/{transfer['reference']}/confirm"
    result = await api.post(
        confirm,
        {"amount_minor": 150_000, "note": "patient forgot the reference", "credit_id": line["id"]},
        token=clinic.staff_token,
        expect=200,
    )
    assert result["credit"]["id"] == line["id"]
    assert result["credit"]["status"] == "matched"
    assert await booking_status(api, booking) == "requested"
    assert "payment.bank_transfer.manual_match" in await audit_actions(
        api, f"payment/{transfer['payment_id']}"
    )
    # Used once: the same line cannot pay again.
    again = await api.post(
        confirm,
        {"amount_minor": 150_000, "note": "again", "credit_id": line["id"]},
        token=clinic.staff_token,
        expect=409,
    )
    assert again["code"] == "credit_not_open"


async def test_export_and_erasure_cover_proofs(api: Api) -> None:
    _, doctor = await setup(api)
    email = f"p-{uuid.uuid4().hex[:8]}@example.test"
    from wadud.web import accounts
    from wadud.web.api import Role

    await accounts.create_user(
        api.app[keys.DB], email=email, password="correct horse battery", role=Role.PATIENT
    )
    tokens = await api.post(
        "/api/v1/auth/login", {"email": email, "password": "correct horse battery"}
    )
    token = tokens["access_token"]
    patient = str(await pool_of(api).fetchval("SELECT id FROM users WHERE email = $1", email))
    booking = await held_booking(api, doctor, patient)
    await start(api, token, booking)
    status, _ = await upload(api, token, booking, PNG, "image/png")
    assert status == 201
    resp = await api.client.get("/api/v1/me/export", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 200, await resp.text()
    import io
    import zipfile

    archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    names = archive.namelist()
    assert any(n.startswith("bank_transfer/") for n in names), names
    (png,) = [n for n in names if n.startswith("files/bank_transfer/")]
    assert archive.read(png) == PNG
    manifest = json.loads(archive.read("manifest.json"))
    assert any(p["provider"] == "bank_transfer" for p in manifest["parts"])
    # Erasure: the proof's row and its stored file are gone.
    from privacy import rights
    from wadud.state.storage import storage_of

    key = await pool_of(api).fetchval("SELECT storage_key FROM bank_transfer_proofs")
    counts = await rights.erase(
        pool_of(api),
        rights.providers_of(api.app),
        uuid.UUID(patient),
        storage=storage_of(api.app),
    )
    assert counts["bank_transfer.proofs"] == 1
    assert await pool_of(api).fetchval("SELECT count(*) FROM bank_transfer_proofs") == 0
    root = api.app[keys.SETTINGS].data_dir / "uploads"
    assert not (root / key[:2] / key[2:4] / key).exists()


async def test_cancelling_a_confirmed_transfer_leaves_a_refund_owed_by_hand(api: Api) -> None:
    """No gateway sends bank-transfer money back: the cancellation goes
    through and the refund is kept ``refused_by_gateway`` for finance, with
    nothing posted until finance says it was sent; then the ledger reverses
    the capture exactly as a gateway refund would."""
    clinic, token, booking, transfer = await started(api)
    await confirm_in_full(api, clinic, transfer)
    pool = pool_of(api)
    postings = await pool.fetchval("SELECT count(*) FROM ledger_transactions")
    await api.post(
        f"/api/v1/bookings/{booking}/cancel", {"reason": "cannot come"}, token=token, expect=200
    )
    assert await booking_status(api, booking) == "cancelled"
    owed = await pool.fetchrow(
        "SELECT id, status, amount_minor FROM refunds WHERE payment_intent_id = $1",
        uuid.UUID(transfer["payment_id"]),
    )
    assert owed is not None and owed["status"] == "refused_by_gateway", owed
    assert await pool.fetchval("SELECT count(*) FROM ledger_transactions") == postings
    await api.post(
        f"/api/v1/refunds/{owed['id']}/refunded",
        {"note": "sent back by IBFT"},
        token=clinic.staff_token,
        expect=200,
    )
    kinds = await pool.fetch("SELECT kind FROM ledger_transactions ORDER BY kind")
    assert [r["kind"] for r in kinds].count("refund") == 1
    assert await ledger_is_balanced(pool)


async def test_the_patient_may_pay_another_way_after_all(api: Api) -> None:
    clinic, token, booking, transfer = await started(api)
    # While the transfer is live, asking for a payment without naming a
    # gateway hands the transfer out again (a reloaded page starts no second
    # payment); naming another gateway is refused: money may be on its way.
    pay = f"/api/v1/bookings/{booking}/payments"
    live = await api.post(pay, {}, token=token, expect=200)
    assert live["id"] == transfer["payment_id"] and live["gateway"] == BANK_TRANSFER
    refused = await api.post(pay, {"gateway": "sandbox"}, token=token, expect=409)
    assert refused["code"] == "live_payment_exists"
    cancelled = await api.post(
        f"/api/v1/bookings/{booking}/bank-transfer/cancel", token=token, expect=200
    )
    assert cancelled["status"] == "cancelled"
    hold = await pool_of(api).fetchval(
        "SELECT hold_expires_at FROM bookings WHERE id = $1", uuid.UUID(booking)
    )
    assert hold <= dt.datetime.now(dt.UTC) + dt.timedelta(minutes=11)
    # The card (sandbox) checkout is open to the patient again.
    payment = await api.post(f"/api/v1/bookings/{booking}/payments", {}, token=token, expect=201)
    assert payment["gateway"] == "sandbox"
    again = await api.post(
        f"/api/v1/bookings/{booking}/bank-transfer/cancel", token=token, expect=409
    )
    assert again["code"] == "booking_not_payable"
    # Money that still comes under the old reference is owed back.
    done = await statement(
        api, clinic, f"date,description,amount\n2026-11-24,{transfer['reference']},1500\n"
    )
    assert [c["reason"] for c in done["refund_due"]] == ["arrived_after_cancelled"]


async def test_the_receipt_names_the_transfer_reference(api: Api) -> None:
    clinic, doctor = await setup(api)
    token, patient = await anon_patient(api)
    booking = await held_booking(api, doctor, patient)
    transfer = await start(api, token, booking)
    await confirm_in_full(api, clinic, transfer)
    rows = await pool_of(api).fetch(
        "SELECT topic, payload FROM outbox WHERE topic LIKE 'payment.%' ORDER BY id"
    )
    jobs = []
    for r in rows:
        data = json.loads(r["payload"]) if isinstance(r["payload"], str) else r["payload"]
        plan = plan_event(
            InboxEvent(1, r["topic"], data, dt.datetime.now(dt.UTC)),
            Context(patient_id=uuid.UUID(patient)),
            PlanSettings(),
        )
        jobs += [(j.template, j.params.get("reference")) for j in plan.jobs]
    assert ("payment_receipt", transfer["reference"]) in jobs
    assert [t for t, _ in jobs].count("payment_receipt") == 1


async def test_the_patients_page_shows_the_account_and_the_reference(api: Api) -> None:
    clinic, _, _, transfer = await started(api)
    page = urlsplit(transfer["page_url"])
    path = f"{page.path}?{page.query}"
    text = await api.get(path, expect=200)
    assert transfer["reference"] in text
    assert IBAN in text
    assert 'data-i18n="bank.title"' in text
    # The link names one transfer: another token opens nothing.
    await api.get(page.path + "?t=" + "0" * 32, expect=404)
    await api.get(page.path, expect=404)
    # The instructions notification carries the same link.
    told = await pool_of(api).fetchval(
        "SELECT payload FROM outbox WHERE topic = 'payment.bank_transfer.requested'"
    )
    told = json.loads(told) if isinstance(told, str) else told
    assert told["link"] == transfer["page_url"]
    await confirm_in_full(api, clinic, transfer)
    text = await api.get(path, expect=200)
    assert 'data-i18n="bank.paid.title"' in text
    assert IBAN not in text


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Chromium")
async def test_the_page_reads_in_urdu_in_a_browser(api: Api) -> None:
    _, _, _, transfer = await started(api)
    page = urlsplit(transfer["page_url"])
    url = str(api.client.make_url(f"{page.path}?{page.query}&lang=ur"))

    def dump() -> str:
        done = subprocess.run(
            [CHROMIUM, *FLAGS[:3], "--virtual-time-budget=5000", "--dump-dom", url],
            check=True,
            capture_output=True,
            timeout=60,
            text=True,
        )
        return done.stdout

    dom = await asyncio.get_running_loop().run_in_executor(None, dump)
    assert "بینک ٹرانسفر سے ادائیگی" in dom
    assert transfer["reference"] in dom
    assert 'data-ready="1"' in dom
