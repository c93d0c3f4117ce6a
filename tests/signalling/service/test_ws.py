"""Call signalling over a real WebSocket on the app under test (real
PostgreSQL behind it, as every app here): joining, the waiting room,
refusals, timeouts, bad and oversized frames, replace, resume, pings, end,
metrics."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bin.assembly import build_app
from signalling.edge.http import CALLS
from tests.conftest import Api, served
from tests.wadud.framing import ENVELOPE_REFUSALS
from tests.wsframes import FrameSocket
from wadud.config import Settings
from wadud.observe import metrics
from wadud.state import keys
from wadud.web.api import Role
from wadud.web.auth import RoomGrant, issue_room_token

ROOM = "consult-7"
MAX_FRAME = 8192
GRACE = 3.0


@pytest.fixture
async def app(settings: Settings) -> web.Application:
    settings = dataclasses.replace(
        settings, call_max_frame_bytes=MAX_FRAME, call_resume_grace=GRACE
    )
    return build_app(settings)


def token(
    api: Api,
    identity: str,
    role: str = "patient",
    *,
    room: str = ROOM,
    ttl: float = 600,
    start: float = -60,
    **kw: Any,
) -> str:
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(
        room=room,
        identity=identity,
        name=kw.pop("name", identity),
        role=role,
        admin=role in ("doctor", "staff"),
        **kw,
    )
    return issue_room_token(
        api.app[keys.SETTINGS],
        grant,
        not_before=now + dt.timedelta(seconds=start),
        expires=now + dt.timedelta(seconds=ttl),
    )


@dataclass
class Ws(FrameSocket):
    """A test client that keeps every frame it receives."""

    answer_pings: bool = True

    async def received(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "ping" and self.answer_pings:
            await self.send({"type": "pong"})

    async def type(self, kind: str, within: float = 10.0) -> dict[str, Any]:
        return await self.wait_for(lambda f: f.get("type") == kind, within)

    async def request(self, frame: dict[str, Any], ref: str) -> dict[str, Any]:
        await self.send({**frame, "id": ref})
        return await self.reply(ref)

    async def closed_with(self, within: float = 10.0) -> int | None:
        assert self.task is not None
        await asyncio.wait_for(self.task, within)
        return self.ws.close_code


@contextlib.asynccontextmanager
async def connect(api: Api, query: str = "") -> AsyncIterator[Ws]:
    url = str(api.client.make_url("/ws")) + query
    async with aiohttp.ClientSession() as session, Ws.opened(session, url) as client:
        yield client


@contextlib.asynccontextmanager
async def joined(api: Api, tok: str, query: str = "") -> AsyncIterator[tuple[Ws, dict[str, Any]]]:
    async with connect(api, query) as ws:
        answer = await ws.request({"type": "join", "token": tok}, "join")
        yield ws, answer


async def test_join_answers_with_the_room(api: Api) -> None:
    async with joined(api, token(api, "dr-amina", "doctor", name="ڈاکٹر آمنہ")) as (doc, j):
        assert j["type"] == "joined"
        assert j["participant"]["identity"] == "dr-amina"
        assert j["participant"]["name"] == "ڈاکٹر آمنہ"
        assert j["participant"]["grants"] == {"publish": True, "subscribe": True, "admin": True}
        assert j["participant"]["id"].startswith("p-")
        assert j["session"] and j["participants"] == [] and j["tracks"] == []
        assert j["ping_interval"] == api.app[keys.SETTINGS].call_ping_interval
        # No relay configured in the test settings: no ICE servers to offer.
        assert j["ice_servers"] == []
        assert (await doc.request({"type": "ping"}, "p"))["type"] == "pong"
        async with joined(api, token(api, "pt-bilal")) as (pat, pj):
            assert pj["type"] == "joined"
            assert [p["identity"] for p in pj["participants"]] == ["dr-amina"]
            ev = await doc.type("participant_joined")
            assert ev["participant"]["id"] == pj["participant"]["id"]
            # Leave: ok, then a normal close; the others hear of it.
            assert (await pat.request({"type": "leave"}, "bye"))["type"] == "ok"
            assert await pat.closed_with() == 1000
            left = await doc.type("participant_left")
            assert (left["participant_id"], left["reason"]) == (pj["participant"]["id"], "left")


async def test_ice_servers_come_from_the_configured_relay(settings: Settings) -> None:

    app = build_app(
        dataclasses.replace(
            settings, turn_secrets=["relay-secret"], turn_urls=["turn:turn.example:3478"]
        )
    )
    async with served(app) as api, joined(api, token(api, "dr-amina", "doctor")) as (_, j):
        [server] = j["ice_servers"]
        assert server["urls"] == ["turn:turn.example:3478"]
        expiry, user = server["username"].split(":")
        # The person's identity: the relay's quota follows it across rejoins.
        assert user == "dr-amina" and int(expiry) > 0
        from turn.credentials import rest_password

        assert server["credential"] == rest_password("relay-secret", server["username"])


async def test_waiting_room_admit_and_deny(api: Api) -> None:
    async with joined(api, token(api, "pt-bilal")) as (pat, w):
        assert w["type"] == "waiting"
        pid = w["participant"]["id"]
        assert w["session"]
        # While waiting, nothing but leave and ping.
        err = await pat.request({"type": "mute", "track_id": "t", "muted": True}, "m")
        assert (err["code"], err.get("fatal")) == ("not-joined", None)
        async with joined(api, token(api, "dr-amina", "doctor")) as (doc, j):
            assert j["type"] == "joined"
            assert [x["id"] for x in j["waiting"]] == [pid]
            assert not any(f["type"] == "participant_joined" for f in pat.frames)
            assert (await doc.request({"type": "admit", "participant_id": pid}, "a"))[
                "type"
            ] == "ok"
            admitted = await pat.wait_for(lambda f: f["type"] == "joined")
            assert "ref" not in admitted
            assert admitted["participant"]["id"] == pid
            assert [x["identity"] for x in admitted["participants"]] == ["dr-amina"]
            await doc.wait_for(lambda f: f["type"] == "participant_joined")
            await doc.wait_for(lambda f: f["type"] == "waiting" and f.get("waiting") == [])
            # Require admission from now on: the next one waits, and is denied.
            ok = await doc.request({"type": "room_settings", "require_admission": True}, "rs")
            assert ok["type"] == "ok"
            await doc.wait_for(lambda f: f["type"] == "room_settings" and f["require_admission"])
            async with joined(api, token(api, "pt-zara")) as (other, w2):
                assert w2["type"] == "waiting"
                await doc.wait_for(
                    lambda f: (
                        f["type"] == "waiting"
                        and [x["id"] for x in f.get("waiting", [])] == [w2["participant"]["id"]]
                    )
                )
                # Patients have no admin right.
                err = await pat.request(
                    {"type": "admit", "participant_id": w2["participant"]["id"]}, "x"
                )
                assert (err["type"], err["code"]) == ("error", "forbidden")
                assert "fatal" not in err
                deny = {"type": "deny", "participant_id": w2["participant"]["id"]}
                assert (await doc.request(deny, "d"))["type"] == "ok"
                await other.type("denied")
                assert await other.closed_with() == 4403
                await doc.wait_for(lambda f: f["type"] == "waiting" and f.get("waiting") == [])
                # Admitting someone not waiting, or nobody.
                again = await doc.request({"type": "admit", "participant_id": pid}, "a2")
                assert again["code"] == "bad-state"
                gone = await doc.request({"type": "admit", "participant_id": "p-none"}, "a3")
                assert gone["code"] == "not-found"
            # The patient's connection was never disturbed.
            assert (await pat.request({"type": "ping"}, "pp"))["type"] == "pong"


async def _refused(api: Api, tok: str, query: str = "") -> tuple[dict[str, Any], int | None]:
    async with connect(api, query) as ws:
        await ws.send({"type": "join", "token": tok, "id": "j"})
        err = await ws.reply("j")
        return err, await ws.closed_with()


async def test_refusals_close_with_their_codes(api: Api) -> None:
    cases: list[tuple[str, str, str, int]] = [
        (token(api, "dr-amina", "doctor"), "?room=other-room", "forbidden", 4403),
        (token(api, "pt-bilal", ttl=-1, start=-120), "", "unauthorized", 4401),
        (token(api, "pt-bilal", start=300), "", "unauthorized", 4401),
        ("not.a.token", "", "unauthorized", 4401),
        (token(api, "pt-bilal")[:-4] + "AAAA", "", "unauthorized", 4401),
    ]
    access = await api.user(Role.PATIENT)  # an access token is not a room token
    cases.append((access, "", "unauthorized", 4401))
    for tok, query, code, close in cases:
        err, closed = await _refused(api, tok, query)
        assert (err["type"], err["code"], err["fatal"]) == ("error", code, True), err
        assert err["message"]
        assert closed == close
    # The right room in the URL is fine.
    async with joined(api, token(api, "dr-amina", "doctor"), f"?room={ROOM}") as (_, j):
        assert j["type"] == "joined"


async def test_join_timeout_and_frames_before_join(api: Api) -> None:
    # Long enough for the two requests below on a loaded machine (at 0.6 s
    # the server sometimes closed first).
    api.app[CALLS].join_timeout = 3.0
    async with connect(api) as ws:
        err = await ws.request({"type": "publish", "sdp": "v=0"}, "early")
        assert (err["code"], err.get("fatal")) == ("not-joined", None)
        assert (await ws.request({"type": "ping"}, "p"))["type"] == "pong"
        timeout = await ws.wait_for(lambda f: f.get("code") == "join-timeout", 10)
        assert timeout["fatal"] is True
        assert await ws.closed_with() == 4408


async def test_malformed_frames_get_typed_errors_and_the_connection_stays(api: Api) -> None:
    async with joined(api, token(api, "dr-amina", "doctor")) as (doc, _):

        def j(**kw: Any) -> str:
            return json.dumps(kw)

        bad: list[tuple[str, str]] = [
            *ENVELOPE_REFUSALS,
            (j(type="mute", id="d", track_id="t"), "invalid"),
            (j(type="leave", id="e", extra=True), "invalid"),
            (j(type="join", id="f", token="x"), "bad-frame"),  # joined already
            (j(type="answer", id="g", sdp="v=0"), "bad-state"),  # no offer out
            (j(type="mute", id="h", track_id="t-none", muted=True), "not-found"),
            (j(type="unpublish", id="i", track_id="t-none"), "not-found"),
            (j(type="remove", id="k", participant_id="p-none"), "not-found"),
            ('{"type":"admit","participant_id":"\\ud800","id":"l"}', "invalid"),
        ]
        for text, code in bad:
            await doc.ws.send_str(text)
            err = await doc.wait_for(lambda f, c=code: f.get("code") == c, 5)
            assert err["type"] == "error" and "fatal" not in err and err["message"]
        await doc.ws.send_bytes(b"\x00\x01")
        await doc.wait_for(lambda f: f.get("code") == "bad-frame" and "binary" in f["message"])
        ok = await doc.request(
            {"type": "candidate", "transport": "publish", "candidate": None}, "cand"
        )
        assert ok["type"] == "ok", ok
        assert (await doc.request({"type": "ping"}, "still"))["type"] == "pong"


async def test_an_oversized_frame_closes_only_that_connection(api: Api) -> None:
    async with (
        joined(api, token(api, "dr-amina", "doctor")) as (doc, _),
        joined(api, token(api, "pt-bilal")) as (pat, pj),
    ):
        await pat.ws.send_str(json.dumps({"type": "publish", "sdp": "x" * (MAX_FRAME + 10)}))
        assert await pat.closed_with() == 1009
        # The doctor's connection is fine, and the patient's participant is
        # detached (not gone: it may resume).
        assert (await doc.request({"type": "ping"}, "p"))["type"] == "pong"
        async with joined(api, token(api, "pt-bilal"), "") as (back, again):
            # No resume given: a fresh participant replaces the detached one.
            assert again["participant"]["id"] != pj["participant"]["id"]
            left = await doc.type("participant_left")
            assert left["reason"] == "replaced"
            assert back.ws.closed is False


async def test_a_new_connection_for_the_same_identity_replaces_the_old(api: Api) -> None:
    async with (
        joined(api, token(api, "dr-amina", "doctor")) as (doc, _),
        joined(api, token(api, "pt-bilal")) as (old, first),
        joined(api, token(api, "pt-bilal")) as (new, second),
    ):
        assert second["type"] == "joined"
        assert second["participant"]["id"] != first["participant"]["id"]
        await old.type("replaced")
        assert await old.closed_with() == 4409
        left = await doc.type("participant_left")
        assert (left["participant_id"], left["reason"]) == (
            first["participant"]["id"],
            "replaced",
        )
        await doc.wait_for(
            lambda f: (
                f["type"] == "participant_joined"
                and f["participant"]["id"] == second["participant"]["id"]
            )
        )
        assert (await new.request({"type": "ping"}, "p"))["type"] == "pong"


async def test_resume_within_grace_keeps_the_participant_id(api: Api) -> None:
    tok = token(api, "pt-bilal")
    async with joined(api, token(api, "dr-amina", "doctor")) as (doc, _):
        async with joined(api, tok) as (_, first):
            pid, session = first["participant"]["id"], first["session"]
        # Dropped (closed from our side without leave): still in the room.
        await asyncio.sleep(0.2)
        assert not any(f["type"] == "participant_left" for f in doc.frames)
        async with connect(api) as back:
            again = await back.request({"type": "join", "token": tok, "resume": session}, "r")
            assert again["type"] == "joined"
            assert again["participant"]["id"] == pid
            assert again["session"] == session
            assert [p["identity"] for p in again["participants"]] == ["dr-amina"]
            # The doctor saw the patient join once, and no leave or join since.
            assert sum(f["type"] == "participant_joined" for f in doc.frames) == 1
            # Now drop and stay away past the grace period: gone, with reason timeout.
        left = await doc.wait_for(lambda f: f["type"] == "participant_left", GRACE + 5)
        assert (left["participant_id"], left["reason"]) == (pid, "timeout")
        # The old session is worth nothing now: a fresh participant.
        async with connect(api) as late:
            fresh = await late.request({"type": "join", "token": tok, "resume": session}, "r")
            assert fresh["type"] == "joined" and fresh["participant"]["id"] != pid


async def test_end_room_closes_everyone_and_refuses_later_joins(api: Api) -> None:
    async with (
        joined(api, token(api, "pt-bilal")) as (pat, w),
        joined(api, token(api, "dr-amina", "doctor")) as (doc, _),
        joined(api, token(api, "fam-sara")) as (fam, fj),
    ):
        assert w["type"] == "waiting" and fj["type"] == "joined"
        err = await fam.request({"type": "end"}, "e0")
        assert err["code"] == "forbidden"
        assert (await doc.request({"type": "end"}, "e"))["type"] == "ok"
        for ws in (doc, pat, fam):
            await ws.type("room_ended")
            assert await ws.closed_with() == 4410
    err, closed = await _refused(api, token(api, "dr-amina", "doctor"))
    assert (err["code"], closed) == ("room-ended", 4410)
    assert ROOM not in api.app[CALLS].rooms
    # Another room is unaffected.
    async with joined(api, token(api, "dr-amina", "doctor", room="other")) as (_, j):
        assert j["type"] == "joined"


async def test_remove_closes_with_4403(api: Api) -> None:
    async with (
        joined(api, token(api, "dr-amina", "doctor")) as (doc, _),
        joined(api, token(api, "pt-bilal")) as (pat, pj),
    ):
        pid = pj["participant"]["id"]
        assert (await doc.request({"type": "remove", "participant_id": pid}, "x"))["type"] == "ok"
        await pat.type("removed")
        assert await pat.closed_with() == 4403
        left = await doc.type("participant_left")
        assert (left["participant_id"], left["reason"]) == (pid, "removed")


async def test_server_pings_and_disconnects_a_silent_client(api: Api) -> None:
    api.app[CALLS].ping_interval = 0.5
    async with (
        joined(api, token(api, "dr-amina", "doctor")) as (doc, _),
        joined(api, token(api, "pt-bilal")) as (pat, pj),
    ):
        pat.answer_pings = False
        await doc.type("ping", 5)
        # 3 intervals without a word: disconnected (detached, may resume).
        assert await pat.closed_with(10) == 4408
        assert pat.ws.close_code == 4408
        # The doctor answered every ping and is still connected.
        await asyncio.sleep(0.5)
        assert not doc.closed
        assert sum(f["type"] == "ping" for f in doc.frames) >= 3
        room = api.app[CALLS].rooms[ROOM]
        who = room.core.members.get(pj["participant"]["id"])
        assert who is not None and who.state.value == "detached"


async def test_metrics_count_rooms_participants_frames_and_errors(api: Api) -> None:
    async with (
        joined(api, token(api, "pt-bilal", room="metrics-room")) as (pat, _),
        joined(api, token(api, "dr-amina", "doctor", room="metrics-room")),
    ):
        await pat.ws.send_str("{nope")
        await pat.type("error")
        # What the metrics listener serves (the public port has no /metrics).
        text = metrics.generate_latest().decode()
    lines = text.splitlines()

    def value(prefix: str) -> float:
        [line] = [x for x in lines if x.startswith(prefix + " ")]
        return float(line.rsplit(" ", 1)[1])

    assert value("wadud_call_rooms") >= 1
    assert value('wadud_call_participants{state="joined"}') >= 1
    assert value("wadud_call_waiting") >= 1
    assert value('wadud_call_frames_total{type="join"}') >= 2
    assert value('wadud_call_frames_total{type="malformed"}') >= 1
    assert value('wadud_call_errors_total{code="bad-frame"}') >= 1


# -- media through the worker (aiortc peers) -----------------------------------


@pytest.fixture
def loopback_aiortc(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice leaves loopback out of its host candidates; a loopback call needs it."""
    import aioice.ice

    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


def small_video() -> Any:
    """A 160x120 test pattern: cheap to encode on a shared 2-core machine."""
    import av
    from aiortc import VideoStreamTrack

    class Pattern(VideoStreamTrack):
        count = 0

        async def recv(self) -> av.VideoFrame:
            pts, time_base = await self.next_timestamp()
            frame = av.VideoFrame(160, 120, "yuv420p")
            self.count += 1
            frame.planes[0].update(bytes([(self.count * 8 + i) % 256 for i in range(160)]) * 120)
            frame.planes[1].update(bytes([128]) * (80 * 60))
            frame.planes[2].update(bytes([128]) * (80 * 60))
            frame.pts, frame.time_base = pts, time_base
            return frame

    return Pattern()


async def publish_video(ws: Ws, ref: str) -> tuple[Any, dict[str, Any]]:
    """A sendonly aiortc connection offered with ``publish``; the answer applied."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    transceiver = pc.addTransceiver(small_video(), direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    frame = {"type": "publish", "sdp": pc.localDescription.sdp}
    published = await ws.request({**frame, "sources": {transceiver.mid: "camera"}}, ref)
    assert published["type"] == "published", published
    await pc.setRemoteDescription(RTCSessionDescription(published["sdp"], "answer"))
    return pc, published


async def test_publish_and_subscribe_through_the_worker(api: Api, loopback_aiortc: None) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pcs: list[Any] = []
    try:
        async with (
            joined(api, token(api, "dr-amina", "doctor")) as (doc, dj),
            joined(api, token(api, "pt-bilal")) as (pat, _),
        ):
            # Malformed SDP is the client's fault: bad-sdp, and the connection stays.
            bad = await doc.request({"type": "publish", "sdp": "v=0\r\nnonsense"}, "bad")
            assert (bad["code"], bad.get("fatal")) == ("bad-sdp", None)
            pc_pub, published = await publish_video(doc, "pub")
            pcs.append(pc_pub)
            [mine] = published["tracks"]
            assert (mine["kind"], mine["source"], mine["participant"]) == (
                "video",
                "camera",
                dj["participant"]["id"],
            )
            announced = await pat.type("track_published")
            assert announced["track"]["track_id"] == mine["track_id"]
            # The subscriber is offered the track; the server waits for the answer.
            offer = await pat.type("offer")
            [section] = offer["tracks"]
            assert section["track_id"] == mine["track_id"]
            assert section["participant"] == dj["participant"]["id"]
            assert f"a=mid:{section['mid']}" in offer["sdp"]
            pc_sub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcs.append(pc_sub)
            received: asyncio.Queue[Any] = asyncio.Queue()
            pc_sub.on("track", received.put_nowait)
            await pc_sub.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc_sub.setLocalDescription(await pc_sub.createAnswer())
            ok = await pat.request({"type": "answer", "sdp": pc_sub.localDescription.sdp}, "ans")
            assert ok["type"] == "ok", ok
            # A second answer has no offer to answer.
            again = await pat.request({"type": "answer", "sdp": pc_sub.localDescription.sdp}, "a2")
            assert again["code"] == "bad-state"
            track = await asyncio.wait_for(received.get(), 10)
            assert track.kind == "video"
            transceiver = next(t for t in pc_sub.getTransceivers() if t.receiver.track is track)
            assert transceiver.mid == section["mid"]
            # Decoded frames from the publisher, through the SFU.
            for _ in range(5):
                frame = await asyncio.wait_for(track.recv(), 10)
                assert (frame.width, frame.height) == (160, 120)
            # Mute goes to the worker and to everyone.
            muted = await doc.request(
                {"type": "mute", "track_id": mine["track_id"], "muted": True}, "mute"
            )
            assert muted["type"] == "ok"
            ev = await pat.type("track_muted")
            assert (ev["track_id"], ev["muted"], ev["by"]) == (
                mine["track_id"],
                True,
                dj["participant"]["id"],
            )
            # The patient may not unpublish the doctor's track.
            err = await pat.request({"type": "unpublish", "track_id": mine["track_id"]}, "u")
            assert err["code"] == "forbidden"
            # The doctor leaves: the track goes, and the worker forgets it all.
            assert dj["participant"]["id"] in _worker_participants(api, ROOM)
            assert (await doc.request({"type": "leave"}, "bye"))["type"] == "ok"
            assert (await pat.type("track_unpublished"))["track_id"] == mine["track_id"]
            await pat.type("participant_left")
            room = api.app[CALLS].rooms[ROOM]
            # Media calls run in order: once a no-op queued now is done, so is the leave.
            await asyncio.wait_for(room.lane.submit(lambda: asyncio.sleep(0)), 5)
            assert dj["participant"]["id"] not in _worker_participants(api, ROOM)
    finally:
        for pc in pcs:
            await pc.close()


def _worker_participants(api: Api, room: str) -> set[str]:
    from sfu.node.http import WORKER

    # The worker's own view, as its metrics read it.
    snapshot = api.app[WORKER].snapshot()
    return {
        peer["participant"] for r in snapshot["rooms"] if r["room"] == room for peer in r["peers"]
    }


async def test_resume_sends_the_pending_offer_again(api: Api, loopback_aiortc: None) -> None:
    pcs: list[Any] = []
    tok = token(api, "pt-bilal")
    try:
        async with joined(api, token(api, "dr-amina", "doctor")) as (doc, _):
            async with joined(api, tok) as (pat, pj):
                pc, _ = await publish_video(doc, "pub")
                pcs.append(pc)
                offer = await pat.type("offer")
            # Gone before answering; back within the grace period.
            async with connect(api) as back:
                resumed = await back.request(
                    {"type": "join", "token": tok, "resume": pj["session"]}, "r"
                )
                assert resumed["participant"]["id"] == pj["participant"]["id"]
                again = await back.type("offer")
                assert again["sdp"] == offer["sdp"] and again["tracks"] == offer["tracks"]
    finally:
        for pc in pcs:
            await pc.close()


async def test_one_offer_at_a_time_and_changes_are_folded_into_the_next(
    api: Api, loopback_aiortc: None
) -> None:
    from aiortc import AudioStreamTrack, RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pcs: list[Any] = []
    try:
        async with (
            joined(api, token(api, "dr-amina", "doctor")) as (doc, _),
            joined(api, token(api, "pt-bilal")) as (pat, _),
        ):
            pc_pub, first_pub = await publish_video(doc, "pub1")
            pcs.append(pc_pub)
            first = await pat.type("offer")
            assert len(first["tracks"]) == 1
            # A change while the first offer is out (a second track): no
            # second offer until the first is answered, then one with both.
            audio = pc_pub.addTransceiver(AudioStreamTrack(), direction="sendonly")
            await pc_pub.setLocalDescription(await pc_pub.createOffer())
            sources = {audio.mid: "microphone"}
            second_pub = await doc.request(
                {"type": "publish", "sdp": pc_pub.localDescription.sdp, "sources": sources}, "pub2"
            )
            assert len(second_pub["tracks"]) == 2
            await pc_pub.setRemoteDescription(RTCSessionDescription(second_pub["sdp"], "answer"))
            await pat.wait_for(
                lambda f: f["type"] == "track_published" and f["track"]["kind"] == "audio"
            )
            await asyncio.sleep(0.3)
            assert sum(f["type"] == "offer" for f in pat.frames) == 1
            pc_sub = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            pcs.append(pc_sub)
            await pc_sub.setRemoteDescription(RTCSessionDescription(first["sdp"], "offer"))
            await pc_sub.setLocalDescription(await pc_sub.createAnswer())
            ok = await pat.request({"type": "answer", "sdp": pc_sub.localDescription.sdp}, "a1")
            assert ok["type"] == "ok"
            # Now the next offer, with both tracks, the first one's mid unchanged.
            second = await pat.wait_for(lambda f: f["type"] == "offer" and f is not first)
            by_track = {t["track_id"]: t for t in second["tracks"]}
            assert set(by_track) == {t["track_id"] for t in second_pub["tracks"]}
            video_id = first_pub["tracks"][0]["track_id"]
            assert by_track[video_id]["mid"] == first["tracks"][0]["mid"]
            await pc_sub.setRemoteDescription(RTCSessionDescription(second["sdp"], "offer"))
            await pc_sub.setLocalDescription(await pc_sub.createAnswer())
            ok = await pat.request({"type": "answer", "sdp": pc_sub.localDescription.sdp}, "a2")
            assert ok["type"] == "ok"
            await asyncio.sleep(0.2)
            assert sum(f["type"] == "offer" for f in pat.frames) == 2
    finally:
        for pc in pcs:
            await pc.close()
