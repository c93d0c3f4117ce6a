"""Payout batches without I/O: a doctor's bank details, a batch line's states,
and the bank's bulk-upload file.

A payout batch pays every doctor of a clinic owed at least a threshold in one
bank file. Its lines move through one small machine::

    pending --paid--> paid        the bank paid it: the ledger posts a payout
    pending --failed--> failed    the bank refused it: nothing is posted, so
                                  the amount is payable again
    paid --paid--> paid           repeating a verdict changes nothing
    failed --failed--> failed

Every other move is refused (:class:`LineSettled`): a paid line's money has
left, and a failed line's amount may already sit in a newer batch.

IBANs follow ISO 13616: two letters of country, two check digits, then the
country's BBAN; valid when the number made by moving the first four characters
to the end and writing letters as 10..35 leaves 1 modulo 97. Only the launch
countries' IBANs are accepted (their lengths and BBAN shapes are below): a
clinic's bank pays its own country's accounts in a domestic bulk file.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import csv
import enum
import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from booking.payments.errors import PaymentError
from booking.payments.intent import MINOR_UNIT_EXPONENT, Currency
from wadud.errors import Conflict

__all__ = [
    "CSV_COLUMNS",
    "IBAN_SHAPES",
    "MAX_LINES",
    "TRANSITIONS",
    "FileLine",
    "InvalidAccountTitle",
    "InvalidIban",
    "LineSettled",
    "LineStatus",
    "account_title",
    "bank_file",
    "batch_reference",
    "iban",
    "line_reference",
    "major_units",
    "settle",
]

#: Lines one batch holds at most; doctors beyond it wait for the next batch.
#: Banks' bulk uploads cap their files at a few thousand rows.
MAX_LINES: Final = 5000

#: Per country: the IBAN's length and the shape of its BBAN (after the check digits).
IBAN_SHAPES: Final = MappingProxyType(
    {
        "PK": (24, re.compile(r"[A-Z]{4}[A-Z0-9]{16}")),
        "AE": (23, re.compile(r"[0-9]{3}[0-9]{16}")),
        "QA": (29, re.compile(r"[A-Z]{4}[A-Z0-9]{21}")),
        "SA": (24, re.compile(r"[0-9]{2}[A-Z0-9]{18}")),
    }
)

# ASCII only, and never starting with a character a spreadsheet would read as
# a formula (=, +, -, @): the title is written into a CSV file a person opens.
_TITLE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .,&'()/-]{0,99}")

CSV_COLUMNS: Final = ("iban", "account_title", "amount", "currency", "reference")


class InvalidIban(PaymentError, ValueError):
    """Not an IBAN of a supported country, or its check digits are wrong."""

    http_status = 422
    code = "invalid_iban"


class InvalidAccountTitle(PaymentError, ValueError):
    """An account title a bank file cannot carry."""

    http_status = 422
    code = "invalid_account_title"


class LineSettled(PaymentError, Conflict):
    """The line was settled the other way already."""

    http_status = 409
    code = "payout_line_settled"


class LineStatus(enum.StrEnum):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"


#: (from, verdict) -> to; the machine in the module docstring.
TRANSITIONS: Final = MappingProxyType(
    {
        (LineStatus.PENDING, LineStatus.PAID): LineStatus.PAID,
        (LineStatus.PENDING, LineStatus.FAILED): LineStatus.FAILED,
        (LineStatus.PAID, LineStatus.PAID): LineStatus.PAID,
        (LineStatus.FAILED, LineStatus.FAILED): LineStatus.FAILED,
    }
)


def settle(current: LineStatus, verdict: LineStatus) -> LineStatus:
    """The line's status after the bank's ``verdict``, or :class:`LineSettled`."""
    to = TRANSITIONS.get((current, verdict))
    if to is None:
        raise LineSettled(f"the line is {current.value}; it cannot become {verdict.value}")
    return to


def iban(text: str) -> str:
    """The IBAN in its electronic form (no spaces, upper case), checked
    (ISO 13616-1 section 6: length and BBAN of the country, mod 97 == 1)."""
    value = "".join(text.split()).upper()
    if not value.isascii() or not value.isalnum():
        raise InvalidIban("an IBAN has only letters and digits")
    shape = IBAN_SHAPES.get(value[:2])
    if shape is None:
        raise InvalidIban(
            f"IBANs of {value[:2]!r} are not supported (only {', '.join(IBAN_SHAPES)})"
        )
    length, bban = shape
    if len(value) != length:
        raise InvalidIban(f"a {value[:2]} IBAN has {length} characters, not {len(value)}")
    if not value[2:4].isdigit() or not bban.fullmatch(value[4:]):
        raise InvalidIban(f"not the shape of a {value[:2]} IBAN")
    digits = "".join(str(int(c, 36)) for c in value[4:] + value[:4])
    if int(digits) % 97 != 1:
        raise InvalidIban("the IBAN's check digits do not match")
    return value


def account_title(text: str) -> str:
    """The account holder's name as the bank file carries it."""
    # Runs of spaces are tidied; any other whitespace (a line break) is refused.
    value = " ".join(part for part in text.split(" ") if part)
    if not _TITLE.fullmatch(value):
        raise InvalidAccountTitle(
            "an account title is 1 to 100 ASCII letters, digits, spaces and . , & ' ( ) / -,"
            " starting with a letter or digit"
        )
    return value


def batch_reference(day: str, batch_id_hex: str) -> str:
    """``PB-YYYYMMDD-XXXXXXXX``: the batch's day and the head of its id."""
    return f"PB-{day}-{batch_id_hex[:8].upper()}"


def line_reference(batch_ref: str, line_no: int) -> str:
    """What the bank shows the doctor and reports back: ``<batch>-NNNN``
    (25 characters, inside the 35 that bulk-transfer narratives allow)."""
    return f"{batch_ref}-{line_no:04d}"


def major_units(amount_minor: int, currency: Currency) -> str:
    """``123450`` PKR as ``1234.50``: banks' bulk files take major units."""
    exp = MINOR_UNIT_EXPONENT[currency]
    major, minor = divmod(amount_minor, 10**exp)
    return f"{major}.{minor:0{exp}d}" if exp else str(major)


@dataclass(frozen=True, slots=True)
class FileLine:
    iban: str
    account_title: str
    amount_minor: int
    currency: Currency
    reference: str


def bank_file(lines: Iterable[FileLine]) -> str:
    """The bulk-upload CSV (RFC 4180: CRLF, quoted where needed), a header
    row and one row per line."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for line in lines:
        if line.amount_minor <= 0:
            raise ValueError(f"line {line.reference}: a payout must be positive")
        writer.writerow(
            (
                line.iban,
                line.account_title,
                major_units(line.amount_minor, line.currency),
                line.currency.value,
                line.reference,
            )
        )
    return out.getvalue()
