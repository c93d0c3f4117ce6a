""":class:`sfu.control.messages.MediaControl` over Redis: request/reply and events.

Signalling in a cluster asks media workers in other processes (other
machines) what ``wadud serve`` asks its in-process worker. Each API process
has one :class:`MediaClient`: one subscription to its reply channel
``wadud:media:reply:{caller_id}`` and to the events channel
``wadud:media:events``, and a future per request id. :meth:`MediaClient.remote`
gives a :class:`RemoteMedia` for one worker incarnation, which is a
``MediaControl`` as the in-process worker is. On the worker side a
:class:`MediaServer` takes requests from the worker's control channel
``wadud:media:control:{wid}``, runs each against the local worker and
publishes the reply; it publishes the worker's events, and its lifecycle
(ready, draining, stopped), on the events channel.

Messages (JSON):

* request: ``{"id", "incarnation", "op", "args", "reply_to"}``; ``op`` is a
  MediaControl method or ``ping``, ``args`` its keyword arguments;
* reply: ``{"id", "ok": true, "result"}`` or ``{"id", "ok": false, "error":
  {"type": "sdp" | "state" | "unavailable" | "internal", "message"}}``,
  raised by the client as :class:`rtc.errors.SdpError`,
  :class:`sfu.errors.SfuStateError`, :class:`WorkerUnreachable`,
  :class:`MediaError`;
* event: ``{"worker", "incarnation", "event": event_to_dict(...)}`` or
  ``{"worker", "incarnation", "lifecycle": "ready" | "draining" | "stopped"}``.

Pub/sub delivers to whoever listens now, so "nobody listens" is visible at
once: PUBLISH of a request returning 0 means the worker is gone, or is
subscribing again after a Redis restart or failover; the request is sent
again for :data:`RESUBSCRIBE_GRACE` before :class:`WorkerUnreachable`. A
worker that listens but does not answer (frozen, overloaded) costs the caller
``timeout`` seconds. Both
subscriptions are :mod:`wadud.messaging.bus`'s, which resubscribe after a Redis restart;
a request whose reply was lost meanwhile times out. After a network cut
their connections may look alive while what Redis sends on them waits out
TCP's retransmission backoff: each side's heartbeat, back after a lapse,
has them subscribe again on a fresh connection (:meth:`MediaClient.renew`,
:meth:`MediaServer.renew`). A worker's event is published again the same
way, while Redis is away too, for :data:`EVENT_GRACE`: through a failover,
not dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from rtc.errors import SdpError
from sfu.control.messages import (
    MediaControl,
    MediaEvent,
    PublishResult,
    RecordingOrder,
    RelayedTrack,
    RelayPeer,
    Restart,
    Source,
    TrackDisplay,
    event_from_dict,
    event_to_dict,
)
from sfu.control.registry import control_channel
from sfu.errors import SfuError, SfuStateError
from wadud.messaging.bus import BusSubscription, Message, RedisBus, encode
from wadud.messaging.loops import stopped

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = [
    "EVENTS",
    "Lifecycle",
    "MediaClient",
    "MediaError",
    "MediaServer",
    "RemoteMedia",
    "WorkerUnreachable",
    "publish_lifecycle",
    "reply_channel",
]

log = logging.getLogger("wadud.sfu.rpc")

EVENTS = "wadud:media:events"
#: Seconds a request is sent again while its worker does not listen: the
#: bus's resubscribe backoff (2 s at most, wadud.messaging.bus) and a margin.
RESUBSCRIBE_GRACE = 3.0
#: Worker incarnations declared gone that a client remembers (the latest).
GONE_KEPT = 1024
#: Seconds a worker's event is published again while Redis is away or nobody
#: hears it: a failover (the sentinels' down-after and election, 2-3 s) and
#: then the API processes' resubscribe backoff (2 s at most). An event lost
#: there is a state the pages never learn: a video paused for bandwidth shown
#: as a frozen picture, a simulcast layer dynacast wanted back left off.
EVENT_GRACE = 10.0
Lifecycle = Literal["ready", "draining", "stopped"]
Listener = Callable[[str, str, "MediaEvent | str"], None]
"""``listener(worker id, incarnation, event or lifecycle word)``."""


def reply_channel(caller_id: str) -> str:
    return f"wadud:media:reply:{caller_id}"


class WorkerUnreachable(SfuError):
    """The media worker cannot be reached: nobody listens on its channel, it
    did not answer in time, it is another incarnation now, or Redis is down.
    The room must move to another worker."""

    code = "media-unavailable"


class MediaError(SfuError):
    """The media worker failed on a request in a way that is neither the
    client's SDP nor a missing room, participant or track (a bug there)."""

    code = "media-error"


async def publish_lifecycle(redis: Redis, wid: str, incarnation: str, state: Lifecycle) -> None:
    """``{"worker", "incarnation", "lifecycle"}`` on the events channel; the node
    supervisor sends "stopped" for a worker that died without saying so."""
    message = {"worker": wid, "incarnation": incarnation, "lifecycle": state}
    await redis.publish(EVENTS, encode(message))


def _subscriber(redis: Redis) -> RedisBus:
    # wadud.messaging.bus's RedisBus owns the subscription that reconnects after a Redis
    # restart; give it the caller's client rather than a second pool.
    return RedisBus.from_client(redis)


async def _stop_reading(
    reader: asyncio.Task[None] | None, subscription: BusSubscription | None
) -> None:
    """End a reader of ``subscription``: the subscription closes first, which
    ends its loop for good (a cancel alone can land inside the Redis client's
    read and be taken for a dropped connection), then the reader is awaited."""
    if subscription is not None:
        await subscription.close()
    await stopped(reader)


async def _renew(subscription: BusSubscription | None, within: float) -> bool:
    return subscription is None or await subscription.renew(within)


# The one table from the errors a worker raises to the ``type`` of an error
# reply and back; anything else crosses as "internal" and is raised on the
# caller's side as MediaError.
_WIRE_ERRORS: dict[str, type[SdpError | SfuStateError | WorkerUnreachable]] = {
    "sdp": SdpError,
    "state": SfuStateError,
    "unavailable": WorkerUnreachable,
}


def _error_of(exc: BaseException) -> dict[str, str]:
    kind = next((k for k, cls in _WIRE_ERRORS.items() if isinstance(exc, cls)), "internal")
    return {"type": kind, "message": str(exc) or type(exc).__name__}


def _raise(wid: str, error: Mapping[str, Any]) -> None:
    message = str(error.get("message", ""))
    cls = _WIRE_ERRORS.get(str(error.get("type")))
    if cls is None:
        raise MediaError(f"media worker {wid}: {message}")
    if cls is WorkerUnreachable:
        raise WorkerUnreachable(f"media worker {wid}: {message}")
    raise cls(message)


async def _heard(
    redis: Redis,
    channel: str,
    payload: str,
    stop: Callable[[], bool],
    grace: float = RESUBSCRIBE_GRACE,
) -> str | None:
    """Publish ``payload`` until someone hears it: None once one did, else
    why not after ``grace`` seconds (or at once when ``stop()``).
    After a Redis restart or failover a live process listens again only
    once its subscription is back (the bus's reconnect backoff); a message
    nobody received is safe to send again."""
    from redis.exceptions import RedisError  # here: wadud serve loads no redis-py

    deadline = asyncio.get_running_loop().time() + grace
    delay = 0.05
    while True:
        try:
            if await redis.publish(channel, payload):
                return None
            failure = "not listening"
        except (RedisError, OSError) as exc:
            failure = f"redis: {exc}"
        if stop() or asyncio.get_running_loop().time() + delay > deadline:
            return failure
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.4)


def _never() -> bool:
    return False


# --- the caller's side --------------------------------------------------------------------


class MediaClient:
    """One API process's requests to media workers and its view of their events.

    ``caller_id`` names this process's reply channel (unique per process);
    ``timeout`` is ``media_rpc_timeout``. :meth:`start` subscribes before it
    returns, so the first request's reply cannot be missed.
    """

    def __init__(self, redis: Redis, caller_id: str, timeout: float = 5.0) -> None:
        self.redis = redis
        self.caller_id = caller_id
        self.timeout = timeout
        self.reply_to = reply_channel(caller_id)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        #: Which worker incarnation each pending request went to.
        self._targets: dict[str, tuple[str, str]] = {}
        #: Incarnations declared gone (:meth:`abandon`) and not heard since,
        #: oldest first.
        self._gone: dict[tuple[str, str], None] = {}
        self._listeners: list[Listener] = []
        self._subscription: BusSubscription | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._subscription = await _subscriber(self.redis).subscribe(self.reply_to, EVENTS)
        self._reader = asyncio.create_task(self._read(), name=f"media-client-{self.caller_id}")

    async def close(self) -> None:
        await _stop_reading(self._reader, self._subscription)
        self._reader = self._subscription = None
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(WorkerUnreachable("the media client closed"))
        self._pending.clear()

    async def renew(self, within: float) -> bool:
        """Listen for replies and events on a fresh connection (the cluster's
        heartbeat is back after a lapse); whether that took less than ``within``."""
        return await _renew(self._subscription, within)

    async def __aenter__(self) -> MediaClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def remote(self, wid: str, incarnation: str, fingerprint: str = "") -> RemoteMedia:
        """The MediaControl of one worker incarnation (``fingerprint``: its
        registry entry's, for :meth:`RemoteMedia.relay_identity`)."""
        return RemoteMedia(self, wid, incarnation, fingerprint)

    def abandon(self, wid: str, incarnation: str) -> None:
        """The worker is gone: fail its requests in flight now rather than at
        their timeout, so what waits behind them (a room's next media call)
        goes on at once. Until it is heard again, a request made to it later
        is published once, without :data:`RESUBSCRIBE_GRACE`: a room's lane
        calls one at a time, and a call queued to a killed worker just before
        its room moved would hold the room's whole recovery for the grace. Heard,
        it is asked as usual: a worker cut off from Redis long enough to be
        declared gone comes back with the same incarnation."""
        self._gone[(wid, incarnation)] = None
        while len(self._gone) > GONE_KEPT:
            del self._gone[next(iter(self._gone))]
        for rid, target in list(self._targets.items()):
            fut = self._pending.get(rid)
            if target == (wid, incarnation) and fut is not None and not fut.done():
                fut.set_exception(WorkerUnreachable(f"media worker {wid} is gone"))

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(wid, incarnation, event_or_lifecycle)`` for every
        message on the events channel, from any worker."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    async def request(
        self, wid: str, incarnation: str, op: str, args: Mapping[str, Any] | None = None
    ) -> Any:
        """Send ``op`` to the worker and return the reply's result (plain data)."""
        if self._reader is None:
            raise WorkerUnreachable("the media client is not started")
        rid = uuid.uuid4().hex
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._targets[rid] = (wid, incarnation)
        message = {
            "id": rid,
            "incarnation": incarnation,
            "op": op,
            "args": dict(args or {}),
            "reply_to": self.reply_to,
        }
        try:
            await self._publish(wid, incarnation, encode(message), fut)
            try:
                async with asyncio.timeout(self.timeout):
                    reply: Mapping[str, Any] = await fut
            except TimeoutError:
                raise WorkerUnreachable(
                    f"media worker {wid} did not answer {op} within {self.timeout:g} s"
                ) from None
        finally:
            self._pending.pop(rid, None)
            self._targets.pop(rid, None)
        if reply.get("ok"):
            return reply.get("result")
        _raise(wid, reply.get("error") or {})
        raise AssertionError("unreachable")  # pragma: no cover

    async def _publish(
        self, wid: str, incarnation: str, payload: str, fut: asyncio.Future[Any]
    ) -> None:
        """Publish a request to the worker's control channel, sent again for
        :data:`RESUBSCRIBE_GRACE` while nobody hears it (:func:`_heard`), or
        once for a worker declared gone. A worker declared gone meanwhile
        (:meth:`abandon`) ends the wait at once."""
        key = (wid, incarnation)
        grace = 0.0 if key in self._gone else RESUBSCRIBE_GRACE
        failure = await _heard(self.redis, control_channel(wid), payload, fut.done, grace)
        if fut.done():
            fut.result()  # abandoned: raises WorkerUnreachable("... is gone")
        if failure is not None:
            raise WorkerUnreachable(f"media worker {wid}: {failure}")
        self._gone.pop(key, None)

    async def _read(self) -> None:
        assert self._subscription is not None
        async for msg in self._subscription:
            try:
                self._dispatch(msg)
            except Exception:
                log.exception("media message not handled", extra={"topic": msg.topic})

    def _dispatch(self, msg: Message) -> None:
        data = msg.data
        if msg.topic == self.reply_to:
            fut = self._pending.get(str(data.get("id")))
            if fut is not None and not fut.done():
                fut.set_result(data)
            return
        wid, incarnation = str(data.get("worker", "")), str(data.get("incarnation", ""))
        what: MediaEvent | str
        if "lifecycle" in data:
            what = str(data["lifecycle"])
            if what == "stopped":
                self.abandon(wid, incarnation)
        elif "event" in data:
            what = event_from_dict(data["event"])
        else:
            return
        for listener in list(self._listeners):
            try:
                listener(wid, incarnation, what)
            except Exception:
                log.exception("media event listener failed", extra={"worker": wid})


class RemoteMedia:
    """:class:`sfu.control.messages.MediaControl` of one worker incarnation, over Redis.

    Every method may also raise :class:`WorkerUnreachable` (the worker is gone
    or not answering) or :class:`MediaError`.
    """

    def __init__(
        self, client: MediaClient, wid: str, incarnation: str, fingerprint: str = ""
    ) -> None:
        self.client = client
        self.wid = wid
        self.incarnation = incarnation
        self.fingerprint = fingerprint

    def __repr__(self) -> str:
        return f"RemoteMedia({self.wid!r}, {self.incarnation!r})"

    async def _call(self, op: str, **args: Any) -> Any:
        return await self.client.request(self.wid, self.incarnation, op, args)

    async def ping(self) -> dict[str, Any]:
        """The worker's id, incarnation and transport count: a no-op round trip."""
        result: dict[str, Any] = await self._call("ping")
        return result

    async def publish(
        self,
        room: str,
        participant: str,
        offer: str,
        sources: Mapping[str, Source],
        receive: Sequence[str] | None = None,
    ) -> PublishResult:
        args: dict[str, Any] = {}
        if receive is not None:
            args["receive"] = list(receive)
        result = await self._call(
            "publish",
            room=room,
            participant=participant,
            offer=offer,
            sources=dict(sources),
            **args,
        )
        return PublishResult.from_dict(result)

    async def subscribe(
        self,
        room: str,
        participant: str,
        track_ids: Sequence[str],
        restart: Restart | None = None,
    ) -> str | None:
        result = await self._call(
            "subscribe",
            room=room,
            participant=participant,
            track_ids=list(track_ids),
            restart=restart,
        )
        return None if result is None else str(result)

    async def answer(self, room: str, participant: str, sdp: str) -> None:
        await self._call("answer", room=room, participant=participant, sdp=sdp)

    async def set_muted(self, room: str, track_id: str, muted: bool) -> None:
        await self._call("set_muted", room=room, track_id=track_id, muted=muted)

    async def unpublish(self, room: str, participant: str, track_id: str) -> None:
        await self._call("unpublish", room=room, participant=participant, track_id=track_id)

    async def set_view(
        self, room: str, participant: str, track_id: str, view: TrackDisplay
    ) -> None:
        await self._call(
            "set_view", room=room, participant=participant, track_id=track_id, view=asdict(view)
        )

    async def set_audio_only(self, room: str, participant: str, enabled: bool) -> None:
        await self._call("set_audio_only", room=room, participant=participant, enabled=enabled)

    async def record(self, room: str, order: RecordingOrder | None) -> None:
        await self._call("record", room=room, order=None if order is None else asdict(order))

    async def leave(self, room: str, participant: str) -> None:
        await self._call("leave", room=room, participant=participant)

    async def close_room(self, room: str) -> None:
        await self._call("close_room", room=room)

    def relay_identity(self) -> tuple[str, str]:
        """The worker's id and the fingerprint its registry entry gave
        :meth:`MediaClient.remote` (no round trip); MediaError without one."""
        if not self.fingerprint:
            raise MediaError(f"media worker {self.wid}: fingerprint unknown (read the registry)")
        return self.wid, self.fingerprint

    async def relay_send(
        self, room: str, peer: RelayPeer, track_ids: Sequence[str]
    ) -> list[RelayedTrack]:
        result = await self._call(
            "relay_send", room=room, peer=peer.to_dict(), track_ids=list(track_ids)
        )
        return [RelayedTrack.from_dict(t) for t in result]

    async def relay_receive(
        self, room: str, peer: RelayPeer, tracks: Sequence[RelayedTrack]
    ) -> None:
        await self._call(
            "relay_receive", room=room, peer=peer.to_dict(), tracks=[t.to_dict() for t in tracks]
        )

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        """Call ``listener`` with this incarnation's media events (not lifecycle)."""

        def only_mine(wid: str, incarnation: str, what: MediaEvent | str) -> None:
            if wid == self.wid and incarnation == self.incarnation and not isinstance(what, str):
                listener(what)

        self.client.add_listener(only_mine)


if TYPE_CHECKING:
    _: type[MediaControl] = RemoteMedia


# --- the worker's side --------------------------------------------------------------------

_OPS = frozenset(
    {
        "publish",
        "subscribe",
        "answer",
        "set_muted",
        "unpublish",
        "set_view",
        "set_audio_only",
        "record",
        "leave",
        "close_room",
        "relay_send",
        "relay_receive",
    }
)


class MediaServer:
    """Serves one worker's control channel and publishes its events.

    Each request runs as its own task, so a slow negotiation does not hold
    up the others; events are published in the order the worker emitted
    them, by one task. ``info()`` is what ``ping`` answers besides the ids.
    """

    def __init__(
        self,
        redis: Redis,
        worker: MediaControl,
        wid: str,
        incarnation: str,
        *,
        info: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.redis = redis
        self.worker = worker
        self.wid = wid
        self.incarnation = incarnation
        self._info = info
        self._subscription: BusSubscription | None = None
        self._reader: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=10_000)
        self._publisher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.requests = 0
        """Requests answered (for metrics)."""

    async def start(self) -> None:
        """Listening on the control channel when this returns."""
        self._subscription = await _subscriber(self.redis).subscribe(control_channel(self.wid))
        self._reader = asyncio.create_task(self._read(), name=f"media-server-{self.wid}")
        self._publisher = asyncio.create_task(self._publish_events(), name=f"events-{self.wid}")
        self.worker.add_listener(self._on_event)

    async def close(self) -> None:
        """Stop taking requests; events already queued are published first."""
        await _stop_reading(self._reader, self._subscription)
        self._reader = self._subscription = None
        for task in list(self._tasks):
            task.cancel()
        if self._publisher is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._events.join()
            # None ends the loop even if a round (a Redis publish) lost the cancel (ci152).
            with contextlib.suppress(asyncio.QueueFull):
                self._events.put_nowait(None)
            await stopped(self._publisher)
            self._publisher = None

    async def renew(self, within: float) -> bool:
        """Take requests on a fresh connection (the worker's registry
        heartbeat is back after a lapse); whether that took less than ``within``."""
        return await _renew(self._subscription, within)

    async def lifecycle(self, state: Lifecycle) -> None:
        """Tell every API process this worker is ready, draining or stopped."""
        await publish_lifecycle(self.redis, self.wid, self.incarnation, state)

    def _on_event(self, event: MediaEvent) -> None:
        message = {"worker": self.wid, "incarnation": self.incarnation}
        try:
            self._events.put_nowait({**message, "event": event_to_dict(event)})
        except asyncio.QueueFull:
            log.warning("media event dropped: redis is not keeping up", extra={"worker": self.wid})

    async def _publish_events(self) -> None:
        # After an event nobody heard for EVENT_GRACE (no API process at
        # all), the next ones are tried once each until one is heard again,
        # so a backlog does not wait out the grace event by event.
        unheard = False
        while True:
            message = await self._events.get()
            if message is None:
                return
            try:
                grace = 0.0 if unheard else EVENT_GRACE
                failure = await _heard(self.redis, EVENTS, encode(message), _never, grace)
                if failure is not None and not unheard:
                    log.warning("media event not published: %s", failure)
                unheard = failure is not None
            finally:
                self._events.task_done()

    async def _read(self) -> None:
        assert self._subscription is not None
        async for msg in self._subscription:
            task = asyncio.create_task(self._serve(msg.data))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Mapping[str, Any]) -> None:
        reply_to = request.get("reply_to")
        rid = request.get("id")
        reply: dict[str, Any] = {"id": rid}
        try:
            result = await self._run(request)
        except Exception as exc:
            if not isinstance(exc, tuple(_WIRE_ERRORS.values())):
                log.exception(
                    "media request failed", extra={"op": request.get("op"), "worker": self.wid}
                )
            reply.update(ok=False, error=_error_of(exc))
        else:
            reply.update(ok=True, result=result)
        self.requests += 1
        if not isinstance(reply_to, str) or not reply_to:
            return
        # The caller's reply subscription may be coming back from a failover.
        failure = await _heard(self.redis, reply_to, encode(reply), _never)
        if failure is not None:
            log.warning("media reply not delivered: %s", failure, extra={"op": request.get("op")})

    async def _run(self, request: Mapping[str, Any]) -> Any:
        if request.get("incarnation") != self.incarnation:
            raise WorkerUnreachable(f"incarnation {request.get('incarnation')!r} is gone")
        op = request.get("op")
        args = request.get("args") or {}
        if not isinstance(args, dict):
            raise MediaError("args must be an object")
        if op == "ping":
            return {
                "worker": self.wid,
                "incarnation": self.incarnation,
                **(self._info() if self._info is not None else {}),
            }
        if op not in _OPS:
            raise MediaError(f"unknown op {op!r}")
        if op in ("relay_send", "relay_receive"):
            return await self._relay(str(op), args)
        if op == "record":
            return await self._record(args)
        if op == "set_view":
            return await self._set_view(args)
        result = await getattr(self.worker, str(op))(**args)
        if isinstance(result, PublishResult):
            return asdict(result)
        return result

    async def _record(self, args: Mapping[str, Any]) -> None:
        try:
            room = str(args["room"])
            data = args.get("order")
            order = (
                None
                if data is None
                else RecordingOrder(recording=str(data["recording"]), key=str(data["key"]))
            )
        except (KeyError, TypeError) as exc:
            raise MediaError(f"malformed record request: {exc!r}") from exc
        await self.worker.record(room, order)

    async def _set_view(self, args: Mapping[str, Any]) -> None:
        try:
            room = str(args["room"])
            participant = str(args["participant"])
            track_id = str(args["track_id"])
            view = TrackDisplay.from_dict(args["view"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MediaError(f"malformed set_view request: {exc!r}") from exc
        await self.worker.set_view(room, participant, track_id, view)

    async def _relay(self, op: str, args: Mapping[str, Any]) -> Any:
        try:
            room = str(args["room"])
            peer = RelayPeer.from_dict(args["peer"])
            if op == "relay_send":
                track_ids = [str(t) for t in args["track_ids"]]
            else:
                tracks = [RelayedTrack.from_dict(t) for t in args["tracks"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise MediaError(f"malformed {op} request: {exc!r}") from exc
        if op == "relay_send":
            sent = await self.worker.relay_send(room, peer, track_ids)
            return [t.to_dict() for t in sent]
        await self.worker.relay_receive(room, peer, tracks)
        return None
