"""Chat fixtures: the app with chat installed, a clinic with a doctor, a
patient and a booking between them (inserted with SQL, so these tests do not
depend on booking's handlers), a WebSocket client, and two real ``wadud api``
processes for the cross-node tests."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from benchmarks.common import answers_ready
from bin.assembly import build_app
from tests.booking.factories import Clinic, Doctor, make_clinic, make_doctor
from tests.conftest import Api, free_port
from tests.wsframes import FrameSocket
from wadud.config import Settings
from wadud.state import keys
from wadud.web.api import Role

ROOT = Path(__file__).resolve().parents[2]
SECRET = "chat-test-secret-" + "k" * 32


@pytest.fixture
async def app(settings: Settings) -> web.Application:
    settings = dataclasses.replace(
        settings,
        chat_rate_per_second=10_000.0,
        chat_rate_burst=10_000,
        chat_max_body_bytes=4096,
        chat_attachment_max_bytes=65_536,
        chat_reconcile_interval=0.2,
    )
    return build_app(settings)


@dataclass
class World:
    clinic: Clinic
    doctor: Doctor
    patient_token: str
    patient_id: str
    booking_id: str
    conversation_id: str = ""


async def make_patient(api: Api) -> tuple[str, str]:
    email = f"p-{uuid.uuid4().hex[:8]}@example.test"
    token = await api.user(Role.PATIENT, email=email)
    uid = await api.app[keys.DB].fetchval("SELECT id FROM users WHERE email = $1", email)
    return token, str(uid)


async def make_booking(
    conn: Any, doctor_id: str, patient_id: str, start: dt.datetime | None = None
) -> str:
    """An accepted 20-minute video booking of the doctor at its fee, written
    straight to the table; by default tomorrow."""
    if start is None:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(days=1, minutes=7)
    end = start + dt.timedelta(minutes=20)
    bid = await conn.fetchval(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
               ends_at, blocked, status, price_minor, currency)
           SELECT d.clinic_id, d.id, d.key, $2, 'video', $3, $4, tstzrange($3, $4), 'accepted',
                  d.fee_minor, d.currency
           FROM doctors d WHERE d.id = $1 RETURNING id""",
        uuid.UUID(doctor_id),
        uuid.UUID(patient_id),
        start,
        end,
    )
    return str(bid)


async def make_world(api: Api, *, open_conversation: bool = True) -> World:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    token, pid = await make_patient(api)
    bid = await make_booking(api.app[keys.DB], doctor.id, pid)
    w = World(clinic, doctor, token, pid, bid)
    if open_conversation:
        conv = await api.post(
            "/api/v1/chat/conversations", {"booking_id": bid}, token=token, expect=201
        )
        w.conversation_id = conv["id"]
    return w


@pytest.fixture
async def world(api: Api) -> World:
    return await make_world(api)


# -- WebSocket client -------------------------------------------------------------


@dataclass
class Ws(FrameSocket):
    """A test chat client: every frame received is kept, events by sequence."""

    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    async def received(self, frame: dict[str, Any]) -> None:
        if frame.get("type") == "event":
            self.events.setdefault(frame["conversation_id"], []).append(frame)

    def seqs(self, cid: str) -> list[int]:
        return [e["seq"] for e in self.events.get(cid, [])]

    async def wait_seq(self, cid: str, seq: int, within: float = 20.0) -> None:
        await self.wait_for(
            lambda f: f.get("type") == "event" and f["conversation_id"] == cid and f["seq"] >= seq,
            within,
        )


def ws_connect(
    session: aiohttp.ClientSession, url: str, token: str | None = None
) -> contextlib.AbstractAsyncContextManager[Ws]:
    return Ws.opened(session, url + (f"?token={token}" if token else ""))


# -- two real nodes ---------------------------------------------------------------


def node_command() -> list[str]:
    return [str(Path(sys.executable).parent / "wadud"), "api"]


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/api/v1/chat/ws"


def start_node(
    database_url: str,
    redis_url: str,
    data_dir: Path,
    *,
    secret: str = SECRET,
    extra_env: dict[str, str] | None = None,
) -> Node:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WADUD_")},
        "WADUD_DATABASE_URL": database_url,
        "WADUD_REDIS_URL": redis_url,
        "WADUD_SECRET_KEY": secret,
        "WADUD_DATA_DIR": str(data_dir),
        # What a node that is slow to be ready was doing (ci165: two nodes,
        # not ready in 30 s on a starved run, with nothing in their logs).
        "WADUD_LOG_LEVEL": "info",
        "WADUD_LOG_FORMAT": "text",
        "WADUD_CHAT_RATE_PER_SECOND": "100000",
        "WADUD_CHAT_RATE_BURST": "100000",
        "WADUD_CHAT_RECONCILE_INTERVAL": "0.5",
        "WADUD_DATABASE_POOL_MIN": "2",
        "WADUD_DATABASE_POOL_MAX": "10",
        **(extra_env or {}),
    }
    data_dir.mkdir(parents=True, exist_ok=True)
    log = data_dir / f"node-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*node_command(), "--port", str(port), "--host", "127.0.0.1"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Node(port, proc, log)


async def wait_ready(node: Node, within: float = 60.0) -> None:
    """Until the node's /healthz answers 200: a couple of seconds here, and
    over 30 s twice on a starved rehearsal, so a minute."""
    async with aiohttp.ClientSession() as s:
        if await answers_ready(s, node.url, within, node.proc, path="/healthz"):
            return
    if node.proc.poll() is not None:
        raise AssertionError(f"node exited: {node.log.read_text()[-3000:]}")
    raise AssertionError(f"node not ready: {node.log.read_text()[-3000:]}")


def stop_node(node: Node) -> None:
    if node.proc.poll() is None:
        node.proc.terminate()
        try:
            node.proc.wait(10)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(5)


@pytest.fixture
def node_pair(settings: Settings, redis_server: Any, tmp_path: Path) -> Iterator[tuple[Node, Node]]:
    """Two `wadud api` processes sharing the test's database and Redis (and
    its secret, so tokens from the in-process ``api`` work on both)."""
    url = settings.database_url
    a = start_node(url, redis_server.url, tmp_path / "a", secret=settings.secret_key)
    b = start_node(url, redis_server.url, tmp_path / "b", secret=settings.secret_key)
    try:
        yield a, b
    finally:
        stop_node(a)
        stop_node(b)


async def pool_of(api: Api) -> asyncpg.Pool:
    return api.app[keys.DB]
