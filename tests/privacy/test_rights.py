"""A patient's export and erasure, end to end over HTTP with real PostgreSQL.

Two patients book the same doctor, pay (the sandbox gateway posts to the
ledger) and chat with that doctor; clinic staff read both. Patient A's export
holds A's data and nothing of B's; after A's erasure no plaintext of A's
name, email, phone or chat text is left in a dump of the database or in the
file store, the ledger balances, the audit chain verifies, A's tokens and
password stop working, and B's data is untouched.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import os
import subprocess
import sys
import time
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pgserver
from yarl import URL

from privacy import audit as privacy_audit
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor, video_slots
from tests.conftest import Api
from wadud.config import Settings
from wadud.state import audit, keys

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + b"attachment-of-patient " * 20
PASSWORD = "patient password 1"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Patient:
    name: str
    email: str
    phone: str
    token: str
    id: str
    booking_id: str = ""
    payment_id: str = ""
    conversation_id: str = ""
    texts: tuple[str, ...] = ()


async def _patient(api: Api, tag: str, name: str, phone: str) -> Patient:
    email = f"{tag}.{uuid.uuid4().hex[:6]}@patients.example"
    tokens = await api.post(
        "/api/v1/auth/register",
        {"email": email, "password": PASSWORD, "display_name": name},
        expect=201,
    )
    pool = api.app[keys.DB]
    await pool.execute(
        "UPDATE users SET phone = $2 WHERE id = $1", uuid.UUID(tokens["user_id"]), phone
    )
    return Patient(name, email, phone, tokens["access_token"], tokens["user_id"])


async def _book_and_pay(api: Api, doctor: Doctor, p: Patient, nth: int) -> None:
    now = dt.datetime.now(dt.UTC)
    slots = await video_slots(
        api, doctor.id, now + dt.timedelta(days=2), now + dt.timedelta(days=4)
    )
    booking = await api.post(
        "/api/v1/bookings",
        {"doctor_id": doctor.id, "type": "video", "starts_at": slots[nth]["start"]},
        token=p.token,
        expect=201,
    )
    p.booking_id = booking["id"]
    payment = await api.post(
        f"/api/v1/bookings/{p.booking_id}/payments", {}, token=p.token, expect=201
    )
    p.payment_id = payment["id"]
    checkout = URL(payment["checkout"]["url"]).path
    paid = await api.client.post(checkout, data={"action": "pay"}, allow_redirects=False)
    assert paid.status == 303
    got = await api.get(f"/api/v1/payments/{p.payment_id}", token=p.token, expect=200)
    assert got["status"] == "succeeded"


async def _chat(api: Api, doctor: Doctor, p: Patient, *, attach: bool) -> None:
    conv = await api.post(
        "/api/v1/chat/conversations", {"booking_id": p.booking_id}, token=p.token, expect=201
    )
    p.conversation_id = conv["id"]
    base = f"/api/v1/chat/conversations/{p.conversation_id}"
    mine = f"I am {p.name}, the cough is worse at night; call me on {p.phone}"
    reply = f"Thank you {p.name}, take the syrup twice a day ({uuid.uuid4().hex[:6]})"
    await api.post(f"{base}/messages", {"client_id": "1", "body": mine}, token=p.token, expect=201)
    await api.post(
        f"{base}/messages", {"client_id": "2", "body": reply}, token=doctor.token, expect=201
    )
    p.texts = (mine, reply)
    if attach:
        headers = {"Content-Type": "image/png"}
        att = await api.post(
            f"{base}/attachments", data=PNG, headers=headers, token=p.token, expect=201
        )
        await api.post(
            f"{base}/messages",
            {"client_id": "3", "body": "the rash", "attachment_id": att["id"]},
            token=p.token,
            expect=201,
        )


@dataclass
class World:
    clinic: Clinic
    doctor: Doctor
    a: Patient
    b: Patient


async def _world(api: Api) -> World:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, display_name="Dr. Samina Yousaf")
    a = await _patient(api, "zarmeen", "Zarmeen Qureshi", "+923001112233")
    b = await _patient(api, "haroon", "Haroon Baig", "+923004445566")
    await _book_and_pay(api, doctor, a, 0)
    await _book_and_pay(api, doctor, b, 1)
    await _chat(api, doctor, a, attach=True)
    await _chat(api, doctor, b, attach=True)
    pool = api.app[keys.DB]
    # A consent each, and staff reading each one's booking.
    text_id = await pool.fetchval(
        """INSERT INTO consent_texts (region, purpose, language, version, title, body)
           VALUES ('PK', 'data_processing', 'en', 1, 'Data processing', 'We process...')
           RETURNING id"""
    )
    for p in (a, b):
        await pool.execute(
            """INSERT INTO consent_events (user_id, region, purpose, action, text_id, version)
               VALUES ($1, 'PK', 'data_processing', 'accept', $2, 1)""",
            uuid.UUID(p.id),
            text_id,
        )
        await api.get(f"/api/v1/bookings/{p.booking_id}", token=clinic.staff_token, expect=200)
        # What the notifier keeps: the doctor's reminder naming the patient,
        # with its delivery and a failed attempt that quotes the address; the
        # patient's phone as a push device.
        key = f"reminder:{p.booking_id}:15:{p.id}"
        await pool.execute(
            """INSERT INTO notify_jobs (key, event_id, recipient_id, template, params,
                   booking_id, due_at)
               VALUES ($1, $2, $3, 'reminder', $4, $5, now())""",
            key,
            f"reminder:{p.booking_id}",
            uuid.UUID(doctor.user_id),
            {"other": p.name, "booking_id": p.booking_id},
            uuid.UUID(p.booking_id),
        )
        delivery = await pool.fetchval(
            """INSERT INTO notify_deliveries (event_id, channel, recipient_id, job_key)
               VALUES ($1, 'email', $2, $3) RETURNING id""",
            f"reminder:{p.booking_id}",
            uuid.UUID(p.id),
            key,
        )
        await pool.execute(
            """INSERT INTO notify_attempts (delivery_id, attempt, ok, detail)
               VALUES ($1, 1, false, $2)""",
            delivery,
            f"550 mailbox {p.email} unavailable",
        )
        await pool.execute(
            "INSERT INTO notify_devices (user_id, kind, token) VALUES ($1, 'fcm', $2)",
            uuid.UUID(p.id),
            f"fcm-token-{p.phone}",
        )
        await audit.record(
            pool,
            actor=uuid.UUID(doctor.user_id),
            role="doctor",
            action="chat.read",
            subject=uuid.UUID(p.id),
            clinic=uuid.UUID(clinic.id),
            object=f"conversation/{p.conversation_id}",
        )
    return World(clinic, doctor, a, b)


def _archive(data: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    zf = zipfile.ZipFile(io.BytesIO(data))
    files = {n: zf.read(n) for n in zf.namelist()}
    return json.loads(files["manifest.json"]), files


async def _export(api: Api, p: Patient) -> bytes:
    resp = await api.client.get("/api/v1/me/export", headers={"Authorization": f"Bearer {p.token}"})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/zip"
    return await resp.read()


def _part(files: dict[str, bytes], name: str) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads(files[name])
    return records


def _traces(p: Patient) -> list[bytes]:
    return [s.encode() for s in (p.name, p.email, p.phone, p.phone.lstrip("+"), *p.texts)]


async def test_export_holds_the_patient_s_data_and_no_one_else_s(api: Api) -> None:
    w = await _world(api)
    a, b = w.a, w.b
    # The phone bridge called an interpreter's line for A's visit.
    await api.app[keys.DB].execute(
        "INSERT INTO phone_calls (booking_id, number, state) VALUES ($1, '+971500000009', 'ended')",
        uuid.UUID(a.booking_id),
    )
    t0 = time.perf_counter()
    data = await _export(api, a)
    print(f"export: {len(data)} bytes in {time.perf_counter() - t0:.3f} s")
    manifest, files = _archive(data)

    assert manifest["format"] == "wadud-export" and manifest["subject"] == a.id
    for entry in manifest["parts"]:
        assert hashlib.sha256(files[entry["file"]]).hexdigest() == entry["sha256"]
        assert len(json.loads(files[entry["file"]])) == entry["records"]
    (profile,) = _part(files, "account/profile.json")
    assert (profile["email"], profile["display_name"], profile["phone"]) == (
        a.email,
        a.name,
        a.phone,
    )
    assert "password_hash" not in profile
    assert [r["id"] for r in _part(files, "booking/bookings.json")] == [a.booking_id]
    assert _part(files, "booking/bookings.json")[0]["doctor_name"] == "Dr. Samina Yousaf"
    assert [r["id"] for r in _part(files, "booking/payments.json")] == [a.payment_id]
    assert [r["purpose"] for r in _part(files, "account/consents.json")] == ["data_processing"]
    assert [r["kind"] for r in _part(files, "notify/devices.json")] == ["fcm"]
    (call,) = _part(files, "booking/phone_calls.json")
    assert (call["booking_id"], call["to"], call["number"]) == (a.booking_id, "other", "••09")
    # The chat, decrypted: the patient's words and the doctor's.
    bodies = [m["body"] for m in _part(files, "chat/messages.json")]
    assert bodies == [*a.texts, "the rash"]
    (att,) = _part(files, "chat/attachments.json")
    assert files[att["file"]] == PNG
    # Who accessed A's data: the staff read of the booking, the doctor's read
    # of the chat; none of B's.
    accesses = _part(files, "account/audit.json")
    objects = {r["object"] for r in accesses}
    assert f"conversation/{a.conversation_id}" in objects
    assert not any(b.booking_id in o or b.conversation_id in o for o in objects)

    # Nothing of B anywhere in the archive, in any file.
    blob = b"".join(files.values())
    for trace in [*_traces(b), b.id.encode(), b.booking_id.encode(), b.conversation_id.encode()]:
        assert trace not in blob, trace
    # ... and B's own export is B's.
    _, files_b = _archive(await _export(api, b))
    assert [r["id"] for r in _part(files_b, "booking/bookings.json")] == [b.booking_id]
    assert a.name.encode() not in b"".join(files_b.values())
    # Patients (and doctors) export themselves, staff do not; the export is audited.
    await api.get("/api/v1/me/export", token=w.clinic.staff_token, expect=403)
    pool = api.app[keys.DB]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'privacy.export' AND subject_id = $1",
            uuid.UUID(a.id),
        )
        == 1
    )


def _dump(settings: Settings) -> bytes:
    """Every row of every table, as pg_dump (from the pgserver install) writes it."""
    pg_dump = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    url = URL(settings.database_url)
    done = subprocess.run(
        [
            str(pg_dump),
            "--data-only",
            "--no-owner",
            "-h",
            url.query.get("host") or "",
            "-U",
            url.user or "postgres",
            url.path.lstrip("/"),
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return done.stdout


def _audit_verify(database_url: str) -> subprocess.CompletedProcess[str]:
    """``wadud audit verify``, the command an operator runs."""
    return subprocess.run(
        [sys.executable, "-m", "bin.main", "audit", "verify"],
        cwd=ROOT,
        env={**os.environ, "WADUD_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _stored(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def _ledger_unbalanced(pool: asyncpg.Pool) -> int:
    n: int = await pool.fetchval(
        """SELECT count(*) FROM (SELECT transaction_id, currency FROM ledger_entries
           GROUP BY transaction_id, currency HAVING sum(amount_minor) <> 0) x"""
    )
    return n


async def test_erasure_leaves_no_plaintext_and_keeps_ledger_and_audit(
    api: Api, settings: Settings
) -> None:
    w = await _world(api)
    a, b = w.a, w.b
    pool = api.app[keys.DB]
    uploads = settings.data_dir / "uploads"
    before_dump = _dump(settings)
    # The chat is encrypted at rest already, the rest is plain until erased.
    assert all(t.encode() in before_dump for t in (a.email, a.name, a.phone))
    assert not any(t.encode() in before_dump for t in a.texts)
    ledger_rows = await pool.fetchval("SELECT count(*) FROM ledger_entries")
    assert ledger_rows > 0
    files_before = _stored(uploads)
    assert len(files_before) == 2

    # Step 1 asks; a wrong phrase, a wrong password or a forged token is a 422.
    ask = await api.post("/api/v1/me/erasure", {}, token=a.token, expect=202)
    assert ask["phrase"] == "erase my data" and ask["password_required"] is True
    token = ask["confirmation_token"]
    for body in (
        {"confirmation_token": token, "phrase": "delete", "password": PASSWORD},
        {"confirmation_token": token, "phrase": "erase my data", "password": "wrong password"},
        {
            "confirmation_token": "1." + token.split(".")[1],
            "phrase": "erase my data",
            "password": PASSWORD,
        },
        {"confirmation_token": token, "phrase": "erase my data", "password": None},
    ):
        problem = await api.post("/api/v1/me/erasure", body, token=a.token, expect=422)
        assert problem["code"] == "erasure_not_confirmed"
    # B cannot use A's token.
    await api.post(
        "/api/v1/me/erasure",
        {"confirmation_token": token, "phrase": "erase my data", "password": PASSWORD},
        token=b.token,
        expect=422,
    )
    await api.post("/api/v1/me/erasure", {}, token=w.clinic.staff_token, expect=403)

    t0 = time.perf_counter()
    done = await api.post(
        "/api/v1/me/erasure",
        {"confirmation_token": token, "phrase": "Erase my data", "password": PASSWORD},
        token=a.token,
        expect=200,
    )
    assert done["status"] == "erased"
    print(f"erasure: {time.perf_counter() - t0:.3f} s, {sum(done['counts'].values())} rows")
    counts = done["counts"]
    assert counts["chat.conversations"] == 1 and counts["chat.attachments"] == 1
    assert counts["privacy.subject_keys"] == 1 and counts["files.deleted"] == 1
    assert counts["notify.jobs"] == 1 and counts["notify.devices"] == 1

    # No plaintext of A in any table or stored file.
    dump = _dump(settings)
    stored = _stored(uploads)
    for trace in _traces(a):
        assert trace not in dump, trace
        for path, data in stored.items():
            assert trace not in data, (trace, path)
    # A's attachment file is gone; B's stays and still opens.
    assert len(stored) == 1
    # B is untouched: still in the dump, B's chat still decrypts.
    assert b.email.encode() in dump
    events = await api.get(
        f"/api/v1/chat/conversations/{b.conversation_id}/events?after=0", token=b.token
    )
    assert [e["body"] for e in events][:2] == list(b.texts)
    _, files_b = _archive(await _export(api, b))
    assert any(n.startswith("files/chat/") for n in files_b)

    # The ledger balances, with every row it had; A's booking and payment
    # stay (amounts, states) without anything personal.
    assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == ledger_rows
    assert await _ledger_unbalanced(pool) == 0
    row = await pool.fetchrow(
        "SELECT status, price_minor FROM bookings WHERE id = $1", uuid.UUID(a.booking_id)
    )
    assert row is not None and row["price_minor"] > 0
    # The audit chain verifies; A's rows no longer name A; the erasure is audited.
    async with pool.acquire() as conn:
        verdict = await privacy_audit.verify(conn)
    assert verdict.ok, verdict.problem
    assert verdict.count >= 5  # sign-ins, reads, the export, the erasure
    cli = _audit_verify(settings.database_url)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert (
        await pool.fetchval("SELECT count(*) FROM audit_log WHERE subject_id = $1", uuid.UUID(a.id))
        == 0
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'privacy.erasure' AND object = $1",
            f"user/{a.id}",
        )
        == 1
    )
    # The account is disabled: its tokens and its password stop working.
    await api.get("/api/v1/me", token=a.token, expect=401)
    await api.post("/api/v1/auth/login", {"email": a.email, "password": PASSWORD}, expect=401)
    # The sessions' revocation went to the outbox for live sockets.
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE topic = 'auth.revoked' AND payload->>'user_id' = $1",
            a.id,
        )
        >= 1
    )
    # A doctor cannot reopen the erased patient's chat.
    await api.post(
        "/api/v1/chat/conversations",
        {"booking_id": a.booking_id},
        token=w.doctor.token,
        expect=404,
    )
