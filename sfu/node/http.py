"""The media worker inside the aiohttp application.

``install(app)`` starts one :class:`sfu.node.worker.MediaWorker` with the app and
stores it as ``app[MEDIA]``, where signalling finds it (the
in-process :class:`sfu.control.messages.MediaControl` of ``wadud serve``). It binds
``media_host:media_port``; when that port is taken (a second ``wadud serve``,
a test run beside a running server) it takes a free port instead, as the
embedded TURN relay does, since its candidates carry whatever port it got.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from sfu.control.messages import MediaControl
from sfu.node.worker import MediaWorker
from wadud.state import keys

log = logging.getLogger("wadud.sfu.http")

#: The media worker signalling drives (in-process in `wadud serve`).
MEDIA: web.AppKey[MediaControl] = web.AppKey("media")
#: The concrete worker, for what MediaControl does not offer (metrics, tests).
WORKER = web.AppKey("media_worker", MediaWorker)


async def _media(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    worker = MediaWorker.from_settings(settings, settings.media_port)
    try:
        await worker.start()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or settings.media_port == 0:
            raise
        log.warning(
            "media port taken; the media worker uses a free port instead",
            extra={"port": settings.media_port},
        )
        worker = MediaWorker.from_settings(settings, 0)
        await worker.start()
    app[MEDIA] = worker
    app[WORKER] = worker
    try:
        yield
    finally:
        await worker.close()


def install(app: web.Application) -> None:
    """Run a media worker for the app's lifetime (``app[MEDIA]``)."""
    app.cleanup_ctx.append(_media)
