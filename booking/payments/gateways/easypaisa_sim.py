"""A local EasyPaisa: the other side of :mod:`booking.payments.gateways.easypaisa`.

It plays the merchant-facing half of EasyPaisa's protocol so the whole flow
runs with no account (``wadud serve`` enables it when no store is configured,
and the tests drive it):

* the hosted checkout: ``Index.jsf`` checks ``merchantHashedReq`` against the
  posted fields (decrypting it with the store's hash key, as EasyPaisa does)
  and answers the first redirect to ``postBackURL`` with an ``auth_token``;
  ``Confirm.jsf`` takes the token back, shows the customer the order, and on
  pay or decline redirects to ``postBackURL`` with ``status``, ``desc`` and
  ``orderRefNumber``;
* the Open API's ``initiate-ma-transaction`` (the HTTP layer holds the call
  open until "the phone" approves or declines, or it times out) and
  ``inquire-transaction``, both behind the ``Credentials`` header;
* the IPN: once an order is settled, the record a notification's ``url``
  answers (:meth:`EasyPaisaSimulator.ipn_record`).

This module is the simulator's state and rules only (no sockets, no clock:
times are parameters); :mod:`booking.payments.easypaisa.http_simulator` serves it under
``/easypaisa-sim/``. Orders live in this object's memory, which is right for
``wadud serve`` and tests (one process), as for the sandbox gateway.

Knobs for tests: ``deliver_ipn`` (False: notifications are "lost", so only
the inquiry round can settle a payment) and :meth:`tamper_amount` (EasyPaisa
reports another amount than was asked).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from booking.payments.errors import InvalidSignature, MalformedPayload, UnknownReference
from booking.payments.gateway import PKT, with_query
from booking.payments.gateways.easypaisa import (
    IPN_PATH,
    SIMULATOR_PATH,
    SUCCESS_CODE,
    EasyPaisaSettings,
    credentials_header,
    hash_string,
    parse_amount,
    read_merchant_hash,
)
from booking.payments.intent import Money

__all__ = ["SIM_PREFIX", "EasyPaisaSimulator", "SimOrder", "codes"]

#: Where the simulator is served, under our own origin.
SIM_PREFIX: Final = SIMULATOR_PATH


class codes:
    """The response codes the simulator answers with (see the adapter's
    assumptions: 0000, 0001, 0002, 0003 and 0010 are the guide's)."""

    OK: Final = SUCCESS_CODE
    SYSTEM_ERROR: Final = "0001"
    FIELD_MISSING: Final = "0002"
    INVALID_ORDER: Final = "0003"
    INVALID_CREDENTIALS: Final = "0010"
    #: Ours: the customer declined or let the phone's request time out.
    DECLINED: Final = "0014"


@dataclass(slots=True)
class SimOrder:
    """One order as EasyPaisa keeps it."""

    reference: str
    amount: Money
    method: str  # "MA" (mobile account), "OTC" or "CC" as EasyPaisa reports it
    postback: str = ""
    msisdn: str = ""
    #: PENDING until paid or declined; then PAID or FAILED.
    status: str = "PENDING"
    transaction_id: str = ""
    created_at: datetime | None = None
    settled_at: datetime | None = None
    #: What EasyPaisa reports as paid (normally ``amount``).
    reported: Money | None = None

    @property
    def open(self) -> bool:
        return self.status == "PENDING"


def _pkt(moment: datetime) -> str:
    # The Open API writes "03/10/2023 11:32 AM" (day first, Pakistan time).
    return moment.astimezone(PKT).strftime("%d/%m/%Y %I:%M %p")


@dataclass
class EasyPaisaSimulator:
    """EasyPaisa's state for one store (the settings the adapter uses)."""

    settings: EasyPaisaSettings
    #: The public origin the simulator is reached at (IPN links name it).
    base_url: str
    orders: dict[str, SimOrder] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    deliver_ipn: bool = True

    # --- the hosted checkout -------------------------------------------------------

    def start_hosted(self, form: Mapping[str, str], now: datetime) -> str:
        """``Index.jsf``: check the store and the hash, open the order, and
        return the first redirect (``postBackURL?auth_token=...``)."""
        for name in ("storeId", "amount", "postBackURL", "orderRefNum", "merchantHashedReq"):
            if not form.get(name):
                raise MalformedPayload(f"Index.jsf needs {name}")
        if form["storeId"] != self.settings.store_id:
            raise InvalidSignature("no such store")
        plain = read_merchant_hash(form["merchantHashedReq"], self.settings.hash_key)
        # EasyPaisa rebuilds the string from what was posted and compares:
        # an amount edited in the browser no longer matches its hash.
        if not hmac.compare_digest(plain.encode(), hash_string(form).encode()):
            raise InvalidSignature("merchantHashedReq does not match the posted fields")
        if urlsplit(form["postBackURL"]).scheme not in ("http", "https"):
            raise MalformedPayload("postBackURL must be an http(s) URL")
        reference = form["orderRefNum"]
        order = self.orders.get(reference)
        if order is None:
            order = SimOrder(
                reference=reference,
                amount=parse_amount(form["amount"]),
                method="MA",
                postback=form["postBackURL"],
                created_at=now,
            )
            self.orders[reference] = order
        elif order.postback != form["postBackURL"] or order.amount != parse_amount(form["amount"]):
            raise InvalidSignature("orderRefNum was used for another order")
        token = secrets.token_urlsafe(18)
        self.tokens[token] = reference
        return with_query(order.postback, {"auth_token": token})

    def order_for_token(self, token: str, postback: str) -> SimOrder:
        """``Confirm.jsf``: the order an ``auth_token`` opened (one store,
        one return address: the token is no bearer pass to another order)."""
        reference = self.tokens.get(token)
        if reference is None:
            raise UnknownReference("no such auth_token")
        order = self.orders[reference]
        if postback != order.postback:
            raise InvalidSignature("postBackURL differs from the order's")
        return order

    def finish_hosted(self, token: str, postback: str, paid: bool, now: datetime) -> str:
        """The customer pays (or declines) on the confirm page; return the
        final redirect. Settling twice keeps the first outcome."""
        order = self.order_for_token(token, postback)
        self.settle(order.reference, paid, now)
        del self.tokens[token]
        paid_now = order.status == "PAID"
        return with_query(
            order.postback,
            {
                "status": codes.OK if paid_now else codes.DECLINED,
                "desc": "SUCCESS" if paid_now else "TRANSACTION FAILED",
                "orderRefNumber": order.reference,
            },
        )

    # --- the Open API -------------------------------------------------------------

    def authorised(self, headers: Mapping[str, str]) -> bool:
        want = credentials_header(self.settings.username, self.settings.password)
        got = next((v for k, v in headers.items() if k.lower() == "credentials"), "")
        return hmac.compare_digest(want.encode(), got.encode("utf-8", "surrogateescape"))

    def start_ma(
        self, body: Mapping[str, Any], now: datetime
    ) -> tuple[SimOrder | None, dict[str, Any]]:
        """``initiate-ma-transaction``: open an MA order awaiting the phone.
        Returns (the order, None on refusal) and the refusal's answer."""
        missing = [
            n
            for n in ("orderId", "storeId", "transactionAmount", "mobileAccountNo")
            if not body.get(n)
        ]
        if missing:
            return None, self._answer(codes.FIELD_MISSING, "REQUIRED FIELD MISSING", body)
        if body["storeId"] != self.settings.store_id:
            return None, self._answer(codes.INVALID_CREDENTIALS, "INVALID STORE", body)
        reference = str(body["orderId"])
        if reference in self.orders:
            return None, self._answer(codes.SYSTEM_ERROR, "DUPLICATE ORDER ID", body)
        try:
            amount = parse_amount(body["transactionAmount"])
        except MalformedPayload:
            return None, self._answer(codes.FIELD_MISSING, "INVALID AMOUNT", body)
        order = SimOrder(
            reference=reference,
            amount=amount,
            method="MA",
            msisdn=str(body["mobileAccountNo"]),
            created_at=now,
        )
        self.orders[reference] = order
        return order, {}

    def ma_answer(self, reference: str) -> dict[str, Any]:
        """What ``initiate-ma-transaction`` answers once the phone decided
        (or the wait ended: an undecided order is then declined)."""
        order = self.orders[reference]
        if order.status == "PAID":
            answer = self._answer(codes.OK, "SUCCESS", {"orderId": reference})
            answer["transactionId"] = order.transaction_id
            return answer
        return self._answer(codes.DECLINED, "TRANSACTION FAILED", {"orderId": reference})

    def pending_ma(self) -> list[SimOrder]:
        """MA orders waiting for the phone, oldest first."""
        return [o for o in self.orders.values() if o.open and o.msisdn]

    def inquire(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """``inquire-transaction``."""
        if not body.get("orderId") or not body.get("storeId"):
            return self._answer(codes.FIELD_MISSING, "REQUIRED FIELD MISSING", body)
        if body["storeId"] != self.settings.store_id:
            return self._answer(codes.INVALID_CREDENTIALS, "INVALID STORE", body)
        order = self.orders.get(str(body["orderId"]))
        if order is None:
            return self._answer(codes.INVALID_ORDER, "INVALID ORDER ID", body)
        answer = self._answer(codes.OK, "SUCCESS", body)
        answer.update(
            {
                "accountNum": self.settings.account_num,
                "storeName": "Wadud simulator",
                "paymentMode": order.method,
                "msisdn": order.msisdn,
                "transactionStatus": order.status,
                "transactionAmount": _rupees(order.reported or order.amount),
                "transactionId": order.transaction_id,
                "transactionDateTime": _pkt(order.settled_at or order.created_at or _EPOCH),
            }
        )
        return answer

    def _answer(self, code: str, desc: str, body: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = {"responseCode": code, "responseDesc": desc}
        if body.get("orderId"):
            answer["orderId"] = str(body["orderId"])
        answer["storeId"] = self.settings.store_id
        return answer

    # --- settling and the IPN ------------------------------------------------------------

    def settle(self, reference: str, paid: bool, now: datetime) -> SimOrder:
        """The customer's decision (PIN entered or declined)."""
        order = self.orders.get(reference)
        if order is None:
            raise UnknownReference(f"no simulated EasyPaisa order {reference!r}")
        if order.open:
            order.status = "PAID" if paid else "FAILED"
            order.transaction_id = str(secrets.randbelow(10**11)).zfill(11) if paid else ""
            order.settled_at = now
        return order

    def tamper_amount(self, reference: str, amount: Money) -> None:
        """Make EasyPaisa report ``amount`` as paid for ``reference`` (tests)."""
        self.orders[reference].reported = amount

    def ipn_url(self, reference: str) -> str:
        """The link a notification about ``reference`` carries."""
        return self.base_url.rstrip("/") + SIM_PREFIX + IPN_PATH + reference

    def ipn_record(self, reference: str) -> dict[str, Any]:
        """What the IPN link answers (EasyPaisa's snake_case IPN record)."""
        order = self.orders.get(reference)
        if order is None:
            raise UnknownReference(f"no simulated EasyPaisa order {reference!r}")
        return {
            "order_id": order.reference,
            "store_id": self.settings.store_id,
            "transaction_id": order.transaction_id,
            "transaction_status": order.status,
            "transaction_amount": _rupees(order.reported or order.amount),
            "payment_method": order.method,
            "msisdn": order.msisdn,
            "paid_datetime": _pkt(order.settled_at) if order.settled_at else "",
        }


_EPOCH: Final = datetime.fromisoformat("2000-01-01T00:00:00+00:00")


def _rupees(amount: Money) -> str:
    rupees, paisa = divmod(amount.amount_minor, 100)
    return f"{rupees}.{paisa:02d}"
