"""Which media workers hold a call room: atomic placement over Redis.

A room has one worker per region its participants come from (the join
token's ``region`` claim, else the region of the API replica they reached):
the room's *site* in that region. Everyone of one region shares the site, so
a track crosses to another region once however many watch it there
(:mod:`signalling.media.sites` keeps the relay links between sites). A site goes
to the least-loaded live worker of its region; when the region has no live
worker, to one of the nearest region that has (``media_region_distances``),
else of any region. The choice is one Lua script, so two API replicas placing
the same site at the same moment agree (Redis runs scripts one at a time):
the first sets the site's key, the second reads it back.

Keys (see :mod:`sfu.control.registry` for the workers' own):

* ``wadud:room:{room}:media:{region}``: ``"{worker}|{incarnation}"`` of the
  room's site in a region (``-`` for a region-less one);
* ``wadud:media:worker:{worker}:rooms``: the rooms placed on a worker, whose
  size is the load placement balances (registry load figures lag by a
  heartbeat, so fifty rooms opened at once would all see the same numbers).

A worker counts as a candidate when its registry entry is live, ``ready``
(not draining) and below its transport capacity.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sfu.control import registry

log = logging.getLogger("wadud.signalling.placement")

__all__ = ["Placed", "Placement", "nearest", "parse_distances", "room_key"]

ROOM_KEY = "wadud:room:{room}:media:{region}"
#: The placement of a room outlives a crash of its owner by this much; the
#: owner refreshes it while the room lives.
ROOM_TTL = 24 * 3600
#: Workers of a region read at once, least loaded first (Placement.candidates).
PAGE = 8

# A worker's rooms set changed by ``delta``: so does its score in its region's
# load index (sfu.control.registry.load_key), if it is there (a draining one is not).
_COUNT = """
local function count(wid, delta)
  local region = redis.call('HGET', 'wadud:media:worker:' .. wid, 'region')
  if region then
    local index = 'wadud:media:load:' .. region
    if redis.call('ZSCORE', index, wid) then
      redis.call('ZINCRBY', index, delta, wid)
    end
  end
end
"""

# KEYS[1]: the room's key. ARGV: room, ttl, then candidates "wid|inc" in the
# caller's order of preference (by reported load), ties broken by that order.
# ARGV[3] is the placement to replace ("" for none): the room moves only if
# it still points there, so two replicas moving one room agree too.
_PLACE = (
    _COUNT
    + """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[3] then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  return current
end
if current then
  local wid = string.match(current, '^([^|]*)')
  if redis.call('SREM', 'wadud:media:worker:' .. wid .. ':rooms', ARGV[1]) == 1 then
    count(wid, -1)
  end
  redis.call('DEL', KEYS[1])
end
local best, best_n = nil, nil
for i = 4, #ARGV do
  local wid = string.match(ARGV[i], '^([^|]*)')
  local n = redis.call('SCARD', 'wadud:media:worker:' .. wid .. ':rooms')
  if best_n == nil or n < best_n then
    best, best_n = ARGV[i], n
  end
end
if best == nil then
  return false
end
redis.call('SET', KEYS[1], best, 'EX', ARGV[2])
local chosen = string.match(best, '^([^|]*)')
if redis.call('SADD', 'wadud:media:worker:' .. chosen .. ':rooms', ARGV[1]) == 1 then
  count(chosen, 1)
end
return best
"""
)

# ARGV[3]: "1" when another site of the room stays on the same worker (two
# regions that fell back to one), so the worker keeps counting the room.
_RELEASE = (
    _COUNT
    + """
if redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
  if ARGV[3] ~= '1' then
    local wid = string.match(ARGV[2], '^([^|]*)')
    if redis.call('SREM', 'wadud:media:worker:' .. wid .. ':rooms', ARGV[1]) == 1 then
      count(wid, -1)
    end
  end
  return 1
end
return 0
"""
)


def room_key(room: str, region: str = "") -> str:
    return ROOM_KEY.format(room=room, region=region or "-")


def parse_distances(text: str) -> dict[frozenset[str], float]:
    """``"pk-ae=40, pk-sa=60"`` as {{pk, ae}: 40, ...}: how far regions are
    apart (any unit; milliseconds of one-way delay is the natural one).
    ValueError names a malformed entry."""
    out: dict[frozenset[str], float] = {}
    for item in text.replace(";", ",").split(","):
        item = item.strip()
        if not item:
            continue
        pair, sep, value = item.partition("=")
        a, dash, b = pair.strip().partition("-")
        try:
            distance = float(value)
        except ValueError:
            distance = -1.0
        if not sep or not dash or not a.strip() or not b.strip() or distance < 0:
            raise ValueError(f"not a region distance (want A-B=N): {item!r}")
        out[frozenset((a.strip(), b.strip()))] = distance
    return out


def nearest(region: str, regions: set[str], distances: dict[frozenset[str], float]) -> list[str]:
    """``regions`` from nearest to farthest from ``region`` (itself first;
    a pair with no configured distance is farthest, ties by name)."""

    def far(other: str) -> tuple[float, str]:
        if other == region:
            return (-1.0, other)
        return (distances.get(frozenset((region, other)), float("inf")), other)

    return sorted(regions, key=far)


@dataclass(frozen=True)
class Placed:
    """A room's worker: its id and the incarnation (process) it was placed on."""

    worker: str
    incarnation: str

    def __str__(self) -> str:
        return f"{self.worker}|{self.incarnation}"

    @classmethod
    def parse(cls, value: str) -> Placed:
        worker, _, incarnation = value.partition("|")
        return cls(worker, incarnation)


class Placement:
    """Places rooms on media workers (see the module docstring)."""

    def __init__(self, redis: Any, distances: dict[frozenset[str], float] | None = None) -> None:
        self.redis = redis
        self.distances = distances or {}
        self._place = redis.register_script(_PLACE)
        self._release = redis.register_script(_RELEASE)

    async def candidates(
        self, region: str, *, exclude: frozenset[str] = frozenset()
    ) -> list[registry.WorkerInfo]:
        """Live, ready workers below capacity: the region's own, else the
        nearest region's that has any, else (no region asked) any. A worker
        counts as live only while something listens on its control channel:
        a killed node's workers keep their registry entries until the TTL,
        and a room placed there would move again at once. A region's workers
        are read least loaded first, a page at a time, until a page has live
        ones: a few commands however many workers are registered."""
        if not region:
            return self._ranked(await self._live(await registry.workers(self.redis), exclude))
        live = await self._least_loaded(region, exclude)
        if not live:
            others = await registry.regions(self.redis) - {region}
            for other in nearest(region, others, self.distances):
                live = await self._least_loaded(other, exclude)
                if live:
                    log.warning(
                        "no live media worker in region; placing in the nearest",
                        extra={"region": region, "to": other},
                    )
                    break
        return self._ranked(live)

    async def _least_loaded(
        self, region: str, exclude: frozenset[str]
    ) -> list[registry.WorkerInfo]:
        start = 0
        while True:
            page, more = await registry.least_loaded(self.redis, region, start, PAGE)
            live = await self._live(page, exclude)
            if live or not more:
                return live
            start += PAGE

    async def _live(
        self, workers: list[registry.WorkerInfo], exclude: frozenset[str]
    ) -> list[registry.WorkerInfo]:
        ready = [
            w
            for w in workers
            if w.state == "ready" and w.transports < w.capacity and w.worker not in exclude
        ]
        listening = await registry.listening_many(self.redis, [w.worker for w in ready])
        return [w for w in ready if w.worker in listening]

    @staticmethod
    def _ranked(workers: list[registry.WorkerInfo]) -> list[registry.WorkerInfo]:
        return sorted(workers, key=lambda w: (w.transports / max(w.capacity, 1), w.worker))

    async def current(self, room: str, region: str = "") -> Placed | None:
        value = await self.redis.get(room_key(room, region))
        return Placed.parse(value) if value else None

    async def place(
        self,
        room: str,
        region: str,
        *,
        replacing: Placed | None = None,
    ) -> Placed | None:
        """The room's site in ``region``: the worker it already has, or a new
        choice (None when no worker is live). With ``replacing``, a site
        still on that worker moves to another one."""
        exclude = frozenset({replacing.worker}) if replacing is not None else frozenset()
        workers = await self.candidates(region, exclude=exclude)
        args = [room, ROOM_TTL, str(replacing) if replacing is not None else ""]
        args += [f"{w.worker}|{w.incarnation}" for w in workers]
        value = await self._place(keys=[room_key(room, region)], args=args)
        return Placed.parse(value) if value else None

    async def refresh(self, sites: list[tuple[str, str]]) -> None:
        """Keep the placements of live rooms' sites, (room, region), from expiring."""
        if sites:
            async with self.redis.pipeline(transaction=False) as pipe:
                for room, region in sites:
                    pipe.expire(room_key(room, region), ROOM_TTL)
                await pipe.execute()

    async def release(
        self, room: str, placed: Placed, region: str = "", *, shared: bool = False
    ) -> None:
        """The room's site in ``region`` is over: forget it (if still this
        worker). ``shared``: another site of the room stays on that worker."""
        args = [room, str(placed), "1" if shared else "0"]
        await self._release(keys=[room_key(room, region)], args=args)
