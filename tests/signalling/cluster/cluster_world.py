"""The world of the cluster tests' driver: who is in the call, the pages
(headless Chromium, tests/browser.py) and what is read from them.

A probe installed in each page after joining records the page's state
changes, toasts, and the frames it gets (``joined``, ``media_reconnect``,
``participant_left``...), and carries a random id: the same id later means
the page was not reloaded. tests/signalling/cluster/cluster_driver.py runs the
scenarios over this world.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.browser import (
    Browsers,
    DriverError,
    Page,
    join,
    participant_id,
    receiving,
)
from tests.cluster import (
    Cluster,
    LoadBalancer,
)
from tests.sentinel import Group

ROOT = Path(__file__).resolve().parents[3]
SECRET = "cluster-test-secret-" + "s" * 40
REGION = "pk"
ROOM = "clinic-4411"
RESULT = "@@ "
# Who is in the call, and through which front of the load balancer.
PEOPLE = [
    # name, identity, display name, role, front
    ("doctor", "dr-amina", "Dr Amina", "doctor", "A"),
    ("patient", "pt-991", "Bilal", "patient", "B"),
    ("interpreter", "int-17", "Sana (interpreter)", "patient", "A"),
]
# Frames that tell a page something happened to the call.
NEWS = {"participant_left", "participant_joined", "track_unpublished", "media_reconnect", "joined"}
SEEN = NEWS | {"error", "waiting", "removed", "denied", "room_ended"}
# Short, so a drain that waits for its deadline instead of its rooms shows.
DRAIN_TIMEOUT = 20


PROBE = """(() => {
  if (window.__probe) return window.__probe.id;
  const c = window.wadudCall;
  const p = window.__probe = {id: Math.random().toString(36).slice(2), call: c,
                              states: [], toasts: [], errors: [], frames: [], sent: []};
  c.addEventListener('state', (e) => p.states.push([Date.now(), e.detail.state, e.detail.reason]));
  c.addEventListener('error', (e) => p.errors.push([Date.now(), e.detail.code, e.detail.message]));
  const onFrame = c._onFrame.bind(c);
  c._onFrame = (data) => {
    try {
      const f = JSON.parse(data);
      if (!['ping', 'active_speaker'].includes(f.type) && p.frames.length < 500) {
        // A pause names its track and says whether it stops or resumes.
        const who = f.type === 'track_paused' ? `${f.track_id}:${f.paused}:${f.reason}`
          : f.participant ? f.participant.id : (f.participant_id || f.reason || '');
        p.frames.push([Date.now(), f.type, who, f.ref || null, f.code || null]);
      }
    } catch (_) { /* the page reports it */ }
    return onFrame(data);
  };
  const send = c._send.bind(c);
  c._send = (frame, what) => {
    const id = send(frame, what);
    // A view says which tile size it asks for, and whether it is seen.
    const type = frame.type === 'track_view'
      ? `track_view ${frame.track_id}:${frame.width}x${frame.height}:${frame.visible}` : frame.type;
    if (frame.type !== 'pong' && p.sent.length < 500) p.sent.push([Date.now(), type, id]);
    return id;
  };
  const t = document.getElementById('toast');
  if (t) new MutationObserver(() => {
    if (t.classList.contains('show')) p.toasts.push([Date.now(), t.textContent]);
  }).observe(t, {attributes: true, childList: true, characterData: true, subtree: true});
  return p.id;
})()"""
PROBE_READ = """(() => { const p = window.__probe; if (!p) return null;
  return {id: p.id, same_call: p.call === window.wadudCall, states: p.states,
          toasts: p.toasts, errors: p.errors, frames: p.frames, sent: p.sent,
          me: window.wadudCall.me && window.wadudCall.me.id,
          state: document.body.dataset.state, screen: document.body.dataset.screen}; })()"""
STATS = "window.wadudCall.stats().then(s => s.participants)"
# What the page decodes and sends, sampled by the page itself every 200 ms and
# stamped with each stats report's own timestamp (ms since the epoch): a freeze
# is then measured on Chromium's clock, however late the driver, starved of
# CPU, comes to read. Decoding runs on Chromium's own threads, so a timer that
# fires late still counts every frame decoded meanwhile, and Chromium's own
# freezeCount and totalFreezesDuration tell a freeze that began and ended
# between two samples. A sample is taken at once when the recorder starts and
# when it is read, so the samples span the whole window. Per remote video:
# [participant, timestamp, framesDecoded, framesReceived, packetsReceived,
#  keyFramesDecoded, frameWidth, freezeCount, totalFreezesDuration, pliCount,
#  ssrc, totalInterFrameDelay]; per simulcast layer sent: [timestamp, rid, packetsSent,
#  framesEncoded, frameWidth, qualityLimitationReason, ssrc].
RECORD = """(async () => { const c = window.wadudCall;
  if (window.__rec) clearInterval(window.__rec.timer);
  const rec = window.__rec = {video: [], sent: [], timer: 0};
  rec.sample = async () => {
    for (const r of c.remoteTracks.values()) {
      (await r.transceiver.receiver.getStats()).forEach((s) => {
        if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
        rec.video.push([r.participant, s.timestamp, s.framesDecoded || 0,
          s.framesReceived || 0, s.packetsReceived || 0, s.keyFramesDecoded || 0,
          s.frameWidth || 0, s.freezeCount || 0, s.totalFreezesDuration || 0, s.pliCount || 0,
          s.ssrc, s.totalInterFrameDelay || 0]);
      });
    }
    if (c.publishPc) (await c.publishPc.getStats()).forEach((s) => {
      if (s.type !== 'outbound-rtp' || s.kind !== 'video') return;
      rec.sent.push([s.timestamp, s.rid || '', s.packetsSent || 0, s.framesEncoded || 0,
        s.frameWidth || 0, s.qualityLimitationReason || '', s.ssrc]);
    });
  };
  let busy = false;
  rec.timer = setInterval(async () => {
    if (busy || rec.video.length > 20000) return;
    busy = true;
    try { await rec.sample(); } catch (_) { /* a receiver gone between two samples */ }
    busy = false;
  }, 200);
  await rec.sample();
  return true; })()"""
RECORD_READ = """(async () => { const r = window.__rec; if (!r) return null;
  clearInterval(r.timer); await r.sample(); return {video: r.video, sent: r.sent}; })()"""
# What each remote video's receiver got, for a report to tell a video the
# SFU never sent (no packets) from one that came but never decoded (no
# keyframe): per track, [participant, paused, packetsReceived, framesReceived,
# framesDecoded, keyFramesDecoded, pliCount, nackCount, frameWidth].
RECEIVERS = """(async () => { const out = {};
  for (const r of window.wadudCall.remoteTracks.values()) {
    if (r.kind !== 'video') continue;
    const row = out[r.track_id] = [r.participant, r.paused, 0, 0, 0, 0, 0, 0, 0];
    (await r.transceiver.receiver.getStats()).forEach((s) => {
      if (s.type !== 'inbound-rtp' || s.kind !== 'video') return;
      row.splice(2, 7, s.packetsReceived || 0, s.framesReceived || 0, s.framesDecoded || 0,
        s.keyFramesDecoded || 0, s.pliCount || 0, s.nackCount || 0, s.frameWidth || 0);
    });
  }
  return out; })()"""
# What each remote participant's tile shows: per tile key, [paused,
# readyState, videoWidth, currentTime, frames the element presented
# (getVideoPlaybackQuality), its video track's id and readyState, when its
# frame callback last fired (ms ago), the tile's classes]. With RECEIVERS it
# tells a tile that stopped showing frames from a watch that stopped seeing.
TILES = """(() => { const out = {};
  document.querySelectorAll('figure.tile[data-key] > video').forEach((v) => {
    const t = v.srcObject ? v.srcObject.getVideoTracks()[0] : null;
    out[v.parentElement.dataset.key] = [v.paused, v.readyState, v.videoWidth,
      Math.round(v.currentTime * 10) / 10, v.getVideoPlaybackQuality().totalVideoFrames,
      t ? t.id : null, t ? t.readyState : null,
      v.__called ? Date.now() - v.__called : null, v.parentElement.className];
  });
  return out; })()"""
# The UDP port of the worker each peer connection is connected to.
MEDIA_PORTS = """(async () => { const c = window.wadudCall, out = {};
  for (const [k, pc] of [['publish', c.publishPc], ['subscribe', c.subscribePc]]) {
    out[k] = null;
    if (!pc) continue;
    const stats = await pc.getStats(), byId = new Map();
    stats.forEach((s) => byId.set(s.id, s));
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) {
        pair = byId.get(s.selectedCandidatePairId);
      }
    });
    const remote = pair && byId.get(pair.remoteCandidateId);
    out[k] = remote ? remote.port : pc.connectionState;
  }
  return out; })()"""
MARK_PCS = """(() => { const c = window.wadudCall;
  for (const pc of [c.publishPc, c.subscribePc]) if (pc) pc.__before = true;
  return !!(c.publishPc && c.subscribePc); })()"""
PCS_REPLACED = """(() => { const c = window.wadudCall, pub = c.publishPc, sub = c.subscribePc;
  return !!(pub && sub && !pub.__before && !sub.__before); })()"""
#: How often a page looks for new tiles and at its connections' states (ms).
WATCH_MS = 100
# When each remote participant's video tile shows a new frame
# (requestVideoFrameCallback on the call page's own <video>, stamped with the
# page's Date.now()), which track it shows (each change of the tile's video
# track, from its first frame), and how each of the page's peer connections
# stands: a recovery is timed by the page, not by when the driver happens
# to ask over CDP, and without getStats, which runs on the same WebRTC
# thread as the page's negotiation and would slow what it measures on a
# busy machine.
DECODE_WATCH = f"""(() => {{
  if (window.__decodes) return true;
  const c = window.wadudCall;
  const w = window.__decodes = {{frames: {{}}, tracks: {{}}, pcs: [], last: {{}}}};
  let ids = 0;
  const watch = (video, pid) => {{
    if (video.__watched) return;
    video.__watched = true;
    const seen = w.frames[pid] || (w.frames[pid] = []);
    const tracks = w.tracks[pid] || (w.tracks[pid] = []);
    const shown = () => {{
      const now = video.__called = Date.now();
      seen.push(now);
      if (seen.length > 12000) seen.splice(0, 6000);
      const track = video.srcObject ? video.srcObject.getVideoTracks()[0] : null;
      const id = track ? track.id : '';
      if (!tracks.length || tracks[tracks.length - 1][1] !== id) tracks.push([now, id]);
      video.requestVideoFrameCallback(shown);
    }};
    video.requestVideoFrameCallback(shown);
  }};
  setInterval(() => {{
    const now = Date.now();
    for (const [k, pc] of [['publish', c.publishPc], ['subscribe', c.subscribePc]]) {{
      const id = pc ? (pc.__watchId || (pc.__watchId = `pc${{++ids}}`)) : '';
      const state = pc ? pc.connectionState : 'none';
      const ice = pc ? pc.iceConnectionState : 'none';
      if (w.last[k] !== `${{id}}:${{state}}:${{ice}}`) {{
        w.last[k] = `${{id}}:${{state}}:${{ice}}`;
        w.pcs.push([now, k, id, state, ice]);
      }}
    }}
    document.querySelectorAll('figure.tile[data-key] > video').forEach((video) => {{
      const key = video.parentElement.dataset.key;
      if (!key.includes(':')) watch(video, key);
    }});
  }}, {WATCH_MS});
  return true;
}})()"""
DECODE_READ = """((since) => { const w = window.__decodes; if (!w) return null;
  const frames = {};
  for (const [pid, seen] of Object.entries(w.frames)) frames[pid] = seen.filter((t) => t >= since);
  return {frames, tracks: w.tracks, pcs: w.pcs.filter((p) => p[0] >= since)}; })"""


@dataclass
class World:
    cluster: Cluster
    lb: LoadBalancer
    work: Path
    browsers: Browsers | None = None
    pages: dict[str, Page] = field(default_factory=dict)
    probes: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    generation: int = 0
    #: The Sentinel group when the driver runs on one (``--redis sentinel``).
    sentinels: Group | None = None

    def mark(self, what: str) -> None:
        while what in self.timings:
            what += " again"
        self.timings[what] = round(time.monotonic() - self.started, 2)

    def front_url(self, front: str) -> str:
        return self.lb.fronts[front].url

    def token(self, room: str, identity: str, role: str, name: str = "") -> str:
        from wadud.config import Settings
        from wadud.web.auth import RoomGrant, issue_room_token

        now = dt.datetime.now(dt.UTC)
        grant = RoomGrant(
            room=room,
            identity=identity,
            name=name or identity,
            role=role,
            admin=role in ("doctor", "staff"),
        )
        return issue_room_token(
            Settings(secret_key=SECRET),
            grant,
            not_before=now - dt.timedelta(minutes=5),
            expires=now + dt.timedelta(hours=1),
        )


async def close_pages(world: World) -> None:
    if world.browsers is not None:
        await world.browsers.close()
    world.browsers = None
    world.pages = {}
    world.probes = {}


async def pages_healthy(world: World) -> bool:
    if len(world.pages) != len(PEOPLE):
        return False
    for page in world.pages.values():
        if page.proc.returncode is not None:
            return False
        try:
            probe = await page.eval(PROBE_READ)
        except DriverError:
            return False
        if not probe or probe["id"] != world.probes.get(page.name) or probe["state"] != "joined":
            return False
    return True


async def ensure_call(world: World) -> list[Page]:
    """The three pages in the call, media flowing: the ones already open if
    they are well, else three new ones."""
    if await pages_healthy(world):
        pages = list(world.pages.values())
        try:
            await receiving(world, pages, within=10)
            return pages
        except DriverError as exc:
            # A test before left the call broken: start this one afresh.
            world.mark(f"pages reopened ({str(exc)[:60]})")
    await close_pages(world)
    world.generation += 1
    world.browsers = browsers = Browsers(world.work / f"browsers-{world.generation}")
    browsers.work.mkdir(parents=True)
    links = await asyncio.gather(
        *(
            world.cluster.token_link(
                ROOM, identity, role, name=display, public_url=world.front_url(front)
            )
            for _, identity, display, role, front in PEOPLE
        )
    )
    world.mark("links")
    pages = [await browsers.open(p[0], link) for p, link in zip(PEOPLE, links, strict=True)]
    world.pages = {p.name: p for p in pages}
    doctor, *others = pages
    await join(doctor)
    world.mark("doctor joined")
    await asyncio.gather(*(join(p) for p in others))
    world.mark("all joined")
    for page in pages:
        world.probes[page.name] = await page.eval(PROBE)
    return pages


async def ids_of(pages: list[Page]) -> dict[str, str]:
    return {p.name: await participant_id(p) for p in pages}


async def probes(pages: list[Page]) -> dict[str, Any]:
    out = {}
    for page in pages:
        try:
            out[page.name] = await page.eval(PROBE_READ)
        except DriverError as exc:
            out[page.name] = {"error": str(exc)}
    return out


async def media_workers(world: World, pages: list[Page]) -> dict[str, Any]:
    """Which worker each page's publish and subscribe connections reach (by
    the remote candidate's port), and the room's worker in the registry."""
    by_port = {e.get("port"): wid for wid, e in (await world.cluster.workers()).items()}
    out: dict[str, Any] = {"registry": await world.cluster.worker_of(ROOM)}
    for page in pages:
        try:
            ports = await page.eval(MEDIA_PORTS)
        except DriverError as exc:
            out[page.name] = str(exc)
            continue
        out[page.name] = {k: by_port.get(str(v), v) for k, v in ports.items()}
    return out


def frames_since(read: dict[str, Any], wall0: float, kinds: set[str]) -> dict[str, Any]:
    """Each page's frames of ``kinds`` since ``wall0`` (ms), as [seconds
    after, type, detail, ref, error code], its requests since then as
    [seconds after, "> " type, id, answer], where the answer is the type of
    the frame that referred to it, or None for a request never answered."""
    out: dict[str, Any] = {}
    for name, r in read.items():
        frames = [f for f in r.get("frames", []) if f[0] >= wall0]
        answers = {f[3]: f[1] + (f":{f[4]}" if f[4] else "") for f in frames if f[3]}
        rows = [[round((f[0] - wall0) / 1000, 2), *f[1:]] for f in frames if f[1] in kinds]
        rows += [
            [round((x[0] - wall0) / 1000, 2), "> " + x[1], x[2], answers.get(x[2])]
            for x in r.get("sent", [])
            if x[0] >= wall0
        ]
        out[name] = sorted(rows, key=lambda row: row[0])
    return out


def same_pages(world: World, read: dict[str, Any]) -> bool:
    """The probe is still there with the same id, on the same WadudCall: no reload."""
    return all(
        (read.get(name) or {}).get("id") == probe and read[name].get("same_call")
        for name, probe in world.probes.items()
    )


async def poll_decoded(pages: list[Page], ids: dict[str, str]) -> dict[tuple[str, str], int | None]:
    """framesDecoded per (page, peer) now; None where the page did not answer."""
    out: dict[tuple[str, str], int | None] = {}
    for page in pages:
        try:
            stats = await page.eval(STATS) or {}
        except DriverError:
            stats = None
        for peer in pages:
            if peer is not page:
                s = None if stats is None else (stats.get(ids[peer.name]) or {})
                out[(page.name, peer.name)] = None if s is None else int(s.get("framesDecoded", 0))
    return out


#: A tile that showed no new frame for this long has stopped receiving: at
#: the frame rates of a call a flowing video shows several in that time.
#: Longer for a tile that showed fewer before the kill (:func:`stall_for`).
STALL_S = 0.5
#: Seconds before the kill over which a tile's own pace is measured.
PACE_S = 1.5
#: ... and shows video again once new frames have kept coming for this long
#: after such a stall: frames still in the jitter buffer at a kill are not a
#: recovery, nor is a moment of media between two moves.
SUSTAIN_S = 1.0


def decoding_again(
    shown: list[float],
    wall0: float,
    tracks: list[list[Any]] | None = None,
    stall_s: float = STALL_S,
) -> float | None:
    """Seconds from ``wall0`` (ms, the machine's clock) to the first frame a
    tile showed of a track it took after ``wall0`` (``tracks``: when the
    tile first showed each track, DECODE_WATCH), else after a stall (no
    frame for ``stall_s``) that ended after ``wall0``, if frames then kept
    coming for SUSTAIN_S without one; None if
    not (yet). ``shown``: the page's stamps (ms) of each frame the tile
    showed. By the track when there is a new one: a page whose new
    connections are up within half a second shows the new track's first
    frame less than STALL_S after the old one's last, with no stall between."""
    stall, sustain = stall_s * 1000, SUSTAIN_S * 1000
    new = next((at for at, _ in tracks or [] if at >= wall0), None)
    since = wall0 if new is None else new
    start: float | None = None
    prev: float | None = None
    for at in sorted(shown):
        # A run of frames begins after a stall, or at the new track's first frame.
        gap = prev is None or at - prev >= stall
        if at >= since and (gap or (start is None and new is not None)):
            start = at
        if start is not None and at - start >= sustain:
            return round((start - wall0) / 1000, 2)
        prev = at
    return None


def stall_for(shown: list[float], wall0: float) -> float:
    """How long a tile may show no new frame before it counts as stopped:
    :data:`STALL_S`, or longer as webrtc-stats defines a freeze (an
    inter-frame delay over three times the average, and over it by 150 ms)
    against the tile's own average over the :data:`PACE_S` before ``wall0``
    (ms). A starved machine's pages decode 3 to 6 frames a second before
    any kill (ci172's CI and here under load); held to 0.5 s, such a video
    flowing again as it did before never counted as back."""
    before = [at for at in shown if wall0 - PACE_S * 1000 <= at < wall0]
    if len(before) < 3:
        return STALL_S
    mean = (before[-1] - before[0]) / (len(before) - 1) / 1000
    return max(STALL_S, 3 * mean, mean + 0.15)


def recovery_of(
    decodes: dict[str, Any], ids: dict[str, str], wall0: float
) -> dict[str, float | None]:
    """``decoding_again`` for each (page, other page) as "page<-other"."""
    out: dict[str, float | None] = {}
    for name, read in decodes.items():
        frames = (read or {}).get("frames") or {}
        tracks = (read or {}).get("tracks") or {}
        for peer, pid in ids.items():
            if peer != name:
                shown = frames.get(pid) or []
                out[f"{name}<-{peer}"] = decoding_again(
                    shown, wall0, tracks.get(pid), stall_for(shown, wall0)
                )
    return out


async def read_decodes(pages: list[Page], since: float) -> dict[str, Any]:
    """Each page's DECODE_WATCH record from ``since`` (ms) on."""
    out: dict[str, Any] = {}
    for page in pages:
        try:
            out[page.name] = await page.eval(f"({DECODE_READ})({since:.0f})")
        except DriverError as exc:
            out[page.name] = {"error": str(exc)}
    return out


async def wait_decoding(
    pages: list[Page], ids: dict[str, str], wall0: float, within: float
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Wait up to ``within`` seconds for every page to decode every other
    again after ``wall0`` (ms), as the pages' own looks tell it; the time
    of each pair (None: not back), and what the pages recorded."""
    deadline = time.monotonic() + within
    while True:
        decodes = await read_decodes(pages, wall0 - 2000)
        back = recovery_of(decodes, ids, wall0)
        if all(v is not None for v in back.values()) or time.monotonic() > deadline:
            return back, decodes
        await asyncio.sleep(0.5)


def pcs_connected(decodes: dict[str, Any], wall0: float) -> dict[str, dict[str, float | None]]:
    """For each page, seconds from ``wall0`` (ms) until its publish and its
    subscribe connection were ``connected`` again (a new one, or the old one
    after an ICE restart), by the page's looks (DECODE_WATCH)."""
    out: dict[str, dict[str, float | None]] = {}
    for name, read in decodes.items():
        seen: dict[str, float | None] = {"publish": None, "subscribe": None}
        for at, kind, _, state, _ in (read or {}).get("pcs") or []:
            if at >= wall0 and state == "connected" and seen.get(kind, 0) is None:
                seen[kind] = round((at - wall0) / 1000, 2)
        out[name] = seen
    return out


#: A remote video the patient's page decodes no frame of for this long is
#: a freeze the patient would notice. Shorter gaps are not counted: with
#: four test workers on two cores Chromium's decoder alone pauses for a
#: second at times, before any failure as much as after one.
FREEZE_S = 1.5
#: The longest freeze the Redis failover scenario allows. Under a loaded
#: machine (CI: two busy chains beside it) a page's Chromium drops a simulcast
#: layer for CPU; its subscribers move down once the layer is sfu.layers.published.QUIET
#: behind the others and a keyframe of the lower one comes, on a publisher
#: whatever Redis does. Seen in three runs in a row with the failover itself
#: causing nothing (no move, no takeover). The bandwidth pauses a starved
#: machine also brings (sfu.layers.choice.PAUSE_AFTER) are the other freezes seen.
FAILOVER_FREEZE_S = 3.0


def still(
    series: dict[str, list[tuple[float, int]]], t0: float, least: float
) -> list[dict[str, Any]]:
    """Spans of at least ``least`` seconds over which a decoded frame count
    (``series``: (time, count) per name) was seen not to rise (from the
    first sample of a count to the last with the same count), each with its
    start and length relative to ``t0``."""
    found: list[dict[str, Any]] = []
    for name, points in series.items():
        runs: list[tuple[float, float, int]] = []  # (first seen, last seen, count)
        for at, count in points:
            if runs and count <= runs[-1][2]:
                runs[-1] = (runs[-1][0], at, runs[-1][2])
            else:
                runs.append((at, at, count))
        found += [_freeze(name, a, b, n, t0) for a, b, n in runs if b - a >= least]
    return found


def decoded_series(
    records: dict[str, Any], ids: dict[str, str], since: float
) -> dict[str, list[tuple[float, int]]]:
    """From each page's RECORD samples: per "page<-peer", (seconds on the
    page's stats clock, frames decoded), from ``since`` (ms since the epoch)."""
    names = {pid: name for name, pid in ids.items()}
    series: dict[str, list[tuple[float, int]]] = {}
    for page, rec in records.items():
        for row in (rec or {}).get("video", []):
            peer = names.get(row[0])
            if peer is not None and row[1] >= since:
                series.setdefault(f"{page}<-{peer}", []).append((row[1] / 1000, int(row[2])))
    for points in series.values():
        points.sort()
    return series


def first_decoded(records: dict[str, Any], ids: dict[str, str]) -> dict[str, float]:
    """Per "page<-peer": when the page had its first frame of the peer (ms
    since the epoch), at the latest. A sample at ``timestamp`` counts the
    delays between all the frames so far (totalInterFrameDelay), and its
    last frame came at or before ``timestamp``: the first came at or before
    ``timestamp - totalInterFrameDelay``, however late a starved page took
    that sample."""
    names = {pid: name for name, pid in ids.items()}
    began: dict[str, float] = {}
    for page, rec in records.items():
        for row in (rec or {}).get("video", []):
            peer = names.get(row[0])
            if peer is not None and row[2] > 0:
                key = f"{page}<-{peer}"
                began[key] = min(began.get(key, math.inf), row[1] - 1000 * row[11])
    return began


def chromium_freezes(
    records: dict[str, Any], ids: dict[str, str], since: float, least: float
) -> list[dict[str, Any]]:
    """Freezes of at least ``least`` seconds as Chromium itself counted
    them (inbound-rtp freezeCount, totalFreezesDuration) between two of
    the page's RECORD samples from ``since`` (ms since the epoch); where
    several ended between two samples, the longest lasted at least their
    mean. Times in seconds after ``since``. A freeze is counted once it
    ends, so it began its length before the sample that counted it, at the
    latest: that is its ``at``, not the sample before (ci133 placed a
    5.7 s freeze after its end, outside the bandwidth pause the page had
    been told of and that :func:`still` had already found it in)."""
    names = {pid: name for name, pid in ids.items()}
    found: list[dict[str, Any]] = []
    for page, rec in records.items():
        last: dict[str, list[Any]] = {}
        for row in sorted((rec or {}).get("video", []), key=lambda r: r[1]):
            peer = names.get(row[0])
            if peer is None:
                continue
            prev, last[peer] = last.get(peer), row
            if prev is None or row[1] < since:
                continue
            count, seconds = row[7] - prev[7], row[8] - prev[8]
            if count > 0 and seconds / count >= least:
                began = (row[1] - since) / 1000 - seconds / count
                found.append({"from": f"{page}<-{peer}", "at": round(began, 2),
                              "seconds": round(seconds / count, 2), "freezes": count})  # fmt: skip
    return found


def around(
    records: dict[str, Any], ids: dict[str, str], stall: dict[str, Any], wall0: float
) -> dict[str, Any]:
    """What the page and the peer of a ``stall`` recorded from a second
    before it to a second after (times in seconds after ``wall0``, ms since
    the epoch): whether packets kept arriving, which layer (frameWidth),
    keyframes, and what the peer sent of each layer."""
    page, peer = stall["from"].split("<-")
    start = wall0 + (stall["at"] - 1.0) * 1000
    end = wall0 + (stall["at"] + stall["seconds"] + 1.0) * 1000

    def rel(rows: list[list[Any]], at: int) -> list[list[Any]]:
        return [[round((r[at] - wall0) / 1000, 2), *r[:at], *r[at + 1 :]]
                for r in rows if start <= r[at] <= end]  # fmt: skip

    got = [r for r in (records.get(page) or {}).get("video", []) if r[0] == ids.get(peer)]
    return {
        "received": [r[:1] + r[2:] for r in rel(got, 1)],
        "sent": rel((records.get(peer) or {}).get("sent", []), 0),
    }


def per_second(seen: dict[str, Any]) -> dict[str, Any]:
    """An :func:`around` thinned to its first row in each second (per layer
    for what was sent), short enough for an assertion's message."""
    out: dict[str, Any] = {}
    for side, rows in seen.items():
        kept, last = [], set()
        for row in rows:
            # A sent row's layer (rid) is its second field; a received row has one track.
            key = (math.floor(row[0]), row[1] if side == "sent" else "")
            if key not in last:
                last.add(key)
                kept.append(row)
        out[side] = kept
    return out


#: Each room track's participant, as a page knows them.
TRACK_OWNERS = """Object.fromEntries([...window.wadudCall.roomTracks].map(
  ([id, t]) => [id, t.participant]))"""


def bandwidth_pauses(
    read: dict[str, Any], owners: dict[str, dict[str, str]], ids: dict[str, str]
) -> dict[str, list[tuple[float, float]]]:
    """Per "page<-peer": the spans (ms since the epoch, the page's clock)
    over which the page had been told the peer's video was paused for
    bandwidth (``track_paused``, the PROBE's frames; a span still open ends
    at infinity). ``owners``: each page's TRACK_OWNERS."""
    names = {pid: name for name, pid in ids.items()}
    out: dict[str, list[tuple[float, float]]] = {}
    for page, r in read.items():
        since: dict[str, tuple[str, float]] = {}
        for at, kind, who, *_ in (r or {}).get("frames", []):
            if kind != "track_paused":
                continue
            track, paused, reason = who.rsplit(":", 2)
            peer = names.get((owners.get(page) or {}).get(track, ""))
            if peer is None:
                continue
            if paused == "true" and reason == "bandwidth":
                since.setdefault(track, (f"{page}<-{peer}", at))
            elif paused == "false" and track in since:
                key, began = since.pop(track)
                out.setdefault(key, []).append((began, at))
        for key, began in since.values():
            out.setdefault(key, []).append((began, math.inf))
    return out


def announced(stall: dict[str, Any], pauses: dict[str, list[tuple[float, float]]],
              wall0: float) -> bool:  # fmt: skip
    """Whether a ``stall`` (seconds after ``wall0``, ms) overlaps a span in
    which its page had been told the peer's video was paused for bandwidth."""
    start = wall0 + stall["at"] * 1000
    end = start + stall["seconds"] * 1000
    return any(a <= end and b >= start for a, b in pauses.get(stall["from"], []))


def _freeze(name: str, first: float, last: float, frames: int, t0: float) -> dict[str, Any]:
    return {"from": name, "at": round(first - t0, 2), "seconds": round(last - first, 2),
            "frames": frames}  # fmt: skip
