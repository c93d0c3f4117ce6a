"""Card gateway adapter with Stripe-style hosted checkout and signed webhooks.

The processor is reached over a Stripe-compatible REST shape at a configurable
``api_base`` (form-encoded requests, ``Authorization: Bearer``, JSON answers,
``Idempotency-Key`` on writes):

* ``POST /v1/checkout/sessions`` -> ``{"id", "url", ...}``: the hosted page;
* ``GET /v1/checkout/sessions/{id}`` -> ``{"status", "payment_status",
  "amount_total", "currency", "payment_intent"}``;
* ``POST /v1/refunds`` with ``payment_intent`` and ``amount`` ->
  ``{"id", "status"}``, or ``{"error": {"code", "message"}}`` with a 4xx.

The browser comes back with ``session_id`` only, and that is all we take from
it: :meth:`CardGateway.verify_callback` asks the API for the session, so a
forged redirect proves nothing. Webhooks carry the ``Wadud-Signature`` (or
``Stripe-Signature``) header verified by
:func:`booking.payments.gateway.verify_webhook`; the recipe is in that
module's docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

import aiohttp

from booking.payments.errors import GatewayError, MalformedPayload
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
)
from booking.payments.gateways.json_api import request_json
from booking.payments.intent import Currency, Money, PaymentIntent
from wadud import jsonin

__all__ = ["CardGateway", "CardSettings", "session_status"]

#: Stripe's template, filled in by the processor when it redirects back.
SESSION_PLACEHOLDER: Final = "{CHECKOUT_SESSION_ID}"

#: Event types that carry a payment verdict, and which.
_VERDICTS: Final = {
    "checkout.session.async_payment_succeeded": PaymentStatus.SUCCEEDED,
    "checkout.session.async_payment_failed": PaymentStatus.FAILED,
    "checkout.session.expired": PaymentStatus.FAILED,
}


@dataclass(frozen=True, slots=True)
class CardSettings:
    api_base: str
    api_key: str
    #: Webhook endpoint secrets; several during a rotation, any one verifies.
    webhook_secrets: tuple[str, ...]
    tolerance: timedelta = DEFAULT_TOLERANCE
    timeout: timedelta = timedelta(seconds=15)
    name: str = "card"

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ValueError("the card gateway needs an api_key")
        if not self.webhook_secrets or not all(self.webhook_secrets):
            raise ValueError("the card gateway needs at least one non-empty webhook secret")


def session_status(session: Mapping[str, Any]) -> PaymentStatus:
    """A checkout session object's verdict.

    ``payment_status == "paid"`` is the only success (``status == "complete"``
    alone is not: delayed methods complete unpaid); an ``expired`` session is
    a failure; anything else is still pending.
    """
    if session.get("payment_status") == "paid":
        return PaymentStatus.SUCCEEDED
    if session.get("status") == "expired":
        return PaymentStatus.FAILED
    return PaymentStatus.PENDING


def _session_amount(session: Mapping[str, Any]) -> Money | None:
    amount, currency = session.get("amount_total"), session.get("currency")
    if amount is None or currency is None:
        return None
    if not isinstance(amount, int) or isinstance(amount, bool) or not isinstance(currency, str):
        raise MalformedPayload("session amount_total/currency have the wrong type")
    # Stripe spells currencies in lowercase.
    return Money(amount, Currency(currency.upper()))


def _return_url(url: str) -> str:
    # Built by hand: urlencode would escape the braces the processor looks for.
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}session_id={SESSION_PLACEHOLDER}"


class CardGateway:
    """Hosted card checkout over a Stripe-style API (see module docstring).

    The ``aiohttp.ClientSession`` belongs to the caller (app cleanup_ctx).
    """

    def __init__(self, settings: CardSettings, session: aiohttp.ClientSession) -> None:
        self.settings = settings
        self.name = settings.name
        self._session = session

    async def _request(
        self,
        method: str,
        path: str,
        data: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.settings.api_key}"}
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return await request_json(
            self._session,
            method,
            self.settings.api_base.rstrip("/") + path,
            what=f"card API {method} {path}",
            limit=self.settings.timeout,
            headers=headers,
            data=data,
            only_ok=False,
        )

    @staticmethod
    def _error(body: Mapping[str, Any]) -> tuple[str, str]:
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code", "")), str(error.get("message", ""))
        return "", ""

    async def create(self, intent: PaymentIntent) -> CheckoutSession:
        """Create a hosted checkout session; idempotent per intent id.

        Asking twice for one intent (the patient reopens checkout) yields the
        processor's first session rather than a second chargeable one.
        """
        back = _return_url(intent.return_url)
        status, body = await self._request(
            "POST",
            "/v1/checkout/sessions",
            data={
                "mode": "payment",
                "client_reference_id": intent.id,
                "amount": str(intent.amount.amount_minor),
                "currency": intent.amount.currency.value.lower(),
                "description": intent.description,
                "success_url": back,
                "cancel_url": back,
                "expires_at": str(unix_seconds(intent.expires_at)),
                "metadata[intent_id]": intent.id,
            },
            idempotency_key=f"checkout-{intent.id}",
        )
        if status != 200:
            code, message = self._error(body)
            raise GatewayError(f"card checkout refused ({status} {code}): {message}")
        reference, url = body.get("id"), body.get("url")
        if not isinstance(reference, str) or not isinstance(url, str):
            raise GatewayError("card checkout answer lacks id or url")
        return CheckoutSession(
            gateway=self.name, reference=reference, url=url, expires_at=intent.expires_at
        )

    async def inquire(self, reference: str) -> InquiryResult:
        status, body = await self._request(
            "GET", f"/v1/checkout/sessions/{quote(reference, safe='')}"
        )
        if status != 200:
            code, message = self._error(body)
            raise GatewayError(
                f"card session {reference} lookup failed ({status} {code}): {message}"
            )
        try:
            amount = _session_amount(body)
        except ValueError as exc:
            raise GatewayError(f"card session {reference}: {exc}") from exc
        payment = body.get("payment_intent")
        return InquiryResult(
            gateway=self.name,
            reference=reference,
            status=session_status(body),
            amount=amount,
            gateway_code=f"{body.get('status', '')}/{body.get('payment_status', '')}",
            payment_id=payment if isinstance(payment, str) else None,
        )

    async def verify_callback(
        self, params: Mapping[str, str], headers: Mapping[str, str], now: datetime
    ) -> VerifiedResult:
        """Take ``session_id`` from the redirect and ask the API; trust nothing else."""
        reference = params.get("session_id", "")
        if not reference or reference == SESSION_PLACEHOLDER:
            raise MalformedPayload("card callback lacks session_id")
        return VerifiedResult.of_inquiry(await self.inquire(reference), params)

    async def refund(
        self, reference: str, amount: Money, *, idempotency_key: str | None = None
    ) -> RefundResult:
        """Refund part or all of the session's payment.

        Pass ``idempotency_key`` (e.g. our refund row id) so a retry after a
        timeout cannot refund twice; two *different* partial refunds of the
        same amount are legitimate, so no key is derived here.
        """
        session = await self.inquire(reference)
        if session.payment_id is None or session.status is not PaymentStatus.SUCCEEDED:
            return RefundResult.refused(
                self.name, reference, amount, "not_captured", f"session is {session.gateway_code}"
            )
        status, body = await self._request(
            "POST",
            "/v1/refunds",
            data={"payment_intent": session.payment_id, "amount": str(amount.amount_minor)},
            idempotency_key=idempotency_key,
        )
        if status != 200:
            code, message = self._error(body)
            return RefundResult.refused(self.name, reference, amount, code or str(status), message)
        refund_status = str(body.get("status", ""))
        refund_id = body.get("id")
        return RefundResult(
            gateway=self.name,
            reference=reference,
            amount=amount,
            # "pending" is accepted: the processor owes the money now.
            succeeded=refund_status in ("succeeded", "pending"),
            refund_id=refund_id if isinstance(refund_id, str) else None,
            gateway_code=refund_status,
        )

    async def parse_webhook(
        self, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> WebhookEvent:
        """Verify the signature header, then parse the Stripe-shaped event."""
        timestamp = verify_webhook(
            body, headers, self.settings.webhook_secrets, now, self.settings.tolerance
        )
        try:
            event: Any = jsonin.loads(body, "the JSON")
            event_id, kind = event["id"], event["type"]
            obj = event["data"]["object"]
            if not (isinstance(event_id, str) and isinstance(kind, str) and isinstance(obj, dict)):
                raise TypeError("id, type or data.object has the wrong type")
            is_session = obj.get("object") == "checkout.session"
            reference = obj.get("id") if is_session else None
            amount = _session_amount(obj) if is_session else None
        except (ValueError, KeyError, TypeError) as exc:
            raise MalformedPayload(f"card webhook body: {exc}") from None
        status: PaymentStatus | None
        if kind == "checkout.session.completed":
            status = session_status(obj)
        else:
            status = _VERDICTS.get(kind)
        return WebhookEvent(
            gateway=self.name,
            event_id=event_id,
            type=kind,
            reference=reference if isinstance(reference, str) else None,
            status=status,
            amount=amount,
            created_at=datetime.fromtimestamp(timestamp, UTC),
            payload=event,
        )
