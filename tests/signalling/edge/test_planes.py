"""A region's own control plane in one API process (signalling.edge.planes): a
clinic in one of ``call_home_regions`` gets booking links homed in its region,
their rooms live in the regional call service, the global one refuses them,
and a link the region saw pass its checks opens the room again while the
database is out of reach. The plane across real processes and a cut region
is tests/signalling/test_region_cut.py."""

from __future__ import annotations

import dataclasses
import sys
import time

import pytest
import redis.asyncio as aioredis

from signalling import protocol
from signalling.edge.http import PLANES
from signalling.protocol import ClientFrame
from tests.booking.factories import make_clinic, make_doctor
from tests.booking.test_video_calls import _live_booking
from tests.conftest import Api, RedisServer
from tests.signalling.service.test_ws import connect, joined, token
from wadud.config import Settings
from wadud.state import keys
from wadud.web import auth
from wadud.web.auth import RoomGrant, decode_room_token


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


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The room tokens signalling decodes from now on: every signalling
    module's ``decode_room_token`` counts each call, then decodes for real."""
    decoded: list[str] = []

    def decode(settings: Settings, tok: str, *, leeway: float = 0) -> RoomGrant:
        decoded.append(tok)
        return auth.decode_room_token(settings, tok, leeway=leeway)

    # A copy taken at once: a thread of the process may import meanwhile.
    for name, module in sys.modules.copy().items():
        if name.startswith("signalling.") and (
            getattr(module, "decode_room_token", None) is auth.decode_room_token
        ):
            monkeypatch.setattr(module, "decode_room_token", decode)
    return decoded


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


async def test_a_join_is_parsed_and_its_token_decoded_once_by_either_plane(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica reads the first frame to choose the plane; the plane's
    service takes that reading as its own, for a good token and a bad one."""
    decoded = count_decodes(monkeypatch)
    parsed: list[str] = []

    def parse(text: str | bytes) -> ClientFrame:
        parsed.append(str(text))
        return real_parse(text)

    real_parse = protocol.parse
    monkeypatch.setattr(protocol, "parse", parse)
    planes = api.app[PLANES]
    assert planes.regional is not None
    homed = token(api, "dr-homed", "doctor", home="pk", room="room-homed")
    anywhere = token(api, "dr-anywhere", "doctor", room="room-anywhere")
    for tok, plane, name in (
        (homed, planes.regional, "room-homed"),
        (anywhere, planes.global_, "room-anywhere"),
    ):
        decoded.clear()
        async with joined(api, tok) as (_ws, answer):
            assert answer["type"] == "joined", answer
            assert list(plane.rooms) == [name]
            assert decoded == [tok]
            assert len([text for text in parsed if tok in text]) == 1
    # A bad token: refused as ever, and decoded once.
    decoded.clear()
    forged = homed[:-4] + "AAAA"
    async with connect(api) as ws:
        err = await ws.request({"type": "join", "token": forged}, "j")
        assert (err["type"], err["code"], err["fatal"]) == ("error", "unauthorized", True), err
        assert await ws.closed_with() == 4401
    assert decoded == [forged]
    assert len([text for text in parsed if forged in text]) == 1


async def test_a_first_frame_that_is_no_frame_is_answered_and_the_socket_stays(
    api: Api,
) -> None:
    async with connect(api) as ws:
        await ws.ws.send_str("{not json")
        err = await ws.wait_for(lambda f: f.get("type") == "error", 5)
        assert err["code"] == "bad-frame" and "fatal" not in err, err
        # The global plane holds the socket: a join without a home gets in.
        answer = await ws.request({"type": "join", "token": token(api, "dr-later", "doctor")}, "j")
        assert answer["type"] == "joined", answer
