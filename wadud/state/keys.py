"""Typed keys of application and request state (``web.AppKey``), in one
place so every package names shared resources the same way.

Only the ground's resources: a key to a feature's object lives with that
feature (``sfu.node.http.MEDIA``, ``signalling.edge.http.CALLS``), so this module
imports none of them. The served endpoints' list (``wadud.web.api.ENDPOINTS``)
lives with :class:`wadud.web.api.Endpoint`, which this module stands below."""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from wadud.config import Settings
from wadud.messaging.bus import Bus
from wadud.principal import Principal

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", asyncpg.Pool)
DATABASE_URL = web.AppKey("database_url", str)
BUS = web.AppKey("bus", Bus)
#: The region's own control plane (``redis_region_url``), when the process
#: serves one: readiness holds while it answers (wadud.web.ops).
REGION_PLANE = web.AppKey("region_plane", Bus)
#: Named extras other packages hang on the app (gateways, TURN server, ...).
EXTRAS = web.AppKey("extras", dict[str, Any])

PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
