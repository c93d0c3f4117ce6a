"""The bus: how processes tell each other things.

One interface, two implementations:

* :class:`LocalBus`, in-process, for ``wadud serve`` and single-process tests;
* :class:`RedisBus`, Redis pub/sub for fan-out and Redis streams for
  durable, replayable logs, for everything that runs as several processes.

Pub/sub is fire-and-forget: a subscriber that is not listening misses the
message. Streams keep messages (trimmed to ``maxlen``) and a reader names the
last id it saw, so it can catch up after a restart. Messages are JSON objects.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from wadud.errors import ConfigError

log = logging.getLogger("wadud.bus")

#: Entries a stream keeps (Redis trims approximately) unless told otherwise.
STREAM_MAXLEN = 100_000


@dataclass(frozen=True)
class Message:
    topic: str
    data: dict[str, Any]


#: Seconds a process whose heartbeat is back after a lapse waits for its
#: subscriptions' fresh connections (Subscription.renew) before going on
#: anyway: the reading loop makes one within a second or so.
RENEW_WITHIN = 5.0


class BusSubscription(Protocol):
    def __aiter__(self) -> AsyncIterator[Message]: ...
    async def close(self) -> None: ...
    async def renew(self, within: float) -> bool:
        """Subscribe again on a fresh connection (the old one may be stuck);
        whether that was done within ``within`` seconds."""


class Bus(Protocol):
    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        """Send ``data`` to everyone subscribed to ``topic`` now."""

    async def subscribe(self, *topics: str) -> BusSubscription:
        """Start receiving messages on ``topics``; subscribed when this returns."""

    async def append(
        self, stream: str, data: Mapping[str, Any], *, maxlen: int = STREAM_MAXLEN
    ) -> str:
        """Add ``data`` to ``stream``; return its id (ids sort in stream order)."""

    async def publish_all(
        self, events: Sequence[tuple[str, Mapping[str, Any]]], *, stream: str
    ) -> None:
        """:meth:`publish` each (topic, data) and :meth:`append` it to
        ``stream``, in order (the outbox relay's batch)."""

    async def read(
        self, stream: str, after: str = "0", *, count: int = 100, block: float = 0.0
    ) -> list[tuple[str, dict[str, Any]]]:
        """Entries of ``stream`` after id ``after``, waiting up to ``block`` seconds
        for the first when there are none."""

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the bus's Redis could not be reached (refused,
    cut, timed out, failing over), as against a fault in what was sent."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError)  # TimeoutError too


def encode(data: Mapping[str, Any]) -> str:
    """A message as the bus writes it (compact JSON); subscriptions decode
    with json.loads. Code that publishes to Redis itself (media RPC, the call
    cluster) encodes with this too."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)


# ---------------------------------------------------------------------------


class _LocalSubscription:
    def __init__(self, bus: LocalBus, topics: tuple[str, ...]) -> None:
        self._bus = bus
        self.topics = topics
        self.queue: asyncio.Queue[Message | None] = asyncio.Queue(maxsize=10_000)

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            msg = await self.queue.get()
            if msg is None:
                return
            yield msg

    async def close(self) -> None:
        self._bus._drop(self)
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(None)

    async def renew(self, within: float) -> bool:
        """Nothing to renew in one process."""
        return True


class LocalBus:
    """The bus inside one process. Slow subscribers lose messages rather than
    stall publishers, as a Redis subscriber that falls behind would."""

    def __init__(self) -> None:
        self._subs: dict[str, set[_LocalSubscription]] = defaultdict(set)
        # Entries as the encoded text Redis would hold; decoded for each
        # reader, so no two readers share (or can change) one dict.
        self._streams: dict[str, list[tuple[str, str]]] = defaultdict(list)
        self._stream_changed = asyncio.Condition()
        self._seq = itertools.count(1)

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        subs = self._subs.get(topic)
        if not subs:
            return  # as Redis: nobody listening, nothing delivered
        # Round-trip through JSON so in-process behaviour matches Redis exactly.
        payload = json.loads(encode(data))
        for sub in list(subs):
            try:
                sub.queue.put_nowait(Message(topic, payload))
            except asyncio.QueueFull:
                log.warning("local bus subscriber is full; message dropped", extra={"topic": topic})

    async def subscribe(self, *topics: str) -> _LocalSubscription:
        sub = _LocalSubscription(self, topics)
        for t in topics:
            self._subs[t].add(sub)
        return sub

    def _drop(self, sub: _LocalSubscription) -> None:
        for t in sub.topics:
            self._subs[t].discard(sub)

    async def append(
        self, stream: str, data: Mapping[str, Any], *, maxlen: int = STREAM_MAXLEN
    ) -> str:
        entry_id = f"{int(time.time() * 1000)}-{next(self._seq)}"
        entries = self._streams[stream]
        entries.append((entry_id, encode(data)))
        if len(entries) > maxlen:
            del entries[: len(entries) - maxlen]
        async with self._stream_changed:
            self._stream_changed.notify_all()
        return entry_id

    async def publish_all(
        self, events: Sequence[tuple[str, Mapping[str, Any]]], *, stream: str
    ) -> None:
        for topic, data in events:
            await self.publish(topic, data)
            await self.append(stream, data)

    async def read(
        self, stream: str, after: str = "0", *, count: int = 100, block: float = 0.0
    ) -> list[tuple[str, dict[str, Any]]]:
        def newer() -> list[tuple[str, dict[str, Any]]]:
            key = _id_key(after)
            found = [e for e in self._streams.get(stream, []) if _id_key(e[0]) > key][:count]
            return [(entry_id, json.loads(text)) for entry_id, text in found]

        found = newer()
        if found or block <= 0:
            return found
        async with self._stream_changed:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a
            # cancellation that arrives as the wait ends (see wadud.messaging.loops.woken).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(block):
                    await self._stream_changed.wait_for(lambda: bool(newer()))
        return newer()

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        for subs in list(self._subs.values()):
            for sub in list(subs):
                await sub.close()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


# ---------------------------------------------------------------------------


#: What a renewal publishes to a subscription's first topic to mark where the
#: old connection ends and the new one takes over; every subscription
#: skips it (another process's on that topic too).
RENEWAL_MARK = "\x00wadud-renewal:"
#: Seconds without a message after which a renewal stops reading the old
#: connection for its mark: one stuck in a cut's retransmission backoff
#: gives nothing, and what it held is lost; one still delivering is read on.
DRAIN_IDLE = 1.0
#: Seconds a renewal reads the old connection at most, however it delivers.
DRAIN_LIMIT = 10.0


def _text(data: Any) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)


def _decoded(channel: Any, raw: str) -> Message | None:
    """A pub/sub message as the bus hands it out; None (logged) for one
    that is not JSON."""
    topic = _text(channel)
    try:
        data = json.loads(raw)
    except ValueError:
        log.warning("undecodable bus message dropped", extra={"topic": topic})
        return None
    return Message(topic, data)


async def _up_to(pubsub: Any, mark: str, idle: float) -> AsyncIterator[Message]:
    """The messages ``pubsub`` holds before ``mark``; TimeoutError once a
    read waited ``idle`` seconds for nothing, or after :data:`DRAIN_LIMIT`.
    Timed by its own reads, not across its yields: no timeout scope is left
    open while the consumer runs (it would cancel the consumer's task)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DRAIN_LIMIT
    waited_since = loop.time()
    while True:
        now = loop.time()
        if now >= end or now - waited_since >= idle:
            raise TimeoutError
        msg = await pubsub.get_message(timeout=min(idle, end - now))
        if msg is None or msg.get("type") != "message":
            continue
        raw = _text(msg["data"])
        if raw == mark:
            return
        if not raw.startswith(RENEWAL_MARK):  # another's renewal is skipped
            message = _decoded(msg["channel"], raw)
            if message is not None:
                yield message
        waited_since = loop.time()


class _RedisSubscription:
    """A pub/sub subscription that survives Redis restarts: when the
    connection drops it reconnects with backoff and subscribes again. Messages
    published while Redis was away are lost, as pub/sub promises; consumers
    that must not lose anything resume from PostgreSQL or a stream."""

    def __init__(self, bus: RedisBus, topics: tuple[str, ...]) -> None:
        self._bus = bus
        self.topics = topics
        self._pubsub: Any = None
        self._closed = False
        #: Set by renew(): the reading loop, which owns the connection's
        #: reads, drops it and sets the event once subscribed anew.
        self._renewed: asyncio.Event | None = None

    async def _connect(self) -> None:
        self._pubsub = self._bus.redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(*self.topics)

    async def __aiter__(self) -> AsyncIterator[Message]:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        delay = 0.1
        #: The renewal mark up to which the new connection's messages were
        #: read on the old one already.
        skip_to: str | None = None
        while not self._closed:
            try:
                if self._renewed is not None and self._pubsub is not None:
                    old, self._pubsub = self._pubsub, None
                    mark = f"{RENEWAL_MARK}{uuid.uuid4().hex}"
                    drained = False
                    try:
                        # Failing, it is made again below (the old one closed).
                        await self._connect()
                        self._renewed.set()
                        self._renewed = None
                        try:
                            await self._bus.redis.publish(self.topics[0], mark)
                            async for message in _up_to(old, mark, DRAIN_IDLE):
                                yield message
                            drained = True
                        except (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError):
                            # The old connection was stuck or gone: what it
                            # still held is lost, as in a cut.
                            pass
                    finally:
                        with contextlib.suppress(Exception):
                            await old.aclose()
                    skip_to = mark if drained else None
                if self._pubsub is None:
                    await self._connect()
                    delay = 0.1
                    if self._renewed is not None:
                        self._renewed.set()
                        self._renewed = None
                msg = await self._pubsub.get_message(timeout=1.0)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("redis subscription lost; reconnecting", extra={"error": str(exc)})
                skip_to = None
                await self._reset()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            if msg is None or msg.get("type") != "message":
                continue
            raw = _text(msg["data"])
            if raw.startswith(RENEWAL_MARK):
                if raw == skip_to:
                    skip_to = None
                continue
            if skip_to is not None:
                continue  # read on the old connection already
            decoded = _decoded(msg["channel"], raw)
            if decoded is not None:
                yield decoded

    async def _reset(self) -> None:
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
            self._pubsub = None

    async def close(self) -> None:
        self._closed = True
        await self._reset()

    async def renew(self, within: float) -> bool:
        """After a network cut the old TCP connection may look alive while
        what Redis sends on it waits out the retransmission backoff the cut
        built up (tens of seconds): a fresh connection starts clean. The
        reading loop makes it within a second (its read times out each
        second), subscribed before the old one is let go: a mark published
        then reaches both, the old one is read up to it (given up after
        :data:`DRAIN_IDLE` without a message), and the new one after it, so
        what was on its way is neither lost nor read twice."""
        renewed = self._renewed = self._renewed or asyncio.Event()
        try:
            async with asyncio.timeout(within):
                await renewed.wait()
        except TimeoutError:
            return False
        return True


#: Connections one process opens to Redis at most. Every subscription holds
#: one for its life and commands borrow one each; redis-py's default pool
#: (100 connections, failing at once when none is free) refused joins when
#: fifty rooms opened together.
REDIS_CONNECTIONS = 512
#: Seconds a command waits for a free connection before it fails.
REDIS_POOL_WAIT = 5.0

#: The scheme of a URL that names Redis Sentinels instead of one server.
SENTINEL_SCHEME = "redis+sentinel"
#: The port of a sentinel whose URL gives none (Redis's own default).
SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelURL:
    """``redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]``:
    the sentinels to ask (port 26379 when left out; an IPv6 address in
    brackets), the name they monitor the primary under, and the database
    number (0 when left out). USER and PASSWORD, percent-encoded, are the
    Redis servers' credentials; the sentinels are asked without any."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SentinelURL:
        from urllib.parse import unquote, urlsplit

        try:
            parts = urlsplit(url)
        except ValueError as exc:  # an unclosed [ of an IPv6 address
            raise ConfigError(f"redis url: {exc}") from None
        if parts.scheme != SENTINEL_SCHEME:
            raise ConfigError(f"redis url: {SENTINEL_SCHEME}:// expected, not {parts.scheme!r}")
        if parts.query or parts.fragment:
            raise ConfigError("redis url: a sentinel url takes no ?options or #fragment")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        username = password = None
        if userinfo:
            user, colon, secret = userinfo.partition(":")
            username = unquote(user) or None
            password = unquote(secret) if colon else None
        sentinels = tuple(_sentinel_address(h) for h in hosts.split(",") if h)
        if not sentinels:
            raise ConfigError("redis url: no sentinel host (redis+sentinel://HOST:PORT/SERVICE)")
        service, _, db = parts.path.strip("/").partition("/")
        if not service:
            raise ConfigError("redis url: no service name after the sentinels (.../SERVICE)")
        if db and not (db.isdigit() and db.isascii()):
            raise ConfigError(f"redis url: database {db!r} is not a number (.../SERVICE/DB)")
        return cls(sentinels, unquote(service), int(db or 0), username, password)


def _sentinel_address(text: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or rest[:1] not in ("", ":"):
            raise ConfigError(f"redis url: bad sentinel address {text!r}")
        colon, port = rest[:1], rest[1:]
    else:
        host, colon, port = text.partition(":")
    if not host:
        raise ConfigError(f"redis url: bad sentinel address {text!r}")
    if not colon:
        return host, SENTINEL_PORT
    if not (port.isdigit() and port.isascii() and 0 < int(port) < 65536):
        raise ConfigError(f"redis url: bad port in sentinel address {text!r}")
    return host, int(port)


def redis_client(url: str, *, decode_responses: bool = True, **options: Any) -> Any:
    """A ``redis.asyncio`` client for ``url`` whose pool makes commands wait
    for a free connection (up to REDIS_POOL_WAIT) instead of failing; every
    Redis user in Wadud gets its client here.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``) or a
    :class:`SentinelURL`. Through sentinels every new connection, and every
    one that broke, goes to the primary the sentinels name at that moment
    (redis-py's ``SentinelConnectionPool``), so the client follows a failover;
    commands that were on the dead primary fail as they would on a restart."""
    import redis.asyncio as aioredis

    options.setdefault("socket_connect_timeout", 2)
    options.setdefault("health_check_interval", 10)
    if url.startswith(SENTINEL_SCHEME + ":"):
        return _sentinel_client(SentinelURL.parse(url), decode_responses, options)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=REDIS_CONNECTIONS,
        timeout=REDIS_POOL_WAIT,
        decode_responses=decode_responses,
        **options,
    )
    return aioredis.Redis(connection_pool=pool)


def _sentinel_client(where: SentinelURL, decode_responses: bool, options: dict[str, Any]) -> Any:
    from redis.asyncio import BlockingConnectionPool
    from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

    # Defined here because redis is imported here, by the processes that use it.
    class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
        """redis-py's sentinel pool (where to connect) over its blocking pool
        (how many connections, and waiting for a free one): the first leaves
        getting and releasing connections to the second, and master_for takes
        any subclass of the first. Closing it closes the clients it asks the
        sentinels with, which nothing else owns."""

        async def aclose(self) -> None:
            await super().aclose()
            for sentinel in self.sentinel_manager.sentinels:
                await sentinel.aclose()

    # A sentinel that hangs is given up on after socket_timeout (2 s unless
    # the caller chose one) and the next one is asked.
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    sentinel_options.setdefault("socket_timeout", 2)
    sentinels = Sentinel(list(where.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
    return sentinels.master_for(
        where.service,
        connection_pool_class=BlockingSentinelPool,
        max_connections=REDIS_CONNECTIONS,
        timeout=REDIS_POOL_WAIT,
        decode_responses=decode_responses,
        db=where.db,
        username=where.username,
        password=where.password,
        **options,
    )


class RedisBus:
    def __init__(self, url: str) -> None:
        self.redis = redis_client(url)

    @classmethod
    def from_client(cls, redis: Any) -> RedisBus:
        """A bus over an existing ``redis.asyncio`` client (``decode_responses``
        on), for code that holds one already and wants the subscriptions that
        survive Redis restarts."""
        bus = cls.__new__(cls)
        bus.redis = redis
        return bus

    async def publish(self, topic: str, data: Mapping[str, Any]) -> None:
        await self.redis.publish(topic, encode(data))

    async def subscribe(self, *topics: str) -> _RedisSubscription:
        sub = _RedisSubscription(self, topics)
        await sub._connect()
        return sub

    async def append(
        self, stream: str, data: Mapping[str, Any], *, maxlen: int = STREAM_MAXLEN
    ) -> str:
        entry_id = await self.redis.xadd(
            stream, {"d": encode(data)}, maxlen=maxlen, approximate=True
        )
        return entry_id if isinstance(entry_id, str) else entry_id.decode()

    async def publish_all(
        self, events: Sequence[tuple[str, Mapping[str, Any]]], *, stream: str
    ) -> None:
        """One pipeline for the batch: a round trip to Redis instead of two
        per event. Not a transaction: like separate calls, a failure part way
        may have delivered the first ones (the relay publishes again; every
        event carries its id for consumers to spot a repeat)."""
        if not events:
            return
        pipe = self.redis.pipeline(transaction=False)
        for topic, data in events:
            text = encode(data)
            pipe.publish(topic, text)
            pipe.xadd(stream, {"d": text}, maxlen=STREAM_MAXLEN, approximate=True)
        await pipe.execute()

    async def read(
        self, stream: str, after: str = "0", *, count: int = 100, block: float = 0.0
    ) -> list[tuple[str, dict[str, Any]]]:
        kwargs: dict[str, Any] = {"count": count}
        if block > 0:
            kwargs["block"] = int(block * 1000)
        result: Any = await self.redis.xread({stream: after}, **kwargs)
        out = []
        for _name, entries in result or []:
            for entry_id, fields in entries:
                out.append((entry_id, json.loads(fields["d"])))
        return out

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self.redis.aclose()


def create(redis_url: str) -> Bus:
    return RedisBus(redis_url) if redis_url else LocalBus()
