"""A booking's video links against the booking itself (issue 12, finding 2):
links of a cancelled, completed or rescheduled booking stop opening the room
before their tokens expire, and a cancellation sends away whoever is in the
call."""

from __future__ import annotations

import datetime as dt
from typing import Any

from tests.booking.bookings.test_bookings import local, requested, shift
from tests.booking.factories import Doctor
from tests.conftest import Api
from tests.signalling.service.test_ws import connect, joined


async def _live_booking(
    api: Api, doctor: Doctor, starts_in: dt.timedelta = dt.timedelta(minutes=5)
) -> tuple[str, str, str, str]:
    """An accepted video booking starting in five minutes (``starts_in``):
    (booking id, the patient's token, the patient's and the doctor's join
    tokens)."""
    patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    await shift(api, bid, dt.datetime.now(dt.UTC) + starts_in)
    path = f"/api/v1/bookings/{bid}/video-link"
    mine = await api.get(path, token=patient, expect=200)
    theirs = await api.get(path, token=doctor.token, expect=200)
    return bid, patient, mine["token"], theirs["token"]


async def _refused(api: Api, tok: str) -> dict[str, Any]:
    async with connect(api) as ws:
        answer = await ws.request({"type": "join", "token": tok}, "j")
        assert await ws.closed_with() == 4410
        return answer


async def test_cancelling_a_booking_ends_its_call_and_its_links(api: Api, doctor: Doctor) -> None:
    bid, patient, pt_link, dr_link = await _live_booking(api, doctor)
    async with joined(api, dr_link) as (dr, dj), joined(api, pt_link) as (pt, pj):
        assert dj["type"] == "joined" and pj["type"] == "joined"
        await api.post(f"/api/v1/bookings/{bid}/cancel", {"reason": "ill"}, token=patient,
                       expect=200)  # fmt: skip
        for ws in (dr, pt):
            ended = await ws.type("room_ended")
            assert ended["reason"] == "booking-cancelled"
            assert await ws.closed_with() == 4410
    # The same links, still within their tokens' validity, open nothing now.
    for link in (pt_link, dr_link):
        answer = await _refused(api, link)
        assert (answer["type"], answer["code"]) == ("error", "booking-closed")


async def test_a_rescheduled_booking_s_old_links_stop_working(api: Api, doctor: Doctor) -> None:
    bid, patient, pt_link, _ = await _live_booking(api, doctor)
    async with joined(api, pt_link) as (_ws, answer):
        assert answer["type"] == "waiting"  # the doctor is not in yet
    moved = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=7)).replace(microsecond=0)
    await shift(api, bid, moved)
    answer = await _refused(api, pt_link)
    assert answer["code"] == "booking-closed" and "another time" in answer["message"]
    # A link issued for the new slot works.
    fresh = await api.get(f"/api/v1/bookings/{bid}/video-link", token=patient, expect=200)
    async with joined(api, fresh["token"]) as (_ws, again):
        assert again["type"] == "waiting"


async def test_a_completed_booking_s_links_stop_working_on_resume(api: Api, doctor: Doctor) -> None:
    # Begun a minute ago: a consultation is complete only once its slot began.
    bid, _patient, pt_link, dr_link = await _live_booking(api, doctor, -dt.timedelta(minutes=1))
    async with joined(api, dr_link) as (_dr, _dj), joined(api, pt_link) as (pt, pj):
        assert pj["type"] == "joined"
        await api.post(f"/api/v1/bookings/{bid}/start", token=doctor.token, expect=200)
        await api.post(f"/api/v1/bookings/{bid}/complete", token=doctor.token, expect=200)
        # The patient's socket drops; resuming with the session is refused.
        await pt.close()
        async with connect(api) as again:
            answer = await again.request(
                {"type": "join", "token": pt_link, "resume": pj["session"]}, "r"
            )
            assert answer["code"] == "booking-closed"
            assert await again.closed_with() == 4410


async def test_signing_out_ends_the_call_and_the_link(api: Api, doctor: Doctor) -> None:
    """Issue 12, finding 7 for calls: logout reaches a live call socket, and
    the link made in that session no longer joins."""
    _bid, patient, pt_link, dr_link = await _live_booking(api, doctor)
    async with joined(api, dr_link) as (dr, _dj), joined(api, pt_link) as (pt, pj):
        assert pj["type"] == "joined"
        await api.post("/api/v1/auth/logout", token=patient, expect=204)
        removed = await pt.type("removed")
        assert removed["reason"] == "signed-out"
        assert await pt.closed_with() == 4401
        left = await dr.type("participant_left")
        assert left["reason"] == "signed-out"
    async with connect(api) as ws:
        answer = await ws.request({"type": "join", "token": pt_link}, "j")
        assert answer["code"] == "unauthorized"
        assert await ws.closed_with() == 4401
    # The doctor's link (another session) still works.
    async with joined(api, dr_link) as (_ws, again):
        assert again["type"] == "joined"
