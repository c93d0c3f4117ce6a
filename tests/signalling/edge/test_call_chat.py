"""The consultation's chat from the call page, by room token
(signalling/edge/chat.py): a booking's video links reach that booking's
conversation and nothing else; messages persist in its history as the chat
API shows it; links without a booking, bad or closed links get nothing."""

from __future__ import annotations

import datetime as dt
import uuid

from tests.booking.factories import Doctor
from tests.booking.test_video_calls import _live_booking
from tests.chat.conftest import ws_connect
from tests.conftest import Api
from wadud.state import keys
from wadud.web.auth import RoomGrant, issue_room_token

WS = "/api/v1/calls/chat/ws"


async def test_both_links_reach_the_booking_s_chat_and_messages_persist(
    api: Api, doctor: Doctor
) -> None:
    bid, patient, pt_link, dr_link = await _live_booking(api, doctor)
    mine = await api.post("/api/v1/calls/chat", {"token": pt_link}, expect=200)
    theirs = await api.post("/api/v1/calls/chat", {"token": dr_link}, expect=200)
    cid = mine["conversation_id"]
    assert theirs["conversation_id"] == cid
    assert mine["user_id"] != theirs["user_id"]
    assert mine["can_write"] and theirs["can_write"]
    # The same conversation the chat API opens for the booking.
    conv = await api.post("/api/v1/chat/conversations", {"booking_id": bid}, token=patient)
    assert conv["id"] == cid

    session = api.client.session
    base = str(api.client.make_url(WS))
    async with ws_connect(session, base, pt_link) as pt, ws_connect(session, base, dr_link) as dr:
        for ws in (pt, dr):
            ready = await ws.wait_for(lambda f: f.get("type") == "ready")
            assert ready["user_id"] in (mine["user_id"], theirs["user_id"])
            await ws.send({"type": "subscribe", "conversation_id": cid, "after": 0, "id": "s"})
            answer = await ws.reply("s")
            assert answer["type"] == "subscribed", answer
        body = "دوا کا نام: Paracetamol 500mg"
        await pt.send(
            {**{"type": "send", "conversation_id": cid, "client_id": "c1", "body": body}, "id": "m"}
        )
        ack = await pt.reply("m")
        assert ack["type"] == "ack" and ack["seq"] == 1, ack
        await dr.wait_seq(cid, 1)
        assert dr.events[cid][0]["body"] == body
        assert dr.events[cid][0]["sender_id"] == mine["user_id"]
        # Held to its one conversation: another id is "not found".
        other = str(uuid.uuid4())
        await pt.send({"type": "subscribe", "conversation_id": other, "id": "o"})
        refused = await pt.reply("o")
        assert (refused["type"], refused["code"]) == ("error", "not-found")

    # In the consultation's history, as the chat API serves it.
    events = await api.get(f"/api/v1/chat/conversations/{cid}/events?after=0", token=patient)
    assert [e["body"] for e in events] == [body]


async def test_links_that_reach_no_chat(api: Api, doctor: Doctor) -> None:
    bid, patient, pt_link, _ = await _live_booking(api, doctor)
    settings = api.app[keys.SETTINGS]
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(room="plain-room", identity="pt-1", name="Bilal", role="patient")
    no_booking = issue_room_token(
        settings,
        grant,
        not_before=now - dt.timedelta(minutes=1),
        expires=now + dt.timedelta(hours=1),
    )
    answer = await api.post("/api/v1/calls/chat", {"token": no_booking}, expect=404)
    assert answer["code"] == "no-chat"
    answer = await api.post("/api/v1/calls/chat", {"token": "not.a.token"}, expect=401)
    resp = await api.client.get(WS, params={"token": no_booking})
    assert resp.status == 404
    resp = await api.client.get(WS)
    assert resp.status == 401
    # A cancelled booking's link: gone, with the reason.
    await api.post(f"/api/v1/bookings/{bid}/cancel", {"reason": "ill"}, token=patient, expect=200)
    answer = await api.post("/api/v1/calls/chat", {"token": pt_link}, expect=410)
    assert answer["code"] == "booking-closed"
