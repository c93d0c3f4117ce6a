"""The doctor starts a booked visit and the patient's phone rings: a real
booking (booking's own factories), the doctor joining its room over the
signalling WebSocket, the notifier sending to stand-ins of APNs and FCM
over HTTPS (HTTP/2): a VoIP push to the PushKit token and a high-priority
FCM data message, once per visit, carrying no room token; and the link they
carry, followed with the patient's own session, joins the doctor's room."""

from __future__ import annotations

import datetime as dt
import json

from notify.service import Notifier
from tests.booking.bookings.test_bookings import local, requested, shift
from tests.booking.factories import Doctor
from tests.conftest import Api
from tests.notify.conftest import Peer, Request
from tests.notify.test_push import TOKEN, keys, notifier, push_settings
from tests.signalling.service.test_ws import joined

__all__ = ["keys", "notifier", "push_settings"]  # fixtures these tests use

VOIP = "f00dface" * 8
ALERT = "a1e47a1e" * 8
FCM = "fcm-ring-token-1"
FCM_SEND = "/v1/projects/wadud-test/messages:send"


def _rings(peer: Peer, path: str) -> list[Request]:
    """The requests to ``path`` that ring (the booking's own messages go too)."""
    return [
        r
        for r in peer.to(path)
        if "call_incoming"
        in (r.json().get("template"), r.json().get("message", {}).get("data", {}).get("template"))
    ]


async def _live_booking(api: Api, doctor: Doctor) -> tuple[str, str, str]:
    """An accepted video booking starting in five minutes: (id, the
    patient's session token, the doctor's join token)."""
    patient, bid, _ = await requested(api, doctor, local(2, "10:00"))
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    link = await api.get(f"/api/v1/bookings/{bid}/video-link", token=doctor.token, expect=200)
    return bid, patient, link["token"]


async def test_the_doctor_starting_the_visit_rings_the_patients_phone_once(
    api: Api, doctor: Doctor, notifier: Notifier, peer: Peer
) -> None:
    peer.answers["/token"] = lambda req: (
        200,
        {"content-type": "application/json"},
        json.dumps({"access_token": TOKEN, "expires_in": 3600}).encode(),
    )
    bid, patient, dr_token = await _live_booking(api, doctor)
    for device in (
        {"kind": "apns", "token": VOIP, "voip": True},
        {"kind": "apns", "token": ALERT},
        {"kind": "fcm", "token": FCM},
    ):
        got = await api.post("/api/v1/me/devices", device, token=patient, expect=201)
        assert got["voip"] is bool(device.get("voip"))
    await api.post(
        "/api/v1/me/devices", {"kind": "fcm", "token": "x", "voip": True}, token=patient, expect=400
    )
    async with joined(api, dr_token) as (_, first):
        assert first["type"] == "joined"
    # The doctor comes back (a page reload): the same visit, no second ring.
    async with joined(api, dr_token) as (doc, again):
        assert again["type"] == "joined"
        await notifier.run_until_idle()
        pushes = _rings(peer, "/3/device/")
        assert [r.path for r in pushes] == [f"/3/device/{VOIP}"]
        [voip] = pushes
        assert voip.http_version == "2"
        assert voip.headers["apns-push-type"] == "voip"
        assert voip.headers["apns-topic"] == "pk.wadud.patient.voip"
        assert voip.headers["apns-priority"] == "10"
        body = voip.json()
        assert body["aps"] == {}
        assert body["template"] == "call_incoming"
        assert body["booking_id"] == bid
        assert body["video_link"] == f"/api/v1/bookings/{bid}/video-link"
        assert body["call_url"].startswith("https://wadud.test/call/")
        assert body["other"] and body["title"]
        [fcm] = _rings(peer, FCM_SEND)
        message = fcm.json()["message"]
        assert "notification" not in message  # a data message: the app rings
        assert message["token"] == FCM
        assert message["android"]["priority"] == "high"
        assert message["data"]["template"] == "call_incoming"
        assert message["data"]["video_link"] == body["video_link"]
        # No bearer credential rides in a push: Apple and Google keep them.
        for sent in (voip.body, fcm.body):
            assert b"token=" not in sent and b"eyJ" not in sent

        # The app follows the link with the patient's own session: a room
        # token that joins the doctor's room.
        link = await api.get(body["video_link"], token=patient, expect=200)
        assert body["call_url"].endswith(link["room"])
        async with joined(api, link["token"]) as (_, mine):
            assert mine["type"] == "joined"
            assert [p["role"] for p in mine["participants"]] == ["doctor"]
            assert mine["participants"][0]["id"] == again["participant"]["id"]
        assert await doc.type("participant_joined")
    # Once per visit, however often the doctor came in.
    await notifier.run_until_idle()
    assert len(_rings(peer, "/3/device/")) == 1
    assert len(_rings(peer, FCM_SEND)) == 1
