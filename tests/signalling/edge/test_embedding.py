"""Embedding across origins in headless Chromium: a clinic's page on its
own site frames the call page of one of the clinic's rooms and runs
``checkConnection({base})`` imported from Wadud's origin; a page on a site
the clinic did not list gets neither.

The test re-executes this module as a driver inside a loopback-only
namespace, as tests/signalling/test_browser_call.py does (its World, and
tests/browser.py's helpers). Wadud is ``http://127.0.0.1:8080``; the
clinic lists ``http://localhost:9090`` in its ``allowed_origins``, and the
stranger's page is ``http://localhost:9091`` (another port, another origin).
The same HTML is served on both:

* listed: the framed call page joins and posts its ``state`` messages to
  the clinic's page; the page's own ``fetch`` of ``POST /api/v1/check``
  reads its answer (CORS), and ``checkConnection`` measures the path.
* not listed: the browser refuses to frame the call page (``frame-ancestors``:
  the frame never runs Wadud's script nor posts a message), its ``fetch``
  fails as CORS refusals do (a ``TypeError``, though an opaque ``no-cors``
  request to the same URL gets through, so the path was open) and
  ``checkConnection`` says the server could not be reached.

Nothing waits a fixed time: each step waits for the page to say so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser import Page, frame_of, join, run_scenario
from tests.polling import wait_until
from tests.signalling.call_world import EMBED_PORT, Scenario, World, embedder, serve_scenarios

DRIVER = "tests.signalling.edge.test_embedding"
STRANGER_PORT = EMBED_PORT + 1


# -- the pytest side -----------------------------------------------------------


@pytest.mark.timeout(150)
async def test_a_clinics_site_embeds_and_checks_another_site_cannot(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_scenario(DRIVER, "embed", database_url, tmp_path, 110)
    print(json.dumps(result))
    listed, stranger = result["listed"], result["stranger"]
    assert listed["origin"] != result["base"] and stranger["origin"] != listed["origin"]
    # The framed call page told the clinic's page how the call went.
    states = [m["state"] for m in listed["seen"] if m["type"] == "state"]
    assert states[:1] == ["connecting"] and "joined" in states, listed
    assert all(set(m) == {"source", "type", "state", "reason"} for m in listed["seen"]), listed
    assert listed["frame_context"], listed
    assert [u.split("?")[0] for u in listed["frame_shows"]] == [link_of(result)], listed
    # Its fetch read the answer; the check reached the server and the SFU.
    assert listed["fetch"] == {"ok": True, "status": 201}, listed
    assert listed["check"]["server"]["state"] == "ok", listed
    assert listed["check"]["udp"]["state"] == "ok", listed
    # The stranger: no frame, no answer, no check.
    assert stranger["framed_loaded"] and stranger["seen"] == [], stranger
    # The browser's error page stands in the frame: Wadud's page never ran.
    assert stranger["frame_shows"] == ["chrome-error://chromewebdata/"], stranger
    assert not stranger["frame_context"], stranger
    assert stranger["fetch"] == {"ok": False, "error": "TypeError: Failed to fetch"}, stranger
    assert stranger["opaque"] == "opaque", stranger
    assert stranger["check"]["verdict"] == "blocked", stranger
    assert stranger["check"]["server"]["state"] == "failed", stranger
    assert stranger["check"]["server"]["error"] == "Failed to fetch", stranger


def link_of(result: dict[str, Any]) -> str:
    return f"{result['base']}/call/{result['room']}"


# -- the driver: runs inside the namespace ------------------------------------

CLINIC_PAGE = """<!doctype html><html><head><title>Clinic</title></head><body>
<h1>Example Clinic: your consultation</h1>
<iframe id="call" src="__SRC__" onload="window.framedLoaded = true"
        allow="camera; microphone; display-capture; autoplay; fullscreen"
        style="width: 900px; height: 560px; border: 0" title="Video consultation"></iframe>
<script>
  window.seen = [];
  window.addEventListener('message', (e) => {
    if (e.origin !== '__BASE__' || e.data?.source !== 'wadud-call') return;
    window.seen.push(e.data);
  });
  window.tryFetch = async () => {
    try {
      const r = await fetch('__BASE__/api/v1/check', {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{}',
      });
      await r.json();
      return { ok: true, status: r.status };
    } catch (e) {
      return { ok: false, error: `${e.name}: ${e.message}` };
    }
  };
  // A request a form could send, with no CORS: the server is there all the same.
  window.opaque = async () => {
    const r = await fetch('__BASE__/api/v1/check', { method: 'POST', mode: 'no-cors' });
    return r.type;
  };
</script>
<script type="module">
  import { checkConnection } from '__BASE__/static/call/wadud-call.js';
  window.startCheck = () => {
    window.checked = null;
    checkConnection({ base: '__BASE__' }).then(({ verdict, details }) => {
      window.checked = { verdict, server: details.server, udp: details.udp };
    });
    return true;
  };
</script></body></html>"""


def clinic_page(base: str, src: str) -> str:
    return CLINIC_PAGE.replace("__BASE__", base).replace("__SRC__", src)


async def call_contexts(page: Page, base: str) -> list[str]:
    """The origins of the page's script contexts that are Wadud's."""
    return [c["origin"] for c in page.cdp.contexts.values() if c.get("origin") == base]


async def frame_shows(page: Page) -> list[str]:
    """What the documents in the page's frames of other sites show (their
    ``location.href``, from each frame's own target), once there is one."""

    async def shown() -> list[str]:
        found = []
        for (session, ctx_id), ctx in list(page.cdp.contexts.items()):
            if session and ctx.get("auxData", {}).get("isDefault"):
                frame = Page(f"{page.name}-frame", page.proc, page.http, page.cdp, session, ctx_id)
                found.append(str(await frame.eval("location.href")))
        return found

    return await wait_until(shown, within=10, every=0.2)


async def checked(page: Page) -> dict[str, Any]:
    # A module script runs once its imports are fetched, which may be after
    # the frame's load event (ci168: not yet a function when called).
    await page.wait_for("typeof window.startCheck === 'function'", "the page's module script")
    await page.eval("window.startCheck()")
    return dict(await page.wait_for("window.checked", "the connection check", 40))


async def scenario_embed(world: World) -> dict[str, Any]:
    from wadud.state import keys

    listed_origin = f"http://localhost:{EMBED_PORT}"
    clinic_id = await world.app[keys.DB].fetchval(
        """INSERT INTO clinics (name, region, currency, allowed_origins)
           VALUES ('Shifa Clinic', 'PK', 'PKR', $1) RETURNING id""",
        [listed_origin],
    )
    world.room = f"clinic-{clinic_id.hex}-visit-1"
    link = world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    html = clinic_page(world.base, link)
    out: dict[str, Any] = {"base": world.base, "room": world.room}
    async with embedder(html) as listed_url, embedder(html, STRANGER_PORT) as stranger_url:
        clinic = await world.browsers.open("clinic", listed_url)
        framed = await frame_of(clinic, f"{world.base}/call/")
        await join(framed)
        seen = await clinic.wait_for(
            "window.seen.some((m) => m.state === 'joined') && window.seen", "a joined message"
        )
        world.mark("framed call joined")
        out["listed"] = {
            "origin": await clinic.eval("location.origin"),
            "seen": seen,
            "frame_context": await call_contexts(clinic, world.base),
            "frame_shows": await frame_shows(clinic),
            "fetch": await clinic.eval("window.tryFetch()"),
            "check": await checked(clinic),
        }
        world.mark("listed site checked")
        await world.browsers.close_page(clinic)

        stranger = await world.browsers.open("stranger", stranger_url)
        # The frame's load event fires for the error page the browser shows
        # in place of a refused page, as for a page.
        await stranger.wait_for("window.framedLoaded === true", "the frame's load")
        out["stranger"] = {
            "origin": await stranger.eval("location.origin"),
            "framed_loaded": True,
            "fetch": await stranger.eval("window.tryFetch()"),
            "opaque": await stranger.eval("window.opaque()"),
            "check": await checked(stranger),
            "seen": await stranger.eval("window.seen"),
            "frame_context": await call_contexts(stranger, world.base),
            "frame_shows": await frame_shows(stranger),
        }
        world.mark("stranger refused")
    out["timings"] = world.timings
    return out


SCENARIOS: dict[str, Scenario] = {"embed": scenario_embed}


if __name__ == "__main__":
    serve_scenarios(__doc__, SCENARIOS, 110)
