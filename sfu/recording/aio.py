"""The media worker's recordings: the adapter of :mod:`sfu.recording.core` (issue 23).

:class:`RecordingWriter` is what :meth:`sfu.node.worker.MediaWorker.record`
drives. For each recorded room it runs two tasks beside the forwarding path,
never in it: a *ticker* that every ``tick`` seconds drains the room's queue
into segments (:meth:`sfu.recording.core.RoomRecording.tick`) and checks the
backlog, and a *storer* that seals each segment that ended in a thread
(AES-GCM over a megabyte is work the loop should not wait for) and puts it
in the file store (:mod:`wadud.state.storage`), then says so with a
:class:`~sfu.control.messages.RecordingSegment`.

A slow or broken store ends the recording, never the call: when what waits
(packets not drained, segments not stored) passes ``queue_bytes``, or a put
raises or takes longer than ``write_timeout``, the recording is detached
from the room, what it held is dropped, a warning is logged, the failure is
counted (``sfu_recordings_failed_total{reason}``) and
:class:`~sfu.control.messages.RecordingStopped` says ``failed`` and why. Stopping
(``record(room, None)``, the room closing, the worker closing) stores what
is open and then says ``stopped``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sfu.control.messages import MediaEvent, RecordingOrder, RecordingSegment, RecordingStopped
from sfu.errors import SfuStateError
from sfu.recording.core import Cut, RoomRecording
from sfu.rooms.records import MediaRoom, WorkerTables
from wadud.state.storage import Storage, create

if TYPE_CHECKING:
    from wadud.config import Settings

__all__ = ["RecordingWriter", "recording_options"]

log = logging.getLogger("wadud.sfu.recording")

#: Recording ids that ended, remembered so the same id does not start again
#: (its segments' indexes would start again at 0).
_ENDED_KEPT = 4096


class _Run:
    """One room's recording on this worker: its core, key and two tasks."""

    __slots__ = ("core", "done", "key", "name", "stop_detail", "stopping", "store", "tasks", "wake")

    def __init__(self, name: str, core: RoomRecording, key: bytes) -> None:
        self.name = name
        self.core = core
        self.key = key
        self.store: asyncio.Queue[Cut | None] = asyncio.Queue()
        self.wake = asyncio.Event()
        self.stopping = False
        self.stop_detail = ""
        self.done = False
        self.tasks: list[asyncio.Task[None]] = []


def recording_options(settings: Settings) -> dict[str, Any]:
    """A worker's :class:`RecordingWriter` keywords from the ``recording_*``
    settings, with a file store of its own made from the ``storage_*`` ones
    (:func:`wadud.state.storage.create`), which the writer closes with the worker."""
    return {
        "storage": create(settings),
        "own_storage": True,
        "segment_seconds": settings.recording_segment_seconds,
        "queue_bytes": settings.recording_queue_bytes,
        "write_timeout": settings.recording_write_timeout,
    }


class RecordingWriter:
    """Records rooms of one worker into ``storage`` (None: recording is refused).

    ``segment_seconds``: a segment's span; ``queue_bytes``: the backlog that
    fails a recording; ``write_timeout``: seconds one put may take;
    ``tick``: how often the queue is drained. ``own_storage``: close
    ``storage`` in :meth:`close`.
    """

    def __init__(
        self,
        tables: WorkerTables,
        emit: Callable[[MediaEvent], None],
        *,
        storage: Storage | None = None,
        own_storage: bool = False,
        segment_seconds: float = 4.0,
        queue_bytes: int = 8 << 20,
        write_timeout: float = 10.0,
        tick: float = 0.25,
    ) -> None:
        self.tables = tables
        self.storage = storage
        self.own_storage = own_storage
        self.emit = emit
        self.segment_seconds = segment_seconds
        self.queue_bytes = queue_bytes
        self.write_timeout = write_timeout
        self.tick = tick
        self._active: dict[str, _Run] = {}
        self._finishing: set[_Run] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()
        #: Orders (and their keys) for rooms without media here yet.
        self.waiting: dict[str, tuple[RecordingOrder, bytes]] = {}
        self.bytes_stored = 0
        self.segments_stored = 0
        self.failed: Counter[str] = Counter()
        """Recordings that failed, by reason: ``queue`` (the backlog passed
        ``queue_bytes``), ``timeout`` (a put took too long), ``storage`` (a put
        raised), ``internal`` (a bug, logged with its traceback)."""

    # -- control ----------------------------------------------------------------------

    def record(self, room: str, order: RecordingOrder | None, now: float) -> None:
        """Start, confirm or stop ``room``'s recording
        (:meth:`sfu.control.messages.MediaControl.record`). An order for a
        room this worker has no media of yet (asked for before anyone
        published) waits, and starts when the room comes
        (:meth:`start_waiting`); stopped before that, it ends at once.
        """
        running = self._active.get(room)
        known = self.tables.rooms.get(room)
        if order is None:
            waiting = self.waiting.pop(room, None)
            if running is not None:
                self._stop(running, "")
            elif waiting is not None:
                # Never started: nothing to seal, and the row must still end.
                self._forget(waiting[0].recording)
                self.emit(RecordingStopped(room, waiting[0].recording, "stopped", ""))
            elif known is None:
                raise SfuStateError(f"no room {room!r} on this worker")
            return
        if running is not None:
            if running.core.order.recording == order.recording:
                return
            raise SfuStateError(
                f"room {room!r} is already being recorded ({running.core.order.recording})"
            )
        if self.storage is None:
            raise SfuStateError("this worker has no file store for recordings")
        if order.recording in self._ended:
            raise SfuStateError(f"recording {order.recording} has ended")
        try:
            key = base64.urlsafe_b64decode(order.key.encode())
        except (binascii.Error, ValueError):
            key = b""
        if len(key) != 32:
            raise SfuStateError("a recording key is 32 bytes, urlsafe base64")
        if known is None:
            rid = order.recording
            self.waiting[room] = (order, key)
            log.info("recording waits for media", extra={"room": room, "recording": rid})
            return
        self._start(room, known, order, key, now)

    def start_waiting(self, now: float) -> None:
        """Start the waiting orders whose rooms this worker now has (the
        worker calls this after each input that may have made a room)."""
        for room, (order, key) in list(self.waiting.items()):
            known = self.tables.rooms.get(room)
            if known is not None:
                del self.waiting[room]
                self._start(room, known, order, key, now)

    def _start(
        self, room: str, known: MediaRoom, order: RecordingOrder, key: bytes, now: float
    ) -> None:
        core = RoomRecording(
            known,
            order,
            wall_offset=self.tables.reports.wall_offset,
            segment_seconds=self.segment_seconds,
            now=now,
        )
        run = _Run(room, core, key)
        self._active[room] = run
        self._ask_keyframes(run, now)
        run.tasks = [
            asyncio.create_task(self._ticker(run), name=f"recording-tick-{room}"),
            asyncio.create_task(self._storer(run), name=f"recording-store-{room}"),
        ]
        log.info("recording started", extra={"room": room, "recording": order.recording})

    def _stop(self, run: _Run, detail: str) -> None:
        """Queue nothing more; the ticker stores what is open and the storer says ``stopped``."""
        if run.stopping or run.done:
            return
        run.stopping = True
        run.stop_detail = detail
        run.core.detach()
        self._active.pop(run.name, None)
        self._finishing.add(run)
        self._forget(run.core.order.recording)
        run.wake.set()

    def _forget(self, recording: str) -> None:
        self._ended[recording] = None
        while len(self._ended) > _ENDED_KEPT:
            self._ended.popitem(last=False)

    async def close(self) -> None:
        """Stop every recording and wait (a bounded time) for its segments to
        be stored; close the store if it is ours."""
        for run in list(self._active.values()):
            self._stop(run, "worker closed")
        tasks = [t for run in self._finishing for t in run.tasks]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.write_timeout + 2 * self.tick + 1)
            for task in pending:
                task.cancel()
            for run in list(self._finishing):
                self._fail(run, "timeout", "worker closed before its segments were stored")
        close = getattr(self.storage, "close", None)
        if self.own_storage and close is not None:
            self.own_storage = False
            await close()

    def counts(self) -> dict[str, Any]:
        """For :mod:`sfu.node.metrics`: recordings running, what was stored, failures by reason."""
        return {
            "active": len(self._active),
            "bytes_stored": self.bytes_stored,
            "segments_stored": self.segments_stored,
            "failed": dict(self.failed),
        }

    # -- the tasks ------------------------------------------------------------------------

    def _ask_keyframes(self, run: _Run, now: float) -> None:
        # A recorded video track should start with a keyframe, not wait for the next one.
        core = run.core
        for ssrc in core.keyframes:
            core.room.forwarder.request_keyframe(ssrc, now)
        core.keyframes.clear()

    async def _ticker(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        core = run.core
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick):
                        await run.wake.wait()
                now = loop.time()
                if not run.stopping and self.tables.rooms.get(run.name) is not core.room:
                    self._stop(run, "room closed")
                if run.stopping:
                    for cut in core.close(now):
                        run.store.put_nowait(cut)
                    run.store.put_nowait(None)
                    return
                for cut in core.tick(now):
                    run.store.put_nowait(cut)
                self._ask_keyframes(run, now)
                if core.backlog() > self.queue_bytes:
                    mib = self.queue_bytes / (1 << 20)
                    self._fail(run, "queue", f"storage too slow: queue over {mib:g} MiB")
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("recording tick failed", extra={"room": run.name})
            self._fail(run, "internal", "internal error in the media worker (logged)")

    async def _storer(self, run: _Run) -> None:
        storage = self.storage
        assert storage is not None
        core = run.core
        order = core.order
        while True:
            cut = await run.store.get()
            if cut is None:
                self._finish(run)
                return
            header = cut.writer.header
            try:
                blob = await asyncio.to_thread(cut.writer.seal, run.key)
                async with asyncio.timeout(self.write_timeout):
                    key = await storage.put(blob)
            except TimeoutError:
                detail = f"storage too slow: a segment took over {self.write_timeout:g} s to store"
                self._fail(run, "timeout", detail)
                return
            except Exception as exc:
                self._fail(run, "storage", f"storage error: {exc}")
                return
            core.stored(cut)
            self.bytes_stored += len(blob)
            self.segments_stored += 1
            self.emit(
                RecordingSegment(
                    room=run.name,
                    recording=order.recording,
                    participant=cut.participant,
                    track_id=cut.track_id,
                    kind=cut.kind,
                    index=header.index,
                    key=key,
                    packets=cut.writer.count,
                    size=len(blob),
                    started=header.started,
                    ended=cut.ended,
                )
            )

    def _finish(self, run: _Run) -> None:
        run.done = True
        self._finishing.discard(run)
        log.info(
            "recording stopped",
            extra={"room": run.name, "recording": run.core.order.recording, "why": run.stop_detail},
        )
        self.emit(RecordingStopped(run.name, run.core.order.recording, "stopped", run.stop_detail))

    def _fail(self, run: _Run, reason: str, detail: str) -> None:
        """The recording ends now, its queue dropped; the call goes on."""
        if run.done:
            return
        run.done = True
        run.core.drop()
        current = asyncio.current_task()
        for task in run.tasks:
            if task is not current:
                task.cancel()
        if self._active.get(run.name) is run:
            del self._active[run.name]
        self._finishing.discard(run)
        self._forget(run.core.order.recording)
        self.failed[reason] += 1
        log.warning(
            "recording failed: %s",
            detail,
            extra={"room": run.name, "recording": run.core.order.recording, "reason": reason},
        )
        self.emit(RecordingStopped(run.name, run.core.order.recording, "failed", detail))
