"""JazzCash-style gateway: hosted page redirection, status inquiry, refund.

Secure hash recipe, as JazzCash publishes it (Sandbox documentation,
"Secure Hash"; the same recipe signs requests, callbacks and API answers):

1. take every field whose name starts with ``pp`` (the ``pp_`` fields *and*
   the merchant pass-through fields ``ppmpf_1`` .. ``ppmpf_5``), except
   ``pp_SecureHash`` itself, and drop those whose value is empty;
2. sort them by field name in ascending ordinal (ASCII, case-sensitive)
   order, so ``pp_...`` sorts before ``ppmpf_...``;
3. join the *values* with ``&`` and put the integrity salt and ``&`` in front:
   ``salt&v1&v2&...``;
4. ``pp_SecureHash`` is HMAC-SHA256 of that string keyed with the integrity
   salt, UTF-8, hex. We send uppercase hex and compare case-insensitively
   (hex is hex; third-party examples disagree on case).

Amounts are integer paisa as a decimal string (``pp_Amount``; the last two
digits are the paisa). Date-times are ``YYYYMMDDHHMMSS`` in Pakistan time.
Pakistan has kept UTC+05:00 without daylight saving since 2009, so a fixed
offset is used rather than depending on the host's tz database.

A callback's verdict is ``pp_ResponseCode``: ``000`` is success, anything
else failure (codes listed in ``JazzCashSettings.pending_codes`` are treated
as undecided instead). The JazzCash hash has no timestamp, so callbacks and
IPNs cannot be checked for freshness: replays are harmless only because intent
transitions are idempotent and webhook ids are deduplicated.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import aiohttp

from booking.payments.errors import (
    GatewayError,
    InvalidSignature,
    MalformedPayload,
    UnsupportedCurrency,
)
from booking.payments.gateway import (
    PKT,
    CheckoutSession,
    InquiryResult,
    PaymentStatus,
    RefundResult,
    VerifiedResult,
    WebhookEvent,
    notification_fields,
    reference_suffix,
)
from booking.payments.gateways.json_api import request_json
from booking.payments.intent import Currency, Money, PaymentIntent

__all__ = [
    "HASH_FIELD",
    "SUCCESS_CODE",
    "JazzCashGateway",
    "JazzCashSettings",
    "format_txn_datetime",
    "hash_string",
    "secure_hash",
    "verify_secure_hash",
]

HASH_FIELD: Final = "pp_SecureHash"
SUCCESS_CODE: Final = "000"
_SANDBOX: Final = "https://sandbox.jazzcash.com.pk"


# --- pure recipe -----------------------------------------------------------


def hash_string(fields: Mapping[str, str], salt: str) -> str:
    """``salt&v1&v2&...`` over the non-empty ``pp*`` fields sorted by name (step 1-3)."""
    values = [
        fields[name]
        for name in sorted(fields)
        if name.startswith("pp") and name != HASH_FIELD and fields[name] != ""
    ]
    return "&".join([salt, *values])


def secure_hash(fields: Mapping[str, str], salt: str) -> str:
    """Uppercase hex HMAC-SHA256 of :func:`hash_string`, keyed with the salt (step 4)."""
    message = hash_string(fields, salt).encode("utf-8")
    return hmac.new(salt.encode("utf-8"), message, hashlib.sha256).hexdigest().upper()


def verify_secure_hash(fields: Mapping[str, str], salt: str) -> None:
    """Raise :class:`InvalidSignature` unless ``pp_SecureHash`` matches (constant time)."""
    given = fields.get(HASH_FIELD, "")
    if not given:
        raise InvalidSignature("JazzCash message carries no pp_SecureHash")
    expected = secure_hash(fields, salt).encode("ascii")
    if not hmac.compare_digest(expected, given.upper().encode("utf-8", "surrogateescape")):
        raise InvalidSignature("JazzCash pp_SecureHash does not match")


def format_txn_datetime(moment: datetime) -> str:
    """``YYYYMMDDHHMMSS`` in Pakistan time, as ``pp_TxnDateTime`` wants."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("JazzCash times must be built from aware datetimes")
    return moment.astimezone(PKT).strftime("%Y%m%d%H%M%S")


def _string_fields(data: Mapping[str, Any]) -> dict[str, str]:
    """JSON answers as the str mapping the recipe works on (null counts as empty)."""
    out: dict[str, str] = {}
    for name, value in data.items():
        if value is None:
            out[name] = ""
        elif isinstance(value, str):
            out[name] = value
        elif name.startswith("pp"):
            # Re-serialising a number could change its digits and thus the hash.
            raise MalformedPayload(f"JazzCash field {name} is not a string")
    return out


# --- the gateway -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JazzCashSettings:
    merchant_id: str
    password: str
    integrity_salt: str
    checkout_url: str = f"{_SANDBOX}/CustomerPortal/transactionmanagement/merchantform/"
    inquiry_url: str = f"{_SANDBOX}/ApplicationAPI/API/PaymentInquiry/Inquire"
    refund_url: str = f"{_SANDBOX}/ApplicationAPI/API/Purchase/domwalletrefundtransaction"
    #: ``pp_MerchantMPIN`` for wallet refunds; omitted when empty.
    mpin: str = ""
    #: ``pp_TxnType``; empty lets the hosted page offer every method.
    txn_type: str = ""
    version: str = "1.1"
    language: str = "EN"
    #: Response codes to treat as "not decided yet" rather than failure.
    pending_codes: frozenset[str] = frozenset()
    timeout: timedelta = timedelta(seconds=15)
    name: str = "jazzcash"

    def __post_init__(self) -> None:
        if not (self.merchant_id and self.password and self.integrity_salt):
            raise ValueError("JazzCash needs merchant_id, password and integrity_salt")


def _default_reference(intent: PaymentIntent) -> str:
    # pp_TxnRefNo: at most 20 alphanumerics, unique per attempt. "T" + 14-digit
    # PKT time + 5 random letters or digits.
    stamp = format_txn_datetime(intent.created_at)
    return f"T{stamp}{reference_suffix()}"


_NOT_ALNUM: Final = re.compile(r"[^A-Za-z0-9]")


class JazzCashGateway:
    """JazzCash page redirection plus the JSON inquiry and refund APIs.

    The ``aiohttp.ClientSession`` belongs to the caller (app cleanup_ctx).
    """

    def __init__(
        self,
        settings: JazzCashSettings,
        session: aiohttp.ClientSession,
        reference_factory: Callable[[PaymentIntent], str] = _default_reference,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self._session = session
        self._reference_factory = reference_factory

    def _sign(self, fields: dict[str, str]) -> dict[str, str]:
        fields[HASH_FIELD] = secure_hash(fields, self.settings.integrity_salt)
        return fields

    def _status(self, code: str) -> PaymentStatus:
        if code == SUCCESS_CODE:
            return PaymentStatus.SUCCEEDED
        if code in self.settings.pending_codes:
            return PaymentStatus.PENDING
        return PaymentStatus.FAILED

    def checkout_fields(self, intent: PaymentIntent, reference: str) -> dict[str, str]:
        """The signed form the browser POSTs to the hosted page (pure)."""
        if intent.amount.currency is not Currency.PKR:
            raise UnsupportedCurrency(f"JazzCash takes PKR only, not {intent.amount.currency}")
        s = self.settings
        fields = {
            "pp_Version": s.version,
            "pp_TxnType": s.txn_type,
            "pp_Language": s.language,
            "pp_MerchantID": s.merchant_id,
            "pp_SubMerchantID": "",
            "pp_Password": s.password,
            "pp_BankID": "",
            "pp_ProductID": "",
            "pp_TxnRefNo": reference,
            "pp_Amount": str(intent.amount.amount_minor),
            "pp_TxnCurrency": Currency.PKR.value,
            "pp_TxnDateTime": format_txn_datetime(intent.created_at),
            "pp_BillReference": _NOT_ALNUM.sub("", intent.id)[:20] or reference,
            "pp_Description": intent.description,
            "pp_TxnExpiryDateTime": format_txn_datetime(intent.expires_at),
            "pp_ReturnURL": intent.return_url,
            "ppmpf_1": "",
            "ppmpf_2": "",
            "ppmpf_3": "",
            "ppmpf_4": "",
            "ppmpf_5": "",
        }
        return self._sign(fields)

    async def create(self, intent: PaymentIntent) -> CheckoutSession:
        reference = self._reference_factory(intent)
        return CheckoutSession(
            gateway=self.name,
            reference=reference,
            url=self.settings.checkout_url,
            method="POST",
            fields=self.checkout_fields(intent, reference),
            expires_at=intent.expires_at,
        )

    def _verified_fields(self, fields: Mapping[str, str]) -> None:
        verify_secure_hash(fields, self.settings.integrity_salt)
        # Our own signed checkout form is visible in the browser; without these
        # a patient could post it back as a "callback". It has no response code.
        for name in ("pp_ResponseCode", "pp_TxnRefNo"):
            if not fields.get(name):
                raise MalformedPayload(f"JazzCash callback lacks {name}")
        if fields.get("pp_MerchantID", self.settings.merchant_id) != self.settings.merchant_id:
            raise InvalidSignature("JazzCash callback is for another merchant")

    def _amount(self, fields: Mapping[str, str]) -> Money | None:
        text = fields.get("pp_Amount", "")
        if not text:
            return None
        return Money.parse_minor(text, fields.get("pp_TxnCurrency") or Currency.PKR)

    async def verify_callback(
        self, params: Mapping[str, str], headers: Mapping[str, str], now: datetime
    ) -> VerifiedResult:
        """Verify the page-redirection return POST (``now`` unused: no timestamp is signed)."""
        self._verified_fields(params)
        code = params["pp_ResponseCode"]
        return VerifiedResult(
            gateway=self.name,
            reference=params["pp_TxnRefNo"],
            status=self._status(code),
            amount=self._amount(params),
            gateway_code=code,
            message=params.get("pp_ResponseMessage", ""),
            raw=dict(params),
        )

    async def parse_webhook(
        self, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> WebhookEvent:
        """Parse an IPN: the same ``pp_`` fields, as JSON or a form body."""
        fields = notification_fields(
            body, headers, what="JazzCash IPN", from_json=_string_fields, strict=True
        )
        self._verified_fields(fields)
        reference, code = fields["pp_TxnRefNo"], fields["pp_ResponseCode"]
        rrn = fields.get("pp_RetreivalReferenceNo", "")
        return WebhookEvent(
            gateway=self.name,
            # JazzCash sends no event id; one verdict per reference (and
            # retrieval reference) is one event, so redeliveries dedupe.
            event_id=f"{reference}:{code}:{rrn}",
            type="ipn",
            reference=reference,
            status=self._status(code),
            amount=self._amount(fields),
            created_at=None,
            payload=fields,
        )

    async def _post(self, url: str, fields: dict[str, str]) -> dict[str, str]:
        _, data = await request_json(
            self._session,
            "POST",
            url,
            what="JazzCash",
            limit=self.settings.timeout,
            json=self._sign(fields),
        )
        try:
            answer = _string_fields(data)
            verify_secure_hash(answer, self.settings.integrity_salt)
        except (InvalidSignature, MalformedPayload) as exc:
            # Our caller did nothing wrong: this is a bad upstream answer (502).
            raise GatewayError(f"JazzCash answer rejected: {exc}") from exc
        return answer

    async def inquire(self, reference: str) -> InquiryResult:
        """Status Inquiry API: POST JSON ``pp_TxnRefNo``/``pp_MerchantID``/``pp_Password``.

        ``pp_ResponseCode`` says whether the inquiry itself worked (anything but
        ``000`` raises :class:`GatewayError`, never a failed payment: an
        unanswered question is not a decline); ``pp_PaymentResponseCode`` is the
        payment's own verdict.
        """
        s = self.settings
        answer = await self._post(
            s.inquiry_url,
            {"pp_TxnRefNo": reference, "pp_MerchantID": s.merchant_id, "pp_Password": s.password},
        )
        code = answer.get("pp_ResponseCode", "")
        if code != SUCCESS_CODE:
            message = answer.get("pp_ResponseMessage", "")
            raise GatewayError(f"JazzCash inquiry for {reference} refused: {code} {message}")
        payment_code = answer.get("pp_PaymentResponseCode", "")
        return InquiryResult(
            gateway=self.name,
            reference=reference,
            status=self._status(payment_code),
            amount=self._amount(answer),
            gateway_code=payment_code,
            message=answer.get("pp_PaymentResponseMessage", ""),
        )

    async def refund(
        self, reference: str, amount: Money, *, idempotency_key: str | None = None
    ) -> RefundResult:
        """Refund API: POST JSON ``pp_TxnRefNo``, ``pp_Amount`` (paisa), currency, credentials.

        The API has no idempotency key (``idempotency_key`` is accepted for the
        interface and ignored): after a timeout, inquire before retrying.
        """
        if amount.currency is not Currency.PKR:
            raise UnsupportedCurrency(f"JazzCash refunds PKR only, not {amount.currency}")
        s = self.settings
        fields = {
            "pp_TxnRefNo": reference,
            "pp_Amount": str(amount.amount_minor),
            "pp_TxnCurrency": Currency.PKR.value,
            "pp_MerchantID": s.merchant_id,
            "pp_Password": s.password,
        }
        if s.mpin:
            fields["pp_MerchantMPIN"] = s.mpin
        answer = await self._post(s.refund_url, fields)
        code = answer.get("pp_ResponseCode", "")
        return RefundResult(
            gateway=self.name,
            reference=reference,
            amount=amount,
            succeeded=code == SUCCESS_CODE,
            refund_id=answer.get("pp_RetreivalReferenceNo") or None,
            gateway_code=code,
            message=answer.get("pp_ResponseMessage", ""),
        )
