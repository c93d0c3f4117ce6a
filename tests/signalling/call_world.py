"""The world of a browser call test's driver (test_browser_call.py and the
tests built like it): the app served inside the driver's namespace, links
into its call page, the browsers (tests/browser.py) and when each step
happened; and a clinic's page on another site that frames a page of it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.browser import Browsers, driver_main, play

HTTP_PORT = 8080  # the namespace is the driver's alone: every port is free
EMBED_PORT = 9090
SECRET = "browser-test-secret-" + "x" * 32


@dataclass
class World:
    base: str
    #: The aiohttp application the driver serves (its state under wadud.state.keys).
    app: Any
    browsers: Browsers
    room: str = "consult-4411"
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def settings(self) -> Any:
        from wadud.state import keys

        return self.app[keys.SETTINGS]

    def mark(self, what: str) -> None:
        while what in self.timings:
            what += " again"
        self.timings[what] = round(time.monotonic() - self.started, 2)

    def link(
        self,
        identity: str,
        name: str,
        role: str,
        *,
        admin: bool = False,
        expires_in: dt.timedelta = dt.timedelta(hours=1),
        opens_in: dt.timedelta = -dt.timedelta(hours=2),
        booking: str = "",
        slot: str = "",
    ) -> str:
        """A link into :attr:`room`; ``booking`` and ``slot``: a booked
        visit's, as ``/video-link`` makes them."""
        from wadud.web.auth import RoomGrant, issue_room_token

        now = dt.datetime.now(dt.UTC)
        grant = RoomGrant(
            room=self.room, identity=identity, name=name, role=role, admin=admin,
            booking=booking, slot=slot,
        )  # fmt: skip
        token = issue_room_token(
            self.settings,
            grant,
            not_before=now + opens_in,
            expires=now + expires_in,
        )
        return f"{self.base}/call/{self.room}?token={token}"


@contextlib.asynccontextmanager
async def serving(
    database_url: str,
    work: Path,
    *,
    relay: bool = False,
    also: Sequence[Any] = (),
    **overrides: Any,
) -> AsyncIterator[World]:
    """The app on HTTP_PORT, with the call demo on, and a World on it whose
    browsers keep their profiles under ``work``; ``overrides``: settings
    that differ from these. ``relay``: with the TURN relay ``wadud serve``
    runs beside it (127.0.0.1:3478 over UDP and TCP, 5349 over TLS), named
    in ``joined``; ``also``: more installers (a worker ``wadud serve`` runs,
    such as the phone bridge)."""
    import turn.http
    from bin.assembly import build_app, in_process
    from wadud.config import Settings

    settings = Settings(
        data_dir=work / "data",
        database_url=database_url,
        secret_key=SECRET,
        database_pool_min=1,
        database_pool_max=5,
        host="127.0.0.1",
        port=HTTP_PORT,
        call_demo=True,
        log_format="text",
        **overrides,
    )
    extra = [turn.http.install_embedded] if relay else []
    app = build_app(settings, [*in_process(), *extra, *also])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", HTTP_PORT).start()
    try:
        yield World(f"http://127.0.0.1:{HTTP_PORT}", app, Browsers(work))
    finally:
        await runner.cleanup()


#: A driver's scenario: what it read from the pages, as JSON.
Scenario = Callable[["World"], Awaitable[dict[str, Any]]]


def serve_scenarios(doc: str | None, scenarios: Mapping[str, Scenario], budget: float) -> None:
    """The command line (:func:`tests.browser.driver_main`) of a driver
    whose scenarios each need only a World on the app as :func:`serving`
    serves it."""

    async def drive(name: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
        async with serving(database_url, work) as world:
            return await play(scenarios[name](world), world.browsers, world.timings, budget)

    driver_main(doc, scenarios, drive, budget)


@contextlib.asynccontextmanager
async def embedder(page: str, port: int = EMBED_PORT) -> AsyncIterator[str]:
    """A clinic's ``page`` (HTML) on another site: localhost on ``port``,
    against the app's 127.0.0.1 (two ports are two sites' origins). Yields
    its URL."""

    async def clinic(_: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/clinic", clinic)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://localhost:{port}/clinic"
    finally:
        await runner.cleanup()
