"""The media node's HTTP endpoints, served by its supervisor on ``media_http``.

* ``/healthz``: 200 while the supervisor runs;
* ``/readyz``: 200 when Redis answers and every worker's entry is there with
  its current incarnation and ``ready``; else 503 with a JSON reason
  (``draining``, ``failing`` naming the port a worker cannot bind,
  ``degraded``);
* ``/metrics``: every worker's metrics (the ``sfu_*`` families among them),
  scraped from each worker's unix socket (:func:`scrape`) and labelled
  ``worker`` (:class:`Relabelled`), and the node's own gauges.

What each says is the node's (:class:`Node`, which
:class:`sfu.node.supervisor.Supervisor` is); this module serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

__all__ = ["Node", "NodeApi", "Relabelled", "scrape"]

log = logging.getLogger("wadud.sfu.node")


class Node(Protocol):
    """What the endpoints ask of the node they serve."""

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` says."""
        ...

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether the node is ready, and what ``/readyz`` says."""
        ...

    async def scrape(self) -> bytes:
        """What ``/metrics`` says."""
        ...


class NodeApi:
    """/healthz, /readyz and /metrics of a node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def register(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.json_response(self.node.health())

    async def readyz(self, _: web.Request) -> web.Response:
        ready, body = await self.node.readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(self, _: web.Request) -> web.Response:
        body = await self.node.scrape()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def scrape(path: str) -> str:
    """A worker's metrics, as exposition text, from its unix socket at
    ``path`` ("" when it does not answer)."""
    try:
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=path),
                timeout=aiohttp.ClientTimeout(total=2.0),
            ) as session,
            session.get("http://worker/metrics") as response,
        ):
            return await response.text()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        log.warning("cannot scrape a media worker", extra={"socket": path, "error": repr(exc)})
        return ""


class Relabelled(Collector):
    """Workers' exposition text parsed back into families, one family per
    name across workers, each sample labelled with its worker (a text given
    with no worker, the supervisor's own, keeps its labels)."""

    def __init__(self, texts: list[tuple[str | None, str]]) -> None:
        self.texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for wid, text in self.texts:
            for family in text_string_to_metric_families(text):
                samples = [
                    s if wid is None else s._replace(labels={**s.labels, "worker": wid})
                    for s in family.samples
                ]
                merged = families.setdefault(family.name, family)
                if merged is family:
                    merged.samples = samples
                else:
                    merged.samples.extend(samples)
        yield from families.values()
