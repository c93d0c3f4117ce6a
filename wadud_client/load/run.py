"""One load run against a deployment, by its public URL: mint tokens with the
API key, join the publishers, then the subscribers at the ramp's pace, hold
for the duration, and gather what every subscriber measured.

Nothing here knows the server's code: it speaks HTTP (``POST
/api/v1/tokens``) and the signalling WebSocket, and the links speak ICE,
DTLS-SRTP and RTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from wadud_client.errors import ConnectionClosed, RequestFailed
from wadud_client.load import media
from wadud_client.load.cost import MetricsUnreadable, Scrape, cost, scrape
from wadud_client.load.drops import udp_drops
from wadud_client.load.peers import Publisher, Subscriber
from wadud_client.load.stats import percentiles
from wadud_client.load.wire import sdp
from wadud_client.load.wire.link import Certificate, LinkFailed

__all__ = [
    "AuthRefused",
    "LoadError",
    "Result",
    "ServerGone",
    "Shape",
    "Unreachable",
    "generator_cost",
    "run",
]


class LoadError(Exception):
    """A run that cannot go on; ``exit_code`` is the command's."""

    exit_code = 5


class Unreachable(LoadError):
    exit_code = 3


class AuthRefused(LoadError):
    exit_code = 4


class ServerGone(LoadError):
    """Every participant's signalling connection was closed by the server:
    the deployment died or went away mid-run."""


@dataclass(frozen=True)
class Shape:
    rooms: int = 1
    publishers: int = 1
    subscribers: int = 5
    duration: float = 30.0
    resolution: str = "medium"
    audio_only: bool = False
    video_only: bool = False
    #: Publishers send the camera as simulcast layers: the clips of every
    #: resolution up to ``resolution``, RIDs q, h, f from the lowest.
    simulcast: bool = False
    #: (name, URL) of each region's replicas (``--region NAME=URL``): room r's
    #: publishers join through region r mod k, its subscriber s through
    #: region s mod k, so every room spans the regions. Empty: all at ``url``.
    regions: tuple[tuple[str, str], ...] = ()
    #: Joins per second.
    ramp: float = 20.0
    seed: int | None = None
    #: This generator's share of the rooms, (i, n): rooms i-1, i-1+n, ...
    #: of the shape (``--shard i/n``; every shard runs with one seed).
    shard: tuple[int, int] = (1, 1)
    #: Subscribers per room that unprotect every packet for its stamp
    #: (latency, exact loss); the rest read headers only (``--sampled``).
    sampled: int = 5


@dataclass
class Interval:
    at: float
    joined: int
    receiving: int
    kbps: float
    errors: int


@dataclass
class Result:
    url: str
    shape: Shape
    started_at: str
    rooms: list[str] = field(default_factory=list)
    subscribers: list[dict[str, Any]] = field(default_factory=list)
    intervals: list[Interval] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    #: Each participant's media set up anew mid-run (its worker died or
    #: drained, or its link was lost): who, when (s after the run began),
    #: why, and how long until media flowed again.
    reconnects: list[dict[str, Any]] = field(default_factory=list)
    #: Each publisher: its label, the packets it sent per video layer (RID,
    #: "" without simulcast) and the keyframes the server asked of it.
    publishers: list[dict[str, Any]] = field(default_factory=list)
    #: The server's cost (wadud_client.load.cost), with --metrics-url.
    server: dict[str, Any] | None = None
    #: Every latency sample of every subscriber, ms (not written out: the
    #: summary's percentiles are).
    latencies_ms: list[float] = field(default_factory=list)
    #: The same, by the region a subscriber joined through (``--region``).
    region_latencies_ms: dict[str, list[float]] = field(default_factory=dict)
    #: Seconds the measured window lasted; shorter than asked when cut short.
    held: float = 0.0
    ended: str = "completed"
    #: The generator's own cost over the hold and what its sockets dropped
    #: (:func:`generator_cost`): the loss it caused, told from the server's.
    generator: dict[str, Any] | None = None


def generator_cost(
    cpu_s: float, held: float, packets: int, drops: int, expected: int
) -> dict[str, Any]:
    """This process's CPU over the hold (every thread), the packets its
    subscribers received in it, and the datagrams the kernel dropped on their
    sockets (a receive buffer full: the generator read too late) against
    all the packets they should have had."""
    return {
        "cpu_s": round(cpu_s, 3),
        "held_s": round(held, 2),
        "cpu_pct": round(100 * cpu_s / held, 1) if held > 0 else None,
        "packets": packets,
        "us_per_packet": round(1e6 * cpu_s / packets, 2) if packets else None,
        "socket_drops": drops,
        "expected": expected,
        "drop_pct": round(100 * drops / expected, 4) if expected else None,
    }


def _ws_url(url: str) -> str:
    parts = urlsplit(url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/ws", "", ""))


async def _mint(
    http: aiohttp.ClientSession, url: str, auth: aiohttp.BasicAuth, body: dict[str, Any]
) -> str:
    try:
        async with http.post(f"{url}/api/v1/tokens", json=body, auth=auth) as resp:
            if resp.status == 401:
                raise AuthRefused("the API key or secret was refused (401)")
            if resp.status == 403:
                raise AuthRefused(f"the key may not mint this room: {(await resp.text())[:200]}")
            if resp.status == 404:
                raise Unreachable(f"{url} has no /api/v1/tokens: is it a Wadud server?")
            if resp.status >= 400:
                raise LoadError(f"minting a token: HTTP {resp.status} {(await resp.text())[:200]}")
            return str((await resp.json())["token"])
    except aiohttp.ClientConnectionError as exc:
        raise Unreachable(f"cannot reach {url}: {exc}") from None
    except aiohttp.ClientResponseError as exc:
        raise LoadError(f"minting a token: {exc}") from None


def _kind(exc: BaseException) -> str:
    if isinstance(exc, RequestFailed):
        return f"refused:{exc.code}"
    if isinstance(exc, LinkFailed):
        return "media:link"
    if isinstance(exc, ConnectionClosed):
        return "signalling:closed"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientError | OSError):
        return "network"
    return type(exc).__name__


async def run(
    url: str,
    key: str,
    secret: str,
    shape: Shape,
    *,
    progress: Callable[[Interval, int], None] = lambda i, total: None,
    result: Result | None = None,
    metrics: Sequence[str] = (),
    metrics_token: str | None = None,
) -> Result:
    """Run ``shape`` against ``url``; ``result`` (when given) is filled as the
    run goes, so a caller that is interrupted still has what was measured."""
    url = url.rstrip("/")
    rng = random.Random(shape.seed)
    run_id = f"{rng.getrandbits(32):08x}"
    result = result or Result(url, shape, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    auth = aiohttp.BasicAuth(key, secret)
    certificate = Certificate()
    t0 = time.monotonic()
    regions = [(name, _ws_url(u.rstrip("/"))) for name, u in shape.regions] or [("", _ws_url(url))]
    publishers: list[Publisher] = []
    subscribers: list[Subscriber] = []
    joins: dict[str, float] = {}
    timeout = aiohttp.ClientTimeout(total=30, connect=10)
    # Unbounded: each participant's WebSocket holds a connection of this
    # pool for the whole run, and a bound would leave the next token's
    # request waiting for one (200 participants timed out at 64).
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        try:
            # The clip is encoded while the first token is minted: a wrong key
            # or URL ends the run at once.
            encoding = asyncio.ensure_future(asyncio.to_thread(_clips, shape))
            tokens = []
            try:
                index, shards = shape.shard
                for r in range(index - 1, shape.rooms, shards):
                    room = f"load-{run_id}-{r}"
                    result.rooms.append(room)
                    for p in range(shape.publishers):
                        body = {"room": room, "identity": f"pub-{p}", "subscribe": False}
                        tokens.append((r, room, p, await _mint(http, url, auth, body)))
                clip, layers = await encoding
            finally:
                if not encoding.done():
                    await asyncio.wait({encoding})
            for r, room, p, token in tokens:
                label = f"{room}/pub-{p}"
                _, ws = regions[r % len(regions)]
                publishers.append(
                    Publisher(
                        ws,
                        token,
                        http,
                        label,
                        certificate,
                        clip,
                        audio=not shape.video_only,
                        video=not shape.audio_only,
                        simulcast=layers,
                    )
                )
            for pub in publishers:
                await pub.join()
                await pub.publish()

            async def read_cost() -> dict[str, Scrape]:
                read: dict[str, Scrape] = {}
                for m in metrics:
                    try:
                        read[m] = await scrape(http, m, metrics_token)
                    except MetricsUnreadable:
                        result.errors["metrics"] += 1
                return read

            baseline = await read_cost()
            pace = 1.0 / shape.ramp if shape.ramp > 0 else 0.0
            starts: list[asyncio.Task[None]] = []

            async def start(sub: Subscriber) -> None:
                joins[sub.label] = time.monotonic()
                try:
                    await sub.join()
                except (RequestFailed, ConnectionClosed, LinkFailed, TimeoutError, OSError) as exc:
                    result.errors[_kind(exc)] += 1

            # One record a second from the first subscriber's join, so the
            # ramp shows as well as the hold.
            sampling = asyncio.create_task(
                _sample(subscribers, result, len(result.rooms) * shape.subscribers, progress)
            )
            for room in result.rooms:
                for s in range(shape.subscribers):
                    token = await _mint(
                        http, url, auth, {"room": room, "identity": f"sub-{s}", "publish": False}
                    )
                    region, ws = regions[s % len(regions)]
                    sub = Subscriber(
                        ws, token, http, f"{room}/sub-{s}", certificate, sampled=s < shape.sampled
                    )
                    sub.region = region
                    subscribers.append(sub)
                    starts.append(asyncio.create_task(start(sub)))
                    if pace:
                        await asyncio.sleep(pace)
            await asyncio.gather(*starts)
            start_cost = await read_cost()
            began, cpu, got = time.monotonic(), time.process_time(), _received(subscribers)
            try:
                await _hold(shape.duration, [*publishers, *subscribers], began)
            finally:
                result.held = time.monotonic() - began
                inodes = {s.link.inode for s in subscribers if s.link is not None}
                result.generator = generator_cost(
                    time.process_time() - cpu,
                    result.held,
                    _received(subscribers) - got,
                    sum(udp_drops(inodes).values()),
                    sum(t.sequence_expected for s in subscribers for t in s.tracks.values()),
                )
                sampling.cancel()
                await asyncio.wait({sampling})
            if metrics:
                result.server = cost(
                    baseline,
                    start_cost,
                    await read_cost(),
                    held=result.held,
                    subscribers=len(subscribers),
                )
        finally:
            for sub in subscribers:
                result.errors.update(e.split(": ", 1)[0] for e in sub.errors)
                result.subscribers.append(_record(sub, joins.get(sub.label, 0.0)))
                samples = [x for t in sub.tracks.values() for x in t.latencies_ms]
                result.latencies_ms.extend(samples)
                if sub.region:
                    result.region_latencies_ms.setdefault(sub.region, []).extend(samples)
            result.publishers.extend(
                {"label": p.label, "layers": dict(p.layer_packets),
                 "keyframes_asked": p.keyframes_asked}
                for p in publishers
            )  # fmt: skip
            for member in [*publishers, *subscribers]:
                result.reconnects.extend(
                    {"label": member.label, "at_s": round(r["at"] - t0, 2), "reason": r["reason"],
                     "back_s": r["back_s"]}
                    for r in member.reconnects
                )  # fmt: skip
                if member in publishers:
                    result.errors.update(e.split(": ", 1)[0] for e in member.errors)
            result.reconnects.sort(key=lambda r: r["at_s"])
            closing = [*subscribers, *publishers]
            await asyncio.gather(*(_quietly(m.close()) for m in closing))
    return result


async def _hold(duration: float, members: Sequence[Publisher | Subscriber], began: float) -> None:
    """The hold, checked each second: a server that closed every
    participant's connection ends it (ServerGone), with what was measured."""
    end = began + duration
    while (left := end - time.monotonic()) > 0:
        await asyncio.sleep(min(1.0, left))
        if members and all(m.gone for m in members):
            raise ServerGone(
                f"the server closed every participant's connection"
                f" {time.monotonic() - began:.1f} s into the hold"
            )


def _clips(shape: Shape) -> tuple[media.Clip, list[tuple[str, media.Clip]]]:
    """The run's clip, and with simulcast each layer's (RID, clip), lowest first."""
    clip = media.clip(shape.resolution, video=not shape.audio_only)
    if not shape.simulcast or shape.audio_only:
        return clip, []
    sizes = list(media.RESOLUTIONS)  # lowest first
    upto = sizes[: sizes.index(shape.resolution) + 1]
    rids = sdp.SIMULCAST_RIDS[: len(upto)]
    return clip, [(rid, media.clip(size)) for rid, size in zip(rids, upto, strict=True)]


def _received(subscribers: list[Subscriber]) -> int:
    return sum(t.packets for s in subscribers for t in s.tracks.values())


async def _sample(
    subscribers: list[Subscriber],
    result: Result,
    total: int,
    progress: Callable[[Interval, int], None],
) -> None:
    t0 = last = time.monotonic()
    octets = 0
    while True:
        await asyncio.sleep(1.0)
        now = time.monotonic()
        got = sum(t.octets for s in subscribers for t in s.tracks.values())
        interval = Interval(
            at=round(now - t0, 2),
            joined=sum(1 for s in subscribers if s.joined_at),
            receiving=sum(1 for s in subscribers if s.first_media_at),
            kbps=round((got - octets) * 8 / 1000 / (now - last), 1),
            errors=sum(result.errors.values()) + sum(len(s.errors) for s in subscribers),
        )
        octets, last = got, now
        result.intervals.append(interval)
        progress(interval, total)


async def _quietly(close: Any) -> None:
    with contextlib.suppress(Exception):
        await close


def _record(sub: Subscriber, asked: float) -> dict[str, Any]:
    tracks = list(sub.tracks.values())
    return {
        "label": sub.label,
        "region": sub.region or None,
        "joined": bool(sub.joined_at),
        "join_ms": round((sub.first_media_at - asked) * 1000, 1) if sub.first_media_at else None,
        "feedback": sub.feedbacks,
        "tracks": [
            {
                "kind": t.kind,
                "packets": t.packets,
                "octets": t.octets,
                "kbps": round(t.octets * 8 / 1000 / max(t.last_at - t.first_at, 1e-3), 1),
                "sampled": t.sampled,
                "expected": t.expected,
                "received": t.received,
                "loss_pct": round(t.loss_pct, 3),
                "nacked": t.nacked,
                "repaired": t.repaired,
                "plis": t.plis,
                "stamped": t.stamped,
                "stamps_sent": t.last_index - t.first_index + 1 if t.stamped else 0,
                "jitter_ms": round(t.jitter * 1000 / t.rate, 2),
                "latency_ms": percentiles(t.latencies_ms),
            }
            for t in tracks
        ],
    }
