"""A Python participant in a call, on aiortc: the client side of the
"Calls (signalling)" protocol in docs/protocol.md.

It is for tests, load generation and headless participants (a recorder, an
interpreter's bridge), so it favours being observable over being small: every
server frame is kept in :attr:`CallClient.history` and put on
:attr:`CallClient.events`, every received track is consumed and its decoded
frames counted and timed (:class:`ReceivedTrack`), and :meth:`CallClient.wait_until`
waits for any condition on that state.

:class:`CallClient` holds the pieces and routes each server frame to them:
its signalling WebSocket (:class:`~wadud_client.socket.CallSocket`), what it
knows of the room (:class:`~wadud_client.room.RoomView`), its two peer
connections and what goes over them (:class:`~wadud_client.media.CallMedia`,
which also gets media back by itself when a path dies), and the waiting on
all of that (:class:`~wadud_client.changes.Changes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp

from wadud_client.changes import Changes
from wadud_client.errors import CallError
from wadud_client.media import CLOSE_STEP, CallMedia, Direction, SdpFilter
from wadud_client.network import ws_url
from wadud_client.received import ReceivedTrack
from wadud_client.room import RoomView, State
from wadud_client.socket import CallSocket

__all__ = ["CallClient", "Event"]


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
    ``client``: what ``join`` says the client is (``{"platform": "ios"}``
    for one standing in for a phone app: the server keeps its seat longer).
    ``relay``, as the ES module's option of that name: media only through
    the TURN relay of the ICE servers (True), or only through its ``udp``,
    ``tcp`` or ``tls`` (``turns:``) listener. Over TLS aioice checks the
    relay's certificate against the system's CAs, or ``SSL_CERT_FILE``.

    Its pieces are :attr:`socket`, :attr:`view`, :attr:`media` and
    :attr:`changes`; what they hold is read here too (:attr:`state`,
    :attr:`participants`, :attr:`received`, ...).
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
        client: Mapping[str, str] | None = None,
        connection: Literal["single", "pair"] = "single",
    ) -> None:
        url, _, url_room = ws_url(url)
        room = room or url_room
        if room:
            url += "?" + urlencode({"room": room})
        self.token = token
        self.label = label
        self.client = dict(client) if client is not None else None
        #: One peer connection both ways (``single``) or two (``pair``), as asked.
        self.connection = connection
        #: The server's clock less ours, in seconds, from the last :meth:`ping`
        #: (its ``pong.server_time``, taken half the round trip ago).
        self.clock_offset: float | None = None
        self.history: list[Event] = []
        self.events: asyncio.Queue[Event] = asyncio.Queue(maxsize=10_000)
        #: What this participant knows of its room, from the server's frames.
        self.view = RoomView()
        #: Wakes whoever waits (:meth:`wait_until`) when anything changes.
        self.changes = Changes(lambda: repr(self))
        #: The signalling WebSocket; every frame it reads comes to :meth:`_dispatch`.
        self.socket = CallSocket(
            url,
            on_frame=self._dispatch,
            on_closed=self._socket_closed,
            request_timeout=request_timeout,
            label=label,
            http=http,
        )
        #: The two peer connections and what goes over them.
        self.media = CallMedia(
            self.socket,
            self.view,
            self.changes,
            ice_servers=ice_servers,
            sdp_filter=sdp_filter,
            consume=consume,
            label=label,
            nack_retry=nack_retry,
            reconnect=reconnect,
            relay=relay,
            single=connection == "single",
        )

    def __repr__(self) -> str:
        return f"<CallClient {self.label or self.participant_id} {self.state}>"

    # -- what the pieces hold -------------------------------------------------

    @property
    def url(self) -> str:
        return self.socket.url

    @property
    def request_timeout(self) -> float:
        return self.socket.request_timeout

    @property
    def close_code(self) -> int | None:
        return self.socket.close_code

    @property
    def state(self) -> State:
        """``new`` → ``waiting`` → ``joined`` → ``closed``; ``disconnected``
        when the socket dropped without the server ending our stay (then
        :meth:`resume` within the grace period)."""
        return self.view.state

    @property
    def participant(self) -> dict[str, Any]:
        return self.view.participant

    @property
    def participant_id(self) -> str | None:
        return self.view.participant_id

    @property
    def session(self) -> str | None:
        return self.view.session

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        return self.view.ice_servers

    @property
    def ping_interval(self) -> float | None:
        return self.view.ping_interval

    @property
    def resume_grace(self) -> float | None:
        """Seconds the server keeps our seat once our socket is taken for dropped."""
        return self.view.resume_grace

    @property
    def participants(self) -> dict[str, dict[str, Any]]:
        """Others in the room, by participant id (as in ``joined.participants``)."""
        return self.view.participants

    @property
    def room_tracks(self) -> dict[str, dict[str, Any]]:
        """Every published track in the room, ours included, by track id."""
        return self.view.room_tracks

    @property
    def waiting(self) -> list[dict[str, Any]]:
        """Who waits for admission (sent to admins only)."""
        return self.view.waiting

    @property
    def guests_awaiting(self) -> list[dict[str, Any]]:
        """Invited guests waiting for our agreement (a role with
        ``approve_guests``: the patient), each with its ``invite_id``."""
        return self.view.guests_awaiting

    @property
    def active_speaker(self) -> str | None:
        """The room's dominant speaker (participant id), from ``active_speaker``."""
        return self.view.active_speaker

    @property
    def require_admission(self) -> bool:
        return self.view.require_admission

    @property
    def recording(self) -> dict[str, Any]:
        """The room's recording: ``state`` (off, asking, on) and ``recording_id``."""
        return self.view.recording

    @property
    def recording_asked(self) -> str | None:
        """The recording this participant must answer before it may publish
        (:meth:`answer_recording`); None when nothing is asked."""
        return self.view.recording_asked

    @property
    def published(self) -> dict[str, dict[str, Any]]:
        """Our published tracks by track id (from ``published.tracks``)."""
        return self.view.published

    @property
    def peer_media(self) -> dict[str, str]:
        """Others whose media is reconnecting (``participant_media``), by id."""
        return self.view.peer_media

    @property
    def sdp_filter(self) -> SdpFilter | None:
        return self.media.sdp_filter

    @property
    def consume(self) -> bool:
        return self.media.consume

    @property
    def nack_retry(self) -> float | None:
        return self.media.nack_retry

    @property
    def reconnect(self) -> bool:
        return self.media.reconnect

    @property
    def relay(self) -> bool | Literal["udp", "tcp", "tls"]:
        return self.media.relay

    @property
    def received(self) -> dict[str, ReceivedTrack]:
        """What the subscribe connection receives, by mid."""
        return self.media.received

    @property
    def errors(self) -> list[BaseException]:
        """Failures the client met on its own (an offer it could not answer)."""
        return self.media.errors

    @property
    def publish_pc(self) -> Any:
        return self.media.publish_pc

    @property
    def subscribe_pc(self) -> Any:
        return self.media.subscribe_pc

    @property
    def connected_at(self) -> dict[Direction, float]:
        """``time.monotonic()`` when each peer connection reached ``connected``."""
        return self.media.connected_at

    @property
    def media_moves(self) -> int:
        """How often media started over on new peer connections: the room
        moved to another media worker (``media_reconnect``), or a dead path
        made this client ask (those are :attr:`media_reconnects` too)."""
        return self.media.media_moves

    @property
    def media_reconnects(self) -> int:
        return self.media.media_reconnects

    @property
    def media_state(self) -> Literal["connected", "reconnecting"]:
        """Our own media: ``connected``, or ``reconnecting`` after a peer
        connection failed and until new ones are connected."""
        return self.media.media_state

    @property
    def nacks_resent(self) -> int:
        """Sequence numbers NACKed again by :class:`NackRetry`."""
        return self.media.nacks_resent

    @property
    def keyframes_asked(self) -> int:
        """PLIs sent for video packets given up on (:class:`NackRetry`)."""
        return self.media.keyframes_asked

    @property
    def keyframe_resyncs(self) -> int:
        """Times a video receiver gave up on a gap to start over at a keyframe
        (:class:`wadud_client.jitter.KeyframeResync`)."""
        return self.media.keyframe_resyncs

    # -- connection ---------------------------------------------------------

    async def join(self, *, resume: str | None = None) -> dict[str, Any]:
        """Open the WebSocket and send ``join``; returns the ``joined`` or
        ``waiting`` frame. Raises :class:`RequestFailed` (``unauthorized``,
        ``forbidden``, ``room-full``, ...) when the server refuses."""
        await self.socket.connect()
        self.media.start()
        # The protocol version this client speaks (docs/protocol.md).
        fields: dict[str, Any] = {"token": self.token, "protocol": 1}
        if self.client is not None:
            fields["client"] = self.client
        fields["connection"] = self.connection
        if resume is not None:
            fields["resume"] = resume
        return await self.request("join", **fields)

    async def resume(self) -> dict[str, Any]:
        """Reconnect the WebSocket (dropped or not) and resume the session
        within the server's grace period; the peer connections stay as they
        are."""
        if self.session is None:
            raise CallError("nothing to resume: never joined")
        await self.socket.drop()
        return await self.join(resume=self.session)

    async def wait_admitted(self, within: float = 30.0) -> None:
        """Wait until this participant is in the room (after ``waiting``)."""
        await self.wait_until(lambda: self.state == "joined", within)

    async def leave(self) -> None:
        """Say goodbye (``leave``) and close everything."""
        if self.socket.connected and self.state != "closed":
            with contextlib.suppress(CallError, asyncio.TimeoutError):
                await self.request("leave")
        await self.close()

    async def close(self) -> None:
        """Close the WebSocket and both peer connections, without ``leave``
        (the server notices the socket and the transports go)."""
        self.view.state = "closed"
        stopped = self.media.stop()
        # Each step is bounded: a close must end, whatever the server or a
        # peer connection does (a test's clean-up hung on one for minutes).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_STEP):
                await self.socket.drop()
        await self.media.close(stopped)
        await self.socket.close()
        self.changes.notify()

    async def __aenter__(self) -> CallClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- requests -----------------------------------------------------------

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send a frame with a fresh ``id`` and return the server's answer to
        it (``ok``, ``joined``, ``published``, ``pong``, ...); an ``error``
        answer raises :class:`RequestFailed`, no answer within
        :attr:`request_timeout` raises TimeoutError."""
        return await self.socket.request(type, fields)

    async def send(self, type: str, **fields: Any) -> None:
        """Send a frame that has no answer (``pong``)."""
        await self.socket.send(type, **fields)

    async def ping(self) -> float:
        """Round-trip time of a ``ping`` in seconds; the ``pong``'s
        ``server_time`` sets :attr:`clock_offset`."""
        start = time.monotonic()
        pong = await self.request("ping")
        rtt = time.monotonic() - start
        server_time = pong.get("server_time")
        if isinstance(server_time, int | float):
            self.clock_offset = server_time / 1000 + rtt / 2 - time.time()
        return rtt

    async def mute(self, track_id: str, muted: bool = True) -> None:
        """Ask the server to stop (or resume) forwarding a track: our own, or
        anyone's with ``admin``. Our encoder keeps running; the server drops."""
        await self.request("mute", track_id=track_id, muted=muted)

    async def unpublish(self, track_id: str) -> None:
        """Withdraw one of our tracks, and stop sending it."""
        await self.media.unpublish(track_id)

    async def admit(self, participant_id: str) -> None:
        await self.request("admit", participant_id=participant_id)

    async def deny(self, participant_id: str) -> None:
        await self.request("deny", participant_id=participant_id)

    async def remove(self, participant_id: str) -> None:
        await self.request("remove", participant_id=participant_id)

    async def approve_guest(self, invite_id: str, agree: bool = True) -> None:
        """Agree that an invited guest joins, or refuse (their link dies)."""
        await self.request("approve_guest", invite_id=invite_id, agree=agree)

    async def answer_recording(self, agree: bool) -> None:
        """Answer ``recording_asked``: agree, or refuse (which stops the
        recording for everyone)."""
        asked = self.view.recording_asked
        if asked is None:
            raise CallError("no recording is asked of this participant")
        await self.request("recording_consent", recording_id=asked, agree=agree)
        if self.view.recording_asked == asked:
            self.view.recording_asked = None

    async def call_phone(self, number: str | None = None) -> dict[str, Any]:
        """Have the phone bridge call the visit's patient (or ``number``, on
        the clinic trunk's allow-list) into the room (admin; ``phone_calls``):
        the call (``id``, ``state``). Its steps follow in :attr:`phone_steps`."""
        fields = {"number": number} if number else {}
        answer = await self.request("call_phone", **fields)
        return dict(answer["call"])

    @property
    def phone_calls(self) -> bool:
        """Whether we may have the phone bridge call the patient."""
        return self.view.phone_calls

    @property
    def phone_steps(self) -> list[dict[str, Any]]:
        """Each step of the calls the bridge placed for the room (admins)."""
        return self.view.phone_steps

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
        await self.media.reconnect_media()

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
        return await self.media.publish(tracks, simulcast=simulcast)

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

    def track_id_of(self, source: str) -> str | None:
        """The track id the server gave our ``source`` track."""
        return self.view.track_id_of(source)

    # -- reading ------------------------------------------------------------

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        """One server frame, to each piece in turn: the room view, the media,
        the request it answers; then the history."""
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
        self.view.apply(kind, frame)
        if forgotten:
            self.media.moved()
        self.socket.answered(frame)
        if kind == "ping":
            with contextlib.suppress(ConnectionError, CallError):
                await self.send("pong")
        elif kind == "offer":
            self.media.offer(frame)
        elif kind == "media_reconnect":
            self.media.moved()
        elif kind == "renegotiate":
            self.media.renegotiate(frame)
        elif kind == "joined" and not forgotten:
            self.media.joined(frame)
        elif kind == "set_encodings":
            await self.media.set_encodings(frame)
        self.history.append(event)
        if self.events.full():
            self.events.get_nowait()
        self.events.put_nowait(event)
        self.changes.notify()

    def _socket_closed(self, code: int | None) -> None:
        self.view.socket_closed(code)
        self.changes.notify()

    # -- waiting ------------------------------------------------------------

    async def wait_until(self, predicate: Callable[[], object], within: float = 10.0) -> None:
        """Wait until ``predicate()`` is true; it is checked whenever a frame
        arrives or a connection, offer or received track changes."""
        await self.changes.wait_until(predicate, within)

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
