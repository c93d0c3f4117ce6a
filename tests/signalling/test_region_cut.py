"""Issue 24's must-show 2: a region that stands alone when it is cut off.

On the simulated regions (tests/regions.py): PostgreSQL and the global
Redis in ``db``; ``wadud api --region pk`` and ``wadud media --region pk`` in
``pk``; the same for ``sa`` in host ``sa``, which also runs the region's own
Redis (``redis_region_url``, signalling.edge.planes). Participants are aiortc
clients in ``pk-c`` and ``sa-c``; each publishes a camera and a microphone.

An ``sa``-only visit (its links' ``home`` is ``sa``) and a ``pk``-``sa`` visit
(no home: the global plane) run; then every frame between region ``sa`` and
the rest (``pk``, ``db``, ``ctl``) is dropped for 30 s. The ``sa``-only visit
keeps decoding, a new ``sa``-only visit starts during the cut, the
``pk``-``sa`` visit keeps each side's local media, and within 15 s of the heal
everyone in it decodes everyone else again, with the same clients (no reload).

    .venv/bin/pytest -s tests/signalling/test_region_cut.py
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from benchmarks.common import udp_rcvbuf_errors
from tests.regions import Lab, Regions, start_redis, wait_tcp
from tests.signalling.test_regions import Party, World, lab_world

# Above the sum of the test's own bounds (the world's start, 200 s; the
# scenario, 240 s, and its clean-up once cancelled, tests.regions.CANCEL_WITHIN;
# the world's stop, 60 s), so one of those says what hung: the default
# 120 s, which counts the module's set-up too, ended the worker
# mid-scenario on a loaded machine ("Timeout (0:01:59)!", node down).
pytestmark = pytest.mark.timeout(560)

HOSTS = ["db", "ctl", "pk", "pk-c", "sa", "sa-c"]
REGIONAL_PORT = 6380
CUT = 30.0
HEAL_WITHIN = 15.0
#: The others region ``sa`` loses when cut off: every other host's region.
HUB = ("pk", "db", "ctl")
#: Each publisher's camera: small. Eight aiortc clients encode and decode in
#: the test's one process; at 320x240 and 15 a second, in the whole suite
#: beside a busy neighbour, they decoded a tenth of what arrived (ci15:
#: 37 frames of 30 s from the other region) and the heal was judged on that.
#: What the test proves is who decodes whom, at any size.
SMALL = (160, 120, 10.0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    def build(regions: Regions, lab: Lab) -> None:
        sa = regions["sa"].address
        start_redis(regions, "sa", REGIONAL_PORT)
        regions.loop("ctl").call(lambda: wait_tcp(sa, REGIONAL_PORT), timeout=40)
        own = {"WADUD_REDIS_REGION_URL": f"redis://{sa}:{REGIONAL_PORT}/0"}
        lab.add_api("pk")
        lab.add_api("sa", env=own)
        lab.add_media("pk", workers=1)
        lab.add_media("sa", workers=1, env=own)

    yield from lab_world(tmp_path_factory, HOSTS, 24, build)


async def _ready(world: World, region: str) -> tuple[int, dict[str, Any]]:
    """``/readyz`` of ``region``'s API replica, asked from its own clients' host."""
    url = world.lab.cluster.apis[region].url + "/readyz"

    async def get() -> tuple[int, dict[str, Any]]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, timeout=aiohttp.ClientTimeout(10)) as r,
        ):
            return r.status, await r.json()

    return await world.regions.run_in(f"{region}-c", get)


async def _refused_elsewhere(world: World, room: str) -> str:
    """The error code a link homed in ``sa`` gets through the ``pk`` replica."""
    from wadud_client.call import CallClient
    from wadud_client.errors import RequestFailed
    from wadud_client.network import ws_url

    link = await world.link(room, "stray", "patient", "pk", home="sa")

    async def go() -> str:
        url, token, name = ws_url(link)
        assert token
        client = CallClient(url, token, room=name, label="stray")
        try:
            await client.join()
        except RequestFailed as exc:
            return exc.code
        finally:
            await client.close()
        return "joined"

    return await world.regions.run_in("pk-c", go)


def _cut(regions: Regions, loss: float) -> None:
    for other in HUB:
        regions.bridge.set_loss("sa", other, loss)


async def _growing(parties: list[Party], window: float) -> list[list[int]]:
    """Per party, per client: how many others' video grew over ``window``
    (the clients the server dropped resume by themselves, as pages do)."""
    for party in parties:
        for line in await party.resume_dropped():
            print(line)
    before = [await p.video_from() for p in parties]
    media = [await p.media() for p in parties]
    await asyncio.sleep(window)
    after = [await p.video_from() for p in parties]
    seen = [
        [
            sum(1 for pid, n in now.items() if n > then.get(pid, 0))
            for then, now in zip(old, new, strict=True)
        ]
        for old, new in zip(before, after, strict=True)
    ]
    for party, counts, then in zip(parties, seen, media, strict=True):
        if 0 in counts:
            now = await party.media()
            # Datagrams its host's sockets dropped unread so far: a starved
            # test process, not the server (tests/conftest.py's buffers).
            drops = await party.world.regions.run_in(party.host, _drops)
            print(
                f"{time.strftime('%H:%M:%S')} {party.host} nothing new"
                f" (host's socket drops: {drops}): {then} -> {now}"
            )
    return seen


async def _drops() -> int:
    return udp_rcvbuf_errors()


async def _everyone_sees(parties: list[Party], others: int, within: float) -> float:
    """Seconds until every client's video grows from ``others`` participants
    over one window; AssertionError with what was seen if not ``within``."""
    t0 = time.monotonic()
    while True:
        seen = await _growing(parties, 1.5)
        if all(n >= others for party in seen for n in party):
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not everyone decodes {others} others: {seen}")


#: What the processes' logs say of a moved or lost call, for the report:
#: a site placed elsewhere, a worker that died, a transport that closed or
#: failed, a heartbeat or cluster membership that lapsed and came back.
SAID = (
    "site moves",
    "worker died",
    "transport closed",
    "transport failed",
    "back after",
    "lapsed",
    "asked back",
    "call resumed",
    "not routed",
)


async def _scenario(world: World) -> dict[str, Any]:
    regions = world.regions
    logs = world.lab.cluster.log_sizes()
    local = world.room("sa-visit")
    shared = world.room("pk-sa-visit")
    report: dict[str, Any] = {}
    # Where a failure's story of each client starts: the cut, then the heal.
    since = cut_at = time.monotonic()
    # The shared visit's sa side, whose site moves, keeps two peer
    # connections each: one room, both modes, and a move in each (the
    # browsers' media_kill in tests/signalling/cluster is the single one's).
    sa_only, pk_side, sa_side, sa_new = (
        Party(world, "sa-c", SMALL),
        Party(world, "pk-c", SMALL),
        Party(world, "sa-c", SMALL, connection="pair"),
        Party(world, "sa-c", SMALL),
    )
    try:
        await sa_only.join(local, "sa", publish=True, count=2, home="sa")
        await pk_side.join(shared, "pk", publish=True, count=2)
        await sa_side.join(shared, "sb", publish=True, count=2)
        report["joined_to_decoding"] = await _everyone_sees([sa_only], 1, 40)
        await _everyone_sees([pk_side, sa_side], 3, 40)
        report["other_region"] = await _refused_elsewhere(world, local)
        report["ready_before"] = await _ready(world, "sa")
        # Minted now: each is a `wadud token` process, which took tens of
        # seconds at a load of 65 and would be counted as the visit's start.
        new = world.room("sa-visit-new")
        new_links = await sa_new.links(new, "sn", publish=True, count=2, home="sa")

        _cut(regions, 1.0)
        cut_at = since = time.monotonic()
        # The sa-only visit decodes throughout; the shared one keeps each
        # side's own media (the other side's is cut).
        during: list[Any] = []
        during.append(await _growing([sa_only, pk_side, sa_side], 4.0))
        # A new sa-only visit starts while the region is cut off.
        t0 = time.monotonic()
        await sa_new.join(new, "sn", publish=True, home="sa", links=new_links)
        report["new_visit_decoding"] = time.monotonic() - t0 + await _everyone_sees([sa_new], 1, 30)
        report["ready_during"] = await _ready(world, "sa")
        while time.monotonic() - cut_at < CUT - 5.0:
            during.append(await _growing([sa_only, pk_side, sa_side], 4.0))
        report["during"] = during
        report["new_started_after_cut"] = t0 - cut_at
        report["cut_for"] = time.monotonic() - cut_at
        assert report["cut_for"] < CUT + 5.0, report
        await asyncio.sleep(max(0.0, CUT - report["cut_for"]))
        report["cut_for"] = time.monotonic() - cut_at
        clients = [id(c) for p in (sa_only, pk_side, sa_side) for c in p.clients]
        # Before the heal, whose resumes close the cut side's old transports.
        report["said_during"] = world.lab.cluster.lines(*SAID, since=logs)

        _cut(regions, 0.0)
        since = time.monotonic()
        report["healed_to_everyone"] = await _everyone_sees([pk_side, sa_side], 3, HEAL_WITHIN)
        # Media crosses again before each owner has asked the cut side's
        # clients back (the lapse's held round); each then resumes and its
        # media restarts, on a loaded machine seconds later. Settled: every
        # visit whole over one window, within HEAL_WITHIN of that.
        t0 = time.monotonic()
        while True:
            after = await _growing([sa_only, sa_new, pk_side, sa_side], 3.0)
            whole = all(min(n) >= want for n, want in zip(after, (1, 1, 3, 3), strict=True))
            if whole or time.monotonic() - t0 > HEAL_WITHIN:
                break
        report["after"] = after
        report["whole_again"] = time.monotonic() - t0
        report["same_clients"] = clients == [
            id(c) for p in (sa_only, pk_side, sa_side) for c in p.clients
        ]
        return report
    except BaseException as exc:
        exc.add_note(f"the servers said: {world.lab.cluster.lines(*SAID, since=logs)}")
        # Each client's frames and resumes, in seconds from the cut or the
        # heal, whichever came last: the servers' lines say what they did,
        # this what reached the clients and when.
        with contextlib.suppress(Exception):
            for party in (sa_only, sa_new, pk_side, sa_side):
                story = await party.story(since)
                exc.add_note(f"{party.host}, from {since - cut_at:.1f} s after the cut: {story}")
        raise
    finally:
        _cut(regions, 0.0)
        # At once: each client's close is bounded (wadud_client CLOSE_STEP),
        # but four parties in turn could take minutes on a starved machine.
        await asyncio.gather(*(p.close() for p in (sa_only, pk_side, sa_side, sa_new)))


def test_a_cut_off_region_keeps_its_visits_and_the_shared_one_joins_up(world: World) -> None:
    report = world.regions.loop("ctl").call(lambda: _scenario(world), timeout=240)
    print(f"\nregion cut: {report}")
    for sa_only, pk_side, sa_side in report["during"]:
        # Each sa-only participant decodes the other; in the shared visit
        # each side decodes its own side's other participant.
        # The windows first: a rerun's one line (tests/summary.py) shows them.
        assert sa_only == [1, 1], (report["during"], report)
        assert all(n >= 1 for n in pk_side + sa_side), (report["during"], report)
    assert report["new_started_after_cut"] < CUT, report
    # A link homed in sa is refused by the pk replica, not split off there.
    assert report["other_region"] == "other-region", report
    # Cut off, the sa replica still serves its region's calls: ready, degraded.
    assert report["ready_before"] == (200, {**report["ready_before"][1], "status": "ready"})
    status, body = report["ready_during"]
    assert status == 200 and body["status"] == "degraded", report
    assert body["region_plane"] is True and body["database"] is False, report
    assert report["cut_for"] >= CUT, report
    sa_only, sa_new, pk_side, sa_side = report["after"]
    assert sa_only == [1, 1] and sa_new == [1, 1], report
    assert pk_side == [3, 3] and sa_side == [3, 3], report
    assert report["same_clients"], report
