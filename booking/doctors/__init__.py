"""Doctors: who may see and change a doctor (here), their profiles and their
life from draft to published (:mod:`.profiles`), their credential documents
(:mod:`.documents`), their hours and free slots (:mod:`.hours`), finding
them (:mod:`.search`), and patients' reviews of them (:mod:`.reviews`).

A doctor's life: clinic staff onboard them (``draft``), upload credentials and
submit (``pending_verification``); an admin verifies a document and publishes
(``published``: visible to the public and bookable) or suspends. Who sees what:

* the public sees published doctors only;
* staff of the doctor's clinic and admins see and manage any status;
* a doctor sees and edits their own profile and availability.

Another clinic's unpublished doctor is a 404, so ids do not leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal
from uuid import UUID

import asyncpg

from wadud.errors import Forbidden, NotFound
from wadud.web.api import Principal, Role

__all__ = ["fetch_doctor", "is_staff_of", "may_manage"]


def is_staff_of(me: Principal | None, row: Mapping[str, Any]) -> bool:
    """An admin, or clinic staff of the doctor's clinic."""
    return me is not None and me.oversees(row["clinic_id"])


def may_manage(me: Principal | None, row: Mapping[str, Any]) -> bool:
    """Staff of the doctor's clinic, an admin, or the doctor."""
    return is_staff_of(me, row) or (
        me is not None and me.role == Role.DOCTOR and row["user_id"] == me.user_id
    )


async def fetch_doctor(
    conn: asyncpg.Connection,
    me: Principal | None,
    doctor_id: UUID,
    *,
    need: Literal["view", "manage", "staff"] = "view",
    lock: bool = False,
) -> asyncpg.Record:
    """The doctors row if ``me`` may ``need`` it. A doctor ``me`` may not even
    see is a 404 (ids of unpublished doctors do not leak); a visible one ``me``
    may not change is a 403."""
    row = await conn.fetchrow(
        "SELECT * FROM doctors WHERE id = $1" + (" FOR UPDATE" if lock else ""), doctor_id
    )
    if row is None:
        raise NotFound("no such doctor")
    allowed = {"view": may_manage, "manage": may_manage, "staff": is_staff_of}[need](me, row)
    if allowed:
        return row
    if row["status"] == "published":
        if need == "view":
            return row
        raise Forbidden("you may not change this doctor")
    raise NotFound("no such doctor")
