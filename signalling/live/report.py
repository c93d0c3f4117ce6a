"""What signalling gathers for each visit's call report (booking.call_reports).

Two sources, neither on the forwarding path:

* the media worker's events: :class:`sfu.control.messages.CallSample` every few
  seconds per participant, and :class:`sfu.control.messages.TransportState`; heard
  as a listener of the worker (``wadud serve``) or of the media client
  (``wadud api``, events over Redis), and kept only by the replica that owns
  the room, so a room's samples are written once however many replicas
  hear them;
* the participant's page: ``POST /api/v1/calls/stats`` with its room token
  (in the body) every few seconds (``signalling/static/call-stats.js``): its own
  ``getStats()`` (freezes, concealed audio, the candidate pair and so TURN
  use, RTT) and its count of ICE restarts and reconnects.

A :class:`CallRecorder` buffers both in memory and writes them every
``FLUSH_EVERY`` seconds in one transaction per batch; when a room it wrote
for is no longer owned here (its call ended), the last batch is written and
the report marked ready (outbox ``call_report_ready``).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
from aiohttp import web

from booking.call_reports.storage import CallParticipant, Row, TransportEvent, finish, store
from booking.calls import booking_of
from sfu.control.messages import CallSample, MediaControl, MediaEvent, TransportState
from wadud import jsonin
from wadud.config import Settings
from wadud.errors import BadRequest, Forbidden, Unauthorized
from wadud.messaging import loops
from wadud.web.auth import InvalidToken, RoomGrant, decode_room_token

__all__ = ["FLUSH_EVERY", "PAGE_EVERY", "CallRecorder", "page_sample"]

log = logging.getLogger("signalling.call_reports")

#: Seconds between batches written to PostgreSQL.
FLUSH_EVERY = 5.0
#: A page's samples closer together than this are dropped (it sends every 5 s).
PAGE_EVERY = 2.0
#: Most samples held in memory; past it, new ones are dropped (a stalled database).
BUFFER_MAX = 20_000
#: Largest page stats body accepted, bytes.
BODY_MAX = 8192

#: Fields a page's sample may carry, with their types.
_PAGE_FIELDS: dict[str, tuple[type, ...]] = {
    "rtt": (int, float),
    "loss": (int, float),
    "relay": (bool,),
    "candidate": (str,),
    "freeze_count": (int,),
    "freeze_seconds": (int, float),
    "freezes": (int,),
    "concealed_seconds": (int, float),
    "concealed": (int, float),
    "ice_restarts": (int,),
    "media": (str,),
    "quality_shown": (dict,),
}


def _finite(value: float | None) -> float | None:
    """A figure PostgreSQL's jsonb can hold (no NaN, no infinity: None)."""
    return value if value is None or math.isfinite(value) else None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def page_sample(body: Any) -> tuple[str, dict[str, Any]]:
    """The participant id and the checked fields of a page's sample
    (BadRequest for anything else)."""
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object")
    pid = body.get("participant_id")
    if not isinstance(pid, str) or not 0 < len(pid) <= 100:
        raise BadRequest("participant_id: a string")
    stats = body.get("stats") or {}
    if not isinstance(stats, dict):
        raise BadRequest("stats: a JSON object")
    data: dict[str, Any] = {}
    for key, value in stats.items():
        kinds = _PAGE_FIELDS.get(key)
        if kinds is None or value is None:
            continue
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise BadRequest(f"stats.{key}: wrong type")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRequest(f"stats.{key}: a finite number")
        if isinstance(value, str):
            value = value[:40]
        if isinstance(value, dict):
            value = {str(k)[:100]: str(v)[:20] for k, v in list(value.items())[:16]}
        data[key] = value
    return pid, data


def _person(booking: UUID, pid: str, grant: RoomGrant) -> CallParticipant:
    return CallParticipant(booking, pid, grant.name[:200], grant.role[:40])


class CallRecorder:
    """Buffers call samples and writes them in batches (see the module docstring)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        owned: Callable[[str], bool],
        grant: Callable[[str, str], RoomGrant | None] = lambda _room, _pid: None,
    ) -> None:
        self.pool = pool
        #: Whether this replica owns a room now (the call service's rooms).
        self.owned = owned
        #: What a participant of a room this replica owns joined with (None:
        #: unknown here): its identity, so a page reports only for itself;
        #: its name and role, which the report lists for everyone the media
        #: worker saw, a page or not (a phone, an app, a Python client).
        self.grant = grant
        self.rows: list[Row] = []
        self.events: list[TransportEvent] = []
        self.people: dict[tuple[UUID, str], CallParticipant] = {}
        #: Rooms this replica wrote samples for, to finish when they close.
        self.live: dict[str, UUID] = {}
        self._page_at: dict[tuple[UUID, str], float] = {}
        self._restarts: dict[tuple[UUID, str], int] = {}
        #: Participants whose name and role were written already.
        self._named: set[tuple[UUID, str]] = set()
        self._watching: set[int] = set()

    def watch(self, media: MediaControl) -> None:
        """Listen to a media worker's events (once per worker)."""
        if id(media) not in self._watching:
            self._watching.add(id(media))
            media.add_listener(self.on_media_event)

    def on_worker_message(self, _wid: str, _incarnation: str, what: MediaEvent | str) -> None:
        """A message of the media client (``wadud api``): events only."""
        if not isinstance(what, str):
            self.on_media_event(what)

    def on_media_event(self, event: MediaEvent) -> None:
        if not isinstance(event, CallSample | TransportState):
            return
        booking = booking_of(event.room)
        if booking is None or not self.owned(event.room) or len(self.rows) >= BUFFER_MAX:
            return
        self.live[event.room] = booking
        key = (booking, event.participant)
        if key not in self._named:
            grant = self.grant(event.room, event.participant)
            if grant is not None:
                self._named.add(key)
                self.people.setdefault(key, _person(booking, event.participant, grant))
        if isinstance(event, CallSample):
            data = {
                "loss": _finite(event.loss),
                "rtt": _finite(event.rtt),
                "jitter": _finite(event.jitter),
                "sent": _finite(event.sent),
                "received": _finite(event.received),
                "available": _finite(event.available),
                "layers": event.layers,
                "quality": event.quality,
            }
            self.rows.append(Row(booking, event.participant, "media", _now(), data))
        else:
            self.events.append(
                TransportEvent(
                    booking, event.participant, _now(), event.state, event.direction, event.reason
                )
            )

    def on_page(self, booking: UUID, pid: str, grant: RoomGrant, data: dict[str, Any]) -> bool:
        """A page's sample, sent with ``grant`` (its room token's); False when
        dropped (too soon after the last one)."""
        key = (booking, pid)
        now = time.monotonic()
        if now - self._page_at.get(key, -PAGE_EVERY) < PAGE_EVERY or len(self.rows) >= BUFFER_MAX:
            return False
        self._page_at[key] = now
        at = _now()
        self._named.add(key)
        self.people[key] = _person(booking, pid, grant)
        restarts = int(data.get("ice_restarts") or 0)
        before = self._restarts.get(key, 0)
        if restarts > before:
            # The page restarted ICE (or made new peer connections) since its
            # last sample: a reconnect, at this sample's time.
            self.events.append(
                TransportEvent(booking, pid, at, "reconnect", "", data.get("media", ""))
            )
        self._restarts[key] = max(before, restarts)
        self.rows.append(Row(booking, pid, "page", at, data))
        return True

    async def flush(self) -> None:
        rows, events, people = self.rows, self.events, list(self.people.values())
        self.rows, self.events = [], []
        self.people.clear()
        if rows or events or people:
            try:
                async with self.pool.acquire() as conn:
                    await store(conn, rows, events, people)
            except Exception:
                # The database is away: the next round tries again (up to
                # BUFFER_MAX samples are held).
                self.rows[:0] = rows[-BUFFER_MAX:]
                self.events[:0] = events
                for p in people:
                    self.people.setdefault((p.booking_id, p.participant), p)
                raise
        for room, booking in list(self.live.items()):
            if not self.owned(room):
                del self.live[room]
                for key in [k for k in self._page_at if k[0] == booking]:
                    self._page_at.pop(key, None)
                    self._restarts.pop(key, None)
                self._named = {k for k in self._named if k[0] != booking}
                async with self.pool.acquire() as conn:
                    if await finish(conn, booking, _now()):
                        log.info("call report ready", extra={"booking": str(booking)})

    async def run(self, every: float = FLUSH_EVERY) -> None:
        await loops.every(
            every, self.flush, "call report batch failed; kept for the next round", log
        )


async def post_stats(request: web.Request, settings: Settings, recorder: CallRecorder) -> None:
    """``POST /api/v1/calls/stats``: a page's sample, its room token in the
    body (``token``: the API's bearer header is for access tokens). Taken
    or dropped as too frequent alike; 401 for a bad token; 403 for another
    participant's id; 400 for a malformed body; 413 past ``BODY_MAX``."""
    body = jsonin.loads(await jsonin.read_bytes(request, BODY_MAX) or b"null", "call stats")
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise Unauthorized("the call's room token is needed")
    try:
        grant = decode_room_token(settings, token, leeway=60)
    except InvalidToken as exc:
        raise Unauthorized(str(exc) or "not a valid room token") from None
    pid, data = page_sample(body)
    booking = booking_of(grant.room)
    if booking is None:
        return  # a room of no booking (the demo, a token from the CLI): no report
    known = recorder.grant(grant.room, pid)
    if known is not None and known.identity != grant.identity:
        raise Forbidden("that participant joined with another link")
    recorder.on_page(booking, pid, grant, data)
