"""The built-in sandbox gateway: a hosted checkout that lives on our own server.

It behaves like a real gateway so the whole payment flow (and its tests) runs
with no account anywhere:

* :meth:`SandboxGateway.create` returns ``{base_url}/sandbox/checkout/{reference}``.
  The page at that path is an HTTP handler (written elsewhere); it shows
  :meth:`SandboxGateway.checkout` and, on "pay" or "decline", calls
  :meth:`SandboxGateway.complete` and redirects the browser to the URL it returns.
* The callback is signed like a real one. Recipe (ours, modelled on the
  JazzCash field-prefix convention): every parameter whose name starts with
  ``sbx_`` except ``sbx_signature`` is taken; each name and value is
  percent-encoded (RFC 3986, nothing left safe) so ``&`` and ``=`` in values
  cannot shift field boundaries; ``name=value`` pairs are sorted by name and
  joined with ``&``; ``sbx_signature`` is the lowercase hex HMAC-SHA256 of that
  string keyed with the sandbox secret. ``sbx_ts`` (Unix seconds) must be
  within the tolerance of ``now``. Parameters without the prefix (ones already
  on the intent's ``return_url``) are neither signed nor read.
* :meth:`SandboxGateway.webhook` builds the server-to-server notification the
  sandbox "sends", signed with the Stripe-style header of
  :func:`wadud.signing.sign`, so the card gateway's
  verifier serves both.

State: the sandbox keeps its payments in a ``MutableMapping`` of
:class:`SandboxPayment`, an in-process dict by default. That is right for
``wadud serve`` and tests; several API replicas must pass a shared mapping
(or route sandbox traffic to one process), since :meth:`inquire`,
:meth:`refund` and :meth:`complete` need the record. :meth:`verify_callback`
and :meth:`parse_webhook` do not: their messages are self-contained.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

from booking.payments.errors import (
    InvalidSignature,
    MalformedPayload,
    StaleWebhook,
    UnknownReference,
)
from booking.payments.gateway import (
    DEFAULT_TOLERANCE,
    CheckoutSession,
    InquiryResult,
    PaymentStatus,
    RefundResult,
    VerifiedResult,
    WebhookEvent,
    unix_seconds,
    verify_webhook,
    with_query,
)
from booking.payments.intent import Money, PaymentIntent, refund_event
from wadud import jsonin, signing

__all__ = [
    "CHECKOUT_PATH",
    "PREFIX",
    "SIGNATURE_FIELD",
    "SandboxGateway",
    "SandboxPayment",
    "SandboxSettings",
    "canonical_string",
    "sign_fields",
    "verify_fields",
]

PREFIX: Final = "sbx_"
SIGNATURE_FIELD: Final = "sbx_signature"
CHECKOUT_PATH: Final = "/sandbox/checkout/{reference}"
_REQUIRED: Final = ("sbx_reference", "sbx_status", "sbx_amount", "sbx_currency", "sbx_ts")


# --- pure signing ----------------------------------------------------------


def canonical_string(fields: Mapping[str, str]) -> str:
    """The string the sandbox callback signature covers (see module docstring)."""
    pairs = sorted(
        (quote(name, safe=""), quote(value, safe=""))
        for name, value in fields.items()
        if name.startswith(PREFIX) and name != SIGNATURE_FIELD
    )
    return "&".join(f"{name}={value}" for name, value in pairs)


def sign_fields(fields: Mapping[str, str], secret: str) -> str:
    """Lowercase hex HMAC-SHA256 of :func:`canonical_string` keyed with ``secret``."""
    message = canonical_string(fields).encode("utf-8")
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_fields(
    fields: Mapping[str, str],
    secret: str,
    now: datetime,
    tolerance: timedelta = DEFAULT_TOLERANCE,
) -> None:
    """Raise unless ``fields`` carry a valid, fresh ``sbx_signature``.

    Signature first (constant-time), then freshness, as for webhooks.
    """
    given = fields.get(SIGNATURE_FIELD)
    if not given:
        raise InvalidSignature("sandbox callback is not signed")
    expected = sign_fields(fields, secret).encode("ascii")
    if not hmac.compare_digest(expected, given.encode("utf-8", "surrogateescape")):
        raise InvalidSignature("sandbox callback signature does not match")
    ts = fields.get("sbx_ts", "")
    if not ts.isascii() or not ts.isdigit():
        raise MalformedPayload("sandbox callback has no integer sbx_ts")
    age = unix_seconds(now) - int(ts)
    if abs(age) > tolerance.total_seconds():
        raise StaleWebhook(f"sandbox callback is {age} s old, tolerance {tolerance}")


# --- the gateway -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    """``base_url``: our public origin, where ``/sandbox/checkout/...`` is served."""

    secret: str
    base_url: str
    #: Webhook signing secrets; the first signs, any verifies. Empty: ``secret``.
    webhook_secrets: tuple[str, ...] = ()
    tolerance: timedelta = DEFAULT_TOLERANCE
    name: str = "sandbox"

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the sandbox needs a non-empty secret")


@dataclass(slots=True)
class SandboxPayment:
    """One sandbox checkout: the record a real gateway would keep on its side."""

    reference: str
    intent_id: str
    amount: Money
    description: str
    return_url: str
    expires_at: datetime
    status: PaymentStatus = PaymentStatus.PENDING
    code: str = ""
    completed_at: datetime | None = None
    refunds: list[Money] = field(default_factory=list)
    refund_keys: dict[str, RefundResult] = field(default_factory=dict)

    @property
    def refunded(self) -> Money:
        total = Money(0, self.amount.currency)
        for item in self.refunds:
            total += item
        return total


def _event_id(reference: str, kind: str) -> str:
    # Deterministic: a redelivery of the same notification keeps its id, so
    # the receiver's dedup works exactly as with a real gateway.
    return "evt_" + hashlib.sha256(f"{reference}\0{kind}".encode()).hexdigest()[:24]


class SandboxGateway:
    """A hosted-checkout gateway served by Wadud itself (see module docstring)."""

    def __init__(
        self,
        settings: SandboxSettings,
        records: MutableMapping[str, SandboxPayment] | None = None,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._records: MutableMapping[str, SandboxPayment] = {} if records is None else records

    @property
    def _webhook_secrets(self) -> tuple[str, ...]:
        return self.settings.webhook_secrets or (self.settings.secret,)

    def _record(self, reference: str) -> SandboxPayment:
        try:
            return self._records[reference]
        except KeyError:
            raise UnknownReference(f"no sandbox payment {reference!r}") from None

    async def create(self, intent: PaymentIntent) -> CheckoutSession:
        reference = "sbx_" + secrets.token_urlsafe(16)
        self._records[reference] = SandboxPayment(
            reference=reference,
            intent_id=intent.id,
            amount=intent.amount,
            description=intent.description,
            return_url=intent.return_url,
            expires_at=intent.expires_at,
        )
        base = self.settings.base_url.rstrip("/")
        return CheckoutSession(
            gateway=self.name,
            reference=reference,
            url=base + CHECKOUT_PATH.format(reference=quote(reference, safe="")),
            expires_at=intent.expires_at,
        )

    def checkout(self, reference: str) -> SandboxPayment:
        """What the checkout page shows (amount, description, expiry)."""
        return self._record(reference)

    def callback_fields(self, reference: str, now: datetime) -> dict[str, str]:
        """The signed parameters of the redirect back to the intent's return URL."""
        record = self._record(reference)
        fields = {
            "sbx_reference": record.reference,
            "sbx_intent": record.intent_id,
            "sbx_status": record.status.value,
            "sbx_code": record.code,
            "sbx_amount": str(record.amount.amount_minor),
            "sbx_currency": record.amount.currency.value,
            "sbx_ts": str(unix_seconds(now)),
        }
        fields[SIGNATURE_FIELD] = sign_fields(fields, self.settings.secret)
        return fields

    def complete(self, reference: str, paid: bool, now: datetime) -> str:
        """Settle the checkout as the patient chose; return the redirect URL.

        Past ``expires_at`` the payment fails with code ``expired`` whatever
        was chosen, like a real gateway. Completing twice (a reloaded page)
        re-signs the first outcome rather than changing it.
        """
        record = self._record(reference)
        if record.status is PaymentStatus.PENDING:
            if now >= record.expires_at:
                record.status, record.code = PaymentStatus.FAILED, "expired"
            elif paid:
                record.status, record.code = PaymentStatus.SUCCEEDED, "approved"
            else:
                record.status, record.code = PaymentStatus.FAILED, "declined"
            record.completed_at = now
        return with_query(record.return_url, self.callback_fields(reference, now))

    def webhook(self, reference: str, now: datetime) -> tuple[bytes, dict[str, str]]:
        """The notification the sandbox sends for a settled payment: (body, headers)."""
        record = self._record(reference)
        if record.status is PaymentStatus.PENDING:
            raise ValueError("a pending sandbox payment sends no webhook")
        kind = f"payment.{record.status.value}"
        created = unix_seconds(record.completed_at or now)
        event = {
            "id": _event_id(reference, kind),
            "type": kind,
            "created": created,
            "data": {
                "reference": reference,
                "intent": record.intent_id,
                "status": record.status.value,
                "code": record.code,
                "amount": record.amount.amount_minor,
                "currency": record.amount.currency.value,
            },
        }
        body = json.dumps(event, separators=(",", ":"), sort_keys=True).encode("utf-8")
        header = signing.sign(body, self._webhook_secrets[0], unix_seconds(now))
        return body, {"Content-Type": "application/json", "Wadud-Signature": header}

    async def verify_callback(
        self, params: Mapping[str, str], headers: Mapping[str, str], now: datetime
    ) -> VerifiedResult:
        verify_fields(params, self.settings.secret, now, self.settings.tolerance)
        missing = [name for name in _REQUIRED if name not in params]
        if missing:
            raise MalformedPayload(f"sandbox callback lacks {', '.join(missing)}")
        try:
            status = PaymentStatus(params["sbx_status"])
        except ValueError:
            raise MalformedPayload(f"unknown sandbox status {params['sbx_status']!r}") from None
        return VerifiedResult(
            gateway=self.name,
            reference=params["sbx_reference"],
            status=status,
            amount=Money.parse_minor(params["sbx_amount"], params["sbx_currency"]),
            gateway_code=params.get("sbx_code", ""),
            raw=dict(params),
        )

    async def parse_webhook(
        self, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> WebhookEvent:
        timestamp = verify_webhook(
            body, headers, self._webhook_secrets, now, self.settings.tolerance
        )
        try:
            event: Any = jsonin.loads(body, "the JSON")
            data = event["data"]
            status = PaymentStatus(data["status"])
            amount = Money.parse_minor(str(data["amount"]), data["currency"])
            event_id, kind, reference = str(event["id"]), str(event["type"]), str(data["reference"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedPayload(f"sandbox webhook body: {exc}") from None
        return WebhookEvent(
            gateway=self.name,
            event_id=event_id,
            type=kind,
            reference=reference,
            status=status,
            amount=amount,
            created_at=datetime.fromtimestamp(timestamp, UTC),
            payload=event,
        )

    async def inquire(self, reference: str) -> InquiryResult:
        record = self._record(reference)
        return InquiryResult(
            gateway=self.name,
            reference=reference,
            status=record.status,
            amount=record.amount,
            gateway_code=record.code,
        )

    async def refund(
        self, reference: str, amount: Money, *, idempotency_key: str | None = None
    ) -> RefundResult:
        """Refund against the record; over-refunds raise like the ledger would.

        A repeated ``idempotency_key`` returns the first answer, as a real
        gateway does.
        """
        record = self._record(reference)
        if idempotency_key is not None and idempotency_key in record.refund_keys:
            return record.refund_keys[idempotency_key]
        if record.status is not PaymentStatus.SUCCEEDED:
            return RefundResult.refused(
                self.name, reference, amount, "not_captured", f"payment is {record.status.value}"
            )
        refund_event(record.amount, record.refunded, amount)  # raises on over-refund
        record.refunds.append(amount)
        result = RefundResult(
            gateway=self.name,
            reference=reference,
            amount=amount,
            succeeded=True,
            refund_id=f"{reference}_r{len(record.refunds)}",
            gateway_code="refunded",
        )
        if idempotency_key is not None:
            record.refund_keys[idempotency_key] = result
        return result
