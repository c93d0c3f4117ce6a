"""A room this replica runs: its sans-I/O core (:mod:`signalling.room.core`)
with what lives beside it, the media lane, each participant's subscribe
negotiation and where the room's media runs (:mod:`signalling.media.sites`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

from rtc.errors import SdpError
from rtc.sdp.session import SessionDescription
from sfu.control.messages import ConnectionQuality, MediaControl, Restart, TrackInfo
from sfu.control.rpc import WorkerUnreachable
from sfu.errors import SfuStateError
from signalling import errors, protocol
from signalling.media.lane import MediaLane
from signalling.media.sites import Site
from signalling.room.core import Room
from signalling.room.members import MemberState

log = logging.getLogger("wadud.signalling")
T = TypeVar("T")

#: A subscribe negotiation that finds no media worker is tried again this
#: many times, after 1, 2, 4, ... seconds.
UNAVAILABLE_RETRIES = 4
UNAVAILABLE_BACKOFF = 1.0
#: After a site moved, subscribe offers wait this long at most for the moved
#: publishers to publish again (see :meth:`CallRoom.regather`).
REGATHER_WITHIN = 1.0

__all__ = ["CallRoom", "FrameSink", "SubscribeNegotiation", "offer_tracks"]


@runtime_checkable
class FrameSink(Protocol):
    """A participant's connection as a room sends to it, whichever replica
    holds its socket (:mod:`signalling.cluster.connections`)."""

    def send(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class SubscribeNegotiation:
    """One participant's subscribe negotiation (docs/protocol.md "Media"):
    at most one offer outstanding; changes while it is out are folded into
    the next offer, made once the answer is in.

    On a single connection the client offers and the worker answers, so
    here a change of what the participant should receive is a
    ``renegotiate`` frame asking it for another offer, with as many more
    ``recvonly`` sections of each kind as the tracks that do not fit in the
    empty ones (:meth:`published` learns which sections carry what)."""

    def __init__(self, room: CallRoom, participant_id: str) -> None:
        self.room = room
        self.pid = participant_id
        #: The offer frame awaiting an answer (sent again on a resume).
        self.offer: dict[str, Any] | None = None
        self.dirty = False
        self.closed = False
        #: The track ids the worker was last asked to send.
        self.asked: tuple[str, ...] = ()
        #: Ask the worker even if the set did not change (after a failure).
        self.force = False
        #: How the next offer renews the transport: new ICE credentials, or a
        #: new transport (sfu.control.messages.MediaControl.subscribe).
        self.renew: Restart | None = None
        #: Negotiations in a row that found no media worker.
        self.unavailable = 0
        #: A single connection's sections that carry a track (mid -> track
        #: id) and its empty receiving sections by kind, as last answered.
        self.receiving: dict[str, str] = {}
        self.free: dict[str, int] = {}
        #: Whether the single connection's first offer came (it asks for
        #: the room's tracks itself; a renegotiate before it would double them).
        self.offered = False
        #: What the last ``renegotiate`` was sent for: (wanted, received).
        self._asked_for: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._task: asyncio.Task[None] | None = None

    def kick(self) -> None:
        self.dirty = True
        if self._task is None and self.offer is None and not self.closed:
            self._task = asyncio.create_task(self._run(), name=f"subscribe-{self.pid}")

    def close(self) -> None:
        self.closed = True

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def restart(self, how: Restart | None = None) -> None:
        """Offer again even if the set of tracks did not change.

        ``None``: the worker's subscribe transport failed (ICE, DTLS or
        consent) and the worker starts a new one on the next subscribe.
        ``"transport"``: the client asks for a new one. Both forget the offer
        that was waiting: the client gets an offer for a fresh connection.
        ``"ice"``: the client restarts ICE; the next offer (after the one
        outstanding, if any, is answered) has new ICE credentials.
        """
        if self.single:
            # The client renews its own connection with its next offer.
            if how != "ice":
                self.receiving, self.free, self.asked = {}, {}, ()
            return
        if how != "ice":
            self.offer = None
        if how == "transport" or self.renew is None:
            self.renew = how
        self.force = True
        self.kick()

    async def _run(self) -> None:
        retries = 0
        try:
            while self.dirty and self.offer is None and not self.closed:
                if self.room.regathering:
                    # The end of the regathering kicks every subscriber.
                    break
                self.dirty = False
                wanted = self.room.core.media.wanted(self.pid)
                ids = tuple(t.track_id for t in wanted)
                if self.single:
                    self._renegotiate(wanted, ids)
                    continue
                if ids == self.asked and not self.force:
                    continue
                renew = self.renew
                try:
                    media = await self.room.media_for(self.pid)
                    sdp = await self.room.media_call(
                        partial(self.room.subscribe, media, self.pid, ids, renew)
                    )
                except SfuStateError as exc:
                    # A track went between reading the room and the worker's
                    # turn: read the room again (bounded; the next change kicks).
                    log.debug("subscribe %s: %s", self.pid, exc)
                    retries += 1
                    self.dirty = retries < 3
                    continue
                except SdpError as exc:
                    log.warning("subscribe offer for %s failed: %s", self.pid, exc)
                    continue
                self.asked, self.force, self.unavailable = ids, False, 0
                if self.renew == renew:
                    self.renew = None
                if sdp is None or self.closed:
                    continue
                self.offer = protocol.reply("offer", sdp=sdp, tracks=offer_tracks(sdp, wanted))
                self.room.send_to(self.pid, self.offer)
                # A replica that takes the room over sends it again on a resume.
                self.room.changed()
        except (errors.MediaUnavailable, WorkerUnreachable) as exc:
            # The room's worker is gone (its site moves and renegotiates
            # everyone) or did not listen for a while (Redis failed over):
            # ask again later, a few times, rather than leave this
            # participant without the tracks it wants.
            self.unavailable += 1
            retry = self.unavailable <= UNAVAILABLE_RETRIES
            log.warning(
                "no media worker: cannot offer tracks to %s (%s)%s",
                self.pid,
                exc,
                "; trying again" if retry else "",
            )
            if retry:
                self.force = True
                delay = UNAVAILABLE_BACKOFF * 2 ** (self.unavailable - 1)
                asyncio.get_running_loop().call_later(delay, self.kick)
        except Exception:
            log.exception("subscribe negotiation for %s failed", self.pid)
        finally:
            self._task = None

    @property
    def single(self) -> bool:
        """Whether the participant publishes and receives on one connection."""
        who = self.room.core.members.get(self.pid)
        return who is not None and who.single

    def _renegotiate(self, wanted: list[TrackInfo], ids: tuple[str, ...]) -> None:
        """Ask for an offer when what the last answer sends is not what the
        participant should receive (once per such difference: a track no
        section could take is not asked for again until something changes)."""
        if not self.offered:
            return
        have = set(self.receiving.values())
        need = {"audio": 0, "video": 0}
        for t in wanted:
            if t.track_id not in have:
                need[t.kind] = need.get(t.kind, 0) + 1
        if not need["audio"] and not need["video"] and set(ids) == have:
            return
        key = (ids, tuple(sorted(have)))
        if key == self._asked_for and not self.force:
            return
        self._asked_for, self.asked, self.force = key, ids, False
        audio, video = (max(0, need[k] - self.free.get(k, 0)) for k in ("audio", "video"))
        self.room.send_to(self.pid, protocol.reply("renegotiate", audio=audio, video=video))

    def wants(self) -> tuple[str, ...]:
        """The track ids a single connection's next answer sends, noted as asked."""
        self.asked = tuple(t.track_id for t in self.room.core.media.wanted(self.pid))
        self.force = False
        return self.asked

    def published(self, receiving: dict[str, str], free: dict[str, int]) -> None:
        """A single connection's offer was answered: what it receives now."""
        self.receiving, self.free, self.offered = dict(receiving), dict(free), True
        # A replica that takes the room over goes on from here.
        self.room.changed()
        # What changed while the worker answered asks for the next offer.
        self.kick()

    async def answer(self, sdp: str) -> None:
        if self.offer is None:
            raise errors.BadState("no offer is waiting for an answer")
        media = await self.room.media_for(self.pid)
        await self.room.media_call(partial(media.answer, self.room.name, self.pid, sdp))
        self.offer = None
        # Or that replica would send the answered offer again on a resume.
        self.room.changed()
        if self.dirty:
            self.kick()


def offer_tracks(sdp: str, wanted: Iterable[TrackInfo]) -> list[dict[str, Any]]:
    """What each live m= section of a subscribe offer carries: the section's
    ``a=msid`` track id (RFC 8830 section 2) is one of ours."""
    by_id = {t.track_id: t for t in wanted}
    out: list[dict[str, Any]] = []
    try:
        desc = SessionDescription.parse(sdp)
    except SdpError:
        log.error("the worker's own offer does not parse")
        return out
    for media in desc.media:
        if media.port == 0 or media.mid is None:
            continue
        for msid in media.msids:
            t = by_id.get(msid.track_id or "") or by_id.get(msid.stream_id)
            if t is not None:
                out.append(
                    {
                        "mid": media.mid,
                        "track_id": t.track_id,
                        "participant": t.participant,
                        "kind": t.kind,
                        "source": t.source,
                    }
                )
                break
    return out


class CallRoom:
    """A live room: its sans-I/O core, timer, subscribers and media lane."""

    def __init__(
        self,
        core: Room,
        lane: MediaLane,
        region: str,
        *,
        changed: Callable[[CallRoom], None],
        media_for: Callable[[CallRoom, str], Awaitable[MediaControl]],
        subscribe: Callable[
            [CallRoom, MediaControl, str, tuple[str, ...], Restart | None], Awaitable[str | None]
        ],
    ) -> None:
        self.core = core
        self.name = core.name
        self.lane = lane
        self.subscribers: dict[str, SubscribeNegotiation] = {}
        self.timer: asyncio.TimerHandle | None = None
        #: The room's home region (its first participant's).
        self.region = region
        #: Each participant's region, fixed at their first join (cluster mode).
        self.regions: dict[str, str] = {}
        #: The room's worker per region, and their relays (signalling.media.sites).
        self.sites: dict[str, Site] = {}
        #: Each participant's last connection quality (sent to newcomers).
        self.quality: dict[str, ConnectionQuality] = {}
        #: Participants whose media is reconnecting (docs/protocol.md, ``participant_media``).
        self.reconnecting: set[str] = set()
        #: Publishers of a moved site not published again yet (:meth:`regather`).
        self._regathering: set[str] = set()
        self._regather_timer: asyncio.TimerHandle | None = None
        self._changed = changed
        self._media_for = media_for
        self._subscribe = subscribe

    def changed(self) -> None:
        """Something a snapshot of the room holds changed outside the core."""
        self._changed(self)

    def regather(self, publishers: Iterable[str]) -> None:
        """A site moved and ``publishers`` will publish again on the new
        worker: hold every subscribe offer until they all have (or left),
        or for :data:`REGATHER_WITHIN` at most. Each offer is a whole
        renegotiation for a page (setRemoteDescription, createAnswer,
        setLocalDescription, new receivers), seconds of a busy machine's
        CPU; offered as each publisher came back, a page took one of those
        per publisher, one after the other, before it saw everyone again."""
        self._regathering = set(publishers)
        if self._regather_timer is not None:
            self._regather_timer.cancel()
            self._regather_timer = None
        if self._regathering:
            loop = asyncio.get_running_loop()
            self._regather_timer = loop.call_later(REGATHER_WITHIN, self._regathered)

    def republished(self, participant_id: str) -> None:
        """``participant_id`` published again after a move, or left."""
        if participant_id in self._regathering:
            self._regathering.discard(participant_id)
            if not self._regathering:
                self._regathered()

    @property
    def regathering(self) -> bool:
        """Whether subscribe offers wait for a moved site's publishers."""
        return bool(self._regathering)

    def _regathered(self) -> None:
        self._regathering.clear()
        if self._regather_timer is not None:
            self._regather_timer.cancel()
            self._regather_timer = None
        for sub in self.subscribers.values():
            sub.kick()

    async def media_for(self, participant_id: str) -> MediaControl:
        """The worker a participant's transports are on (placed on first use)."""
        return await self._media_for(self, participant_id)

    async def subscribe(
        self,
        media: MediaControl,
        participant_id: str,
        track_ids: tuple[str, ...],
        restart: Restart | None,
    ) -> str | None:
        """Ask ``media`` for the subscribe offer that sends ``track_ids``."""
        return await self._subscribe(self, media, participant_id, track_ids, restart)

    def media_call(self, call: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
        return self.lane.submit(call)

    async def track_call(
        self, participant_id: str, call: Callable[[MediaControl], Awaitable[object]]
    ) -> None:
        """``call`` on the worker of ``participant_id``, in the room's lane,
        about one of their tracks: one the worker does not know is
        :class:`errors.UnknownTarget`."""
        try:
            media = await self.media_for(participant_id)
            await self.media_call(partial(call, media))
        except SfuStateError as exc:
            raise errors.UnknownTarget(str(exc) or "no such track") from exc

    def send_to(self, participant_id: str, frame: dict[str, Any]) -> None:
        who = self.core.members.get(participant_id)
        if who is not None and isinstance(who.conn, FrameSink) and who.state is MemberState.JOINED:
            who.conn.send(frame)

    def media_state(self, participant_id: str, state: Literal["reconnecting", "connected"]) -> None:
        """Tell everyone else that a participant's media is reconnecting, or
        back; "connected" is sent only after a "reconnecting"."""
        if state == "reconnecting":
            self.reconnecting.add(participant_id)
        elif participant_id in self.reconnecting:
            self.reconnecting.discard(participant_id)
        else:
            return
        frame = protocol.ParticipantMedia(participant_id=participant_id, state=state).frame()
        for other in self.core.members.present():
            if other.id != participant_id:
                self.send_to(other.id, frame)

    def subscriber(self, participant_id: str) -> SubscribeNegotiation:
        sub = self.subscribers.get(participant_id)
        if sub is None:
            sub = self.subscribers[participant_id] = SubscribeNegotiation(self, participant_id)
        return sub
