"""Roles as data, enforced by the server: every action a role lacks is
refused where it happens, with a typed error naming the action, and
counted; every action it has gets past the check.

Each participant is the Python client (wadud_client) on the real app; the
refused publishes are hand-written offers, as a client we did not write
might send, so nothing on the client side stands between the frame and the
server's check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tests.conftest import Api
from tests.signalling.test_client_call import (  # noqa: F401 - the fixtures
    Call,
    call,
    loopback_aiortc,
    settings,
)
from wadud.web.auth import RoomGrant, issue_room_token
from wadud.web.roles import ROLES, Action
from wadud_client.call import CallClient
from wadud_client.errors import RequestFailed

#: No participant has this id: a check that passes then finds no one.
NOBODY = "p-000000000000"


def publish_offer(kind: str, mid: str) -> str:
    """A hand-written publish offer with one section that sends ``kind``."""
    return (
        "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
        f"a=group:BUNDLE {mid}\r\n"
        f"m={kind} 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\n"
        f"a=mid:{mid}\r\na=sendonly\r\na=rtcp-mux\r\n"
        "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\n"
        "a=fingerprint:sha-256 "
        + ":".join(["AB"] * 32)
        + "\r\na=setup:actpass\r\n"
        + ("a=rtpmap:96 opus/48000/2\r\n" if kind == "audio" else "a=rtpmap:96 VP8/90000\r\n")
    )


Attempt = Callable[[Api, CallClient, str], Awaitable[Any]]


async def _publish(client: CallClient, kind: str, source: str) -> Any:
    return await client.request("publish", sdp=publish_offer(kind, "0"), sources={"0": source})


async def _chat(api: Api, client: CallClient, token: str) -> Any:
    resp = await api.client.post("/api/v1/calls/chat", json={"token": token})
    body = await resp.json()
    if resp.status == 403:
        raise RequestFailed(body["code"], body["detail"], frame=body)
    return body


#: How a client tries each action: one frame (or request) whose check comes
#: before anything else it does.
ATTEMPTS: dict[Action, Attempt] = {
    Action.PUBLISH_AUDIO: lambda api, c, t: _publish(c, "audio", "microphone"),
    Action.PUBLISH_VIDEO: lambda api, c, t: _publish(c, "video", "camera"),
    Action.SHARE_SCREEN: lambda api, c, t: _publish(c, "video", "screen"),
    Action.CHAT: _chat,
    Action.SUBSCRIBE: lambda api, c, t: c.request("answer", sdp=publish_offer("video", "0")),
    Action.ADMIT: lambda api, c, t: c.request("admit", participant_id=NOBODY),
    Action.REMOVE: lambda api, c, t: c.request("remove", participant_id=NOBODY),
    Action.INVITE: lambda api, c, t: c.request("call_phone"),
    Action.RECORD: lambda api, c, t: c.request("record", on=False),
    Action.CONSENT: lambda api, c, t: c.request(
        "recording_consent", recording_id="r-1", agree=True
    ),
    Action.APPROVE_GUESTS: lambda api, c, t: c.request(
        "approve_guest", invite_id=str(uuid.uuid4()), agree=True
    ),
}


def _refused(action: Action, role: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "wadud_call_refused_actions_total", {"action": action.value, "role": role}
        )
        or 0.0
    )


def _token(c: Call, room: str, identity: str, role: str, actions: Any = None) -> str:
    now = dt.datetime.now(dt.UTC)
    grant = RoomGrant(room, identity, identity.title(), role, actions=actions)
    return issue_room_token(
        c.settings,
        grant,
        not_before=now - dt.timedelta(seconds=5),
        expires=now + dt.timedelta(hours=1),
    )


def test_every_action_has_an_attempt() -> None:
    assert set(ATTEMPTS) == set(Action)


#: The built-in roles, and a clinic's own that only listens and chats.
CASES = [(role, None) for role in ROLES] + [
    ("listener", [Action.PUBLISH_AUDIO, Action.CHAT]),
]


@pytest.mark.parametrize(("role", "actions"), CASES, ids=[c[0] for c in CASES])
async def test_the_server_refuses_and_counts_each_action_a_role_lacks(
    call: Call,  # noqa: F811 - the fixture
    role: str,
    actions: list[Action] | None,
) -> None:
    room = "room-" + uuid.uuid4().hex[:8]
    # A host in the room first, so no one waits to be admitted.
    await call.join(room, "host", role="doctor", admin=True)
    token = _token(call, room, f"{role}-1", role, actions)
    me = CallClient(call.url, token, label=role)
    call.clients.append(me)
    assert (await me.join())["type"] == "joined"
    granted = frozenset(actions) if actions is not None else ROLES[role]
    assert set(me.participant["actions"]) == {a.value for a in granted}
    outcomes: dict[Action, str] = {}
    for action, attempt in ATTEMPTS.items():
        before = _refused(action, role)
        said: dict[str, Any] = {}
        try:
            await attempt(call.api, me, token)
            outcome = "done"
        except RequestFailed as exc:
            outcome, said = exc.code, dict(exc.frame or {})
        refused = outcome in ("forbidden", "chat-not-allowed")
        if refused:
            assert (said.get("action"), said.get("role")) == (action, role), said
        assert refused == (action not in granted), (action, outcome)
        assert _refused(action, role) - before == (1.0 if refused else 0.0), action
        outcomes[action] = outcome
    # The refusals left the participant in the room, still joined.
    assert await me.ping() >= 0
    print(role, outcomes)


async def test_a_token_for_a_role_of_the_clinics_own_needs_its_actions(call: Call) -> None:  # noqa: F811 - the fixture
    grant = RoomGrant("r", "someone", "", "pharmacist", actions=("chat", "subscribe"))
    assert grant.actions == ("chat", "subscribe")
    assert (grant.publish, grant.subscribe, grant.admin) == (False, True, False)
    # Only the rights of old: the role's actions, narrowed or widened by them.
    old = RoomGrant("r", "someone", "", "doctor", publish=False)
    assert Action.PUBLISH_VIDEO.value not in old.actions and old.can(Action.ADMIT)
    assert RoomGrant("r", "x", "", "custom", admin=True).can(Action.RECORD)
    assert dataclasses.replace(old) == old
