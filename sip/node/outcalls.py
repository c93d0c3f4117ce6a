"""The calls asked of the bridges (:mod:`booking.phone_calls`): heard,
claimed by one bridge, placed, and followed to their end.

A request is a ``phone_calls`` row and a NOTIFY on its channel. Every bridge
with a trunk that places calls LISTENs there; each NOTIFY (and a look every
:data:`LOOK_EVERY` seconds, for one missed while the LISTEN was being made
again) has it claim the oldest request no bridge holds, ``FOR UPDATE SKIP
LOCKED``, so one bridge places each call however many run. Each step of the
call is written back to the row, with a ``room.phone_call`` webhook event in
the same transaction (the outbox relay puts it on the bus too, which is how
the call page hears it): written in order, by one writer.

A request no bridge took within :data:`REQUEST_TTL` seconds fails
(``no bridge took the call``) rather than ring the patient long after the
doctor gave up; calls this bridge held when it stopped fail when it starts
again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from booking.calls import room_of
from booking.phone_calls import CHANNEL, ENDED, LIVE
from hooks import events
from sip.errors import DialRefused
from wadud.messaging import loops, outbox

__all__ = ["LOOK_EVERY", "REQUEST_TTL", "Dial", "Outcalls", "request_state"]

log = logging.getLogger("wadud.sip")

#: Seconds between looks for requests with no NOTIFY heard.
LOOK_EVERY = 30.0
#: Seconds a request waits for a bridge before it fails.
REQUEST_TTL = 60.0

_EXPIRE = """UPDATE phone_calls SET state = 'failed', reason = 'no bridge took the call',
                                   updated_at = now()
             WHERE state = 'requested' AND created_at < now() - make_interval(secs => $1)
             RETURNING id, booking_id, number, state, reason"""
_ORPHANED = """UPDATE phone_calls SET state = 'failed', reason = 'the bridge restarted',
                                     updated_at = now()
               WHERE bridge = $1 AND state = ANY($2::text[])
               RETURNING id, booking_id, number, state, reason"""
_CLAIM = """UPDATE phone_calls c SET state = 'dialling', bridge = $1, updated_at = now()
            WHERE c.id = (SELECT id FROM phone_calls WHERE state = 'requested'
                          ORDER BY created_at FOR UPDATE SKIP LOCKED LIMIT 1)
            RETURNING c.id, c.booking_id, c.number, c.state, c.reason"""
# A step after the call ended (a late response) changes nothing.
_STEP = """UPDATE phone_calls SET state = $2, reason = $3, updated_at = now()
           WHERE id = $1 AND state <> ALL($4::text[])
           RETURNING id, booking_id, number, state, reason"""

#: A placed call's state (:attr:`sip.node.bridge.PhoneCall.state`) as the
#: request tells it; the outcomes not here end a call as ``failed``.
_STATES = {
    "dialling": "dialling",
    "ringing": "ringing",
    "answered": "answered",
    "in room": "joined",
    "busy": "busy",
    "no_answer": "no_answer",
    "declined": "declined",
}


def request_state(state: str, before: str) -> tuple[str, str | None]:
    """(the request's state, why) for a placed call's new ``state``, its
    request having been ``before``: an answered call's end is ``ended``."""
    if state in _STATES:
        return _STATES[state], None
    if before in ("answered", "joined") and state in ("joined", "hung_up"):
        return "ended", None
    return "failed", state.replace("_", " ")


class Dial(Protocol):
    """How a bridge places a call (:meth:`sip.node.bridge.Bridge.dial_out`)."""

    def __call__(
        self, booking_id: str, *, number: str | None, on_state: Callable[[str], None]
    ) -> Awaitable[object]: ...


class Outcalls:
    """The requests one bridge hears, claims and follows: :meth:`start`,
    then :meth:`close`."""

    def __init__(self, pool: asyncpg.Pool, name: str, dial: Dial) -> None:
        self.pool = pool
        #: This bridge, as the rows it claims name it.
        self.name = name
        self.dial = dial
        self._wake = asyncio.Event()
        self._listener = outbox.Listener(pool, lambda _payload: self._wake.set(), CHANNEL)
        self._steps: asyncio.Queue[tuple[UUID, str, str | None]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # A claimed call is never ``requested`` again: the live ones it held.
        await self._write_all(await self.pool.fetch(_ORPHANED, self.name, sorted(LIVE)))
        self._tasks = [
            asyncio.create_task(
                loops.drain(self._look, self._wake, LOOK_EVERY, "phone call claim failed", log),
                name="phone-calls-claim",
            ),
            asyncio.create_task(self._write_steps(), name="phone-calls-steps"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            await loops.stopped(task)
        await self._listener.close()

    async def _look(self) -> bool:
        """Expire what waited too long, claim one request and place it;
        whether there was one."""
        await self._listener.ensure()
        await self._write_all(await self.pool.fetch(_EXPIRE, REQUEST_TTL))
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CLAIM, self.name)
            if row is not None:
                await _event(conn, row)
                outbox.written(conn)
        if row is None:
            return False
        await self._place(row)
        return True

    async def _place(self, row: asyncpg.Record) -> None:
        call_id: UUID = row["id"]
        reached = ["dialling"]

        def stepped(state: str) -> None:
            new, reason = request_state(state, reached[-1])
            if new != reached[-1]:
                reached.append(new)
                self._steps.put_nowait((call_id, new, reason))

        try:
            await self.dial(str(row["booking_id"]), number=row["number"], on_state=stepped)
        except DialRefused as exc:
            self._steps.put_nowait((call_id, "failed", str(exc)))
        except Exception as exc:
            log.exception("a requested phone call could not be placed")
            self._steps.put_nowait((call_id, "failed", type(exc).__name__))
        log.info("placing a requested phone call", extra={"request": str(call_id)})

    async def _write_steps(self) -> None:
        """Write each step, in order; one the database refused is logged
        and dropped (the page and webhooks miss it, the call goes on)."""
        while True:
            call_id, state, reason = await self._steps.get()
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    row = await conn.fetchrow(_STEP, call_id, state, reason, sorted(ENDED))
                    if row is not None:
                        await _event(conn, row)
                    outbox.written(conn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning(
                    "a phone call's step was not written",
                    extra={"request": str(call_id), "state": state, "error": repr(exc)},
                )

    async def _write_all(self, rows: list[asyncpg.Record]) -> None:
        if not rows:
            return
        async with self.pool.acquire() as conn, conn.transaction():
            for row in rows:
                await _event(conn, row)
            outbox.written(conn)


async def _event(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """The ``room.phone_call`` webhook event of ``row``'s new state."""
    booking_id = str(row["booking_id"])
    data: dict[str, Any] = {
        "call": str(row["id"]),
        "state": row["state"],
        "to": "other" if row["number"] else "patient",
    }
    if row["reason"]:
        data["reason"] = row["reason"]
    await events.emit(
        conn,
        "phone_call",
        booking_id=booking_id,
        room=room_of(booking_id),
        at=dt.datetime.now(dt.UTC).isoformat(),
        data=data,
    )
