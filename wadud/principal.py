"""Who is calling: roles and the principal a valid access token names."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID


class Role(StrEnum):
    PATIENT = "patient"
    DOCTOR = "doctor"
    CLINIC_STAFF = "clinic_staff"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    user_id: UUID
    role: Role
    clinic_id: UUID | None
    anonymous: bool
    family_id: UUID | None

    def oversees(self, clinic_id: UUID) -> bool:
        """An admin, or staff of clinic ``clinic_id``: who may act on that
        clinic's doctors, money and records."""
        return self.role == Role.ADMIN or (
            self.role == Role.CLINIC_STAFF and self.clinic_id == clinic_id
        )
