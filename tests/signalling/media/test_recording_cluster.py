"""A recording asked for early, in cluster mode (issue 39): real processes
(tests/cluster.py), one ``wadud api`` and a ``wadud media`` node on the
session's PostgreSQL and Redis, sharing the test app's data folder (its file
store) and secret, so the test app's recorder makes the files.

The doctor joins while no media node is up: the room gets no site at the
join. The node comes up, the doctor asks to record (alone, so everyone has
agreed at once) before anyone publishes; then the doctor publishes, and the
recording starts with that media. Its file decodes with ``ffmpeg -v error``
silent."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import pytest

from recording.http import AppParts
from recording.recorder import Recorder
from recording.store import open_file
from tests.booking.factories import make_clinic, make_doctor
from tests.booking.test_visits import _body, _key, _post
from tests.cluster import Cluster, running
from tests.conftest import Api, RedisServer
from tests.polling import wait_until
from tests.recording import media
from tests.recording.test_recordings import _raw_key
from wadud.config import Settings
from wadud.state import keys
from wadud.state.storage import storage_of
from wadud_client.call import CallClient
from wadud_client.sources import TestPatternVideo, ToneAudio

pytestmark = pytest.mark.timeout(240)


async def test_a_recording_asked_before_any_media_worker_starts_when_media_arrives(
    api: Api, settings: Settings, database_url: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    clinic = await make_clinic(api)
    doctor = await make_doctor(api, clinic)
    status, visit = await _post(api, "/api/v1/visits", _body(doctor.id), await _key(api, clinic.id))
    assert status == 201, visit
    cluster = Cluster(
        tmp_path / "cluster",
        database_url,
        redis_server.url,
        settings.secret_key,
        region="pk",
        extra_env={"WADUD_DATA_DIR": str(settings.data_dir)},
    )
    front = cluster.add_api("pk", region="pk")
    pool = api.app[keys.DB]
    async with running(cluster):
        host = CallClient(front.url, visit["links"][0]["token"], label="dr")
        try:
            await host.join()
            # No media node yet: the join placed no site for the room.
            assert not await cluster.placement()
            node = cluster.add_media("pk1", workers=1, region="pk")
            node.proc.start()
            await cluster.wait_registered(node)
            await host.request("record", on=True)

            async def state_is(want: str) -> bool:
                got = await pool.fetchval(
                    "SELECT state FROM recordings WHERE booking_id = $1", uuid.UUID(visit["id"])
                )
                return bool(got == want)

            async def segments(least: int) -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM recording_segments") >= least)

            await wait_until(lambda: state_is("recording"), within=20)
            assert host.recording.get("state") == "on"
            await host.publish({"microphone": ToneAudio(), "camera": TestPatternVideo()})
            # Both tracks, a few seconds each: the order waited for the media.
            await wait_until(lambda: segments(4), within=30)
            await host.request("record", on=False)
            await wait_until(lambda: state_is("stopped"), within=20)
        finally:
            await host.close()
    s = dataclasses.replace(api.app[keys.SETTINGS], recording_grace=0.0)
    parts = AppParts(api.app)
    assert await Recorder(pool, parts.keys, parts.storage, s).run_one() is True
    row = await pool.fetchrow(
        "SELECT * FROM recordings WHERE booking_id = $1", uuid.UUID(visit["id"])
    )
    assert row["state"] == "ready", row["failure"]
    (f,) = await pool.fetch("SELECT * FROM recording_files WHERE recording_id = $1", row["id"])
    data = open_file(
        await _raw_key(api, row),
        row["id"],
        f["id"],
        bytes(f["nonce"]),
        await storage_of(api.app).get(f["storage_key"]),
    )
    path = tmp_path / "doctor.webm"
    path.write_bytes(data)
    assert (f["audio"], f["video"]) == (True, True)
    assert media.ffmpeg_errors(path) == ""
