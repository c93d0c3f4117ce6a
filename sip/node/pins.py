"""A caller's PIN looked up, its guesses limited and audited (issue 38).

An eight-digit PIN opens a visit for a few minutes around its slot, and a
trunk's callers can key as many as they like: without limits, a few
thousand live visits make a random PIN worth trying. So, as the sign-in
limits guesses (:mod:`wadud.web.ratelimit`), wrong PINs count against two
budgets, the caller's number on its trunk and the trunk as a whole (a trunk
may pass on any number a caller claims): the first ``free`` of each pass,
then each further attempt must wait longer, and a caller over either budget
is told goodbye without a lookup (:class:`Blocked`). The budgets live where
the sign-in's do (Redis across replicas, else this process).

Every wrong PIN and every refusal is written to the audit trail
(``phone.pin_failed``, ``phone.pin_blocked``) with the trunk and the
caller's number masked to its last two digits, never the PIN: the trail
shows a guessing run without holding what was guessed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from booking.bookings.access import visit_by_phone_pin
from booking.phone_calls import masked
from wadud.state.audit import record
from wadud.web.ratelimit import Backoff, Limiter, RateLimited

__all__ = ["PER_NUMBER", "PER_TRUNK", "Blocked", "PinDesk", "masked"]

#: A caller's number on one trunk: five wrong PINs pass (a patient who
#: mistypes a few times, twice over), then a minute's wait doubling to an
#: hour; forgotten an hour after the last.
PER_NUMBER = Backoff(free=5, delay=60.0, delay_max=3600.0, forget=3600.0)
#: A whole trunk: fifty wrong PINs an hour from all its callers together.
PER_TRUNK = Backoff(free=50, delay=30.0, delay_max=3600.0, forget=3600.0)


@dataclass(frozen=True, slots=True)
class Blocked:
    """The caller may not try now: ``retry_after`` seconds."""

    retry_after: float


class PinDesk:
    """Looks PINs up for the bridge's IVR, within the budgets."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        limiter: Limiter,
        *,
        per_number: Backoff = PER_NUMBER,
        per_trunk: Backoff = PER_TRUNK,
    ) -> None:
        self.pool = pool
        self.limiter = limiter
        self.per_number = per_number
        self.per_trunk = per_trunk

    async def look_up(
        self, pin: str, *, caller: str, trunk: str, now: dt.datetime
    ) -> asyncpg.Record | Blocked | None:
        """The booking ``pin`` opens at ``now``, None for a wrong PIN (counted
        and audited), or :class:`Blocked` for a caller over a budget."""
        try:
            number = await self.limiter.attempt(
                "phone-pin-number", f"{trunk}\n{caller}", self.per_number, "wrong PINs",
                count=False,
            )  # fmt: skip
            whole = await self.limiter.attempt(
                "phone-pin-trunk", trunk, self.per_trunk, "wrong PINs", count=False
            )
        except RateLimited as refused:
            await self._audit("phone.pin_blocked", caller, trunk)
            return Blocked(float(refused.retry_after or 1))
        async with self.pool.acquire() as conn:
            row = await visit_by_phone_pin(conn, pin, now)
        if row is not None:
            return row
        await self.limiter.fail(number, self.per_number)
        await self.limiter.fail(whole, self.per_trunk)
        await self._audit("phone.pin_failed", caller, trunk)
        return None

    async def _audit(self, action: str, caller: str, trunk: str) -> None:
        await record(
            self.pool,
            actor=None,
            role="phone",
            action=action,
            detail={"trunk": trunk, "caller": masked(caller)},
        )
