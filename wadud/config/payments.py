"""The ``[payments]`` table: gateways' credentials, commissions and limits.

A base of :class:`wadud.config.Settings`, so a reader still asks
``settings.payments_...``; here because the table is the longest one
(docs/configuration.md, "payments")."""

from __future__ import annotations

from dataclasses import dataclass

from wadud.config.fields import setting

__all__ = ["PaymentsSettings"]


@dataclass(frozen=True)
class PaymentsSettings:
    payments_default_gateway: str = setting("sandbox", "Gateway used when a payment names none.")
    payments_sandbox_secret: str = setting(
        "", "Signs sandbox checkout callbacks. Empty: derived from SECRET_KEY."
    )
    payments_platform_commission_bp: int = setting(
        1500, "Platform commission in basis points (1500 = 15%) when a clinic sets none."
    )
    payments_jazzcash_merchant_id: str = setting("", "JazzCash merchant id.")
    payments_jazzcash_password: str = setting("", "JazzCash password.")
    payments_jazzcash_integrity_salt: str = setting(
        "", "JazzCash integrity salt (the secure-hash key)."
    )
    payments_jazzcash_endpoint: str = setting("", "JazzCash API base URL (sandbox or live).")
    payments_card_api_base: str = setting("", "Card gateway API base URL.")
    payments_card_api_key: str = setting("", "Card gateway API key.")
    payments_card_webhook_secrets: list[str] = setting(
        [],
        "Card gateway webhook signing secrets, comma separated; all verify, so a secret"
        " can rotate without dropping events.",
    )
    payments_easypaisa_store_id: str = setting(
        "",
        "EasyPaisa store id. Empty: EasyPaisa is offered through the built-in simulator"
        " (see PAYMENTS_EASYPAISA_SIMULATOR).",
    )
    payments_easypaisa_hash_key: str = setting(
        "", "EasyPaisa hash key from the merchant portal (16, 24 or 32 characters)."
    )
    payments_easypaisa_username: str = setting(
        "", "EasyPaisa Open API username (the Credentials header)."
    )
    payments_easypaisa_password: str = setting("", "EasyPaisa Open API password.")
    payments_easypaisa_account_num: str = setting(
        "", "The merchant's EasyPaisa account number (sent on inquiries)."
    )
    payments_easypaisa_endpoint: str = setting(
        "",
        "EasyPaisa base URL. Empty: production, https://easypay.easypaisa.com.pk (staging:"
        " https://easypaystg.easypaisa.com.pk).",
    )
    payments_easypaisa_simulator: bool = setting(
        True,
        "With no EasyPaisa store configured, offer the easypaisa and easypaisa_ma gateways"
        " through the built-in simulator at /easypaisa-sim (no money moves). Turn off in"
        " production.",
    )
    payments_easypaisa_inquiry_interval: float = setting(
        60.0,
        "Seconds between EasyPaisa inquiry rounds, which settle payments whose IPN never"
        " came (one replica runs each round, under an advisory lock). 0: no rounds.",
    )
    payments_webhook_tolerance: int = setting(
        300, "Oldest webhook signature timestamp accepted, seconds."
    )
    payments_bank_transfer_hold_hours: float = setting(
        24.0,
        "How long a booking paid by bank transfer stays held for the transfer to arrive"
        " (never past the slot's start).",
    )
    payments_bank_transfer_bank_name: str = setting(
        "", "Bank transfer: the platform's bank, shown to patients."
    )
    payments_bank_transfer_account_title: str = setting(
        "", "Bank transfer: the platform's account title."
    )
    payments_bank_transfer_account_number: str = setting(
        "", "Bank transfer: the platform's account number."
    )
    payments_bank_transfer_iban: str = setting(
        "",
        "Bank transfer: the platform's IBAN. Bank transfer is offered when this or the"
        " account number is set.",
    )
    payments_bank_transfer_proof_max_bytes: int = setting(
        5 * 1_048_576, "Largest proof of payment (image or PDF) a patient may upload."
    )
    payments_bank_transfer_statement_max_bytes: int = setting(
        2 * 1_048_576, "Largest CSV bank statement finance staff may import."
    )
