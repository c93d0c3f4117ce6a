"""A participant's media, on aiortc: the protocol's "Media" (docs/protocol.md)
on the client's side, on one peer connection or on two.

On a *single* connection (the default) this client offers everything: what
it sends (``sendonly``) and room for what it receives (``recvonly``); the
server answers, filling each receiving section with a track, and asks for
another offer (``renegotiate``) when the room's tracks change. With two,
*publish* is where this client offers what it sends and the server answers;
*subscribe* is where the server offers what this client receives and the
client answers. The server is ICE-lite (RFC 8445 section 2.5), so aiortc is
always the controlling agent and the server's candidates arrive inside its
SDP; aiortc puts all of its own candidates in its SDP too, so nothing is
trickled. Every received track is consumed and its decoded frames counted
and timed (:class:`ReceivedTrack`); video receivers recover from loss as
browsers do (:class:`NackRetry`, :class:`KeyframeResync`).

When a path dies (its peer connection goes ``failed``: ICE consent expired,
no answer for 30 s, :func:`~wadud_client.network.keep_consent`; or DTLS
gave up) :class:`CallMedia` gets media back by itself with new peer
connections (:meth:`CallMedia.reconnect_media`), the same tracks and
participant; browsers first try an ICE restart, which aiortc cannot do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy

from wadud_client.changes import Changes
from wadud_client.errors import CallError
from wadud_client.jitter import KeyframeResync
from wadud_client.nack import NackRetry
from wadud_client.network import keep_consent, relay_servers
from wadud_client.received import ReceivedTrack
from wadud_client.room import RoomView
from wadud_client.simulcast import SimulcastMunger, layer_tracks
from wadud_client.socket import CallSocket
from wadud_client.sources import Intake

__all__ = ["CallMedia", "Direction", "SdpFilter"]

log = logging.getLogger(__name__)

Direction = Literal["publish", "subscribe"]
SdpFilter = Callable[[str, Direction], str]

#: Seconds new peer connections have to find a path (ICE) before new ones are
#: asked for. Connections whose path works but whose DTLS handshake is still
#: under way then are waited for until :data:`RECONNECT_LIMIT`: a slow or
#: starved peer that is progressing is not thrown away to start over (each
#: new attempt costs both ends the whole handshake again), as a browser
#: restarts ICE only once a connection has failed.
RECONNECT_WITHIN = 8.0
#: Seconds an attempt whose path was found may take to connect in all.
RECONNECT_LIMIT = 30.0
#: Seconds an offer waits for the connection the last answer is starting.
CONNECTING = 10.0
#: Seconds each step of closing a call may take (the socket, each peer
#: connection, the tasks) before it is given up on.
CLOSE_STEP = 5.0


async def close_connection(pc: Any, within: float = CLOSE_STEP) -> None:
    """Close an aiortc peer connection, waiting for it ``within`` seconds at
    most: a close must end, whatever the server or the connection does (a
    test's clean-up hung on one for minutes). Shielded, so the wait's end
    leaves the close going: aiortc closes a failed connection by itself, a
    second ``close()`` waits on the first's future, and a cancelled wait
    cancels that future, so the first close failed setting it ("Task
    exception was never retrieved: InvalidStateError")."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(within):
            await asyncio.shield(pc.close())


class CallMedia:
    """One participant's two peer connections and what goes over them.

    It asks the server through ``socket`` (``publish``, ``answer``,
    ``reconnect_media``), keeps our published tracks in ``view``, and tells
    ``changes`` whenever a connection, offer or received track changes.
    The options are :class:`~wadud_client.call.CallClient`'s."""

    def __init__(
        self,
        socket: CallSocket,
        view: RoomView,
        changes: Changes,
        *,
        ice_servers: Sequence[Mapping[str, Any]] | None = None,
        sdp_filter: SdpFilter | None = None,
        consume: bool = True,
        label: str = "",
        nack_retry: float | None = 0.1,
        reconnect: bool = True,
        relay: bool | Literal["udp", "tcp", "tls"] = False,
        single: bool = True,
    ) -> None:
        self.socket = socket
        #: One peer connection both ways (asked in ``join``; the server's
        #: ``joined.connection`` has the last word).
        self.single = single
        self.view = view
        self.changes = changes
        self.sdp_filter = sdp_filter
        self.consume = consume
        self.label = label
        self.nack_retry = nack_retry
        self.reconnect = reconnect
        self.relay = relay
        self._ice_override = [dict(s) for s in ice_servers] if ice_servers is not None else None

        #: What the subscribe connection receives, by mid.
        self.received: dict[str, ReceivedTrack] = {}
        #: Failures met on our own (an offer we could not answer).
        self.errors: list[BaseException] = []
        self.publish_pc: Any = None
        self.subscribe_pc: Any = None
        #: ``time.monotonic()`` when each peer connection reached ``connected``.
        self.connected_at: dict[Direction, float] = {}
        #: How often media started over on new peer connections: the room
        #: moved to another media worker (``media_reconnect``), or a dead path
        #: made this client ask (those are :attr:`media_reconnects` too).
        self.media_moves = 0
        self.media_reconnects = 0
        #: Our own media: ``connected``, or ``reconnecting`` after a peer
        #: connection failed and until new ones are connected.
        self.media_state: Literal["connected", "reconnecting"] = "connected"
        #: What we publish, by source: sent again when the room's media moves.
        self._local: dict[str, Any] = {}
        # Our tracks reach a peer connection through a relay: aiortc stops a
        # sender's track when the sender stops (a connection that failed or
        # closed), and a track once stopped never gives a frame again, so the
        # connection made after a failure could not send it. A relay's proxy
        # is what gets stopped; the source stays live for the next connection.
        self._relay = MediaRelay()
        self._feeds: dict[str, Any] = {}
        #: What the relay reads of each source we were given (see Intake).
        self._intakes: dict[Any, Intake] = {}
        #: Sources published as simulcast, and the publish connection's rewriting.
        self._simulcast_sources: set[str] = set()
        self._munger: SimulcastMunger | None = None

        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._offer_task: asyncio.Task[None] | None = None
        self._consumers: set[asyncio.Task[None]] = set()
        self._sources: dict[str, str] = {}  # publish mid -> source
        self._transceivers: dict[str, Any] = {}  # publish mid -> transceiver
        self._publish_lock = asyncio.Lock()
        self._retries: dict[str, NackRetry] = {}  # subscribe mid -> its video receiver's
        self._retry_task: asyncio.Task[None] | None = None
        self._resyncs: dict[str, KeyframeResync] = {}  # subscribe mid -> its video receiver's
        self._recovery: asyncio.Task[None] | None = None
        #: A single connection's ``recvonly`` sections still to add, by kind.
        self._slots: dict[str, int] = {}
        self._renegotiation: asyncio.Task[None] | None = None
        self._offer_wanted = False

    # -- life -----------------------------------------------------------------

    def start(self) -> None:
        """Answer the server's offers from now on (once the socket is open)."""
        if self._offer_task is None:
            self._offer_task = asyncio.create_task(self._answer_offers(), name="call-offers")

    def stop(self) -> list[asyncio.Task[None]]:
        """Cancel the media's tasks and stop reading our sources; returns the
        tasks, for :meth:`close` to wait for."""
        tasks = [
            t
            for t in (
                self._offer_task,
                self._retry_task,
                self._recovery,
                self._renegotiation,
                *self._consumers,
            )
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        self._stop_intakes(keep=())
        return tasks

    async def close(self, stopped: list[asyncio.Task[None]]) -> None:
        """Close both peer connections and wait for the ``stopped`` tasks."""
        for pc in dict.fromkeys((self.publish_pc, self.subscribe_pc)):
            if pc is not None:
                await close_connection(pc)
        if stopped:
            await asyncio.wait(stopped, timeout=CLOSE_STEP)
        self._consumers.clear()

    def _stop_intakes(self, keep: Iterable[Any]) -> None:
        """End the relay's reading of every source but ``keep``."""
        kept = set(keep)
        for source in [s for s in self._intakes if s not in kept]:
            self._intakes.pop(source).stop()

    # -- peer connections -----------------------------------------------------

    def _configuration(self) -> Any:
        servers = self._ice_override if self._ice_override is not None else self.view.ice_servers
        if isinstance(self.relay, str):
            servers = relay_servers(servers, self.relay)
        ice = [
            RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential"))
            for s in servers
        ]
        policy = RTCIceTransportPolicy.RELAY if self.relay else RTCIceTransportPolicy.ALL
        # An empty list, not None: aiortc's default adds a public STUN server.
        return RTCConfiguration(
            iceServers=ice, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE, iceTransportPolicy=policy
        )

    def _new_pc(self, direction: Direction) -> Any:
        pc = RTCPeerConnection(self._configuration())

        @pc.on("connectionstatechange")
        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                now = time.monotonic()
                self.connected_at.setdefault(direction, now)
                if pc is self.subscribe_pc:  # a single connection is both
                    self.connected_at.setdefault("subscribe", now)
            # aiortc has no `disconnected`: a dead path shows as `failed` once
            # consent freshness gives up (RFC 7675: no answer for 30 s, see
            # wadud_client.network.keep_consent), and a connection that
            # closes itself (its DTLS ended) while still ours is as dead.
            elif state in ("failed", "closed"):
                self._path_failed(pc, f"{direction} connection {state}")
            self.changes.notify()

        @pc.on("iceconnectionstatechange")
        def on_ice() -> None:
            if pc.iceConnectionState == "completed":
                keep_consent(pc)

        return pc

    def _filter(self, sdp: str, direction: Direction) -> str:
        return self.sdp_filter(sdp, direction) if self.sdp_filter else sdp

    # -- when the path dies ---------------------------------------------------

    async def reconnect_media(self) -> None:
        """Ask the server for new transports (``reconnect_media``) and move to
        new peer connections (:meth:`wadud_client.call.CallClient.reconnect_media`
        says why new ones, not an ICE restart)."""
        self.media_reconnects += 1
        # The old connections go the moment the server says `ok`, before the
        # offer for the new subscribe transport (which follows it) is read.
        await self.socket.request("reconnect_media", {}, on_answer=lambda _: self.moved())

    def _path_failed(self, pc: Any, why: str) -> None:
        if pc not in (self.publish_pc, self.subscribe_pc) or self.view.state == "closed":
            return  # an old connection, or we are closing
        self.media_state = "reconnecting"
        if not self.reconnect or self._recovery is not None:
            return
        log.info("%s: %s; reconnecting media", self.changes.describe(), why)
        self._recovery = asyncio.create_task(self._recover(), name=f"reconnect {self.label}")

    async def _recover(self) -> None:
        had_subscribe = self.subscribe_pc is not None
        pause = 1.0
        # New connections made since the last we asked for (or since the
        # path failed) came from the server: it moved the media, or a resume
        # made us new. Those are waited for, not asked for again: asking
        # would replace the transports they are answering (after a region
        # cut healed, a client whose path had failed during it asked over
        # the server's move and its media came back 10 s later).
        moves = self.media_moves
        try:
            while self.view.state != "closed":
                if self.view.state == "joined":
                    try:
                        if self.media_moves == moves:
                            await self.reconnect_media()
                        moves = self.media_moves
                        await self._attempt(had_subscribe)
                        self.media_state = "connected"
                        self.changes.notify()
                        return
                    except (CallError, ConnectionError, TimeoutError) as exc:
                        log.info("%s: media not back yet: %r", self.changes.describe(), exc)
                # Without signalling (the caller resumes it) nothing can be
                # asked: look again in a moment, less often as failures mount,
                # or as soon as the server moves the media (again: one that
                # came while we could not look is not waited for twice).
                with contextlib.suppress(TimeoutError):
                    await self.changes.wait_until(self._moved_since(self.media_moves), pause)
                pause = min(pause * 2, 10.0)
        finally:
            self._recovery = None

    def _moved_since(self, moves: int) -> Callable[[], bool]:
        """Whether media started over on new connections since :attr:`media_moves` was ``moves``."""
        return lambda: self.media_moves != moves

    async def _attempt(self, subscribe: bool) -> None:
        """Wait for the new connections to connect; raise ``TimeoutError`` if
        they found no path within :data:`RECONNECT_WITHIN` or did not connect
        within :data:`RECONNECT_LIMIT`, ``ConnectionError`` once one fails."""

        def settled() -> bool:
            return self._media_connected(subscribe) or self._attempt_failed()

        try:
            await self.changes.wait_until(settled, RECONNECT_WITHIN)
        except TimeoutError:
            if not self._path_found(subscribe):
                raise
            log.info("%s: path found, waiting for DTLS", self.changes.describe())
            await self.changes.wait_until(settled, RECONNECT_LIMIT - RECONNECT_WITHIN)
        if not self._media_connected(subscribe):
            raise ConnectionError("a new peer connection failed")

    def _pcs(self, subscribe: bool) -> list[Any]:
        """The connections media needs: publish if we publish, subscribe if
        we had one (the same connection when single)."""
        pcs = [self.publish_pc] if self._local else []
        if subscribe:
            pcs.append(self.subscribe_pc)
        return pcs

    def _media_connected(self, subscribe: bool) -> bool:
        pcs = self._pcs(subscribe)
        return all(pc is not None and pc.connectionState == "connected" for pc in pcs)

    def _path_found(self, subscribe: bool) -> bool:
        """ICE is done on every connection media needs (DTLS may not be)."""
        pcs = self._pcs(subscribe)
        return all(pc is not None and pc.iceConnectionState == "completed" for pc in pcs)

    def _attempt_failed(self) -> bool:
        return any(
            pc is not None and pc.connectionState in ("failed", "closed")
            for pc in (self.publish_pc, self.subscribe_pc)
        )

    def moved(self) -> None:
        """``media_reconnect`` (the room is on another media worker now), or a
        resume that made us a new participant: drop both peer connections at
        once (the next offer is for a new one) and publish the same tracks
        again on a fresh connection."""
        old = [pc for pc in dict.fromkeys((self.publish_pc, self.subscribe_pc)) if pc is not None]
        self.publish_pc = self.subscribe_pc = None
        self._munger = None
        # From what we chose to publish, not from the transceivers: a second
        # move while the first republish runs finds those cleared already.
        items = list(self._local.items())
        self._sources.clear()
        self._transceivers.clear()
        for tid in self.view.published:
            self.view.room_tracks.pop(tid, None)
        self.view.published.clear()
        for received in self.received.values():
            received.active = False
        self.received.clear()
        self._retries.clear()
        self._resyncs.clear()
        self.connected_at.clear()
        # Offers not answered yet were for the old subscribe connection; the
        # server offers everything again for the new one.
        while not self._offers.empty():
            self._offers.get_nowait()
        self.media_moves += 1
        task = asyncio.create_task(self._republish(old, items), name="media-reconnect")
        self._consumers.add(task)
        task.add_done_callback(self._consumers.discard)

    async def _republish(self, old: list[Any], items: list[tuple[str, Any]]) -> None:
        for pc in old:
            # Closing stops the senders' tracks: the relay's proxies, not ours
            # (see _relay); publish() gives the new connection new proxies.
            with contextlib.suppress(Exception):
                await close_connection(pc)
        moves = self.media_moves
        if self.single and self.view.state != "closed":
            self._slots = self._room_kinds()
        if (items or self.single) and self.view.state != "closed":
            try:
                await self.publish(items)
            except Exception as exc:
                if moves != self.media_moves:
                    return  # another move superseded this one; it publishes again
                log.warning("could not publish again after the media moved: %r", exc)
                self.errors.append(exc)
                self.changes.notify()

    # -- publishing -----------------------------------------------------------

    async def publish(
        self,
        tracks: Mapping[str, Any] | Iterable[tuple[str, Any]],
        *,
        simulcast: bool = False,
    ) -> list[dict[str, Any]]:
        """Send ``tracks`` (source → aiortc MediaStreamTrack) on the publish
        connection and return ``published.tracks`` (see
        :meth:`wadud_client.call.CallClient.publish`)."""
        items = list(tracks.items()) if isinstance(tracks, Mapping) else list(tracks)
        self._local.update(items)
        self._stop_intakes(keep=self._local.values())  # a source given anew replaces the old
        if simulcast:
            self._simulcast_sources.update(s for s, t in items if s == "camera")
        async with self._publish_lock:
            if self.publish_pc is None:
                self.publish_pc = self._new_pc("publish")
                if self.single:
                    self.subscribe_pc = self.publish_pc
                self._munger = SimulcastMunger()
            pc = self.publish_pc
            starting = pc.connectionState in ("new", "connecting")
            if self.single and pc.remoteDescription is not None and starting:
                # aiortc starts each transceiver's transport, one after the
                # other, in a task the last answer began; an offer made
                # meanwhile changes the descriptions under it (an IndexError
                # in RTCPeerConnection.__connect, a receiver never started).
                with contextlib.suppress(TimeoutError):
                    await self.changes.wait_until(
                        lambda: pc.connectionState not in ("new", "connecting"), CONNECTING
                    )
            munger = self._munger
            assert munger is not None
            new = []
            layered = []
            for source, track in items:
                old = self._feeds.pop(source, None)
                if old is not None:
                    old.stop()
                intake = self._intakes.get(track)
                if intake is None:
                    intake = self._intakes[track] = Intake(track)
                track = self._feeds[source] = self._relay.subscribe(intake, buffered=False)
                if source in self._simulcast_sources and track.kind == "video":
                    layers = layer_tracks(track)
                    group = [pc.addTransceiver(t, direction="sendonly") for t in layers]
                    layered.append((group, layers))
                    new.append((source, group[0]))
                else:
                    new.append((source, pc.addTransceiver(track, direction="sendonly")))
            if self.single:
                slots, self._slots = self._slots, {}
                for kind, count in slots.items():
                    for _ in range(count):
                        pc.addTransceiver(kind, direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            for group, layers in layered:
                munger.add(group, layers)
            for source, transceiver in new:
                self._sources[transceiver.mid] = source
                self._transceivers[transceiver.mid] = transceiver
            munger.install(t.sender.transport for t in pc.getTransceivers())
            answer = await self.socket.request(
                "publish",
                {"sdp": munger.offer(pc.localDescription.sdp), "sources": dict(self._sources)},
            )
            sdp = munger.answer(self._filter(str(answer["sdp"]), "publish"))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            munger.install(t.sender.transport for t in pc.getTransceivers())
            listed = [dict(t) for t in answer.get("tracks") or []]
            for t in listed:
                self.view.published[str(t["track_id"])] = t
                self.view.room_tracks[str(t["track_id"])] = t
            if self.single and pc is self.subscribe_pc:
                self._receiving(pc, answer.get("receiving") or [])
            self.changes.notify()
            return listed

    # -- one peer connection --------------------------------------------------

    def joined(self, frame: dict[str, Any]) -> None:
        """``joined``: on a single connection the first offer goes now, with
        a receiving section for each track in the room (then, whatever this
        client publishes, it receives)."""
        if frame.get("connection") != "single":
            self.single = False
            return
        if self.publish_pc is not None or self._renegotiation is not None:
            return  # a resume: the connection stays
        # In an empty room one audio section: the connection is up (ICE,
        # DTLS) before anyone sends, and the first track needs one offer.
        grants = (frame.get("participant") or {}).get("grants") or {}
        if grants.get("subscribe", True):
            self._slots = self._room_kinds() or {"audio": 1}
            self._renegotiate()

    def renegotiate(self, frame: dict[str, Any]) -> None:
        """``renegotiate``: offer again with that many more receiving sections."""
        for kind in ("audio", "video"):
            more = int(frame.get(kind) or 0)
            if more:
                self._slots[kind] = self._slots.get(kind, 0) + more
        self._offer_wanted = True
        self._renegotiate()

    def _renegotiate(self) -> None:
        if self._renegotiation is None:
            self._renegotiation = asyncio.create_task(self._offer_again(), name="renegotiate")

    async def _offer_again(self) -> None:
        try:
            # Asks that come while an offer is out make one more offer after
            # it; a publish() that went first may have carried them already.
            while self._offer_wanted or self._slots or self.publish_pc is None:
                if self.view.state == "closed":
                    return
                self._offer_wanted = False
                await self.publish([])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("could not offer again: %r", exc)
            self.errors.append(exc)
            self.changes.notify()
        finally:
            self._renegotiation = None

    def _room_kinds(self) -> dict[str, int]:
        """The room's tracks but ours, counted by kind."""
        me = self.view.participant_id
        counts: dict[str, int] = {}
        for t in self.view.room_tracks.values():
            if t.get("participant") != me:
                kind = str(t.get("kind"))
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    async def unpublish(self, track_id: str) -> None:
        """Withdraw one of our tracks, and stop sending it."""
        info = self.view.published.get(track_id)
        await self.socket.request("unpublish", {"track_id": track_id})
        self.view.published.pop(track_id, None)
        if info is not None:
            self._local.pop(str(info.get("source")), None)
            feed = self._feeds.pop(str(info.get("source")), None)
            if feed is not None:
                feed.stop()
            self._stop_intakes(keep=self._local.values())
            transceiver = self._transceivers.get(str(info.get("mid")))
            if transceiver is not None:
                transceiver.sender.replaceTrack(None)

    async def set_encodings(self, frame: dict[str, Any]) -> None:
        """Dynacast: start or stop our simulcast layers as the server asks."""
        munger = self._munger
        track = self.view.published.get(str(frame.get("track_id")))
        if munger is None or track is None:
            return
        mid = next((m for m, s in self._sources.items() if s == track.get("source")), None)
        if mid is not None:
            await munger.set_encodings(mid, frame.get("encodings") or [])

    # -- receiving ------------------------------------------------------------

    def offer(self, frame: dict[str, Any]) -> None:
        """An ``offer`` from the server, answered in turn."""
        self._offers.put_nowait(frame)

    async def _answer_offers(self) -> None:
        # One at a time, in order: the server sends the next offer only after
        # the previous one is answered, and a resumed session may resend one.
        while True:
            frame = await self._offers.get()
            try:
                await self._answer(frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not answer the server's offer: %r", exc)
                self.errors.append(exc)
                self.changes.notify()

    async def _answer(self, frame: dict[str, Any]) -> None:
        if self.subscribe_pc is None:
            self.subscribe_pc = self._new_pc("subscribe")
        pc = self.subscribe_pc
        sdp = self._filter(str(frame["sdp"]), "subscribe")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if pc is not self.subscribe_pc:
            return  # media moved meanwhile: this offer was for the old connection
        self._receiving(pc, frame.get("tracks") or [])
        await self.socket.request("answer", {"sdp": pc.localDescription.sdp})
        self.changes.notify()

    def _receiving(self, pc: Any, tracks: Iterable[Mapping[str, Any]]) -> None:
        """What each receiving transceiver carries now (``tracks``: the
        offer's, or a single connection's ``published.receiving``)."""
        by_mid = {str(t["mid"]): t for t in tracks}
        for transceiver in pc.getTransceivers():
            if transceiver.direction == "sendonly":
                continue  # one of ours, on a single connection
            mid = transceiver.mid
            if mid is None:
                continue
            info = by_mid.get(mid)
            current = self.received.get(mid)
            if info is None:
                # The m= section is stopped (port 0) or carries nothing now.
                if current is not None:
                    current.active = False
                continue
            track = transceiver.receiver.track
            if current is not None and current.track_id == info["track_id"]:
                current.active = True
                continue
            received = ReceivedTrack(
                mid=mid,
                track_id=str(info["track_id"]),
                participant=str(info["participant"]),
                kind=str(info.get("kind", transceiver.kind)),
                source=str(info.get("source", "")),
                track=track,
            )
            self.received[mid] = received
            if received.kind == "video" and mid not in self._resyncs:
                self._resyncs[mid] = KeyframeResync(transceiver.receiver)
            if self.nack_retry is not None and received.kind == "video":
                if mid not in self._retries:
                    self._retries[mid] = NackRetry(transceiver.receiver, self.nack_retry, 10)
                if self._retry_task is None:
                    self._retry_task = asyncio.create_task(self._retry_nacks(), name="nack-retry")
            if self.consume and track is not None:
                task = asyncio.create_task(self._consume(received), name=f"consume {mid}")
                self._consumers.add(task)
                task.add_done_callback(self._consumers.discard)

    async def _retry_nacks(self) -> None:
        assert self.nack_retry is not None
        while True:
            await asyncio.sleep(self.nack_retry / 2)
            now = time.monotonic()
            for retry in list(self._retries.values()):
                with contextlib.suppress(ConnectionError):
                    await retry.tick(now)

    async def _consume(self, received: ReceivedTrack) -> None:
        track = received.track
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                received.active = False
                self.changes.notify()
                return
            first = received.frames == 0
            received.frame_received(frame, time.monotonic())
            if first:
                self.changes.notify()

    # -- how receiving recovers -----------------------------------------------

    @property
    def nacks_resent(self) -> int:
        """Sequence numbers NACKed again by :class:`NackRetry`."""
        return sum(r.resent for r in self._retries.values())

    @property
    def keyframes_asked(self) -> int:
        """PLIs sent for video packets given up on (:class:`NackRetry`)."""
        return sum(r.keyframes_asked for r in self._retries.values())

    @property
    def keyframe_resyncs(self) -> int:
        """Times a video receiver gave up on a gap to start over at a keyframe
        (:class:`wadud_client.jitter.KeyframeResync`)."""
        return sum(r.resyncs for r in self._resyncs.values())
