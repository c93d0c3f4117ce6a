"""Clinics (tenants), and per-region settings over HTTP: feature flags and
commission (:mod:`booking.clinics`).

A clinic belongs to one region and bills in that region's currency. Admins
manage clinics; clinic staff and doctors see only their own (another clinic is
a 404, so ids do not leak). A clinic's staff set the sites that embed its
calls (``allowed_origins``, docs/calls.md); the rest of a clinic is the
admins' to change.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal, cast
from uuid import UUID

from pydantic import AfterValidator, Field, StringConstraints

from booking import clinics
from wadud import origins
from wadud.errors import Forbidden, NotFound, Unprocessable
from wadud.web.api import ApiModel, Call, Principal, Role, Routes

routes = Routes("clinics", "Clinics (tenants) and per-region settings.")

Region = Literal["PK", "AE", "QA", "SA"]
_REGION_PATH = "{region:(PK|AE|QA|SA)}"
# Path patterns may not contain braces (the route syntax uses them), so the
# length limit of a feature name is checked in the handler.
_FEATURE_PATH = "{feature:[a-z][a-z0-9_.-]*}"

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
BasisPoints = Annotated[int, Field(ge=0, le=10_000)]
Minor = Annotated[int, Field(ge=0, le=10**12)]
#: ``scheme://host[:port]``, stored as browsers send it (wadud.origins).
Origin = Annotated[str, Field(max_length=origins.MAX_LENGTH), AfterValidator(origins.normalise)]
Origins = Annotated[
    list[Origin],
    Field(max_length=origins.MAX_ORIGINS),
    AfterValidator(origins.normalise_all),
]


class ClinicIn(ApiModel):
    name: Name
    region: Region
    commission_bp: BasisPoints | None = None
    commission_fixed_minor: Minor = 0


class ClinicPatch(ApiModel):
    name: Name | None = None
    #: ``null`` returns the clinic to the region's (or the platform's) default.
    commission_bp: BasisPoints | None = None
    commission_fixed_minor: Minor | None = None
    allowed_origins: Origins | None = Field(
        None,
        description="The sites that embed this clinic's calls, each scheme://host[:port]"
        " (at most 20): they may frame its call pages and call POST /api/v1/check and"
        " /api/v1/calls/* from the browser. Replaces the list; [] clears it. The only"
        " field a clinic's own staff may change.",
    )


class Clinic(ApiModel):
    id: UUID
    name: str
    region: Region
    currency: str
    commission_bp: int | None
    commission_fixed_minor: int
    allowed_origins: list[str] = Field(
        description="The sites that embed this clinic's calls (docs/calls.md), written as"
        " browsers send an Origin: lower case, no default port."
    )
    created_at: dt.datetime


class ClinicPage(ApiModel):
    items: list[Clinic]
    next_after: UUID | None = Field(
        description="Pass as ?after= for the next page; null on the last."
    )


class ClinicQuery(ApiModel):
    limit: Annotated[int, Field(ge=1, le=200)] = 50
    after: UUID | None = None


class Features(ApiModel):
    region: Region
    features: dict[str, bool]


class FeatureIn(ApiModel):
    enabled: bool


class Feature(ApiModel):
    region: Region
    feature: str
    enabled: bool


class CommissionIn(ApiModel):
    commission_bp: BasisPoints
    commission_fixed_minor: Minor = 0


class CommissionOut(ApiModel):
    region: Region
    commission_bp: int
    commission_fixed_minor: int


def _region(value: str) -> Region:
    # The route pattern admits only the four regions.
    return cast(Region, value)


def _own_clinic(me: Principal, clinic_id: UUID) -> None:
    if me.role != Role.ADMIN and me.clinic_id != clinic_id:
        raise NotFound("no such clinic")


@routes.post("/api/v1/clinics", body=ClinicIn, returns=Clinic, status=201, auth={Role.ADMIN})
async def create_clinic(call: Call[ClinicIn, None]) -> Clinic:
    """Create a clinic (tenant).

    The currency follows the region (PK: PKR, AE: AED, QA: QAR, SA: SAR)."""
    body = call.body
    row = await clinics.create(
        call.pool,
        name=body.name,
        region=body.region,
        commission_bp=body.commission_bp,
        commission_fixed_minor=body.commission_fixed_minor,
    )
    return Clinic(**dict(row))


@routes.get(
    "/api/v1/clinics",
    query=ClinicQuery,
    returns=ClinicPage,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def list_clinics(call: Call[None, ClinicQuery]) -> ClinicPage:
    """List clinics: an admin sees all, staff and doctors their own.

    Ordered by id; page with ``after``."""
    me, q = call.user, call.query
    own = None if me.role == Role.ADMIN else me.clinic_id
    rows = await clinics.listed(call.pool, only=own, after=q.after, limit=q.limit + 1)
    items = [Clinic(**dict(r)) for r in rows[: q.limit]]
    return ClinicPage(items=items, next_after=items[-1].id if len(rows) > q.limit else None)


@routes.get(
    "/api/v1/clinics/{clinic_id:uuid}",
    returns=Clinic,
    auth={Role.ADMIN, Role.CLINIC_STAFF, Role.DOCTOR},
)
async def get_clinic(call: Call[None, None]) -> Clinic:
    """A clinic: admins any, staff and doctors their own."""
    clinic_id = call.path_uuid("clinic_id")
    _own_clinic(call.user, clinic_id)
    return Clinic(**dict(await clinics.read(call.pool, clinic_id)))


#: What a clinic's own staff may change of it.
STAFF_FIELDS = frozenset({"allowed_origins"})


@routes.patch(
    "/api/v1/clinics/{clinic_id:uuid}",
    body=ClinicPatch,
    returns=Clinic,
    auth={Role.ADMIN, Role.CLINIC_STAFF},
)
async def update_clinic(call: Call[ClinicPatch, None]) -> Clinic:
    """Rename a clinic, change its commission or the sites that embed it.

    Only the fields sent change; ``commission_bp: null`` clears the clinic's
    own rate so the region's or platform's default applies. Admins change
    any field; a clinic's staff only its own ``allowed_origins`` (403 for
    another field, 404 for another clinic). A change of origins applies to
    browsers within a few seconds."""
    body = call.body
    sent = body.model_fields_set
    clinic_id = call.overseen_clinic()
    if call.user.role != Role.ADMIN and sent - STAFF_FIELDS:
        raise Forbidden(f"clinic staff may change only {', '.join(sorted(STAFF_FIELDS))}")
    for name in ("name", "commission_fixed_minor", "allowed_origins"):
        if name in sent and getattr(body, name) is None:
            raise Unprocessable(f"{name} cannot be null")
    row = await clinics.update(
        call.pool,
        clinic_id,
        sent,
        name=body.name,
        commission_bp=body.commission_bp,
        commission_fixed_minor=body.commission_fixed_minor,
        allowed_origins=body.allowed_origins,
    )
    return Clinic(**dict(row))


@routes.get(f"/api/v1/regions/{_REGION_PATH}/features", returns=Features, auth="public")
async def region_features(call: Call[None, None]) -> Features:
    """Feature flags of a region (e.g. instant consultations, a gateway)."""
    region = call.path("region")
    features = await clinics.region_features(call.pool, region)
    return Features(region=_region(region), features=features)


@routes.put(
    f"/api/v1/regions/{_REGION_PATH}/features/{_FEATURE_PATH}",
    body=FeatureIn,
    returns=Feature,
    auth={Role.ADMIN},
)
async def set_region_feature(call: Call[FeatureIn, None]) -> Feature:
    """Turn a region's feature flag on or off."""
    region, feature = call.path("region"), call.path("feature")
    if len(feature) > 63:
        raise Unprocessable("a feature name has at most 63 characters")
    await clinics.set_region_feature(call.pool, region, feature, call.body.enabled)
    return Feature(region=_region(region), feature=feature, enabled=call.body.enabled)


@routes.put(
    f"/api/v1/regions/{_REGION_PATH}/commission",
    body=CommissionIn,
    returns=CommissionOut,
    auth={Role.ADMIN},
)
async def set_region_commission(call: Call[CommissionIn, None]) -> CommissionOut:
    """Set the platform commission of a region.

    A clinic's own commission overrides it; with neither, the configured
    platform default applies."""
    region, body = call.path("region"), call.body
    await clinics.set_region_commission(
        call.pool, region, body.commission_bp, body.commission_fixed_minor
    )
    return CommissionOut(
        region=_region(region),
        commission_bp=body.commission_bp,
        commission_fixed_minor=body.commission_fixed_minor,
    )


@routes.get(f"/api/v1/regions/{_REGION_PATH}/commission", returns=CommissionOut, auth={Role.ADMIN})
async def region_commission(call: Call[None, None]) -> CommissionOut:
    """The platform commission set for a region (404 if none is set)."""
    return CommissionOut(**dict(await clinics.region_commission(call.pool, call.path("region"))))
