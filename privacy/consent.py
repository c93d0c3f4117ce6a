"""Consent: versioned texts, patients' answers, and the check where it matters.

A consent text belongs to a region (``PK``, ``AE``, ``QA``, ``SA``), a purpose
(:data:`PURPOSES`) and a language (:data:`LANGUAGES`), and has a version;
texts are never edited, a change is a new version (``material`` versions
make earlier acceptances stop counting). A patient accepts a text (so a
version, in a language) or withdraws a purpose; every answer is appended to
``consent_events`` and the latest per (patient, region, purpose) is the one
that counts.

Which purposes a region requires is configuration (``consent_required`` and
``consent_required_regions``, :func:`requirements`). :func:`columns` is
the check as SQL another statement carries, so the booking path spends no
query of its own on it, and :func:`require` runs it alone and raises
:class:`ConsentRequired` naming what is missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final
from uuid import UUID

import asyncpg

from privacy.errors import ConsentRequired, InvalidConsentText
from wadud.config import Settings
from wadud.errors import ConfigError

__all__ = [
    "LANGUAGES",
    "PASSES",
    "PURPOSES",
    "REGIONS",
    "check_settings",
    "columns",
    "current_state",
    "parse_requirements",
    "raise_missing",
    "require",
    "requirements",
]

PURPOSES = ("telehealth_consultation", "data_processing", "call_recording", "marketing")
LANGUAGES = ("en", "ur", "ar")
REGIONS = ("PK", "AE", "QA", "SA")


def _purposes(text: str, where: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.replace("+", ",").split(",") if p.strip())
    for name in names:
        if name not in PURPOSES:
            raise InvalidConsentText(
                f"{where}: unknown consent purpose {name!r} (one of {', '.join(PURPOSES)})"
            )
    return names


def parse_requirements(
    default: Sequence[str], by_region: Sequence[str]
) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """``consent_required`` (purposes) and ``consent_required_regions``
    (``REGION:purpose+purpose`` entries; ``REGION:`` requires nothing there)
    as (default, per-region overrides); ValueError when malformed."""
    base = _purposes(",".join(default), "consent_required")
    regions: dict[str, tuple[str, ...]] = {}
    for entry in by_region:
        region, colon, names = entry.partition(":")
        region = region.strip().upper()
        if not colon or region not in REGIONS:
            raise InvalidConsentText(
                f"consent_required_regions: {entry!r} is not REGION:purpose+purpose"
                f" with REGION one of {', '.join(REGIONS)}"
            )
        regions[region] = _purposes(names, f"consent_required_regions {region}")
    return base, regions


def check_settings(settings: Settings) -> None:
    """The consent requirements parse (ConfigError otherwise); run at start."""
    try:
        requirements(settings)
    except InvalidConsentText as exc:
        raise ConfigError(exc.detail) from None


def requirements(settings: Settings) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    return parse_requirements(settings.consent_required, settings.consent_required_regions)


def required_in(settings: Settings, region: str) -> tuple[str, ...]:
    base, regions = requirements(settings)
    return regions.get(region, base)


def enforced(settings: Settings) -> bool:
    """Whether any region requires anything (if not, no check runs at all)."""
    base, regions = requirements(settings)
    return bool(base) or any(regions.values())


#: The purposes of a region not currently accepted (at a version no older
#: than the newest material one), as two select-list columns
#: (``consent_region``, ``consent_missing``) a statement can carry. ``{u}``:
#: the user id, ``{r}``: per-region requirements (jsonb object), ``{b}``: the
#: default (jsonb array); ``{region}`` is a scalar subquery the caller
#: supplies. Both are uncorrelated scalar subqueries (PostgreSQL runs each
#: once per statement).
_COLUMNS = """
({region}) AS consent_region,
(SELECT ARRAY(
    SELECT p.purpose
    FROM jsonb_array_elements_text(
        coalesce(${r}::text::jsonb -> r.region, ${b}::text::jsonb)) AS p(purpose)
    WHERE NOT EXISTS (
        SELECT 1
        FROM (SELECT e.action, e.version FROM consent_events e
              WHERE e.user_id = ${u}::uuid AND e.region = r.region AND e.purpose = p.purpose
              ORDER BY e.id DESC LIMIT 1) AS latest
        WHERE latest.action = 'accept'
          AND latest.version >= coalesce(
              (SELECT max(t.version) FROM consent_texts t
               WHERE t.region = r.region AND t.purpose = p.purpose AND t.material), 0))
    ORDER BY p.purpose)
 FROM (SELECT ({region}) AS region) AS r) AS consent_missing"""


def columns(
    settings: Settings, user_id: UUID, region_sql: str, first: int
) -> tuple[str, list[Any]] | None:
    """The consent check folded into a caller's own statement: select-list
    SQL giving ``consent_region`` and ``consent_missing`` (pass the row to
    :func:`raise_missing`) and its parameters, numbered from ``$first``.
    ``region_sql`` is a scalar query using only the caller's parameters and
    not correlated with its tables. None when no region requires anything
    (then nothing is added)."""
    if not enforced(settings):
        return None
    base, regions = requirements(settings)
    sql = _COLUMNS.format(region=region_sql, u=first, r=first + 1, b=first + 2)
    return sql, [
        user_id,
        json.dumps({k: list(v) for k, v in regions.items()}),
        json.dumps(list(base)),
    ]


#: :func:`raise_missing`'s test as a boolean SQL expression over the two
#: columns of :func:`columns`: true when the row may go ahead.
PASSES: Final = "(consent_region IS NULL OR cardinality(consent_missing) = 0)"


def raise_missing(row: Mapping[str, Any]) -> None:
    """Raise :class:`ConsentRequired` when a row carrying :func:`columns`
    names purposes still missing."""
    region = row.get("consent_region")
    if region is not None and row.get("consent_missing"):
        raise ConsentRequired(list(row["consent_missing"]), region=region)


async def require(
    conn: asyncpg.Connection | asyncpg.Pool,
    settings: Settings,
    user_id: UUID,
    region_sql: str,
    *args: Any,
) -> None:
    """Raise :class:`ConsentRequired` (403, naming the purposes) unless
    ``user_id`` has accepted every consent the region requires, where the
    region is what the scalar SQL ``region_sql`` gives (its parameters are
    ``$4`` on: ``args``), e.g. ``SELECT region FROM clinics WHERE id = $4``.
    One statement; a NULL region (the booking or doctor does not exist)
    requires nothing. Costs nothing when no region requires any."""
    folded = columns(settings, user_id, region_sql, 1)
    if folded is None:
        return
    sql, params = folded
    row = await conn.fetchrow(f"SELECT {sql}", *params, *args)
    assert row is not None
    raise_missing(row)


async def current_state(
    conn: asyncpg.Connection | asyncpg.Pool, user_id: UUID
) -> list[Mapping[str, Any]]:
    """The latest answer per (region, purpose) of ``user_id``."""
    return list(
        await conn.fetch(
            """SELECT DISTINCT ON (region, purpose) region, purpose, action, version,
                      text_id, at
               FROM consent_events WHERE user_id = $1
               ORDER BY region, purpose, id DESC""",
            user_id,
        )
    )
