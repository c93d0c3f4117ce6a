# ruff: noqa: RUF001  (the Urdu full stop and the Arabic comma are the right characters)
"""The messages, in English, Urdu and Arabic, rendered for one recipient.

A template is a title and a body per language, with named fields. Times
arrive as ISO 8601 instants (``starts_at``) and are written in the
recipient's time zone with that language's month names; Urdu and Arabic read
right to left, so their HTML carries ``dir="rtl"`` (and ``lang``) and their
plain text starts with a right-to-left mark.

Nothing here says what was discussed or paid for beyond the amount: push
banners and SMS show on locked screens, so they name the other party, the
time and the action, never a chat message's text.

Sans-I/O: no clock, no database. :func:`render` is pure.
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "LANGUAGES",
    "RTL",
    "TEMPLATES",
    "Rendered",
    "Template",
    "format_amount",
    "format_time",
    "render",
    "zone",
]

LANGUAGES = ("en", "ur", "ar")
RTL = frozenset({"ur", "ar"})

_MONTHS = {
    "en": "January February March April May June July August September October November December",
    "ur": "جنوری فروری مارچ اپریل مئی جون جولائی اگست ستمبر اکتوبر نومبر دسمبر",
    "ar": "يناير فبراير مارس أبريل مايو يونيو يوليو أغسطس سبتمبر أكتوبر نوفمبر ديسمبر",
}
# The comma each script writes between the date and the time.
_COMMA = {"en": ",", "ur": "،", "ar": "،"}

#: Who "the other party" is when their name is unknown.
_SOMEONE = {
    "patient": {"en": "your patient", "ur": "آپ کا مریض", "ar": "مريضك"},
    "doctor": {"en": "your doctor", "ur": "آپ کا ڈاکٹر", "ar": "طبيبك"},
}


@dataclass(frozen=True)
class Template:
    """One message. ``category`` is what a user can mute; ``urgent`` ones
    ignore quiet hours (the patient chose the time of the consultation)."""

    category: str
    urgent: bool
    text: Mapping[str, tuple[str, str]]  # language -> (title, body)
    #: The fields a WhatsApp template approved by Meta takes, in order
    #: (the webhook's ``parameters``); empty: the adapter maps ``text``.
    whatsapp: tuple[str, ...] = ()
    #: A call ringing the phone: pushes only, as an APNs VoIP push (CallKit)
    #: and an FCM data message the app turns into its incoming-call screen.
    ring: bool = False


def _t(
    category: str,
    urgent: bool = False,
    whatsapp: tuple[str, ...] = (),
    ring: bool = False,
    **text: tuple[str, str],
) -> Template:
    assert set(text) == set(LANGUAGES), text.keys()
    return Template(category, urgent, text, whatsapp, ring)


TEMPLATES: dict[str, Template] = {
    "booking_received": _t(
        "booking",
        en=(
            "Booking received",
            "Your consultation with {other} on {time} is paid and waits for the doctor's"
            " confirmation.{manage}{phone}",
        ),
        ur=(
            "بکنگ موصول ہو گئی",
            "{other} کے ساتھ {time} کی آپ کی مشاورت کی ادائیگی ہو گئی ہے اور ڈاکٹر کی"
            " تصدیق کا انتظار ہے۔{manage}{phone}",
        ),
        ar=(
            "تم استلام الحجز",
            "تم دفع استشارتك مع {other} في {time} وهي بانتظار تأكيد الطبيب.{manage}{phone}",
        ),
    ),
    "booking_confirmed": _t(
        "booking",
        en=(
            "Consultation confirmed",
            "Your consultation with {other} on {time} is confirmed.{phone}",
        ),
        ur=(
            "مشاورت کی تصدیق",
            "{other} کے ساتھ {time} کی آپ کی مشاورت کی تصدیق ہو گئی ہے۔{phone}",
        ),
        ar=("تم تأكيد الاستشارة", "تم تأكيد استشارتك مع {other} في {time}.{phone}"),
    ),
    "booking_cancelled": _t(
        "booking",
        en=("Consultation cancelled", "Your consultation with {other} on {time} was cancelled."),
        ur=("مشاورت منسوخ", "{other} کے ساتھ {time} کی آپ کی مشاورت منسوخ کر دی گئی ہے۔"),
        ar=("تم إلغاء الاستشارة", "تم إلغاء استشارتك مع {other} في {time}."),
    ),
    "booking_rescheduled": _t(
        "booking",
        en=(
            "Consultation moved",
            "Your consultation with {other} has moved from {old_time} to {time}.{phone}",
        ),
        ur=(
            "مشاورت کا وقت تبدیل",
            "{other} کے ساتھ آپ کی مشاورت {old_time} سے {time} پر منتقل ہو گئی ہے۔{phone}",
        ),
        ar=(
            "تم تغيير موعد الاستشارة",
            "تم نقل استشارتك مع {other} من {old_time} إلى {time}.{phone}",
        ),
    ),
    "doctor_new_booking": _t(
        "booking",
        en=("New booking", "{other} booked a consultation with you on {time}."),
        ur=("نئی بکنگ", "{other} نے آپ کے ساتھ {time} کی مشاورت بک کی ہے۔"),
        ar=("حجز جديد", "حجز {other} استشارة معك في {time}."),
    ),
    "reminder_24h": _t(
        "reminder",
        en=(
            "Upcoming consultation",
            "Reminder: your consultation with {other} is on {time}.{phone}",
        ),
        ur=("مشاورت کی یاد دہانی", "یاد دہانی: {other} کے ساتھ آپ کی مشاورت {time} کو ہے۔{phone}"),
        ar=("تذكير بالاستشارة", "تذكير: موعد استشارتك مع {other} في {time}.{phone}"),
    ),
    "reminder_15m": _t(
        "reminder",
        urgent=True,
        en=(
            "Consultation in {minutes} minutes",
            "Your consultation with {other} starts in {minutes} minutes, at {time}.{phone}",
        ),
        ur=(
            "مشاورت {minutes} منٹ میں",
            "{other} کے ساتھ آپ کی مشاورت {minutes} منٹ میں، {time} پر، شروع ہو رہی ہے۔{phone}",
        ),
        ar=(
            "الاستشارة بعد {minutes} دقيقة",
            "تبدأ استشارتك مع {other} بعد {minutes} دقيقة، في {time}.{phone}",
        ),
    ),
    "payment_receipt": _t(
        "payment",
        en=("Payment received", "We received your payment of {amount}. Reference: {reference}."),
        ur=("ادائیگی موصول", "آپ کی {amount} کی ادائیگی موصول ہو گئی ہے۔ حوالہ: {reference}۔"),
        ar=("تم استلام الدفعة", "تم استلام دفعتك بمبلغ {amount}. المرجع: {reference}."),
    ),
    "payment_refunded": _t(
        "payment",
        en=("Refund issued", "A refund of {amount} is on its way to you. Reference: {reference}."),
        ur=("رقم کی واپسی", "{amount} کی واپسی آپ کو بھیج دی گئی ہے۔ حوالہ: {reference}۔"),
        ar=("تم إصدار استرداد", "تم إصدار استرداد بمبلغ {amount} لك. المرجع: {reference}."),
    ),
    "payment_refund_by_hand": _t(
        "payment",
        en=(
            "Your refund is delayed",
            "The payment service could not send back your refund of {amount} by itself."
            " The clinic will send it to you; you need do nothing. Reference: {reference}.",
        ),
        ur=(
            "آپ کی رقم کی واپسی میں تاخیر",
            "ادائیگی کی سروس آپ کی {amount} کی واپسی خود نہیں بھیج سکی۔ کلینک یہ رقم آپ کو"
            " بھیجے گا؛ آپ کو کچھ کرنے کی ضرورت نہیں۔ حوالہ: {reference}۔",
        ),
        ar=(
            "تأخر استرداد أموالك",
            "لم تتمكن خدمة الدفع من إعادة مبلغ {amount} إليك تلقائيًا. ستُرسله العيادة إليك،"
            " ولا يلزمك فعل شيء. المرجع: {reference}.",
        ),
    ),
    "payment_received_late": _t(
        "payment",
        en=(
            "Your payment came too late",
            "Your payment of {amount} arrived after the time held for your consultation had"
            " been released, so no booking was paid with it. It will be returned to you."
            " Reference: {reference}.",
        ),
        ur=(
            "آپ کی ادائیگی دیر سے پہنچی",
            "آپ کی {amount} کی ادائیگی اس وقت پہنچی جب آپ کی مشاورت کے لیے محفوظ وقت چھوڑا"
            " جا چکا تھا، اس لیے اس سے کوئی بکنگ ادا نہیں ہوئی۔ یہ رقم آپ کو واپس کر دی جائے"
            " گی۔ حوالہ: {reference}۔",
        ),
        ar=(
            "وصلت دفعتك متأخرة",
            "وصلت دفعتك بمبلغ {amount} بعد إلغاء الموعد المحجوز لاستشارتك، فلم يُدفع بها أي"
            " حجز. ستُعاد إليك. المرجع: {reference}.",
        ),
    ),
    "bank_transfer_instructions": _t(
        "payment",
        en=(
            "Pay by bank transfer",
            "Your consultation with {other} on {time} is held for you until {deadline}."
            " Transfer {amount} to {account_title}, {bank_name}, IBAN {iban}"
            " (account {account_number}) and write the reference {reference} on the transfer."
            " Details: {page}",
        ),
        ur=(
            "بینک ٹرانسفر سے ادائیگی",
            "{other} کے ساتھ {time} کی آپ کی مشاورت {deadline} تک آپ کے لیے محفوظ ہے۔"
            " {amount} {account_title}، {bank_name}، IBAN {iban} (اکاؤنٹ {account_number})"
            " میں منتقل کریں اور ٹرانسفر پر حوالہ {reference} لکھیں۔ تفصیلات: {page}",
        ),
        ar=(
            "الدفع بالتحويل المصرفي",
            "استشارتك مع {other} في {time} محجوزة لك حتى {deadline}."
            " حوّل {amount} إلى {account_title}، {bank_name}، IBAN {iban}"
            " (الحساب {account_number}) واكتب المرجع {reference} على التحويل. التفاصيل: {page}",
        ),
    ),
    "bank_transfer_expired": _t(
        "payment",
        en=(
            "Booking hold ended",
            "We did not receive your bank transfer of {amount} (reference {reference}) in time,"
            " so the time held for you has been released. If you have sent it, it will be"
            " refunded to you.",
        ),
        ur=(
            "بکنگ کی مہلت ختم",
            "ہمیں آپ کا {amount} کا بینک ٹرانسفر (حوالہ {reference}) وقت پر موصول نہیں ہوا،"
            " اس لیے آپ کے لیے محفوظ وقت چھوڑ دیا گیا ہے۔ اگر آپ رقم بھیج چکے ہیں تو وہ آپ کو"
            " واپس کر دی جائے گی۔",
        ),
        ar=(
            "انتهى حجز الموعد",
            "لم نستلم تحويلك المصرفي بمبلغ {amount} (المرجع {reference}) في الوقت المحدد،"
            " لذا أُلغي الموعد المحجوز لك. إذا كنت قد أرسلته فسيُعاد إليك.",
        ),
    ),
    "chat_message": _t(
        "chat",
        en=("New message from {other}", "{other} sent you a message. Open Wadud to read it."),
        ur=("{other} کا نیا پیغام", "{other} نے آپ کو پیغام بھیجا ہے۔ پڑھنے کے لیے ودود کھولیں۔"),
        ar=("رسالة جديدة من {other}", "أرسل لك {other} رسالة. افتح ودود لقراءتها."),
    ),
    "call_waiting": _t(
        "call",
        urgent=True,
        en=("{other} is waiting", "{other} is waiting in your consultation's waiting room."),
        ur=("{other} انتظار میں ہیں", "{other} آپ کی مشاورت کے ویٹنگ روم میں انتظار کر رہے ہیں۔"),
        ar=("{other} بانتظارك", "{other} ينتظر في غرفة انتظار استشارتك."),
    ),
    # To the patient's phone when the doctor starts the visit: it rings.
    "call_incoming": _t(
        "call",
        urgent=True,
        ring=True,
        en=("{other} is calling", "{other} has started your consultation. Tap to join."),
        ur=(
            "{other} کال کر رہے ہیں",
            "{other} نے آپ کی مشاورت شروع کر دی ہے۔ شامل ہونے کے لیے ٹیپ کریں۔",
        ),
        ar=("{other} يتصل بك", "بدأ {other} استشارتك. اضغط للانضمام."),
    ),
    # To a guest (an address, not a user): worded so the inviter's gender
    # does not matter (Urdu's "نے ... دی ہے", Arabic's "دعوة من").
    "guest_invite": _t(
        "call",
        urgent=True,
        whatsapp=("inviter", "role", "when", "link"),
        en=(
            "Invitation to a video visit",
            "{inviter} invites you to join a video visit as {role} {when}: {link}",
        ),
        ur=(
            "ویڈیو مشاورت کی دعوت",
            "{inviter} نے آپ کو {when} {role} کے طور پر ویڈیو مشاورت میں شامل ہونے کی دعوت دی"
            " ہے: {link}",
        ),
        ar=(
            "دعوة إلى استشارة فيديو",
            "دعوة من {inviter} للانضمام إلى استشارة فيديو بصفة {role} {when}: {link}",
        ),
    ),
}

#: A guest's role as an invitation names it; a clinic's own role is shown as is.
_ROLES = {
    "interpreter": {"en": "an interpreter", "ur": "ترجمان", "ar": "مترجم"},
    "family": {"en": "a family member", "ur": "خاندان کے فرد", "ar": "أحد أفراد العائلة"},
    "clinician": {"en": "a clinician", "ur": "معالج", "ar": "أخصائي رعاية صحية"},
    "observer": {"en": "an observer", "ur": "مشاہد", "ar": "مراقب"},
    "doctor": {"en": "a doctor", "ur": "ڈاکٹر", "ar": "طبيب"},
    "patient": {"en": "a patient", "ur": "مریض", "ar": "مريض"},
    "staff": {"en": "clinic staff", "ur": "کلینک کا عملہ", "ar": "طاقم العيادة"},
}

#: When an invitation opens: from a time still ahead, else now.
_FROM = {"en": "from {time}", "ur": "{time} سے", "ar": "ابتداءً من {time}"}
_NOW = {"en": "now", "ur": "ابھی", "ar": "الآن"}

#: Said after a patient's booking and reminder bodies where dial-in is
#: offered: the number and the visit's PIN, grouped in fours to be read and keyed.
_PHONE = {
    "en": " No internet? Call {number} and key {pin}, then #.",
    "ur": " انٹرنیٹ نہیں؟ {number} پر کال کریں اور {pin} دبائیں، پھر #۔",
    "ar": " لا يوجد إنترنت؟ اتصل بالرقم {number} وأدخل {pin} ثم #.",
}

#: Said after a booking_received body when the event carries a manage link.
_MANAGE = {
    "en": " Change or cancel it here: {link}",
    "ur": " تبدیلی یا منسوخی کے لیے: {link}",
    "ar": " للتعديل أو الإلغاء: {link}",
}


@dataclass(frozen=True)
class Rendered:
    language: str
    direction: str  # "ltr" or "rtl"
    title: str
    text: str
    html: str
    #: The values of the template's ``whatsapp`` fields, in order.
    parameters: tuple[str, ...] = ()


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone ``name``, UTC when empty or unknown."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def format_time(instant: str | dt.datetime, language: str, tz: str | None) -> str:
    """``instant`` as the recipient reads it: ``24 نومبر 2026، 15:30 (PKT)``."""
    when = dt.datetime.fromisoformat(instant) if isinstance(instant, str) else instant
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    local = when.astimezone(zone(tz))
    month = _MONTHS[language].split()[local.month - 1]
    return (
        f"{local.day} {month} {local.year}{_COMMA[language]} "
        f"{local.hour:02d}:{local.minute:02d} ({local.tzname()})"
    )


#: Minor units per major unit of the currencies Wadud bills in.
_EXPONENT = {"PKR": 2, "AED": 2, "QAR": 2, "SAR": 2}


def format_amount(minor: int, currency: str) -> str:
    exp = _EXPONENT.get(currency, 2)
    major, rest = divmod(abs(minor), 10**exp)
    sign = "-" if minor < 0 else ""
    return f"{currency} {sign}{major:,}.{rest:0{exp}d}" if exp else f"{currency} {sign}{major:,}"


def fields(params: Mapping[str, Any], language: str, tz: str | None) -> dict[str, str]:
    """The template's named fields from a job's ``params``."""
    out = {str(k): str(v) for k, v in params.items() if isinstance(v, str | int)}
    other = params.get("other") or ""
    if not other:
        other = _SOMEONE.get(str(params.get("other_role")), _SOMEONE["doctor"])[language]
    out["other"] = str(other)
    if params.get("starts_at"):
        out["time"] = format_time(str(params["starts_at"]), language, tz)
    if params.get("expires_at"):
        out["deadline"] = format_time(str(params["expires_at"]), language, tz)
    if params.get("old_starts_at"):
        out["old_time"] = format_time(str(params["old_starts_at"]), language, tz)
    if params.get("amount_minor") is not None and params.get("currency"):
        out["amount"] = format_amount(int(params["amount_minor"]), str(params["currency"]))
    out["manage"] = _MANAGE[language].format(link=params["link"]) if params.get("link") else ""
    pin, number = str(params.get("pin") or ""), str(params.get("dial_in") or "")
    if pin and number:
        grouped = f"{pin[:4]} {pin[4:]}"
        if language in RTL:
            # Isolated left to right: in a right-to-left sentence the two
            # groups of digits (and a number's + and spaces) would otherwise
            # be shown in reverse order. Not in English, where the marks
            # would cost an SMS its 7-bit alphabet.
            number, grouped = f"\u2066{number}\u2069", f"\u2066{grouped}\u2069"
        out["phone"] = _PHONE[language].format(number=number, pin=grouped)
    else:
        out["phone"] = ""
    if params.get("role"):
        role = str(params["role"])
        out["role"] = _ROLES.get(role, {}).get(language, role)
        out["when"] = _FROM[language].format(time=out["time"]) if "time" in out else _NOW[language]
    out.setdefault("minutes", "")
    out.setdefault("reference", "")
    return out


class _Missing(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return ""


def render(name: str, language: str | None, tz: str | None, params: Mapping[str, Any]) -> Rendered:
    """Template ``name`` in ``language`` (English when unknown) and time zone ``tz``."""
    lang = language if language in LANGUAGES else "en"
    template = TEMPLATES[name]
    title_f, body_f = template.text[lang]
    values = _Missing(fields(params, lang, tz))
    title = title_f.format_map(values)
    body = body_f.format_map(values)
    direction = "rtl" if lang in RTL else "ltr"
    mark = "\u200f" if direction == "rtl" else ""
    page = (
        f'<!doctype html>\n<html lang="{lang}" dir="{direction}">'
        f'<head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
        f'<body dir="{direction}" style="font-family: sans-serif; text-align: '
        f'{"right" if direction == "rtl" else "left"}">'
        f"<h1>{html.escape(title)}</h1><p>{html.escape(body)}</p></body></html>\n"
    )
    parameters = tuple(values[f] for f in template.whatsapp)
    return Rendered(lang, direction, title, mark + body, page, parameters)
