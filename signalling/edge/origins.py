"""Which sites may embed calls: the origin policy of the call page and of
the endpoints a clinic's site calls from the browser.

A site (an origin, wadud.origins) is allowed when a clinic lists it in its
``allowed_origins`` (set with ``PATCH /api/v1/clinics/{id}``) or the
deployment does (``call_allowed_origins``). The policy answers two
questions:

* :meth:`OriginPolicy.allows`: may this site read the answers of ``POST
  /api/v1/check`` and ``/api/v1/calls/*`` (CORS, signalling/edge/cors.py)?
  Any clinic's site may: the check hands out nothing of a clinic's, and
  the call endpoints want a room token the site was given. Each answer is
  kept :data:`CACHE_TTL` seconds, so a preflight rarely costs a query and a
  clinic's change reaches every replica within that.
* :meth:`OriginPolicy.frame_ancestors`: who may frame the call page of a
  room (CSP ``frame-ancestors``)? A room of a clinic (``clinic-<id hex>-...``
  made with its API key, signalling/edge/tokens.py, or ``booking-<id>`` of
  one of its bookings, booking/calls.py) whose clinic lists sites: those
  sites and the deployment's, and nobody else. Any other room, or a clinic
  that lists none: ``call_frame_ancestors`` as configured (``*`` by default),
  widened by ``call_allowed_origins`` when it names sites.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from uuid import UUID

import asyncpg
from aiohttp import web

from booking import clinics
from booking.calls import booking_of
from wadud import origins

__all__ = ["CACHE_TTL", "POLICY", "OriginPolicy", "clinic_of", "frame_sources"]

#: Seconds an answer of :meth:`OriginPolicy.allows` is kept.
CACHE_TTL = 2.0
#: Most origins remembered at once: each is one a browser sent, so a flood
#: of made-up ones empties the memory rather than growing it.
CACHE_MAX = 4096

_CLINIC_ROOM = re.compile(r"^clinic-([0-9a-f]{32})-")


def clinic_of(room: str) -> UUID | None:
    """The clinic whose API key named ``room`` (``clinic-<id hex>-<name>``);
    None for any other room."""
    m = _CLINIC_ROOM.match(room)
    return UUID(m.group(1)) if m else None


def frame_sources(deployment: str, configured: Iterable[str], clinic: Iterable[str]) -> str:
    """The ``frame-ancestors`` source list of a call page: ``deployment``
    (``call_frame_ancestors``), ``configured`` (``call_allowed_origins``) and
    the room's ``clinic``'s origins, each source once."""
    clinic, configured = list(clinic), list(configured)
    base = deployment.split() or ["*"]
    if not clinic:
        if base == ["*"]:
            return "*"  # nobody restricts: any site, as before clinics chose
        listed = base + configured
    else:
        # A clinic that names its sites restricts its rooms to them, even
        # where the deployment lets any site frame a page; 'none' means
        # nothing beside other sources.
        kept = [s for s in base if s not in ("*", "'none'")]
        listed = kept + configured + clinic
    return " ".join(dict.fromkeys(listed))


def _well_formed(origin: str) -> bool:
    try:
        return origins.normalise(origin) == origin
    except ValueError:
        return False


class OriginPolicy:
    """The sites allowed, from the settings and the clinics' lists
    (``pool``: the database's, handed in by each caller)."""

    def __init__(
        self,
        *,
        frame_ancestors: str,
        allowed: Iterable[str],
        ttl: float = CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.deployment = frame_ancestors
        #: ``call_allowed_origins``, normalised (wadud.config.checks).
        self.configured = tuple(allowed)
        self.ttl = ttl
        self.clock = clock
        self._known: dict[str, tuple[bool, float]] = {}

    async def allows(self, pool: asyncpg.Pool, origin: str) -> bool:
        """Whether ``origin`` (a request's ``Origin`` header, exactly as sent)
        is a site allowed to call the cross-origin endpoints."""
        if origin in self.configured:
            return True
        # Browsers send origins normalised; anything else ("null", a
        # made-up header) is no clinic's and costs no query.
        if not _well_formed(origin):
            return False
        now = self.clock()
        known = self._known.get(origin)
        if known is not None and known[1] > now:
            return known[0]
        listed = await clinics.origin_listed(pool, origin)
        if len(self._known) >= CACHE_MAX:
            self._known.clear()
        self._known[origin] = (listed, now + self.ttl)
        return listed

    async def frame_ancestors(self, pool: asyncpg.Pool, room: str) -> str:
        """The ``frame-ancestors`` source list for ``room``'s call page
        (read afresh: a page load is rare beside a preflight)."""
        clinic_id = clinic_of(room)
        booking_id = booking_of(room)
        if clinic_id is not None:
            listed = await clinics.origins(pool, clinic_id)
        elif booking_id is not None:
            listed = await clinics.booking_origins(pool, booking_id)
        else:
            listed = []
        return frame_sources(self.deployment, self.configured, listed)


#: The app's policy (signalling/edge/pages.py makes it).
POLICY: web.AppKey[OriginPolicy] = web.AppKey("origin_policy", OriginPolicy)
