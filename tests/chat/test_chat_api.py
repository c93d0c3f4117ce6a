"""Chat over REST and the WebSocket on one in-process node: membership and
tenant isolation, dedup by client id, history, read receipts and unread
counts, edits and deletes, typing, the clinic policy, and bad input."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

from tests.booking.factories import make_clinic, make_doctor
from tests.chat.conftest import World, make_patient, make_world, ws_connect
from tests.conftest import Api
from tests.wadud.framing import ENVELOPE_REFUSALS
from wadud.state import keys
from wadud.web.api import Role

URDU = "ڈاکٹر صاحب، مجھے کل سے بخار ہے اور سر میں درد ہے۔ کیا میں پیراسیٹامول لے سکتا ہوں؟"  # noqa: RUF001
ARABIC = "مرحباً دكتور، أشعر بألم في صدري منذ يومين. هل يجب أن أقلق؟ ١٢٣"
MIXED = "BP 120/80 ✓ — نتیجہ: ٹھیک‎ ‏ok 👍🏽 e\u0301"


def _conv(w: World) -> str:
    return f"/api/v1/chat/conversations/{w.conversation_id}"


def _ws_url(api: Api) -> str:
    return str(api.client.make_url("/api/v1/chat/ws"))


async def test_members_send_and_read_history(api: Api, world: World) -> None:
    w = world
    a = await api.post(
        _conv(w) + "/messages", {"client_id": "m1", "body": "hello"}, token=w.patient_token
    )
    assert a["seq"] == 1
    assert a["duplicate"] is False
    b = await api.post(
        _conv(w) + "/messages", {"client_id": "d1", "body": "hi"}, token=w.doctor.token
    )
    assert b["seq"] == 2
    # A retried send is answered with the first result, not appended again.
    again = await api.post(
        _conv(w) + "/messages", {"client_id": "m1", "body": "hello"}, token=w.patient_token
    )
    assert (again["seq"], again["at"], again["duplicate"]) == (1, a["at"], True)
    events = await api.get(_conv(w) + "/events?after=0", token=w.doctor.token, expect=200)
    assert [(e["seq"], e["body"]) for e in events] == [(1, "hello"), (2, "hi")]
    # Paging backwards for scrolling: newest first.
    page = await api.get(_conv(w) + "/events?before=2&limit=5", token=w.patient_token)
    assert [e["seq"] for e in page] == [1]
    # Clinic staff (default policy: write) read and write.
    staff = await api.get(_conv(w) + "/events", token=w.clinic.staff_token, expect=200)
    assert len(staff) == 2
    await api.post(
        _conv(w) + "/messages",
        {"client_id": "s1", "body": "clinic here"},
        token=w.clinic.staff_token,
        expect=201,
    )
    # Bodies are stored encrypted.
    raw = await api.app[keys.DB].fetchval(
        "SELECT body FROM chat_events WHERE seq = 1 AND conversation_id = $1",
        uuid.UUID(w.conversation_id),
    )
    assert b"hello" not in raw


async def test_unread_counts_and_read_receipts(api: Api, world: World) -> None:
    w = world
    for i in range(3):
        await api.post(
            _conv(w) + "/messages", {"client_id": f"p{i}", "body": f"q{i}"}, token=w.patient_token
        )
    mine = await api.get("/api/v1/chat/conversations", token=w.doctor.token, expect=200)
    assert [(c["id"], c["unread"]) for c in mine] == [(w.conversation_id, 3)]
    own = await api.get(_conv(w), token=w.patient_token)
    assert own["unread"] == 0
    assert own["my_role"] == "patient"
    r = await api.post(_conv(w) + "/read", {"seq": 2}, token=w.doctor.token, expect=200)
    assert r == {"last_read_seq": 2}
    # Never backwards.
    r = await api.post(_conv(w) + "/read", {"seq": 1}, token=w.doctor.token, expect=200)
    assert r == {"last_read_seq": 2}
    got = await api.get(_conv(w), token=w.doctor.token)
    assert (got["unread"], got["last_read_seq"]) == (1, 2)
    bad = await api.post(_conv(w) + "/read", {"seq": 99}, token=w.doctor.token, expect=422)
    assert bad["code"] == "bad-sequence"
    topics = await api.app[keys.DB].fetch("SELECT topic FROM outbox ORDER BY id")
    names = [t["topic"] for t in topics]
    assert names.count("chat.message.sent") == 3
    assert "chat.message.read" in names
    assert "chat.conversation.opened" in names


async def test_outsiders_get_404_and_read_only_roles_get_403(api: Api, world: World) -> None:
    w = world
    stranger, _ = await make_patient(api)
    other_clinic = await make_clinic(api, name="Other")
    other_doctor = await make_doctor(api, other_clinic)
    for token in (stranger, other_clinic.staff_token, other_doctor.token):
        for path in ("", "/events"):
            await api.get(_conv(w) + path, token=token, expect=404)
        await api.post(
            _conv(w) + "/messages", {"client_id": "x", "body": "hi"}, token=token, expect=404
        )
        await api.post(_conv(w) + "/read", {"seq": 0}, token=token, expect=404)
        listed = await api.get("/api/v1/chat/conversations", token=token)
        assert listed == []
        # Someone else's booking cannot be used to open a conversation.
        await api.post(
            "/api/v1/chat/conversations", {"booking_id": w.booking_id}, token=token, expect=404
        )
    admin = await api.user(Role.ADMIN)
    got = await api.get(_conv(w), token=admin, expect=200)
    assert (got["my_role"], got["can_write"]) == ("admin", False)
    no = await api.post(
        _conv(w) + "/messages", {"client_id": "a", "body": "x"}, token=admin, expect=403
    )
    assert no["code"] == "forbidden"
    # Clinic policy: staff read only, then not at all.
    policy = f"/api/v1/chat/clinics/{w.clinic.id}/policy"
    assert await api.get(policy, token=w.clinic.staff_token) == {"staff_access": "write"}
    await api.put(policy, {"staff_access": "read"}, token=w.clinic.staff_token, expect=200)
    await api.get(_conv(w) + "/events", token=w.clinic.staff_token, expect=200)
    await api.post(
        _conv(w) + "/messages",
        {"client_id": "s", "body": "x"},
        token=w.clinic.staff_token,
        expect=403,
    )
    await api.put(policy, {"staff_access": "none"}, token=admin, expect=200)
    await api.get(_conv(w) + "/events", token=w.clinic.staff_token, expect=404)
    # Another clinic's staff cannot see or change this clinic's policy.
    await api.get(policy, token=other_clinic.staff_token, expect=404)
    await api.put(policy, {"staff_access": "write"}, token=w.doctor.token, expect=403)


async def test_clinic_opens_conversation_between_patient_and_its_doctor(api: Api) -> None:
    w = await make_world(api, open_conversation=False)
    body = {"patient_id": w.patient_id, "doctor_id": w.doctor.id}
    conv = await api.post(
        "/api/v1/chat/conversations", body, token=w.clinic.staff_token, expect=201
    )
    again = await api.post(
        "/api/v1/chat/conversations", body, token=w.clinic.staff_token, expect=201
    )
    assert conv["id"] == again["id"]
    assert conv["booking_id"] is None
    mine = await api.get("/api/v1/chat/conversations", token=w.patient_token)
    assert [c["id"] for c in mine] == [conv["id"]]
    # A patient cannot open one outside a booking; other clinics' staff cannot
    # use this clinic's doctor.
    await api.post("/api/v1/chat/conversations", body, token=w.patient_token, expect=403)
    other = await make_clinic(api, name="Other")
    await api.post("/api/v1/chat/conversations", body, token=other.staff_token, expect=404)
    bad = await api.post(
        "/api/v1/chat/conversations",
        {"booking_id": w.booking_id, "doctor_id": w.doctor.id},
        token=w.patient_token,
    )
    assert bad["status"] == 422


async def test_staff_open_conversations_only_with_their_clinics_patients(api: Api) -> None:
    """Issue 12, finding 6: staff of one clinic named another clinic's patient
    (who then had an unread conversation), and the answer told a real patient
    id from a random one."""
    mine = await make_world(api, open_conversation=False)
    theirs = await make_world(api, open_conversation=False)  # another clinic, its patient
    url = "/api/v1/chat/conversations"
    staff = mine.clinic.staff_token
    answers = []
    for patient_id in (theirs.patient_id, str(uuid.uuid4()), theirs.doctor.user_id):
        resp = await api.client.post(
            url,
            json={"patient_id": patient_id, "doctor_id": mine.doctor.id},
            headers={"Authorization": f"Bearer {staff}"},
        )
        body = await resp.json(content_type=None)
        answers.append((resp.status, {k: body[k] for k in ("code", "title", "detail")}))
    # One answer for another clinic's patient, a random id and a non-patient.
    assert answers[0][0] == 404, answers
    assert answers[0] == answers[1] == answers[2], answers
    # The other clinic's patient got nothing.
    assert await api.get(url, token=theirs.patient_token, expect=200) == []
    # A patient whose only "booking" is a lapsed hold is not the clinic's patient.
    token, pid = await make_patient(api)
    await api.app[keys.DB].execute(
        "UPDATE bookings SET patient_id = $1, status = 'expired' WHERE id = $2",
        uuid.UUID(pid),
        uuid.UUID(mine.booking_id),
    )
    await api.post(url, {"patient_id": pid, "doctor_id": mine.doctor.id}, token=staff, expect=404)
    assert await api.get(url, token=token, expect=200) == []


async def test_edits_and_deletes_are_events(api: Api, world: World) -> None:
    w = world
    await api.post(
        _conv(w) + "/messages", {"client_id": "1", "body": "wrong dose"}, token=w.doctor.token
    )
    e = await api.post(
        _conv(w) + "/messages/1/edit",
        {"client_id": "2", "body": "right dose"},
        token=w.doctor.token,
        expect=201,
    )
    assert e["seq"] == 2
    # Only the sender edits; a patient cannot delete the doctor's message.
    await api.post(
        _conv(w) + "/messages/1/edit",
        {"client_id": "3", "body": "x"},
        token=w.patient_token,
        expect=403,
    )
    await api.post(
        _conv(w) + "/messages/1/delete", {"client_id": "4"}, token=w.patient_token, expect=403
    )
    bad = await api.post(
        _conv(w) + "/messages/9/delete", {"client_id": "5"}, token=w.doctor.token, expect=422
    )
    assert bad["code"] == "bad-sequence"
    await api.post(
        _conv(w) + "/messages/2/delete", {"client_id": "6"}, token=w.doctor.token, expect=422
    )  # an edit is not a message
    # Clinic staff may delete (moderation); the original stays in the log.
    await api.post(
        _conv(w) + "/messages/1/delete", {"client_id": "7"}, token=w.clinic.staff_token, expect=201
    )
    events = await api.get(_conv(w) + "/events?after=0", token=w.clinic.staff_token)
    assert [(x["kind"], x["target_seq"], x["body"]) for x in events] == [
        ("message", None, "wrong dose"),
        ("edit", 1, "right dose"),
        ("delete", 1, None),
    ]


async def test_urdu_and_arabic_round_trip_exactly(api: Api, world: World) -> None:
    w = world
    async with aiohttp.ClientSession() as s, ws_connect(s, _ws_url(api), w.doctor.token) as doc:
        await doc.send({"type": "subscribe", "id": "s", "conversation_id": w.conversation_id})
        await doc.reply("s")
        for i, text in enumerate((URDU, ARABIC, MIXED)):
            await api.post(
                _conv(w) + "/messages",
                {"client_id": f"u{i}", "body": text},
                token=w.patient_token,
                expect=201,
            )
        await doc.wait_seq(w.conversation_id, 3)
        live = [e["body"] for e in doc.events[w.conversation_id]]
    stored = [e["body"] for e in await api.get(_conv(w) + "/events?after=0", token=w.doctor.token)]
    assert live == stored == [URDU, ARABIC, MIXED]


async def test_websocket_protocol_and_bad_input(api: Api, world: World) -> None:
    w = world
    url = _ws_url(api)
    cid = w.conversation_id
    async with aiohttp.ClientSession() as s:
        # Token as the first frame.
        async with ws_connect(s, url) as pat:
            await pat.send({"type": "auth", "token": w.patient_token})
            ready = await pat.wait_for(lambda f: f["type"] == "ready")
            assert ready["user_id"] == w.patient_id
            async with ws_connect(s, url, w.doctor.token) as doc:
                await doc.send({"type": "subscribe", "id": "s1", "conversation_id": cid})
                sub = await doc.reply("s1")
                assert (sub["type"], sub["last_seq"]) == ("subscribed", 0)

                def j(**kw: Any) -> str:
                    return json.dumps(kw)

                send = {"type": "send", "conversation_id": cid, "client_id": "1"}
                bad_inputs: list[tuple[str, str]] = [
                    *ENVELOPE_REFUSALS,
                    (j(**{**send, "conversation_id": "nope"}, id="d"), "invalid"),
                    (j(type="ping", id="e", extra=1), "invalid"),
                    (j(type="subscribe", id="f", conversation_id=cid, after=-1), "invalid"),
                    (j(type="subscribe", id="g", conversation_id=cid, after=5), "bad-sequence"),
                    (j(type="read", id="h", conversation_id=cid, seq=5), "bad-sequence"),
                    (j(type="subscribe", id="i", conversation_id=str(uuid.uuid4())), "not-found"),
                    (j(**send, id="j", body="x" * 5000), "too-large"),
                    (j(**send, id="k"), "invalid"),
                    (j(**{**send, "type": "edit"}, id="l", target_seq=0, body="x"), "invalid"),
                    (j(type="auth", id="m", token="again"), "bad-frame"),
                ]
                for text, code in bad_inputs:
                    await pat.ws.send_str(text)
                    err = await pat.wait_for(
                        lambda f, c=code: f["type"] == "error" and f["code"] == c, 5
                    )
                    assert "message" in err
                await pat.ws.send_bytes(b"\x00\x01")
                await pat.wait_for(lambda f: f["type"] == "error" and "binary" in f["message"])
                # ...and the connection still works, for it and for others.
                await pat.send({"type": "ping", "id": "p"})
                assert (await pat.reply("p"))["type"] == "pong"
                await pat.send(
                    {
                        "type": "send",
                        "id": "s",
                        "conversation_id": cid,
                        "client_id": "c1",
                        "body": "after all that",
                    }
                )
                ack = await pat.reply("s")
                assert (ack["type"], ack["seq"]) == ("ack", 1)
                await doc.wait_seq(cid, 1)
                # Typing: relayed to others, throttled, never stored.
                await pat.send({"type": "subscribe", "id": "ps", "conversation_id": cid})
                await pat.reply("ps")
                for _ in range(3):
                    await pat.send({"type": "typing", "conversation_id": cid})
                await doc.wait_for(lambda f: f["type"] == "typing")
                await pat.send({"type": "read", "id": "r", "conversation_id": cid, "seq": 1})
                assert (await pat.reply("r"))["last_read_seq"] == 1
                rec = await doc.wait_for(lambda f: f["type"] == "read")
                assert rec["user_id"] == w.patient_id
                await asyncio.sleep(0.2)
                assert sum(f["type"] == "typing" for f in doc.frames) == 1
                assert not any(f["type"] == "typing" for f in pat.frames)
        # Bad tokens: an error frame and close 4401.
        async with ws_connect(s, url, "not-a-token") as bad:
            err = await bad.wait_for(lambda f: f["type"] == "error")
            assert err["code"] == "unauthorized"
            if bad.task:
                await asyncio.wait_for(bad.task, 5)
            assert bad.ws.close_code == 4401
        async with ws_connect(s, url) as bad:
            await bad.send({"type": "ping"})
            await bad.wait_for(lambda f: f["type"] == "error")
            if bad.task:
                await asyncio.wait_for(bad.task, 5)
            assert bad.ws.close_code == 4401
    count = await api.app[keys.DB].fetchval("SELECT count(*) FROM chat_events")
    assert count == 1


async def test_send_rate_limit(api: Api, world: World) -> None:
    svc: Any = api.app[__import__("chat.service").service.CHAT]
    svc.limiter.rate, svc.limiter.burst = 1.0, 3.0
    codes = []
    for i in range(5):
        r = await api.post(
            _conv(world) + "/messages",
            {"client_id": f"r{i}", "body": "x"},
            token=world.patient_token,
        )
        codes.append(r.get("code", "ok"))
    assert codes == ["ok", "ok", "ok", "rate-limited", "rate-limited"]


@pytest.mark.parametrize("field", ["after", "before"])
async def test_history_query_bad_values(api: Api, world: World, field: str) -> None:
    r = await api.get(_conv(world) + f"/events?{field}=-3", token=world.patient_token)
    assert r["status"] == 422
    r = await api.get(_conv(world) + "/events?after=1&before=3", token=world.patient_token)
    assert r["status"] == 422


async def _post_message_bytes(
    api: Api, world: World, data: bytes, content_type: str
) -> aiohttp.ClientResponse:
    """The patient posts ``data`` as a message, as is, with ``content_type``."""
    return await api.client.post(
        _conv(world) + "/messages",
        data=data,
        headers={"Authorization": f"Bearer {world.patient_token}", "Content-Type": content_type},
    )


async def test_wrong_content_type_on_rest(api: Api, world: World) -> None:
    resp = await _post_message_bytes(
        api, world, b"client_id=1&body=x", "application/x-www-form-urlencoded"
    )
    assert resp.status == 415
    big = await api.post(
        _conv(world) + "/messages",
        {"client_id": "b", "body": "ب" * 3000},
        token=world.patient_token,
    )
    assert (big["status"], big["code"]) == (413, "too-large")


async def test_booking_conversation_is_one_per_booking(api: Api, world: World) -> None:
    w = world
    again = await api.post(
        "/api/v1/chat/conversations", {"booking_id": w.booking_id}, token=w.doctor.token, expect=201
    )
    assert again["id"] == w.conversation_id
    assert again["my_role"] == "doctor"


async def test_chat_endpoints_are_in_the_openapi_document(api: Api) -> None:
    doc = await api.get("/api/v1/openapi.json", expect=200)
    chat_paths = {p for p in doc["paths"] if p.startswith("/api/v1/chat/")}
    assert "/api/v1/chat/conversations/{conversation_id}/messages" in chat_paths
    assert "/api/v1/chat/attachments/{attachment_id}/content" in chat_paths
    op = doc["paths"]["/api/v1/chat/conversations"]["post"]
    assert op["summary"] == "Open (or find) a conversation."


async def test_non_members_cannot_subscribe_or_send_over_websocket(api: Api, world: World) -> None:
    w = world
    stranger, _ = await make_patient(api)
    other = await make_clinic(api, name="Elsewhere")
    async with aiohttp.ClientSession() as s:
        for token in (stranger, other.staff_token):
            async with ws_connect(s, _ws_url(api), token) as ws:
                cid = w.conversation_id
                await ws.send({"type": "subscribe", "id": "s", "conversation_id": cid})
                await ws.send(
                    {
                        "type": "send",
                        "id": "m",
                        "conversation_id": cid,
                        "client_id": "x",
                        "body": "let me in",
                    }
                )
                await ws.send({"type": "history", "id": "h", "conversation_id": cid})
                await ws.send({"type": "typing", "id": "t", "conversation_id": cid})
                for ref in "smht":
                    err = await ws.reply(ref)
                    assert (err["type"], err["code"]) == ("error", "not-found")
                assert not any(f["type"] == "event" for f in ws.frames)
    assert await api.app[keys.DB].fetchval("SELECT count(*) FROM chat_events") == 0


async def test_lone_surrogate_over_rest_is_a_4xx(api: Api, world: World) -> None:
    resp = await _post_message_bytes(
        api, world, b'{"client_id": "\\ud800", "body": "x"}', "application/json"
    )
    assert resp.status in (400, 422)


async def test_websocket_accepts_an_authorization_header(api: Api, world: World) -> None:
    async with aiohttp.ClientSession() as s:
        raw = await s.ws_connect(
            _ws_url(api), headers={"Authorization": f"Bearer {world.doctor.token}"}
        )
        try:
            ready = await raw.receive_json(timeout=5)
            assert (ready["type"], ready["role"]) == ("ready", "doctor")
        finally:
            await raw.close()
