"""Simulated media workers: registry entries and control channels, no media.

The control plane benchmark needs workers that placement can choose and that
answer the requests signalling sends without SDP (``leave``, ``close_room``,
``ping``), by the hundred. A real ``wadud media`` worker costs a process and a
UDP port each; this fleet is one Redis connection for commands and one
pub/sub connection subscribed to every worker's control channel. Each entry
is a real :class:`sfu.control.registry.WorkerInfo` hash (the fields a worker writes),
renewed like a heartbeat, and each request gets the reply
:class:`sfu.control.rpc.MediaServer` would give for an op that touches no transport:
``{"id", "ok": true, "result": null}`` on the request's ``reply_to`` (``ping``
answers the worker's ids). Offers would need a real worker; the benchmark
sends none.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from dataclasses import replace
from typing import Any

from sfu.control import registry
from wadud.messaging.bus import encode


class Fleet:
    """``count`` workers of ``region`` registered in Redis while running."""

    def __init__(self, redis: Any, count: int, region: str, *, ttl: float = 30.0) -> None:
        self.redis = redis
        self.region = region
        self.ttl = ttl
        self.infos = [
            registry.WorkerInfo(
                worker=f"sim-{i}",
                incarnation=secrets.token_hex(4),
                node="sim",
                region=region,
                index=i,
                host="127.0.0.1",
                port=40000 + i,
                capacity=100_000,
                fingerprint="sha-256 " + ":".join(["AB"] * 32),
            )
            for i in range(count)
        ]
        self.requests = 0
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self._beat()
        self._pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        channels = [registry.control_channel(w.worker) for w in self.infos]
        for i in range(0, len(channels), 500):
            await self._pubsub.subscribe(*channels[i : i + 500])
        self._tasks = [
            asyncio.create_task(self._serve(), name="fleet-serve"),
            asyncio.create_task(self._heartbeat(), name="fleet-heartbeat"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in self.infos:
                pipe.delete(registry.worker_key(w.worker), registry.rooms_key(w.worker))
                pipe.srem(registry.WORKERS, w.worker)
                pipe.zrem(registry.load_key(w.region), w.worker)
            await pipe.execute()

    async def _beat(self) -> None:
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for w in self.infos:
                registry.write(pipe, replace(w, updated=now), self.ttl)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            await self._beat()

    async def _serve(self) -> None:
        by_channel = {registry.control_channel(w.worker): w for w in self.infos}
        while True:
            msg = await self._pubsub.get_message(timeout=1.0)
            if msg is None or msg.get("type") != "message":
                continue
            channel = msg["channel"]
            worker = by_channel.get(channel.decode() if isinstance(channel, bytes) else channel)
            try:
                request = json.loads(msg["data"])
            except ValueError:
                continue
            reply_to = request.get("reply_to")
            if worker is None or not isinstance(reply_to, str):
                continue
            self.requests += 1
            result = None
            if request.get("op") == "ping":
                result = {"worker": worker.worker, "incarnation": worker.incarnation}
            reply = {"id": request.get("id"), "ok": True, "result": result}
            if request.get("incarnation") != worker.incarnation:
                reply = {"id": request.get("id"), "ok": False, "error": {"type": "unavailable"}}
            await self.redis.publish(reply_to, encode(reply))
