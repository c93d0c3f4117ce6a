# ruff: noqa: RUF001  (the Urdu full stop and the Arabic comma are the right characters)
"""What the bridge says to a caller, in English, Urdu and Arabic.

Short sentences, one instruction each, the key named before what it does:
phone callers hear them once, often on a weak line. The IVR
(:mod:`sip.calls.ivr`) names a prompt by its key; the bridge plays the
clinic's own recording where one is configured, else speech synthesised
from this text. ``language`` is the one menu that speaks all three, each
in its own language.
"""

from __future__ import annotations

__all__ = ["PROMPTS", "text"]

PROMPTS: dict[str, dict[str, str]] = {
    "language": {
        "en": "For English, press 1.",
        "ur": "اردو کے لیے 2 دبائیں۔",
        "ar": "للعربية، اضغط 3.",
    },
    "enter_pin": {
        "en": "Welcome. Please key your eight digit visit PIN, then press hash.",
        "ur": "خوش آمدید۔ براہ کرم اپنی ملاقات کا آٹھ ہندسوں کا پن درج کریں، پھر ہیش دبائیں۔",
        "ar": "أهلاً بك. يرجى إدخال رمز الزيارة المكون من ثمانية أرقام، ثم اضغط على المربع.",
    },
    "wrong_pin": {
        "en": "That PIN does not open a visit now. Please try again, then press hash.",
        "ur": "یہ پن اس وقت کسی ملاقات کو نہیں کھولتا۔ براہ کرم دوبارہ درج کریں، پھر ہیش دبائیں۔",
        "ar": "هذا الرمز لا يفتح زيارة الآن. يرجى المحاولة مرة أخرى، ثم اضغط على المربع.",
    },
    "wrong_pin_goodbye": {
        "en": "That PIN does not open a visit now. Please check the PIN in your message"
        " and call again. Goodbye.",
        "ur": "یہ پن اس وقت کسی ملاقات کو نہیں کھولتا۔ براہ کرم اپنے پیغام میں پن دیکھ کر"
        " دوبارہ کال کریں۔ خدا حافظ۔",
        "ar": "هذا الرمز لا يفتح زيارة الآن. يرجى التحقق من الرمز في رسالتك ثم الاتصال"
        " مرة أخرى. مع السلامة.",
    },
    "blocked_goodbye": {
        "en": "Too many wrong PINs were keyed from this phone. Please try again later. Goodbye.",
        "ur": "اس فون سے بہت زیادہ غلط پن درج کیے گئے۔ براہ کرم بعد میں کوشش کریں۔ خدا حافظ۔",
        "ar": "تم إدخال رموز خاطئة كثيرة من هذا الهاتف. يرجى المحاولة لاحقاً. مع السلامة.",
    },
    "recording_notice": {
        "en": "This visit is recorded for your medical record. To agree and join, press 1.",
        "ur": "یہ ملاقات آپ کے طبی ریکارڈ کے لیے ریکارڈ کی جاتی ہے۔ رضامندی اور شامل ہونے"
        " کے لیے 1 دبائیں۔",
        "ar": "يتم تسجيل هذه الزيارة لسجلك الطبي. للموافقة والانضمام، اضغط 1.",
    },
    "waiting": {
        "en": "Thank you. The doctor will let you in shortly. Please stay on the line.",
        "ur": "شکریہ۔ ڈاکٹر جلد آپ کو شامل کریں گے۔ براہ کرم لائن پر رہیں۔",
        "ar": "شكراً لك. سيسمح لك الطبيب بالدخول قريباً. يرجى البقاء على الخط.",
    },
    "joined": {
        "en": "You are in the visit.",
        "ur": "آپ ملاقات میں شامل ہو گئے ہیں۔",
        "ar": "لقد انضممت إلى الزيارة.",
    },
    "cannot_join": {
        "en": "The visit cannot be joined now. Please call again later. Goodbye.",
        "ur": "اس وقت ملاقات میں شامل نہیں ہو سکتے۔ براہ کرم بعد میں کال کریں۔ خدا حافظ۔",
        "ar": "لا يمكن الانضمام إلى الزيارة الآن. يرجى الاتصال لاحقاً. مع السلامة.",
    },
    "goodbye": {
        "en": "We did not hear a key. Please call again when you are ready. Goodbye.",
        "ur": "ہمیں کوئی بٹن سنائی نہیں دیا۔ تیار ہوں تو دوبارہ کال کریں۔ خدا حافظ۔",
        "ar": "لم نسمع أي ضغطة. يرجى الاتصال مرة أخرى عندما تكون مستعداً. مع السلامة.",
    },
}


def text(prompt: str, language: str) -> str:
    """The words of ``prompt``; the language menu is all three languages in turn."""
    if prompt == "language":
        return " ".join(PROMPTS["language"].values())
    return PROMPTS[prompt][language]
