"""The recorder: stopped recordings made into one WebM per participant.

Runs as ``wadud recorder`` (:func:`run`; any number of replicas) and inside
``wadud serve`` (``recording.http.install_worker``, unless
``recording_in_serve`` is off). Never on media nodes: a media worker only
writes sealed RTP (:mod:`rtc.rtpdump`).

A job, and why it is safe with many replicas:

* Claim: a recording ``stopped`` at least ``recording_grace`` seconds ago
  (so the worker's last segment rows have landed), or ``processing`` whose
  lease ran out (a recorder died mid-way), is taken ``FOR UPDATE SKIP
  LOCKED`` and set ``processing`` with ``attempts + 1`` and a lease of
  ``recording_lease`` seconds, in one statement. The lease is renewed while
  the job runs; ``attempts`` is the job's fencing token: a recorder whose
  lease was taken over finds it changed and throws its work away.
* Work, outside any transaction: the recording key is unwrapped with the
  patient's data key; each segment is read from storage and opened with it
  (a missing or damaged segment is left out and counted); each
  participant's tracks are remuxed (:func:`recording.remux.remux`, in a
  thread) into a temporary file, sealed with the recording key (AES-256-GCM,
  a fresh nonce, AAD naming the recording and the file) and stored.
* Finish, in one transaction: the files' rows, ``ready``, the webhook event
  ``room.recording_ready``, and the segments' rows deleted; their stored
  objects are deleted after the commit (the files hold everything they
  did). A segment object whose delete fails is ciphertext under the
  recording key and goes with the patient's erasure.
* Errors: storage unreachable is retried after ``recording_grace`` (up to
  ``recording_max_attempts`` tries in all, crashes included); anything else
  (no playable frame, the patient erased meanwhile) is ``failed`` with a
  short reason and ``room.recording_failed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import asyncpg
from prometheus_client import Counter

from privacy.subject_keys import SubjectKeys
from recording import composite, remux
from recording.errors import RecordingError, RemuxError
from recording.store import announce, fail, recording_key, seal_file
from rtc.rtpdump import RtpDumpError, open_segment
from wadud.config import Settings
from wadud.errors import ConfigError, NotFound, UpstreamError
from wadud.messaging import loops, outbox
from wadud.state.storage import Storage

__all__ = ["Recorder", "available", "run", "subject_keys"]

log = logging.getLogger("wadud.recording")

JOBS = Counter(
    "wadud_recording_jobs_total", "Recordings the recorder finished, by outcome.", ["outcome"]
)

_CLAIM = """
WITH job AS (
    SELECT id FROM recordings
    WHERE (state = 'stopped' AND stopped_at <= now() - make_interval(secs => $1))
       OR (state = 'processing' AND lease_until < now())
    ORDER BY stopped_at
    LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE recordings r SET state = 'processing', attempts = r.attempts + 1,
    lease_until = now() + make_interval(secs => $2)
FROM job WHERE r.id = job.id
RETURNING r.*"""
#: Seconds until the next claim can find a job: a stopped recording's grace
#: ends, or a processing one's lease runs out. NULL: neither waits.
_NEXT_DUE = """
SELECT extract(epoch FROM least(
           min(stopped_at) FILTER (WHERE state = 'stopped') + make_interval(secs => $1),
           min(lease_until) FILTER (WHERE state = 'processing')) - now())::float8
FROM recordings WHERE state IN ('stopped', 'processing')"""
#: The channel of migration 0033's NOTIFY, sent when a recording stops.
CHANNEL = "wadud_recordings"


def available() -> bool:
    """Whether PyAV, which the remux needs, is installed (``wadud[recorder]``)."""
    import importlib.util

    return importlib.util.find_spec("av") is not None


def subject_keys(settings: Settings) -> SubjectKeys:
    """Patients' data keys, wrapped by the server keyring (the one chat's
    keys form, as every process that opens ``subject_keys`` rows uses)."""
    # Imported when called: only processes that open recordings need the ring.
    from chat.crypto import Keyring

    return Keyring.from_settings(settings).subjects


class _LeaseLost(RecordingError):
    """Another recorder took the job over (this one's lease ran out)."""


@dataclass
class _Track:
    header: Any
    packets: list[tuple[float, bytes]] = field(default_factory=list)


@dataclass
class _Made:
    file_id: UUID
    participant: str
    kind: str
    storage_key: str
    nonce: bytes
    result: remux.Remuxed
    size: int
    #: Its plaintext's name in the job's temporary folder (the composite's input).
    name: str = ""


class Recorder:
    """Claims and processes recordings; :meth:`start` runs the loop,
    :meth:`run_one` one job (tests, tools)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        keys: SubjectKeys,
        storage: Storage,
        settings: Settings,
        *,
        workdir: Path | None = None,
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.storage = storage
        self.settings = settings
        self.workdir = workdir
        self.done = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener = outbox.Listener(pool, lambda _payload: self._wake.set(), CHANNEL)

    async def start(self) -> None:
        # A stop wakes the loop (migration 0033's NOTIFY); it then sleeps
        # until that recording's grace has passed. The poll only bounds how
        # long a stop whose NOTIFY was missed waits.
        self._task = asyncio.create_task(
            loops.drain(
                self._look,
                self._wake,
                max(0.05, self.settings.recording_poll_interval),
                "recorder round failed; retrying",
                log,
                due=self._next_due,
            ),
            name="recorder",
        )

    async def close(self) -> None:
        task, self._task = self._task, None
        await loops.stopped(task)
        await self._listener.close()

    async def _look(self) -> bool:
        await self._listener.ensure()
        return await self.run_one()

    async def _next_due(self) -> float | None:
        """Seconds until a claim can find a job (0 or less: now), None when
        no recording waits: one statement, no lock."""
        await self._listener.ensure()
        ahead: float | None = await self.pool.fetchval(
            _NEXT_DUE, max(0.0, self.settings.recording_grace)
        )
        return ahead

    def wake(self) -> None:
        self._wake.set()

    # -- one job -------------------------------------------------------------

    async def claim(self) -> asyncpg.Record | None:
        """Take the next due recording (see the module's docstring), or None."""
        s = self.settings
        return await self.pool.fetchrow(_CLAIM, max(0.0, s.recording_grace), s.recording_lease)

    async def run_one(self) -> bool:
        """Claim and process one recording; False when none was due."""
        row = await self.claim()
        if row is None:
            return False
        await self.process(row)
        return True

    async def run_until_idle(self, seconds: float = 30.0) -> int:
        """Process until nothing is due; return how many jobs ran."""
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline and await self.run_one():
            n += 1
        return n

    async def process(self, row: asyncpg.Record) -> None:
        """Do a claimed job to its end: ``ready``, ``failed``, or (storage
        unreachable) left for a later try."""
        rid, attempt = row["id"], row["attempts"]
        if attempt > self.settings.recording_max_attempts:
            await self._fail(rid, attempt, f"gave up after {attempt - 1} tries")
            JOBS.labels("failed").inc()
            return
        heartbeat = asyncio.create_task(self._renew(rid, attempt), name=f"recording-lease-{rid}")
        made: list[_Made] = []
        try:
            notes = await self._make(row, made)
            await self._finish(row, made, notes)
            JOBS.labels("ready").inc()
            self.done += 1
        except _LeaseLost:
            log.warning(
                "recording job taken over; dropping this try", extra={"recording": str(rid)}
            )
            await self._forget(made)
        except UpstreamError as exc:
            await self._forget(made)
            log.warning(
                "recording job will be retried", extra={"recording": str(rid), "error": str(exc)}
            )
            await self.pool.execute(
                """UPDATE recordings SET lease_until = now() + make_interval(secs => $3)
                   WHERE id = $1 AND attempts = $2 AND state = 'processing'""",
                rid,
                attempt,
                max(1.0, self.settings.recording_grace),
            )
            JOBS.labels("retried").inc()
        except Exception as exc:
            await self._forget(made)
            if not isinstance(exc, RecordingError):
                log.exception("recording job failed", extra={"recording": str(rid)})
            reason = str(exc) if isinstance(exc, RecordingError) else type(exc).__name__
            await self._fail(rid, attempt, reason)
            JOBS.labels("failed").inc()
        finally:
            await loops.stopped(heartbeat)

    async def _renew(self, rid: UUID, attempt: int) -> None:
        lease = self.settings.recording_lease
        while True:
            loops.go_on()
            await asyncio.sleep(max(0.05, lease / 3))
            with contextlib.suppress(Exception):
                await self.pool.execute(
                    """UPDATE recordings SET lease_until = now() + make_interval(secs => $3)
                       WHERE id = $1 AND attempts = $2 AND state = 'processing'""",
                    rid,
                    attempt,
                    lease,
                )

    async def _fail(self, rid: UUID, attempt: int, reason: str) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT * FROM recordings
                   WHERE id = $1 AND attempts = $2 AND state = 'processing' FOR UPDATE""",
                rid,
                attempt,
            )
            if row is not None:
                await fail(conn, row, reason)

    async def _forget(self, made: Sequence[_Made]) -> None:
        for m in made:
            with contextlib.suppress(Exception):
                await self.storage.delete(m.storage_key)

    async def _tracks(
        self, row: asyncpg.Record, key: bytes
    ) -> tuple[dict[str, dict[str, _Track]], int]:
        """Each participant's tracks, their segments opened in order; and how
        many segments were missing or did not open."""
        segments = await self.pool.fetch(
            """SELECT participant, track_id, index, storage_key FROM recording_segments
               WHERE recording_id = $1 ORDER BY participant, track_id, index""",
            row["id"],
        )
        by: dict[str, dict[str, _Track]] = {}
        bad = 0
        for s in segments:
            try:
                blob = await self.storage.get(s["storage_key"])
                seg = await asyncio.to_thread(open_segment, blob, key)
            except (NotFound, RtpDumpError) as exc:
                bad += 1
                log.warning(
                    "a recorded segment is left out",
                    extra={"recording": str(row["id"]), "index": s["index"], "error": str(exc)},
                )
                continue
            h = seg.header
            if h.recording != str(row["id"]) or h.track != s["track_id"] or h.index != s["index"]:
                bad += 1  # a row pointing at another recording's or track's segment
                continue
            track = by.setdefault(s["participant"], {}).setdefault(s["track_id"], _Track(h))
            track.packets += seg.packets
        return by, bad

    async def _make(self, row: asyncpg.Record, made: list[_Made]) -> dict[str, Any]:
        rid = row["id"]
        key = await recording_key(self.pool, self.keys, row)
        by, bad = await self._tracks(row, key)
        skipped: list[str] = []
        with tempfile.TemporaryDirectory(dir=self.workdir, prefix="wadud-rec-") as tmp:
            for n, (participant, tracks) in enumerate(sorted(by.items())):
                media = [
                    remux.TrackMedia(
                        t.header.kind,
                        t.header.codec,
                        t.header.clock_rate,
                        t.header.payload_type,
                        t.packets,
                    )
                    for t in tracks.values()
                ]
                name = f"p{n}.webm"
                path = Path(tmp) / name
                try:
                    result = await asyncio.to_thread(remux.remux, media, path)
                except RemuxError as exc:
                    skipped.append(f"{participant}: {exc}")
                    continue
                skipped += [f"{participant}: {s}" for s in result.skipped]
                # What a player will see: the file opens, with its streams.
                try:
                    probe = await asyncio.to_thread(remux.probe, path)
                except Exception as exc:
                    skipped.append(f"{participant}: the file did not open ({exc})")
                    continue
                if probe.audio + probe.video == 0:
                    skipped.append(f"{participant}: the file has no stream")
                    continue
                result.duration = probe.duration
                data = await asyncio.to_thread(path.read_bytes)
                file_id = uuid4()
                nonce, sealed = seal_file(key, rid, file_id, data)
                made.append(
                    _Made(
                        file_id,
                        participant,
                        "participant",
                        await self.storage.put(sealed),
                        nonce,
                        result,
                        len(data),
                        name,
                    )
                )
            if not made:
                why = "; ".join(skipped) or "no segment was stored"
                raise RemuxError(f"nothing playable was recorded ({why})"[:500])
            if self.settings.recording_composite:
                await self._composite(rid, key, Path(tmp), made)
        return {"segments_left_out": bad, "tracks_left_out": skipped}

    async def _composite(self, rid: UUID, key: bytes, tmp: Path, made: list[_Made]) -> None:
        """The side-by-side file, transcoded here (never on a media node). A
        failure leaves the participants' files standing and is logged."""
        first = min(m.result.start for m in made)
        sources = [composite.Source(tmp / m.name, m.result.start - first) for m in made]
        path = tmp / "composite.webm"
        try:
            duration = await asyncio.to_thread(composite.composite, sources, path)
            probe = await asyncio.to_thread(remux.probe, path)
        except Exception:
            log.exception("the composite could not be made", extra={"recording": str(rid)})
            return
        data = await asyncio.to_thread(path.read_bytes)
        file_id = uuid4()
        nonce, sealed = seal_file(key, rid, file_id, data)
        result = remux.Remuxed(
            duration, probe.audio > 0, probe.video > 0, probe.width, probe.height
        )
        made.append(
            _Made(
                file_id, "", "composite", await self.storage.put(sealed), nonce, result, len(data)
            )
        )

    async def _finish(
        self, row: asyncpg.Record, made: Sequence[_Made], notes: dict[str, Any]
    ) -> None:
        rid = row["id"]
        async with self.pool.acquire() as conn, conn.transaction():
            mine = await conn.fetchrow(
                """SELECT * FROM recordings
                       WHERE id = $1 AND attempts = $2 AND state = 'processing' FOR UPDATE""",
                rid,
                row["attempts"],
            )
            if mine is None:
                raise _LeaseLost("lost the lease")
            await conn.executemany(
                """INSERT INTO recording_files (id, recording_id, clinic_id, participant,
                           kind, storage_key, nonce, duration_seconds, size_bytes, audio, video)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
                [
                    (
                        m.file_id,
                        rid,
                        row["clinic_id"],
                        m.participant,
                        m.kind,
                        m.storage_key,
                        m.nonce,
                        m.result.duration,
                        m.size,
                        m.result.audio,
                        m.result.video,
                    )
                    for m in made
                ],
            )
            at = await conn.fetchval(
                """UPDATE recordings SET state = 'ready', ready_at = now(), lease_until = NULL,
                           failure = NULL
                       WHERE id = $1 RETURNING ready_at""",
                rid,
            )
            await announce(
                conn,
                row,
                "recording_ready",
                at,
                files=len(made),
                duration_seconds=max(m.result.duration for m in made),
            )
            gone = await conn.fetch(
                "DELETE FROM recording_segments WHERE recording_id = $1 RETURNING storage_key",
                rid,
            )
        log.info("recording ready", extra={"recording": str(rid), "files": len(made), **notes})
        for g in gone:
            try:
                await self.storage.delete(g["storage_key"])
            except Exception:
                log.warning("a segment could not be deleted", extra={"recording": str(rid)})


async def run(settings: Settings) -> int:
    """``wadud recorder``: the recorder until SIGTERM or SIGINT."""
    from wadud.state import db, storage
    from wadud.web import workers

    if not available():
        raise ConfigError("wadud recorder needs PyAV: pip install 'wadud[recorder]'")
    if not settings.secret_key and not settings.chat_encryption_keys:
        # The patients' keys are wrapped by the server keyring, which is
        # derived from the secret key unless chat keys are set: a recorder
        # with a key of its own could open nothing.
        raise ConfigError(
            "wadud recorder needs the api's WADUD_SECRET_KEY (or WADUD_CHAT_ENCRYPTION_KEYS)"
        )
    stop = workers.stop_on_signals()
    async with contextlib.AsyncExitStack() as stack:
        _, pool = await stack.enter_async_context(db.database(settings))
        store = storage.create(settings)
        stack.push_async_callback(store.close)
        recorder = Recorder(pool, subject_keys(settings), store, settings)
        await workers.start_worker(stack, settings, pool, recorder)
        log.info("recorder running")
        print("wadud recorder: running", flush=True)
        await stop.wait()
    return 0
