"""A booking's history and events: each change writes a ``booking_events``
row and the outbox event ``booking.<new state>`` in one round trip."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from uuid import UUID

import asyncpg

from wadud.messaging import outbox

__all__ = ["event_payload", "outbox_payload", "record_event"]


def event_payload(row: Mapping[str, Any]) -> dict[str, Any]:
    """The booking as outbox events carry it (JSON-ready)."""
    return {
        "booking_id": str(row["id"]),
        "clinic_id": str(row["clinic_id"]),
        "doctor_id": str(row["doctor_id"]),
        "patient_id": str(row["patient_id"]),
        "type": row["type"],
        "status": row["status"],
        "starts_at": row["starts_at"].isoformat(),
        "ends_at": row["ends_at"].isoformat(),
        "price_minor": row["price_minor"],
        "currency": row["currency"],
        "instant": row["instant"],
        # What a patient on a plain phone keys to join (sip/); a hold's
        # payload is built before its row, which draws it.
        "phone_pin": row.get("phone_pin"),
    }


def outbox_payload(
    row: Mapping[str, Any],
    event: str,
    from_state: str | None,
    actor_id: UUID | None,
    detail: dict[str, Any] | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The payload of the outbox event for a change of the booking ``row``:
    :func:`event_payload` with the event, the state it left, who acted, and
    ``extra``."""
    payload = event_payload(row)
    payload.update(
        event=event,
        from_state=from_state,
        actor_id=str(actor_id) if actor_id else None,
        detail=detail or {},
        **(extra or {}),
    )
    return payload


async def record_event(
    conn: asyncpg.Connection,
    row: Mapping[str, Any],
    event: str,
    from_state: str | None,
    *,
    actor_id: UUID | None,
    detail: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write the audit row and the outbox event ``booking.<row's state>``.

    ``extra`` goes to the outbox event only (secrets such as a fresh manage
    token must reach the notifier but never the audit table)."""
    payload = outbox_payload(row, event, from_state, actor_id, detail, extra)
    # The history row rides with the outbox row: one round trip.
    await outbox.emit(
        conn,
        f"booking.{row['status']}",
        payload,
        also="""INSERT INTO booking_events
                    (booking_id, clinic_id, event, from_state, to_state, actor_id, detail)
                VALUES ($4, $5, $6, $7, $8, $9, $10::jsonb)""",
        args=(
            row["id"],
            row["clinic_id"],
            event,
            from_state,
            row["status"],
            actor_id,
            detail or {},
        ),
    )
