"""Real peers for the notifier's tests: an SMTP server (aiosmtpd), an HTTPS
server speaking HTTP/2 (hypercorn, with a CA of the test's own), and rows
for a clinic, a doctor and an Urdu-speaking patient in Karachi.

Booking events are emitted by booking's own code (``record_event``), so the
notifier reads exactly what a real booking writes to the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email
import email.policy
import json
import socket
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import asyncpg
import pytest

from booking.bookings import events as booking_events
from notify import channels as ch
from notify.service import Notifier
from tests.conftest import Api, free_port
from tests.tlsca import Tls, make_ca
from wadud.config import Settings
from wadud.state import db, keys

# -- SMTP ------------------------------------------------------------------------


@dataclass
class Inbox:
    """What the SMTP server accepted; ``refuse`` holds replies to give the
    next DATA commands instead of accepting (e.g. "451 4.3.0 busy")."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    refuse: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse:
            return self.refuse.pop(0)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 OK"

    def of(self, template: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["X-Wadud-Notification"] == template]


@pytest.fixture
def smtp() -> Iterator[Inbox]:
    from aiosmtpd.controller import Controller

    inbox = Inbox(free_port())
    controller = Controller(inbox, hostname="127.0.0.1", port=inbox.port)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


# -- a CA, and an HTTPS server speaking HTTP/2 -----------------------------------


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA and a certificate for 127.0.0.1 and localhost signed by it."""
    return make_ca(tmp_path_factory.mktemp("tls"))


@dataclass
class Request:
    http_version: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Answer = tuple[int, dict[str, str], bytes]


@dataclass
class Peer:
    """An HTTPS server (HTTP/2 and HTTP/1.1) that records every request and
    answers from ``answers`` (path prefix -> queue of answers, or a function
    of the request), else 200 with ``{}``."""

    port: int = 0
    requests: list[Request] = field(default_factory=list)
    answers: dict[str, list[Answer] | Callable[[Request], Answer]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def to(self, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.path.startswith(prefix)]

    def answer(self, req: Request) -> Answer:
        for prefix, how in self.answers.items():
            if req.path.startswith(prefix):
                if callable(how):
                    return how(req)
                if how:
                    return how.pop(0)
        return 200, {"content-type": "application/json"}, b"{}"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        req = Request(
            scope["http_version"],
            scope["method"],
            scope["path"],
            {k.decode().lower(): v.decode() for k, v in scope["headers"]},
            body,
        )
        self.requests.append(req)
        status, headers, out = self.answer(req)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
            }
        )
        await send({"type": "http.response.body", "body": out})


@pytest.fixture
async def peer(tls: Tls) -> AsyncIterator[Peer]:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    server = Peer(free_port())
    config = Config()
    config.bind = [f"127.0.0.1:{server.port}"]
    config.certfile = str(tls.cert_file)
    config.keyfile = str(tls.key_file)
    config.alpn_protocols = ["h2", "http/1.1"]
    config.accesslog = None
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(server, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(100):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", server.port)):
            break
        await asyncio.sleep(0.05)
    try:
        yield server
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


# -- the database ------------------------------------------------------------------


@pytest.fixture
def notify_settings(settings: Settings, smtp: Inbox) -> Settings:
    """The test app's settings with the local SMTP server, fast polling and
    fast retries."""
    import dataclasses

    return dataclasses.replace(
        settings,
        notify_smtp_host="127.0.0.1",
        notify_smtp_port=smtp.port,
        notify_smtp_tls="none",
        notify_email_from="Wadud <no-reply@wadud.test>",
        notify_poll_interval=0.1,
        notify_backoff_base=0.2,
        notify_backoff_max=2.0,
        notify_send_timeout=5.0,
        notify_chat_delay=0.5,
        public_url="https://wadud.test",
    )


@pytest.fixture
async def notifier(api: Api, notify_settings: Settings) -> AsyncIterator[Notifier]:
    """A notifier on the app's database, with the channels ``notify_settings``
    opens (a module may override either fixture)."""
    opened = await ch.open_channels(notify_settings)
    try:
        yield Notifier(api.app[keys.DB], notify_settings, opened.senders)
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def started(pool: asyncpg.Pool, settings: Settings) -> AsyncIterator[Notifier]:
    """A notifier with its loops running, as in ``wadud notify``, on the
    channels ``settings`` opens; closed with them after the block."""
    opened = await ch.open_channels(settings)
    n = Notifier(pool, settings, opened.senders)
    await n.start()
    try:
        yield n
    finally:
        await n.close()
        await opened.close()


@pytest.fixture
async def pool(settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    async with db.pool(settings, settings.database_url) as p:
        yield p


@dataclass
class World:
    clinic_id: uuid.UUID
    doctor_id: uuid.UUID  # doctors.id
    doctor_user: uuid.UUID
    patient: uuid.UUID
    patient_email: str


async def add_user(
    pool: asyncpg.Pool,
    role: str,
    *,
    clinic_id: uuid.UUID | None = None,
    name: str = "",
    locale: str | None = None,
    time_zone: str | None = None,
    phone: str | None = None,
) -> tuple[uuid.UUID, str]:
    address = f"{role}-{uuid.uuid4().hex[:8]}@example.test"
    uid = await pool.fetchval(
        """INSERT INTO users (email, password_hash, role, clinic_id, display_name,
                              locale, time_zone, phone)
           VALUES ($1, 'not-a-hash', $2, $3, $4, $5, $6, $7) RETURNING id""",
        address,
        role,
        clinic_id,
        name,
        locale,
        time_zone,
        phone,
    )
    return uid, address


@pytest.fixture
async def world(pool: asyncpg.Pool) -> World:
    """A clinic in Pakistan, Dr. Ayesha Khan, and Bilal, who reads Urdu and lives in Karachi."""
    clinic = await pool.fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ('Shifa', 'PK', 'PKR') RETURNING id"
    )
    doctor_user, _ = await add_user(pool, "doctor", clinic_id=clinic, name="Ayesha Khan")
    doctor = await pool.fetchval(
        """INSERT INTO doctors (clinic_id, user_id, display_name, specialty, fee_minor,
                                currency, region, status, published_at, time_zone)
           VALUES ($1, $2, 'Dr. Ayesha Khan', 'general', 150000, 'PKR', 'PK', 'published',
                   now(), 'Asia/Karachi') RETURNING id""",
        clinic,
        doctor_user,
    )
    patient, address = await add_user(
        pool,
        "patient",
        name="Bilal Ahmed",
        locale="ur",
        time_zone="Asia/Karachi",
        phone="+923001234567",
    )
    return World(clinic, doctor, doctor_user, patient, address)


async def make_booking(
    pool: asyncpg.Pool,
    world: World,
    starts_at: dt.datetime,
    *,
    status: str = "requested",
    minutes: int = 20,
) -> asyncpg.Record:
    row = await pool.fetchrow(
        """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type, starts_at,
                                 ends_at, blocked, status, price_minor, currency)
           SELECT $1, d.id, d.key, $3, 'video', $4, $5, tstzrange($4, $5), $6, 150000, 'PKR'
           FROM doctors d WHERE d.id = $2
           RETURNING *""",
        world.clinic_id,
        world.doctor_id,
        world.patient,
        starts_at,
        starts_at + dt.timedelta(minutes=minutes),
        status,
    )
    assert row is not None
    return row


async def emit(
    pool: asyncpg.Pool,
    row: asyncpg.Record,
    event: str,
    from_state: str | None,
    *,
    actor: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """The outbox event booking's own code writes for ``row`` (its current state)."""
    async with pool.acquire() as conn, conn.transaction():
        await booking_events.record_event(
            conn, row, event, from_state, actor_id=actor, detail=detail, extra=extra
        )


async def set_status(pool: asyncpg.Pool, row: asyncpg.Record, status: str) -> asyncpg.Record:
    new = await pool.fetchrow(
        "UPDATE bookings SET status = $2 WHERE id = $1 RETURNING *", row["id"], status
    )
    assert new is not None
    return new
