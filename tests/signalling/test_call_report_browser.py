"""A visit's call report from a real call (issue 23's must-show): three
headless Chromium pages in a booking's room, one of them relay-only through
a TURN relay behind a rate-capped path (test_weak_network's machinery:
coturn, :class:`~tests.signalling.test_weak_network.PathProcess`), whose
path then goes dark for a few seconds so that page restarts ICE. After the
call ends, the report (as ``GET /api/v1/bookings/{id}/call-report`` serves
it) must show that participant's lower layer, their loss, and a reconnect
at the time the path went dark; the other two neither. The driver's
``--help`` says how to run it by hand.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.booking.call_reports.test_call_reports import screenshots
from tests.browser import driver_main, play
from tests.signalling.call_world import World, serving
from tests.signalling.test_weak_network import capped_call, worker_view
from tests.signalling.weak_paths import run_with_turn

#: The capped path: 400 kbit/s each way (the top layer needs ~1.5 Mbit/s).
RATE = 400_000 / 8
#: Seconds the capped path is dark (every packet dropped).
DARK = 6.0


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_a_capped_participant_s_report_shows_layer_loss_and_reconnect(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_with_turn(
        "tests.signalling.test_call_report_browser", "report", database_url, tmp_path, 180
    )
    print(json.dumps({k: v for k, v in result.items() if k != "report"}))
    screenshots(tmp_path / "report.html", tmp_path, "call-report-visit")
    report = result["report"]
    assert report["ready"] is True, result
    people = {p["name"]: p for p in report["participants"]}
    assert set(people) == {"Dr Amina", "Bilal", "Sana"}, result
    capped, clean = people["Sana"], people["Bilal"]
    # The lower layer: the capped one spent most of the call below the top.
    low = sum(v for k, v in capped["seconds_on_layer"].items() if k != "f")
    assert low > capped["seconds_on_layer"].get("f", 0.0), result
    assert capped["seconds_on_layer"].get("f", 0.0) < clean["seconds_on_layer"].get("f", 0.0), (
        result
    )
    # Loss: the capped one's peak (the worker's or what its page lost), not
    # the clean one's.
    assert capped["peak_loss"] >= 0.02 > clean["peak_loss"], result
    # The reconnect where it happened: within the dark seconds (+ the page's
    # grace and one sample), and none for the others.
    dark = result["dark_at"]
    starts = [r["at_s"] for r in capped["reconnects"]]
    assert any(dark - 1 <= t <= dark + DARK + 12 for t in starts), result
    assert capped["turn"] is True and clean["turn"] is False, result
    assert capped["ice_restarts"] >= 1, result
    assert clean["reconnects"] == [] and people["Dr Amina"]["reconnects"] == [], result


# -- the driver ------------------------------------------------------------------


async def booking_now(pool: Any) -> uuid.UUID:
    """A clinic, its doctor and an accepted video booking now (SQL: this is
    a call's test, not the booking API's)."""
    from wadud.web import accounts
    from wadud.web.api import Role

    clinic = await pool.fetchval(
        "INSERT INTO clinics (name, region, currency) VALUES ('Shifa', 'PK', 'PKR') RETURNING id"
    )
    tag = uuid.uuid4().hex[:8]
    doctor_user = await accounts.create_user(
        pool, email=f"dr-{tag}@example.test", password="x" * 12, role=Role.DOCTOR,
        clinic_id=clinic,
    )  # fmt: skip
    patient = await accounts.create_user(
        pool, email=f"pt-{tag}@example.test", password="x" * 12, role=Role.PATIENT
    )
    doctor = await pool.fetchval(
        """INSERT INTO doctors (clinic_id, user_id, display_name, specialty, languages,
               fee_minor, currency, region, status, published_at, time_zone)
           VALUES ($1, $2, 'Dr Amina', 'general', '{en}', 1000, 'PKR', 'PK', 'published',
                   now(), 'Asia/Karachi') RETURNING id""",
        clinic,
        doctor_user.id,
    )
    start = dt.datetime.now(dt.UTC).replace(microsecond=0)
    end = start + dt.timedelta(minutes=20)
    return uuid.UUID(
        str(
            await pool.fetchval(
                """INSERT INTO bookings (clinic_id, doctor_id, doctor_key, patient_id, type,
                       starts_at, ends_at, blocked, status, price_minor, currency)
                   SELECT d.clinic_id, d.id, d.key, $2, 'video', $3, $4, tstzrange($3, $4),
                          'accepted', d.fee_minor, d.currency
                   FROM doctors d WHERE d.id = $1 RETURNING id""",
                doctor,
                patient.id,
                start,
                end,
            )
        )
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


async def scenario_report(world: World) -> dict[str, Any]:
    from booking.call_reports import assembly
    from booking.call_reports.page import render
    from wadud.state import keys

    pool = world.app[keys.DB]
    booking = await booking_now(pool)
    world.room = f"booking-{booking}"
    turn, path, doctor, _clean, capped, _pub = await capped_call(world, RATE)
    try:
        await asyncio.sleep(20)
        world.mark("capped 20 s")
        dark_at = dt.datetime.now(dt.UTC)
        path.set_loss(1.0)
        await asyncio.sleep(DARK)
        path.set_loss(0.0)
        world.mark("path back")
        await capped.wait_for(
            "window.wadudCall.iceRestarts > 0 && window.wadudCall.media === 'connected'",
            "the capped page back after an ICE restart",
            within=30,
        )
        world.mark("reconnected")
        await asyncio.sleep(12)
        view = worker_view(world)
        await doctor.eval("window.wadudCall.end().then(() => true)")
        world.mark("ended")
        async with asyncio.timeout(20):
            while True:
                await asyncio.sleep(1)
                ready = await pool.fetchval(
                    "SELECT ready_at IS NOT NULL FROM call_reports WHERE booking_id = $1",
                    booking,
                )
                if ready:
                    break
        world.mark("report ready")
        async with pool.acquire() as conn:
            report = await assembly.assemble(conn, booking)
        assert report is not None
        page = render(report, "Call report", "n").replace(" nonce='n'", "")
        (world.browsers.work / "report.html").write_text(page)
        start = report["started_at"]
        for p in report["participants"]:
            for r in p["reconnects"]:
                r["at_s"] = round((r["at"] - start).total_seconds(), 1)
        return {
            "report": _plain(report),
            # When the path went dark, on the report's clock.
            "dark_at": round((dark_at - start).total_seconds(), 1),
            "path": path.stats(),
            "worker": view,
            "timings": world.timings,
        }
    finally:
        path.close()
        await turn.stop()


SCENARIOS = {"report": scenario_report}


async def drive(scenario: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    async with serving(database_url, work) as world:
        also = lambda: {"worker": worker_view(world)}  # noqa: E731
        return await play(SCENARIOS[scenario](world), world.browsers, world.timings, budget, also)


if __name__ == "__main__":
    driver_main(__doc__, SCENARIOS, drive, 180)
