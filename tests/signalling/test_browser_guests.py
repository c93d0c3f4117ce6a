"""Guests in a visit with real pages (docs/guests.md): an eight-person visit
where each participant receives exactly what its role allows, and an
interpreter whose invite is revoked mid-call.

As tests/signalling/test_browser_call.py: each test runs this module as a
driver inside a network namespace with only loopback; the driver serves the
app, opens one headless Chromium per page participant and drives the call
page as a user would; the rest of the participants are on the Python client
(aiortc), each in a process of its own (tests/signalling/python_guest.py).
It prints one JSON line, which the test asserts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.browser import DriverError, Page, click, join, participant_id, run_scenario
from tests.signalling.call_world import Scenario, World, serve_scenarios

DRIVER = "tests.signalling.test_browser_guests"


# -- the pytest side -----------------------------------------------------------


@pytest.mark.timeout(200)
async def test_eight_people_each_receive_what_their_role_allows(
    database_url: str, tmp_path: Path
) -> None:
    """A doctor, a patient and an interpreter on call pages; two family
    members, a clinician and two observers on the Python client, all but
    the first two invited. The patient lets the family and the observers in
    from the page. Everyone who may receive gets video and audio from every
    publisher; no one gets anything from an observer, who sends nothing."""
    result = await run_scenario(DRIVER, "eight", database_url, tmp_path, 150)
    print(json.dumps(result))
    publishers = set(result["publishers"])
    assert len(result["everyone"]) == 8
    assert len(publishers) == 6
    for name, got in result["received"].items():
        me = result["everyone"][name]
        assert set(got) == publishers - {me}, (name, got)
    assert result["tracks_by"] == sorted(publishers)
    assert result["approved_by_patient"] == 4
    assert result["refused_publish"] == "forbidden"


@pytest.mark.timeout(150)
async def test_a_revoked_interpreter_is_out_within_a_second(
    database_url: str, tmp_path: Path
) -> None:
    """The doctor invites an interpreter, whose page joins from the invite
    link; the doctor revokes the invite mid-call. The interpreter's page
    shows it was removed within 1 s of the doctor's request (the page's own
    clock), and its link no longer joins."""
    result = await run_scenario(DRIVER, "revoke", database_url, tmp_path, 100)
    print(json.dumps(result))
    assert result["joined_as"] == "interpreter"
    assert result["doctor_saw"] == "Gul"
    assert result["screen"] == "ended" and result["title"] == "You were removed from the call"
    assert result["removed_after_ms"] < 1000, result
    assert result["again"] == {"state": "failed", "title": "This invitation no longer works"}


# -- the driver: runs inside the namespace ------------------------------------


async def _invite(world: World, host_token: str, role: str, name: str) -> dict[str, Any]:
    from aiohttp import ClientSession

    async with ClientSession() as http:
        resp = await http.post(
            f"{world.base}/api/v1/calls/invites",
            json={"token": host_token, "role": role, "name": name},
        )
        body: dict[str, Any] = await resp.json()
        if resp.status != 201:
            raise DriverError(f"invite {role}: {resp.status} {body}")
        return body


async def _redeem(world: World, url: str) -> str:
    from aiohttp import ClientSession

    invite = url.split("invite=")[1]
    invite_id, key = invite.split(".")
    async with ClientSession() as http:
        resp = await http.post(f"{world.base}/api/v1/invites/{invite_id}/redeem", json={"key": key})
        body = await resp.json()
        if resp.status != 200:
            raise DriverError(f"redeem: {resp.status} {body}")
        return str(body["token"])


def _token_of(link: str) -> str:
    return link.split("token=")[1]


async def _state(page: Page) -> dict[str, Any]:
    return dict(
        await page.eval(
            "({state: document.body.dataset.state || null,"
            " screen: document.body.dataset.screen,"
            " title: document.getElementById('ended-title').textContent})"
        )
    )


async def scenario_revoke(world: World) -> dict[str, Any]:
    doctor_link = world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    doctor = await world.browsers.open("doctor", doctor_link)
    await join(doctor)
    world.mark("doctor joined")
    made = await _invite(world, _token_of(doctor_link), "interpreter", "Gul")
    interpreter = await world.browsers.open("interpreter", made["url"])
    await join(interpreter)
    world.mark("interpreter joined")
    me = await interpreter.eval("window.wadudCall.me.role")
    seen = await doctor.wait_for(
        "[...window.wadudCall.participants.values()].map(p => p.name).find(n => n === 'Gul')",
        "the interpreter in the doctor's call",
    )
    token = await interpreter.eval(f"sessionStorage.getItem('wadud-call-token:{world.room}')")
    # The page's own clock, from just before the request to when its call
    # said it was removed.
    await interpreter.eval(
        "window.wadudCall.addEventListener('state', (e) => {"
        " if (e.detail.state === 'removed') window.removedAt = performance.now(); }), true"
    )
    sent = await interpreter.eval("performance.now()")
    from aiohttp import ClientSession

    async with ClientSession() as http:
        resp = await http.post(
            f"{world.base}/api/v1/calls/invites/{made['id']}/revoke",
            json={"token": _token_of(doctor_link)},
        )
        if resp.status != 204:
            raise DriverError(f"revoke: {resp.status} {await resp.text()}")
    removed_at = await interpreter.wait_for("window.removedAt", "the page removed")
    await interpreter.wait_for("document.body.dataset.screen === 'ended'", "the end screen")
    world.mark("interpreter removed")
    ended = await _state(interpreter)
    # The same token again, in a fresh page: refused at join.
    again = await world.browsers.open("again", f"{world.base}/call/{world.room}?token={token}")
    await join(again, expect="failed")
    after = await _state(again)
    return {
        "joined_as": me,
        "doctor_saw": seen,
        "screen": ended["screen"],
        "title": ended["title"],
        "removed_after_ms": round(removed_at - sent, 1),
        "again": {"state": after["state"], "title": after["title"]},
        "timings": world.timings,
    }


@dataclass
class _Guest:
    """A participant on the Python client in its own process
    (tests/signalling/python_guest.py), and what it has said so far."""

    name: str
    proc: asyncio.subprocess.Process
    heard: dict[str, Any] = field(default_factory=dict)
    listening: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, world: World, name: str, *flags: str) -> _Guest:
        """Started without its token (:meth:`join` gives it)."""
        # In the driver's process group: ended with it, whatever happens.
        log = os.open(world.browsers.work / f"guest-{name}.log", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.signalling.python_guest",
                "--url", f"{world.base}/ws", "--name", name, *flags,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
            )  # fmt: skip
        finally:
            os.close(log)
        guest = cls(name, proc)
        guest.listening = asyncio.create_task(guest._listen())
        return guest

    def join(self, token: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(token.encode() + b"\n")

    async def _listen(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.heard.update(json.loads(line))
        self.heard["exited"] = await self.proc.wait()

    async def until(self, predicate: Callable[[dict[str, Any]], object], within: float) -> bool:
        """Whether what it said met ``predicate`` within ``within`` seconds
        (no, at once, if it exited)."""
        from tests.polling import wait_until

        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: predicate(self.heard) or "exited" in self.heard, within)
        return bool(predicate(self.heard))

    async def need(self, predicate: Callable[[dict[str, Any]], object], what: str) -> None:
        if not await self.until(predicate, 30):
            raise DriverError(f"{self.name}: {what} not within 30 s; it said {self.heard}")

    async def stop(self) -> None:
        """Close its stdin: it leaves the call and exits (or is killed)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        if self.listening is not None:
            await self.listening


async def scenario_eight(world: World) -> dict[str, Any]:
    guests = [
        ("son", "family", True),
        ("daughter", "family", True),
        ("specialist", "clinician", True),
        ("trainee", "observer", False),
        ("auditor", "observer", False),
    ]
    clients: dict[str, _Guest] = {}
    approved = 0
    try:
        # Their processes first: their imports overlap the pages' start.
        for name, _, publishes in guests:
            flags = ["--publish"] if publishes else []
            if name == "trainee":
                flags.append("--try-publish")  # a hand-written offer, refused
            clients[name] = await _Guest.start(world, name, *flags)
        doctor_link = world.link("dr-amina", "Dr Amina", "doctor", admin=True)
        host = _token_of(doctor_link)
        doctor = await world.browsers.open("doctor", doctor_link + "&simulcast=0")
        await join(doctor)
        patient = await world.browsers.open(
            "patient", world.link("pt-991", "Bilal", "patient") + "&simulcast=0"
        )
        await join(patient)
        world.mark("doctor and patient joined")
        interpreter_invite = await _invite(world, host, "interpreter", "Gul")
        interpreter = await world.browsers.open(
            "interpreter", interpreter_invite["url"] + "&simulcast=0"
        )
        await join(interpreter)
        world.mark("interpreter joined")
        for name, role, _ in guests:
            made = await _invite(world, host, role, name.title())
            client = clients[name]
            client.join(await _redeem(world, made["url"]))
            await client.need(lambda h: "state" in h, "join answered")
            if made["needs_approval"]:
                # The patient's page asks; the patient lets them in.
                asked = "!document.getElementById('guest-ask').hidden"
                await patient.wait_for(asked, f"the patient asked about {name}")
                await click(patient, "#guest-yes")
                approved += 1
            await client.need(lambda h: h.get("in"), "in the room")
        world.mark("everyone in")
        await clients["trainee"].need(lambda h: "refused" in h, "the offer answered")
        pages = {"doctor": doctor, "patient": patient, "interpreter": interpreter}
        everyone = {n: await participant_id(p) for n, p in pages.items()}
        everyone.update({n: str(c.heard["participant"]) for n, c in clients.items()})
        publishers = [everyone[n] for n in ("doctor", "patient", "interpreter")]
        publishers += [everyone[n] for n, _, publishes in guests if publishes]

        def full(got: set[str], me: str) -> bool:
            return got == set(publishers) - {me}

        def flowing(heard: dict[str, Any]) -> set[str]:
            got = heard.get("receiving", {})
            return {p for p in got if got[p] == ["audio", "video"]}

        received: dict[str, list[str]] = {}
        for name, client in clients.items():
            me = everyone[name]
            # Not all in time: the result says who was missing.
            await client.until(lambda h, m=me: full(flowing(h), m), within=40)
            received[name] = sorted(flowing(client.heard))
        expr = (
            "window.wadudCall.stats().then(s => Object.entries(s.participants)"
            ".filter(([, v]) => v.framesDecoded > 0 && v.audioPackets > 0).map(([k]) => k))"
        )
        for name, page in pages.items():
            me = everyone[name]
            deadline = asyncio.get_running_loop().time() + 40
            while True:
                got = set(await page.eval(expr))
                if full(got, me) or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.3)
            received[name] = sorted(got)
        world.mark("everyone receiving")
        return {
            "everyone": everyone,
            "publishers": publishers,
            "received": received,
            "tracks_by": clients["auditor"].heard.get("tracks_by"),
            "approved_by_patient": approved,
            "refused_publish": clients["trainee"].heard["refused"],
            "timings": world.timings,
        }
    finally:
        await asyncio.gather(*(c.stop() for c in clients.values()), return_exceptions=True)


async def scenario_shots(world: World) -> dict[str, Any]:
    """Screenshots of the guests' screens, desktop and an upright phone, to
    look at (not a test): the doctor's People panel with its invites, the
    patient asked about a family member, a revoked guest's end screen. Into
    ``$WADUD_SCREENSHOTS`` (default: the work folder)."""
    import base64
    import os

    folder = Path(os.environ.get("WADUD_SCREENSHOTS") or world.browsers.work)
    doctor_link = world.link("dr-amina", "Dr Amina", "doctor", admin=True)
    host = _token_of(doctor_link)
    doctor = await world.browsers.open("doctor", doctor_link)
    await join(doctor)
    patient = await world.browsers.open("patient", world.link("pt-991", "Bilal", "patient"))
    await join(patient)
    await _invite(world, host, "interpreter", "Gul Khan")
    son = await _invite(world, host, "family", "Omar (son)")
    guest = await world.browsers.open("son", son["url"])
    await join(guest, expect="waiting")
    await patient.wait_for("!document.getElementById('guest-ask').hidden", "the patient asked")
    # Wide screens open the People panel by themselves; a phone by the button.
    opened = "document.getElementById('side').hidden || document.getElementById('admin').hidden"
    if await doctor.eval(opened):
        await click(doctor, "#open-people")
    await doctor.wait_for("document.querySelectorAll('#invite-list li').length >= 1", "invites")
    taken = []
    for name, page in (("doctor-people", doctor), ("patient-asked", patient)):
        for kind, (w, h) in (("desktop", (1280, 800)), ("phone", (390, 844))):
            await page.cdp.send(
                "Emulation.setDeviceMetricsOverride",
                width=w, height=h, deviceScaleFactor=1, mobile=kind == "phone",
            )  # fmt: skip
            await asyncio.sleep(0.8)
            if page is doctor and await doctor.eval(opened):
                await click(doctor, "#open-people")  # narrowed to a phone: it closed
                await asyncio.sleep(0.4)
            shot = await page.cdp.send("Page.captureScreenshot", format="png")
            path = folder / f"guests-{name}-{kind}.png"
            path.write_bytes(base64.b64decode(shot["data"]))
            taken.append(str(path))
    return {"taken": taken}


SCENARIOS: dict[str, Scenario] = {
    "eight": scenario_eight,
    "revoke": scenario_revoke,
    "shots": scenario_shots,
}


if __name__ == "__main__":
    serve_scenarios(__doc__, SCENARIOS, 150)
