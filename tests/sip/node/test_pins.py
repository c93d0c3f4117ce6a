"""PIN lookups for the phone bridge's IVR (sip/node/pins.py) on the real
database: the right PIN opens its visit in its window; wrong ones are
counted per caller number and per trunk, audited with the number masked
and never the PIN, and a caller over a budget is blocked, right PIN or not."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from sip.node.pins import Backoff, Blocked, PinDesk, masked
from tests.booking.bookings.test_bookings import events, local, pool_of, requested, shift
from tests.booking.factories import Doctor
from tests.conftest import Api
from wadud.web.ratelimit import Limiter, MemoryStore


async def visit(api: Api, doctor: Doctor) -> tuple[str, str]:
    """An accepted visit starting in five minutes: (booking id, its PIN)."""
    _, bid, _ = await requested(api, doctor, local(2, "10:00"))
    await api.post(f"/api/v1/bookings/{bid}/accept", token=doctor.token, expect=200)
    await shift(api, bid, dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    sent = [e for e in await events(api, "booking.requested") if e["booking_id"] == bid]
    return bid, str(sent[-1]["phone_pin"])


def wrong(pin: str, k: int) -> str:
    return f"{(int(pin) + 1 + k) % 10**8:08d}"


async def audit_rows(api: Api, action: str, trunk: str) -> list[dict[str, object]]:
    """The audit trail's ``action`` rows about ``trunk`` (each test its own)."""
    rows = await pool_of(api).fetch(
        """SELECT actor_role, detail FROM audit_log
           WHERE action = $1 AND detail::jsonb->>'trunk' = $2 ORDER BY seq""",
        action,
        trunk,
    )
    return [dict(r) for r in rows]


async def test_right_and_wrong_pins_and_a_caller_over_its_budget(api: Api, doctor: Doctor) -> None:
    bid, pin = await visit(api, doctor)
    desk = PinDesk(pool_of(api), Limiter(MemoryStore(), "s" * 32))
    now = dt.datetime.now(dt.UTC)
    found = await desk.look_up(pin, caller="+923001234534", trunk="shifa", now=now)
    assert not isinstance(found, Blocked) and found is not None and str(found["id"]) == bid
    # Five wrong PINs from one number are free; the sixth is looked up too,
    # and earns a wait. Each is audited, with the number masked, never the PIN.
    caller = "+923001234534"
    for k in range(6):
        assert await desk.look_up(wrong(pin, k), caller=caller, trunk="shifa", now=now) is None
    failed = await audit_rows(api, "phone.pin_failed", "shifa")
    assert len(failed) == 6 and all(r["actor_role"] == "phone" for r in failed)
    details = [json.loads(str(r["detail"])) for r in failed]
    assert details == [{"caller": "••34", "trunk": "shifa"}] * 6
    assert all(pin not in str(r["detail"]) for r in failed)
    # From then on the number is refused before any lookup, even the right
    # PIN: fifty tries in all give six lookups and forty-four refusals.
    for _ in range(44):
        blocked = await desk.look_up(pin, caller=caller, trunk="shifa", now=now)
        assert isinstance(blocked, Blocked) and blocked.retry_after >= 1
    assert len(await audit_rows(api, "phone.pin_blocked", "shifa")) == 44
    # Another number on the trunk, and the same number on another trunk, still may.
    other = await desk.look_up(pin, caller="+923009999999", trunk="shifa", now=now)
    assert other is not None and not isinstance(other, Blocked)
    assert await desk.look_up(pin, caller="+923001234534", trunk="other", now=now) is not None


async def test_a_trunk_guessing_from_many_numbers_is_blocked_as_a_whole(
    api: Api, doctor: Doctor
) -> None:
    _, pin = await visit(api, doctor)
    desk = PinDesk(
        pool_of(api), Limiter(MemoryStore(), "s" * 32),
        per_trunk=Backoff(free=50, delay=30.0, delay_max=3600.0, forget=3600.0),
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    # Fifty wrong PINs are the trunk's free ones and the fifty-first earns a
    # wait, each from a number of its own (spoofed caller ids).
    for k in range(51):
        found = await desk.look_up(wrong(pin, k), caller=f"+9230{k:08d}", trunk="open", now=now)
        assert found is None, k
    blocked = await desk.look_up(pin, caller="+923001234534", trunk="open", now=now)
    assert isinstance(blocked, Blocked)
    assert len(await audit_rows(api, "phone.pin_failed", "open")) == 51


def test_a_number_is_masked_to_its_last_two_digits() -> None:
    assert masked("+92 300 1234534") == "••34" and masked("anonymous") == "••"
    assert masked(str(uuid.UUID(int=7))) == "••07"
