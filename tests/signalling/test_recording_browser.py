"""Recording a visit with everyone's consent, in real Chromium pages (issue
23's must-show): a doctor, a patient and a relative in a booking's call.

1. The doctor asks to record; the patient refuses in the dialog. Every page
   shows the recording off; nothing was written (no segment, no row moved
   past ``refused``).
2. The doctor asks again; both agree. Every page shows the "Recording"
   badge. A late joiner (an interpreter) is asked as they come in and sends
   nothing until they agree. About 20 s later the doctor stops it.
3. The recorder (in-process in ``wadud serve``) remuxes each participant's
   audio and video into a WebM: each opens with PyAV with an audio and a
   video stream, and lasts the time the media worker received their sound
   while recording within a second, with a picture for all but the first
   keyframe's wait and a layer switch.

And ``fail``: a store too slow for the media (every segment takes longer
than ``recording_write_timeout``) stops the recording as failed: every page
says so, the clinic's webhook ``recording_failed`` is queued, and the call's
frames keep flowing both ways.

Screenshots of the question and of the badge (phone and desktop) go to
``WADUD_SCREENSHOTS`` (docs/img) when set, else under the test's folder.
The driver's ``--help`` says how to run one scenario by hand.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.browser import (
    DriverError,
    Page,
    click,
    driver_main,
    join,
    play,
    receiving,
    rises,
    run_scenario,
)
from tests.signalling.call_world import HTTP_PORT, World, serving
from tests.signalling.test_call_report_browser import booking_now
from tests.signalling.test_visit_journey import Shots

DRIVER = "tests.signalling.test_recording_browser"

#: Seconds the visit is recorded once everyone agreed.
RECORDED = 20.0
#: Seconds the late joiner is recorded at least (when joining took most of RECORDED).
LATE = 4.0
#: Seconds of sound in one Opus packet as Chromium sends it (RFC 7587: 20 ms by default).
OPUS_PACKET = 0.02


@pytest.mark.timeout(240)
async def test_a_visit_is_recorded_only_with_everyone_s_consent(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_scenario(DRIVER, "record", database_url, tmp_path, 180)
    print(json.dumps(result))
    refused = result["refused"]
    # A refusal: every page shows it off, and nothing was kept.
    assert set(refused["pages"].values()) == {"off:refused"}, refused
    assert refused["state"] == "refused" and refused["segments"] == 0, refused
    agreed = result["agreed"]
    assert set(agreed["badges"].values()) == {True}, agreed
    # The late joiner was asked, and published only after agreeing.
    late = result["late"]
    assert late["asked"] and late["tracks_before_answer"] == 0, late
    assert late["tracks_after_answer"] > 0, late
    # Each participant who sent media has a playable WebM of what the media
    # worker received from them while recording. Not of the test's clock: on
    # a busy machine a browser sends late and the server (this process)
    # reads late, so the last second or so sent before the stop is not there
    # yet when it stops, in the recording or out of it.
    files = result["files"]
    assert len(files) >= 3, files
    for f in files:
        assert f["streams"] == ["audio", "video"], f
        assert abs(f["duration"] - f["expected"]) <= 1.0, f
        # A picture from start to end: from the first keyframe after the
        # participant's video first came (up to about a second after), and a
        # publisher that drops the recorded layer costs about as much again
        # (sfu.recording.core.QUIET, then a keyframe). A recording stuck on a
        # dropped layer loses far more. A starved browser's camera may start
        # seconds after its microphone (ci124: the late joiner's, 3 s).
        # Nor can the picture be longer than the file. In ci133, on a starved
        # machine, the worker received 30.3 s of sound from each page over
        # 32.1 s of its own clock; each file was 30.1 s long, and one's
        # picture spanned 28.3 s of it.
        assert f["expected_video"] >= f["expected"] - 4.0, f
        assert f["video"] >= min(f["expected_video"], f["duration"]) - 3.0, f


@pytest.mark.timeout(200)
async def test_a_store_too_slow_fails_the_recording_not_the_call(
    database_url: str, tmp_path: Path
) -> None:
    result = await run_scenario(DRIVER, "fail", database_url, tmp_path, 120)
    print(json.dumps(result))
    assert set(result["pages"].values()) == {"off:failed"}, result
    assert result["state"] == "failed" and "too slow" in result["failure"], result
    assert result["webhook"] == 1, result
    for pair, rose in result["after"].items():
        assert rose["framesDecoded"] > 10 and rose["audioPackets"] > 20, (pair, result)


async def _recording_state(page: Page) -> str:
    return str(
        await page.eval(
            "(() => { const r = window.wadudCall.recording;"
            " return r.state + (r.reason ? ':' + r.reason : ''); })()"
        )
    )


async def in_call(world: World, *, relative: bool) -> tuple[Any, Any, uuid.UUID, list[Page]]:
    """A booking's call with its doctor, its patient and (``relative``) a
    relative, media flowing between all: the app, its pool, the booking, the pages."""
    from wadud.state import keys

    app = world.app
    pool = app[keys.DB]
    booking = await booking_now(pool)
    world.room = f"booking-{booking}"
    people = [
        ("doctor", "dr-amina", "Dr Amina", "doctor"),
        ("patient", "pt-991", "Bilal", "patient"),
    ]
    if relative:
        people.append(("relative", "rel-17", "Sana", "family"))
    pages = []
    for name, identity, shown, role in people:
        link = world.link(identity, shown, role, admin=role == "doctor")
        page = await world.browsers.open(name, link)
        await join(page)
        pages.append(page)
    await receiving(world, pages)
    return app, pool, booking, pages


async def scenario_record(world: World) -> dict[str, Any]:
    shots = Shots(Path(os.environ.get("WADUD_SCREENSHOTS") or world.browsers.work / "shots"))
    app, pool, booking, pages = await in_call(world, relative=True)
    doctor, patient, relative = pages
    world.mark("three in the call")

    # 1. Asked, and the patient refuses.
    await doctor.eval("window.wadudCall.record(true).then(() => true)")
    await patient.wait_for("!document.getElementById('consent').hidden", "the question")
    await shots.take(patient, "call-recording-consent")
    await click(patient, "#consent-no")
    for page in pages:
        await page.wait_for(
            "window.wadudCall.recording.state === 'off'", "the recording off after a refusal"
        )
    await asyncio.sleep(1.0)  # let the steps' rows land
    refused = {
        "pages": {p.name: await _recording_state(p) for p in pages},
        "state": await pool.fetchval(
            "SELECT state FROM recordings WHERE booking_id = $1 ORDER BY created_at LIMIT 1",
            booking,
        ),
        "segments": await pool.fetchval(
            """SELECT count(*) FROM recording_segments s JOIN recordings r
               ON r.id = s.recording_id WHERE r.booking_id = $1""",
            booking,
        ),
    }
    world.mark("refused")

    # 2. Asked again: both agree; every page shows the badge.
    watch = asyncio.create_task(while_recording(app))
    await doctor.eval("window.wadudCall.record(true).then(() => true)")
    for page in (patient, relative):
        await page.wait_for("!document.getElementById('consent').hidden", "the question again")
        await click(page, "#consent-yes")
    badge = "!document.getElementById('rec').hidden && window.wadudCall.recording.state === 'on'"
    badges = {p.name: bool(await p.wait_for(badge, "the Recording badge")) for p in pages}
    started = time.time()
    world.mark("recording")
    # The refusal's notice has gone (4 s) before the picture.
    await relative.wait_for(
        "!document.getElementById('toast').classList.contains('show')", "the notice gone"
    )
    await shots.take(relative, "call-recording-on")

    # A late joiner is asked, and sends nothing before agreeing.
    late = await world.browsers.open("interpreter", world.link("int-3", "Rania", "interpreter"))
    await join(late)
    asked = bool(
        await late.wait_for("!document.getElementById('consent').hidden", "the late question")
    )
    await asyncio.sleep(2.0)
    # Nothing sent: no sending transceiver yet (a single connection is up
    # before the answer, to receive).
    before = await late.eval(
        "window.wadudCall.publishPc ? window.wadudCall.publishPc.getTransceivers()"
        ".filter(t => t.direction === 'sendonly').length : 0"
    )
    await click(late, "#consent-yes")
    after = await late.wait_for(
        "[...window.wadudCall.localTracks.values()].filter(t => t.track_id).length",
        "the late joiner publishing after agreeing",
    )
    await late.wait_for(
        "window.wadudCall.publishPc.connectionState === 'connected'", "the late joiner's media"
    )
    late_from = time.time()
    remaining = max(RECORDED - (time.time() - started), LATE - (time.time() - late_from))
    if remaining > 0:
        await asyncio.sleep(remaining)
    await doctor.eval("window.wadudCall.record(false).then(() => true)")
    stopped = time.time()
    came = await asyncio.wait_for(watch, 10)
    world.mark("stopped")

    # 3. The recorder's files.
    recording = await pool.fetchval(
        """SELECT id FROM recordings WHERE booking_id = $1 AND state <> 'refused'
           ORDER BY created_at DESC LIMIT 1""",
        booking,
    )
    # The worker's last segments, then its stop, land as rows.
    await wait_state(pool, recording, lambda state: state != "recording", 20)
    # What the worker stored, per track, for a failure report.
    stored = [
        dict(r)
        for r in await pool.fetch(
            """SELECT participant, kind, count(*)::int AS segments, sum(packets)::int AS packets,
                      extract(epoch FROM max(ended_at) - min(started_at))::float AS span
               FROM recording_segments WHERE recording_id = $1
               GROUP BY participant, kind ORDER BY participant, kind""",
            recording,
        )
    ]

    # `wadud serve` runs a recorder in-process; this app is the calls' part
    # of it, so run one here, as `wadud recorder` would.
    from recording.http import AppParts
    from recording.recorder import Recorder
    from wadud.state import keys

    parts = AppParts(app)
    recorder = Recorder(pool, parts.keys, parts.storage, app[keys.SETTINGS])
    await recorder.start()
    try:
        state = await wait_state(pool, recording, lambda state: state in ("ready", "failed"), 60)
    finally:
        await recorder.close()
    if state != "ready":
        raise DriverError(f"the recording ended {state!r}, not ready")
    world.mark("ready")
    ids = {p.name: await p.eval("window.wadudCall.me.id") for p in [*pages, late]}
    walls = {ids[p.name]: stopped - started for p in pages}
    walls[ids[late.name]] = stopped - late_from
    sound = {
        who: (count - came.audio_from.get(who, 0)) * OPUS_PACKET
        for who, count in came.audio_to.items()
    }
    files = await _probe(
        app, booking, recording, sound, came, walls, world.browsers.work / "recordings"
    )
    return {
        "refused": refused,
        "agreed": {"badges": badges},
        "late": {"asked": asked, "tracks_before_answer": before, "tracks_after_answer": after},
        "files": files,
        "stored": stored,
        "timings": world.timings,
    }


@dataclass
class WhileRecording:
    """What the media worker received from each participant (by id) while
    it recorded, by its own counters: audio packets when recording started
    (or when they joined) and when it stopped; and on the loop's clock,
    when their first video packet had come and when the recording stopped.
    A starved browser's camera may start seconds after its microphone, and
    a file cannot hold a picture from before it did."""

    audio_from: dict[str, int]
    audio_to: dict[str, int]
    video_at: dict[str, float]
    stopped_at: float

    def video(self, who: str) -> float:
        """Seconds of the recording over which video from ``who`` came."""
        at = self.video_at.get(who)
        return -1.0 if at is None else self.stopped_at - at


async def while_recording(app: Any) -> WhileRecording:
    """Polls the media worker until its recording stops (module: the test's
    loop is the worker's)."""
    import sfu.node.http

    loop = asyncio.get_running_loop()
    recordings = app[sfu.node.http.WORKER].recordings
    first: dict[str, int] | None = None
    video_at: dict[str, float] = {}
    while True:
        if recordings.counts()["active"]:
            first = {**received(app, "audio"), **(first or {})}
            now = loop.time()
            for who, count in received(app, "video").items():
                if count:
                    video_at.setdefault(who, now)
        elif first is not None:
            return WhileRecording(first, received(app, "audio"), video_at, loop.time())
        await asyncio.sleep(0.02)


def received(app: Any, kind: str) -> dict[str, int]:
    """Packets of ``kind`` the media worker has received so far, by
    participant id (its own counters, RFC 3550 A.3; every simulcast layer)."""
    import sfu.node.http

    out: dict[str, int] = {}
    for room in app[sfu.node.http.WORKER].tables.rooms.values():
        for track in room.tracks.values():
            if track.info.kind != kind:
                continue
            ssrcs = {track.ssrc, *(layer.ssrc for layer in track.layers)}
            for ssrc in ssrcs:
                stats = track.publisher.recv_stats.get(ssrc)
                if stats is not None:
                    who = str(track.info.participant)
                    out[who] = out.get(who, 0) + stats.received
    return out


async def wait_state(
    pool: Any, recording: uuid.UUID, done: Callable[[str], bool], within: float
) -> str:
    deadline = time.monotonic() + within
    while True:
        state = str(await pool.fetchval("SELECT state FROM recordings WHERE id = $1", recording))
        if done(state) or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.2)


async def _probe(
    app: Any,
    booking: uuid.UUID,
    recording: uuid.UUID,
    sound: dict[str, float],
    came: WhileRecording,
    walls: dict[str, float],
    keep: Path,
) -> list[dict[str, Any]]:
    """Each of the recording's files as the booking's patient downloads it
    from the API, probed with PyAV and kept in ``keep``. By participant id:
    ``expected`` is the sound the media worker received from them while
    recording (``sound``, seconds), ``expected_video`` how long their video
    came over the same time (``came``), ``wall`` the test's clock over the
    same time (``walls``)."""
    import io

    import aiohttp
    import av

    from wadud.state import keys
    from wadud.web import auth

    pool = app[keys.DB]
    async with pool.acquire() as conn:
        patient = await conn.fetchval("SELECT patient_id FROM bookings WHERE id = $1", booking)
        pair = await auth.start_session(conn, app[keys.SETTINGS], patient)
    headers = {"Authorization": f"Bearer {pair.access_token}"}
    base = f"http://127.0.0.1:{HTTP_PORT}"
    out: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers=headers) as http:
        async with http.get(f"{base}/api/v1/bookings/{booking}/recordings") as r:
            listing = await r.json()
            if r.status != 200:
                raise DriverError(f"listing recordings: {r.status} {listing}")
        [rec] = [x for x in listing["recordings"] if x["id"] == str(recording)]
        for f in rec["files"]:
            async with http.get(base + f["url"]) as r:
                body = await r.read()
                if r.status != 200 or r.content_type != "video/webm":
                    raise DriverError(f"download {f['url']}: {r.status} {body[:200]!r}")
            await asyncio.to_thread(_keep, keep / f"{f['participant']}.webm", body)
            with av.open(io.BytesIO(body), "r") as container:
                kinds = sorted(s.type for s in container.streams)
                duration = (container.duration or 0) / av.time_base
                # The span of the video's own frames: a picture from start to end.
                times: dict[str, list[float]] = {"audio": [], "video": []}
                for packet in container.demux():
                    if packet.pts is not None and packet.time_base is not None:
                        at = float(packet.pts * packet.time_base)
                        times.setdefault(packet.stream.type, []).append(at)
                seen = times["video"]
                video = max(seen) - min(seen) if seen else 0.0
            out.append(
                {
                    "participant": f["participant"],
                    "streams": kinds,
                    "duration": round(duration, 2),
                    "video": round(video, 2),
                    "listed": f["duration_seconds"],
                    "expected": round(sound.get(f["participant"], -1.0), 2),
                    "expected_video": round(came.video(f["participant"]), 2),
                    "wall": round(walls.get(f["participant"], -1.0), 2),
                    # Where each stream starts and ends in the file (seconds).
                    **{
                        kind: [round(min(t), 2), round(max(t), 2)]
                        for kind, t in (("audio_at", times["audio"]), ("video_at", seen))
                        if t
                    },
                    "bytes": len(body),
                }
            )
    return out


def _keep(path: Path, body: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)


async def scenario_fail(world: World) -> dict[str, Any]:
    _app, pool, booking, pages = await in_call(world, relative=False)
    doctor, patient = pages
    await doctor.eval("window.wadudCall.record(true).then(() => true)")
    await patient.wait_for("!document.getElementById('consent').hidden", "the question")
    await click(patient, "#consent-yes")
    await doctor.wait_for("window.wadudCall.recording.state === 'on'", "recording on")
    world.mark("recording")
    for page in pages:
        await page.wait_for(
            "window.wadudCall.recording.state === 'off'", "the recording failed", within=30
        )
    world.mark("failed")
    ids = {p.name: await p.eval("window.wadudCall.me.id") for p in pages}
    after = {
        f"{p.name}<-{q.name}": await rises(
            p, ids[q.name], {"framesDecoded": 10, "audioPackets": 20}
        )
        for p in pages
        for q in pages
        if p is not q
    }
    row = await pool.fetchrow(
        "SELECT id, state, failure FROM recordings WHERE booking_id = $1", booking
    )
    webhook = await pool.fetchval(
        """SELECT count(*)::int FROM outbox WHERE topic = 'room.recording_failed'
           AND payload->>'booking_id' = $1""",
        str(booking),
    )
    return {
        "pages": {p.name: await _recording_state(p) for p in pages},
        "state": row["state"],
        "failure": row["failure"],
        "webhook": webhook,
        "after": after,
        "timings": world.timings,
    }


SCENARIOS = {"record": scenario_record, "fail": scenario_fail}

#: The media worker's store for ``fail``: no segment is stored in time.
SLOW_STORE = {"recording_segment_seconds": 0.5, "recording_write_timeout": 0.0001}


async def drive(scenario: str, database_url: str, work: Path, budget: float) -> dict[str, Any]:
    # The recorder waits a second, not ten, for a stopped recording's last
    # rows; the stop's NOTIFY wakes it (its poll is the default's).
    overrides: dict[str, Any] = SLOW_STORE if scenario == "fail" else {}
    async with serving(database_url, work, recording_grace=1.0, **overrides) as world:
        return await play(SCENARIOS[scenario](world), world.browsers, world.timings, budget)


if __name__ == "__main__":
    driver_main(__doc__, SCENARIOS, drive, 180)
