"""Rate limits shared by every replica: sign-in guessing, session creation,
TURN credentials.

Two shapes, each a few lines of arithmetic kept in one place:

* :class:`Rate`, a token bucket: ``burst`` requests at once, then
  ``per_hour`` refilled evenly (anonymous sessions and registrations per source
  address, TURN credentials per user).
* :class:`Backoff`, growing delays for guesses: the first ``free`` attempts
  pass, then each further one must wait ``delay``, ``2 * delay``,
  ``4 * delay``, ... up to ``delay_max`` after the one before; the count is
  forgotten ``forget`` seconds after the last attempt. An attempt may count
  from the moment it starts (``count=True``: a burst of concurrent guesses at
  one account is stopped before any password is hashed; refunded when it
  turns out right) or only once it has failed (:meth:`Limiter.fail`: many
  people behind one address may sign in at once).

With ``redis_url`` the state lives in Redis (one Lua script per operation, on
the server's clock, so replicas agree); without it, in this process, which is
right for ``wadud serve``. When Redis fails the limiter falls back to its own
memory and says so in the log: sign-in keeps working, limited per replica.

A refused call raises :class:`RateLimited` (429 with ``Retry-After``).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from wadud.errors import TooManyRequests
from wadud.messaging.bus import redis_client
from wadud.state import keys

if TYPE_CHECKING:
    from wadud.config import Settings

log = logging.getLogger("wadud.ratelimit")


class RateLimited(TooManyRequests):
    code = "rate-limited"
    title = "Too many requests; retry later"


@dataclass(frozen=True)
class Rate:
    """A token bucket: ``burst`` at once, refilled at ``per_hour``."""

    burst: int
    per_hour: float

    def wait(self, tokens: float, elapsed: float) -> tuple[float, float]:
        """(tokens left after one is taken or 0 and the wait, seconds)."""
        if self.burst <= 0 or self.per_hour <= 0:
            return float(self.burst), 0.0  # off
        rate = self.per_hour / 3600
        tokens = min(float(self.burst), tokens + elapsed * rate)
        if tokens < 1:
            return tokens, (1 - tokens) / rate
        return tokens - 1, 0.0


@dataclass(frozen=True)
class Backoff:
    """Growing delays between attempts beyond ``free`` (see the module doc)."""

    free: int
    delay: float
    delay_max: float
    forget: float

    def after(self, attempts: int) -> float:
        """How long the attempt after the ``attempts``-th must wait."""
        if self.free <= 0 or attempts <= self.free:
            return 0.0
        return float(min(self.delay_max, self.delay * 2.0 ** min(attempts - self.free - 1, 60)))


class Store(Protocol):
    async def take(self, key: str, rate: Rate) -> float:
        """Take one token; 0 if granted, else the seconds until one is."""

    async def attempt(self, key: str, rule: Backoff, count: bool = True) -> float:
        """0 if an attempt may go ahead (counted if ``count``), else the
        seconds to wait."""

    async def fail(self, key: str, rule: Backoff) -> None:
        """Count a failed attempt that was not counted when it started."""

    async def refund(self, key: str) -> None:
        """Uncount one attempt that turned out right."""

    async def forget(self, key: str) -> None:
        """Forget every attempt (a successful sign-in to this account)."""

    async def close(self) -> None: ...


class MemoryStore:
    """Limits in this process, on the monotonic clock."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # tokens, at
        self._attempts: dict[str, tuple[int, float, float]] = {}  # n, until, expires
        self._max_keys = max_keys

    def _prune(self, now: float) -> None:
        if len(self._attempts) > self._max_keys:
            self._attempts = {k: v for k, v in self._attempts.items() if v[2] > now}
        if len(self._buckets) > self._max_keys:
            # Oldest first; a forgotten bucket starts full, which only errs
            # on the generous side for keys idle the longest.
            keep = sorted(self._buckets.items(), key=lambda kv: kv[1][1])[-self._max_keys // 2 :]
            self._buckets = dict(keep)

    async def take(self, key: str, rate: Rate) -> float:
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (float(rate.burst), now))
        tokens, wait = rate.wait(tokens, now - at)
        self._buckets[key] = (tokens, now)
        self._prune(now)
        return wait

    async def attempt(self, key: str, rule: Backoff, count: bool = True) -> float:
        now = time.monotonic()
        n, until, expires = self._attempts.get(key, (0, 0.0, 0.0))
        if expires <= now:
            n, until = 0, 0.0
        if until > now:
            return until - now
        if count:
            self._count(key, rule, n, until, now)
        return 0.0

    async def fail(self, key: str, rule: Backoff) -> None:
        now = time.monotonic()
        n, until, expires = self._attempts.get(key, (0, 0.0, 0.0))
        if expires <= now:
            n, until = 0, 0.0
        self._count(key, rule, n, until, now)

    def _count(self, key: str, rule: Backoff, n: int, until: float, now: float) -> None:
        wait = rule.after(n + 1)
        until = max(until, now + wait)
        self._attempts[key] = (n + 1, until, until + rule.forget)
        self._prune(now)

    async def refund(self, key: str) -> None:
        entry = self._attempts.get(key)
        if entry is not None:
            self._attempts[key] = (max(0, entry[0] - 1), entry[1], entry[2])

    async def forget(self, key: str) -> None:
        self._attempts.pop(key, None)

    async def close(self) -> None:
        pass


_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"

# KEYS[1]; ARGV: burst, per second. Returns the wait as a string (a Lua
# number would come back truncated to an integer).
_TAKE = (
    _NOW
    + """
local burst, rate = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens < 1 then wait = (1 - tokens) / rate else tokens = tokens - 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""
)

# KEYS[1]; ARGV: free, delay, delay_max, forget, mode: "check" (wait only),
# "count" (wait, or count and go ahead), "fail" (count, whatever the wait).
_ATTEMPT = (
    _NOW
    + """
local free, delay, delay_max, forget =
    tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local mode = ARGV[5]
local h = redis.call('HMGET', KEYS[1], 'n', 'until')
local n, untl = tonumber(h[1]) or 0, tonumber(h[2]) or 0
if mode ~= 'fail' and untl > now then return tostring(untl - now) end
if mode == 'check' then return '0' end
n = n + 1
local wait = 0
if free > 0 and n > free then
    wait = math.min(delay_max, delay * 2 ^ math.min(n - free - 1, 60))
end
untl = math.max(untl, now + wait)
redis.call('HSET', KEYS[1], 'n', n, 'until', tostring(untl))
redis.call('PEXPIRE', KEYS[1], math.ceil((untl - now + forget) * 1000))
return '0'
"""
)

_REFUND = """
if redis.call('HINCRBY', KEYS[1], 'n', -1) < 0 then redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """Limits in Redis, shared by every replica; falls back to memory while
    Redis fails."""

    def __init__(self, url: str) -> None:
        self.redis: Any = redis_client(url, decode_responses=False, socket_timeout=2)
        self._take = self.redis.register_script(_TAKE)
        self._attempt = self.redis.register_script(_ATTEMPT)
        self._refund = self.redis.register_script(_REFUND)
        self._fallback = MemoryStore()

    @contextlib.asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError) as exc:
            log.warning(
                "rate limit store unreachable; limiting in this process",
                extra={"op": what, "error": str(exc)},
            )
            raise _Fallback from exc

    async def take(self, key: str, rate: Rate) -> float:
        if rate.burst <= 0 or rate.per_hour <= 0:
            return 0.0
        try:
            async with self._guard("take"):
                wait = await self._take(keys=[key], args=[rate.burst, rate.per_hour / 3600])
            return float(wait)
        except _Fallback:
            return await self._fallback.take(key, rate)

    async def attempt(self, key: str, rule: Backoff, count: bool = True) -> float:
        if rule.free <= 0:
            return 0.0
        mode = "count" if count else "check"
        args: list[str | float] = [rule.free, rule.delay, rule.delay_max, rule.forget, mode]
        try:
            async with self._guard("attempt"):
                wait = await self._attempt(keys=[key], args=args)
            return float(wait)
        except _Fallback:
            return await self._fallback.attempt(key, rule, count)

    async def fail(self, key: str, rule: Backoff) -> None:
        if rule.free <= 0:
            return
        args: list[str | float] = [rule.free, rule.delay, rule.delay_max, rule.forget, "fail"]
        try:
            async with self._guard("fail"):
                await self._attempt(keys=[key], args=args)
        except _Fallback:
            await self._fallback.fail(key, rule)

    async def refund(self, key: str) -> None:
        try:
            async with self._guard("refund"):
                await self._refund(keys=[key])
        except _Fallback:
            await self._fallback.refund(key)

    async def forget(self, key: str) -> None:
        try:
            async with self._guard("forget"):
                await self.redis.delete(key)
        except _Fallback:
            await self._fallback.forget(key)

    async def close(self) -> None:
        await self.redis.aclose()


class _Fallback(Exception):
    pass


class Limiter:
    """The limits of one application: a store, and the secret that turns
    e-mail addresses and client addresses into opaque keys (so neither sits
    in Redis in the clear)."""

    def __init__(self, store: Store, secret: str, prefix: str = "wadud:rl:") -> None:
        self.store = store
        self._secret = secret.encode()
        self._prefix = prefix

    def key(self, kind: str, ident: str) -> str:
        digest = hmac.new(self._secret, ident.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{self._prefix}{kind}:{digest}"

    async def take(self, kind: str, ident: str, rate: Rate, what: str) -> None:
        """Take one token of ``kind`` for ``ident``, or raise :class:`RateLimited`."""
        wait = await self.store.take(self.key(kind, ident), rate)
        if wait > 0:
            raise RateLimited(f"too many {what}; retry later", retry_after=wait)

    async def attempt(
        self, kind: str, ident: str, rule: Backoff, what: str, *, count: bool = True
    ) -> str:
        """Let an attempt of ``kind`` for ``ident`` go ahead (counted if
        ``count``) or raise :class:`RateLimited`; returns the key to
        :meth:`refund`, :meth:`fail` or :meth:`forget` it by."""
        key = self.key(kind, ident)
        wait = await self.store.attempt(key, rule, count)
        if wait > 0:
            raise RateLimited(f"too many {what}; retry later", retry_after=wait)
        return key

    async def fail(self, key: str, rule: Backoff) -> None:
        await self.store.fail(key, rule)

    async def refund(self, key: str) -> None:
        await self.store.refund(key)

    async def forget(self, key: str) -> None:
        await self.store.forget(key)


LIMITER = web.AppKey("limiter", Limiter)


def guesses_by_address(s: Settings) -> Backoff:
    """The rule for credentials guessed from one client address, whatever
    they are (a password or a TOTP code at sign-in, an API key's secret):
    failures only count, and they share one budget under ``login-address``."""
    return Backoff(
        s.limits_login_address_free, s.limits_login_delay, s.limits_login_delay_max,
        s.limits_login_forget,
    )  # fmt: skip


def client_address(request: web.Request) -> str:
    """The address a request came from, as the limits see it: the TCP peer,
    or behind ``trusted_proxies`` the right-most X-Forwarded-For hop that is
    not one of them (what each trusted hop appended; anything further left
    the client may have written itself)."""
    peer = request.remote or "unknown"
    trusted = _trusted(tuple(request.app[keys.SETTINGS].trusted_proxies))
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getall("X-Forwarded-For", []) for h in v.split(",")]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage where an address should be: count the proxy
    return peer


@functools.lru_cache(maxsize=8)
def _trusted(entries: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e.strip(), strict=False) for e in entries if e.strip())


def _is_trusted(
    address: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


async def limits_context(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the application's :class:`Limiter`, in Redis when
    ``redis_url`` is set."""
    settings = app[keys.SETTINGS]
    store: Store = RedisStore(settings.redis_url) if settings.redis_url else MemoryStore()
    app[LIMITER] = Limiter(store, settings.secret_key)
    try:
        yield
    finally:
        await store.close()
