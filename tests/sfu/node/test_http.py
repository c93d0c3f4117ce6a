"""sfu.node.http: the media worker starts and stops with the aiohttp app, on a free port
when the configured one is taken."""

from __future__ import annotations

import socket

from aiohttp import web

from sfu.node.http import MEDIA, WORKER, install
from sfu.node.worker import MediaWorker
from wadud.config import Settings
from wadud.state import keys


async def _run(settings: Settings) -> MediaWorker:
    app = web.Application()
    app[keys.SETTINGS] = settings
    install(app)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        worker = app[WORKER]
        assert app[MEDIA] is worker
        assert worker.candidate_addresses == [
            (a, worker.port) for a in (settings.media_announced_addresses or ["127.0.0.1"])
        ]
        return worker
    finally:
        await runner.cleanup()


async def test_worker_takes_a_free_port_when_the_configured_one_is_taken() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        worker = await _run(
            Settings(media_port=port, media_consent_timeout=7.0, media_remb_max_bitrate=300_000)
        )
    assert worker.port not in (0, port)
    assert worker.settings.consent_timeout == 7.0
    assert worker.settings.remb_max_bitrate == 300_000
    assert worker._transport is None  # closed with the app


async def test_announced_addresses_go_into_candidates() -> None:
    worker = await _run(Settings(media_port=0, media_announced_addresses=["203.0.113.5"]))
    assert worker.candidate_addresses == [("203.0.113.5", worker.port)]
