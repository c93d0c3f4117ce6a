"""The must-show runs: two real `wadud api` processes sharing PostgreSQL and
Redis; a Redis restart mid-conversation; a client that misses 500 messages
and resumes. Every client must end with every message exactly once, in
order."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aiohttp

from chat.service import CHAT
from tests.chat.conftest import Node, Ws, make_world, wait_ready, ws_connect
from tests.conftest import Api
from wadud.state import keys

N = 1000


def _check_complete(ws: Ws, cid: str, last: int) -> list[dict[str, Any]]:
    events = ws.events.get(cid, [])
    assert [e["seq"] for e in events] == list(range(1, last + 1)), "gap, repeat or disorder"
    return events


async def _send_many(ws: Ws, cid: str, prefix: str, n: int) -> list[dict[str, Any]]:
    """Fire ``n`` sends without waiting, then collect every ack."""
    for i in range(n):
        await ws.send(
            {
                "type": "send",
                "id": f"{prefix}{i}",
                "conversation_id": cid,
                "client_id": f"{prefix}{i}",
                "body": f"{prefix} پیغام {i}",
            }
        )
    acks = []
    for i in range(n):
        ack = await ws.reply(f"{prefix}{i}", 60)
        assert ack["type"] == "ack", ack
        acks.append(ack)
    return acks


async def test_two_nodes_thousand_concurrent_messages(
    api: Api, node_pair: tuple[Node, Node]
) -> None:
    a, b = node_pair
    w = await make_world(api)
    cid = w.conversation_id
    await asyncio.gather(wait_ready(a), wait_ready(b))
    async with (
        aiohttp.ClientSession() as s,
        ws_connect(s, a.ws_url, w.patient_token) as pat,
        ws_connect(s, b.ws_url, w.doctor.token) as doc,
    ):
        for ws in (pat, doc):
            await ws.send({"type": "subscribe", "id": "sub", "conversation_id": cid, "after": 0})
            await ws.reply("sub")
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        acks_p, acks_d = await asyncio.gather(
            _send_many(pat, cid, "p", N // 2), _send_many(doc, cid, "d", N // 2)
        )
        await asyncio.gather(pat.wait_seq(cid, N, 60), doc.wait_seq(cid, N, 60))
        print(f"{N} messages over two nodes in {loop.time() - t0:.2f} s")
        seqs = sorted(x["seq"] for x in acks_p + acks_d)
        assert seqs == list(range(1, N + 1))
        ep, ed = _check_complete(pat, cid, N), _check_complete(doc, cid, N)
        assert ep == ed
        assert len({e["client_id"] for e in ep}) == N
        # Each side's own messages keep the order it sent them in.
        mine = [int(e["client_id"][1:]) for e in ep if e["client_id"].startswith("p")]
        assert mine == sorted(mine)


async def test_redis_restart_loses_nothing(
    api: Api, node_pair: tuple[Node, Node], redis_server: Any
) -> None:
    a, b = node_pair
    w = await make_world(api)
    cid = w.conversation_id
    await asyncio.gather(wait_ready(a), wait_ready(b))
    staff_seen: list[dict[str, Any]] = []
    try:
        async with (
            aiohttp.ClientSession() as s,
            ws_connect(s, a.ws_url, w.patient_token) as pat,
            ws_connect(s, b.ws_url, w.doctor.token) as doc,
        ):
            for ws in (pat, doc):
                await ws.send({"type": "subscribe", "id": "sub", "conversation_id": cid})
                await ws.reply("sub")
            # Staff on node B drops and resumes around the outage.
            async with ws_connect(s, b.ws_url, w.clinic.staff_token) as staff:
                await staff.send({"type": "subscribe", "id": "sub", "conversation_id": cid})
                await staff.reply("sub")
                await asyncio.gather(
                    _send_many(pat, cid, "p1-", 50), _send_many(doc, cid, "d1-", 50)
                )
                await staff.wait_seq(cid, 100)
                staff_seen.extend(staff.events[cid])
            redis_server.stop()
            # Five seconds without Redis, both sides still talking.
            loop = asyncio.get_running_loop()
            end = loop.time() + 5.0
            k = 0
            while loop.time() < end:
                await asyncio.gather(
                    _send_many(pat, cid, f"p2-{k}-", 5), _send_many(doc, cid, f"d2-{k}-", 5)
                )
                k += 1
                await asyncio.sleep(0.1)
            redis_server.start()
            await asyncio.gather(_send_many(pat, cid, "p3-", 50), _send_many(doc, cid, "d3-", 50))
            total = 100 + 10 * k + 100
            await asyncio.gather(pat.wait_seq(cid, total, 30), doc.wait_seq(cid, total, 30))
            ep, ed = _check_complete(pat, cid, total), _check_complete(doc, cid, total)
            assert ep == ed
            # The staff member resumes from the last sequence it saw.
            last = staff_seen[-1]["seq"]
            async with ws_connect(s, a.ws_url, w.clinic.staff_token) as staff:
                await staff.send(
                    {"type": "subscribe", "id": "sub", "conversation_id": cid, "after": last}
                )
                await staff.wait_seq(cid, total)
                await asyncio.sleep(0.2)
                staff_seen.extend(staff.events[cid])
            assert [e["seq"] for e in staff_seen] == list(range(1, total + 1))
            # After recovery the bus carries messages again (not only the
            # reconcile loop): a fresh one arrives fast on the other node.
            t0 = loop.time()
            await _send_many(pat, cid, "p4-", 1)
            await doc.wait_seq(cid, total + 1, 5)
            print(f"after restart: cross-node delivery in {1000 * (loop.time() - t0):.1f} ms")
    finally:
        if redis_server.handle is None:
            with contextlib.suppress(Exception):
                redis_server.start()


async def test_resume_after_missing_500(api: Api) -> None:
    w = await make_world(api)
    cid = w.conversation_id
    url = str(api.client.make_url("/api/v1/chat/ws"))
    async with aiohttp.ClientSession() as s, ws_connect(s, url, w.doctor.token) as doc:
        async with ws_connect(s, url, w.patient_token) as pat:
            await pat.send({"type": "subscribe", "id": "sub", "conversation_id": cid})
            await pat.reply("sub")
            await _send_many(doc, cid, "a", 20)
            await pat.wait_seq(cid, 20)
            last = pat.seqs(cid)[-1]
        await _send_many(doc, cid, "b", 500)
        async with ws_connect(s, url, w.patient_token) as pat:
            await pat.send(
                {"type": "subscribe", "id": "sub", "conversation_id": cid, "after": last}
            )
            await pat.wait_seq(cid, 520)
            await _send_many(doc, cid, "c", 1)  # and live afterwards
            await pat.wait_seq(cid, 521)
            got = pat.events[cid]
        assert [e["seq"] for e in got] == list(range(21, 522))
        assert [e["client_id"] for e in got[:500]] == [f"b{i}" for i in range(500)]


async def test_lost_and_reordered_bus_messages_are_filled_from_postgres(api: Api) -> None:
    """What the hub does when pub/sub drops or reorders: an event that skips
    ahead triggers a fill of the gap; a lost tail is found by reconcile."""
    import uuid as _uuid

    from chat import eventlog
    from chat.access import access
    from chat.service import CHAT

    w = await make_world(api)
    cid = w.conversation_id
    svc = api.app[CHAT]
    url = str(api.client.make_url("/api/v1/chat/ws"))
    acc = await access(svc.pool, _principal(w), _uuid.UUID(cid))

    async def commit_silently(n: int) -> list[dict[str, Any]]:
        # Committed, but the bus never hears of it: as if Redis dropped it.
        out = []
        for i in range(n):
            client_id = _uuid.uuid4().hex
            res = await eventlog.append(
                svc.appender,
                svc.keyring,
                acc,
                acc.patient_id,
                client_id=client_id,
                kind="message",
                body=f"silent {i}".encode(),
            )
            out.append(
                eventlog.event_of(
                    acc.conversation_id,
                    seq=res.seq,
                    kind="message",
                    sender_id=acc.patient_id,
                    client_id=client_id,
                    body=f"silent {i}",
                    target_seq=None,
                    attachment=None,
                    at=res.at,
                )
            )
        return out

    async with aiohttp.ClientSession() as s, ws_connect(s, url, w.doctor.token) as doc:
        await doc.send({"type": "subscribe", "id": "sub", "conversation_id": cid})
        await doc.reply("sub")
        events = await commit_silently(3)
        svc.hub.committed(events[2])  # 3 arrives, 1 and 2 never did
        await doc.wait_seq(cid, 3, 5)
        await commit_silently(2)  # a lost tail: nothing after it shows a gap
        await doc.wait_seq(cid, 5, 5)
        svc.hub.committed(events[0])  # a late repeat is dropped
        await asyncio.sleep(0.3)
        assert doc.seqs(cid) == [1, 2, 3, 4, 5]


def _principal(w: Any) -> Any:
    import uuid as _uuid

    from wadud.principal import Principal, Role

    return Principal(_uuid.UUID(w.patient_id), Role.PATIENT, None, False, None)


async def _closed_with(ws: Ws, within: float = 5.0) -> dict[str, Any]:
    """Wait for the server to close ``ws``; return its last frame."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not ws.closed:
        assert loop.time() < deadline, f"still open after {within} s: {ws.frames[-3:]}"
        ws.new.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ws.new.wait(), 0.1)
    assert ws.ws.close_code == 4401, ws.ws.close_code
    return ws.frames[-1]


async def test_logout_and_role_change_close_chat_sockets_on_every_node(
    api: Api, node_pair: tuple[Node, Node]
) -> None:
    """Issue 12, finding 7: after logout an open chat socket kept reading
    history and sending. Now logout on one replica closes the session's
    sockets on both within seconds, and a role change closes the user's."""
    a, b = node_pair
    w = await make_world(api)
    cid = w.conversation_id
    await api.stop_relaying()
    await asyncio.gather(wait_ready(a), wait_ready(b))
    async with (
        aiohttp.ClientSession() as s,
        ws_connect(s, a.ws_url, w.patient_token) as pat_a,
        ws_connect(s, b.ws_url, w.patient_token) as pat_b,
        ws_connect(s, a.ws_url, w.doctor.token) as doc,
    ):
        for ws in (pat_a, pat_b, doc):
            await ws.send({"type": "subscribe", "id": "sub", "conversation_id": cid, "after": 0})
            assert (await ws.reply("sub"))["type"] == "subscribed"
        async with s.post(
            b.url + "/api/v1/auth/logout", headers={"Authorization": f"Bearer {w.patient_token}"}
        ) as r:
            assert r.status < 300, await r.text()
        t0 = asyncio.get_running_loop().time()
        for ws in (pat_a, pat_b):
            last = await _closed_with(ws)
            assert last["type"] == "error" and last["code"] == "session-revoked", last
        print(f"sockets closed {asyncio.get_running_loop().time() - t0:.2f} s after logout")
        # The doctor's session is another one: it still reads and writes.
        await doc.send(
            {"type": "send", "id": "m", "conversation_id": cid, "client_id": "m", "body": "hi"}
        )
        assert (await doc.reply("m"))["type"] == "ack"
        # A change of rights (here by SQL, as an operator would) ends the user's sockets.
        await api.app[keys.DB].execute(
            "UPDATE users SET role = 'clinic_staff' WHERE id = $1", uuid.UUID(w.doctor.user_id)
        )
        last = await _closed_with(doc)
        assert last["code"] == "session-revoked", last


async def test_liveness_check_closes_sockets_whose_revocation_message_was_lost(
    api: Api,
) -> None:
    w = await make_world(api)
    hub = api.app[CHAT].hub
    async with (
        aiohttp.ClientSession() as s,
        ws_connect(s, str(api.client.make_url("/api/v1/chat/ws")), w.patient_token) as pat,
    ):
        await pat.send({"type": "ping", "id": "p"})
        await pat.reply("p")
        assert await hub.check_liveness() == 0
        # Revoke with the triggers off: no auth.revoked message is ever sent.
        async with api.app[keys.DB].acquire() as conn:
            await conn.execute("SET session_replication_role = replica")
            await conn.execute("UPDATE token_families SET revoked_at = now()")
            await conn.execute("RESET session_replication_role")
        await asyncio.sleep(0.5)
        assert not pat.closed
        assert await hub.check_liveness() == 1
        last = await _closed_with(pat)
        assert last["code"] == "session-revoked"
