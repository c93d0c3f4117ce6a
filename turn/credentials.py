"""Long-term credentials for TURN (RFC 8489 section 9.2) from coturn-style REST secrets.

The REST scheme (draft-uberti-behave-turn-rest, coturn's ``use-auth-secret``):
the username is ``"<expiry unix time>:<user>"`` and the password is
``base64(HMAC-SHA1(secret, username))``. Any service that knows the secret can
mint credentials without talking to the relay, and existing generators for
coturn work unchanged. Several secrets may verify at once so a secret can be
rotated: the first signs, all verify.

Nonces are stateless (RFC 8489 section 9.2 leaves their form to the server):
``<expiry as 8 hex digits><HMAC(server key, expiry | client ip) truncated>``.
A nonce is bound to the client's address and expires, so a replayed old nonce
is answered with 438 Stale Nonce, and the server keeps no nonce table.

No clock is read here: every function takes ``now``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rtc.stun import long_term_key
from turn.errors import StunRequestError

REST_SEPARATOR = ":"
#: The user part of an anonymous patient session's username: ``anon-<user id>``.
#: The relay gives such users ``anonymous_quota`` allocations, not ``user_quota``.
ANONYMOUS_PREFIX = "anon-"


def rest_user(user_id: str, *, anonymous: bool) -> str:
    """The user part of a REST username for an account: its stable id, so the
    relay counts allocations per person, not per credential."""
    return ANONYMOUS_PREFIX + user_id if anonymous else user_id


def rest_password(secret: str, username: str) -> str:
    """Password for a REST username: base64(HMAC-SHA1(secret, username))."""
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def rest_credentials(secret: str, user: str, ttl: int, now: float) -> tuple[str, str]:
    """Time-limited (username, password) valid for ``ttl`` seconds after ``now``.

    Compatible with coturn ``use-auth-secret``/``static-auth-secret``: the
    username is ``"expiry:user"`` where expiry is a Unix time.
    """
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    if REST_SEPARATOR in user:
        # coturn splits on the first separator; a user containing one would be
        # read with the wrong expiry by other generators' verifiers.
        raise ValueError("user must not contain ':'")
    username = f"{int(now) + ttl}{REST_SEPARATOR}{user}" if user else str(int(now) + ttl)
    return username, rest_password(secret, username)


def rest_expiry(username: str) -> int | None:
    """The expiry of a REST username, or None if it is not of that form."""
    head = username.split(REST_SEPARATOR, 1)[0]
    if not head.isascii() or not head.isdigit() or len(head) > 12:
        return None
    return int(head)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified request is from, and the keys its responses are signed with."""

    username: str
    user: str
    key: bytes


class CredentialVerifier:
    """Finds the long-term key(s) for a username (RFC 8489 section 9.2.4 step 3).

    Returns candidate keys, since with several REST secrets the key depends on
    which secret minted the password; the caller keeps the one whose
    MESSAGE-INTEGRITY checks. Derived keys are cached: a key is an HMAC and an
    MD5, and a busy client repeats its username on every request.
    """

    def __init__(
        self,
        realm: str,
        secrets: Sequence[str] = (),
        static_users: Mapping[str, str] | None = None,
        cache_size: int = 4096,
    ) -> None:
        self.realm = realm
        self.secrets = tuple(secrets)
        self._static = {
            user: long_term_key(user, realm, password)
            for user, password in (static_users or {}).items()
        }
        self._cache: OrderedDict[str, tuple[bytes, ...]] = OrderedDict()
        self._cache_size = cache_size

    def keys_for(self, username: str, now: float) -> tuple[bytes, ...]:
        """Candidate keys; raises 401 for an expired REST username or an unknown user."""
        if not username or len(username) > 512:
            raise StunRequestError(401, metric="bad_username")
        static = self._static.get(username)
        if static is not None:
            return (static,)
        expiry = rest_expiry(username) if self.secrets else None
        if expiry is None:
            raise StunRequestError(401, metric="unknown_user")
        if expiry < now:
            raise StunRequestError(401, metric="expired")
        keys = self._cache.get(username)
        if keys is None:
            keys = tuple(
                long_term_key(username, self.realm, rest_password(secret, username))
                for secret in self.secrets
            )
            self._cache[username] = keys
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(username)
        return keys

    @staticmethod
    def user_of(username: str) -> str:
        """The quota bucket of a username: the user part of ``expiry:user``, the
        same for every credential minted for that user (a fresh credential is
        no fresh quota)."""
        if rest_expiry(username) is not None:
            return username.split(REST_SEPARATOR, 1)[1] if REST_SEPARATOR in username else ""
        return username


class NonceFactory:
    """Stateless, address-bound, expiring nonces (RFC 8489 section 9.2.1)."""

    def __init__(self, key: bytes, lifetime: float) -> None:
        self._key = key
        self.lifetime = lifetime

    def _mac(self, expiry: int, client_ip: str) -> str:
        msg = f"{expiry:08x}|{client_ip}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:16]

    def issue(self, client_ip: str, now: float) -> bytes:
        # Round up so a nonce is good for at least its lifetime.
        expiry = (int(now + self.lifetime) + 1) & 0xFFFFFFFF
        return f"{expiry:08x}{self._mac(expiry, client_ip)}".encode("ascii")

    def check(self, nonce: bytes, client_ip: str, now: float) -> bool | None:
        """True if valid, False if well-formed and ours but expired, None if not ours."""
        if len(nonce) != 24:
            return None
        try:
            text = nonce.decode("ascii")
            expiry = int(text[:8], 16)
        except (UnicodeDecodeError, ValueError):
            return None
        if not hmac.compare_digest(text[8:], self._mac(expiry, client_ip)):
            return None
        return expiry >= now


def ice_server(
    secret: str, user: str, ttl: int, now: float, urls: Sequence[str]
) -> dict[str, object]:
    """One WebRTC ``RTCIceServer`` entry with fresh REST credentials.

    What the HTTP API hands a signed-in user and signalling puts in its join
    reply: ``{"urls": [...], "username": ..., "credential": ..., "ttl": ...}``.
    """
    username, credential = rest_credentials(secret, user, ttl, now)
    return {"urls": list(urls), "username": username, "credential": credential, "ttl": ttl}
