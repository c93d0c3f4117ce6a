"""Which relays a room spread over regions needs, and where a region without
workers goes (signalling.media.sites.plan, signalling.media.placement's distances)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from sfu.control import registry
from sfu.control.registry import Registration, WorkerInfo
from signalling.media.placement import Placed, Placement, nearest, parse_distances
from signalling.media.sites import CLOCK_SKEW, Site, Sites, plan


def test_each_track_crosses_once_per_receiving_site() -> None:
    publisher_of = {"t-pk-cam": "patient", "t-pk-mic": "patient", "t-ae-cam": "doctor"}
    region_of = {"patient": "pk", "doctor": "ae", "nurse": "ae", "interp": "sa"}
    wants = {
        "patient": ["t-ae-cam"],
        "doctor": ["t-pk-cam", "t-pk-mic"],
        "nurse": ["t-pk-cam", "t-pk-mic", "t-ae-cam"],
        "interp": ["t-pk-mic"],
    }
    assert plan(publisher_of, wants, region_of) == {
        ("ae", "pk"): ("t-ae-cam",),
        ("pk", "ae"): ("t-pk-cam", "t-pk-mic"),
        ("pk", "sa"): ("t-pk-mic",),
    }


def test_one_site_needs_no_relay_and_unknown_tracks_are_ignored() -> None:
    region_of = {"a": "pk", "b": "pk"}
    assert plan({"t1": "a"}, {"b": ["t1", "gone"]}, region_of) == {}


@given(
    st.dictionaries(st.sampled_from("abcdef"), st.sampled_from(["pk", "ae", "sa"]), min_size=1),
    st.data(),
)
def test_plan_covers_exactly_the_remote_wants(
    region_of: dict[str, str], data: st.DataObject
) -> None:
    people = sorted(region_of)
    tracks = {f"t{i}": data.draw(st.sampled_from(people)) for i in range(4)}
    pick = st.lists(st.sampled_from(sorted(tracks)), unique=True)
    wants = {pid: data.draw(pick) for pid in people}
    relays = plan(tracks, wants, region_of)
    expected = {
        (region_of[tracks[t]], region_of[pid], t)
        for pid, ts in wants.items()
        for t in ts
        if region_of[tracks[t]] != region_of[pid]
    }
    got = {(src, dst, t) for (src, dst), ts in relays.items() for t in ts}
    assert got == expected
    assert all(list(ts) == sorted(set(ts)) for ts in relays.values())


def test_region_distances_parse_and_rank() -> None:
    distances = parse_distances("pk-ae=40, pk-sa=60; ae-sa=30")
    assert distances[frozenset({"ae", "pk"})] == 40
    assert nearest("pk", {"sa", "ae", "qa"}, distances) == ["ae", "sa", "qa"]
    assert nearest("sa", {"pk", "ae", "sa"}, distances) == ["sa", "ae", "pk"]
    assert parse_distances("") == {}


@pytest.mark.parametrize("bad", ["pk=40", "pk-ae", "pk-ae=x", "-ae=3", "pk-ae=-1"])
def test_malformed_distances_are_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match="A-B=N"):
        parse_distances(bad)


# -- placement over a real Redis ---------------------------------------------------


@pytest.fixture
async def redis(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


def _worker_in(region: str) -> WorkerInfo:
    """A worker of a node of its own in ``region``."""
    node = "t" + secrets.token_hex(4)
    return WorkerInfo(
        worker=f"{node}-0",
        incarnation=secrets.token_hex(8),
        node=node,
        region=region,
        index=0,
        host="127.0.0.1",
        port=40000,
        capacity=400,
    )


@contextlib.asynccontextmanager
async def workers(redis: aioredis.Redis, regions: list[str]) -> AsyncIterator[list[WorkerInfo]]:
    """One registered, listening worker per region (as a media node's are)."""
    infos, regs = [], []
    pubsub = redis.pubsub()
    for region in regions:
        info = _worker_in(region)
        reg = Registration(redis, info, heartbeat=0.2, ttl=3.0, load=lambda: {})
        await reg.start()
        await pubsub.subscribe(registry.control_channel(info.worker))
        infos.append(info)
        regs.append(reg)
    try:
        yield infos
    finally:
        await pubsub.aclose()
        for reg in regs:
            await reg.close()


async def test_each_region_gets_its_own_site_and_a_dark_region_the_nearest(
    redis: aioredis.Redis,
) -> None:
    tag = secrets.token_hex(3)
    pk, ae, sa = f"pk{tag}", f"ae{tag}", f"sa{tag}"
    distances = parse_distances(f"{pk}-{ae}=40,{pk}-{sa}=60,{ae}-{sa}=30")
    placement = Placement(redis, distances)
    room = "visit-" + tag
    async with workers(redis, [pk, ae]) as (w_pk, w_ae):
        at_pk = await placement.place(room, pk)
        at_ae = await placement.place(room, ae)
        assert at_pk is not None and at_ae is not None
        assert (at_pk.worker, at_ae.worker) == (w_pk.worker, w_ae.worker)
        # sa has no worker: its participants go to ae, the nearer region.
        at_sa = await placement.place(room, sa)
        assert at_sa is not None and at_sa.worker == w_ae.worker
        assert await placement.current(room, sa) == at_sa
        # Placing again answers the same; each site has its own key.
        assert await placement.place(room, pk) == at_pk
        held = await redis.smembers(registry.rooms_key(w_ae.worker))
        assert room in held
        # The sa site goes; ae still holds the room on the same worker.
        await placement.release(room, at_sa, sa, shared=True)
        assert room in await redis.smembers(registry.rooms_key(w_ae.worker))
        await placement.release(room, at_ae, ae)
        await placement.release(room, at_pk, pk)
        assert room not in await redis.smembers(registry.rooms_key(w_ae.worker))
        assert await placement.current(room, pk) is None


async def test_placement_pages_past_workers_nobody_listens_on(redis: aioredis.Redis) -> None:
    # Placement reads a region's workers least loaded first, a page at a
    # time: a page of dead workers (entries not yet expired, nobody on their
    # control channel) sends it to the next page, not to another region.
    region = "pg" + secrets.token_hex(3)
    regs = [
        Registration(
            redis, _worker_in(region), heartbeat=30.0, ttl=5.0, load=lambda n=n: {"transports": n}
        )
        for n in range(10)
    ]
    pubsub = redis.pubsub()
    try:
        for reg in regs:
            await reg.start()
        await pubsub.subscribe(registry.control_channel(regs[-1].wid))
        placed = await Placement(redis).place("paged-" + region, region)
        assert placed is not None and placed.worker == regs[-1].wid
    finally:
        await pubsub.aclose()
        for reg in regs:
            await reg.close()


@dataclass
class _Stranded:
    """The part of a room :meth:`Sites.move` reads before it finds no worker."""

    name: str
    sites: dict[str, Site] = field(default_factory=dict)


def _sites_of(placement: Placement, room: _Stranded) -> Sites[Any]:
    """The sites of ``room`` alone, placed by ``placement``, with no media
    client and callbacks that do nothing."""
    return Sites(
        lambda: None,
        placement=placement,
        media_client=None,
        worker_ttl=3.0,
        rooms={room.name: room},
        changed=lambda _room: None,
        moved=lambda _room, _pids, _reason: None,
    )


async def test_a_site_with_nowhere_to_go_is_said_once(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # Each media check tries the move again (every second, for as long as a
    # region is cut off or empty): one error line, not one a second.
    tag = secrets.token_hex(3)
    pk, ae = f"pk{tag}", f"ae{tag}"
    placement = Placement(redis, parse_distances(f"{pk}-{ae}=40"))
    room = _Stranded("visit-" + tag)
    async with workers(redis, [pk]) as (w_pk,):
        placed = await placement.place(room.name, pk)
        assert placed is not None and placed.worker == w_pk.worker
    site = room.sites[pk] = Site(pk, placed, media=None)  # type: ignore[arg-type]
    sites = _sites_of(placement, room)
    await registry.forget(redis, w_pk.worker, w_pk.incarnation)
    with caplog.at_level(logging.ERROR, logger="wadud.signalling.sites"):
        for _ in range(3):
            await sites.move(room, site, "media-lost")
    said = [r for r in caplog.records if r.getMessage().startswith("no media worker")]
    assert len(said) == 1, caplog.text
    assert room.sites[pk] is site


async def test_a_worker_that_stops_listening_is_reported_once(redis: aioredis.Redis) -> None:
    # The owner's probe (Replicas._media_probe) wakes its watcher on a
    # killed worker at once: its control subscription goes with its socket.
    tag = secrets.token_hex(3)
    region = f"pk{tag}"
    placement = Placement(redis)
    room = _Stranded("visit-" + tag)
    sites = _sites_of(placement, room)
    assert not await sites.went_silent()  # no site yet: nothing to ask
    async with workers(redis, [region]) as (worker,):
        placed = await placement.place(room.name, region)
        assert placed is not None and placed.worker == worker.worker
        room.sites[region] = Site(region, placed, media=None)  # type: ignore[arg-type]
        assert not await sites.went_silent()
    # Its subscription is gone (the context closed it): said once, not at every look.
    assert await sites.went_silent()
    assert not await sites.went_silent()


async def test_a_worker_back_on_redis_before_its_subscription_is_kept(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # After a Redis failover a loaded worker's heartbeat reaches the
    # promoted replica seconds before its control subscription does: the
    # room stays. A worker whose last beat is older than the outage's end
    # is dead, and its room moves (here, with nowhere to go, said once).
    tag = secrets.token_hex(3)
    region = f"pk{tag}"
    room = _Stranded("visit-" + tag)
    sites = _sites_of(Placement(redis), room)
    info = _worker_in(region)
    room.sites[region] = Site(region, Placed(info.worker, info.incarnation), media=None)  # type: ignore[arg-type]
    sites.redis_back(time.time())
    beating = Registration(redis, info, heartbeat=0.2, ttl=3.0, load=lambda: {})
    await beating.start()  # written after Redis came back; nobody listens yet
    with caplog.at_level(logging.ERROR, logger="wadud.signalling.sites"):
        try:
            await sites.check_media()
            assert "no media worker" not in caplog.text
        finally:
            await beating.close(delete=False)
        # Another outage, over a moment after its last beat (as a killed
        # worker's is: older than the sentinels' failover).
        sites.redis_back(beating.info.updated + CLOCK_SKEW + 0.1)
        await sites.check_media()
    assert "no media worker to move a call room site to" in caplog.text
