"""Bank transfer, the pure part: payment references, CSV bank statements,
the bank details patients see, the signed link to the patient's page, and
the ledger postings of money that must go back.

A patient who pays by bank transfer (IBFT, Raast, a branch) gets a booking
held for ``payments_bank_transfer_hold_hours`` (24 h by default, never past
the slot's start) and a **payment reference** to write on the transfer.
The transfer is a payment intent of gateway
:data:`~booking.payments.gateway.BANK_TRANSFER` whose
``gateway_ref`` is that reference; it stays ``requires_payment`` until
finance staff see the money (a statement line, or by hand), when it moves
through the same state machine as any gateway's (:mod:`.intent`) and posts
the same capture (:func:`.ledger.capture`).

References look like ``WD7K3M9QX2``: ``WD``, seven random characters of
Crockford's base 32 (no I, L, O, U: nothing to misread on a phone's
keyboard) and a check character, the weighted sum of the seven values
(weights 1, 3, 5, ...; odd, so any single mistyped character changes the
sum) modulo 32. Banks put the reference in a free-text description among
other words, sometimes split by spaces or hyphens, sometimes with O for 0;
:func:`find_references` reads it out of such text and the check character
keeps a stray ``WD`` word from matching.

A statement is a CSV file with a header row naming at least a date, an
amount and a description column (:data:`COLUMNS` lists the names
accepted, case-insensitive). Each line is parsed on its own
(:func:`parse_statement`): a line that does not parse is rejected with its
line number and the reason, and the others still count.

This module is pure: no I/O, no clock.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import hmac
import re
import secrets
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, ClassVar, Final
from uuid import UUID

from booking.payments import ledger
from booking.payments.errors import PaymentError
from booking.payments.gateway import BANK_TRANSFER
from booking.payments.intent import MINOR_UNIT_EXPONENT, Currency, IntentState, Money
from wadud.config import Settings
from wadud.errors import Conflict, NotFound, PayloadTooLarge, Unprocessable, UnsupportedMediaType

__all__ = [
    "CLEARING",
    "COLUMNS",
    "LIVE",
    "REFUNDS_DUE",
    "BankAccount",
    "CreditNotOpen",
    "MalformedStatement",
    "ProofNotAccepted",
    "ProofTooLarge",
    "RejectedLine",
    "Statement",
    "StatementLine",
    "TransferAmountMismatch",
    "TransferError",
    "TransferNotOffered",
    "UnknownTransfer",
    "find_references",
    "new_reference",
    "normalise_reference",
    "page_token",
    "page_url",
    "parse_amount",
    "parse_statement",
    "refund_due",
    "refund_sent",
]

#: Where money received for a bank transfer sits (an asset: our bank account).
CLEARING: Final = ledger.gateway_clearing(BANK_TRANSFER)
#: A liability: money that arrived and is owed back to the patient who sent it.
REFUNDS_DUE: Final = "patient_refunds_due"
#: A transfer's intent states while it waits for money.
LIVE: Final = (IntentState.REQUIRES_PAYMENT.value, IntentState.PROCESSING.value)


# --- errors --------------------------------------------------------------------


class TransferError(PaymentError):
    """Root of the bank transfer errors."""

    http_status = 409
    code = "bank_transfer_error"


class TransferNotOffered(TransferError, Conflict):
    """This deployment has no bank details configured, or the slot is too soon."""

    http_status = 409
    code = "bank_transfer_not_offered"


class MalformedStatement(TransferError, Unprocessable):
    """A statement that is not a CSV file with the columns a statement needs."""

    http_status = 422
    code = "malformed_statement"


class UnknownTransfer(TransferError, NotFound):
    """No bank transfer under that reference (for this clinic)."""

    http_status = 404
    code = "unknown_reference"


class TransferAmountMismatch(TransferError, Conflict):
    """A confirmation or credit for another amount than the transfer asked."""

    http_status = 409
    code = "amount_mismatch"


class CreditNotOpen(TransferError, Conflict):
    """The credit is not in a state that takes this action."""

    http_status = 409
    code = "credit_not_open"


class ProofNotAccepted(TransferError, UnsupportedMediaType):
    """A proof of payment that is not a JPEG, PNG, GIF, WebP or PDF by its bytes."""

    http_status = 415
    code = "proof_not_image_or_pdf"


class ProofTooLarge(TransferError, PayloadTooLarge):
    """A proof of payment over ``payments_bank_transfer_proof_max_bytes``."""

    http_status = 413
    code = "proof_too_large"


# --- references ---------------------------------------------------------------------

PREFIX: Final = "WD"
_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base 32
_VALUE: Final = {c: i for i, c in enumerate(_ALPHABET)}
_BODY: Final = 7
#: Crockford's reading of characters people type for others.
_READ_AS: Final = str.maketrans("OIL", "011")
_SEPARATORS: Final = re.compile(r"[\s\-_./:#]+")


def _check_char(body: str) -> str:
    total = sum((2 * i + 1) * _VALUE[c] for i, c in enumerate(body))
    return _ALPHABET[total % len(_ALPHABET)]


def new_reference() -> str:
    """A fresh payment reference (35 random bits; the caller retries on the
    rare collision, which the database's unique key reports)."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY))
    return PREFIX + body + _check_char(body)


def _valid(candidate: str) -> str | None:
    """``candidate`` (``WD`` and eight characters) as a canonical reference,
    None when its check character does not agree."""
    tail = candidate[len(PREFIX) :].translate(_READ_AS)
    if len(tail) != _BODY + 1 or any(c not in _VALUE for c in tail):
        return None
    body, check = tail[:_BODY], tail[_BODY]
    return PREFIX + tail if _check_char(body) == check else None


def normalise_reference(text: str) -> str | None:
    """A reference as someone typed it (any case, spaces, hyphens), in its
    canonical form; None when it is not one."""
    squeezed = _SEPARATORS.sub("", text.upper())
    if not squeezed.startswith(PREFIX):
        return None
    return _valid(squeezed)


def find_references(text: str) -> list[str]:
    """Every valid reference in a statement's free text, in order, once each.

    People put separators inside a reference (``WD 12AB-34CD``), so the text
    is read with its words run together, leftmost reference first and no two
    overlapping. References made of whole words are looked for first; only
    where there is none is one taken that starts or ends inside a word
    (``REFWD12AB34CDTHANKS``). So neither a word before a reference that has
    ``WD`` in it (``SHOWDOWN``) nor the words after one (``WD 12AB-WD4C
    THANKS``: its own ``WD4C`` and ``THANKS``) make another reference that
    would hide it or leave its credit unmatched for naming several."""
    words = [w for w in _SEPARATORS.split(text.upper()) if w]
    ends = list(accumulate(len(w) for w in words))
    squeezed = "".join(words)
    return _scan(squeezed, ({0, *ends}, set(ends))) or _scan(squeezed, None)


def _scan(squeezed: str, words: tuple[set[int], set[int]] | None) -> list[str]:
    """The references in ``squeezed``, leftmost first and none overlapping;
    with ``words`` (where words start, where they end), only those that
    start and end there."""
    found: dict[str, None] = {}
    size = len(PREFIX) + _BODY + 1
    at = squeezed.find(PREFIX)
    while at >= 0:
        end = at + size
        whole = words is None or (at in words[0] and end in words[1])
        ref = _valid(squeezed[at:end]) if whole else None
        if ref is not None:
            found[ref] = None
        at = squeezed.find(PREFIX, end if ref is not None else at + 1)
    return list(found)


# --- amounts ---------------------------------------------------------------------------

_AMOUNT: Final = re.compile(r"^(\d{1,13})(?:\.(\d{1,4}))?$")


def parse_amount(text: str, currency: Currency) -> int:
    """A statement's decimal amount in major units (``2,500.00``,
    ``2500``, ``PKR 2500.5``) as minor units; ValueError when it is not one
    or has more decimals than the currency has."""
    t = text.strip().replace(",", "").replace("\u00a0", "").replace(" ", "")
    if t.startswith("-") or t.endswith("-") or t.upper().endswith("DR"):
        raise ValueError("not a credit (a debit)")
    if t.upper().startswith(currency.value):
        t = t[len(currency.value) :]
    if t.upper().endswith(currency.value):
        t = t[: -len(currency.value)]
    m = _AMOUNT.match(t)
    if m is None:
        raise ValueError(f"{text.strip()!r} is not an amount")
    exp = MINOR_UNIT_EXPONENT[currency]
    frac = (m.group(2) or "").rstrip("0")
    if len(frac) > exp:
        raise ValueError(f"{text.strip()!r} has more decimals than {currency} has")
    minor: int = int(m.group(1)) * 10**exp + int(frac.ljust(exp, "0") or "0")
    return minor


# --- statements ------------------------------------------------------------------------

#: Accepted header names (lowercased, spaces squeezed) for each column.
COLUMNS: Final[Mapping[str, frozenset[str]]] = {
    "date": frozenset(
        {"date", "value date", "transaction date", "txn date", "booking date", "posting date"}
    ),
    "amount": frozenset({"amount", "credit", "credit amount", "deposit", "deposits"}),
    "narration": frozenset(
        {"description", "narration", "reference", "details", "remarks", "particulars"}
    ),
    "bank_txn_id": frozenset(
        {"transaction id", "txn id", "bank reference", "transaction reference", "utr", "stan"}
    ),
    "currency": frozenset({"currency", "ccy"}),
}
_REQUIRED: Final = ("date", "amount", "narration")
_DATE_FORMATS: Final = ("%Y-%m-%d", "%d/%m/%Y", "%d-%m-%Y", "%d.%m.%Y", "%d-%b-%Y", "%d %b %Y")
_MAX_FIELD: Final = 1000


@dataclass(frozen=True, slots=True)
class StatementLine:
    """One credit of a statement."""

    line_no: int
    booked_on: dt.date
    amount: Money
    narration: str
    bank_txn_id: str | None
    references: tuple[str, ...]
    #: Tells a line imported again from a new one (see :func:`parse_statement`).
    fingerprint: bytes


@dataclass(frozen=True, slots=True)
class RejectedLine:
    line_no: int
    error: str


@dataclass
class Statement:
    lines: list[StatementLine] = field(default_factory=list)
    rejected: list[RejectedLine] = field(default_factory=list)


def _header(row: list[str]) -> dict[str, list[int]]:
    where: dict[str, list[int]] = {}
    for i, name in enumerate(row):
        key = " ".join(name.strip().lower().split())
        for column, names in COLUMNS.items():
            if key in names:
                where.setdefault(column, []).append(i)
    return where


def _date(text: str) -> dt.date:
    t = text.strip()
    for fmt in _DATE_FORMATS:
        try:
            # strptime's %b is the C locale's English month abbreviation.
            return dt.datetime.strptime(t, fmt).date()  # noqa: DTZ007 - a date, no time
        except ValueError:
            continue
    raise ValueError(f"{t!r} is not a date (YYYY-MM-DD or DD/MM/YYYY)")


def _line(
    number: int, fields: list[str], where: dict[str, list[int]], width: int, default: Currency
) -> tuple[dt.date, Money, str, str | None]:
    if len(fields) != width:
        raise ValueError(f"expected {width} fields, found {len(fields)}")
    if any(len(f) > _MAX_FIELD for f in fields):
        raise ValueError(f"a field is longer than {_MAX_FIELD} characters")
    currency = default
    if "currency" in where:
        code = fields[where["currency"][0]].strip().upper()
        if code:
            try:
                currency = Currency(code)
            except ValueError:
                raise ValueError(f"unsupported currency {code!r}") from None
    booked_on = _date(fields[where["date"][0]])
    minor = parse_amount(fields[where["amount"][0]], currency)
    if minor <= 0:
        raise ValueError("not a credit (the amount is zero)")
    narration = " | ".join(fields[i].strip() for i in where["narration"] if fields[i].strip())
    txn = None
    if "bank_txn_id" in where:
        txn = fields[where["bank_txn_id"][0]].strip() or None
    return booked_on, Money(minor, currency), narration, txn


def parse_statement(data: bytes, currency: Currency) -> Statement:
    """A CSV bank statement's credits and its rejected lines.

    ``currency``: the amounts' currency when the file has no currency column.
    Lines are numbered as a text editor numbers them (the header is line 1);
    blank lines are skipped. Raises :class:`MalformedStatement` when the
    file is not UTF-8 text or its header lacks a date, amount or
    description column: then nothing of it can be trusted.

    A line's fingerprint is its bank transaction id when the file has one,
    else its date, amount, currency and description with how many identical
    lines came before it in the file, so importing a statement again, or
    one that overlaps an earlier one, adds nothing twice."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedStatement(f"the statement is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise MalformedStatement("the statement is not a text file (it holds NUL bytes)")
    physical = text.splitlines()
    out = Statement()
    where: dict[str, list[int]] | None = None
    width = 0
    seen: Counter[tuple[Any, ...]] = Counter()
    for number, raw in enumerate(physical, start=1):
        if not raw.strip():
            continue
        try:
            fields = next(csv.reader([raw], strict=True))
        except csv.Error as exc:
            if where is None:
                raise MalformedStatement(f"line {number}: {exc}") from None
            out.rejected.append(RejectedLine(number, f"not a CSV line: {exc}"))
            continue
        if where is None:
            where = _header(fields)
            missing = [c for c in _REQUIRED if c not in where]
            if missing:
                raise MalformedStatement(
                    f"line {number}: the header names no {' or '.join(missing)} column"
                    " (see docs/api.md, Bank transfer)"
                )
            width = len(fields)
            continue
        try:
            booked_on, amount, narration, txn = _line(number, fields, where, width, currency)
        except ValueError as exc:
            out.rejected.append(RejectedLine(number, str(exc)))
            continue
        if txn is not None:
            key: tuple[Any, ...] = ("txn", txn)
        else:
            ident = (booked_on.isoformat(), amount.amount_minor, amount.currency.value, narration)
            seen[ident] += 1
            key = ("line", *ident, seen[ident])
        fingerprint = hashlib.sha256(repr(key).encode()).digest()
        out.lines.append(
            StatementLine(
                number,
                booked_on,
                amount,
                narration,
                txn,
                tuple(find_references(narration)),
                fingerprint,
            )
        )
    if where is None:
        raise MalformedStatement("the statement is empty: no header row")
    return out


# --- what patients see -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BankAccount:
    """Where the patient sends the money: the platform's account, from the
    ``payments_bank_transfer_*`` settings."""

    bank_name: str
    account_title: str
    account_number: str
    iban: str

    #: Settings each field comes from.
    SETTINGS: ClassVar[tuple[str, ...]] = (
        "payments_bank_transfer_bank_name",
        "payments_bank_transfer_account_title",
        "payments_bank_transfer_account_number",
        "payments_bank_transfer_iban",
    )

    @classmethod
    def of(cls, settings: Any) -> BankAccount | None:
        """The configured details; None when bank transfer is not offered
        (neither an IBAN nor an account number is set)."""
        values = [str(getattr(settings, name) or "").strip() for name in cls.SETTINGS]
        if not values[2] and not values[3]:
            return None
        return cls(*values)

    def as_dict(self) -> dict[str, str]:
        return {
            "bank_name": self.bank_name,
            "account_title": self.account_title,
            "account_number": self.account_number,
            "iban": self.iban,
        }


# --- the ledger -------------------------------------------------------------------------------


def refund_due(amount: Money, credit_id: str) -> ledger.Transaction:
    """Money in that is not ours to keep: debit the bank (clearing), credit
    what we owe the patient. No revenue, nothing to the doctor."""
    return ledger.simple(
        "adjustment", f"bank_credit:{credit_id}", amount, debit=CLEARING, credit=REFUNDS_DUE
    )


def refund_sent(amount: Money, credit_id: str) -> ledger.Transaction:
    """The money owed back left the bank: the reverse of :func:`refund_due`."""
    return ledger.simple(
        "adjustment", f"bank_credit_refund:{credit_id}", amount, debit=REFUNDS_DUE, credit=CLEARING
    )


# --- the patient's page -------------------------------------------------------------


def page_token(settings: Settings, payment_id: UUID) -> str:
    """What the link to the patient's page for the transfer ``payment_id``
    carries (``t``): an HMAC of the id under a key derived from
    ``secret_key``, so the link opens that one page and a guessed id opens
    nothing."""
    key = hmac.new(settings.secret_key.encode(), b"wadud/bank-transfer/page", hashlib.sha256)
    return hmac.new(key.digest(), str(payment_id).encode(), hashlib.sha256).hexdigest()[:32]


def page_url(settings: Settings, payment_id: UUID) -> str:
    """The patient's page for the transfer ``payment_id`` (a signed link)."""
    base = settings.base_url.rstrip("/")
    return f"{base}/pay/bank-transfer/{payment_id}?t={page_token(settings, payment_id)}"
