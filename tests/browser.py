"""Headless Chromium pages driven over the DevTools protocol, for the browser
call tests (tests/signalling/test_browser_call.py, test_cluster.py).

Both run a driver inside a loopback-only network namespace
(:func:`namespace_command`); the driver starts one Chromium per participant
(:class:`Browsers`, each in its own process group, written down under the
work folder so the test can end them if the driver dies) and reads what each
page receives from ``window.wadudCall.stats()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest

from tests.chromium import CHROMIUM
from tests.chromium import FLAGS as CHROMIUM_FLAGS

#: The repository: browser tests' drivers run from it (``python -m tests...``).
ROOT = Path(__file__).resolve().parents[1]


class Timeline(Protocol):
    """Where a scenario notes when each step happened."""

    def mark(self, what: str) -> None: ...


FLAGS = [
    *CHROMIUM_FLAGS,
    "--remote-debugging-port=0",
    "--window-size=960,640",
]


def namespace_command() -> list[str]:
    """A prefix that runs a command in a fresh network namespace with only
    loopback up; skips the test where that or Chromium is missing."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("needs /usr/bin/chromium")
    # Root may make a namespace outright; anyone else maps themselves to root
    # in a user namespace first.
    user = [] if os.geteuid() == 0 else ["--map-root-user"]
    return ["unshare", *user, "--net", "--", "sh", "-c", 'ip link set lo up && exec "$0" "$@"']


def browser_groups(work: Path) -> list[int]:
    """The process groups of the browsers a driver started under ``work``."""
    path = work / "browser-groups"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def kill_groups(groups: list[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


async def run_driver(
    module: str,
    args: list[str],
    work: Path,
    budget: float,
    *,
    namespace: list[str] | None = None,
    also_kill: Callable[[Path], list[int]] | None = None,
) -> dict[str, Any]:
    """Run ``python -m module *args`` as a browser test's driver in its own
    namespace (``namespace``: the command that makes it; a loopback-only one
    by default) and return the JSON result of its last line. Fails the test
    with the driver's last lines when it gives none or reports an error. The
    browsers it started (and ``also_kill(work)``'s groups) are ended by
    group, in case the driver could not."""
    cmd = [*(namespace or namespace_command()), sys.executable, "-m", module, *args]
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), budget + 30)
    except TimeoutError:
        out = b"driver timed out"
        kill_groups([proc.pid])
    finally:
        kill_groups(browser_groups(work))
        if also_kill is not None:
            kill_groups(also_kill(work))
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
    lines = out.decode(errors="replace").strip().splitlines()
    (work / "driver.out").write_text("\n".join(lines))
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        pytest.fail("driver gave no result:\n" + "\n".join(lines[-60:]))
    if "error" in result:
        logs = "\n".join(lines[-40:-1])
        pytest.fail(f"{result['error']}\n{json.dumps(result, indent=1)[:8000]}\n{logs}")
    return result


async def run_scenario(
    module: str,
    scenario: str,
    database_url: str,
    work: Path,
    budget: float,
    *,
    namespace: list[str] | None = None,
    also_kill: Callable[[Path], list[int]] | None = None,
) -> dict[str, Any]:
    """Run one ``scenario`` of a driver module made with :func:`driver_main`
    (through :func:`run_driver`, which says the rest) and return its result."""
    args = [scenario, "--database-url", database_url, "--work", str(work), "--budget", str(budget)]
    return await run_driver(module, args, work, budget, namespace=namespace, also_kill=also_kill)


def not_flowing(pair: dict[str, Any]) -> str | None:
    """What did not flow between the two readings of what ``to`` receives
    from ``frm`` (video frames decoded, audio packets arrived and samples
    played out), with both readings; None when all of it did."""
    before, after = pair["before"], pair["after"]
    stopped = [
        what
        for what, ok in (
            ("video", after["framesDecoded"] > before["framesDecoded"] > 0),
            ("audio packets", after["audioPackets"] > before["audioPackets"] > 0),
            ("audio samples", after["totalSamplesReceived"] > before["totalSamplesReceived"]),
        )
        if not ok
    ]
    if not stopped:
        return None
    return f"{pair['to']} from {pair['frm']}, no {', '.join(stopped)}: {before} -> {after}"


def assert_flowing(pairs: list[dict[str, Any]]) -> None:
    """Every pair flowed (:func:`not_flowing`); all that did not are named."""
    stopped = [why for why in map(not_flowing, pairs) if why is not None]
    assert not stopped, "\n".join(stopped)


class DriverError(Exception):
    """A step did not happen in time; carries what the pages showed."""


#: A driver module's ``drive(scenario, database_url, work, budget)``.
Drive = Callable[[str, str, Path, float], Coroutine[Any, Any, dict[str, Any]]]


def driver_main(doc: str | None, scenarios: Iterable[str], drive: Drive, budget: float) -> None:
    """The command line of a browser test's driver module (what
    :func:`run_driver` runs): ``SCENARIO --database-url URL --work DIR
    [--budget SECONDS]``; the server's log goes to ``DIR/server.log`` and the
    result of ``drive`` is printed as one JSON line."""
    spec = sys.modules["__main__"].__spec__
    module = spec.name if spec is not None else "MODULE"
    by_hand = (
        "Run one scenario by hand (as root, from the repository): unshare --net -- sh -c"
        f" 'ip link set lo up && exec .venv/bin/python -m {module} SCENARIO"
        " --database-url URL --work /tmp/x'"
    )
    parser = argparse.ArgumentParser(
        description=doc, epilog=by_hand, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("scenario", choices=sorted(scenarios))
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--budget", type=float, default=budget)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(filename=args.work / "server.log", level=logging.INFO)
    import uvloop

    result = uvloop.run(drive(args.scenario, args.database_url, args.work, args.budget))
    print(json.dumps(result), flush=True)


async def play(
    scenario: Awaitable[dict[str, Any]],
    browsers: Browsers,
    timings: dict[str, float],
    budget: float,
    also: Callable[[], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run a driver's ``scenario`` within ``budget`` seconds and close the
    browsers. When a step did not happen in time, the result is the error,
    what each page showed, the ``timings`` so far and ``also()``'s keys."""
    try:
        return await asyncio.wait_for(scenario, budget)
    except (DriverError, TimeoutError) as exc:
        pages = {p.name: await p.snapshot() for p in browsers.pages}
        more = also() if also is not None else {}
        return {"error": str(exc) or "timed out", "pages": pages, **more, "timings": timings}
    finally:
        await browsers.close()


class Cdp:
    """A tiny Chrome DevTools protocol client over one browser-page socket;
    ``session`` addresses an attached frame (flat sessions)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.contexts: dict[tuple[str, int], dict[str, Any]] = {}
        self.frames: dict[str, dict[str, Any]] = {}  # session id -> target info
        self.tasks: set[asyncio.Future[None]] = set()
        #: Uncaught errors, unhandled promise rejections and console.error
        #: calls of the page and its frames, as the DevTools console says them.
        self.errors: list[str] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self.waiting.pop(data["id"], None)
                if fut is not None and not fut.done():
                    fut.set_result(data)
                continue
            method, params, session = (
                data.get("method"),
                data.get("params", {}),
                data.get("sessionId", ""),
            )
            if method == "Runtime.executionContextCreated":
                ctx = params["context"]
                self.contexts[(session, ctx["id"])] = ctx
            elif method == "Runtime.executionContextDestroyed":
                self.contexts.pop((session, params["executionContextId"]), None)
            elif method == "Runtime.executionContextsCleared":
                for key in [k for k in self.contexts if k[0] == session]:
                    del self.contexts[key]
            elif method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                said = details.get("exception", {}).get("description") or details.get("text")
                self.errors.append(f"{details.get('text', '')} {said}".strip())
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                said = " ".join(
                    str(a.get("value", a.get("description", ""))) for a in params["args"]
                )
                self.errors.append(f"console.error: {said}")
            elif method == "Target.attachedToTarget":
                self.frames[params["sessionId"]] = params["targetInfo"]
                # The frame's scripts run once it is told to go on.
                task = asyncio.ensure_future(self._start_frame(params["sessionId"]))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(DriverError("DevTools connection closed"))

    async def _start_frame(self, session: str) -> None:
        with contextlib.suppress(DriverError):
            await self.send("Runtime.enable", session=session)
            await self.send("Runtime.runIfWaitingForDebugger", session=session)

    async def send(self, method: str, session: str = "", **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = fut
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        await self.ws.send_str(json.dumps(msg))
        reply = await asyncio.wait_for(fut, 30)
        if "error" in reply:
            raise DriverError(f"{method}: {reply['error']}")
        return dict(reply["result"])


class Scripted:
    """A browser tab that runs script (``eval``), can wait for a script's
    answer to become true and say what the call page in it shows;
    Chromium's :class:`Page` and Firefox's page."""

    name: str

    async def eval(self, expression: str) -> Any:
        raise NotImplementedError

    async def wait_for(self, expression: str, what: str, within: float = 20) -> Any:
        deadline = time.monotonic() + within
        while True:
            with contextlib.suppress(DriverError):
                value = await self.eval(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise DriverError(f"{self.name}: {what} did not happen in {within:.0f} s")
            await asyncio.sleep(0.2)

    async def snapshot(self) -> dict[str, Any]:
        """What the page shows, for a failure report."""
        try:
            return dict(
                await self.eval(
                    """(async () => ({screen: document.body.dataset.screen,
                        state: document.body.dataset.state,
                        toast: document.getElementById('toast')?.textContent,
                        error: document.getElementById('device-error')?.textContent,
                        me: window.wadudCall?.me?.id,
                        pcs: [window.wadudCall?.publishPc?.connectionState,
                              window.wadudCall?.subscribePc?.connectionState],
                        stats: window.wadudCall ? await window.wadudCall.stats() : null,
                        tiles: [...document.querySelectorAll('#grid .tile')].map(t => {
                          const v = t.querySelector('video');
                          return [t.dataset.key, t.className, v.videoWidth, v.paused,
                                  v.srcObject?.getTracks().map(x => x.kind + ':' + x.readyState)];
                        })}))()"""
                )
            )
        except DriverError as exc:
            return {"error": str(exc)}


@dataclass
class Page(Scripted):
    """One participant: a Chromium with one tab, and where to run script in
    it (the tab, or the call page inside its iframe)."""

    name: str
    proc: asyncio.subprocess.Process
    http: aiohttp.ClientSession
    cdp: Cdp
    session: str = ""
    context: int | None = None
    log: list[str] = field(default_factory=list)

    async def eval(self, expression: str) -> Any:
        params: dict[str, Any] = {
            "expression": expression,
            "awaitPromise": True,
            "returnByValue": True,
            # As if the user clicked: joining starts audio playback.
            "userGesture": True,
        }
        if self.context is not None:
            params["contextId"] = self.context
        reply = await self.cdp.send("Runtime.evaluate", session=self.session, **params)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise DriverError(f"{self.name}: {expression[:80]}: {text}")
        return reply["result"].get("value")


def _log_fd(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def _note_group(work: Path, pgid: int) -> None:
    with (work / "browser-groups").open("a") as f:
        f.write(f"{pgid}\n")


class Browsers:
    """Starts one Chromium per participant, each in its own process group
    (written down so the test can end them even if this driver dies)."""

    def __init__(self, work: Path, home: Path | None = None) -> None:
        self.work = work
        #: The browsers' HOME, where Chromium finds the certificates a user
        #: trusts (tests.chromium.trust); None: this process's.
        self.home = home
        self.pages: list[Page] = []

    async def open(self, name: str, url: str, *flags: str) -> Page:
        # A name opened again (a scenario run again) gets a fresh profile.
        n = sum(1 for p in self.pages if p.name == name)
        profile = self.work / (f"chrome-{name}" if not n else f"chrome-{name}-{n}")
        while profile.exists():
            n += 1
            profile = self.work / f"chrome-{name}-{n}"
        profile.mkdir(parents=True)
        log = _log_fd(profile.with_name(profile.name + ".log"))
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, *FLAGS, *flags, f"--user-data-dir={profile}", url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
            env=None if self.home is None else {**os.environ, "HOME": str(self.home)},
        )  # fmt: skip
        os.close(log)
        _note_group(self.work, proc.pid)
        port_file = profile / "DevToolsActivePort"
        for _ in range(150):
            if port_file.exists() and port_file.read_text().strip():
                break
            await asyncio.sleep(0.1)
        else:
            raise DriverError(f"{name}: Chromium did not open its DevTools port")
        port = int(port_file.read_text().split()[0])
        http = aiohttp.ClientSession()
        async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
            targets = await resp.json()
        (target,) = [t for t in targets if t["type"] == "page"]
        ws = await http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        cdp = Cdp(ws)
        await cdp.send("Runtime.enable")
        # Frames of other sites live in their own processes: attach to them.
        await cdp.send(
            "Target.setAutoAttach", autoAttach=True, waitForDebuggerOnStart=False, flatten=True
        )
        page = Page(name, proc, http, cdp)
        self.pages.append(page)
        return page

    async def close(self) -> None:
        for page in list(self.pages):
            await self.close_page(page)

    async def close_page(self, page: Page) -> None:
        """End one page's browser (its profile stays, for its logs)."""
        if page in self.pages:
            self.pages.remove(page)
        with contextlib.suppress(Exception):
            await page.cdp.ws.close()
        await page.http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(page.proc.pid, signal.SIGKILL)
        await page.proc.wait()


async def join(page: Page, expect: str = "joined") -> None:
    """Wait for the device check, press "Join now", wait for ``expect``."""
    await page.wait_for(
        "document.body.dataset.screen === 'prejoin'"
        " && typeof document.getElementById('join').onclick === 'function'",
        "the device check",
    )
    await page.eval("document.getElementById('join').click(), true")
    await page.wait_for(f"document.body.dataset.state === '{expect}'", f"state {expect}")


async def participant_id(page: Page) -> str:
    return str(await page.wait_for("window.wadudCall?.me?.id", "a participant id"))


#: Seconds after the first reading within which every pair must have moved on.
FLOW_WINDOW = 8.0


async def receiving(world: Timeline, pages: list[Page], within: float = 30) -> list[dict[str, Any]]:
    """Wait until every page decodes video and receives audio from every
    other; then read again, 1.5 s on and every half second after until
    every pair has moved on (:func:`not_flowing`) or :data:`FLOW_WINDOW`
    passed, and give both readings per pair. A page starved of CPU decodes
    in fits: one new frame in 1.5 s, or none, from a video it plays."""
    ids = {p.name: await participant_id(p) for p in pages}
    expr = "window.wadudCall.stats().then(s => s.participants)"

    def ready(stats: dict[str, Any], frm: str) -> bool:
        s = stats.get(ids[frm])
        return bool(s and s["framesDecoded"] > 0 and s["audioPackets"] > 0)

    deadline = time.monotonic() + within
    while True:
        first = {p.name: await p.eval(expr) for p in pages}
        if all(ready(first[p.name], q.name) for p in pages for q in pages if p is not q):
            break
        if time.monotonic() > deadline:
            raise DriverError(f"media did not reach everyone in {within:.0f} s: {first}")
        await asyncio.sleep(0.3)
    world.mark("flowing " + "+".join(ids))
    until = time.monotonic() + FLOW_WINDOW
    await asyncio.sleep(1.5)
    while True:
        second = {p.name: await p.eval(expr) for p in pages}
        pairs = [
            {"to": p.name, "frm": q.name, "before": first[p.name][ids[q.name]],
             # A peer gone by the second reading (its tracks removed) has
             # nothing: zeros, for assert_flowing to say so.
             "after": second[p.name].get(ids[q.name], dict.fromkeys(first[p.name][ids[q.name]], 0))}
            for p in pages for q in pages if p is not q
        ]  # fmt: skip
        if time.monotonic() > until or all(not_flowing(pair) is None for pair in pairs):
            return pairs
        await asyncio.sleep(0.5)


async def captions(page: Page) -> list[str]:
    return list(
        await page.eval(
            "[...document.querySelectorAll('#grid .tile figcaption')].map(c => c.textContent)"
        )
    )


async def frame_of(page: Page, url: str) -> Page:
    """A Page that runs script in the frame of ``page`` showing ``url`` (or
    a URL under it): a frame of another site has its own target (site
    isolation), a frame of the same site only its own context."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        for (session, ctx_id), ctx in list(page.cdp.contexts.items()):
            if not ctx.get("auxData", {}).get("isDefault") or not url.startswith(ctx["origin"]):
                continue
            frame = Page(f"{page.name}-frame", page.proc, page.http, page.cdp, session, ctx_id)
            with contextlib.suppress(DriverError):
                if str(await frame.eval("location.href")).startswith(url):
                    return frame
        await asyncio.sleep(0.2)
    contexts = [c.get("origin") for c in page.cdp.contexts.values()]
    raise DriverError(f"no frame showing {url} in {page.name}; contexts: {contexts}")


async def from_peer(page: Page, peer: str) -> dict[str, int]:
    """What ``page`` has received from participant ``peer`` so far (zeros
    when nothing: a removed track takes its counters with it)."""
    stats = await page.eval(f"window.wadudCall.stats().then(s => s.participants['{peer}'])")
    zero = {"framesDecoded": 0, "videoPackets": 0, "audioPackets": 0, "totalSamplesReceived": 0}
    return dict(stats or zero)


async def flow(page: Page, peer: str, seconds: float = 1.5) -> dict[str, int]:
    """How much of each counter rose over ``seconds``."""
    before = await from_peer(page, peer)
    await asyncio.sleep(seconds)
    after = await from_peer(page, peer)
    return {k: after[k] - before.get(k, 0) for k in after}


async def rises(page: Page, peer: str, least: dict[str, int], within: float = 15) -> dict[str, int]:
    """How much each counter from ``peer`` rose from now until every one in
    ``least`` rose by more than its figure, or ``within`` seconds passed: a
    starved browser decodes in bursts, so a fixed window can catch a pause
    (ci166: 8 frames in 2 s after two freezes)."""
    before = await from_peer(page, peer)
    deadline = time.monotonic() + within
    while True:
        await asyncio.sleep(0.25)
        now = await from_peer(page, peer)
        rise = {k: now[k] - before.get(k, 0) for k in now}
        if all(rise.get(k, 0) > n for k, n in least.items()) or time.monotonic() > deadline:
            return rise


async def click(page: Page, selector: str) -> None:
    await page.eval(f"document.querySelector({json.dumps(selector)}).click(), true")


async def until_flowing(page: Page, peer: str, key: str, within: float = 15) -> dict[str, int]:
    deadline = time.monotonic() + within
    while True:
        rise = await flow(page, peer, 1.0)
        if rise[key] > 0 or time.monotonic() > deadline:
            return rise
