"""The media worker registry in Redis: who runs where, with what load.

Each ``wadud media`` worker process keeps one hash alive by heartbeat
(:class:`Registration`); API replicas read them (:func:`workers`,
:func:`alive`) to place rooms and to notice a worker that is gone. The keys,
as agreed between the media node and signalling:

* ``wadud:media:workers``: SET of every worker id ever registered; a reader
  that finds an id whose hash expired removes it;
* ``wadud:media:worker:{wid}``: HASH of :class:`WorkerInfo`'s fields, with a
  time to live of ``media_worker_ttl`` renewed every ``media_heartbeat``: a
  worker that stops (SIGKILL, a frozen machine) drops out by itself;
* ``wadud:media:worker:{wid}:rooms``: SET of the rooms placed on the worker,
  written by placement; the worker only counts it (its ``rooms`` field) and,
  draining, waits for it to empty;
* ``wadud:media:load:{region}``: ZSET of the region's ready workers by load
  (rooms placed, then transports over capacity), written at each heartbeat
  and moved by placement's scripts as they add and remove rooms, so
  placement reads the least loaded few (:func:`least_loaded`) rather than
  every entry; a reader that finds a member whose hash expired removes it;
* ``wadud:media:regions``: SET of the regions workers registered in.

Everything is plain strings (the client uses ``decode_responses=True``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Literal, cast

from wadud.messaging.loops import go_on, stopped

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "DRAINING",
    "READY",
    "WORKERS",
    "Registration",
    "WorkerInfo",
    "alive",
    "control_channel",
    "entries",
    "least_loaded",
    "load_key",
    "regions",
    "rooms_key",
    "worker",
    "worker_key",
    "workers",
    "write",
]

log = logging.getLogger("wadud.sfu.registry")

WORKERS = "wadud:media:workers"
REGIONS = "wadud:media:regions"
READY: Literal["ready"] = "ready"
DRAINING: Literal["draining"] = "draining"


def worker_key(wid: str) -> str:
    """The worker's registry hash."""
    return f"wadud:media:worker:{wid}"


def load_key(region: str) -> str:
    """The region's ready workers by load (a ZSET)."""
    return f"wadud:media:load:{region}"


def rooms_key(wid: str) -> str:
    """The set of rooms placement put on the worker."""
    return f"wadud:media:worker:{wid}:rooms"


def control_channel(wid: str) -> str:
    """The pub/sub channel the worker takes requests on (:mod:`sfu.control.rpc`)."""
    return f"wadud:media:control:{wid}"


@dataclass(frozen=True)
class WorkerInfo:
    """One worker's registry entry. ``host``/``port`` is where peers reach its
    UDP socket; ``incarnation`` changes with every process start, so a reply
    or an event from a worker's previous life is never taken for its current
    one; ``cpu`` is the fraction of one core it used over the last heartbeat;
    ``pps`` packets per second received plus forwarded; ``fingerprint`` the
    worker's DTLS certificate fingerprint (``"sha-256 AB:CD:..."``), which a
    relay link to it checks (:class:`sfu.control.messages.RelayPeer`); empty from a
    worker that predates relay links."""

    worker: str
    incarnation: str
    node: str
    region: str
    index: int
    host: str
    port: int
    capacity: int
    fingerprint: str = ""
    transports: int = 0
    rooms: int = 0
    pps: float = 0.0
    cpu: float = 0.0
    state: str = READY
    updated: float = 0.0

    @property
    def live(self) -> bool:
        """Takes new rooms: registered and not draining."""
        return self.state == READY

    @property
    def draining(self) -> bool:
        return self.state == DRAINING

    def to_hash(self) -> dict[str, str]:
        return {k: _text(v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> WorkerInfo:
        """The entry from HGETALL; ValueError when a field is missing or malformed."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in _OPTIONAL:
                    continue
                raise ValueError(f"registry entry without {f.name!r}")
            raw = data[f.name]
            values[f.name] = (
                int(raw) if f.type == "int" else float(raw) if f.type == "float" else raw
            )
        return cls(**values)


_OPTIONAL = {"fingerprint", "transports", "rooms", "pps", "cpu", "state", "updated"}


def _text(value: object) -> str:
    if isinstance(value, float):
        return repr(round(value, 4))
    return str(value)


async def workers(redis: Redis, region: str | None = None) -> list[WorkerInfo]:
    """Every worker whose entry has not expired, ready and draining alike
    (``region``: only that region's), sorted by id. Ids whose entry expired
    are removed from ``wadud:media:workers`` on the way."""
    ids = sorted(str(wid) for wid in await redis.smembers(WORKERS))
    if not ids:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for wid in ids:
            pipe.hgetall(worker_key(wid))
        entries: list[dict[str, str]] = await pipe.execute()
    found: list[WorkerInfo] = []
    gone: list[str] = []
    for wid, entry in zip(ids, entries, strict=True):
        if not entry:
            gone.append(wid)
            continue
        info = _parse(wid, entry)
        if info is not None and (region is None or info.region == region):
            found.append(info)
    if gone:
        # A worker that comes back re-adds itself at its next heartbeat.
        await redis.srem(WORKERS, *gone)
    return found


async def least_loaded(
    redis: Redis, region: str, start: int, count: int
) -> tuple[list[WorkerInfo], bool]:
    """The region's ready workers ranked ``start`` to ``start + count - 1``
    by load, least first, their entries read (one round trip each for the
    ranks and the entries); members whose entry expired are removed on the
    way. The flag: whether ranks past these may remain."""
    key = load_key(region)
    wids = [str(w) for w in await redis.zrange(key, start, start + count - 1)]
    if not wids:
        return [], False
    there = await entries(redis, wids)
    found = [there[w] for w in wids if w in there and there[w].region == region]
    gone = [w for w in wids if w not in there]
    if gone:
        # A worker that comes back re-adds itself at its next heartbeat.
        await redis.zrem(key, *gone)
    return found, len(wids) == count


async def regions(redis: Redis) -> set[str]:
    """The regions workers have registered in."""
    return {str(r) for r in await redis.smembers(REGIONS)}


async def entries(redis: Redis, wids: list[str]) -> dict[str, WorkerInfo]:
    """The entries of ``wids`` that are there, by id (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for wid in wids:
            pipe.hgetall(worker_key(wid))
        found: list[dict[str, str]] = await pipe.execute()
    parsed = {wid: _parse(wid, entry) for wid, entry in zip(wids, found, strict=True) if entry}
    return {wid: info for wid, info in parsed.items() if info is not None}


async def worker(redis: Redis, wid: str) -> WorkerInfo | None:
    """One worker's entry, None when it expired or cannot be read."""
    # The registry's clients decode responses (str, not bytes).
    entry = cast("dict[str, str]", await redis.hgetall(worker_key(wid)))
    return _parse(wid, entry) if entry else None


def _parse(wid: str, entry: Mapping[str, str]) -> WorkerInfo | None:
    try:
        return WorkerInfo.from_hash(entry)
    except ValueError as exc:
        log.warning("unreadable media worker entry", extra={"worker": wid, "error": str(exc)})
        return None


async def alive(redis: Redis, wid: str, incarnation: str) -> bool:
    """The worker's entry is there with this incarnation and something listens
    on its control channel (PUBSUB NUMSUB): a request to it can be answered."""
    current = await redis.hget(worker_key(wid), "incarnation")
    if current != incarnation:
        return False
    return await listening(redis, wid)


async def listening(redis: Redis, wid: str) -> bool:
    """Some process takes requests on the worker's control channel; a killed
    worker's subscription is gone as soon as Redis sees its socket close."""
    return wid in await listening_many(redis, [wid])


async def listening_many(redis: Redis, wids: list[str]) -> set[str]:
    """Those of ``wids`` whose control channel has a subscriber (one round trip)."""
    if not wids:
        return set()
    counts = await redis.pubsub_numsub(*[control_channel(w) for w in wids])
    by_channel = {ch.decode() if isinstance(ch, bytes) else str(ch): int(n) for ch, n in counts}
    return {w for w in wids if by_channel.get(control_channel(w), 0) > 0}


Load = Callable[[], Mapping[str, float]]
"""What a worker reports at each heartbeat: ``transports``, ``pps``, ``cpu``."""


def write(pipe: Any, info: WorkerInfo, ttl: float) -> None:
    """Queue on ``pipe`` what a worker's heartbeat writes: its entry for
    ``ttl`` seconds, its id in the set, its load in its region's index (or
    out of it, draining) and its region."""
    key = worker_key(info.worker)
    pipe.hset(key, mapping=info.to_hash())
    pipe.pexpire(key, int(ttl * 1000))
    pipe.sadd(WORKERS, info.worker)
    if info.state == READY:
        # Rooms placed first (placement's own measure, kept current between
        # beats by its scripts), then transports: always below one room.
        score = info.rooms + info.transports / (max(info.capacity, 1) + 1)
        pipe.zadd(load_key(info.region), {info.worker: score})
    else:
        pipe.zrem(load_key(info.region), info.worker)
    pipe.sadd(REGIONS, info.region)


class Registration:
    """A worker's registry entry, kept alive by a heartbeat task.

    :meth:`start` writes the entry at once (so the worker is placeable as
    soon as it returns), then every ``heartbeat`` seconds rewrites it with the
    load from ``load()`` and the size of its rooms set, renewing the TTL.
    Redis errors are logged and retried at the next beat: a Redis restart
    costs the entry at most its TTL. A beat that does not finish within the
    TTL is given up with its connection: after a network cut that connection
    may wait out TCP's retransmission backoff long after the heal, while a
    fresh one works at once. A beat written after a gap longer than the TTL
    (the entry expired: Redis was out of reach) calls ``lapsed(gap)``, for
    the worker's subscriptions to be renewed too. :meth:`close` deletes the
    entry, so readers do not wait for the TTL after a clean stop.
    """

    def __init__(
        self,
        redis: Redis,
        info: WorkerInfo,
        *,
        heartbeat: float,
        ttl: float,
        load: Load | None = None,
        lapsed: Callable[[float], Coroutine[Any, Any, object]] | None = None,
    ) -> None:
        self.redis = redis
        self.info = info
        self.heartbeat = heartbeat
        self.ttl = ttl
        self._load = load
        self._lapsed = lapsed
        self._task: asyncio.Task[None] | None = None
        self._after_lapse: asyncio.Task[object] | None = None
        self._lock = asyncio.Lock()

    @property
    def wid(self) -> str:
        return self.info.worker

    async def start(self) -> None:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"registration-{self.wid}")

    async def set_state(self, state: Literal["ready", "draining"]) -> None:
        """Change the state now (not at the next beat)."""
        self.info = replace(self.info, state=state)
        await self.beat()

    async def rooms(self) -> int:
        """Rooms placement has put on this worker (SCARD of its rooms set)."""
        return int(await self.redis.scard(rooms_key(self.wid)))

    async def beat(self) -> None:
        """Write the entry with fresh load figures and renew its TTL."""
        async with self._lock:
            load = dict(self._load()) if self._load is not None else {}
            rooms = await self.rooms()
            self.info = replace(
                self.info,
                transports=int(load.get("transports", self.info.transports)),
                pps=float(load.get("pps", self.info.pps)),
                cpu=float(load.get("cpu", self.info.cpu)),
                rooms=rooms,
                updated=time.time(),
            )
            async with self.redis.pipeline(transaction=True) as pipe:
                write(pipe, self.info, self.ttl)
                await pipe.execute()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        written = loop.time()
        while True:
            go_on()
            await asyncio.sleep(self.heartbeat)
            try:
                async with asyncio.timeout(self.ttl):
                    await self.beat()
            except Exception as exc:
                log.warning(
                    "media worker heartbeat failed; retrying",
                    extra={"worker": self.wid, "error": repr(exc)},
                )
                continue
            gap, written = loop.time() - written, loop.time()
            if gap > self.ttl and self._lapsed is not None:
                log.warning("media worker heartbeat back after %.1f s", gap)
                self._after_lapse = asyncio.create_task(
                    self._lapsed(gap), name=f"registration-lapse-{self.wid}"
                )

    async def close(self, *, delete: bool = True) -> None:
        """Stop the heartbeat; with ``delete``, remove the entry now."""
        await stopped(self._task, self._after_lapse)
        self._task = self._after_lapse = None
        if delete:
            try:
                # Bounded: a worker on its way out must not wait on a Redis
                # that went silent; the entry expires within its TTL anyway.
                async with asyncio.timeout(FORGET_WITHIN):
                    await forget(self.redis, self.wid, self.info.incarnation)
            except Exception as exc:
                log.warning(
                    "could not remove the registry entry; it expires by itself",
                    extra={"worker": self.wid, "error": repr(exc)},
                )


#: Seconds a closing registration waits to remove its entry.
FORGET_WITHIN = 2.0

# Delete only the incarnation we mean: a restarted worker may already have
# written its new entry under the same id.
_FORGET = """
if redis.call('HGET', KEYS[1], 'incarnation') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def forget(redis: Redis, wid: str, incarnation: str) -> bool:
    """Remove the worker's entry if it is still this incarnation's."""
    deleted = await redis.eval(_FORGET, 1, worker_key(wid), incarnation)
    return bool(deleted)
