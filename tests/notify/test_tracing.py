"""One trace from the HTTP request that changed a booking, through its SQL
and the outbox, to the notifier's planning and its send (issue 15: HTTP
request -> SQL -> outbox -> ... -> notifier), collected by a real OTLP/HTTP
receiver."""

from __future__ import annotations

import dataclasses

import pytest

from notify.service import Notifier
from tests.booking.bookings.test_bookings import confirm, hold, local
from tests.booking.factories import make_clinic, make_doctor
from tests.conftest import Api
from tests.notify.conftest import Inbox
from tests.wadud.observe.test_tracing import Receiver
from tests.wadud.observe.test_tracing import receiver as receiver  # the fixture
from wadud.config import Settings
from wadud.observe import tracing
from wadud.web.api import Role


@pytest.fixture
def settings(settings: Settings, receiver: Receiver) -> Settings:
    return dataclasses.replace(
        settings, otel_endpoint=receiver.endpoint, otel_service_name="wadud-test"
    )


async def test_the_notifier_continues_the_trace_of_the_request_that_caused_it(
    api: Api, smtp: Inbox, notifier: Notifier, receiver: Receiver
) -> None:
    assert tracing.enabled()
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    patient = await api.user(Role.PATIENT, email="traced@example.test")
    booking = await hold(api, patient, doctor, local(3, "10:00"))
    await confirm(api, booking["id"])
    await notifier.run_until_idle()
    await api.post(f"/api/v1/bookings/{booking['id']}/accept", token=doctor.token, expect=200)
    assert await notifier.run_until_idle() == 1
    assert len(smtp.of("booking_confirmed")) == 1
    await tracing.flush()

    (request,) = [s for s in receiver.spans if s.name.startswith("HTTP POST /api/v1/bookings/")
                  and s.name.endswith("/accept")]  # fmt: skip
    trace = {s.span_id: s for s in receiver.spans if s.trace_id == request.trace_id}
    names = [s.name for s in trace.values()]
    assert "outbox emit booking.accepted" in names
    (planned,) = [s for s in trace.values() if s.name == "notify plan booking.accepted"]
    assert planned.kind == 5  # CONSUMER
    (sent,) = [s for s in trace.values() if s.name == "notify send email"]
    assert sent.parent == planned.span_id
    assert sent.attributes["notify.template"] == "booking_confirmed"
