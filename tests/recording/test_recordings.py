"""Recording a visit (issue 23), everything after the media worker, with real
PostgreSQL, real storage and real media: the store's state machine and its
typed errors, the recorder end to end on segments of aiortc-encoded RTP
(lost and reordered packets included), a recorder that dies mid-job, the
API's access rules, the patient's export and erasure, and retention."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import io
import json
import uuid
import zipfile
from pathlib import Path
from typing import Any

import pytest

from privacy import retention, rights
from privacy.subject_keys import KeyShredded, SubjectKeys
from recording import privacy as recording_privacy
from recording import remux
from recording.errors import AlreadyRecording, BadTransition, RecordingErased, RecordingNotFound
from recording.http import RECORDINGS, AppParts
from recording.recorder import Recorder
from recording.store import Recordings, open_file, recording_key
from tests.booking.bookings.test_bookings import anon, events, local, pool_of, requested
from tests.booking.factories import Clinic, Doctor, make_clinic
from tests.conftest import Api
from tests.polling import wait_until
from tests.recording import media
from wadud.errors import NotFound
from wadud.state import keys
from wadud.state.storage import storage_of
from wadud.web.api import Role


@dataclasses.dataclass
class Visit:
    booking: uuid.UUID
    room: str
    patient_token: str
    patient_id: uuid.UUID


async def visit(api: Api, doctor: Doctor) -> Visit:
    token, bid, _ = await requested(api, doctor, local(2, "10:00"))
    booking = uuid.UUID(bid)
    patient = await pool_of(api).fetchval("SELECT patient_id FROM bookings WHERE id = $1", booking)
    return Visit(booking, f"booking-{bid}", token, patient)


def recordings(api: Api) -> Recordings:
    return api.app[RECORDINGS]


def recorder(api: Api, **settings: Any) -> Recorder:
    s = dataclasses.replace(api.app[keys.SETTINGS], **{"recording_grace": 0.0, **settings})
    parts = AppParts(api.app)
    return Recorder(pool_of(api), parts.keys, parts.storage, s)


async def recorded(api: Api, v: Visit, seconds: float = 4.0, *, lossy: bool = False) -> uuid.UUID:
    """A recording of ``v`` everyone agreed to, with ``seconds`` of a doctor's
    and a patient's camera and microphone stored as sealed segments, stopped."""
    store = recordings(api)
    rid = await store.request(v.booking, v.room, None)
    await store.answer(rid, "p-doctor", None, "doctor", True)
    await store.answer(rid, "p-patient", v.patient_id, "patient", True)
    key = base64.urlsafe_b64decode(await store.start(rid))
    storage = storage_of(api.app)
    start = 1_700_000_000.0
    people = {
        "p-doctor": [media.video(seconds, start, ssrc=1), media.audio(seconds, start, ssrc=2)],
        "p-patient": [
            media.video(seconds, start + 0.2, ssrc=3, width=320, height=240),
            media.audio(seconds, start + 0.1, ssrc=4),
        ],
    }
    for participant, tracks in people.items():
        for track in tracks:
            if lossy and participant == "p-patient":
                track = media.damaged(track, loss=0.05, reorder=0.1)
            tid = f"{participant}-{track.kind}"
            for header, count, blob in media.segments(track, str(rid), tid, key):
                skey = await storage.put(blob)
                ended = header.started + 2.0
                args = (participant, tid, track.kind, header.index, skey, count, len(blob))
                await store.segment(rid, *args, header.started, ended)
                await store.segment(rid, *args, header.started, ended)  # a retry: one row
    await store.stop(rid)
    return rid


async def test_the_store_s_state_machine_and_its_typed_errors(api: Api, doctor: Doctor) -> None:
    store, v = recordings(api), await visit(api, doctor)
    pool = pool_of(api)
    with pytest.raises(RecordingNotFound):
        await store.request(uuid.uuid4(), "booking-x", None)
    rid = await store.request(v.booking, v.room, uuid.UUID(doctor.user_id))
    assert await store.active(v.booking) == (await store.get(rid))
    assert (await store.get(rid)).state == "asking"
    with pytest.raises(AlreadyRecording) as already:
        await store.request(v.booking, v.room, None)
    assert already.value.http_status == 409
    # The key is stored wrapped under the patient's data key, never raw.
    row = await pool.fetchrow("SELECT * FROM recordings WHERE id = $1", rid)
    assert row["key_id"].startswith("s:") and row["patient_id"] == v.patient_id
    assert len(row["key_sealed"]) == 32 + 16
    # The patient refuses: refused, and nothing can start it.
    assert await store.answer(rid, "p-2", v.patient_id, "patient", False) == "refused"
    with pytest.raises(BadTransition):
        await store.start(rid)
    assert await store.active(v.booking) is None
    # Another request may follow; all agree, it starts, once.
    rid = await store.request(v.booking, v.room, None)
    assert await store.answer(rid, "p-1", None, "doctor", True) == "asking"
    raw = base64.urlsafe_b64decode(await store.start(rid))
    assert len(raw) == 32
    with pytest.raises(BadTransition):
        await store.start(rid)
    started = await events(api, "room.recording_started")
    assert started[-1]["booking_id"] == str(v.booking)
    assert started[-1]["data"] == {"recording_id": str(rid)}
    # A late joiner refuses: it stops (kept for the recorder); a second stop is no error.
    assert await store.answer(rid, "p-3", None, "patient", False) == "stopped"
    await store.stop(rid)
    assert (await store.get(rid)).state == "stopped"
    # Segments: idempotent, typed errors for a bad kind or an unknown recording.
    args = ("p-1", "t1", "video", 0, "ab" * 32, 10, 1000, 1.0, 2.0)
    await store.segment(rid, *args)
    await store.segment(rid, *args)
    assert await pool.fetchval("SELECT count(*) FROM recording_segments") == 1
    with pytest.raises(RecordingNotFound):
        await store.segment(uuid.uuid4(), *args)
    with pytest.raises(Exception, match="audio or video"):
        await store.segment(rid, "p-1", "t1", "screen", 1, "ab" * 32, 1, 1, 1.0, 2.0)
    # A failure while recording: failed, with its event and reason.
    rid = await store.request(v.booking, v.room, None)
    await store.start(rid)
    await store.stop(rid, failure="storage full on the media node")
    assert (await store.get(rid)).state == "failed"
    failed = await events(api, "room.recording_failed")
    assert failed[-1]["data"]["reason"] == "storage full on the media node"
    # A call that ends while still asking: refused.
    rid = await store.request(v.booking, v.room, None)
    await store.stop(rid)
    assert (await store.get(rid)).state == "refused"
    # Every answer is in the audit trail, with ids and no names.
    audited = await pool.fetch(
        "SELECT detail FROM audit_log WHERE action = 'recording.consent' ORDER BY seq"
    )
    assert [json.loads(r["detail"])["agreed"] for r in audited] == [False, True, False]


async def test_the_recorder_makes_each_participant_s_webm(
    api: Api, doctor: Doctor, tmp_path: Path
) -> None:
    v = await visit(api, doctor)
    rid = await recorded(api, v, lossy=True)
    pool = pool_of(api)
    segments = await pool.fetch("SELECT storage_key FROM recording_segments")
    assert len(segments) == 8  # 2 people x 2 tracks x 2 segments
    # Within the grace nothing is taken; after it, one job.
    assert await recorder(api, recording_grace=60.0).run_one() is False
    assert await recorder(api).run_until_idle() == 1
    rec = await pool.fetchrow("SELECT * FROM recordings WHERE id = $1", rid)
    assert rec["state"] == "ready", rec["failure"]
    ready = await events(api, "room.recording_ready")
    assert ready[-1]["data"]["recording_id"] == str(rid) and ready[-1]["data"]["files"] == 2
    # The clinic's staff list it and download each file: WebM that plays.
    listing = await api.get(
        f"/api/v1/bookings/{v.booking}/recordings", token=(await _staff(api, doctor))
    )
    (got,) = listing["recordings"]
    assert got["state"] == "ready" and len(got["consents"]) == 2
    assert sorted(f["participant"] for f in got["files"]) == ["p-doctor", "p-patient"]
    for f in got["files"]:
        resp = await api.client.get(
            f["url"], headers={"Authorization": f"Bearer {v.patient_token}"}
        )
        assert resp.status == 200 and resp.headers["Content-Type"] == "video/webm"
        path = tmp_path / f"{f['participant']}.webm"
        path.write_bytes(await resp.read())
        probe = remux.probe(path)
        assert (probe.audio, probe.video) == (1, 1)
        assert media.ffmpeg_errors(path) == ""
        assert abs(probe.duration - 4.0) < 1.0 and abs(f["duration_seconds"] - 4.0) < 1.0
    # The segments went once the files held everything.
    assert await pool.fetchval("SELECT count(*) FROM recording_segments") == 0
    with pytest.raises(NotFound):
        await storage_of(api.app).get(segments[0]["storage_key"])
    # The files are stored sealed: no WebM header in the stored bytes.
    stored = await storage_of(api.app).get(
        await pool.fetchval("SELECT storage_key FROM recording_files LIMIT 1")
    )
    assert b"webm" not in stored[:64]
    n = await pool.fetchval("SELECT count(*) FROM audit_log WHERE action = 'recording.download'")
    assert n == 2


async def _staff(api: Api, doctor: Doctor) -> str:
    return await api.user(Role.CLINIC_STAFF, clinic_id=doctor.clinic_id)


async def test_a_recorder_that_dies_mid_job_is_replaced_after_its_lease(
    api: Api, doctor: Doctor
) -> None:
    v = await visit(api, doctor)
    rid = await recorded(api, v, seconds=2.0)
    pool = pool_of(api)
    dead = recorder(api, recording_lease=0.5)
    assert await dead.claim() is not None  # ... and then the process is killed
    other = recorder(api, recording_lease=0.5)
    assert await other.run_one() is False  # the lease still holds
    await asyncio.sleep(0.6)
    assert await other.run_one() is True
    rec = await pool.fetchrow("SELECT state, attempts FROM recordings WHERE id = $1", rid)
    assert (rec["state"], rec["attempts"]) == ("ready", 2)
    # One that keeps dying is given up after recording_max_attempts tries.
    rid = await recorded(api, v, seconds=2.0)
    for _ in range(3):
        assert await recorder(api, recording_lease=0.01).claim() is not None
        await asyncio.sleep(0.05)
    assert await recorder(api).run_one() is True
    rec = await pool.fetchrow("SELECT state, failure FROM recordings WHERE id = $1", rid)
    assert rec["state"] == "failed" and "gave up after 3 tries" in rec["failure"]
    assert (await events(api, "room.recording_failed"))[-1]["data"]["recording_id"] == str(rid)


async def test_a_stop_wakes_a_running_recorder_which_takes_the_job_when_its_grace_ends(
    api: Api, doctor: Doctor
) -> None:
    # Its poll is a minute here: the stop's NOTIFY (migration 0033) wakes it,
    # and it sleeps until the grace has passed, then claims at once; a dead
    # recorder's job is taken when its lease runs out, also with no poll.
    pool = pool_of(api)
    loop = recorder(api, recording_grace=1.0, recording_poll_interval=60.0, recording_lease=2.0)
    await loop.start()
    try:
        await wait_until(
            lambda: pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN \"wadud_recordings\"'"
            )
        )
        v = await visit(api, doctor)
        rid = await recorded(api, v, seconds=2.0)
        await wait_until(lambda: loop.done >= 1, within=15)
        rec = await pool.fetchrow("SELECT * FROM recordings WHERE id = $1", rid)
        assert rec["state"] == "ready"
        # By the database's clock: claimed once the grace had passed.
        assert rec["ready_at"] - rec["stopped_at"] >= dt.timedelta(seconds=1.0)
        rid = await recorded(api, v, seconds=2.0)
        dead = recorder(api, recording_lease=2.0)
        assert await dead.claim() is not None  # before the loop's grace: and it dies
        await wait_until(lambda: loop.done >= 2, within=15)
        rec = await pool.fetchrow("SELECT state, attempts FROM recordings WHERE id = $1", rid)
        assert (rec["state"], rec["attempts"]) == ("ready", 2)
    finally:
        await loop.close()


async def test_nothing_playable_fails_with_a_reason(api: Api, doctor: Doctor) -> None:
    v = await visit(api, doctor)
    store = recordings(api)
    rid = await store.request(v.booking, v.room, None)
    await store.start(rid)
    # A segment row whose object never landed, and one sealed with another key.
    await store.segment(rid, "p-1", "t1", "audio", 0, "cd" * 32, 5, 500, 1.0, 2.0)
    track = media.audio(1, 1000.0)
    [(_, count, blob)] = media.segments(track, str(rid), "t2", b"k" * 32)
    skey = await storage_of(api.app).put(blob)
    await store.segment(rid, "p-1", "t2", "audio", 0, skey, count, len(blob), 1.0, 2.0)
    await store.stop(rid)
    assert await recorder(api).run_one() is True
    rec = await pool_of(api).fetchrow("SELECT state, failure FROM recordings WHERE id = $1", rid)
    assert rec["state"] == "failed" and rec["failure"].startswith("nothing playable")


async def test_who_may_list_download_and_delete(api: Api, clinic: Clinic, doctor: Doctor) -> None:
    v = await visit(api, doctor)
    rid = await recorded(api, v, seconds=2.0)
    await recorder(api).run_one()
    path = f"/api/v1/bookings/{v.booking}/recordings"
    listing = await api.get(path, token=clinic.staff_token, expect=200)
    url = listing["recordings"][0]["files"][0]["url"]
    admin = await api.user(Role.ADMIN)
    await api.get(path, token=admin, expect=200)
    await api.get(path, token=v.patient_token, expect=200)
    resp = await api.client.get(url, headers={"Authorization": f"Bearer {clinic.staff_token}"})
    assert resp.status == 200 and (await resp.read())[:4] == b"\x1a\x45\xdf\xa3"
    # The visit's doctor: not a reader (403); another clinic: no such
    # booking or recording (404); another booking's patient: 404.
    assert (await api.get(path, token=doctor.token, expect=403))["status"] == 403
    await api.get(url, token=doctor.token, expect=403)
    other = await make_clinic(api, name="Other Clinic")
    body = await api.get(path, token=other.staff_token, expect=404)
    assert body["status"] == 404
    body = await api.get(url, token=other.staff_token, expect=404)
    assert body["code"] == "recording-not-found"
    stranger = await anon(api)
    await api.get(path, token=stranger, expect=404)
    await api.get(url, token=stranger, expect=404)
    await api.delete(f"/api/v1/recordings/{rid}", token=other.staff_token, expect=404)
    await api.delete(f"/api/v1/recordings/{rid}", token=v.patient_token, expect=403)
    await api.get(path, expect=401)
    # Bad ids: typed 404s.
    body = await api.get(f"/api/v1/recordings/{rid}/files/{uuid.uuid4()}", token=admin, expect=404)
    assert body["code"] == "recording-file-not-found"
    await api.get(f"/api/v1/recordings/{rid}/files/nope", token=admin, expect=404)
    await api.get("/api/v1/bookings/not-an-id/recordings", token=admin, expect=404)
    body = await api.delete(f"/api/v1/recordings/{uuid.uuid4()}", token=admin, expect=404)
    assert body["code"] == "recording-not-found"
    # A live recording is stopped in the call, not deleted under it.
    live = await recordings(api).request(v.booking, v.room, None)
    body = await api.delete(f"/api/v1/recordings/{live}", token=clinic.staff_token, expect=409)
    assert body["code"] == "recording-bad-state"
    # Clinic staff delete the recording: rows and objects gone, audited.
    keys_ = [
        r["storage_key"]
        for r in await pool_of(api).fetch("SELECT storage_key FROM recording_files")
    ]
    await api.delete(f"/api/v1/recordings/{rid}", token=clinic.staff_token, expect=204)
    await api.get(url, token=admin, expect=404)
    assert [r["id"] for r in (await api.get(path, token=admin))["recordings"]] == [str(live)]
    for k in keys_:
        with pytest.raises(NotFound):
            await storage_of(api.app).get(k)
    audited = await pool_of(api).fetch(
        "SELECT action FROM audit_log WHERE action LIKE 'recording.%'"
    )
    assert {"recording.list", "recording.download", "recording.delete"} <= {
        r["action"] for r in audited
    }
    spec = await api.get("/api/v1/openapi.json", expect=200)
    assert "get" in spec["paths"]["/api/v1/recordings/{id}/files/{file_id}"]
    assert "delete" in spec["paths"]["/api/v1/recordings/{id}"]


async def test_export_holds_the_recording_and_erasure_shreds_it(api: Api, doctor: Doctor) -> None:
    v = await visit(api, doctor)
    rid = await recorded(api, v, seconds=2.0)
    await recorder(api).run_one()
    # A segment the worker stored late, after the recorder finished.
    store, pool, storage = recordings(api), pool_of(api), storage_of(api.app)
    row = await pool.fetchrow("SELECT * FROM recordings WHERE id = $1", rid)
    key = await _raw_key(api, row)
    [(_, count, late)] = media.segments(media.audio(1, 1000.0), str(rid), "late", key)
    late_key = await storage.put(late)
    await store.segment(rid, "p-doctor", "late", "audio", 0, late_key, count, len(late), 1.0, 2.0)
    resp = await api.client.get(
        "/api/v1/me/export", headers={"Authorization": f"Bearer {v.patient_token}"}
    )
    assert resp.status == 200, await resp.text()
    archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    webms = [
        n for n in archive.namelist() if n.startswith("files/recordings/") and n.endswith(".webm")
    ]
    assert len(webms) == 2
    assert archive.read(webms[0])[:4] == b"\x1a\x45\xdf\xa3"  # EBML: a WebM file
    listed = json.loads(archive.read("recordings/recordings.json"))
    assert listed[0]["id"] == str(rid) and "key_sealed" not in listed[0]
    files = [r["storage_key"] for r in await pool.fetch("SELECT storage_key FROM recording_files")]
    counts = await rights.erase(pool, rights.providers_of(api.app), v.patient_id, storage=storage)
    assert counts["recordings.recordings"] == 1
    assert await pool.fetchval("SELECT count(*) FROM recordings") == 0
    for k in [*files, late_key]:
        with pytest.raises(NotFound):
            await storage.get(k)
    # And a copy kept elsewhere (a backup of the row and of the objects)
    # does not open: the patient's key is gone, so the recording key, the
    # only key that opens a segment or file, cannot be unwrapped. (A new
    # process: this one's cache keeps a key up to CACHE_SECONDS.)
    fresh = SubjectKeys(AppParts(api.app).keys.wrapper)
    with pytest.raises(RecordingErased):
        await recording_key(pool, fresh, row)
    with pytest.raises(KeyShredded):
        await fresh.open(
            pool, row["key_id"], bytes(row["key_nonce"]), bytes(row["key_sealed"]), b""
        )


async def _raw_key(api: Api, row: Any) -> bytes:
    return await recording_key(pool_of(api), AppParts(api.app).keys, row)


async def test_retention_deletes_old_recordings(api: Api, doctor: Doctor) -> None:
    v = await visit(api, doctor)
    rid = await recorded(api, v, seconds=2.0)
    await recorder(api).run_one()
    pool, storage = pool_of(api), storage_of(api.app)
    file_key = await pool.fetchval("SELECT storage_key FROM recording_files LIMIT 1")
    settings = api.app[keys.SETTINGS]
    rules = recording_privacy.retention_rules()
    now = dt.datetime.now(dt.UTC)
    async with pool.acquire() as conn:
        ctx = retention.RoundContext(now + dt.timedelta(days=89), False, 100, storage, settings)
        assert (await retention.run_rules(conn, rules, ctx))[0].rows == 0
        ctx = retention.RoundContext(now + dt.timedelta(days=91), True, 100, storage, settings)
        assert (await retention.run_rules(conn, rules, ctx))[0].rows == 1
        ctx = retention.RoundContext(now + dt.timedelta(days=91), False, 100, storage, settings)
        assert (await retention.run_rules(conn, rules, ctx))[0].rows == 1
    assert await pool.fetchval("SELECT count(*) FROM recordings WHERE id = $1", rid) == 0
    with pytest.raises(NotFound):
        await storage.get(file_key)


async def test_the_optional_composite_puts_everyone_side_by_side(
    api: Api, doctor: Doctor, tmp_path: Path
) -> None:
    v = await visit(api, doctor)
    rid = await recorded(api, v, seconds=2.0)
    assert await recorder(api, recording_composite=True).run_one() is True
    pool, storage = pool_of(api), storage_of(api.app)
    row = await pool.fetchrow("SELECT * FROM recordings WHERE id = $1", rid)
    assert row["state"] == "ready", row["failure"]
    f = await pool.fetchrow("SELECT * FROM recording_files WHERE kind = 'composite'")
    assert f["participant"] == ""
    data = open_file(
        await _raw_key(api, row),
        rid,
        f["id"],
        bytes(f["nonce"]),
        await storage.get(f["storage_key"]),
    )
    path = tmp_path / "composite.webm"
    path.write_bytes(data)
    probe = remux.probe(path)
    assert (probe.audio, probe.video, probe.width, probe.height) == (1, 1, 2 * 480, 360)
    assert media.ffmpeg_errors(path) == ""
    assert abs(probe.duration - 2.2) < 1.0
