"""The outbox-driven notifications, from the real features' own writes: a
booking made, paid, accepted, moved, chatted about, waited in and cancelled
through the HTTP API and the call WebSocket. Each party hears of each event
once, in their language, and reading the events again sends nothing new."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid

import asyncpg

from notify import channels as ch
from notify.service import Notifier
from tests.booking.bookings.test_bookings import confirm, hold, local, shift
from tests.booking.factories import Doctor, make_clinic, make_doctor
from tests.conftest import Api
from tests.notify.conftest import Inbox
from tests.signalling.service.test_ws import joined
from wadud.config import Settings
from wadud.state import keys
from wadud.web.api import Role


def _to(inbox: Inbox, template: str, address: str) -> list[str]:
    """Plain-text bodies of ``template`` emails to ``address``."""
    return [
        m.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        for m in inbox.of(template)
        if address in m["To"]
    ]


async def _doctor_email(api: Api, doctor: Doctor) -> str:
    pool: asyncpg.Pool = api.app[keys.DB]
    found = await pool.fetchval("SELECT email FROM users WHERE id = $1", uuid.UUID(doctor.user_id))
    return str(found)


async def test_a_booking_s_life_tells_each_party_once_in_their_language(
    api: Api, smtp: Inbox, notifier: Notifier
) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, display_name="Dr. Ayesha Khan")
    doctor_email = await _doctor_email(api, doctor)
    patient_email = f"mariam-{uuid.uuid4().hex[:6]}@example.test"
    patient = await api.user(Role.PATIENT, email=patient_email)
    prefs = await api.put(
        "/api/v1/me/notifications",
        {"locale": "ar", "time_zone": "Asia/Dubai", "channels": ["email"]},
        token=patient,
        expect=200,
    )
    assert (prefs["locale"], prefs["time_zone"]) == ("ar", "Asia/Dubai")

    # Held and paid: the patient hears it is received (with the manage link),
    # the doctor that they have a new booking.
    starts = local(3, "10:00")
    booking = await hold(api, patient, doctor, starts)
    bid = booking["id"]
    await confirm(api, bid)
    await notifier.run_until_idle()
    (received,) = _to(smtp, "booking_received", patient_email)
    assert "https://wadud.test/api/v1/manage/" in received
    assert "Dr. Ayesha Khan" in received
    gst = starts.astimezone(dt.timezone(dt.timedelta(hours=4)))
    assert f"{gst:%H:%M} (+04)" in received  # 10:00 in Karachi is 09:00 in Dubai
    assert len(_to(smtp, "doctor_new_booking", doctor_email)) == 1

    # Accepted: the patient hears it is confirmed, in Arabic, right to left.
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    await notifier.run_until_idle()
    (confirmed,) = [m for m in smtp.of("booking_confirmed") if patient_email in m["To"]]
    assert confirmed["Content-Language"] == "ar"
    assert 'dir="rtl"' in confirmed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "تم تأكيد" in confirmed["Subject"]

    # Moved by the patient: the doctor hears of it, the patient (who did it) does not.
    later = local(3, "11:00")
    await api.post(
        f"/api/v1/bookings/{bid}/reschedule",
        {"starts_at": later.isoformat()},
        token=patient,
        expect=200,
    )
    await notifier.run_until_idle()
    (moved,) = _to(smtp, "booking_rescheduled", doctor_email)
    assert "10:00" in moved and "11:00" in moved  # the doctor's zone is Karachi
    assert _to(smtp, "booking_rescheduled", patient_email) == []
    reminders = await api.app[keys.DB].fetch(
        "SELECT template, state, params->>'starts_at' AS at FROM notify_jobs"
        " WHERE template LIKE 'reminder%' ORDER BY 1, 2"
    )
    live = {(r["template"], r["at"]) for r in reminders if r["state"] == "scheduled"}
    assert live == {
        ("reminder_24h", later.isoformat()),
        ("reminder_15m", later.isoformat()),
    }

    # Chat: the doctor writes; the patient has not read it when the delay is
    # over, so they are told (without the text). The patient answers and the
    # doctor reads it at once: the doctor is told nothing.
    conv = await api.post("/api/v1/chat/conversations", {"booking_id": bid}, token=patient,
                          expect=201)  # fmt: skip
    path = f"/api/v1/chat/conversations/{conv['id']}"
    await api.post(f"{path}/messages", {"client_id": "d1", "body": "Please bring your reports"},
                   token=doctor.token, expect=201)  # fmt: skip
    ack = await api.post(f"{path}/messages", {"client_id": "p1", "body": "شكرا"}, token=patient,
                         expect=201)  # fmt: skip
    await api.post(f"{path}/read", {"seq": ack["seq"]}, token=doctor.token, expect=200)
    await asyncio.sleep(0.6)
    await notifier.run_until_idle()
    # Not before the delay, by the product's own times: each chat job falls
    # due notify_chat_delay (0.5 s here) after its message and is done no
    # sooner. An empty inbox before the sleep held the test's own pace to
    # the delay instead (ci170: a starved run got there after it, and the
    # mail had rightly gone).
    jobs = await api.app[keys.DB].fetch(
        """SELECT j.state, j.due_at, j.done_at, e.created_at AS written
             FROM notify_jobs j JOIN chat_events e
               ON e.conversation_id = (j.params->>'conversation_id')::uuid
              AND e.seq = (j.params->>'seq')::bigint
            WHERE j.template = 'chat_message'"""
    )
    assert "done" in {j["state"] for j in jobs}, jobs
    for job in jobs:
        assert job["due_at"] - job["written"] >= dt.timedelta(seconds=0.5), job
        assert job["done_at"] is None or job["done_at"] >= job["due_at"], job
    (chat,) = _to(smtp, "chat_message", patient_email)
    assert "Dr. Ayesha Khan" in chat and "reports" not in chat
    assert _to(smtp, "chat_message", doctor_email) == []

    # The patient opens the call before the doctor: the doctor is told they wait.
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    link = await api.get(f"/api/v1/bookings/{bid}/video-link", token=patient, expect=200)
    async with joined(api, link["token"]) as (_ws, answer):
        assert answer["type"] == "waiting"
    await notifier.run_until_idle()
    assert len(_to(smtp, "call_waiting", doctor_email)) == 1

    # Cancelled by the doctor: the patient is told; reminders are dropped.
    await api.post(f"/api/v1/bookings/{bid}/cancel", {"reason": "unwell"}, token=doctor.token,
                   expect=200)  # fmt: skip
    await notifier.run_until_idle()
    assert len(_to(smtp, "booking_cancelled", patient_email)) == 1
    assert _to(smtp, "booking_cancelled", doctor_email) == []
    pool: asyncpg.Pool = api.app[keys.DB]
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM notify_jobs WHERE template LIKE 'reminder%'"
            " AND state = 'scheduled'"
        )
        == 0
    )

    # At least once in, exactly once out: every event read again sends nothing.
    count = len(smtp.messages)
    await pool.execute(
        """INSERT INTO notify_inbox (event_id, topic, payload, at)
           SELECT id, topic, payload, created_at FROM outbox
           WHERE topic IN ('booking.requested', 'booking.accepted', 'booking.cancelled',
                           'chat.message.sent', 'call.waiting')"""
    )
    assert await pool.fetchval("SELECT count(*) FROM notify_inbox") >= 6
    await asyncio.sleep(0.6)
    assert await notifier.run_until_idle() == 0
    assert len(smtp.messages) == count
    ids = [m["Message-ID"] for m in smtp.messages]
    assert len(ids) == len(set(ids))


async def test_notification_preferences_refuse_bad_input_with_a_typed_problem(api: Api) -> None:
    patient = await api.user(Role.PATIENT)
    bad = [
        {"time_zone": "Mars/Olympus"},
        {"locale": "fr"},
        {"phone": "0300-1234567"},
        {"channels": ["pigeon"]},
        {"quiet_start": "22:00"},
        {"quiet_start": "25:00", "quiet_end": "07:00"},
    ]
    for body in bad:
        problem = await api.put("/api/v1/me/notifications", body, token=patient)
        assert problem["status"] in (400, 422), (body, problem)
        assert problem["type"] and problem["title"]
    ok = await api.put(
        "/api/v1/me/notifications",
        {"locale": "ur", "time_zone": "Asia/Karachi", "phone": "+923001234567",
         "channels": ["email", "sms"], "muted": ["chat"], "quiet_start": "22:00",
         "quiet_end": "07:30"},
        token=patient,
        expect=200,
    )  # fmt: skip
    assert (ok["quiet_start"], ok["quiet_end"], ok["muted"]) == ("22:00", "07:30", ["chat"])
    again = await api.get("/api/v1/me/notifications", token=patient, expect=200)
    assert again == ok
    device = await api.post(
        "/api/v1/me/devices", {"kind": "fcm", "token": "t-1"}, token=patient, expect=201
    )
    for endpoint in (
        "http://push.example.com/x",
        "https://10.0.0.1/x",
        "https://[::1]/x",
        "https://localhost:8080/x",
        "https://metadata/x",
    ):
        problem = await api.post(
            "/api/v1/me/devices",
            {"kind": "webpush", "token": endpoint, "keys": {"p256dh": "k", "auth": "a"}},
            token=patient,
        )
        assert problem["status"] == 400, endpoint
    await api.post(
        "/api/v1/me/devices",
        {"kind": "webpush", "token": "https://fcm.googleapis.com/fcm/send/abc",
         "keys": {"p256dh": "k", "auth": "a"}},
        token=patient,
        expect=201,
    )  # fmt: skip
    other = await api.user(Role.PATIENT)
    await api.delete(f"/api/v1/me/devices/{device['id']}", token=other, expect=404)
    await api.delete(f"/api/v1/me/devices/{device['id']}", token=patient, expect=204)
    assert [d["kind"] for d in await api.get("/api/v1/me/devices", token=patient, expect=200)] == [
        "webpush"
    ]


async def test_quiet_hours_hold_push_but_not_email_and_muted_categories_send_nothing(
    api: Api, smtp: Inbox, notify_settings: Settings, peer: object, tls: object
) -> None:
    """Quiet hours over the whole day (local 00:00 to 23:59) hold an SMS until
    they end; the email goes at once. A muted category sends on no channel."""
    from tests.notify.conftest import Peer, Tls

    assert isinstance(peer, Peer) and isinstance(tls, Tls)
    settings = dataclasses.replace(
        notify_settings,
        notify_sms_url=f"{peer.url}/sms",
        notify_webhook_secret="s",
        notify_ca_file=str(tls.ca_file),
    )
    opened = await ch.open_channels(settings)
    pool: asyncpg.Pool = api.app[keys.DB]
    notifier = Notifier(pool, settings, opened.senders)
    try:
        quiet = await api.user(Role.PATIENT)
        muted = await api.user(Role.PATIENT)
        await api.put(
            "/api/v1/me/notifications",
            {"time_zone": "Asia/Karachi", "phone": "+923001112223", "channels": ["email", "sms"],
             "quiet_start": "00:00", "quiet_end": "23:59"},
            token=quiet,
            expect=200,
        )  # fmt: skip
        await api.put(
            "/api/v1/me/notifications",
            {"channels": ["email", "sms"], "phone": "+923001112224", "muted": ["payment"]},
            token=muted,
            expect=200,
        )  # fmt: skip
        from wadud.messaging import outbox

        ids = {}
        for tok in (quiet, muted):
            me = await api.get("/api/v1/me", token=tok)
            ids[tok] = me["id"]
            async with pool.acquire() as conn, conn.transaction():
                await outbox.emit(
                    conn,
                    "payment.succeeded",
                    {"payment_id": str(uuid.uuid4()), "patient_id": me["id"],
                     "amount_minor": 5000, "currency": "PKR"},
                )  # fmt: skip
        assert await notifier.run_until_idle() == 1  # the quiet one's email only
        assert peer.to("/sms") == []
        held = await pool.fetchrow(
            "SELECT status, next_attempt_at FROM notify_deliveries WHERE channel = 'sms'"
        )
        assert held is not None and held["status"] == "pending"
        end = held["next_attempt_at"].astimezone(dt.timezone(dt.timedelta(hours=5)))
        assert (end.hour, end.minute) == (23, 59)
        count = await pool.fetchval(
            "SELECT count(*) FROM notify_deliveries WHERE recipient_id = $1",
            uuid.UUID(ids[muted]),
        )
        assert count == 0
        log = await api.get("/api/v1/me/notifications/log", token=quiet, expect=200)
        assert sorted((e["channel"], e["status"]) for e in log) == [
            ("email", "sent"),
            ("sms", "pending"),
        ]
    finally:
        await opened.close()


async def test_a_batch_finds_the_same_people_as_one_event_at_a_time(api: Api) -> None:
    """The planner reads the people of a batch's booking events in one round
    trip (store.contexts_for); that gives what one event at a time gives, in
    the batch's order, for every way an event names them."""
    from notify import store
    from notify.plan import InboxEvent as Ev

    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic, display_name="Dr. Batch")
    patient = await api.user(Role.PATIENT, email=f"batch-{uuid.uuid4().hex[:6]}@example.test")
    booking = await hold(api, patient, doctor, local(3, "11:00"))
    bid, pid = booking["id"], booking["patient_id"]
    await pool_of_api(api).execute(
        "UPDATE users SET display_name = 'Noor Batch' WHERE id = $1", uuid.UUID(pid)
    )
    now = dt.datetime.now(dt.UTC)
    datas: list[tuple[str, dict[str, object]]] = [
        ("booking.requested", {"booking_id": bid, "patient_id": pid, "doctor_id": doctor.id}),
        ("booking.cancelled", {"booking_id": bid}),  # both ids from the booking
        ("call.waiting", {"booking_id": bid, "patient_id": pid}),  # the doctor from it
        ("booking.accepted", {"patient_id": pid, "doctor_id": str(uuid.uuid4())}),  # no doctor
        ("booking.requested", {"booking_id": str(uuid.uuid4())}),  # no such booking
        ("payment.succeeded", {"patient_id": pid}),
        ("booking.held", {"booking_id": "not-a-uuid", "doctor_id": doctor.id}),
    ]
    events = [Ev(i, topic, data, now) for i, (topic, data) in enumerate(datas)]
    async with pool_of_api(api).acquire() as conn:
        one_by_one = [await store.context_for(conn, e) for e in events]
        batch = await store.contexts_for(conn, events)
    assert batch == one_by_one
    assert batch[1].doctor_name == "Dr. Batch" and batch[1].patient_name == "Noor Batch"
    assert batch[3].doctor_user_id is None
    named = [(c.patient_id and str(c.patient_id), c.doctor_name) for c in batch]
    assert named == [
        (pid, "Dr. Batch"),
        (pid, "Dr. Batch"),
        (pid, "Dr. Batch"),
        (pid, ""),
        (None, ""),
        (pid, ""),  # a payment event names the patient only
        (None, "Dr. Batch"),
    ]


def pool_of_api(api: Api) -> asyncpg.Pool:
    pool: asyncpg.Pool = api.app[keys.DB]
    return pool
