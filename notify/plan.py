"""What the notifier does, decided without I/O.

Three steps, each a pure function the store and the service call:

1. :func:`plan_event`: an outbox event (with the names and ids the store
   looked up for it, :class:`Context`) becomes jobs: who hears what, and when.
   A job is for a user, or (an invitation) for a guest's address on the one
   channel the inviter chose.
   A booking entering ``requested`` or ``accepted`` schedules its reminders
   (24 h and 15 min before by default); a reschedule or cancellation cancels
   the reminders of the old time. Job keys are made from the event id (or,
   for reminders, the booking, offset, start time and recipient), so reading
   an event twice plans nothing new.
2. :func:`expand`: a due job becomes deliveries, one per channel (and per
   device for push) that the recipient has and wants, each due now or, on an
   intrusive channel during the recipient's quiet hours, when they end. A
   guest's job becomes one delivery, due now (:func:`to_guest`).
3. :func:`backoff`: when a failed delivery is tried again.
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final
from uuid import UUID

from notify.templates import TEMPLATES, zone

__all__ = [
    "CHANNELS",
    "GUEST_CHANNELS",
    "INBOX",
    "INTRUSIVE",
    "Context",
    "Delivery",
    "Device",
    "InboxEvent",
    "Job",
    "Plan",
    "PlanSettings",
    "Preferences",
    "Recipient",
    "backoff",
    "expand",
    "guest",
    "plan_event",
    "quiet_until",
    "to_guest",
]

CHANNELS = ("email", "webpush", "fcm", "apns", "sms", "whatsapp")
#: Channels that buzz a phone: held back during quiet hours. Email waits in
#: an inbox anyway, so it goes at once.
INTRUSIVE = frozenset({"webpush", "fcm", "apns", "sms", "whatsapp"})
PUSH = frozenset({"webpush", "fcm", "apns"})
#: The events :func:`plan_event` acts on: topic, and the only gateway (or,
#: with "!", the one gateway not) whose events of that topic it plans for;
#: None for any. The inbox trigger (migration 0023) copies exactly these.
INBOX: Final[Mapping[str, str | None]] = {
    "booking.requested": None,
    "booking.accepted": None,
    "booking.cancelled": None,
    "payment.succeeded": "!bank_transfer",
    "payment.refunded": None,
    "payment.expired": "bank_transfer",
    "payment.bank_transfer.requested": None,
    "payment.bank_transfer.confirmed": None,
    "payment.refund_refused": None,
    "payment.received_late": None,
    "payment.bank_transfer.refund_due": None,
    "payment.bank_transfer.refunded": None,
    "chat.message.sent": None,
    "call.waiting": None,
    "invite.created": None,
    "call.incoming": None,
}
#: The channels an invitation can name (room_invites.channel).
GUEST_CHANNELS = frozenset({"email", "sms", "whatsapp"})
#: The zone a guest's phone number most likely rings in, by calling code.
_CALLING_ZONES = {
    "+92": "Asia/Karachi",
    "+971": "Asia/Dubai",
    "+974": "Asia/Qatar",
    "+966": "Asia/Riyadh",
}
#: The platform's account, as a bank transfer's instructions carry it.
_BANK_FIELDS = ("bank_name", "account_title", "account_number", "iban")
#: Reminders this many minutes ahead or more use the "upcoming" wording.
_LONG_REMINDER = 360


@dataclass(frozen=True)
class InboxEvent:
    """An outbox event as the notifier reads it from ``notify_inbox``."""

    id: int
    topic: str
    data: Mapping[str, Any]
    at: dt.datetime
    #: The W3C trace context of the transaction that wrote it (tracing on).
    trace: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Context:
    """What the store looked up for an event: the people it concerns."""

    patient_id: UUID | None = None
    patient_name: str = ""
    doctor_user_id: UUID | None = None
    doctor_name: str = ""
    #: Chat: the conversation's members other than the sender, and the sender's name.
    chat_recipients: Sequence[UUID] = ()
    sender_name: str = ""
    sender_role: str = ""
    #: An invitation: the time zone of the clinic's region, if it has one.
    clinic_zone: str | None = None


@dataclass(frozen=True)
class PlanSettings:
    """The settings planning depends on."""

    reminder_minutes: Sequence[int] = (1440, 15)
    chat_delay: float = 120.0
    waiting_ttl: float = 1800.0
    #: Seconds the patient's phone may still ring after the doctor started
    #: the visit: a push later than this is dropped (by us and by APNs/FCM).
    ring_ttl: float = 60.0
    base_url: str = ""
    #: The number a patient calls to join by the visit's PIN (``sip_dial_in``);
    #: empty: no dial-in is offered, and no PIN is sent.
    phone_dial_in: str = ""


@dataclass(frozen=True)
class Job:
    key: str
    event_id: str
    #: The user it is for; None for a guest, known by ``channel`` and ``address``.
    recipient_id: UUID | None
    template: str
    params: Mapping[str, Any]
    due_at: dt.datetime
    expires_at: dt.datetime | None = None
    booking_id: UUID | None = None
    channel: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class Plan:
    jobs: list[Job] = field(default_factory=list)
    #: Cancel the booking's scheduled reminders, except those for this start
    #: time (``keep``; None: cancel them all).
    cancel_reminders: UUID | None = None
    keep: str | None = None


def _uuid(value: Any) -> UUID | None:
    try:
        return UUID(str(value)) if value else None
    except ValueError:
        return None


def _time(value: Any) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(str(value)) if value else None
    except ValueError:
        return None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when


def dial_in(data: Mapping[str, Any], policy: PlanSettings) -> dict[str, str]:
    """How the patient joins by phone, for the patient's messages: the number
    and the visit's PIN; nothing where dial-in is not offered or the visit
    has no PIN."""
    pin = data.get("phone_pin")
    if not policy.phone_dial_in or not isinstance(pin, str) or not pin:
        return {}
    return {"dial_in": policy.phone_dial_in, "pin": pin}


def reminders(
    event: InboxEvent, booking_id: UUID, starts_at: dt.datetime, ctx: Context, policy: PlanSettings
) -> list[Job]:
    """The booking's reminders that are still ahead of the moment it was made
    (a booking made 3 hours ahead gets no 24-hour reminder)."""
    out: list[Job] = []
    stamp = starts_at.astimezone(dt.UTC).isoformat()
    for minutes in policy.reminder_minutes:
        due = starts_at - dt.timedelta(minutes=minutes)
        if due <= event.at:
            continue
        template = "reminder_24h" if minutes >= _LONG_REMINDER else "reminder_15m"
        phone = dial_in(event.data, policy)
        people: list[tuple[UUID | None, str, str, dict[str, str]]] = [
            (ctx.patient_id, ctx.doctor_name, "doctor", phone)
        ]
        if minutes < _LONG_REMINDER:
            people.append((ctx.doctor_user_id, ctx.patient_name, "patient", {}))
        for who, other, other_role, extra in people:
            if who is None:
                continue
            event_id = f"reminder:{booking_id}:{minutes}:{stamp}"
            out.append(
                Job(
                    key=f"{event_id}:{who}",
                    event_id=event_id,
                    recipient_id=who,
                    template=template,
                    params={
                        "booking_id": str(booking_id),
                        "starts_at": stamp,
                        "minutes": minutes,
                        "other": other,
                        "other_role": other_role,
                        **extra,
                    },
                    due_at=due,
                    expires_at=starts_at,
                    booking_id=booking_id,
                )
            )
    return out


def _job(
    event: InboxEvent,
    template: str,
    who: UUID | None,
    params: Mapping[str, Any],
    *,
    due: dt.datetime | None = None,
    expires: dt.datetime | None = None,
    booking_id: UUID | None = None,
) -> list[Job]:
    if who is None:
        return []
    return [
        Job(
            key=f"event:{event.id}:{template}:{who}",
            event_id=str(event.id),
            recipient_id=who,
            template=template,
            params=dict(params),
            due_at=due or event.at,
            expires_at=expires,
            booking_id=booking_id,
        )
    ]


#: Events of money owed back by hand (booking.payments.refunds.due and the
#: bank transfer's credits), and what the patient is told.
_OWED_BACK: Final = {
    "payment.refund_refused": "payment_refund_by_hand",
    "payment.received_late": "payment_received_late",
    "payment.bank_transfer.refund_due": "payment_received_late",
    # Finance sent a late transfer back (no payment.refunded: the intent
    # had lapsed, nothing of it was captured).
    "payment.bank_transfer.refunded": "payment_refunded",
}


def _money(d: Mapping[str, Any], amount: Any, reference: str) -> dict[str, Any]:
    """What every payment message names: the amount, its currency, a
    reference the patient can quote and the booking."""
    return {
        "amount_minor": amount,
        "currency": str(d.get("currency", "")),
        "reference": reference,
        "booking_id": str(d.get("booking_id", "")),
    }


def plan_event(event: InboxEvent, ctx: Context, policy: PlanSettings) -> Plan:
    """The jobs ``event`` calls for (see the module's docstring)."""
    d = event.data
    topic = event.topic
    if topic.startswith("booking."):
        return _plan_booking(event, ctx, policy)
    if topic == "payment.succeeded" and d.get("gateway") == "bank_transfer":
        # Its receipt is payment.bank_transfer.confirmed's, which names the
        # reference the patient wrote on the transfer.
        return Plan()
    if topic == "payment.bank_transfer.confirmed":
        params = _money(d, d.get("amount_minor"), str(d.get("reference", "")))
        return Plan(jobs=_job(event, "payment_receipt", ctx.patient_id, params))
    if topic in ("payment.succeeded", "payment.refunded"):
        refund = topic == "payment.refunded"
        amount = d.get("refund_minor") if refund else d.get("amount_minor")
        if not isinstance(amount, int):
            return Plan()
        reference = str(d.get("refund_id") if refund else d.get("payment_id", ""))[:8]
        params = _money(d, amount, reference)
        template = "payment_refunded" if refund else "payment_receipt"
        return Plan(jobs=_job(event, template, ctx.patient_id, params))
    if topic == "payment.bank_transfer.requested":
        bank = d.get("bank")
        bank = bank if isinstance(bank, Mapping) else {}
        params = {
            **_money(d, d.get("amount_minor"), str(d.get("reference", ""))),
            "starts_at": str(d.get("starts_at", "")),
            "expires_at": str(d.get("expires_at", "")),
            "other": str(d.get("doctor_name", "")),
            "other_role": "doctor",
            "page": str(d.get("link", "")),
            **{k: str(bank.get(k, "")) for k in _BANK_FIELDS},
        }
        return Plan(jobs=_job(event, "bank_transfer_instructions", ctx.patient_id, params))
    if topic == "payment.expired" and d.get("gateway") == "bank_transfer":
        reference = str(d.get("reference") or str(d.get("payment_id", ""))[:8])
        params = _money(d, d.get("amount_minor"), reference)
        return Plan(jobs=_job(event, "bank_transfer_expired", ctx.patient_id, params))
    if topic in _OWED_BACK:
        # Money the patient is owed that no gateway sends back by itself:
        # they hear so now, and again (payment.refunded) when it is paid.
        amount = d.get("refund_minor", d.get("amount_minor"))
        if not isinstance(amount, int):
            return Plan()
        # The refund's reference, as payment.refunded will name it; a bank
        # transfer's own, which the patient wrote on it.
        refund_id = d.get("refund_id")
        reference = str(refund_id)[:8] if refund_id else str(d.get("reference", ""))
        params = _money(d, amount, reference)
        return Plan(jobs=_job(event, _OWED_BACK[topic], ctx.patient_id, params))
    if topic == "chat.message.sent":
        due = event.at + dt.timedelta(seconds=policy.chat_delay)
        params = {
            "conversation_id": str(d.get("conversation_id", "")),
            "seq": d.get("seq"),
            "other": ctx.sender_name,
            "other_role": ctx.sender_role,
        }
        jobs: list[Job] = []
        for who in ctx.chat_recipients:
            jobs += _job(event, "chat_message", who, params, due=due)
        return Plan(jobs=jobs)
    if topic == "invite.created":
        return Plan(jobs=_invite(event, ctx))
    if topic == "call.waiting":
        params = {
            "booking_id": str(d.get("booking_id", "")),
            "other": str(d.get("name") or ctx.patient_name),
            "other_role": "patient",
        }
        expires = event.at + dt.timedelta(seconds=policy.waiting_ttl)
        return Plan(jobs=_job(event, "call_waiting", ctx.doctor_user_id, params, expires=expires))
    if topic == "call.incoming":
        return Plan(jobs=_incoming(event, ctx, policy))
    return Plan()


def _incoming(event: InboxEvent, ctx: Context, policy: PlanSettings) -> list[Job]:
    """The doctor started a booked visit: the patient's phone rings. Once
    per visit (the booking and its slot): the job's key is the visit's, so
    the doctor coming in again plans nothing new. No room token travels (a
    push is stored by Apple and Google): the app fetches its own link, with
    the patient's session, from ``video_link``."""
    d = event.data
    booking_id = _uuid(d.get("booking_id"))
    room = str(d.get("room") or "")
    if booking_id is None or ctx.patient_id is None or not room:
        return []
    base = policy.base_url.rstrip("/")
    params = {
        "booking_id": str(booking_id),
        "other": str(d.get("name") or ctx.doctor_name),
        "other_role": "doctor",
        "video_link": f"/api/v1/bookings/{booking_id}/video-link",
        "call_url": f"{base}/call/{urllib.parse.quote(room, safe='')}",
    }
    key = f"call_incoming:{booking_id}:{d.get('slot') or ''}:{ctx.patient_id}"
    return [
        Job(
            key=key,
            event_id=key,
            recipient_id=ctx.patient_id,
            template="call_incoming",
            params=params,
            due_at=event.at,
            expires_at=event.at + dt.timedelta(seconds=policy.ring_ttl),
            booking_id=booking_id,
        )
    ]


def _invite(event: InboxEvent, ctx: Context) -> list[Job]:
    """The guest's invitation, to the address on the channel the inviter
    chose, now. Its time is the link's opening, written in the zone of the
    guest's calling code, else of the clinic's region (else UTC), or "now"
    when it is already open. Only the invite's id travels: the link is made
    when the message is sent."""
    d = event.data
    invite_id = _uuid(d.get("invite_id"))
    channel, address = str(d.get("channel") or ""), str(d.get("address") or "")
    room, role = str(d.get("room") or ""), str(d.get("role") or "")
    if invite_id is None or channel not in GUEST_CHANNELS or not (address and room and role):
        return []
    opens = _time(d.get("not_before"))
    zone_ = ctx.clinic_zone
    if channel != "email":
        zone_ = next((z for c, z in _CALLING_ZONES.items() if address.startswith(c)), zone_)
    params: dict[str, Any] = {
        "invite_id": str(invite_id),
        "room": room,
        "role": role,
        "name": str(d.get("name") or ""),
        "inviter": str(d.get("inviter") or ""),
        "locale": str(d.get("locale") or "en"),
        "time_zone": zone_ or "UTC",
    }
    if opens is not None and opens > event.at:
        params["starts_at"] = opens.astimezone(dt.UTC).isoformat()
    return [
        Job(
            key=f"event:{event.id}:guest_invite:{invite_id}",
            event_id=str(event.id),
            recipient_id=None,
            template="guest_invite",
            params=params,
            due_at=event.at,
            expires_at=_time(d.get("expires_at")),
            channel=channel,
            address=address,
        )
    ]


def _plan_booking(event: InboxEvent, ctx: Context, policy: PlanSettings) -> Plan:
    d = event.data
    booking_id = _uuid(d.get("booking_id"))
    starts_at = _time(d.get("starts_at"))
    if booking_id is None or starts_at is None:
        return Plan()
    state = event.topic.removeprefix("booking.")
    what = str(d.get("event", ""))
    actor = _uuid(d.get("actor_id"))
    stamp = starts_at.astimezone(dt.UTC).isoformat()
    to_patient: dict[str, Any] = {
        "starts_at": stamp,
        "other": ctx.doctor_name,
        "other_role": "doctor",
        **dial_in(d, policy),
    }
    to_doctor: dict[str, Any] = {
        "starts_at": stamp,
        "other": ctx.patient_name,
        "other_role": "patient",
    }
    to_patient["booking_id"] = to_doctor["booking_id"] = str(booking_id)
    jobs: list[Job] = []

    def both(template: str, extra: Mapping[str, Any] | None = None) -> None:
        nonlocal jobs
        for who, params in ((ctx.patient_id, to_patient), (ctx.doctor_user_id, to_doctor)):
            if who is not None and who != actor:
                merged = {**params, **(extra or {})}
                jobs += _job(event, template, who, merged, booking_id=booking_id)

    if state == "cancelled":
        both("booking_cancelled")
        return Plan(jobs=jobs, cancel_reminders=booking_id)
    if state not in ("requested", "accepted"):
        return Plan()
    upcoming = [] if d.get("instant") else reminders(event, booking_id, starts_at, ctx, policy)
    if what == "reschedule":
        detail = d.get("detail") or {}
        old = _time(detail.get("from_starts_at")) if isinstance(detail, Mapping) else None
        extra = {"old_starts_at": old.astimezone(dt.UTC).isoformat()} if old else {}
        both("booking_rescheduled", extra)
        return Plan(jobs=jobs + upcoming, cancel_reminders=booking_id, keep=stamp)
    if state == "requested":
        token = d.get("manage_token")
        link = f"{policy.base_url.rstrip('/')}/api/v1/manage/{token}" if token else ""
        jobs += _job(
            event,
            "booking_received",
            ctx.patient_id,
            {**to_patient, "link": link},
            booking_id=booking_id,
        )
        jobs += _job(
            event, "doctor_new_booking", ctx.doctor_user_id, to_doctor, booking_id=booking_id
        )
    elif what == "accept":
        jobs += _job(event, "booking_confirmed", ctx.patient_id, to_patient, booking_id=booking_id)
    return Plan(jobs=jobs + upcoming)


# -- expanding a due job --------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    #: None: a guest, who is only an address (:func:`guest`).
    id: UUID | None
    email: str | None
    phone: str | None
    locale: str | None
    time_zone: str | None
    display_name: str = ""


@dataclass(frozen=True)
class Preferences:
    channels: frozenset[str] = frozenset({"email", "webpush", "fcm", "apns"})
    muted: frozenset[str] = frozenset()
    quiet_start: dt.time | None = None
    quiet_end: dt.time | None = None


@dataclass(frozen=True)
class Device:
    id: UUID
    kind: str
    token: str
    keys: Mapping[str, str] | None = None
    #: An APNs PushKit token: it takes VoIP pushes (calls ringing) and nothing else.
    voip: bool = False


@dataclass(frozen=True)
class Delivery:
    channel: str
    target: str
    due_at: dt.datetime
    #: Why it can never be sent: recorded as failed, and not tried.
    failed: str = ""


def quiet_until(prefs: Preferences, tz: str | None, now: dt.datetime) -> dt.datetime | None:
    """When the recipient's quiet hours end, if ``now`` is inside them."""
    start, end = prefs.quiet_start, prefs.quiet_end
    if start is None or end is None or start == end:
        return None
    zone_ = zone(tz)
    local = now.astimezone(zone_)
    t = local.time().replace(tzinfo=None)
    today = local.date()
    if start < end:
        if not start <= t < end:
            return None
        day = today
    elif t >= start:
        day = today + dt.timedelta(days=1)
    elif t < end:
        day = today
    else:
        return None
    return dt.datetime.combine(day, end, tzinfo=zone_).astimezone(dt.UTC)


def expand(
    job: Job,
    recipient: Recipient,
    prefs: Preferences,
    devices: Iterable[Device],
    available: Iterable[str],
    now: dt.datetime,
) -> list[Delivery]:
    """The deliveries of a due job: the channels the recipient wants, the
    server can send on and the recipient can be reached on."""
    template = TEMPLATES[job.template]
    if template.category in prefs.muted:
        return []
    # A ring is for phones (and browsers) only: an email of it would come late.
    pushes = PUSH if template.ring else frozenset(CHANNELS)
    wanted = prefs.channels & frozenset(available)
    hold = None if template.urgent else quiet_until(prefs, recipient.time_zone, now)
    out: list[Delivery] = []
    for channel in CHANNELS:
        if channel not in wanted or channel not in pushes:
            continue
        due = hold if hold is not None and channel in INTRUSIVE else now
        if channel == "email" and recipient.email:
            out.append(Delivery("email", "", due))
        elif channel in ("sms", "whatsapp") and recipient.phone:
            out.append(Delivery(channel, "", due))
        elif channel in PUSH:
            mine = [d for d in devices if d.kind == channel]
            if channel == "apns":
                # A ring goes to PushKit tokens (a VoIP push), else as an
                # alert to the others; PushKit tokens take nothing but rings.
                voip = [d for d in mine if d.voip]
                mine = (voip or mine) if template.ring else [d for d in mine if not d.voip]
            out += [Delivery(channel, str(d.id), due) for d in mine]
    return out


def to_guest(job: Job, available: Iterable[str], now: dt.datetime) -> Delivery:
    """A guest's job's one delivery: on the channel the inviter chose, now
    (the visit is now: no quiet hours), or failed if this server has no such
    channel (no other channel would reach the address)."""
    assert job.channel is not None
    if job.channel not in frozenset(available):
        why = f"{job.channel}: channel not configured on this server"
        return Delivery(job.channel, "", now, why)
    return Delivery(job.channel, "", now)


def guest(channel: str, address: str, params: Mapping[str, Any]) -> Recipient:
    """The recipient of a guest's delivery: their address, name and language
    as the invitation gave them, the zone the job chose."""
    phone = channel in ("sms", "whatsapp")
    return Recipient(
        id=None,
        email=None if phone else address,
        phone=address if phone else None,
        locale=str(params.get("locale") or "en"),
        time_zone=str(params.get("time_zone") or "UTC"),
        display_name=str(params.get("name") or ""),
    )


def backoff(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Seconds before try ``attempt + 1``: base, 2 base, 4 base, ... up to
    ``cap``, and never sooner than the service's Retry-After."""
    delay = min(base * 2.0 ** max(attempt - 1, 0), cap)
    return max(delay, retry_after or 0.0)
