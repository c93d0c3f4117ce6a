"""What a media node reads of wadud's settings: its name, its workers, its HTTP address, its planes.

``wadud media`` checks these before it starts (``bin/main.py``); the
supervisor (:mod:`sfu.node.supervisor`) and each worker process
(:mod:`sfu.node.process`) read them from the same
:class:`wadud.config.Settings`.
"""

from __future__ import annotations

import os
import secrets
import socket
from typing import TYPE_CHECKING

from wadud.messaging.bus import redis_client

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from wadud.config import Settings

__all__ = ["control_planes", "http_address", "node_id", "worker_count"]


def node_id(settings: Settings) -> str:
    """``media_node_id``, else the host name and a short random suffix."""
    return settings.media_node_id or f"{socket.gethostname()}-{secrets.token_hex(2)}"


def worker_count(settings: Settings) -> int:
    """``media_workers``, 0 meaning one per core."""
    return settings.media_workers if settings.media_workers > 0 else (os.cpu_count() or 1)


def _redis(url: str) -> Redis:
    client: Redis = redis_client(url)
    return client


def control_planes(settings: Settings) -> list[Redis]:
    """A Redis client per control plane the node's workers serve: the global
    one and, with ``redis_region_url``, the region's own (signalling.planes)."""
    return [_redis(url) for url in (settings.redis_url, settings.redis_region_url) if url]


def http_address(text: str) -> tuple[str, int]:
    """``media_http`` as (host, port); ValueError when it is not ADDR:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"media_http must be ADDR:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
