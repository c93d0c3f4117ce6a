"""The media node registry as admins and Prometheus see it from the API side.

``GET /api/v1/admin/media/workers`` lists every live worker of every
``wadud media`` node (its region, address, state and load, and how many
rooms are placed on it); the API replica's ``/metrics`` carries the same as
gauges (workers by region and state, and each worker's transports, rooms,
CPU and packet rate), refreshed every few seconds from Redis, so an alert
does not need a scrape of every media node. Worker ids are the only label
beyond region and state: a bounded set, unlike rooms.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import typing
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pydantic
from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

import sfu.node.http
from sfu.control import registry
from wadud.messaging import loops
from wadud.state import keys
from wadud.web.api import ApiModel, Call, Role, Routes

log = logging.getLogger("wadud.signalling.nodes")

routes = Routes("media", "Media nodes and their workers (admins).")

#: Seconds between reads of the registry for the API side's gauges.
REFRESH = 2.0


def _view_of(info: type[registry.WorkerInfo]) -> type[ApiModel]:
    """The API's view of a registry entry (:class:`sfu.control.registry.WorkerInfo`):
    its fields, every one required, but the DTLS ``fingerprint`` (a relay link's
    business, not an admin's), and ``pps`` shown as ``packets_per_second``."""
    hints = typing.get_type_hints(info)
    shown: dict[str, Any] = {
        _SHOWN_AS.get(f.name, f.name): (hints[f.name], ...)
        for f in dataclasses.fields(info)
        if f.name not in _HIDDEN
    }
    return pydantic.create_model("WorkerView", __base__=ApiModel, __module__=__name__, **shown)


_HIDDEN = frozenset({"fingerprint"})
_SHOWN_AS = {"pps": "packets_per_second"}

#: One live worker as ``GET /api/v1/admin/media/workers`` shows it.
WorkerView = _view_of(registry.WorkerInfo)


class MediaWorkers(ApiModel):
    # A model built at import is a value to mypy, not a type; pydantic takes it as one.
    items: list[WorkerView]  # type: ignore[valid-type]


def _redis(app: web.Application) -> Any:
    return getattr(app[keys.BUS], "redis", None)


def _model(w: registry.WorkerInfo) -> ApiModel:
    shown = {_SHOWN_AS.get(k, k): v for k, v in dataclasses.asdict(w).items() if k not in _HIDDEN}
    return WorkerView(**shown)


@routes.get("/api/v1/admin/media/workers", returns=MediaWorkers, auth={Role.ADMIN})
async def list_workers(call: Call[None, None]) -> MediaWorkers:
    """Live media workers of every node, with their region, address and load.

    Without Redis (``wadud serve``), the one worker running in this process."""
    app = call.request.app
    redis = _redis(app) if call.settings.redis_url else None
    if redis is not None and sfu.node.http.WORKER not in app:
        found = await registry.workers(redis)
    else:
        found = [_local(app)] if sfu.node.http.WORKER in app else []
    return MediaWorkers(items=[_model(w) for w in sorted(found, key=lambda w: w.worker)])


def _local(app: web.Application) -> registry.WorkerInfo:
    worker = app[sfu.node.http.WORKER]
    settings = app[keys.SETTINGS]
    host, port = worker.address[0], worker.address[1]
    return registry.WorkerInfo(
        worker="local-0",
        incarnation="",
        node="local",
        region=settings.region,
        index=0,
        host=(settings.media_announced_addresses or [host])[0],
        port=port,
        capacity=settings.media_capacity,
        transports=int(worker.snapshot()["transports"]),
        rooms=len(worker.rooms()),
    )


#: The gauges of each media worker: its registry entry's field, then the
#: metric's name and help.
_PER_WORKER = (
    ("transports", "wadud_media_worker_transports", "Transports on each media worker."),
    ("rooms", "wadud_media_worker_rooms", "Call rooms placed on each media worker."),
    ("cpu", "wadud_media_worker_cpu", "Fraction of a core each media worker used."),
    (
        "pps",
        "wadud_media_worker_packets_per_second",
        "Packets per second each media worker received and sent.",
    ),
)


class _RegistryCollector(Collector):
    """The last registry read of every app in this process."""

    def __init__(self) -> None:
        self.views: weakref.WeakSet[_View] = weakref.WeakSet()

    def collect(self) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "wadud_media_workers",
            "Live media workers, by region and state.",
            labels=["region", "state"],
        )
        per_worker = [
            (field, GaugeMetricFamily(name, doc, labels=["worker"]))
            for field, name, doc in _PER_WORKER
        ]
        counts: dict[tuple[str, str], int] = {}
        seen: set[str] = set()
        for view in list(self.views):
            for w in view.workers:
                if w.worker in seen:
                    continue
                seen.add(w.worker)
                counts[(w.region, w.state)] = counts.get((w.region, w.state), 0) + 1
                for field, family in per_worker:
                    family.add_metric([w.worker], getattr(w, field))
        for (region, state), n in sorted(counts.items()):
            count.add_metric([region, state], n)
        yield count
        yield from (family for _, family in per_worker)


COLLECTOR = _RegistryCollector()
REGISTRY.register(COLLECTOR)


class _View:
    def __init__(self) -> None:
        self.workers: list[registry.WorkerInfo] = []


async def _gauges(app: web.Application) -> AsyncIterator[None]:
    redis = _redis(app) if app[keys.SETTINGS].redis_url else None
    if redis is None or sfu.node.http.WORKER in app:
        yield
        return
    view = _View()
    COLLECTOR.views.add(view)

    async def refresh() -> None:
        while True:
            try:
                view.workers = await registry.workers(redis)
            except Exception as exc:
                log.warning("media registry not readable: %s", exc)
            loops.go_on()
            await asyncio.sleep(REFRESH)

    try:
        async with loops.background(refresh(), "media-registry-gauges"):
            yield
    finally:
        COLLECTOR.views.discard(view)


def install(app: web.Application) -> None:
    """The admin endpoint and the API-side gauges of the media registry."""
    routes.install(app)
    app.cleanup_ctx.append(_gauges)
