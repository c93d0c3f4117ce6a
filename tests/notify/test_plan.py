"""The sans-I/O parts: templates, planning, expansion, quiet hours, backoff."""

from __future__ import annotations

import datetime as dt
import uuid
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notify import plan
from notify.templates import LANGUAGES, TEMPLATES, format_time, render

PATIENT = uuid.UUID(int=1)
DOCTOR = uuid.UUID(int=2)
BOOKING = uuid.UUID(int=3)
NOW = dt.datetime(2026, 11, 23, 6, 0, tzinfo=dt.UTC)
CTX = plan.Context(
    patient_id=PATIENT, patient_name="Bilal", doctor_user_id=DOCTOR, doctor_name="Dr. Khan"
)
POLICY = plan.PlanSettings(reminder_minutes=(1440, 15), base_url="https://w.test")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("language", LANGUAGES)
def test_every_template_renders_in_every_language(name: str, language: str) -> None:
    params = {
        "starts_at": "2026-11-24T10:00:00+00:00",
        "old_starts_at": "2026-11-24T09:00:00+00:00",
        "other": "Dr. Khan",
        "minutes": 15,
        "amount_minor": 150000,
        "currency": "PKR",
        "reference": "abcd1234",
        "link": "https://w.test/m/x",
    }
    r = render(name, language, "Asia/Karachi", params)
    for text in (r.title, r.text, r.html):
        assert "{" not in text and "}" not in text.replace("{", "")
    assert r.direction == ("rtl" if language in ("ur", "ar") else "ltr")
    assert f'dir="{r.direction}"' in r.html and f'lang="{language}"' in r.html
    if "{time}" in TEMPLATES[name].text[language][1]:
        assert "15:00 (PKT)" in r.text  # 10:00 UTC in Karachi


def test_an_unknown_language_or_zone_falls_back_to_english_and_utc() -> None:
    r = render("booking_confirmed", "fr", "Nowhere/City", {"starts_at": "2026-01-01T08:30:00Z"})
    assert r.language == "en" and "08:30 (UTC)" in r.text and "Your doctor" not in r.text


def test_time_in_urdu_and_arabic() -> None:
    at = "2026-11-24T10:00:00+00:00"
    assert format_time(at, "ur", "Asia/Karachi") == "24 نومبر 2026، 15:00 (PKT)"
    assert format_time(at, "ar", "Asia/Riyadh") == "24 نوفمبر 2026، 13:00 (+03)"
    assert format_time(at, "en", "Asia/Dubai") == "24 November 2026, 14:00 (+04)"


def _event(
    topic: str, data: dict[str, object], at: dt.datetime = NOW, id: int = 7
) -> plan.InboxEvent:
    return plan.InboxEvent(id, topic, data, at)


def _booking(event: str, status: str, starts: dt.datetime, **extra: object) -> dict[str, object]:
    return {
        "booking_id": str(BOOKING),
        "patient_id": str(PATIENT),
        "doctor_id": str(uuid.UUID(int=9)),
        "status": status,
        "starts_at": starts.isoformat(),
        "event": event,
        **extra,
    }


def test_a_paid_booking_two_days_ahead_plans_both_reminders_and_two_messages() -> None:
    starts = NOW + dt.timedelta(days=2)
    p = plan.plan_event(
        _event(
            "booking.requested",
            _booking("confirm_payment", "requested", starts, manage_token="tok"),
        ),
        CTX,
        POLICY,
    )
    kinds = sorted((j.template, j.recipient_id.int) for j in p.jobs)
    assert kinds == [
        ("booking_received", 1),
        ("doctor_new_booking", 2),
        ("reminder_15m", 1),
        ("reminder_15m", 2),
        ("reminder_24h", 1),
    ]
    due = {j.template: j.due_at for j in p.jobs}
    assert due["reminder_24h"] == starts - dt.timedelta(days=1)
    assert due["reminder_15m"] == starts - dt.timedelta(minutes=15)
    received = next(j for j in p.jobs if j.template == "booking_received")
    assert received.params["link"] == "https://w.test/api/v1/manage/tok"
    # Accepting the same booking plans the confirmation and the same reminder keys.
    accepted = plan.plan_event(
        _event("booking.accepted", _booking("accept", "accepted", starts), id=8), CTX, POLICY
    )
    assert {j.key for j in accepted.jobs if j.template.startswith("reminder")} == {
        j.key for j in p.jobs if j.template.startswith("reminder")
    }


def test_a_booking_made_an_hour_ahead_gets_no_day_reminder_and_instant_ones_none() -> None:
    starts = NOW + dt.timedelta(hours=1)
    p = plan.plan_event(
        _event("booking.requested", _booking("confirm_payment", "requested", starts)), CTX, POLICY
    )
    assert {j.template for j in p.jobs if j.template.startswith("reminder")} == {"reminder_15m"}
    instant = plan.plan_event(
        _event("booking.requested", _booking("confirm_payment", "requested", starts,
                                             instant=True)), CTX, POLICY,
    )  # fmt: skip
    assert not [j for j in instant.jobs if j.template.startswith("reminder")]


def test_cancel_and_reschedule_cancel_reminders_and_skip_the_actor() -> None:
    starts = NOW + dt.timedelta(days=2)
    cancelled = plan.plan_event(
        _event("booking.cancelled", _booking("cancel_by_doctor", "cancelled", starts,
                                             actor_id=str(DOCTOR))), CTX, POLICY,
    )  # fmt: skip
    assert cancelled.cancel_reminders == BOOKING and cancelled.keep is None
    assert [(j.template, j.recipient_id) for j in cancelled.jobs] == [
        ("booking_cancelled", PATIENT)
    ]
    moved = plan.plan_event(
        _event("booking.accepted", _booking("reschedule", "accepted", starts,
                                             actor_id=str(PATIENT),
                                             detail={"from_starts_at": NOW.isoformat()})),
        CTX, POLICY,
    )  # fmt: skip
    assert moved.keep == starts.isoformat()
    (told,) = [j for j in moved.jobs if j.template == "booking_rescheduled"]
    assert told.recipient_id == DOCTOR and told.params["old_starts_at"] == NOW.isoformat()


@given(
    event=st.sampled_from(
        ["booking.requested", "booking.accepted", "booking.cancelled", "payment.succeeded",
         "payment.refunded", "chat.message.sent", "call.waiting", "booking.held", "x.y",
         "payment.refund_refused", "payment.received_late", "payment.bank_transfer.refund_due",
         "payment.bank_transfer.refunded", "invite.created"]
    ),
    data=st.dictionaries(
        st.sampled_from(["booking_id", "starts_at", "event", "patient_id", "amount_minor",
                         "currency", "actor_id", "detail", "refund_minor", "instant",
                         "refund_id", "reference", "invite_id", "room", "role", "channel",
                         "address", "locale", "not_before", "expires_at"]),
        st.one_of(st.none(), st.text(max_size=30), st.integers(), st.booleans(),
                  st.just(str(BOOKING)), st.just(NOW.isoformat()), st.just({}),
                  st.sampled_from(["sms", "whatsapp", "email", "+923001234567", "ur"])),
    ),
)  # fmt: skip
@settings(max_examples=300, deadline=None)
def test_planning_any_event_never_raises_and_is_deterministic(
    event: str, data: dict[str, object]
) -> None:
    a = plan.plan_event(_event(event, data), CTX, POLICY)
    b = plan.plan_event(_event(event, data), CTX, POLICY)
    assert a == b
    keys = [j.key for j in a.jobs]
    assert len(keys) == len(set(keys))
    for job in a.jobs:
        assert job.template in TEMPLATES
        render(job.template, "ur", "Asia/Karachi", job.params)


@given(
    start=st.times(),
    end=st.times(),
    now=st.datetimes(
        min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2030, 1, 1),
        timezones=st.just(dt.UTC),
    ),
    tz=st.sampled_from(["Asia/Karachi", "Asia/Dubai", "Europe/London", "America/New_York"]),
)  # fmt: skip
@settings(max_examples=400, deadline=None)
def test_quiet_hours_end_within_a_day_at_their_local_end(
    start: dt.time, end: dt.time, now: dt.datetime, tz: str
) -> None:
    start, end = start.replace(microsecond=0), end.replace(microsecond=0)
    prefs = plan.Preferences(quiet_start=start, quiet_end=end)
    until = plan.quiet_until(prefs, tz, now)
    local = now.astimezone(ZoneInfo(tz)).time().replace(tzinfo=None)
    inside = (start <= local < end) if start < end else (local >= start or local < end)
    if start == end:
        inside = False
    assert (until is not None) == inside
    if until is not None:
        assert now < until <= now + dt.timedelta(hours=25)
        ended = until.astimezone(ZoneInfo(tz))
        # A DST gap may shift the wall clock; otherwise it is the chosen end.
        assert (ended.hour, ended.minute) == (end.hour, end.minute) or tz in (
            "Europe/London", "America/New_York")  # fmt: skip


@given(st.integers(1, 50), st.floats(0.1, 60), st.floats(1, 7200), st.none() | st.floats(0, 600))
def test_backoff_doubles_up_to_the_cap_and_honours_retry_after(
    attempt: int, base: float, cap: float, retry_after: float | None
) -> None:
    wait = plan.backoff(attempt, base=base, cap=cap, retry_after=retry_after)
    assert wait >= min(base, cap)
    assert wait <= max(cap, retry_after or 0)
    if retry_after is not None:
        assert wait >= retry_after
    nxt = plan.backoff(attempt + 1, base=base, cap=cap)
    assert nxt >= plan.backoff(attempt, base=base, cap=cap)


def test_expand_picks_wanted_reachable_channels_and_one_delivery_per_device() -> None:
    job = plan.Job("k", "e", PATIENT, "payment_receipt", {}, NOW)
    who = plan.Recipient(PATIENT, "a@b.c", None, "ur", "Asia/Karachi")
    devices = [
        plan.Device(uuid.UUID(int=10), "fcm", "t1"),
        plan.Device(uuid.UUID(int=11), "fcm", "t2"),
        plan.Device(uuid.UUID(int=12), "apns", "t3"),
    ]
    prefs = plan.Preferences(channels=frozenset({"email", "fcm", "sms"}))
    out = plan.expand(job, who, prefs, devices, {"email", "fcm", "apns", "sms"}, NOW)
    # No phone: no SMS; APNs not wanted; two FCM devices.
    assert sorted((d.channel, d.target) for d in out) == [
        ("email", ""),
        ("fcm", str(uuid.UUID(int=10))),
        ("fcm", str(uuid.UUID(int=11))),
    ]
    assert plan.expand(job, who, prefs, devices, set(), NOW) == []
    muted = plan.Preferences(muted=frozenset({"payment"}))
    assert plan.expand(job, who, muted, devices, {"email", "fcm"}, NOW) == []


def test_money_owed_back_by_hand_is_told_to_the_patient_with_its_reference() -> None:
    refused = plan.plan_event(
        _event(
            "payment.refund_refused",
            {"refund_id": "0123456789ab", "refund_minor": 5000, "amount_minor": 150000,
             "currency": "PKR"},
        ),
        CTX,
        POLICY,
    )  # fmt: skip
    [job] = refused.jobs
    assert (job.template, job.recipient_id) == ("payment_refund_by_hand", PATIENT)
    assert (job.params["amount_minor"], job.params["reference"]) == (5000, "01234567")
    late = plan.plan_event(
        _event(
            "payment.bank_transfer.refund_due",
            {"credit_id": "c1", "amount_minor": 150000, "currency": "PKR", "reference": "WD-7K3Q"},
        ),
        CTX,
        POLICY,
    )
    [job] = late.jobs
    assert (job.template, job.params["reference"]) == ("payment_received_late", "WD-7K3Q")
    # A credit nobody's transfer explains has no patient to tell.
    nobody = plan.plan_event(
        _event("payment.bank_transfer.refund_due", {"amount_minor": 1, "currency": "PKR"}),
        plan.Context(),
        POLICY,
    )
    assert nobody.jobs == []


def test_where_dial_in_is_offered_the_patients_messages_carry_the_number_and_pin() -> None:
    starts = NOW + dt.timedelta(days=2)
    data = _booking("confirm_payment", "requested", starts, phone_pin="48210937")
    phoned = plan.PlanSettings(reminder_minutes=(1440, 15), phone_dial_in="+92 51 1234567")
    jobs = plan.plan_event(_event("booking.requested", data), CTX, phoned).jobs
    to_patient = [j for j in jobs if j.recipient_id == PATIENT]
    to_doctor = [j for j in jobs if j.recipient_id == DOCTOR]
    assert {j.template for j in to_patient} == {"booking_received", "reminder_24h", "reminder_15m"}
    for job in to_patient:
        assert (job.params["pin"], job.params["dial_in"]) == ("48210937", "+92 51 1234567")
        text = render(job.template, "en", "Asia/Karachi", job.params).text
        assert text.endswith("No internet? Call +92 51 1234567 and key 4821 0937, then #."), text
    # The doctor is never sent the patient's PIN; nor is anyone where no
    # number is set up, or for a visit without a PIN.
    assert to_doctor and all("pin" not in j.params for j in to_doctor)
    for policy, event in ((POLICY, data), (phoned, {**data, "phone_pin": None})):
        assert all(
            "pin" not in j.params
            for j in plan.plan_event(_event("booking.requested", event), CTX, policy).jobs
        )
    accepted = _booking("accept", "accepted", starts, phone_pin="48210937")
    (confirmed,) = [
        j for j in plan.plan_event(_event("booking.accepted", accepted), CTX, phoned).jobs
        if j.template == "booking_confirmed"
    ]  # fmt: skip
    # In Urdu and Arabic, the number and the PIN's two groups keep their
    # left-to-right order inside the right-to-left sentence.
    for language in ("ur", "ar"):
        text = render("booking_confirmed", language, "Asia/Karachi", confirmed.params).text
        assert "\u2066+92 51 1234567\u2069" in text and "\u20664821 0937\u2069" in text, text
    assert "\u2066" not in render("booking_confirmed", "en", None, confirmed.params).text


def _invite(**extra: object) -> plan.InboxEvent:
    return _event(
        "invite.created",
        {
            "invite_id": str(BOOKING),
            "room": "shifa:visit-7",
            "role": "interpreter",
            "name": "Sana",
            "inviter": "Dr. Khan",
            "channel": "sms",
            "address": "+971501234567",
            "locale": "ar",
            "not_before": (NOW + dt.timedelta(hours=1)).isoformat(),
            "expires_at": (NOW + dt.timedelta(hours=3)).isoformat(),
            "clinic_id": None,
            **extra,
        },
    )


def test_an_invitation_is_one_job_for_an_address_in_a_zone_the_guest_likely_lives_in() -> None:
    pk = plan.Context(clinic_zone="Asia/Karachi")
    (job,) = plan.plan_event(_invite(), pk, POLICY).jobs
    assert (job.recipient_id, job.channel, job.address) == (None, "sms", "+971501234567")
    assert job.due_at == NOW and job.expires_at == NOW + dt.timedelta(hours=3)
    # The number's calling code over the clinic's region; an email goes by the clinic.
    assert job.params["time_zone"] == "Asia/Dubai"
    assert job.params["starts_at"] == (NOW + dt.timedelta(hours=1)).isoformat()
    assert "link" not in job.params and job.params["invite_id"] == str(BOOKING)
    (mail,) = plan.plan_event(_invite(channel="email", address="a@b.test"), pk, POLICY).jobs
    assert mail.params["time_zone"] == "Asia/Karachi"
    (now,) = plan.plan_event(
        _invite(not_before=NOW.isoformat(), address="+442071234567"), CTX, POLICY
    ).jobs
    assert "starts_at" not in now.params and now.params["time_zone"] == "UTC"
    for bad in ({"channel": "fax"}, {"address": ""}, {"invite_id": "x"}, {"room": None}):
        assert plan.plan_event(_invite(**bad), CTX, POLICY).jobs == [], bad


def test_an_invitation_goes_now_on_its_channel_or_fails_where_there_is_none() -> None:
    (job,) = plan.plan_event(_invite(), CTX, POLICY).jobs
    later = NOW + dt.timedelta(hours=5)
    assert plan.to_guest(job, {"sms", "email"}, later) == plan.Delivery("sms", "", later)
    failed = plan.to_guest(job, {"email"}, later)
    assert failed.failed == "sms: channel not configured on this server"


@pytest.mark.parametrize(
    ("language", "role", "says"),
    [
        ("en", "family", "invites you to join a video visit as a family member now: L"),
        ("ur", "observer", "نے آپ کو ابھی مشاہد کے طور پر ویڈیو مشاورت میں"),
        ("ar", "clinician", "بصفة أخصائي رعاية صحية الآن: L"),
        ("ar", "dietitian", "بصفة dietitian الآن: L"),
    ],
)
def test_an_invitation_names_the_role_in_the_guest_s_language(
    language: str, role: str, says: str
) -> None:
    r = render("guest_invite", language, "UTC", {"inviter": "Dr. Khan", "role": role, "link": "L"})
    assert says in r.text
    assert r.parameters[0] == "Dr. Khan" and r.parameters[-1] == "L"
    params = {"role": role, "starts_at": "2026-11-24T10:00:00+00:00", "link": "L"}
    later = render("guest_invite", "en", "Asia/Karachi", params)
    assert "from 24 November 2026, 15:00 (PKT): L" in later.text
