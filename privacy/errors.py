"""Typed errors of the privacy package.

Every error derives from :class:`PrivacyError`, hung under
:class:`wadud.errors.WadudError`, so the one problem middleware renders it.
A child's HTTP status is that of the status class it also derives from
(``Forbidden``, ``NotFound``, ...); the root sets none, so bare it is 500.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from wadud.errors import Conflict, Forbidden, NotFound, Unprocessable, WadudError

__all__ = [
    "AuditChainBroken",
    "ConsentRequired",
    "InvalidConsentText",
    "PrivacyError",
    "StaleConsentVersion",
    "UnknownConsentVersion",
]


class PrivacyError(WadudError):
    """Root of every error raised by the privacy package (bare: our fault, 500)."""

    code: ClassVar[str] = "privacy_error"
    title: ClassVar[str] = "Privacy error"


class ConsentRequired(PrivacyError, Forbidden):
    """The patient has not accepted (or has withdrawn) a consent the action needs.

    The problem body names the missing purposes (``missing``) and the region
    whose rules asked for them, so a client can show the right texts.
    """

    code = "consent_required"
    title = "Consent required"

    def __init__(self, missing: Sequence[str], *, region: str) -> None:
        names = ", ".join(missing)
        super().__init__(
            f"the patient has not given the consent this needs: {names}",
            missing=list(missing),
            region=region,
        )
        self.missing = tuple(missing)
        self.region = region


class InvalidConsentText(PrivacyError, Unprocessable):
    """A consent text to publish is malformed (unknown purpose or language, empty body)."""

    code = "invalid_consent_text"
    title = "Invalid consent text"


class UnknownConsentVersion(PrivacyError, NotFound):
    """An accept names a consent version that does not exist (or is not current)."""

    code = "unknown_consent_version"
    title = "Unknown consent version"


class StaleConsentVersion(PrivacyError, Conflict):
    """An accept names a consent version that a newer one has replaced."""

    code = "stale_consent_version"
    title = "Consent version replaced"


class AuditChainBroken(PrivacyError):
    """The audit chain does not verify: a row was altered, inserted or removed."""

    code = "audit_chain_broken"
    title = "Audit chain broken"
