"""Time-based one-time passwords (RFC 6238) for staff and admin sign-in.

The arithmetic is pyotp's (HOTP of RFC 4226 over 30-second steps, six
digits, SHA-1: what every authenticator app speaks). This module adds the
two rules pyotp leaves to its callers: a code is accepted one step either
side of now (clock drift, a code typed as it rolls over), and never twice
(the step it matched is returned, and the caller stores it and refuses any
step not after it, RFC 6238 section 5.2).

Pure: the caller passes the time.
"""

from __future__ import annotations

import hmac

import pyotp

__all__ = ["DIGITS", "INTERVAL", "matching_step", "new_secret", "provisioning_uri"]

INTERVAL = 30
DIGITS = 6
#: Steps either side of now that still accept a code.
DRIFT = 1


def new_secret() -> str:
    """A fresh base32 secret (160 bits, RFC 4226 section 4's recommendation)."""
    return pyotp.random_base32(32)


def provisioning_uri(secret: str, account: str, issuer: str) -> str:
    """The ``otpauth://`` URI an authenticator app reads from a QR code."""
    return pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL).provisioning_uri(
        name=account, issuer_name=issuer
    )


def matching_step(secret: str, code: str, now: float, last_step: int | None) -> int | None:
    """The time step ``code`` is valid for (within :data:`DRIFT` of ``now``
    and after ``last_step``), or None."""
    if len(code) != DIGITS or not code.isdigit():
        return None
    totp = pyotp.TOTP(secret, digits=DIGITS, interval=INTERVAL)
    current = int(now) // INTERVAL
    for step in range(current - DRIFT, current + DRIFT + 1):
        if last_step is not None and step <= last_step:
            continue
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None
