"""The media worker: one UDP socket, its cores, and what drives them.

:class:`MediaWorker` is the asyncio adapter around the sans-I/O cores. It owns
the socket (an :class:`asyncio.DatagramProtocol`, so uvloop reads it), the one
timer handles, the native leaf, its settings (one frozen
:class:`~sfu.rooms.settings.WorkerSettings`, built once from its keyword
arguments) and the record of the tables every part shares
(:class:`~sfu.rooms.records.WorkerTables`). It is the :class:`sfu.control.messages.MediaControl`
signalling drives, by composition: :class:`sfu.negotiation.negotiator.Negotiator`
(offer/answer), :class:`sfu.negotiation.transports.Transports` (rooms and
transports), :class:`sfu.node.links.Links` (relay links) and
:class:`sfu.layers.choice.Layers` (simulcast, estimates, quality) are cores it holds;
each takes its inputs through one verb, ``receive(input, now)``, with a record
of :mod:`sfu.rooms.inputs` (a MediaControl call, a transport's STUN or DTLS, a
link's SRTCP, ...), queues what it wants done (:mod:`sfu.rooms.actions`), and the
worker carries that out (:meth:`MediaWorker._act`) after each input
(:meth:`MediaWorker._receive`): every core's queue, the callers' first, since
a core that calls another (the negotiator and the links call the transports,
the transports call the layers) leaves what that one queued to the worker.
The protocol work below them is :class:`sfu.transport.peer.PeerTransport` (ICE-lite,
DTLS-SRTP), :class:`sfu.forward.forwarder.Forwarder` (routing, rewriting, repair) and
:class:`sfu.feedback.speaker.SpeakerDetector`. Forwarding is no action: the
worker's datagram side (:mod:`sfu.node.hot_path`, which it stands on) demultiplexes
every datagram and sends each forwarded copy itself, synchronously; this
module is the control side: the MediaControl calls, the lifecycle, the timers
and the metrics.

One :class:`Forwarder` per room, not per worker: a room's NACK and keyframe
timers then walk only its own tracks, its counters are the room's metrics for
free, and SSRCs only need to be unique within a room (two rooms may carry a
publisher that picked the same random SSRC). The hot path pays nothing for
it: each peer record holds its room's forwarder.

Timers: every core says when it next wants to run (``get_timer``); the worker
keeps one ``loop.call_at`` handle armed at the earliest of them and moves it
only when something earlier appears (the forwarder may ask for a NACK 10 ms
after a gap, checked after each routed packet with one comparison).

RTCP reports and bandwidth feedback (:mod:`sfu.feedback.reports`, :mod:`sfu.feedback.bandwidth`)
are one :class:`~sfu.feedback.reports.ReportScheduler` and one
:class:`~sfu.feedback.bandwidth.BandwidthFeedback` per worker, not per room, as their
cores are written: each publisher's tracks have a
:class:`~sfu.feedback.reports.ReceiveStatistics` fed on the hot path, each subscription
a :class:`~sfu.feedback.reports.SendStatistics`, each publisher transport a
transport-cc recorder or a REMB estimator. Per worker, the feedback timer ticks
ten times a second however many rooms there are, and the reports of many legs
fall due together (they are run up to ``_REPORT_SLACK`` late, which the
interval's own randomisation over [0.5, 1.5] dwarfs). These periodic wake-ups
have a timer handle of their own: on the main one each would walk every room
and transport to re-arm, which at a few hundred transports cost more than the
reports themselves. Every room's forwarder uses the worker's feedback SSRC, so
a publisher sees its receiver reports, NACKs, PLIs and bandwidth feedback come
from one SSRC.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

from rtc.dtls import DtlsCertificate
from rtc.ice import CONNECT_TIMEOUT, CONSENT_TIMEOUT, Address
from rtc.machine import earliest
from sfu.control.messages import (
    MediaEvent,
    PublishResult,
    RecordingOrder,
    RelayedTrack,
    RelayPeer,
    Restart,
    Source,
    TrackDisplay,
)
from sfu.feedback.bandwidth import BandwidthFeedback
from sfu.feedback.reports import ReportScheduler
from sfu.forward import native
from sfu.forward.forwarder import Forwarder
from sfu.layers.choice import Layers
from sfu.negotiation.negotiator import Negotiator
from sfu.negotiation.transports import Transports
from sfu.node import metrics
from sfu.node.hot_path import HotPath
from sfu.node.links import Links
from sfu.recording.aio import RecordingWriter, recording_options
from sfu.rooms import inputs
from sfu.rooms.actions import (
    Action,
    Arm,
    ArmRtcp,
    Emit,
    FlushRtcp,
    Rearm,
    SendDatagram,
    SendRtcp,
    carried_out,
)
from sfu.rooms.records import Link, Peer, WorkerTables
from sfu.rooms.settings import WorkerSettings
from sfu.rooms.snapshot import worker_snapshot

__all__ = ["MediaWorker"]


if TYPE_CHECKING:
    from wadud.config import Settings

log = logging.getLogger("wadud.sfu.worker")

R = TypeVar("R")

_SOCKET_BUFFER = 4 * 1024 * 1024
_BUFFERS = (socket.SO_RCVBUF, socket.SO_SNDBUF)
# How late the report timer may run, so the reports of legs due close together
# go out in one wake-up (see the module docstring).
_REPORT_SLACK = 0.05
# A compound per SR (or RR), each with an SDES of one chunk. aiortc (our
# Python client) misreads an SDES of several chunks: it takes a chunk's end
# to be the null item type and one length octet, not the null octets up to
# the next 32-bit boundary (RFC 3550 6.5), so unless each CNAME's length is a
# multiple of 4 it loses the whole compound, SRs and BYE included. A few more,
# smaller packets per leg and second is all this costs.
_ONE_REPORT_PER_COMPOUND = 0

# --- the worker -------------------------------------------------------------------------


class MediaWorker(HotPath):
    """An SFU worker on one UDP port (RFC 8445 2.5 ICE-lite, RFC 5764 DTLS-SRTP, RFC 3550 7.1).

    ``host``/``port``: what the socket binds (port 0: any free port).
    ``announced_addresses``: the IPs put in host candidates when peers reach
    the worker at another address (NAT, cloud); default the bound host.
    ``consent_timeout``: seconds without ICE consent checks (RFC 7675) before
    a transport fails. ``forwarder_options`` go to each room's
    :class:`~sfu.forward.forwarder.Forwarder`. ``remb_max_bitrate`` (bits/s) caps the
    REMB estimate sent to publishers without transport-cc
    (draft-alvestrand-rmcat-remb-03). ``worker_id`` names the worker to
    other workers' relay links (its registry id; random by default);
    ``link_options`` go to each :class:`~sfu.transport.relay.RelayLink`, ``recording`` to its
    recorder.
    ``simulcast``: accept publishers' RFC 8853 simulcast and pick a layer
    per subscriber (:mod:`sfu.layers.choice`). ``red``: accept publishers' Opus RED
    (RFC 2198) and offer it to subscribers (those that refuse it get plain
    Opus, :mod:`sfu.forward.forwarder`); off, audio is negotiated as plain Opus.
    """

    def __init__(
        self,
        *,
        worker_id: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        announced_addresses: Sequence[str] = (),
        consent_timeout: float = CONSENT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        certificate: DtlsCertificate | None = None,
        forwarder_options: Mapping[str, Any] | None = None,
        remb_max_bitrate: int = 2_500_000,
        link_options: Mapping[str, Any] | None = None,
        simulcast: bool = True,
        red: bool = True,
        recording: Mapping[str, Any] | None = None,
    ) -> None:
        settings = self.settings = WorkerSettings(
            worker_id=worker_id or f"worker-{secrets.token_hex(4)}",
            certificate=certificate
            or DtlsCertificate.generate(datetime.datetime.now(datetime.UTC)),
            feedback_ssrc=secrets.randbits(32) or 1,
            host=host,
            port=port,
            announced_addresses=announced_addresses,
            consent_timeout=consent_timeout,
            connect_timeout=connect_timeout,
            forwarder_options=forwarder_options or {},
            remb_max_bitrate=remb_max_bitrate,
            link_options=link_options or {},
            simulcast=simulcast,
            red=red,
        )
        """What the worker was made with, handed as it is to the cores that need it."""
        self.port = port
        """The socket's port: ``settings.port`` until :meth:`start` binds it (a free one for 0)."""
        tables = self.tables = WorkerTables(
            ReportScheduler(
                ssrc=settings.feedback_ssrc,
                cname="wadud",
                wall_offset=0.0,
                max_size=_ONE_REPORT_PER_COMPOUND,
            ),
            BandwidthFeedback(),
        )
        """The rooms, transports and routing tables every part of the worker
        shares; the reports' ``wall_offset`` is set by :meth:`start`."""
        self.layers = Layers(tables)
        """Simulcast layers, estimates, dynacast and quality of subscribers
        (:mod:`sfu.layers.choice`).
        """
        self.transports = Transports(
            settings, tables, self.layers, lambda: self.candidate_addresses
        )
        """Rooms and transports (:mod:`sfu.negotiation.transports`)."""
        self.negotiator = Negotiator(settings, self.transports)
        """Offer/answer (:mod:`sfu.negotiation.negotiator`), over the transports."""
        self.links = Links(settings, tables, self.transports)
        """Relay links to other workers (:mod:`sfu.node.links`), over the transports."""
        self._cores: tuple[inputs.Core, ...] = (
            self.negotiator,
            self.links,
            self.transports,
            self.layers,
        )
        """Every core, the callers before the cores they call: the order their
        actions are carried out in after an input (:mod:`sfu.rooms.actions`)."""
        super().__init__(tables.by_addr, self.links.by_addr)
        self._listeners: list[Callable[[MediaEvent], None]] = []
        self.recordings = RecordingWriter(tables, self._emit, **(recording or {}))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._when: float | None = None
        self._rtcp_timer: asyncio.TimerHandle | None = None
        self._rtcp_when: float | None = None
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------

    @classmethod
    def from_settings(
        cls, settings: Settings, port: int, worker_id: str | None = None
    ) -> MediaWorker:
        """A worker on ``port`` as the media_* settings describe it (the
        in-process worker of ``wadud serve`` and each of ``wadud media``'s)."""
        return cls(
            worker_id=worker_id,
            host=settings.media_host,
            port=port,
            announced_addresses=settings.media_announced_addresses,
            consent_timeout=settings.media_consent_timeout,
            remb_max_bitrate=settings.media_remb_max_bitrate,
            simulcast=settings.media_simulcast,
            red=settings.media_red,
            recording=recording_options(settings),
        )

    async def start(self) -> None:
        """Bind the socket; raises OSError (EADDRINUSE) if the port is taken."""
        loop = self._loop = asyncio.get_running_loop()
        self._time = loop.time
        # NTP timestamps in reports are wall-clock time; everything else runs on the loop's clock.
        self.tables.reports.wall_offset = time.time() - loop.time()
        host = self.settings.host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            for option in _BUFFERS:
                # Video bursts (a keyframe is dozens of packets times the fan-out).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)
            sock.bind((host, self.port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._v6 = family == socket.AF_INET6
        transport, _ = await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._transport = transport
        self.port = sock.getsockname()[1]
        self._fanout = self._fan = native.fanout(sock)
        metrics.register_worker(self)
        # What the kernel granted (Linux reports twice the usable size): at
        # most net.core.rmem_max and wmem_max, which docs/operations.md says
        # to raise when these read below _SOCKET_BUFFER.
        receive, send = (sock.getsockopt(socket.SOL_SOCKET, o) // 2 for o in _BUFFERS)
        log.info(
            "media worker listening on %s:%d (arrival times: %s; socket buffers"
            " %d KB in, %d KB out of %d KB asked)",
            host,
            self.port,
            "kernel" if self.kernel_stamps else "when read",
            receive >> 10,
            send >> 10,
            _SOCKET_BUFFER >> 10,
            extra={
                "host": host,
                "port": self.port,
                "candidates": self.candidate_addresses,
                "kernel_stamps": self.kernel_stamps,
                "receive_buffer": receive,
                "send_buffer": send,
            },
        )

    async def close(self) -> None:
        """Close every transport (DTLS close_notify), cancel the timer, close the socket."""
        if self._closed:
            return
        self._closed = True
        await self.recordings.close()
        for name in list(self.tables.rooms):
            self._close_room(name, "worker closed")
        self._receive(self.links, inputs.CloseLinks("worker closed"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
            self._rtcp_timer = None
        if self._transport is not None:
            self._transport.close()
        self._unplugged()
        log.info("media worker stopped", extra={"port": self.port})

    async def __aenter__(self) -> MediaWorker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def address(self) -> Address:
        """The bound (host, port)."""
        return (self.settings.host, self.port)

    @property
    def candidate_addresses(self) -> list[Address]:
        """(address, port) of each host candidate (RFC 8445 section 5.1.1.1)."""
        hosts = list(self.settings.announced_addresses) or [self.settings.host]
        if hosts == ["0.0.0.0"] or hosts == ["::"]:
            # A wildcard is no candidate; without announced addresses only
            # this machine can reach the worker anyway.
            hosts = ["127.0.0.1"]
        return [(h, self.port) for h in hosts]

    def room_forwarder(self, room: str) -> Forwarder | None:
        """The forwarder of a live room (for tests and tools)."""
        r = self.tables.rooms.get(room)
        return None if r is None else r.forwarder

    def rooms(self) -> list[str]:
        return list(self.tables.rooms)

    # -- sfu.control.messages.MediaControl: each call is one input to a core
    # -------------------------

    def add_listener(self, listener: Callable[[MediaEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: MediaEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("media event listener failed", extra={"event": repr(event)})

    def _receive(self, core: inputs.Core, input: inputs.Input[R], now: float | None = None) -> R:
        """Hand ``input`` to ``core`` (:meth:`sfu.rooms.inputs.Core.receive`) at ``now``
        (the clock's, unless given), then carry out what it and the cores it
        called queued, even if it raised: each core's own, the callers' first."""
        at = self._now() if now is None else now
        try:
            with carried_out(self._cores, self._act):
                return core.receive(input, at)
        finally:
            if self.recordings.waiting:
                # A recording asked for before anyone published starts with
                # the room this input made.
                self.recordings.start_waiting(at)

    async def publish(
        self,
        room: str,
        participant: str,
        offer: str,
        sources: Mapping[str, Source],
        receive: Sequence[str] | None = None,
    ) -> PublishResult:
        """Answer a publish offer (RFC 8829 5.3): :class:`sfu.rooms.inputs.PublishOffer`."""
        wanted = None if receive is None else tuple(receive)
        return self._receive(
            self.negotiator, inputs.PublishOffer(room, participant, offer, sources, wanted)
        )

    async def subscribe(
        self,
        room: str,
        participant: str,
        track_ids: Sequence[str],
        restart: Restart | None = None,
    ) -> str | None:
        """Offer ``track_ids`` to ``participant`` (RFC 8829 5.2):
        :class:`sfu.rooms.inputs.SetSubscriptions`.
        """
        return self._receive(
            self.negotiator, inputs.SetSubscriptions(room, participant, track_ids, restart)
        )

    async def answer(self, room: str, participant: str, sdp: str) -> None:
        """Take a subscriber's answer (RFC 3264 section 6):
        :class:`sfu.rooms.inputs.SubscribeAnswer`."""
        self._receive(self.negotiator, inputs.SubscribeAnswer(room, participant, sdp))

    async def set_muted(self, room: str, track_id: str, muted: bool) -> None:
        """Stop or resume forwarding a track: :class:`sfu.rooms.inputs.SetMuted`."""
        self._receive(self.negotiator, inputs.SetMuted(room, track_id, muted))

    async def unpublish(self, room: str, participant: str, track_id: str) -> None:
        """Forget a track and every subscription to it: :class:`sfu.rooms.inputs.EndTrack`."""
        self._receive(self.negotiator, inputs.EndTrack(room, participant, track_id))

    async def record(self, room: str, order: RecordingOrder | None) -> None:
        """Record ``room``'s tracks, or stop (None): :meth:`RecordingWriter.record`."""
        self.recordings.record(room, order, self._now())

    async def leave(self, room: str, participant: str) -> None:
        """Close the participant's transports, forget its tracks (idempotent)."""
        self._receive(self.transports, inputs.LeaveRoom(room, participant))

    async def close_room(self, room: str) -> None:
        """Everyone leaves and the room is forgotten (idempotent)."""
        self._close_room(room, "room closed")

    def _close_room(self, name: str, reason: str) -> None:
        if name in self.recordings.waiting:
            self.recordings.record(name, None, self._now())  # it never had media
        room = self.tables.rooms.get(name)
        close = inputs.CloseRoom(name, reason)
        self._receive(self.transports, close)
        if room is not None:
            self._receive(self.links, close)

    def link_of(self, peer_worker: str) -> Link | None:
        """The live link to a peer worker (for tests and tools)."""
        return self.links.link_of(peer_worker)

    def relay_identity(self) -> tuple[str, str]:
        """This worker's id and DTLS fingerprint, ``"sha-256 AB:CD:..."`` (RFC 8122 section 5)."""
        return self.links.relay_identity()

    async def relay_send(
        self, room: str, peer: RelayPeer, track_ids: Sequence[str]
    ) -> list[RelayedTrack]:
        """Send ``track_ids`` of ``room`` to ``peer``: :class:`sfu.rooms.inputs.RelaySend`."""
        return self._receive(self.links, inputs.RelaySend(room, peer, track_ids))

    async def relay_receive(
        self, room: str, peer: RelayPeer, tracks: Sequence[RelayedTrack]
    ) -> None:
        """Receive ``tracks`` of ``room`` from ``peer``: :class:`sfu.rooms.inputs.RelayReceive`."""
        self._receive(self.links, inputs.RelayReceive(room, peer, tracks))

    async def set_view(
        self, room: str, participant: str, track_id: str, view: TrackDisplay
    ) -> None:
        """How ``participant`` shows ``track_id``: :class:`sfu.rooms.inputs.SetView`."""
        self._receive(self.layers, inputs.SetView(room, participant, track_id, view))

    async def set_audio_only(self, room: str, participant: str, enabled: bool) -> None:
        """``participant`` receives no video while ``enabled``:
        :class:`sfu.rooms.inputs.SetAudioOnly`.
        """
        self._receive(self.layers, inputs.SetAudioOnly(room, participant, enabled))

    # -- timers and output ------------------------------------------------------------------

    def _act(self, actions: list[Action]) -> None:
        """Carry out what a core queued (:mod:`sfu.rooms.actions`), in its order."""
        for action in actions:
            match action:
                case SendDatagram(data, addr):
                    self._send(data, addr)
                case SendRtcp(peer, compound):
                    self._send_rtcp(peer, compound)
                case FlushRtcp(room):
                    self._flush_rtcp(room)
                case Emit(event):
                    self._emit(event)
                case Arm(when):
                    self._soon(when)
                case ArmRtcp():
                    self._soon_rtcp()
                case Rearm():
                    self._rearm()

    def _arm(self, when: float) -> None:
        if self._closed or self._loop is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _soon(self, when: float | None) -> None:
        """Make sure the timer fires by ``when``: O(1) for the datagram paths.

        A deadline that moved later (a consent check refreshed a transport)
        leaves the timer early; it then finds nothing due and re-arms with
        :meth:`_rearm`, which looks at every core.
        """
        if when is not None and (self._when is None or when < self._when):
            self._arm(when)

    def _rearm(self) -> None:
        rooms = self.tables.rooms.values()
        when = earliest(
            [self.transports.due(), self.links.due()]
            + [room.forwarder.get_timer() for room in rooms]
            + [room.speaker.get_timer() for room in rooms]
        )
        if when == self._when:
            return
        if when is None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._when = None
            return
        self._arm(when)

    def _on_timer(self) -> None:
        due = self._when
        self._timer = self._when = None
        # The loop's clock has millisecond steps: never hand a core a `now`
        # before the deadline it asked for, or it would ask again at once.
        now = self._now() if due is None else max(self._now(), due)
        for room in list(self.tables.rooms.values()):
            forwarder = room.forwarder
            when = forwarder.get_timer()
            if when is not None and when <= now:
                forwarder.handle_timer(now)
            when = room.speaker.get_timer()
            if when is not None and when <= now:
                change = room.speaker.handle_timer(now)
                if change is not None:
                    speaker = cast(str | None, change.speaker)
                    self._receive(self.transports, inputs.SpeakerChosen(room, speaker), now)
            self._flush_rtcp(room)
        with carried_out(self._cores, self._act):
            self.transports.handle_timer(now)
        with carried_out(self._cores, self._act):
            self.links.handle_timer(now)
        self._rearm()

    # -- the periodic RTCP timer: reports and bandwidth feedback ---------------------------

    def _rtcp_due(self) -> float | None:
        reports = self.tables.reports.get_timer()
        return earliest(
            (
                self.tables.bandwidth.get_timer(),
                self.layers.due(),
                None if reports is None else reports + _REPORT_SLACK,
            )
        )

    def _soon_rtcp(self) -> None:
        """Make sure the RTCP timer fires by the reports' or the feedback's next deadline."""
        when = self._rtcp_due()
        if when is None or self._closed or self._loop is None:
            return
        if self._rtcp_when is not None and self._rtcp_when <= when:
            return
        if self._rtcp_timer is not None:
            self._rtcp_timer.cancel()
        self._rtcp_when = when
        self._rtcp_timer = self._loop.call_at(when, self._on_rtcp_timer)

    def _on_rtcp_timer(self) -> None:
        due = self._rtcp_when
        self._rtcp_timer = self._rtcp_when = None
        now = self._now() if due is None else max(self._now(), due)
        # A failing round (a bug) is counted and logged; the timer goes on.
        try:
            when = self.tables.reports.get_timer()
            if when is not None and when <= now:
                for key, compound in self.tables.reports.handle_timer(now):
                    self._send_rtcp(cast(Peer, key), compound)
            when = self.tables.bandwidth.get_timer()
            if when is not None and when <= now:
                self._send_feedback(self.tables.bandwidth.handle_timer(now))
            when = self.layers.due()
            if when is not None and when <= now:
                self.layers.tick(now)
                self._act(self.layers.take_actions())
        except Exception:
            self.tables.timer_failures += 1
            log.exception(
                "media worker RTCP round failed", extra={"worker": self.settings.worker_id}
            )
        finally:
            self._soon_rtcp()

    # -- metrics -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters and gauges for :mod:`sfu.node.metrics`, read at scrape time."""
        native_counters = self._fanout.counters() if self._fanout is not None else None
        estimates = {peer: s.estimate() for peer, s in self.layers.subscribers.by_peer.items()}
        snapshot = worker_snapshot(
            self.tables, self.links.snapshot(), native_counters, self.port, estimates
        )
        return {**snapshot, "recordings": self.recordings.counts()}
