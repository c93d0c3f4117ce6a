"""The browser side of calls, as the server serves it.

* ``GET /call/{room}``: the call page. The room token stays in the query
  string (``?token=...``) where only the page's script reads it; the server
  never looks at it here, signalling verifies it on ``/ws``.
* ``GET /static/call/{name}``: the page's assets (plain ES modules, no build
  step), revalidated by ETag on every load so a new release is picked up.
* ``GET /check``: the pre-call check (camera, microphone, speaker and the
  network path to media, in English, Urdu or Arabic), framable like the call
  page; its endpoint, ``POST /api/v1/check``, is signalling/edge/check.py.
* ``GET /demo`` and ``POST /api/v1/calls/demo`` (only with ``call_demo``): a
  page that makes a throwaway room and hands out a doctor and a patient link,
  so a newcomer can hold a call in two tabs.
* The consultation's chat for the call page, by room token: signalling/edge/chat.py.

Clinics embed the call page in their own sites, so it may be framed by the
sites the origin policy names for its room (``frame-ancestors``: the room's
clinic's ``allowed_origins``, else any site unless configured otherwise,
signalling/edge/origins.py) and delegates camera, microphone and screen
capture to itself (``Permissions-Policy``); the iframe must also say
``allow="camera; microphone; display-capture"`` (docs/calls.md). Those
sites may call ``POST /api/v1/check`` and ``/api/v1/calls/*`` from the
browser (CORS, signalling/edge/cors.py).
"""

from __future__ import annotations

import datetime as dt
import secrets
from pathlib import Path

from aiohttp import web

from signalling.edge import chat, check, cors, invites, tokens
from signalling.edge.origins import POLICY, OriginPolicy, frame_sources
from wadud.errors import NotFound
from wadud.state import keys
from wadud.web.api import ApiModel, Call, Routes
from wadud.web.auth import RoomGrant, issue_room_token

#: The browser client, at the package's top (signalling/static/).
STATIC = Path(__file__).parents[1] / "static"
#: What ``/static/call/`` serves: the page's scripts and style, by suffix.
#: Module scripts must come with a JavaScript type or the browser refuses them.
ASSET_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
#: Demo links are valid this long, from the moment the room is made.
DEMO_VALIDITY = dt.timedelta(hours=2)
#: Tokens are valid from a little before they are made, so a client whose
#: clock runs behind the server's does not see a token from the future.
CLOCK_SKEW = dt.timedelta(minutes=1)

routes = Routes("calls", "Video calls: the demo room.")


class DemoRoom(ApiModel):
    #: The new room's name.
    room: str
    #: The call page with an admin (doctor) token: admits, mutes, removes, ends.
    doctor_url: str
    #: The call page with a patient token: waits until the doctor admits them.
    patient_url: str


def _base_url(request: web.Request) -> str:
    # Behind a proxy only the configured public URL is right; without one,
    # the address the browser used reaches us (a test server's random port).
    public = request.app[keys.SETTINGS].public_url.rstrip("/")
    return public or str(request.url.origin())


@routes.post(
    "/api/v1/calls/demo",
    returns=DemoRoom,
    auth="public",
    responses={404: "The demo is turned off (call_demo)"},
    # Its links hold room tokens: never kept in the idempotency store.
    replay=False,
)
async def create_demo_room(call: Call[None, None]) -> DemoRoom:
    """Make a demo room: a random name and two join links.

    Only when ``call_demo`` is on (``wadud serve``); anyone may call it, so it
    must stay off on a public deployment. The links hold room tokens valid for
    two hours: the doctor's with ``admin``, the patient's without."""
    settings = call.settings
    if not settings.call_demo:
        raise NotFound("the demo is turned off on this server")
    room = "demo-" + secrets.token_hex(5)
    now = dt.datetime.now(dt.UTC)
    base = _base_url(call.request)

    def link(role: str, name: str, *, admin: bool) -> str:
        grant = RoomGrant(
            room=room,
            identity=f"{role}-{secrets.token_hex(4)}",
            name=name,
            role=role,
            admin=admin,
        )
        token = issue_room_token(
            settings, grant, not_before=now - CLOCK_SKEW, expires=now + DEMO_VALIDITY
        )
        return f"{base}/call/{room}?token={token}"

    return DemoRoom(
        room=room,
        doctor_url=link("doctor", "Doctor", admin=True),
        patient_url=link("patient", "Patient", admin=False),
    )


def _page_headers(request: web.Request, *, frame_ancestors: str) -> dict[str, str]:
    host = request.host
    csp = "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            "media-src 'self' blob: mediastream:",
            # Spelled out because older browsers do not let 'self' match ws:.
            f"connect-src 'self' ws://{host} wss://{host}",
            "base-uri 'none'",
            "form-action 'none'",
            f"frame-ancestors {frame_ancestors}",
        ]
    )
    return {
        "Content-Security-Policy": csp,
        "Permissions-Policy": "camera=*, microphone=*, display-capture=*",
        # The URL carries a room token: never send it on as a Referer.
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        # Nor keep a copy of a page whose URL is a credential.
        "Cache-Control": "no-store",
    }


class Pages:
    """The HTML pages and their assets (plain aiohttp routes: they are not
    part of the JSON API, so they stay out of the OpenAPI document)."""

    def __init__(self, static: Path, policy: OriginPolicy, demo: bool) -> None:
        self.static = static
        self.policy = policy
        # Pages of no room: the deployment's sites alone.
        self.frame_ancestors = frame_sources(policy.deployment, policy.configured, [])
        self.demo = demo
        # Fixed at start: a request can only name a file that was there, so no
        # path in a URL ever reaches the file system.
        self.assets = {
            p.name: p
            for p in sorted(static.iterdir())
            if p.is_file() and p.suffix in ASSET_TYPES and not p.name.startswith(".")
        }

    def _html(self, request: web.Request, name: str, frame_ancestors: str) -> web.FileResponse:
        headers = _page_headers(request, frame_ancestors=frame_ancestors)
        headers["Content-Type"] = "text/html; charset=utf-8"
        return web.FileResponse(self.static / name, headers=headers)

    async def call_page(self, request: web.Request) -> web.FileResponse:
        pool = request.app[keys.DB]
        ancestors = await self.policy.frame_ancestors(pool, request.match_info["room"])
        return self._html(request, "call.html", ancestors)

    async def check_page(self, request: web.Request) -> web.FileResponse:
        # Clinics embed the check before a visit, as they embed the call.
        return self._html(request, "check.html", self.frame_ancestors)

    async def demo_page(self, request: web.Request) -> web.FileResponse:
        if not self.demo:
            raise NotFound("the demo is turned off on this server")
        # The demo page hands out admin links: nobody else may frame it.
        return self._html(request, "demo.html", "'none'")

    async def asset(self, request: web.Request) -> web.FileResponse:
        path = self.assets.get(request.match_info["name"])
        if path is None:
            raise NotFound("no such file")
        return web.FileResponse(
            path,
            headers={
                "Content-Type": f"{ASSET_TYPES[path.suffix]}; charset=utf-8",
                # Revalidate (a cheap 304 by ETag) on every load: module
                # imports carry no version in their URL to bust a cache with.
                "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff",
                # A clinic's own web app may import the client module; module
                # scripts from another origin load only with CORS.
                "Access-Control-Allow-Origin": "*",
            },
        )


def install(app: web.Application) -> None:
    settings = app[keys.SETTINGS]
    # A deployment that knows its clinics can name them; the default lets any
    # site embed the page, unless the room's clinic names its own sites.
    app[POLICY] = policy = OriginPolicy(
        frame_ancestors=settings.call_frame_ancestors, allowed=settings.call_allowed_origins
    )
    pages = Pages(STATIC, policy, settings.call_demo)
    app.router.add_get("/call/{room:[^/]{1,128}}", pages.call_page, name="call-page")
    app.router.add_get("/static/call/{name}", pages.asset, name="call-asset")
    app.router.add_get("/check", pages.check_page, name="call-check")
    app.router.add_get("/demo", pages.demo_page, name="call-demo")
    routes.install(app)
    cors.install(app)
    check.routes.install(app)
    tokens.routes.install(app)
    chat.install(app)
    invites.routes.install(app)
    if settings.call_demo:
        app[keys.EXTRAS].setdefault("index_links", []).append(
            ("/demo", "Try a video call: make a demo room and open its two links")
        )
