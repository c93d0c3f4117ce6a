"""The recordings API, and the recorder inside ``wadud serve``.

Who sees what: clinic staff of the booking's clinic, admins, and the
booking's own patient (the recording is theirs: it is sealed under their
key). Doctors get 403, as for call reports; anyone whose scope does not
hold the booking gets 404, as for every booking. Deleting a recording is
for clinic staff and admins.

Every download is an audit row (the patient's own too), and so is every
listing by someone other than the patient, and every deletion.

``install`` adds the routes and :data:`RECORDINGS`, the
:class:`~recording.store.Recordings` signalling calls; ``install_worker``
also runs a :class:`~recording.recorder.Recorder` in the process (``wadud
serve``, unless ``recording_in_serve`` is off).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any, Final, Literal
from uuid import UUID

from aiohttp import web

from booking.bookings.access import scope, visible_booking
from privacy.subject_keys import SubjectKeys
from recording.errors import BadTransition, RecordingFileNotFound, RecordingNotFound
from recording.privacy import delete_recordings
from recording.recorder import Recorder, available, subject_keys
from recording.store import LIVE, Recordings, open_file, recording_key
from wadud.errors import NotFound
from wadud.state import keys
from wadud.state.audit import record_about
from wadud.state.storage import Storage, storage_of
from wadud.web import workers
from wadud.web.api import ApiModel, Call, Role, Routes

__all__ = ["RECORDER", "RECORDINGS", "AppParts", "install", "install_worker", "routes"]

log = logging.getLogger("wadud.recording")

RECORDINGS = web.AppKey("recordings", Recordings)
RECORDER = web.AppKey("recorder", Recorder)
_KEYS: Final = "recording_subject_keys"

routes = Routes("recordings", "Recordings of video visits, made with everyone's consent.")

READERS = {Role.CLINIC_STAFF, Role.ADMIN, Role.PATIENT}
DELETERS = {Role.CLINIC_STAFF, Role.ADMIN}


class AppParts:
    """The app's patients' data keys and file store, made on first use."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    @property
    def keys(self) -> SubjectKeys:
        extras = self._app[keys.EXTRAS]
        found: SubjectKeys | None = extras.get(_KEYS)
        if found is None:
            found = extras[_KEYS] = subject_keys(self._app[keys.SETTINGS])
        return found

    @property
    def storage(self) -> Storage:
        return storage_of(self._app)


class Consent(ApiModel):
    participant: str
    role: str
    agreed: bool
    at: dt.datetime


class RecordingFile(ApiModel):
    id: UUID
    #: The participant id (``p-...``); empty for the composite.
    participant: str
    kind: Literal["participant", "composite"]
    duration_seconds: float
    size_bytes: int
    audio: bool
    video: bool
    created_at: dt.datetime
    #: Where to download it (``video/webm``).
    url: str


class RecordingOut(ApiModel):
    id: UUID
    booking_id: UUID
    room: str
    state: Literal["asking", "refused", "recording", "stopped", "processing", "ready", "failed"]
    failure: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    stopped_at: dt.datetime | None
    ready_at: dt.datetime | None
    consents: list[Consent]
    files: list[RecordingFile]


class RecordingList(ApiModel):
    recordings: list[RecordingOut]


@routes.get("/api/v1/bookings/{id:uuid}/recordings", returns=RecordingList, auth=READERS)
async def list_recordings(call: Call[None, None]) -> RecordingList:
    """The booking's recordings: state, each participant's consent answer,
    and the files once ready.

    For clinic staff of the booking's clinic, admins and the booking's
    patient; doctors 403; a booking outside the caller's scope 404."""
    me = call.user
    async with call.pool.acquire() as conn:
        booking = await visible_booking(conn, call.path_uuid("id"), me)
        recs = await conn.fetch(
            """SELECT id, booking_id, room, state, failure, created_at, started_at,
                      stopped_at, ready_at
               FROM recordings WHERE booking_id = $1 ORDER BY created_at, id""",
            booking["id"],
        )
        ids = [r["id"] for r in recs]
        consents = await conn.fetch(
            """SELECT recording_id, participant, role, agreed, at FROM recording_consents
               WHERE recording_id = ANY($1::uuid[]) ORDER BY id""",
            ids,
        )
        files = await conn.fetch(
            """SELECT id, recording_id, participant, kind, duration_seconds, size_bytes,
                      audio, video, created_at
               FROM recording_files WHERE recording_id = ANY($1::uuid[])
               ORDER BY created_at, id""",
            ids,
        )
        if me.role is not Role.PATIENT:
            await record_about(conn, booking, "booking", actor=me, action="recording.list")
    out = []
    for r in recs:
        mine_c = [c for c in consents if c["recording_id"] == r["id"]]
        mine_f = [f for f in files if f["recording_id"] == r["id"]]
        out.append(
            RecordingOut(
                **dict(r),
                consents=[
                    Consent(**{k: v for k, v in c.items() if k != "recording_id"}) for c in mine_c
                ],
                files=[
                    RecordingFile(
                        **{k: v for k, v in f.items() if k != "recording_id"},
                        url=f"/api/v1/recordings/{r['id']}/files/{f['id']}",
                    )
                    for f in mine_f
                ],
            )
        )
    return RecordingList(recordings=out)


async def _visible(call: Call[None, None]) -> Any:
    """The recording with its booking's patient, if the caller may see it."""
    me = call.user
    args: list[Any] = [call.path_uuid("id")]
    cond = scope(me, args)
    row = await call.pool.fetchrow(
        f"""SELECT r.* FROM recordings r JOIN bookings b ON b.id = r.booking_id
            WHERE r.id = $1 AND {cond}""",
        *args,
    )
    if row is None:
        raise RecordingNotFound("no such recording")
    return row


@routes.get(
    "/api/v1/recordings/{id:uuid}/files/{file_id:uuid}",
    returns={"content": {"video/webm": {"schema": {"type": "string", "format": "binary"}}}},
    responses={410: "The patient's data was erased"},
    auth=READERS,
)
async def download(call: Call[None, None]) -> web.Response:
    """One recorded file, decrypted: ``video/webm`` (VP8 and Opus).

    404 ``recording-not-found`` / ``recording-file-not-found``; 410
    ``recording-erased`` once the patient's data is erased. Every download
    is audited."""
    me = call.user
    rec = await _visible(call)
    file_id = call.path_uuid("file_id")
    f = await call.pool.fetchrow(
        "SELECT * FROM recording_files WHERE id = $1 AND recording_id = $2", file_id, rec["id"]
    )
    if f is None:
        raise RecordingFileNotFound("no such file of this recording")
    parts = AppParts(call.request.app)
    key = await recording_key(call.pool, parts.keys, rec)
    try:
        sealed = await parts.storage.get(f["storage_key"])
    except NotFound:
        raise RecordingFileNotFound("this file's stored bytes are gone") from None
    data = open_file(key, rec["id"], file_id, bytes(f["nonce"]), sealed)
    await record_about(
        call.pool,
        rec,
        "recording",
        actor=me,
        action="recording.download",
        detail={"file": str(file_id)},
    )
    return web.Response(
        body=data,
        content_type="video/webm",
        headers={
            "Content-Disposition": f'attachment; filename="recording-{file_id}.webm"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


@routes.delete(
    "/api/v1/recordings/{id:uuid}",
    responses={409: "Still asking or recording: stop it in the call first"},
    auth=DELETERS,
)
async def delete_recording(call: Call[None, None]) -> None:
    """Delete a recording: its files, segments, consents and row (audited).

    409 ``recording-bad-state`` while it is still asking or recording (stop
    it in the call first); 404 outside the caller's clinic."""
    me = call.user
    rec = await _visible(call)
    async with call.pool.acquire() as conn, conn.transaction():
        state = await conn.fetchval(
            "SELECT state FROM recordings WHERE id = $1 FOR UPDATE", rec["id"]
        )
        if state is None:
            raise RecordingNotFound("no such recording")
        if state in LIVE:
            raise BadTransition(f"the recording is {state}: stop it in the call first")
        gone = await delete_recordings(conn, [rec["id"]])
        await record_about(
            conn,
            rec,
            "recording",
            actor=me,
            action="recording.delete",
            detail={"objects": len(gone)},
        )
    storage = storage_of(call.request.app)
    for key in gone:
        with contextlib.suppress(Exception):
            await storage.delete(key)


async def _recordings(app: web.Application) -> AsyncIterator[None]:
    app[RECORDINGS] = Recordings(app[keys.DB], AppParts(app).keys)
    yield


async def _worker(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.recording_in_serve:
        yield
        return
    if not available():
        log.warning(
            "no recorder in this process: PyAV is not installed (pip install 'wadud[recorder]');"
            " stopped recordings wait for a `wadud recorder`"
        )
        yield
        return
    parts = AppParts(app)
    recorder = Recorder(app[keys.DB], parts.keys, parts.storage, settings)
    async with workers.in_app(app, RECORDER, recorder):
        yield


def install(app: web.Application) -> None:
    routes.install(app)
    app.cleanup_ctx.append(_recordings)


def install_worker(app: web.Application) -> None:
    app.cleanup_ctx.append(_worker)
