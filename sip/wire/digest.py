"""Digest authentication of a trunk's requests (RFC 3261 section 22.4, with
RFC 7616's digest computation and RFC 8760's SHA-256 for SIP).

The bridge is the server side only: it challenges an INVITE with 401 and
``WWW-Authenticate`` (:func:`challenge`), reads the ``Authorization`` of the
INVITE sent again (:func:`parse_credentials`), and checks its ``response``
against the trunk's password (:func:`verify`). ``qop=auth`` is asked for, so
the client's own nonce (``cnonce``) and count (``nc``) go into the hash, and
answers without ``qop`` (RFC 2069 style, as some old PBXs send) are checked
the old way.

Nonces are stateless (:class:`Nonces`): the time they were made and an HMAC
of it under a key of this process, so any nonce this process made within its
lifetime verifies without a table, and one from elsewhere or too old does
not (a stale one is challenged again with ``stale=true``, RFC 7616 section
3.3, so the client retries without asking its user).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sip.errors import SipParseError
from sip.wire.grammar import LWS, is_token, read_quoted, shorten, split_outside

__all__ = [
    "ALGORITHMS",
    "Credentials",
    "Nonces",
    "challenge",
    "parse_credentials",
    "verify",
]

#: The digest algorithms the bridge checks, by their SIP names (RFC 8760).
ALGORITHMS: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
#: Seconds a nonce of ours is good for.
NONCE_LIFETIME = 300.0
# The parameters a credential must have (RFC 3261 section 22.4).
_REQUIRED = ("username", "realm", "nonce", "uri", "response")


@dataclass(frozen=True, slots=True)
class Credentials:
    """An ``Authorization: Digest ...`` header's parameters."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    qop: str | None = None
    nc: str | None = None
    cnonce: str | None = None


def parse_credentials(value: str) -> Credentials:
    """The digest credentials of an ``Authorization`` header's value; raises
    :class:`~sip.errors.SipParseError` for another scheme or a credential
    that lacks what RFC 3261 section 22.4 requires."""
    scheme, _, rest = value.strip(LWS).partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError(f"not a digest credential: {shorten(scheme)}")
    params: dict[str, str] = {}
    for item in split_outside(rest, ","):
        name, equals, raw = item.partition("=")
        name = name.strip(LWS).lower()
        raw = raw.strip(LWS)
        if not equals or not is_token(name):
            raise SipParseError(f"bad digest parameter {shorten(item)}")
        if raw.startswith('"'):
            text, end = read_quoted(raw, 0)
            if end != len(raw):
                raise SipParseError(f"text after a quoted value {shorten(item)}")
        elif is_token(raw):
            text = raw
        else:
            raise SipParseError(f"bad digest value {shorten(item)}")
        params[name] = text
    missing = [p for p in _REQUIRED if p not in params]
    if missing:
        raise SipParseError(f"digest credential without {', '.join(missing)}")
    qop = params.get("qop")
    if qop is not None and (params.get("nc") is None or params.get("cnonce") is None):
        raise SipParseError("digest qop without nc and cnonce")
    return Credentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=params["response"].lower(),
        algorithm=params.get("algorithm", "MD5").upper(),
        qop=qop.lower() if qop is not None else None,
        nc=params.get("nc"),
        cnonce=params.get("cnonce"),
    )


def challenge(realm: str, nonce: str, *, algorithm: str = "MD5", stale: bool = False) -> str:
    """A ``WWW-Authenticate`` value asking for ``algorithm`` with ``qop=auth``."""
    value = f'Digest realm="{realm}", nonce="{nonce}", algorithm={algorithm}, qop="auth"'
    return value + (", stale=true" if stale else "")


def verify(credentials: Credentials, method: str, password: str) -> bool:
    """Whether ``credentials`` prove the password for ``method`` (RFC 7616
    section 3.4.1; without ``qop``, RFC 2069's form)."""
    digest = ALGORITHMS.get(credentials.algorithm)
    if digest is None or credentials.qop not in (None, "auth"):
        return False
    c = credentials
    ha1 = digest(f"{c.username}:{c.realm}:{password}".encode())
    ha2 = digest(f"{method}:{c.uri}".encode())
    if c.qop is None:
        expected = digest(f"{ha1}:{c.nonce}:{ha2}".encode())
    else:
        expected = digest(f"{ha1}:{c.nonce}:{c.nc}:{c.cnonce}:{c.qop}:{ha2}".encode())
    return hmac.compare_digest(expected, c.response)


class Nonces:
    """Stateless nonces: ``TIME.MAC``, the MAC over the time under a key of
    this process (:data:`NONCE_LIFETIME` seconds good)."""

    def __init__(self, key: bytes | None = None, lifetime: float = NONCE_LIFETIME) -> None:
        self._key = key or secrets.token_bytes(32)
        self.lifetime = lifetime

    def _mac(self, stamp: str) -> str:
        return hmac.new(self._key, stamp.encode(), hashlib.sha256).hexdigest()[:32]

    def issue(self, now: float) -> str:
        stamp = f"{now:.3f}"
        return f"{stamp}.{self._mac(stamp)}"

    def check(self, nonce: str, now: float) -> str:
        """``ok``, ``stale`` (ours, but too old) or ``bad`` (not ours)."""
        stamp, _, mac = nonce.rpartition(".")
        try:
            made = float(stamp)
        except ValueError:
            return "bad"
        if not hmac.compare_digest(self._mac(stamp), mac):
            return "bad"
        return "ok" if 0 <= now - made <= self.lifetime else "stale"
