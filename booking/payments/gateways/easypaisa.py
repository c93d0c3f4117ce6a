"""EasyPaisa (Telenor Microfinance Bank's "Easypay"): hosted checkout, the
mobile-account (MA) Open API, the pull-style IPN, and the status inquiry.

Two gateways share this adapter and one set of credentials:

* ``easypaisa`` (:data:`HOSTED`), the hosted checkout ("plug-in" or
  redirection integration). :meth:`EasyPaisaGateway.create` returns a form the
  browser POSTs to ``Index.jsf``: ``storeId``, ``amount``, ``postBackURL``,
  ``orderRefNum``, ``expiryDate``, ``autoRedirect``, ``paymentMethod`` and
  ``merchantHashedReq`` (see :func:`merchant_hash`). EasyPaisa sends the
  browser to ``postBackURL`` with an ``auth_token``; the merchant posts that
  token (and ``postBackURL`` again) to ``Confirm.jsf``; the customer pays on
  EasyPaisa's page (wallet PIN, OTC token or card) and comes back to
  ``postBackURL`` with ``status``, ``desc`` and ``orderRefNumber``. That
  second hop is :mod:`booking.payments.easypaisa.http`'s postback bridge.
* ``easypaisa_ma`` (:data:`MOBILE`), the Open API's
  ``initiate-ma-transaction``: the patient types their EasyPaisa mobile
  account number on our page, EasyPaisa pushes a payment request to their
  phone, and the call answers once they approve (or decline, or time out).

Neither return is signed, so nothing the browser brings back is believed:
:meth:`EasyPaisaGateway.verify_callback` asks ``inquire-transaction`` (our
own authenticated request over TLS) and returns its answer.

The IPN is pulled, not pushed. EasyPaisa calls the IPN handler URL set in the
merchant portal with one parameter, ``url``: a link on EasyPaisa's own host
that answers the transaction's JSON when fetched. The public guide defines no
hash or signature on the notification; its authenticity is where we read it
from. :meth:`EasyPaisaGateway.parse_webhook` therefore refuses (as
:class:`InvalidSignature`, 400) any ``url`` outside :attr:`EasyPaisaSettings.ipn_base`,
fetches the record, and refuses one for another store or another order than
the link names. Deliveries are deduplicated on ``order:status:transaction``
(:attr:`WebhookEvent.event_id`), so a redelivered or replayed IPN changes
nothing, and an older status read after a newer one cannot move an intent back
(the intent machine has no such edge).

Refunds: the public Open API has no refund or reversal call (merchants
refund from the merchant portal or through their EasyPaisa account manager),
so :meth:`EasyPaisaGateway.refund` answers a refusal with code
:data:`REFUND_UNSUPPORTED`. The payments service keeps every such refund
owed by hand (:mod:`.refunds.due`): ``refused_by_gateway``, nothing posted,
until finance records it paid; money that arrives after its booking lapsed
is owed back the same way instead of being refunded automatically.

Everything taken on trust about EasyPaisa's protocol is in the block
"assumptions" below, each with where it comes from and how sure it is;
docs/api.md ("EasyPaisa") repeats the list for operators.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal
from urllib.parse import urlencode, urlsplit

import aiohttp
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from booking.payments.errors import (
    GatewayError,
    InvalidSignature,
    MalformedPayload,
    UnknownReference,
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
from wadud.config import Settings

__all__ = [
    "CONFIRM_PATH",
    "HOSTED",
    "INDEX_PATH",
    "INITIATE_MA_PATH",
    "INQUIRE_PATH",
    "IPN_HANDLER_PATH",
    "IPN_PATH",
    "MA_PAGE_PATH",
    "MOBILE",
    "POSTBACK_PATH",
    "REFUND_UNSUPPORTED",
    "SUCCESS_CODE",
    "EasyPaisaGateway",
    "EasyPaisaSettings",
    "credentials_header",
    "format_amount",
    "format_expiry",
    "from_config",
    "hash_string",
    "ipn_notification",
    "merchant_hash",
    "parse_amount",
    "payment_status",
    "read_merchant_hash",
]

# --- assumptions: everything this adapter takes on trust about EasyPaisa ---
#
# Sources: the "Easypay Merchant Integration Guide" (plug-in integration,
# Open API, IPN chapters) as quoted by public integrations (WooCommerce,
# WHMCS, OpenCart, Laravel and Omnipay modules). Sure = several independent
# sources agree; unclear = the sources disagree or say nothing, and what we
# chose instead. docs/api.md lists the same points.

#: Sure. Production and staging hosts.
LIVE_BASE: Final = "https://easypay.easypaisa.com.pk"
STAGING_BASE: Final = "https://easypaystg.easypaisa.com.pk"
#: Sure. The hosted checkout's two form targets.
INDEX_PATH: Final = "/easypay/Index.jsf"
CONFIRM_PATH: Final = "/easypay/Confirm.jsf"
#: Sure (v4 of the Open API; the guide's earlier versions used v1-v3 paths).
INITIATE_MA_PATH: Final = "/easypay-service/rest/v4/initiate-ma-transaction"
INQUIRE_PATH: Final = "/easypay-service/rest/v4/inquire-transaction"
#: Unclear: the IPN links seen in public handlers all live under this path
#: on EasyPaisa's host, but the guide only says "a URL on Easypay". We accept
#: a link only under ``ipn_base`` (this path on the configured host).
IPN_PATH: Final = "/easypay-service/rest/v1/ipn/"
#: Sure. ``responseCode`` of a REST answer that did what was asked, and the
#: ``status`` on the hosted checkout's final postback for a payment made.
SUCCESS_CODE: Final = "0000"
#: Unclear: the guide's code table as quoted by integrators ("0001 system
#: error", "0002 required field missing", "0003 invalid order id", "0010
#: invalid credentials", ...). Only these are given a meaning here: an
#: inquiry answered with one of NOT_FOUND_CODES is "EasyPaisa has no such
#: order"; every other code is "the question was not answered" (GatewayError).
NOT_FOUND_CODES: Final = frozenset({"0003"})
#: Sure for PAID, PENDING and FAILED (inquiry ``transactionStatus``, IPN
#: ``transaction_status``). Unclear for the rest: EXPIRED, REVERSED and
#: DROPPED appear in integrators' code without a definition; we read them as
#: "no money taken". Any other word is treated as still pending, so an
#: unknown status never fails a payment that might have been made (expiry
#: closes it instead, after one more inquiry).
PAID_STATUSES: Final = frozenset({"PAID"})
FAILED_STATUSES: Final = frozenset({"FAILED", "EXPIRED", "REVERSED", "DROPPED"})
#: Sure. The fields of the hosted checkout request that ``merchantHashedReq``
#: covers: those of them that are sent non-empty, as ``name=value`` joined
#: with ``&`` in this (alphabetical) order, values raw (not URL-encoded).
HASHED_FIELDS: Final = (
    "amount",
    "autoRedirect",
    "emailAddr",
    "expiryDate",
    "mobileNum",
    "orderRefNum",
    "paymentMethod",
    "postBackURL",
    "storeId",
)
#: Sure. ``merchantHashedReq`` is that string encrypted with AES in ECB mode
#: under the portal's hash key (16, 24 or 32 bytes: AES-128/192/256), PKCS#5
#: (= PKCS#7 on 16-byte blocks) padding, then base64. ECB encryption is not a
#: MAC (EasyPaisa checks it by decrypting and comparing); we only send it.
HASH_KEY_SIZES: Final = (16, 24, 32)
#: Sure. ``expiryDate`` is ``YYYYMMDD HHMMSS`` local (Pakistan time, PKT).
EXPIRY_FORMAT: Final = "%Y%m%d %H%M%S"
#: Unclear: the hosted form's ``amount`` is rupees with one decimal in every
#: sample ("1500.0"); whether paisa may follow is not said. We send at least
#: one decimal and at most two ("1500.0", "1500.5", "1500.25"). The Open API
#: takes ``transactionAmount`` with two decimals; answers carry a number or a
#: string, both read as rupees.
#: Sure. The Open API's ``Credentials`` header: base64 of ``username:password``.
CREDENTIALS_HEADER: Final = "Credentials"
#: Unclear: no length limit for ``orderRefNum``/``orderId`` is published; we
#: keep ours at 20 ASCII letters and digits, the strictest seen elsewhere.
REFERENCE_LENGTH: Final = 20
#: Sure that the public Open API offers no refund call (see module docstring).
REFUND_UNSUPPORTED: Final = "refund_not_supported"
#: Unclear: how long ``initiate-ma-transaction`` waits for the customer's PIN
#: before answering (integrators mention about a minute). Our client waits
#: ``EasyPaisaSettings.ma_timeout``; past it the payment is left processing
#: for the IPN or the inquiry round.

# --- our own routes that EasyPaisa and the patient reach -------------------

#: Where EasyPaisa sends the browser (twice) during the hosted checkout.
POSTBACK_PATH: Final = "/api/v1/payments/easypaisa/postback/{reference}"
#: The IPN handler to set in the merchant portal (``?url=`` a record's link).
IPN_HANDLER_PATH: Final = "/api/v1/payments/easypaisa/ipn"
#: Our page where the patient enters their mobile account number (MA flow).
MA_PAGE_PATH: Final = "/api/v1/payments/easypaisa/ma/{reference}"

HOSTED: Final = "hosted"
MOBILE: Final = "mobile"
Flow = Literal["hosted", "mobile"]
_PREFIX: Final = {HOSTED: "EPH", MOBILE: "EPM"}


# --- pure recipe -------------------------------------------------------------


def hash_string(fields: Mapping[str, str]) -> str:
    """``amount=...&autoRedirect=...&...`` over the non-empty hashed fields."""
    return "&".join(f"{name}={fields[name]}" for name in HASHED_FIELDS if fields.get(name, ""))


def _aes(key: str) -> Cipher[modes.ECB]:
    raw = key.encode("utf-8")
    if len(raw) not in HASH_KEY_SIZES:
        raise ValueError("the EasyPaisa hash key must be 16, 24 or 32 bytes")
    return Cipher(algorithms.AES(raw), modes.ECB())  # EasyPaisa's recipe, not our choice


def merchant_hash(fields: Mapping[str, str], key: str) -> str:
    """``merchantHashedReq``: base64 of AES-ECB(PKCS#7(:func:`hash_string`))."""
    padder = padding.PKCS7(128).padder()
    plain = padder.update(hash_string(fields).encode("utf-8")) + padder.finalize()
    encryptor = _aes(key).encryptor()
    return base64.b64encode(encryptor.update(plain) + encryptor.finalize()).decode("ascii")


def read_merchant_hash(value: str, key: str) -> str:
    """Decrypt a ``merchantHashedReq`` back to its string (what EasyPaisa, and
    our simulator, compare with the posted fields). Raises InvalidSignature."""
    try:
        data = base64.b64decode(value.encode("ascii"), validate=True)
        decryptor = _aes(key).decryptor()
        padded = decryptor.update(data) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")
    except (ValueError, UnicodeError) as exc:
        raise InvalidSignature(f"merchantHashedReq does not decrypt: {exc}") from None


def format_amount(amount: Money, *, decimals: int | None = None) -> str:
    """Rupees as EasyPaisa writes them: ``1500.0`` (hosted) or ``1500.00``
    (``decimals=2``, the Open API)."""
    if amount.currency is not Currency.PKR:
        raise UnsupportedCurrency(f"EasyPaisa takes PKR only, not {amount.currency}")
    if amount.amount_minor < 0:
        raise ValueError("EasyPaisa amounts are positive")
    rupees, paisa = divmod(amount.amount_minor, 100)
    if decimals == 2:
        return f"{rupees}.{paisa:02d}"
    return f"{rupees}.{paisa:02d}".rstrip("0").removesuffix(".") + (".0" if paisa == 0 else "")


def parse_amount(value: Any) -> Money:
    """An EasyPaisa amount (rupees: ``3000``, ``"1500.0"``, ``1500.5``) in paisa.

    Refuses anything that is not a finite decimal with at most two places,
    so a rounding never hides a difference from the amount check."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise MalformedPayload(f"EasyPaisa amount {value!r} is not a number")
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,2})?", text):
        # A float such as 1500.0 prints as "1500.0"; 1e3 or "1,500" do not pass.
        raise MalformedPayload(f"EasyPaisa amount {value!r} is not rupees with paisa")
    try:
        paisa = Decimal(text) * 100
    except InvalidOperation:  # pragma: no cover - the pattern admits only decimals
        raise MalformedPayload(f"EasyPaisa amount {value!r} is not a number") from None
    return Money(int(paisa), Currency.PKR)


def format_expiry(moment: datetime) -> str:
    """``YYYYMMDD HHMMSS`` in Pakistan time."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("EasyPaisa times must be built from aware datetimes")
    return moment.astimezone(PKT).strftime(EXPIRY_FORMAT)


def credentials_header(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def ipn_notification(url: str) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an IPN naming the record at ``url``, as
    :meth:`EasyPaisaGateway.parse_webhook` reads it (the IPN handler passes
    on the ``url`` EasyPaisa called it with; the simulator its own)."""
    return urlencode({"url": url}).encode(), {"Content-Type": "application/x-www-form-urlencoded"}


def payment_status(word: str) -> PaymentStatus:
    """A ``transactionStatus`` as our verdict (see the assumptions above)."""
    word = word.strip().upper()
    if word in PAID_STATUSES:
        return PaymentStatus.SUCCEEDED
    if word in FAILED_STATUSES:
        return PaymentStatus.FAILED
    return PaymentStatus.PENDING


def _str_values(data: Mapping[str, Any]) -> dict[str, str]:
    # An IPN's one field is ``url``, a string; anything else is not read.
    return {name: value for name, value in data.items() if isinstance(value, str)}


def flow_of(reference: str) -> Flow | None:
    """Which of our two flows made ``reference`` (its prefix), if any."""
    if reference.startswith(_PREFIX[HOSTED]):
        return "hosted"
    if reference.startswith(_PREFIX[MOBILE]):
        return "mobile"
    return None


def _default_reference(flow: Flow, intent: PaymentIntent) -> str:
    # "EPH"/"EPM" + 12-digit PKT time (to the second, year in two digits) +
    # 5 random letters or digits: 20 characters.
    stamp = intent.created_at.astimezone(PKT).strftime("%y%m%d%H%M%S")
    return f"{_PREFIX[flow]}{stamp}{reference_suffix()}"


# --- the gateway ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EasyPaisaSettings:
    """One EasyPaisa store. ``site_url`` is our public origin (the postback
    and MA page live there); ``endpoint`` EasyPaisa's (or the simulator's)."""

    store_id: str
    hash_key: str
    username: str
    password: str
    site_url: str
    endpoint: str = LIVE_BASE
    #: ``accountNum`` of inquiries (the merchant's EasyPaisa account).
    account_num: str = ""
    #: ``paymentMethod`` of the hosted checkout; empty offers every method.
    hosted_method: str = ""
    timeout: timedelta = timedelta(seconds=15)
    #: How long the MA call may wait for the customer's approval.
    ma_timeout: timedelta = timedelta(seconds=90)
    #: True when ``endpoint`` is our own built-in simulator.
    simulated: bool = False
    name: str = "easypaisa"
    ma_name: str = "easypaisa_ma"

    def __post_init__(self) -> None:
        if not (self.store_id and self.hash_key and self.username and self.password):
            raise ValueError("EasyPaisa needs store_id, hash_key, username and password")
        _aes(self.hash_key)  # the key's length, checked at start rather than at checkout

    @property
    def ipn_base(self) -> str:
        """Links an IPN may name: this prefix, nothing else."""
        return self.endpoint.rstrip("/") + IPN_PATH

    def url(self, path: str) -> str:
        return self.endpoint.rstrip("/") + path


class EasyPaisaGateway:
    """One of EasyPaisa's two flows (``flow``) over the shared store settings.

    The ``aiohttp.ClientSession`` belongs to the caller (app cleanup_ctx)."""

    def __init__(
        self,
        settings: EasyPaisaSettings,
        session: aiohttp.ClientSession,
        flow: Flow = HOSTED,
        reference_factory: Callable[[Flow, PaymentIntent], str] = _default_reference,
    ) -> None:
        self.settings = settings
        self.flow: Flow = flow
        self.name = settings.name if flow == HOSTED else settings.ma_name
        self._session = session
        self._reference_factory = reference_factory

    def gateway_of(self, reference: str) -> str:
        """The gateway name (of the two) whose intent ``reference`` is."""
        return self.settings.ma_name if flow_of(reference) == MOBILE else self.settings.name

    # --- checkout ---------------------------------------------------------------

    def checkout_fields(self, intent: PaymentIntent, reference: str) -> dict[str, str]:
        """The hosted checkout's form, hashed (pure)."""
        s = self.settings
        fields = {
            "storeId": s.store_id,
            "amount": format_amount(intent.amount),
            "postBackURL": s.site_url.rstrip("/") + POSTBACK_PATH.format(reference=reference),
            "orderRefNum": reference,
            "expiryDate": format_expiry(intent.expires_at),
            "autoRedirect": "1",
            "paymentMethod": s.hosted_method,
        }
        fields = {k: v for k, v in fields.items() if v}
        fields["merchantHashedReq"] = merchant_hash(fields, s.hash_key)
        return fields

    async def create(self, intent: PaymentIntent) -> CheckoutSession:
        if intent.amount.currency is not Currency.PKR:
            raise UnsupportedCurrency(f"EasyPaisa takes PKR only, not {intent.amount.currency}")
        reference = self._reference_factory(self.flow, intent)
        if self.flow == MOBILE:
            page = self.settings.site_url.rstrip("/") + MA_PAGE_PATH.format(reference=reference)
            return CheckoutSession(
                gateway=self.name, reference=reference, url=page, expires_at=intent.expires_at
            )
        return CheckoutSession(
            gateway=self.name,
            reference=reference,
            url=self.settings.url(INDEX_PATH),
            method="POST",
            fields=self.checkout_fields(intent, reference),
            expires_at=intent.expires_at,
        )

    def confirm_form(self, auth_token: str, reference: str) -> tuple[str, dict[str, str]]:
        """The hosted checkout's second hop: where to POST the ``auth_token``."""
        postback = self.settings.site_url.rstrip("/") + POSTBACK_PATH.format(reference=reference)
        return self.settings.url(CONFIRM_PATH), {"auth_token": auth_token, "postBackURL": postback}

    # --- the Open API -------------------------------------------------------------

    async def _post(
        self, path: str, body: dict[str, str], wait: timedelta | None = None
    ) -> dict[str, Any]:
        s = self.settings
        headers = {
            CREDENTIALS_HEADER: credentials_header(s.username, s.password),
            "Accept": "application/json",
        }
        _, data = await request_json(
            self._session,
            "POST",
            s.url(path),
            what="EasyPaisa",
            limit=wait or s.timeout,
            headers=headers,
            json=body,
        )
        return data

    async def initiate_ma(
        self, reference: str, amount: Money, mobile_account: str, email: str = ""
    ) -> InquiryResult:
        """``initiate-ma-transaction``: ask the customer's phone to approve.

        Waits for the customer (up to ``ma_timeout``). Its answer names no
        amount, so it never settles a payment by itself: the caller inquires.
        ``SUCCEEDED`` means EasyPaisa took the money; anything else is left to
        the inquiry (a refusal may be a duplicate request of a payment that
        is still going through)."""
        s = self.settings
        body = {
            "orderId": reference,
            "storeId": s.store_id,
            "transactionAmount": format_amount(amount, decimals=2),
            "transactionType": "MA",
            "mobileAccountNo": mobile_account,
            "emailAddress": email,
        }
        answer = await self._post(INITIATE_MA_PATH, body, wait=s.ma_timeout)
        code = str(answer.get("responseCode", ""))
        return InquiryResult(
            gateway=self.name,
            reference=reference,
            status=PaymentStatus.SUCCEEDED if code == SUCCESS_CODE else PaymentStatus.FAILED,
            gateway_code=code,
            message=str(answer.get("responseDesc", "")),
            payment_id=str(answer.get("transactionId") or "") or None,
        )

    async def inquire(self, reference: str) -> InquiryResult:
        """``inquire-transaction``: ``responseCode`` says whether the question
        was answered, ``transactionStatus`` what became of the payment."""
        s = self.settings
        answer = await self._post(
            INQUIRE_PATH,
            {"orderId": reference, "storeId": s.store_id, "accountNum": s.account_num},
        )
        code = str(answer.get("responseCode", ""))
        if code in NOT_FOUND_CODES:
            raise UnknownReference(f"EasyPaisa has no order {reference!r}")
        if code != SUCCESS_CODE:
            desc = answer.get("responseDesc", "")
            raise GatewayError(f"EasyPaisa inquiry for {reference} refused: {code} {desc}")
        if str(answer.get("orderId", reference)) != reference or (
            str(answer.get("storeId", s.store_id)) != s.store_id
        ):
            raise GatewayError(f"EasyPaisa answered about another order than {reference}")
        status = payment_status(str(answer.get("transactionStatus", "")))
        amount = answer.get("transactionAmount")
        try:
            money = None if amount in (None, "") else parse_amount(amount)
        except MalformedPayload as exc:
            raise GatewayError(f"EasyPaisa inquiry answer: {exc}") from exc
        return InquiryResult(
            gateway=self.gateway_of(reference),
            reference=reference,
            status=status,
            amount=money,
            gateway_code=str(answer.get("transactionStatus", "")),
            message=str(answer.get("errorReason") or answer.get("responseDesc") or ""),
            payment_id=str(answer.get("transactionId") or "") or None,
        )

    async def verify_callback(
        self, params: Mapping[str, str], headers: Mapping[str, str], now: datetime
    ) -> VerifiedResult:
        """The browser's return proves nothing (EasyPaisa signs none of it):
        the verdict is the inquiry's. An order EasyPaisa does not know is
        still pending (the patient may be paying right now)."""
        reference = (
            params.get("orderRefNumber") or params.get("orderRefNum") or params.get("orderId")
        )
        if not reference:
            raise MalformedPayload("EasyPaisa return lacks orderRefNumber")
        if flow_of(reference) is None:
            raise MalformedPayload(f"{reference!r} is no EasyPaisa order of ours")
        try:
            answer = await self.inquire(reference)
        except UnknownReference:
            return VerifiedResult(
                gateway=self.gateway_of(reference),
                reference=reference,
                status=PaymentStatus.PENDING,
                amount=None,
                message="EasyPaisa has no such order yet",
            )
        return VerifiedResult.of_inquiry(answer, params)

    # --- IPN ------------------------------------------------------------------------

    def ipn_link(self, body: bytes, headers: Mapping[str, str]) -> str:
        """The ``url`` of a notification (query string, form or JSON body),
        checked to be EasyPaisa's (raises InvalidSignature otherwise)."""
        fields = notification_fields(body, headers, what="EasyPaisa IPN", from_json=_str_values)
        link = fields.get("url", "")
        if not link:
            raise MalformedPayload("EasyPaisa IPN carries no url")
        base = urlsplit(self.settings.ipn_base)
        got = urlsplit(link)
        # Scheme, host and port compared exactly, the path by prefix, and no
        # way around it (no user info, no "..", no query or fragment).
        if (
            (got.scheme, got.netloc) != (base.scheme, base.netloc)
            or not got.path.startswith(base.path)
            or "@" in got.netloc
            or ".." in got.path
            or got.query
            or got.fragment
        ):
            raise InvalidSignature("the IPN url is not on EasyPaisa's notification host")
        return link

    async def parse_webhook(
        self, body: bytes, headers: Mapping[str, str], now: datetime
    ) -> WebhookEvent:
        """Read an IPN: check its link, fetch the record, check the record."""
        link = self.ipn_link(body, headers)
        _, record = await request_json(
            self._session,
            "GET",
            link,
            what="EasyPaisa IPN link",
            limit=self.settings.timeout,
            headers={"Accept": "application/json"},
            allow_redirects=False,
        )
        order = str(record.get("order_id") or "")
        if str(record.get("store_id") or "") != self.settings.store_id:
            raise InvalidSignature("the EasyPaisa IPN record is for another store")
        if not order or not link.rstrip("/").endswith("/" + order):
            raise InvalidSignature("the EasyPaisa IPN record is about another order")
        word = str(record.get("transaction_status") or "")
        amount = record.get("transaction_amount")
        return WebhookEvent(
            gateway=self.gateway_of(order),
            event_id=f"{order}:{word.upper()}:{record.get('transaction_id') or ''}",
            type=f"ipn.{word.lower() or 'unknown'}",
            reference=order,
            status=payment_status(word),
            amount=None if amount in (None, "") else parse_amount(amount),
            created_at=None,
            payload=record,
        )

    async def refund(
        self, reference: str, amount: Money, *, idempotency_key: str | None = None
    ) -> RefundResult:
        """Refused: the public Open API has no refund (see the module docstring)."""
        return RefundResult.refused(
            self.gateway_of(reference),
            reference,
            amount,
            REFUND_UNSUPPORTED,
            "EasyPaisa refunds are made from the merchant portal",
        )


#: Where the simulator answers, under our own origin
#: (:mod:`booking.payments.easypaisa.http_simulator` serves it).
SIMULATOR_PATH: Final = "/easypaisa-sim"


def from_config(settings: Settings) -> EasyPaisaSettings | None:
    """The configured store; with none, the built-in simulator's (on by
    default, so ``wadud serve`` offers EasyPaisa with no account); None when
    neither. The simulator's credentials are derived from ``secret_key``
    under a purpose label, so they reveal nothing about it."""
    site = settings.base_url
    if settings.payments_easypaisa_store_id:
        return EasyPaisaSettings(
            store_id=settings.payments_easypaisa_store_id,
            hash_key=settings.payments_easypaisa_hash_key,
            username=settings.payments_easypaisa_username,
            password=settings.payments_easypaisa_password,
            account_num=settings.payments_easypaisa_account_num,
            endpoint=settings.payments_easypaisa_endpoint or LIVE_BASE,
            site_url=site,
        )
    if not settings.payments_easypaisa_simulator:
        return None
    derived = hmac.new(
        settings.secret_key.encode(), b"wadud/payments/easypaisa-simulator", hashlib.sha256
    ).hexdigest()
    return EasyPaisaSettings(
        store_id="90001",
        hash_key=derived[:32],
        username="wadud-sim",
        password=derived[32:],
        account_num="654123987",
        endpoint=site.rstrip("/") + SIMULATOR_PATH,
        site_url=site,
        simulated=True,
    )
