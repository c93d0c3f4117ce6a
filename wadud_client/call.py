"""A Python participant in a call, on aiortc: the client side of the
"Calls (signalling)" protocol in docs/protocol.md.

It is for tests, load generation and headless participants (a recorder, an
interpreter's bridge), so it favours being observable over being small: every
server frame is kept in :attr:`CallClient.history` and put on
:attr:`CallClient.events`, every received track is consumed and its decoded
frames counted and timed (:class:`ReceivedTrack`), and :meth:`CallClient.wait_until`
waits for any condition on that state.

A participant holds two peer connections to the media worker (the protocol's
"Media: two peer connections"): *publish*, where this client offers what it
sends and the server answers, and *subscribe*, where the server offers what
this client receives and the client answers. The server is ICE-lite
(RFC 8445 section 2.5), so aiortc is always the controlling agent and the
server's candidates arrive inside its SDP; aiortc puts all of its own
candidates in its SDP too, so nothing is trickled.

When a path dies (its peer connection goes ``failed``: ICE consent expired,
or DTLS gave up) the client gets media back by itself with new peer
connections (``reconnect_media``), the same tracks and participant; browsers
first try an ICE restart, which aiortc cannot do (see
:meth:`CallClient.reconnect_media`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcconfiguration import RTCBundlePolicy, RTCIceTransportPolicy

from wadud_client.errors import CallError, ConnectionClosed, RequestFailed
from wadud_client.jitter import KeyframeResync
from wadud_client.nack import NackRetry
from wadud_client.network import relay_servers, ws_url
from wadud_client.received import ReceivedTrack
from wadud_client.simulcast import SimulcastMunger, layer_tracks
from wadud_client.sources import Intake

__all__ = ["CallClient", "Event"]

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
Direction = Literal["publish", "subscribe"]
Source = Literal["microphone", "camera", "screen", "screen_audio"]
SdpFilter = Callable[[str, Direction], str]

# Server frames that end the participant's time in the room; the server closes
# the socket right after them.
_FINAL = {"denied", "removed", "room_ended", "replaced"}
# Close codes after which there is nothing to resume.
_FINAL_CLOSE = {1000, 4401, 4403, 4409, 4410, 4429}
# New peer connections that are not connected by then are tried again.
RECONNECT_WITHIN = 8.0
#: Seconds each step of close() may take (the socket, each peer connection,
#: the tasks) before it is given up on.
CLOSE_STEP = 5.0


@dataclass(frozen=True)
class Event:
    """One frame from the server, as received, with its arrival time
    (``time.monotonic()``)."""

    type: str
    data: dict[str, Any]
    at: float


class CallClient:
    """One participant: a signalling WebSocket and two peer connections.

    ``url`` is the server's ``/ws`` URL (or any URL :func:`ws_url` accepts);
    ``room`` adds ``?room=`` so the server refuses a token for another room.
    ``ice_servers`` overrides the ones ``joined`` gives (a list of
    ``{"urls", "username"?, "credential"?}``). ``sdp_filter`` rewrites every
    SDP from the server before it is applied (tests point the server's
    candidates at a lossy relay with it). ``consume`` starts a task per
    received track that reads and counts its frames; without it frames queue
    up in aiortc until someone calls ``track.recv()``. ``nack_retry``
    repeats NACKs for video packets still missing after that many seconds
    (see :class:`NackRetry`); None leaves aiortc's receiver as it is.
    ``reconnect``: when a peer connection fails, get media back on new ones
    by itself (:meth:`reconnect_media`); False leaves that to the caller.
    ``relay``, as the ES module's option of that name: media only through
    the TURN relay of the ICE servers (True), or only through its ``udp``,
    ``tcp`` or ``tls`` (``turns:``) listener. Over TLS aioice checks the
    relay's certificate against the system's CAs, or ``SSL_CERT_FILE``.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        room: str | None = None,
        ice_servers: Sequence[Mapping[str, Any]] | None = None,
        sdp_filter: SdpFilter | None = None,
        consume: bool = True,
        label: str = "",
        request_timeout: float = 10.0,
        nack_retry: float | None = 0.1,
        http: aiohttp.ClientSession | None = None,
        reconnect: bool = True,
        relay: bool | Literal["udp", "tcp", "tls"] = False,
    ) -> None:
        self.url, _, url_room = ws_url(url)
        room = room or url_room
        if room:
            self.url += "?" + urlencode({"room": room})
        self.token = token
        self.label = label
        self.sdp_filter = sdp_filter
        self.consume = consume
        self.request_timeout = request_timeout
        self.nack_retry = nack_retry
        self.reconnect = reconnect
        self.relay = relay
        self._ice_override = [dict(s) for s in ice_servers] if ice_servers is not None else None
        self._http = http
        self._own_http = http is None

        #: ``new`` → ``waiting`` → ``joined`` → ``closed``; ``disconnected``
        #: when the socket dropped without the server ending our stay (then
        #: :meth:`resume` within the grace period).
        self.state: Literal["new", "waiting", "joined", "disconnected", "closed"] = "new"
        self.participant: dict[str, Any] = {}
        self.session: str | None = None
        self.ice_servers: list[dict[str, Any]] = []
        self.ping_interval: float | None = None
        #: Others in the room, by participant id (as in ``joined.participants``).
        self.participants: dict[str, dict[str, Any]] = {}
        #: Every published track in the room, ours included, by track id.
        self.room_tracks: dict[str, dict[str, Any]] = {}
        #: Who waits for admission (sent to admins only).
        self.waiting: list[dict[str, Any]] = []
        #: The room's dominant speaker (participant id), from ``active_speaker``.
        self.active_speaker: str | None = None
        self.require_admission = False
        #: Our published tracks by track id (from ``published.tracks``).
        self.published: dict[str, dict[str, Any]] = {}
        #: What the subscribe connection receives, by mid.
        self.received: dict[str, ReceivedTrack] = {}
        self.history: list[Event] = []
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        #: Failures the client met on its own (an offer it could not answer).
        self.errors: list[BaseException] = []
        self.close_code: int | None = None
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
        #: Others whose media is reconnecting (``participant_media``), by id.
        self.peer_media: dict[str, str] = {}
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

        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._offers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._offer_task: asyncio.Task[None] | None = None
        self._consumers: set[asyncio.Task[None]] = set()
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count(1)
        self._waiters: list[asyncio.Future[None]] = []
        self._sources: dict[str, str] = {}  # publish mid -> source
        self._transceivers: dict[str, Any] = {}  # publish mid -> transceiver
        self._publish_lock = asyncio.Lock()
        self._retries: dict[str, NackRetry] = {}  # subscribe mid -> its video receiver's
        self._retry_task: asyncio.Task[None] | None = None
        self._resyncs: dict[str, KeyframeResync] = {}  # subscribe mid -> its video receiver's
        self._recovery: asyncio.Task[None] | None = None
        #: Run on the answer to a request, before the next frame is read.
        self._on_answer: dict[str, Callable[[dict[str, Any]], None]] = {}

    @property
    def participant_id(self) -> str | None:
        pid = self.participant.get("id")
        return str(pid) if pid is not None else None

    def __repr__(self) -> str:
        return f"<CallClient {self.label or self.participant_id} {self.state}>"

    # -- connection ---------------------------------------------------------

    async def join(self, *, resume: str | None = None) -> dict[str, Any]:
        """Open the WebSocket and send ``join``; returns the ``joined`` or
        ``waiting`` frame. Raises :class:`RequestFailed` (``unauthorized``,
        ``forbidden``, ``room-full``, ...) when the server refuses."""
        await self._open()
        fields: dict[str, Any] = {"token": self.token}
        if resume is not None:
            fields["resume"] = resume
        return await self.request("join", **fields)

    async def resume(self) -> dict[str, Any]:
        """Reconnect the WebSocket (dropped or not) and resume the session
        within the server's grace period; the peer connections stay as they
        are."""
        if self.session is None:
            raise CallError("nothing to resume: never joined")
        await self._drop_socket()
        return await self.join(resume=self.session)

    async def wait_admitted(self, within: float = 30.0) -> None:
        """Wait until this participant is in the room (after ``waiting``)."""
        await self.wait_until(lambda: self.state == "joined", within)

    async def leave(self) -> None:
        """Say goodbye (``leave``) and close everything."""
        if self._ws is not None and not self._ws.closed and self.state != "closed":
            with contextlib.suppress(CallError, asyncio.TimeoutError):
                await self.request("leave")
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket and both peer connections, without ``leave``
        (the server notices the socket and the transports go)."""
        self.state = "closed"
        tasks = [
            t
            for t in (self._offer_task, self._retry_task, self._recovery, *self._consumers)
            if t is not None
        ]
        for task in tasks:
            task.cancel()
        self._stop_intakes(keep=())
        # Each step is bounded: a close must end, whatever the server or a
        # peer connection does (a test's clean-up hung on one for minutes).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_STEP):
                await self._drop_socket()
        for pc in (self.publish_pc, self.subscribe_pc):
            if pc is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(CLOSE_STEP):
                        await pc.close()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_STEP)
        self._consumers.clear()
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None
        self._notify()

    def _stop_intakes(self, keep: Iterable[Any]) -> None:
        """End the relay's reading of every source but ``keep``."""
        kept = set(keep)
        for source in [s for s in self._intakes if s not in kept]:
            self._intakes.pop(source).stop()

    async def __aenter__(self) -> CallClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _open(self) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self.close_code = None
        # Bounded: a connect into a cut network would otherwise wait out
        # TCP's retries (minutes).
        async with asyncio.timeout(self.request_timeout):
            self._ws = await self._http.ws_connect(self.url, heartbeat=None, autoping=True)
        self._reader = asyncio.create_task(self._read(self._ws), name=f"call-read {self.label}")
        if self._offer_task is None:
            self._offer_task = asyncio.create_task(self._answer_offers(), name="call-offers")

    async def _drop_socket(self) -> None:
        ws, reader = self._ws, self._reader
        self._ws = self._reader = None
        if ws is not None:
            await ws.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
        self._fail_pending(ConnectionClosed(ws.close_code if ws else None, "dropped by client"))

    # -- requests -----------------------------------------------------------

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send a frame with a fresh ``id`` and return the server's answer to
        it (``ok``, ``joined``, ``published``, ``pong``, ...); an ``error``
        answer raises :class:`RequestFailed`, no answer within
        :attr:`request_timeout` raises TimeoutError."""
        return await self._request(type, fields)

    async def _request(
        self,
        type: str,
        fields: dict[str, Any],
        on_answer: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        ws = self._ws
        if ws is None or ws.closed:
            raise ConnectionClosed(self.close_code, "not connected")
        rid = str(next(self._ids))
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        if on_answer is not None:
            self._on_answer[rid] = on_answer
        try:
            await ws.send_str(
                json.dumps({"v": PROTOCOL_VERSION, "type": type, "id": rid, **fields})
            )
            return await asyncio.wait_for(fut, self.request_timeout)
        finally:
            self._pending.pop(rid, None)
            self._on_answer.pop(rid, None)

    async def send(self, type: str, **fields: Any) -> None:
        """Send a frame that has no answer (``pong``)."""
        if self._ws is None or self._ws.closed:
            raise ConnectionClosed(self.close_code, "not connected")
        await self._ws.send_str(json.dumps({"v": PROTOCOL_VERSION, "type": type, **fields}))

    async def ping(self) -> float:
        """Round-trip time of a ``ping`` in seconds."""
        start = time.monotonic()
        await self.request("ping")
        return time.monotonic() - start

    async def mute(self, track_id: str, muted: bool = True) -> None:
        """Ask the server to stop (or resume) forwarding a track: our own, or
        anyone's with ``admin``. Our encoder keeps running; the server drops."""
        await self.request("mute", track_id=track_id, muted=muted)

    async def unpublish(self, track_id: str) -> None:
        """Withdraw one of our tracks, and stop sending it."""
        info = self.published.get(track_id)
        await self.request("unpublish", track_id=track_id)
        self.published.pop(track_id, None)
        if info is not None:
            self._local.pop(str(info.get("source")), None)
            feed = self._feeds.pop(str(info.get("source")), None)
            if feed is not None:
                feed.stop()
            self._stop_intakes(keep=self._local.values())
            transceiver = self._transceivers.get(str(info.get("mid")))
            if transceiver is not None:
                transceiver.sender.replaceTrack(None)

    async def admit(self, participant_id: str) -> None:
        await self.request("admit", participant_id=participant_id)

    async def deny(self, participant_id: str) -> None:
        await self.request("deny", participant_id=participant_id)

    async def remove(self, participant_id: str) -> None:
        await self.request("remove", participant_id=participant_id)

    async def end(self) -> None:
        """End the room for everyone (admin)."""
        await self.request("end")

    async def room_settings(self, *, require_admission: bool) -> None:
        await self.request("room_settings", require_admission=require_admission)

    async def candidate(self, transport: Direction, candidate: Mapping[str, Any] | None) -> None:
        """Trickle one ICE candidate (RTCIceCandidateInit), or None for
        end-of-candidates. aiortc puts its candidates in the SDP, so the
        client itself never needs this; it is here for protocol tests."""
        await self.request(
            "candidate", transport=transport, candidate=dict(candidate) if candidate else None
        )

    # -- media --------------------------------------------------------------

    def _configuration(self) -> Any:
        servers = self._ice_override if self._ice_override is not None else self.ice_servers
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
                self.connected_at.setdefault(direction, time.monotonic())
            # aiortc has no `disconnected`: a dead path shows as `failed` once
            # consent freshness gives up (RFC 7675; aioice: 6 checks 5 s
            # apart), and a connection that closes itself (its DTLS ended)
            # while still ours is as dead.
            elif state in ("failed", "closed"):
                self._path_failed(pc, f"{direction} connection {state}")
            self._notify()

        return pc

    # -- when the path dies ---------------------------------------------------

    async def reconnect_media(self) -> None:
        """Ask the server for new transports (``reconnect_media``) and move to
        new peer connections: the same tracks are published again on a new
        publish connection, and the server offers everything we receive on a
        new subscribe connection. The participant and the socket stay.

        Browsers first try an ICE restart (new ICE credentials on the same
        connections, DTLS kept; RFC 8445 section 9), which is quicker. This
        client cannot: aiortc has no ``restartIce`` and aioice's
        ``Connection`` keeps its credentials and candidates for life, so new
        connections (a new DTLS handshake, new decoders) are its only way
        back."""
        self.media_reconnects += 1
        # The old connections go the moment the server says `ok`, before the
        # offer for the new subscribe transport (which follows it) is read.
        await self._request("reconnect_media", {}, on_answer=lambda _: self._media_moved())

    def _path_failed(self, pc: Any, why: str) -> None:
        if pc not in (self.publish_pc, self.subscribe_pc) or self.state == "closed":
            return  # an old connection, or we are closing
        self.media_state = "reconnecting"
        if not self.reconnect or self._recovery is not None:
            return
        log.info("%r: %s; reconnecting media", self, why)
        self._recovery = asyncio.create_task(self._recover(), name=f"reconnect {self.label}")

    async def _recover(self) -> None:
        had_subscribe = self.subscribe_pc is not None
        pause = 1.0
        try:
            while self.state != "closed":
                if self.state == "joined":
                    try:
                        await self.reconnect_media()
                        await self.wait_until(
                            lambda: self._media_connected(had_subscribe), RECONNECT_WITHIN
                        )
                        self.media_state = "connected"
                        self._notify()
                        return
                    except (CallError, ConnectionError, TimeoutError) as exc:
                        log.info("%r: media not back yet: %r", self, exc)
                # Without signalling (the caller resumes it) nothing can be
                # asked: look again in a moment, less often as failures mount.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
        finally:
            self._recovery = None

    def _media_connected(self, subscribe: bool) -> bool:
        pcs = [self.publish_pc] if self._local else []
        if subscribe:
            pcs.append(self.subscribe_pc)
        return all(pc is not None and pc.connectionState == "connected" for pc in pcs)

    async def publish(
        self,
        tracks: Mapping[str, Any] | Iterable[tuple[str, Any]],
        *,
        simulcast: bool = False,
    ) -> list[dict[str, Any]]:
        """Send ``tracks`` (source → aiortc MediaStreamTrack: ``microphone``,
        ``camera``, ``screen``, ``screen_audio``) on the publish connection:
        one ``sendonly`` transceiver each, then a ``publish`` offer. Calling
        it again adds tracks by renegotiating the same connection. Returns
        ``published.tracks``: our tracks as the server now lists them (each
        with the ``track_id`` others will see).

        ``simulcast``: the camera goes as three layers (RIDs ``q``, ``h``,
        ``f`` at 1/4, 1/2 and full size), one aiortc encoder each, offered
        as one RFC 8853 simulcast track (see :mod:`wadud_client.simulcast` for
        what that does and does not do)."""
        items = list(tracks.items()) if isinstance(tracks, Mapping) else list(tracks)
        self._local.update(items)
        self._stop_intakes(keep=self._local.values())  # a source given anew replaces the old
        if simulcast:
            self._simulcast_sources.update(s for s, t in items if s == "camera")
        async with self._publish_lock:
            if self.publish_pc is None:
                self.publish_pc = self._new_pc("publish")
                self._munger = SimulcastMunger()
            pc = self.publish_pc
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
            await pc.setLocalDescription(await pc.createOffer())
            for group, layers in layered:
                munger.add(group, layers)
            for source, transceiver in new:
                self._sources[transceiver.mid] = source
                self._transceivers[transceiver.mid] = transceiver
            munger.install(t.sender.transport for t in pc.getTransceivers())
            answer = await self.request(
                "publish",
                sdp=munger.offer(pc.localDescription.sdp),
                sources=dict(self._sources),
            )
            sdp = munger.answer(self._filter(str(answer["sdp"]), "publish"))
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
            munger.install(t.sender.transport for t in pc.getTransceivers())
            listed = [dict(t) for t in answer.get("tracks") or []]
            for t in listed:
                self.published[str(t["track_id"])] = t
                self.room_tracks[str(t["track_id"])] = t
            self._notify()
            return listed

    def _media_moved(self) -> None:
        """``media_reconnect`` (the room is on another media worker now), or a
        resume that made us a new participant: drop both peer connections at
        once (the next offer is for a new one) and publish the same tracks
        again on a fresh connection."""
        old = [pc for pc in (self.publish_pc, self.subscribe_pc) if pc is not None]
        self.publish_pc = self.subscribe_pc = None
        self._munger = None
        # From what we chose to publish, not from the transceivers: a second
        # move while the first republish runs finds those cleared already.
        items = list(self._local.items())
        self._sources.clear()
        self._transceivers.clear()
        for tid in self.published:
            self.room_tracks.pop(tid, None)
        self.published.clear()
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
                await pc.close()
        moves = self.media_moves
        if items and self.state != "closed":
            try:
                await self.publish(items)
            except Exception as exc:
                if moves != self.media_moves:
                    return  # another move superseded this one; it publishes again
                log.warning("could not publish again after the media moved: %r", exc)
                self.errors.append(exc)
                self._notify()

    async def track_view(
        self, track_id: str, width: int, height: int, visible: bool = True
    ) -> None:
        """Tell the server how we show a remote video: the size it is drawn at
        (device pixels) and whether it is visible; the server picks its
        simulcast layer from that and our bandwidth (no answer comes back)."""
        await self.send(
            "track_view", track_id=track_id, width=width, height=height, visible=visible
        )

    async def audio_only(self, enabled: bool = True) -> None:
        """Receive no video while ``enabled`` (the server answers ``ok``)."""
        await self.request("audio_only", enabled=enabled)

    async def _set_encodings(self, frame: dict[str, Any]) -> None:
        """Dynacast: start or stop our simulcast layers as the server asks."""
        munger = self._munger
        track = self.published.get(str(frame.get("track_id")))
        if munger is None or track is None:
            return
        mid = next((m for m, s in self._sources.items() if s == track.get("source")), None)
        if mid is not None:
            await munger.set_encodings(mid, frame.get("encodings") or [])

    def track_id_of(self, source: str) -> str | None:
        """The track id the server gave our ``source`` track."""
        for tid, t in self.published.items():
            if t.get("source") == source:
                return tid
        return None

    def _filter(self, sdp: str, direction: Direction) -> str:
        return self.sdp_filter(sdp, direction) if self.sdp_filter else sdp

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
                self._notify()

    async def _answer(self, frame: dict[str, Any]) -> None:
        if self.subscribe_pc is None:
            self.subscribe_pc = self._new_pc("subscribe")
        pc = self.subscribe_pc
        sdp = self._filter(str(frame["sdp"]), "subscribe")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        if pc is not self.subscribe_pc:
            return  # media moved meanwhile: this offer was for the old connection
        by_mid = {str(t["mid"]): t for t in frame.get("tracks") or []}
        for transceiver in pc.getTransceivers():
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
        await self.request("answer", sdp=pc.localDescription.sdp)
        self._notify()

    async def _retry_nacks(self) -> None:
        assert self.nack_retry is not None
        while True:
            await asyncio.sleep(self.nack_retry / 2)
            now = time.monotonic()
            for retry in list(self._retries.values()):
                with contextlib.suppress(ConnectionError):
                    await retry.tick(now)

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

    async def _consume(self, received: ReceivedTrack) -> None:
        track = received.track
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                received.active = False
                self._notify()
                return
            first = received.frames == 0
            received.frame_received(frame, time.monotonic())
            if first:
                self._notify()

    # -- reading ------------------------------------------------------------

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    log.warning("server sent a frame that is not JSON")
                    continue
                if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                    log.warning("server sent a frame without a type")
                    continue
                await self._dispatch(frame)
        finally:
            if ws is self._ws:
                code = self.close_code = ws.close_code
                # These end our stay (a refusal, `leave`, removal, the room's
                # end...); anything else (the network, a ping timeout, a server
                # restart's 1001) can be resumed within the grace period.
                if self.state != "closed" and code in _FINAL_CLOSE:
                    self.state = "closed"
                elif self.state in ("waiting", "joined"):
                    self.state = "disconnected"
                self._fail_pending(ConnectionClosed(code))
                self._notify()

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        event = Event(kind, frame, time.monotonic())
        # A resume answered with another participant id: the server forgot
        # us (our place lapsed), so our peer connections lead to transports
        # it dropped and its next offer is for a new one. Media starts over
        # as after a move (the call page does the same).
        me = self.participant_id
        forgotten = (
            kind == "joined"
            and me is not None
            and str((frame.get("participant") or {}).get("id")) != me
            and (self.publish_pc is not None or self.subscribe_pc is not None)
        )
        self._track_state(event)
        if forgotten:
            self._media_moved()
        ref = frame.get("ref")
        fut = self._pending.get(str(ref)) if ref is not None else None
        hook = self._on_answer.pop(str(ref), None) if ref is not None else None
        if hook is not None and kind != "error":
            hook(frame)
        if fut is not None and not fut.done():
            if kind == "error":
                fut.set_exception(
                    RequestFailed(
                        str(frame.get("code")),
                        str(frame.get("message", "")),
                        fatal=bool(frame.get("fatal")),
                        frame=frame,
                    )
                )
            else:
                fut.set_result(frame)
        if kind == "ping":
            with contextlib.suppress(ConnectionError, CallError):
                await self.send("pong")
        elif kind == "offer":
            self._offers.put_nowait(frame)
        elif kind == "media_reconnect":
            self._media_moved()
        elif kind == "set_encodings":
            await self._set_encodings(frame)
        self.history.append(event)
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait(event)
        self._notify()

    def _track_state(self, event: Event) -> None:
        f = event.data
        kind = event.type
        if kind in ("joined", "waiting") and "participant" in f:
            self.participant = dict(f["participant"])
            session = f.get("session")
            if isinstance(session, str):
                self.session = session
        if kind == "joined":
            self.state = "joined"
            self.ice_servers = list(f.get("ice_servers") or [])
            self.ping_interval = f.get("ping_interval")
            me = self.participant_id
            self.participants = {
                str(p["id"]): dict(p) for p in f.get("participants") or [] if p.get("id") != me
            }
            self.room_tracks = {str(t["track_id"]): dict(t) for t in f.get("tracks") or []}
            # After a resume the room's tracks include ours.
            self.published.update(
                (tid, t) for tid, t in self.room_tracks.items() if t.get("participant") == me
            )
            self.waiting = list(f.get("waiting") or [])
            self.active_speaker = f.get("active_speaker")
            self.require_admission = bool(f.get("require_admission", False))
        elif kind == "waiting":
            if "ref" in f:
                self.state = "waiting"
            if "waiting" in f:
                self.waiting = list(f["waiting"] or [])
        elif kind == "participant_joined":
            p = dict(f["participant"])
            self.participants[str(p["id"])] = p
        elif kind == "participant_left":
            pid = f.get("participant_id")
            self.participants.pop(str(pid), None)
            self.peer_media.pop(str(pid), None)
            for tid in [k for k, t in self.room_tracks.items() if t.get("participant") == pid]:
                del self.room_tracks[tid]
        elif kind == "track_published":
            t = dict(f["track"])
            self.room_tracks[str(t["track_id"])] = t
        elif kind == "track_unpublished":
            self.room_tracks.pop(str(f.get("track_id")), None)
        elif kind == "participant_media":
            pid = str(f.get("participant_id"))
            if f.get("state") == "reconnecting":
                self.peer_media[pid] = "reconnecting"
            else:
                self.peer_media.pop(pid, None)
        elif kind == "track_muted":
            muted = self.room_tracks.get(str(f.get("track_id")))
            if muted is not None:
                muted["muted"] = bool(f.get("muted"))
        elif kind == "active_speaker":
            self.active_speaker = f.get("participant_id")
        elif kind == "room_settings":
            self.require_admission = bool(f.get("require_admission"))
        elif kind in _FINAL:
            self.state = "closed"

    def _fail_pending(self, exc: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    # -- waiting ------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_until(self, predicate: Callable[[], object], within: float = 10.0) -> None:
        """Wait until ``predicate()`` is true; it is checked whenever a frame
        arrives or a connection, offer or received track changes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self!r}: condition not met within {within} s")
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            with contextlib.suppress(asyncio.TimeoutError):
                # Frames are counted without a notification each (only the
                # first one notifies), so poll as well.
                await asyncio.wait_for(fut, min(remaining, 0.05))

    async def wait_for(
        self,
        type: str,
        predicate: Callable[[dict[str, Any]], object] | None = None,
        *,
        since: int = 0,
        within: float = 10.0,
    ) -> dict[str, Any]:
        """The first frame of ``type`` (matching ``predicate``) in
        :attr:`history` from index ``since``, waiting for it if needed."""
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            for event in self.history[since:]:
                if event.type == type and (predicate is None or predicate(event.data)):
                    found.append(event.data)
                    return True
            return False

        await self.wait_until(seen, within)
        return found[0]

    def received_from(
        self, participant: str, kind: str | None = None, *, active: bool = True
    ) -> list[ReceivedTrack]:
        """Tracks received from ``participant`` (of ``kind``)."""
        return [
            r
            for r in self.received.values()
            if r.participant == participant
            and (kind is None or r.kind == kind)
            and (r.active or not active)
        ]
