"""The patient's bank transfer page: what to pay, to which account, with
which reference, and until when.

A browser reaches it without a bearer token, through the link the
instructions notification and the API hand out
(``/pay/bank-transfer/{payment_id}?t=...``): ``t`` is an HMAC of the
payment's id under a key derived from ``secret_key``
(:func:`booking.payments.transfers.core.page_token`), so the link opens
that one page and nothing else, and a guessed id opens nothing. The page
is a shell of :mod:`booking.pages` (words as i18n keys, facts as JSON that
``pay.js`` formats in the patient's language and time zone); the account
and the reference are the same in every language and are written into it
as they are, left to right.
"""

from __future__ import annotations

import hmac
import html
from typing import Final

from aiohttp import web

from booking import pages
from booking.payments.gateway import BANK_TRANSFER
from booking.payments.transfers import service
from booking.payments.transfers.core import BankAccount, page_token
from wadud.errors import NotFound
from wadud.web.api import Call, Routes

__all__ = ["routes"]

routes = Routes("bank-transfer-page", "The patient's bank transfer page (a signed link).")

_PATH: Final = "/pay/bank-transfer/{payment_id:uuid}"


_ACCOUNT: Final = """<dl class="facts bank">
<dt data-i18n="bank.reference">Reference</dt><dd class="reference" dir="ltr">{reference}</dd>
<dt data-i18n="bank.bank">Bank</dt><dd dir="auto">{bank_name}</dd>
<dt data-i18n="bank.account_title">Account title</dt><dd dir="auto">{account_title}</dd>
<dt data-i18n="bank.account_number">Account number</dt><dd dir="ltr">{account_number}</dd>
<dt data-i18n="bank.iban">IBAN</dt><dd dir="ltr">{iban}</dd>
</dl>"""

_WAITING: Final = """<h1 data-i18n="bank.title">Pay by bank transfer</h1>
<p class="lead" data-i18n="bank.text">Send the amount below to this account from your bank
or its app, and write the reference in the transfer's description.</p>
{visit}
{account}
<p class="muted"><span data-i18n="pay.held">Your time is held for you until</span>
<span data-fill="expires"></span></p>
<p class="muted" data-i18n="bank.late">Money that arrives after this time is refunded.</p>"""

_SETTLED: Final = """<h1 data-i18n="bank.{state}.title">Bank transfer</h1>
<p class="lead" data-i18n="bank.{state}.text"></p>
{visit}"""

#: The page's wording by the transfer's state.
_STATES: Final = {
    "succeeded": "paid",
    "partially_refunded": "paid",
    "refunded": "closed",
    "cancelled": "closed",
    "failed": "closed",
}


@routes.get(
    _PATH,
    returns={"content": {"text/html": {"schema": {"type": "string"}}}},
    auth="public",
    responses={404: "No such transfer, or the link's token does not match"},
)
async def bank_transfer_page(call: Call[None, None]) -> web.Response:
    """The patient's page: the account, the reference, the amount and the
    deadline, in the patient's language; once paid or closed, which."""
    payment_id = call.path_uuid("payment_id")
    given = call.request.query.get("t", "")
    if not hmac.compare_digest(given.encode(), page_token(call.settings, payment_id).encode()):
        raise NotFound("no such bank transfer")
    intent = await service.page_intent(call.pool, payment_id)
    async with call.pool.acquire() as conn:
        facts = await pages.visit_facts(conn, payment_id)
    if intent is None or facts is None or intent["gateway"] != BANK_TRANSFER:
        raise NotFound("no such bank transfer")
    state = _STATES.get(intent["status"])
    details = BankAccount.of(call.settings)
    if state is None and details is not None:
        fields = {k: html.escape(v) for k, v in details.as_dict().items()}
        account = _ACCOUNT.format(reference=html.escape(intent["gateway_ref"]), **fields)
        body = _WAITING.format(visit=pages.VISIT, account=account)
    else:
        body = _SETTLED.format(state=state or "closed", visit=pages.VISIT)
    return pages.page("bank.page.title", body, facts)
