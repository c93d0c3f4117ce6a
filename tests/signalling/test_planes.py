"""A region's own control plane in one API process (signalling.planes): a
clinic in one of ``call_home_regions`` gets booking links homed in its region,
their rooms live in the regional call service, the global one refuses them,
and a link the region saw pass its checks opens the room again while the
database is out of reach. The plane across real processes and a cut region
is tests/signalling/test_region_cut.py."""

from __future__ import annotations

import dataclasses
import time

import pytest
import redis.asyncio as aioredis

from signalling.http import PLANES
from tests.booking.factories import make_clinic, make_doctor
from tests.booking.test_video_calls import _live_booking
from tests.conftest import Api, RedisServer
from tests.signalling.test_ws import connect, joined, token
from wadud import keys
from wadud.auth import decode_room_token
from wadud.config import Settings


@pytest.fixture
def settings(settings: Settings, redis_server: RedisServer) -> Settings:
    return dataclasses.replace(
        settings,
        redis_url=redis_server.url,
        # The region's own Redis: another database of the same server.
        redis_region_url=redis_server.url.rsplit("/", 1)[0] + "/1",
        region="pk",
        call_home_regions=["pk"],
    )


async def test_a_home_region_s_booking_is_held_in_its_own_plane(api: Api) -> None:
    doctor = await make_doctor(api, await make_clinic(api))
    bid, _patient, mine, theirs = await _live_booking(api, doctor)
    settings = api.app[keys.SETTINGS]
    assert decode_room_token(settings, theirs).home == "pk"
    planes = api.app[PLANES]
    assert planes.regional is not None
    async with joined(api, theirs) as (_ws, answer):
        assert answer["type"] == "joined", answer
        room = f"booking-{bid}"
        assert room in planes.regional.rooms
        assert room not in planes.global_.rooms
    # A link without a home is the global plane's, in the same process.
    async with joined(api, token(api, "dr-x", "doctor")) as (_ws, answer):
        assert answer["type"] == "joined"
    # The regional plane's Redis holds the room's owner, the global one not.
    regional = aioredis.from_url(settings.redis_region_url, decode_responses=True)
    try:
        assert await regional.keys(f"*booking-{bid}*")
    finally:
        await regional.aclose()
    # The patient's link of the same visit is homed the same way.
    assert decode_room_token(settings, mine).home == "pk"


async def test_a_link_checked_before_opens_the_room_while_the_database_is_away(
    api: Api,
) -> None:
    doctor = await make_doctor(api, await make_clinic(api))
    _bid, _patient, mine, theirs = await _live_booking(api, doctor)
    async with joined(api, theirs) as (_ws, answer):
        assert answer["type"] == "joined", answer
    # The database goes out of reach (here: the pool closes).
    await api.app[keys.DB].close()
    async with joined(api, theirs) as (_ws, again):
        assert again["type"] == "joined", again
    # The patient's link was never checked here: it waits, and is not refused.
    async with joined(api, mine) as (ws, answer):
        assert answer["type"] == "error" and answer["code"] == "booking-unverifiable", answer
        assert not answer.get("fatal"), answer
        assert not ws.ws.closed


async def test_a_link_homed_elsewhere_is_refused(api: Api) -> None:
    async with joined(api, token(api, "pt-1", home="sa")) as (ws, answer):
        assert answer["type"] == "error" and answer["code"] == "other-region", answer
        assert answer["fatal"] is True
        assert await ws.closed_with() == 4403


async def test_a_socket_that_never_joins_times_out_once(api: Api) -> None:
    # With two planes the first frame is read before a plane takes the socket:
    # no join in time is answered there, not after a second wait.
    api.app[PLANES].join_timeout = 1.0
    async with connect(api) as ws:
        t0 = time.monotonic()
        answer = await ws.type("error", within=5.0)
        assert answer["code"] == "join-timeout" and answer["fatal"] is True
        assert await ws.closed_with() == 4408
        assert time.monotonic() - t0 < 3.0
