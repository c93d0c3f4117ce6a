"""Invited guests (signalling/edge/invites.py, docs/guests.md), on the real
app with the Python client: invites from the call and from a clinic's key,
one use per link, the patient's agreement for family and observers, and
revocation that sends the guest out at once and kills the link.
"""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Api
from tests.polling import wait_until
from tests.signalling.test_client_call import (  # noqa: F401 - the fixtures
    Call,
    call,
    loopback_aiortc,
    settings,
)
from tests.wadud.web.test_api_keys import basic
from wadud.state import keys
from wadud.web import api_keys
from wadud_client.call import CallClient
from wadud_client.errors import ConnectionClosed, RequestFailed


def _room() -> str:
    return "room-" + uuid.uuid4().hex[:8]


async def _invite(api: Api, token: str, expect: int = 201, **body: Any) -> dict[str, Any]:
    out: dict[str, Any] = await api.post(
        "/api/v1/calls/invites", {"token": token, **body}, expect=expect
    )
    return out


async def _redeem(api: Api, url: str, expect: int = 200) -> dict[str, Any]:
    invite = parse_qs(urlsplit(url).query)["invite"][0]
    invite_id, key = invite.split(".")
    out: dict[str, Any] = await api.post(
        f"/api/v1/invites/{invite_id}/redeem", {"key": key}, expect=expect
    )
    return out


async def _guest(c: Call, redeemed: dict[str, Any], label: str) -> CallClient:
    client = CallClient(c.url, redeemed["token"], label=label)
    c.clients.append(client)
    await client.join()
    return client


async def _audited(api: Api, invite_id: str, actions: list[str]) -> None:
    """The invite's audit trail comes to be ``actions`` (an answer in the
    room is kept a moment after the room acts on it)."""

    async def now() -> bool:
        return await _audit(api, invite_id) == actions

    try:
        await wait_until(now, within=5)
    except TimeoutError:
        assert await _audit(api, invite_id) == actions


async def _audit(api: Api, invite_id: str) -> list[str]:
    rows = await api.app[keys.DB].fetch(
        "SELECT action FROM audit_log WHERE object = $1 ORDER BY seq", f"invite/{invite_id}"
    )
    return [r["action"] for r in rows]


async def test_an_interpreter_invited_from_the_call_joins_once_and_revoking_sends_them_out(
    call: Call,  # noqa: F811 - the fixture
) -> None:
    room = _room()
    doctor = await call.join(room, "dr", role="doctor", admin=True)
    patient = await call.join(room, "pt")
    made = await _invite(
        call.api,
        call.token(room, "dr", role="doctor", admin=True),
        role="interpreter",
        name="Gul Pashto",
    )
    assert (made["role"], made["needs_approval"], made["uses"], made["max_uses"]) == (
        "interpreter",
        False,
        0,
        1,
    )
    # The interpreter's actions: no screen of their own, and nothing a host does.
    assert set(made["actions"]) == {
        "chat",
        "consent",
        "publish_audio",
        "publish_video",
        "subscribe",
    }
    # The patient sees who is invited, but not the link.
    seen = await call.api.post(
        "/api/v1/calls/invites/list", {"token": call.token(room, "pt")}, expect=200
    )
    assert [(i["name"], i["url"]) for i in seen] == [("Gul Pashto", None)]
    # And may not invite.
    refused = await _invite(
        call.api, call.token(room, "pt"), expect=403, role="family", name="Someone"
    )
    assert (refused["code"], refused["action"]) == ("invite-not-allowed", "invite")

    redeemed = await _redeem(call.api, made["url"])
    # Single use by default: the link is spent.
    spent = await _redeem(call.api, made["url"], expect=410)
    assert spent["code"] == "invite-closed"
    guest = await _guest(call, redeemed, "interpreter")
    # An interpreter is no family member: no one's agreement, straight in.
    assert guest.state == "joined"
    assert guest.participant["role"] == "interpreter"
    await wait_until(lambda: guest.participant_id in doctor.participants, within=5)

    # "At once" (docs/guests.md) is the push: from the revoke's answer, once
    # the API has stored it, to the guest's client reading ``removed``. Not
    # from before the request: on a starved machine the API's own
    # transaction took most of a second (ci132), and that is no delay of
    # the push.
    await call.api.post(
        f"/api/v1/calls/invites/{made['id']}/revoke",
        {"token": call.token(room, "dr", role="doctor", admin=True)},
        expect=204,
    )
    t0 = time.monotonic()
    await wait_until(lambda: guest.close_code is not None, within=5)
    [removed] = [e for e in guest.history if e.type == "removed"]
    assert removed.data["reason"] == "invite-revoked"
    took = removed.at - t0
    assert guest.close_code == 4403
    print(f"revoked to closed: {took * 1000:.0f} ms")
    assert took < 1.0
    await wait_until(lambda: guest.participant_id not in patient.participants, within=5)
    # The link no longer joins, even with the token already redeemed.
    again = CallClient(call.url, redeemed["token"], label="again")
    call.clients.append(again)
    with pytest.raises((RequestFailed, ConnectionClosed)) as exc:
        await again.join()
    assert "invite-closed" in str(exc.value) or again.close_code == 4410
    await _audited(
        call.api,
        made["id"],
        [
            "invite.created",
            "invite.redeemed",
            "invite.revoked",
        ],
    )


async def test_a_family_member_waits_for_the_patient_who_may_refuse(call: Call) -> None:  # noqa: F811 - the fixture
    room = _room()
    doctor = await call.join(room, "dr", role="doctor", admin=True)
    patient = await call.join(room, "pt")
    dr_token = call.token(room, "dr", role="doctor", admin=True)
    son = await _invite(call.api, dr_token, role="family", name="Bilal (son)")
    assert son["needs_approval"] is True
    guest = await _guest(call, await _redeem(call.api, son["url"]), "son")
    assert guest.state == "waiting"
    # The patient is asked; the doctor sees them waiting, and may not let
    # them in over the patient's head.
    await wait_until(lambda: patient.guests_awaiting, within=5)
    [asked] = patient.guests_awaiting
    assert (asked["invite_id"], asked["name"]) == (son["id"], "Bilal (son)")
    await wait_until(lambda: doctor.waiting, within=5)
    assert doctor.waiting[0]["awaiting_approval"] is True
    with pytest.raises(RequestFailed) as exc:
        await doctor.admit(guest.participant_id or "")
    assert exc.value.code == "bad-state"
    # Only the patient's answer counts.
    with pytest.raises(RequestFailed) as exc:
        await doctor.approve_guest(son["id"])
    assert (exc.value.code, exc.value.frame["action"]) == ("forbidden", "approve_guests")
    await patient.approve_guest(son["id"])
    await wait_until(lambda: guest.state == "joined", within=5)
    await wait_until(lambda: not patient.guests_awaiting, within=5)
    await _audited(
        call.api,
        son["id"],
        [
            "invite.created",
            "invite.redeemed",
            "invite.approved",
        ],
    )

    observer = await _invite(call.api, dr_token, role="observer", name="Trainee")
    watcher = await _guest(call, await _redeem(call.api, observer["url"]), "trainee")
    assert watcher.state == "waiting"
    await wait_until(lambda: patient.guests_awaiting, within=5)
    await patient.approve_guest(observer["id"], agree=False)
    await wait_until(lambda: watcher.close_code is not None, within=5)
    assert watcher.close_code == 4403
    assert [e.data.get("reason") for e in watcher.history if e.type == "denied"] == ["refused"]

    # A refusal ends the invite: its link is dead (kept a moment after the
    # room turned the guest away).
    async def refused() -> bool:
        status = await call.api.app[keys.DB].fetchval(
            "SELECT status FROM room_invites WHERE id = $1", uuid.UUID(observer["id"])
        )
        return bool(status == "refused")

    await wait_until(refused, within=5)
    assert (await _redeem(call.api, observer["url"], 410))["code"] == "invite-closed"
    await _audited(
        call.api,
        observer["id"],
        [
            "invite.created",
            "invite.redeemed",
            "invite.refused",
        ],
    )


async def test_a_clinic_key_invites_lists_and_revokes_in_its_own_rooms(call: Call) -> None:  # noqa: F811 - the fixture
    pool = call.api.app[keys.DB]
    clinic = await pool.fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ('Shifa', 'PK', 'PKR') RETURNING id"
    )
    async with pool.acquire() as conn:
        made = await api_keys.create_key(
            conn, name="ehr", scope=api_keys.Scope.CLINIC, clinic_id=clinic
        )
    auth = basic(made.key.id, made.secret)
    resp = await call.api.client.post(
        "/api/v1/invites",
        json={
            "room": "visit-7",
            "role": "pharmacist",
            "name": "Dispensary",
            "actions": ["subscribe", "chat"],
            "channel": "sms",
            "address": "+923001234567",
            "locale": "ur",
            "uses": 2,
        },
        headers=auth,
    )
    body = await resp.json()
    assert resp.status == 201, body
    assert body["room"] == f"clinic-{clinic.hex}-visit-7"
    assert (body["actions"], body["needs_approval"]) == (["chat", "subscribe"], False)
    # The message goes out through the notifier, without the link's key.
    event = await pool.fetchrow(
        "SELECT payload FROM outbox WHERE topic = 'invite.created' ORDER BY id DESC LIMIT 1"
    )
    assert event is not None and body["id"] in str(event["payload"])
    assert body["url"].split("invite=")[1].split(".")[1] not in str(event["payload"])
    # A role of the clinic's own needs its actions.
    resp = await call.api.client.post(
        "/api/v1/invites", json={"room": "v", "role": "pharmacist", "name": "x"}, headers=auth
    )
    assert resp.status in (400, 422)
    listed = await call.api.client.get("/api/v1/invites?room=visit-7", headers=auth)
    assert [i["id"] for i in await listed.json()] == [body["id"]]
    # A wrong key opens nothing.
    bad = body["url"][:-3] + ("aaa" if not body["url"].endswith("aaa") else "bbb")
    await _redeem(call.api, bad, expect=404)
    gone = await call.api.client.delete(f"/api/v1/invites/{body['id']}?room=visit-7", headers=auth)
    assert gone.status == 204
    await _redeem(call.api, body["url"], expect=410)
