"""The SFU benchmark's driver: rooms over signalling, and one scenario run measured.

:class:`Participant` is one participant's ``/ws`` connection (docs/protocol.md,
"Calls (signalling)"): requests with ids, events, the worker's offers
answered through the load process. :class:`Bench` opens a scenario's rooms
(over ``/ws``, or as MediaControl requests over Redis with ``--media``), has
the load process connect and drive every transport, and turns what it
counted into a :class:`~benchmarks.sfu.measure.ScenarioResult`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import itertools
import json
import math
import os
import random
import time
from collections import Counter
from dataclasses import asdict
from typing import Any

import aiohttp
import psutil  # type: ignore[import-untyped]

from benchmarks.common import signalling_frames
from benchmarks.sfu import load, peer
from benchmarks.sfu.measure import QUIET, ScenarioResult, others_cpu, percentiles, switch_times
from benchmarks.sfu.scenarios import LARGE_VIEW, SMALL_VIEW, Scenario
from benchmarks.sfu.servers import HOST, SECRET, Server, gc_pauses
from wadud.config import Settings
from wadud.web import auth


class SignallingError(RuntimeError):
    pass


class Participant:
    """One participant's WebSocket: requests with ids, events, pings answered."""

    _ids = itertools.count(1)

    def __init__(
        self, bench: Bench, room: str, identity: str, *, publish: bool, admin: bool
    ) -> None:
        self.bench = bench
        self.room = room
        self.identity = identity
        self.publish = publish
        self.admin = admin
        self.region = ""  # where its join token sends its media; empty: its API replica's
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pid = ""
        self.pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.reader: asyncio.Task[None] | None = None
        self.joined = asyncio.Event()
        self.pub_tid = 0
        self.sub_tid = 0
        self.number = 0  # stream number when publishing
        self.ssrc = 0
        self.audio_number = 0  # its audio track's stream number, if any
        self.audio_ssrc = 0
        # Every other receiver answers Opus without RED, as aiortc does.
        self.takes_red = not identity.startswith("sub") or int(identity[3:] or 0) % 2 == 0
        self.layers: list[load.Layer] = []  # a simulcast publisher's, lowest first
        self.offered: list[dict[str, Any]] = []  # tracks of the last answered offer
        self.offers = 0
        self.changed = asyncio.Event()
        self.errors: list[dict[str, Any]] = []
        self._answering: asyncio.Lock = asyncio.Lock()
        # Leaving: the offers others' departures cause need no answer.
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.remote: Any = None  # RemoteMedia in --media mode: no WebSocket

    def ws_url(self) -> str:
        """Where this participant's WebSocket connects."""
        return f"ws://{HOST}:{self.bench.server.port}/ws"

    async def connect(self, token: str) -> None:
        self.ws = await self.bench.http.ws_connect(self.ws_url(), max_msg_size=1 << 20)
        self.reader = asyncio.create_task(self._read())
        reply = await self.request("join", token=token)
        if reply["type"] == "waiting":
            await asyncio.wait_for(self.joined.wait(), 20)
        elif reply["type"] != "joined":
            raise SignallingError(f"{self.identity}: join answered {reply}")
        else:
            self.pid = reply["participant"]["id"]
            self.joined.set()

    async def request(self, kind: str, within: float = 30.0, **fields: Any) -> dict[str, Any]:
        assert self.ws is not None
        rid = str(next(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.ws.send_str(json.dumps({"v": 1, "type": kind, "id": rid, **fields}))
        try:
            reply = await asyncio.wait_for(fut, within)
        finally:
            self.pending.pop(rid, None)
        if reply["type"] == "error":
            raise SignallingError(f"{self.identity}: {kind} refused: {reply}")
        return reply

    async def _read(self) -> None:
        assert self.ws is not None
        async for frame in signalling_frames(self.ws):
            kind = frame.get("type")
            ref = frame.get("ref")
            if ref is not None and ref in self.pending:
                if kind == "waiting":
                    self.pid = frame["participant"]["id"]
                self.pending[ref].set_result(frame)
                continue
            if kind == "offer" and not self.closing:
                self._spawn(self._answer(frame))
            elif kind == "joined":
                self.pid = frame["participant"]["id"]
                self.joined.set()
            elif kind == "waiting" and self.admin:
                for who in frame.get("waiting", []):
                    self._spawn(self._admit(who["id"]))
            elif kind == "error":
                self.errors.append(frame)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, pid: str) -> None:
        try:
            await self.request("admit", participant_id=pid)
        except SignallingError as exc:
            self.errors.append({"admit": str(exc)})

    async def _answer(self, frame: dict[str, Any]) -> None:
        async with self._answering:
            if not self.sub_tid:
                self.sub_tid = await self.bench.load.call("new")
            try:
                answer, _ = await self.bench.load.call(
                    "answer", self.sub_tid, frame["sdp"], self.bench.transport_cc, self.takes_red
                )
                await self.request("answer", sdp=answer)
            except (RuntimeError, SignallingError) as exc:
                self.errors.append({"answer": str(exc)})
                return
            self.offered = list(frame.get("tracks", []))
            self.offers += 1
            self.changed.set()

    async def close(self) -> None:
        self.closing = True
        if self.remote is not None:
            with contextlib.suppress(Exception):
                await self.remote.leave(self.room, self.pid)
        if self.ws is not None and not self.ws.closed:
            with contextlib.suppress(SignallingError, TimeoutError, ConnectionError):
                await self.request("leave", within=5)
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
        for task in list(self._tasks):
            task.cancel()


def _top(p: Participant) -> int:
    """The stream number a subscriber of ``p`` should get: its top layer's."""
    return p.layers[-1].number if p.layers else p.number


class Bench:
    #: What its rooms are called (before the scenario's name) and who joins them.
    room_prefix = "bench"
    participant_type: type[Participant] = Participant

    def __init__(self, args: argparse.Namespace, server: Server, http: aiohttp.ClientSession):
        self.args = args
        self.server = server
        self.http = http
        self.load = load.LoadClient()
        self.settings = Settings(secret_key=SECRET)
        self.numbers = itertools.count(1)
        self.rooms = itertools.count(1)
        self.direct_p50: float | None = None
        self.media: Any = None  # sfu.control.rpc.RemoteMedia of the node's worker in --media mode
        # Whether subscribers accept transport-cc (they never send its feedback).
        self.transport_cc = not args.simulcast
        self.rid_of: dict[int, str] = {}  # stream number -> RID of a simulcast layer
        # --record: the recording events the worker sent back (segments, stops).
        self.recorded: list[Any] = []

    def token(self, p: Participant) -> str:
        """``p``'s join token: its room, identity, rights and region."""
        now = dt.datetime.now(dt.UTC)
        grant = auth.RoomGrant(
            room=p.room,
            identity=p.identity,
            name=p.identity,
            role="doctor" if p.admin else "patient",
            publish=p.publish,
            subscribe=True,
            admin=p.admin,
            region=p.region,
        )
        return auth.issue_room_token(
            self.settings,
            grant,
            not_before=now - dt.timedelta(minutes=1),
            expires=now + dt.timedelta(hours=2),
        )

    def people(self, scenario: Scenario) -> list[Participant]:
        """A new room's participants: its publishers (admins), then its subscribers."""
        room = f"{self.room_prefix}-{scenario.name.replace(' ', '-')}-{next(self.rooms)}"
        people: list[Participant] = []
        for i in range(scenario.publishers):
            people.append(self.participant_type(self, room, f"pub{i}", publish=True, admin=True))
        for i in range(scenario.subscribers):
            people.append(self.participant_type(self, room, f"sub{i}", publish=False, admin=False))
        return people

    async def room(self, scenario: Scenario) -> list[Participant]:
        """Join, publish and subscribe one room; returns its participants."""
        people = self.people(scenario)
        if self.media is not None:
            await self.room_rpc(scenario, people)
            return people
        # Admins first, so nobody waits; then everyone else at once.
        for p in people[: scenario.publishers]:
            await p.connect(self.token(p))
        await asyncio.gather(*(p.connect(self.token(p)) for p in people[scenario.publishers :]))
        for p in people[: scenario.publishers]:
            offer = await self.publisher(p, scenario)
            sources = {"0": "camera", peer.AUDIO_MID: "microphone"}
            reply = await p.request("publish", sdp=offer, sources=sources)
            if reply["type"] != "published":
                raise SignallingError(f"publish answered {reply}")
            await self.load.call("published", p.pub_tid, reply["sdp"])
        return people

    async def publisher(self, p: Participant, scenario: Scenario) -> str:
        """Numbers, SSRCs and a transport for a publisher; returns its offer."""
        p.number = next(self.numbers)
        p.ssrc = 0x10000000 + p.number * 2
        p.pub_tid = await self.load.call("new")
        if scenario.audio:
            p.audio_number = next(self.numbers)
            p.audio_ssrc = 0x10000000 + p.audio_number * 2
        if not scenario.simulcast:
            return str(
                await self.load.call(
                    "offer", p.pub_tid, p.ssrc, p.ssrc + 1, (), scenario.audio, p.audio_ssrc
                )
            )
        p.layers = []
        for rid, width, height, per_frame, size in peer.SIMULCAST_LAYERS:
            number = next(self.numbers)
            self.rid_of[number] = rid
            if rid in scenario.sent:
                ssrc = 0x10000000 + number * 2
                p.layers.append(load.Layer(number, ssrc, rid, width, height, per_frame, size))
        rids = tuple(layer[0] for layer in peer.SIMULCAST_LAYERS)
        return str(await self.load.call("offer", p.pub_tid, 0, 0, rids))

    async def room_rpc(self, scenario: Scenario, people: list[Participant]) -> None:
        """:meth:`room` through MediaControl requests over Redis, as a ``wadud
        api`` replica makes them: publish each publisher's offer, then set
        every receiver's subscriptions and answer the worker's offer."""
        media = self.media
        assert media is not None
        tracks: list[dict[str, Any]] = []
        for p in people:
            p.pid = p.identity
            p.remote = media
        for p in people[: scenario.publishers]:
            offer = await self.publisher(p, scenario)
            sources = {"0": "camera", peer.AUDIO_MID: "microphone"}
            result = await media.publish(p.room, p.pid, offer, sources)
            await self.load.call("published", p.pub_tid, result.answer)
            tracks += [asdict(t) for t in result.added]
        for p in people:
            if p.publish and not scenario.mesh:
                continue
            theirs = [t for t in tracks if t["participant"] != p.pid]
            sub_offer = await media.subscribe(p.room, p.pid, [t["track_id"] for t in theirs])
            if sub_offer is None:
                continue
            p.sub_tid = await self.load.call("new")
            answer, _ = await self.load.call(
                "answer", p.sub_tid, sub_offer, self.transport_cc, p.takes_red
            )
            await media.answer(p.room, p.pid, answer)
            p.offered = theirs
            p.offers += 1

    async def rpc_latency(self, calls: int) -> dict[str, dict[str, float]]:
        """Sequential control round trips over Redis: ``ping``, and a
        ``subscribe`` that changes nothing (the worker's negotiation code runs
        and answers None), in microseconds."""
        media = self.media
        assert media is not None
        room, who = f"rpc-{next(self.rooms)}", "pinger"
        out: dict[str, dict[str, float]] = {}
        for op in ("ping", "subscribe"):
            took: list[float] = []
            for _ in range(calls):
                t0 = time.perf_counter()
                if op == "ping":
                    await media.ping()
                else:
                    await media.subscribe(room, who, [])
                took.append((time.perf_counter() - t0) * 1e6)
            out[op] = percentiles(took)
        with contextlib.suppress(Exception):
            await media.close_room(room)
        return out

    @staticmethod
    async def settled(people: list[Participant], scenario: Scenario, within: float) -> None:
        """Until every receiver has answered an offer carrying all it should receive."""
        end = time.monotonic() + within
        for p in people:
            # Each receives every other publisher's track; in a mesh room that
            # is all but its own, otherwise publishers receive nothing.
            if scenario.mesh:
                want = (scenario.publishers - 1) * scenario.tracks
            else:
                want = 0 if p.publish else scenario.publishers * scenario.tracks
            while len(p.offered) < want:
                left = end - time.monotonic()
                if left <= 0:
                    raise SignallingError(
                        f"{p.room}/{p.identity}: offered {len(p.offered)} of {want} tracks"
                        f" after {within} s; errors {p.errors[:2]}"
                    )
                p.changed.clear()
                if len(p.offered) < want:
                    try:
                        await asyncio.wait_for(p.changed.wait(), left)
                    except TimeoutError:
                        continue

    async def run_scenario(
        self,
        scenario: Scenario,
        *,
        out_rate: float,
        purpose: str,
        probe_rooms: int,
        all_probes: bool = False,
        on_measure: Any = None,
        switch_interval: float = 0.0,
        switch_per_room: int = 0,
        seconds: float = 0.0,
        record: float = 0.0,
    ) -> ScenarioResult:
        args = self.args
        seconds = seconds or args.seconds
        # --rooms, else rooms enough for out_rate (a room that forwards nothing: one).
        rooms = args.rooms or max(1, math.ceil(out_rate / max(1, scenario.streams_out * args.pps)))
        t0 = time.monotonic()
        people_by_room: list[list[Participant]] = []
        errors: list[str] = []
        recorded: list[str] = []
        try:
            # A few rooms at a time: the server is one process, and so are we.
            for start in range(0, rooms, 4):
                batch = await asyncio.gather(
                    *(self.room(scenario) for _ in range(start, min(rooms, start + 4)))
                )
                people_by_room.extend(batch)
            everyone = [p for room in people_by_room for p in room]
            await self.settled(everyone, scenario, within=60)
            tids = [t for p in everyone for t in (p.pub_tid, p.sub_tid) if t]
            profiles = await self.load.call("connect", tids, 30.0, within=90)
            setup = time.monotonic() - t0
            if record:
                recorded = await self.record_rooms(people_by_room, record)
            await asyncio.sleep(0.3)

            by_pid = {p.pid: p for p in everyone}
            publishers = [
                load.Publisher(
                    p.pub_tid,
                    p.number,
                    p.ssrc,
                    list(p.layers),
                    audio=p.audio_number,
                    audio_ssrc=p.audio_ssrc,
                    red=scenario.audio == "red",
                )
                for p in everyone
                if p.pub_tid
            ]
            subscribers = []
            receivers: list[Participant] = []
            ranks: list[int] = []  # each receiver's place among its room's
            for r, room in enumerate(people_by_room):
                for p in room:
                    if not p.sub_tid:
                        continue
                    ranks.append(sum(1 for x in receivers if x.room == p.room))
                    # A simulcast track is expected at its top layer.
                    numbers = [
                        by_pid[t["participant"]].audio_number
                        if t.get("kind") == "audio"
                        else _top(by_pid[t["participant"]])
                        for t in p.offered
                    ]
                    probe = all_probes or r < probe_rooms
                    audio = (peer.OPUS_PT, peer.RED_PT) if scenario.audio else ()
                    subscribers.append(load.Subscriber(p.sub_tid, numbers, probe=probe, also=audio))
                    receivers.append(p)
            plan = load.Plan(
                publishers=publishers,
                subscribers=subscribers,
                pps=args.pps,
                fps=args.fps,
                warmup=args.warmup,
                measure=seconds,
                worker_pid=self.server.worker_pid(),
            )
            waited = await self.wait_quiet(args.quiet_wait)
            # Read outside the window: rendering /metrics costs the server CPU.
            before = await self.server.rtp_totals(self.http)
            runner = asyncio.create_task(
                self.load.call("run", plan, False, within=args.warmup + seconds + 120)
            )
            # The load process starts 50 ms after the command; look inside its window.
            await asyncio.sleep(args.warmup + 0.1)
            others0 = others_cpu(self.ours())
            t_others = time.monotonic()
            views: list[tuple[int, int, int]] = []
            if on_measure is not None:
                await on_measure(seconds - 0.3)
            elif switch_interval > 0:
                views = await self.switch_views(
                    receivers,
                    by_pid,
                    seconds - 0.3 - switch_interval,
                    switch_interval,
                    [r for r, rank in enumerate(ranks) if rank < switch_per_room],
                )
                await asyncio.sleep(switch_interval)
            else:
                await asyncio.sleep(seconds - 0.3)
            others1 = others_cpu(self.ours())
            t_end = time.monotonic()
            span = t_end - t_others
            raw: dict[str, Any] = await runner
            pauses = [p for p in gc_pauses(self.server.log_path) if t_others <= p[0] <= t_end]
            raw["gc"] = {
                "pauses_over_2ms": len(pauses),
                "max_ms": max((p[2] for p in pauses), default=0.0),
                "total_ms": round(sum(p[2] for p in pauses), 1),
                "by_generation": dict(Counter(str(p[1]) for p in pauses)),
            }
            # Per process, from precise run times: the machine-wide counters are
            # sampled at each tick and miss much of bursty work like a worker's.
            raw["others_share"] = sum(
                cpu - others0.get(pid, (created, 0.0))[1]
                for pid, (created, cpu) in others1.items()
                if others0.get(pid, (created, 0.0))[0] == created
            ) / max(span, 1e-3)
            after = await self.server.rtp_totals(self.http)
            raw["worker"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            for room in people_by_room:
                for p in room:
                    errors += [json.dumps(e) for e in p.errors]
        finally:
            for name in recorded:
                with contextlib.suppress(Exception):
                    await self.media.record(name, None)
            everyone = [p for room in people_by_room for p in room]
            await asyncio.gather(*(p.close() for p in everyone), return_exceptions=True)
            tids = [t for p in everyone for t in (p.pub_tid, p.sub_tid) if t]
            await self.load.call("close", tids)
        counts = (len(publishers), len(subscribers))
        raw["waited"] = waited
        raw["switches"] = switch_times(views, raw["transitions"]) if views else {}
        return self.summarise(scenario, purpose, rooms, raw, counts, profiles, setup, errors)

    async def record_rooms(
        self, people_by_room: list[list[Participant]], share: float
    ) -> list[str]:
        """Record the first rooms, ``share`` of all their published tracks
        (``--record``: in ``1x10`` one track a room, so 0.2 is two tracks in
        ten), over the MediaControl a signalling replica would use."""
        from sfu.control.messages import RecordingOrder

        if self.media is None:
            raise SystemExit("--record needs --media (MediaControl.record over Redis)")
        tracks = [(room[0].room, sum(1 for p in room if p.pub_tid)) for room in people_by_room]
        total = sum(n for _, n in tracks)
        names: list[str] = []
        count = 0
        for name, n in tracks:
            if count >= round(total * share):
                break
            key = base64.urlsafe_b64encode(os.urandom(32)).decode()
            await self.media.record(name, RecordingOrder(f"bench-{name}", key))
            names.append(name)
            count += n
        return names

    def summarise(
        self,
        scenario: Scenario,
        purpose: str,
        rooms: int,
        raw: dict[str, Any],
        counts: tuple[int, int],
        profiles: dict[int, str],
        setup: float,
        errors: list[str],
    ) -> ScenarioResult:
        window = raw["window_seconds"] or 1.0
        cpu = raw["worker_cpu"]
        exp_w, exp_t = raw["expected_window"], raw["expected_total"]
        # What the worker forwarded for the window. When every packet of the
        # run arrived (counted after the tail: exact), that is every packet
        # sent in the window times its subscribers, the same count for any
        # two runs of one schedule; the subscribers' own count at the
        # window's edges is off by what the load process had not read yet
        # (up to 2 % of a 6 s window on a busy machine), noise that a
        # comparison between scenarios would take for a difference in cost.
        received = raw["received_window"]
        forwarded = exp_w if exp_t and raw["received_total"] >= exp_t else received
        lat = percentiles(raw["latency_us"])
        by_second: dict[int, list[float]] = {}
        for value, at in zip(raw["latency_us"], raw["latency_sent_ms"], strict=True):
            by_second.setdefault(int(at // 1000), []).append(value)
        added: dict[str, float] = {}
        if lat and self.direct_p50 is not None:
            base = self.direct_p50
            added = {k: round(v - base, 1) for k, v in lat.items() if k not in ("count", "mean")}
        probe_exp = raw["probe_expected_window"]
        return ScenarioResult(
            scenario=scenario.name,
            purpose=purpose,
            rooms=rooms,
            publishers=counts[0],
            subscriber_transports=counts[1],
            fanout=scenario.fanout,
            pps_per_publisher=self.args.pps,
            offered_in_pps=round(raw["sent_window"] / window, 1),
            forwarded_out_pps=round(forwarded / window, 1),
            window_seconds=round(window, 3),
            forwarded_window=forwarded,
            worker_cpu_seconds=round(cpu, 3),
            worker_cpu_share=round(cpu / window, 3),
            worker_user_seconds=round(raw["worker_user"], 3),
            worker_system_seconds=round(raw["worker_system"], 3),
            forwarded_per_cpu_second=round(forwarded / cpu) if cpu > 0 else 0,
            load_cpu_seconds=round(raw["load_cpu"], 3),
            # Everything else on this shared machine during the window (other
            # people's tests, PostgreSQL): it competes for the two cores. The
            # larger of two estimates that each miss some of it: processes'
            # own run times (misses processes that ended in the window) and
            # the machine's tick-sampled busy time (misses short bursts).
            others_cpu_seconds=round(
                max(raw["others_share"] * window, raw["machine_busy"] - cpu - raw["load_cpu"]),
                2,
            ),
            # Whole run, counted after the tail: exact. The window's figure
            # compares counts taken at its edges and is only approximate.
            loss_pct=(
                round(100 * max(0, exp_t - raw["received_total"]) / exp_t, 3) if exp_t else 0.0
            ),
            loss_pct_window=round(100 * (exp_w - received) / exp_w, 3) if exp_w else 0.0,
            received_window=received,
            probe_packets=raw["probe_received_window"],
            probe_loss_pct=(
                round(100 * (probe_exp - raw["probe_received_window"]) / probe_exp, 3)
                if probe_exp
                else 0.0
            ),
            latency_us=lat,
            added_latency_us=added,
            latency_read_us=percentiles(raw["latency_read_us"]),
            latency_p99_us_by_second=[percentiles(by_second[k])["p99"] for k in sorted(by_second)],
            late_send_p99_us=round(raw["late_send_p99_us"], 1),
            auth_failures=raw["auth_failures"],
            rcvbuf_errors=raw["rcvbuf_errors"],
            machine_load_1min=round(os.getloadavg()[0], 2),
            srtp_profile=",".join(sorted(Counter(profiles.values()))),
            setup_seconds=round(setup, 2),
            waited_for_quiet_seconds=raw["waited"],
            rtcp_to_publishers=raw["rtcp_to_publishers"],
            sent_total=raw["sent_total"],
            worker_received=raw["worker"].get("received", 0),
            worker_forwarded=raw["worker"].get("forwarded", 0),
            delivered_total=raw["received_total"],
            worker_counters={k: v for k, v in raw["worker"].items() if v},
            gc_pauses=raw["gc"] if self.args.gc_log else {},
            errors=errors[:5] + ([f"... {len(errors) - 5} more"] if len(errors) > 5 else []),
            probe_packets_by_layer={
                self.rid_of.get(int(n), "single"): c for n, c in raw["probe_by_stream"].items()
            },
            keyframes_on_request=raw["keyframes_on_request"],
            switch_ms=raw["switches"],
        )

    async def switch_views(
        self,
        receivers: list[Participant],
        by_pid: dict[str, Participant],
        seconds: float,
        interval: float,
        switching: list[int],
    ) -> list[tuple[int, int, int]]:
        """For ``seconds``, each receiver in ``switching`` flips its tile between
        :data:`SMALL_VIEW` and :data:`LARGE_VIEW` every ``interval`` seconds,
        each from its own random phase, with ``track_view`` frames (the
        protocol's own, as a page sends them). Returns ``(receiver index,
        time.perf_counter_ns() when sent, stream number of the layer it
        should get)``."""
        rng = random.Random(11)
        start = time.perf_counter()
        plan: list[tuple[float, int]] = []
        for i in switching:
            t = start + rng.uniform(0, interval)
            while t < start + seconds:
                plan.append((t, i))
                t += interval
        plan.sort()
        small = [True] * len(receivers)
        sent: list[tuple[int, int, int]] = []
        for at, i in plan:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            p = receivers[i]
            if p.ws is None or not p.offered:
                continue
            track = p.offered[0]
            source = by_pid[track["participant"]]
            width, height, rid = SMALL_VIEW if small[i] else LARGE_VIEW
            small[i] = not small[i]
            number = next(x.number for x in source.layers if x.rid == rid)
            frame = {
                "v": 1,
                "type": "track_view",
                "track_id": track["track_id"],
                "width": width,
                "height": height,
                "visible": True,
            }
            sent.append((i, time.perf_counter_ns(), number))
            await p.ws.send_str(json.dumps(frame))
        return sent

    def ours(self) -> set[int]:
        """This benchmark's processes, the server's embedded PostgreSQL included."""
        pids = {os.getpid(), self.server.proc.pid, self.load.pid()}
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in self.server.ps.children(recursive=True))
        with contextlib.suppress(psutil.Error):
            pids.update(c.pid for c in psutil.Process().children(recursive=True))
        # pgserver's postmaster detaches from the server: find it by its data folder.
        data = str(self.server.data)
        for proc in psutil.process_iter(["cmdline"]):
            if any(data in part for part in proc.info.get("cmdline") or ()):
                pids.add(proc.pid)
                with contextlib.suppress(psutil.Error):
                    pids.update(c.pid for c in proc.children(recursive=True))
        return pids

    async def wait_quiet(self, limit: float) -> float:
        """Wait (at most ``limit`` seconds) until the rest of the machine uses
        under QUIET of a core for two seconds; returns the seconds waited. The
        two cores are shared with other people's work, which the worker would
        wait behind."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            before = others_cpu(self.ours())
            await asyncio.sleep(2.0)
            after = others_cpu(self.ours())
            used = sum(
                cpu - before.get(pid, (created, 0.0))[1]
                for pid, (created, cpu) in after.items()
                if before.get(pid, (created, 0.0))[0] == created
            )
            if used / 2.0 < QUIET:
                break
        return round(time.monotonic() - t0, 1)

    async def direct(self, streams: int) -> dict[str, float]:
        """Baseline one-way latency: the same packets socket to socket, no worker."""
        publishers = [load.Publisher(0, 100000 + i, 0x20000000 + i) for i in range(streams)]
        plan = load.Plan(
            publishers=publishers,
            subscribers=[],
            pps=self.args.pps,
            fps=self.args.fps,
            warmup=min(1.0, self.args.warmup),
            measure=min(4.0, self.args.seconds),
        )
        raw = await self.load.call("run", plan, True, within=60)
        lat = percentiles(raw["latency_us"])
        self.direct_p50 = lat.get("p50")
        return lat
