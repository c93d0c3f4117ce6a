"""The payment gateways a process uses: which the configuration asks for,
built once.

The one module that knows every adapter. The payments app's assembly
(:mod:`booking.payments.http`) builds the registry in a cleanup context and
hands it to what needs it: the handlers and rounds read it from the app, and
a booking's cancellation gets a refunder bound to it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp

from booking.payments.gateway import GatewayRegistry
from booking.payments.gateways import easypaisa
from booking.payments.gateways.card import CardGateway, CardSettings
from booking.payments.gateways.easypaisa import EasyPaisaSettings
from booking.payments.gateways.jazzcash import JazzCashGateway, JazzCashSettings
from booking.payments.gateways.sandbox import SandboxGateway, SandboxSettings
from wadud.config import Settings

__all__ = [
    "PaymentSettings",
    "build_registry",
    "gateways",
    "payment_settings",
    "sandbox_secret",
]


@dataclass(frozen=True, slots=True)
class PaymentSettings:
    """Which gateways this deployment offers; None means not configured."""

    sandbox: SandboxSettings | None = None
    jazzcash: JazzCashSettings | None = None
    card: CardSettings | None = None
    #: Registers two gateways, its hosted checkout and its mobile-account flow.
    easypaisa: EasyPaisaSettings | None = None


def sandbox_secret(settings: Settings) -> str:
    """The sandbox signing secret: configured, or derived from ``secret_key``.

    Derived with HMAC under a purpose label so the sandbox secret reveals
    nothing about the key that signs access tokens.
    """
    if settings.payments_sandbox_secret:
        return settings.payments_sandbox_secret
    return hmac.new(
        settings.secret_key.encode(), b"wadud/payments/sandbox", hashlib.sha256
    ).hexdigest()


def payment_settings(settings: Settings) -> PaymentSettings:
    """Which gateways the configuration asks for: the sandbox always, the
    others when their credentials are filled in."""
    tolerance = timedelta(seconds=settings.payments_webhook_tolerance)
    sandbox = SandboxSettings(
        secret=sandbox_secret(settings), base_url=settings.base_url, tolerance=tolerance
    )
    jazzcash = None
    if (
        settings.payments_jazzcash_merchant_id
        and settings.payments_jazzcash_password
        and settings.payments_jazzcash_integrity_salt
    ):
        extra: dict[str, Any] = {}
        base = settings.payments_jazzcash_endpoint.rstrip("/")
        if base:
            extra = {
                "checkout_url": f"{base}/CustomerPortal/transactionmanagement/merchantform/",
                "inquiry_url": f"{base}/ApplicationAPI/API/PaymentInquiry/Inquire",
                "refund_url": f"{base}/ApplicationAPI/API/Purchase/domwalletrefundtransaction",
            }
        jazzcash = JazzCashSettings(
            merchant_id=settings.payments_jazzcash_merchant_id,
            password=settings.payments_jazzcash_password,
            integrity_salt=settings.payments_jazzcash_integrity_salt,
            **extra,
        )
    card = None
    if (
        settings.payments_card_api_base
        and settings.payments_card_api_key
        and settings.payments_card_webhook_secrets
    ):
        card = CardSettings(
            api_base=settings.payments_card_api_base,
            api_key=settings.payments_card_api_key,
            webhook_secrets=tuple(settings.payments_card_webhook_secrets),
            tolerance=tolerance,
        )
    return PaymentSettings(
        sandbox=sandbox, jazzcash=jazzcash, card=card, easypaisa=easypaisa.from_config(settings)
    )


def build_registry(settings: Settings, session: Any = None) -> GatewayRegistry:
    """Every configured gateway; ``session`` (an aiohttp ClientSession owned by
    the caller) serves the remote ones."""
    return gateways(payment_settings(settings), session)


def gateways(
    settings: PaymentSettings, session: aiohttp.ClientSession | None = None
) -> GatewayRegistry:
    """Build every gateway ``settings`` configures: the one place that knows
    the adapters (they import the interface, :mod:`.gateway`, not this).

    ``session`` is owned by the caller (opened in the app's cleanup_ctx);
    the HTTP gateways (JazzCash, card, EasyPaisa) require it.
    """
    registry = GatewayRegistry()
    if settings.sandbox is not None:
        registry.register(SandboxGateway(settings.sandbox))
    if settings.jazzcash is not None or settings.card is not None:
        if session is None:
            raise ValueError("the JazzCash and card gateways need an aiohttp.ClientSession")
        if settings.jazzcash is not None:
            registry.register(JazzCashGateway(settings.jazzcash, session))
        if settings.card is not None:
            registry.register(CardGateway(settings.card, session))
    if settings.easypaisa is not None:
        if session is None:
            raise ValueError("the EasyPaisa gateways need an aiohttp.ClientSession")
        for flow in (easypaisa.HOSTED, easypaisa.MOBILE):
            registry.register(easypaisa.EasyPaisaGateway(settings.easypaisa, session, flow))
    return registry
