"""The gateway interface, its value types, the shared webhook signature, the registry.

Every gateway (built-in sandbox, JazzCash, card) is a hosted checkout:

1. :meth:`Gateway.create` turns a :class:`~booking.payments.intent.PaymentIntent`
   into a :class:`CheckoutSession` (a URL to send the browser to, or form
   fields to POST there).
2. The gateway sends the browser back to ``intent.return_url``. Those
   parameters passed through the patient's browser, so
   :meth:`Gateway.verify_callback` proves them (HMAC or an inquiry) before a
   :class:`VerifiedResult` exists. Nothing else may move an intent.
3. The gateway may also call us server to server;
   :meth:`Gateway.parse_webhook` verifies and parses that into a
   :class:`WebhookEvent` whose ``event_id`` the caller deduplicates on.
4. :meth:`Gateway.inquire` asks the gateway for the truth (expiry sweeps,
   lost callbacks); :meth:`Gateway.refund` gives money back.

Times are parameters (``now``), never read here.

Signed webhooks (card gateway and sandbox share this scheme, so one verifier
serves both) follow Stripe's published recipe for ``Stripe-Signature``:
header ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``; the signed payload is the
ASCII timestamp, a ``.``, then the raw body bytes exactly as received;
``v1`` is the lowercase hex HMAC-SHA256 of that payload keyed with the
endpoint secret; other schemes (``v0``) are ignored; any ``v1`` matching any
configured secret passes (secret rotation), compared in constant time; the
timestamp must be within a tolerance of ``now`` (300 s by default). The
recipe itself is :mod:`wadud.signing` (room and notification webhooks use it
too); this module adds the header names, the typed errors and the clock.
"""

from __future__ import annotations

import enum
import secrets
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from booking.payments.errors import (
    AmountMismatch,
    InvalidSignature,
    MalformedPayload,
    StaleWebhook,
    UnknownGateway,
)
from booking.payments.intent import IntentEvent, Money, PaymentIntent
from booking.payments.reach import Reach
from wadud import jsonin, signing

__all__ = [
    "BANK_TRANSFER",
    "DEFAULT_TOLERANCE",
    "PKT",
    "SIGNATURE_HEADERS",
    "CheckoutSession",
    "Gateway",
    "GatewayRegistry",
    "InquiryResult",
    "PaymentStatus",
    "RefundResult",
    "Verdict",
    "VerifiedResult",
    "WebhookEvent",
    "get_header",
    "notification_fields",
    "reference_suffix",
    "unix_seconds",
    "verify_webhook",
    "with_query",
]

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


class PaymentStatus(enum.StrEnum):
    """A gateway's verdict on one payment attempt."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: The gateway has not decided (wallet awaiting PIN, voucher awaiting
    #: cash). No intent event: wait for the webhook or inquire later.
    PENDING = "pending"


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """Where to send the patient to pay.

    ``method == "GET"``: redirect the browser to ``url``. ``method == "POST"``:
    render an auto-submitting form posting ``fields`` to ``url`` (JazzCash
    page redirection works this way).
    """

    gateway: str
    reference: str
    url: str
    method: Literal["GET", "POST"] = "GET"
    fields: Mapping[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class VerifiedResult:
    """A callback whose origin has been proven; only these may move an intent."""

    gateway: str
    reference: str
    status: PaymentStatus
    amount: Money | None
    gateway_code: str = ""
    message: str = ""
    raw: Mapping[str, str] = field(default_factory=dict)

    @property
    def event(self) -> IntentEvent | None:
        """The intent event this result stands for, None while pending."""
        return _STATUS_EVENT.get(self.status)

    def check_amount(self, expected: Money) -> None:
        """Raise :class:`AmountMismatch` unless the gateway confirmed ``expected``.

        A correctly signed result for the wrong amount is the classic
        tampered-checkout attack (edit the amount before the hash is made by a
        careless merchant), so a succeeded result must name the amount.
        """
        if self.amount is None:
            if self.status is PaymentStatus.SUCCEEDED:
                raise AmountMismatch(
                    f"{self.gateway} did not confirm an amount for {self.reference}"
                )
            return
        if self.amount != expected:
            raise AmountMismatch(f"{self.gateway} confirmed {self.amount}, intent asked {expected}")

    @classmethod
    def of_inquiry(cls, answer: InquiryResult, params: Mapping[str, str]) -> VerifiedResult:
        """A return the browser brought (``params``), proven by asking the
        gateway: the verdict is the inquiry's ``answer``, nothing of ``params``."""
        return cls(*_outcome(answer), dict(params))


_STATUS_EVENT: Final = MappingProxyType(
    {
        PaymentStatus.SUCCEEDED: IntentEvent.VERIFIED_SUCCESS,
        PaymentStatus.FAILED: IntentEvent.VERIFIED_FAILURE,
    }
)


@dataclass(frozen=True, slots=True)
class InquiryResult:
    """The gateway's own answer about a reference (authoritative, no browser involved)."""

    gateway: str
    reference: str
    status: PaymentStatus
    amount: Money | None = None
    gateway_code: str = ""
    message: str = ""
    #: The gateway's id of the captured payment when it differs from the
    #: checkout reference (card gateways refund by payment id).
    payment_id: str | None = None

    @property
    def event(self) -> IntentEvent | None:
        return _STATUS_EVENT.get(self.status)


@dataclass(frozen=True, slots=True)
class RefundResult:
    """What the gateway said about one refund request.

    A refusal is ``succeeded=False`` with the gateway's code, not an exception:
    the gateway answered, the caller records it and does not post a ledger
    refund. Transport failures raise :class:`~booking.payments.errors.GatewayError`.
    """

    gateway: str
    reference: str
    amount: Money
    succeeded: bool
    refund_id: str | None = None
    gateway_code: str = ""
    message: str = ""

    @classmethod
    def refused(
        cls, gateway: str, reference: str, amount: Money, code: str, message: str = ""
    ) -> RefundResult:
        """The gateway's (or the adapter's own) no, with why."""
        return cls(gateway, reference, amount, False, gateway_code=code, message=message)


def _outcome(
    answer: VerifiedResult | InquiryResult,
) -> tuple[str, str, PaymentStatus, Money | None, str, str]:
    """What a proven callback or an inquiry says, in the order :class:`VerifiedResult`
    and :class:`Verdict` take it: gateway, reference, status, amount, code, message."""
    return (
        answer.gateway,
        answer.reference,
        answer.status,
        answer.amount,
        answer.gateway_code,
        answer.message,
    )


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified server-to-server notification.

    ``event_id`` is what the caller deduplicates on (gateways redeliver until
    they get a 2xx). ``status`` is None for events that are not a payment
    verdict (refund notices and the like); ``type`` carries the gateway's name.
    """

    gateway: str
    event_id: str
    type: str
    reference: str | None
    status: PaymentStatus | None
    amount: Money | None
    created_at: datetime | None
    payload: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)

    @property
    def event(self) -> IntentEvent | None:
        return None if self.status is None else _STATUS_EVENT.get(self.status)


@runtime_checkable
class Gateway(Protocol):
    """What every payment gateway adapter offers. All I/O is async."""

    name: str

    async def create(self, intent: PaymentIntent) -> CheckoutSession:
        """Open a hosted checkout for ``intent``."""
        ...

    async def verify_callback(
        self, params: Mapping[str, str], headers: Mapping[str, str], now: datetime
    ) -> VerifiedResult:
        """Prove the browser's return parameters; raise InvalidSignature if forged."""
        ...

    async def inquire(self, reference: str) -> InquiryResult:
        """Ask the gateway for the status of ``reference``."""
        ...

    async def refund(
        self, reference: str, amount: Money, *, idempotency_key: str | None = None
    ) -> RefundResult:
        """Refund ``amount`` of the payment under ``reference``.

        ``idempotency_key`` (our refund's id) makes a retried call safe where
        the gateway supports it; where it does not, inquire before retrying.
        """
        ...

    async def parse_webhook(
        self, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> WebhookEvent:
        """Verify and parse a server-to-server notification."""
        ...


# --- the shared Stripe-style webhook signature -----------------------------

#: Header names carrying the signature, ours first; Stripe's is accepted so a
#: Stripe-compatible card processor can post to us unchanged.
SIGNATURE_HEADERS: Final = ("Wadud-Signature", "Stripe-Signature")
DEFAULT_TOLERANCE: Final = timedelta(seconds=300)
_TIMESTAMP_DIGITS: Final = 12


def unix_seconds(now: datetime) -> int:
    """Whole Unix seconds of an aware datetime (naive ones would use the host zone)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return int(now.timestamp())


@dataclass(frozen=True, slots=True)
class Verdict:
    """A proven gateway outcome (callback, webhook or inquiry), whatever its source."""

    gateway: str
    reference: str
    status: PaymentStatus
    amount: Money | None
    code: str = ""
    message: str = ""
    source: str = ""

    @property
    def event(self) -> IntentEvent | None:
        """The intent event this verdict stands for, None while pending."""
        return _STATUS_EVENT.get(self.status)

    @classmethod
    def of_callback(cls, result: VerifiedResult) -> Verdict:
        return cls(*_outcome(result), "callback")

    @classmethod
    def of_inquiry(cls, answer: InquiryResult) -> Verdict:
        return cls(*_outcome(answer), "inquiry")

    @classmethod
    def of_webhook(cls, event: WebhookEvent) -> Verdict:
        assert event.reference is not None
        assert event.status is not None
        return cls(
            event.gateway,
            event.reference,
            event.status,
            event.amount,
            event.type,
            "",
            f"webhook {event.event_id}",
        )

    def check_amount(self, expected: Money) -> None:
        VerifiedResult(self.gateway, self.reference, self.status, self.amount).check_amount(
            expected
        )

    @property
    def detail(self) -> dict[str, str]:
        """What the intent's history records of the verdict that moved it."""
        return {"source": self.source, "code": self.code, "message": self.message}


#: What :func:`reference_suffix` draws from: what every gateway's reference
#: field takes (JazzCash's pp_TxnRefNo, EasyPaisa's orderRefNum).
_REFERENCE_CHARS: Final = string.digits + string.ascii_uppercase


def reference_suffix(length: int = 5) -> str:
    """The random end of a reference we make for a gateway, after its time
    stamp. Five digits (what it was) collided in a benchmark at 75 payments
    a second (a 409 for the patient); five letters or digits are 600 times
    as many, and the unique (gateway, reference) constraint still backs them."""
    return "".join(secrets.choice(_REFERENCE_CHARS) for _ in range(length))


def with_query(url: str, params: Mapping[str, str]) -> str:
    """``url`` with ``params`` added to its query: where a gateway sends the
    browser back, with what it says (the URL's own parameters kept)."""
    parts = urlsplit(url)
    query = f"{parts.query}&{urlencode(params)}" if parts.query else urlencode(params)
    return urlunsplit(parts._replace(query=query))


def get_header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts too (RFC 9110 §5.1)."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def notification_fields(
    body: bytes,
    headers: Mapping[str, str],
    *,
    what: str,
    from_json: Callable[[Mapping[str, Any]], dict[str, str]],
    strict: bool = False,
) -> dict[str, str]:
    """The fields of a gateway's notification, posted as a JSON object (the
    ``Content-Type`` says JSON, or the body starts with ``{``) or as a form.

    ``from_json`` turns the object into strings the gateway's way; ``strict``
    refuses a malformed form rather than skipping its bad pairs. Raises
    :class:`MalformedPayload` naming ``what`` ("JazzCash IPN")."""
    try:
        text = body.decode("utf-8")
        content_type = get_header(headers, "Content-Type") or ""
        if "json" in content_type or text.lstrip().startswith("{"):
            data = jsonin.loads(text, "the JSON")
            if not isinstance(data, dict):
                raise MalformedPayload(f"{what} is not a JSON object")
            return from_json(data)
        return dict(parse_qsl(text, keep_blank_values=True, strict_parsing=strict))
    except (UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, MalformedPayload):
            raise
        raise MalformedPayload(f"{what} body: {exc}") from None


def verify_webhook(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Sequence[str],
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> int:
    """Verify a Stripe-style signed body; return its signed Unix timestamp.

    The signature is checked before the timestamp so an unauthenticated sender
    learns nothing about our clock. Unlike Stripe's libraries, a timestamp too
    far in the *future* is refused as well: a sender whose clock runs ahead
    could otherwise mint messages that stay valid for longer than the tolerance.
    Raises :class:`InvalidSignature` or :class:`StaleWebhook`.
    """
    if not secrets:
        raise InvalidSignature("no webhook secret configured")
    value = None
    for name in SIGNATURE_HEADERS:
        value = get_header(headers, name)
        if value is not None:
            break
    if value is None:
        raise InvalidSignature(f"missing {SIGNATURE_HEADERS[0]} header")
    try:
        timestamp, candidates = signing.parse(value, digits=_TIMESTAMP_DIGITS)
    except signing.BadSignature as exc:
        raise InvalidSignature(f"signature header: {exc}") from None
    if not signing.matches(body, timestamp, candidates, secrets):
        raise InvalidSignature("no v1 signature matches a configured secret")
    age = unix_seconds(now) - timestamp
    if abs(age) > tolerance.total_seconds():
        raise StaleWebhook(f"signature timestamp is {age} s from now, tolerance {tolerance}")
    return timestamp


# --- registry --------------------------------------------------------------

#: Pakistan time (UTC+05:00, no daylight saving since 2009): the local time
#: that JazzCash's and EasyPaisa's fields are written in.
PKT: Final = timezone(timedelta(hours=5), "PKT")

#: The ``gateway`` column of bank transfer intents. No adapter stands behind
#: it: finance confirms a transfer from the bank's statement and sends money
#: back by hand (:mod:`booking.payments.transfers`).
BANK_TRANSFER: Final = "bank_transfer"


class GatewayRegistry:
    """Gateway name -> adapter. Names are the ``gateway`` column of intents."""

    def __init__(self, gateways: Sequence[Gateway] = ()) -> None:
        self._gateways: dict[str, Gateway] = {}
        #: Which of them answer (the inquiry rounds back off from the rest).
        self.reach = Reach()
        for gateway in gateways:
            self.register(gateway)

    def register(self, gateway: Gateway) -> None:
        if gateway.name in self._gateways:
            raise ValueError(f"gateway {gateway.name!r} registered twice")
        self._gateways[gateway.name] = gateway

    def get(self, name: str) -> Gateway:
        try:
            return self._gateways[name]
        except KeyError:
            raise UnknownGateway(f"no payment gateway named {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._gateways

    def names(self) -> list[str]:
        return sorted(self._gateways)
