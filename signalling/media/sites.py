"""A call room across media workers: one site per region, relays between them.

With ``wadud api`` replicas and ``wadud media`` nodes, each participant sends
and receives media through a worker of their own region (the join token's
``region`` claim, else the region of the API replica they reached). All of a
room's participants from one region share that region's worker, the room's
*site* there (:mod:`signalling.media.placement` chooses it; a region with no live
worker falls back to the nearest one that has). A room with participants in
two regions has two sites.

A participant receives tracks published on other sites through relay links
between workers (:meth:`sfu.control.messages.MediaControl.relay_send` and
``relay_receive``). Each track crosses to another site once, however many
subscribers it has there: the set a site receives from another is the union
of what its participants want from that one (:func:`plan`). The owner of the
room (:mod:`signalling.cluster.link`) keeps the sets: before a participant's
subscribe offer it brings the relays into line (:meth:`Sites.sync_relays`),
and after a track or participant goes. Both calls are idempotent set
assignments, so a new owner that took the room over from a snapshot simply
sets them all again.

When a site's worker dies or drains, only that site moves
(:meth:`Sites.move`): its participants are told ``media_reconnect``; the
other sites keep their media flowing, drop the relays to the lost worker and
get new ones to its replacement as subscriptions come back.

Only one site's ``active_speaker`` events count: every site that receives
the room's audio computes the same speaker, so the room takes the home
site's (the first participant's region), or any site's when it has none.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Generic, Protocol, TypeVar

from prometheus_client import Counter

from sfu.control import registry
from sfu.control.messages import MediaControl, RelayedTrack, RelayPeer, Restart
from sfu.control.rpc import MediaClient
from signalling import errors
from signalling.media.lane import MediaLane
from signalling.media.placement import Placed, Placement
from signalling.room.core import Room

log = logging.getLogger("wadud.signalling.sites")

__all__ = ["Site", "SitedRoom", "Sites", "plan"]

MEDIA_MOVES = Counter(
    "wadud_call_media_moves",
    "Call room sites placed on another media worker because theirs died or drained, by reason.",
    ["reason"],
)
RELAY_CHANGES = Counter(
    "wadud_call_relay_changes_total",
    "Changes to the set of tracks one site of a call room relays to another.",
)

#: Seconds after Redis came back from an outage that a worker heartbeating
#: on it, but not yet listening, is kept: its subscription follows within the
#: bus's reconnect backoff (2 s at most), seconds more on a starved machine.
RESUBSCRIBE_WITHIN = 20.0
#: Seconds two machines' clocks may disagree when a worker's heartbeat time
#: (its clock) is compared with when Redis came back (ours).
CLOCK_SKEW = 0.5

Pair = tuple[str, str]
"""(sending site's region, receiving site's region)."""


@dataclass
class Site:
    """A room's worker for the participants of one region."""

    region: str
    placed: Placed
    media: MediaControl
    #: The worker as a relay link names it (from its registry entry); None
    #: until read, or when the entry lacks a fingerprint (an older worker).
    peer: RelayPeer | None = None
    #: Relayed tracks this site was last told to receive, by sending region.
    receiving: dict[str, tuple[str, ...]] = field(default_factory=dict)


def plan(
    publisher_of: Mapping[str, str],
    wants: Mapping[str, Iterable[str]],
    region_of: Mapping[str, str],
) -> dict[Pair, tuple[str, ...]]:
    """The relays a room needs: for each (sending, receiving) pair of sites,
    the sorted track ids the receiving site's participants want from the
    sending site's publishers. ``publisher_of`` maps track ids to their
    participants, ``wants`` participants to the tracks they should receive,
    ``region_of`` participants to their site."""
    out: dict[Pair, set[str]] = {}
    for pid, tracks in wants.items():
        dst = region_of.get(pid)
        if dst is None:
            continue
        for track in tracks:
            publisher = publisher_of.get(track)
            src = region_of.get(publisher) if publisher is not None else None
            if src is not None and src != dst:
                out.setdefault((src, dst), set()).add(track)
    return {pair: tuple(sorted(ids)) for pair, ids in out.items()}


class SitedRoom(Protocol):
    """What :class:`Sites` reads of a live room (:class:`signalling.live.room.CallRoom`)."""

    @property
    def name(self) -> str: ...

    @property
    def core(self) -> Room: ...

    @property
    def lane(self) -> MediaLane: ...

    @property
    def region(self) -> str:
        """The room's home region (its first participant's)."""
        ...

    @property
    def regions(self) -> dict[str, str]:
        """Each participant's region, fixed at their first join."""
        ...

    @property
    def sites(self) -> dict[str, Site]:
        """The room's worker per region."""
        ...


R = TypeVar("R", bound=SitedRoom)


class Sites(Generic[R]):
    """Where the media of the rooms this replica owns runs: placing their
    sites, keeping the relays between them, moving a site whose worker died
    or drains. With no placement (``wadud serve``), every room is on the
    in-process worker, ``local``.

    ``rooms`` are the rooms this replica owns (a room not in it any more is
    left alone); ``changed`` is told when a room's sites change (its snapshot
    must be written); ``moved`` is told, after a site moved, which of the
    room's participants were on it and why, so it can tell them."""

    def __init__(
        self,
        local: Callable[[], MediaControl | None],
        *,
        placement: Placement | None,
        media_client: MediaClient | None,
        worker_ttl: float,
        rooms: Mapping[str, R],
        changed: Callable[[R], None],
        moved: Callable[[R, list[str], str], None],
    ) -> None:
        self.placement = placement
        self.media_client = media_client
        self._local = local
        self._worker_ttl = worker_ttl
        self._rooms = rooms
        self._changed = changed
        self._moved = moved
        #: Placements under way, by (room, region): done when they end.
        self._placing: dict[tuple[str, str], asyncio.Future[None]] = {}
        #: Placed workers seen alive but missing from the registry, since when.
        self.unregistered: dict[Placed, float] = {}
        #: Sites (room, region) that found no worker to move to: said once.
        self._stranded: set[tuple[str, str]] = set()
        #: Placed workers the last :meth:`went_silent` found nobody listening for.
        self._silent: set[Placed] = set()
        #: When Redis last came back from an outage (time.time()), see :meth:`redis_back`.
        self._back_at: float | None = None

    def region_of(self, room: R, pid: str) -> str:
        """The site a participant's media goes to (fixed when they first join)."""
        return room.regions.get(pid) or room.region

    def local(self) -> MediaControl:
        """The in-process worker (``wadud serve``)."""
        media = self._local()
        if media is None:
            raise errors.MediaUnavailable("no media worker is running")
        return media

    async def media_for(self, room: R, pid: str | None = None) -> MediaControl:
        """The worker a participant's transports are on: in-process, or the
        room's site in their region, placed over Redis on first use."""
        if self.placement is None or self.media_client is None:
            return self.local()
        region = self.region_of(room, pid) if pid is not None else room.region
        key = (room.name, region)
        site = room.sites.get(region)
        while site is None and key in self._placing:
            await asyncio.shield(self._placing[key])
            site = room.sites.get(region)
        if site is None:
            done = self._placing[key] = asyncio.get_running_loop().create_future()
            try:
                placed = await self.placement.place(room.name, region)
                if placed is None:
                    raise errors.MediaUnavailable("no media worker is live")
                if self._rooms.get(room.name) is room and region not in room.sites:
                    await self.point(room, region, placed)
            finally:
                if self._placing.get(key) is done:
                    del self._placing[key]
                done.set_result(None)
            site = room.sites.get(region)
        if site is None:
            raise errors.MediaUnavailable("the room has no media worker")
        return site.media

    async def placing(self, name: str, region: str) -> None:
        """Wait for the placement of room ``name`` in ``region`` if one is
        under way (however it ends)."""
        done = self._placing.get((name, region))
        if done is not None:
            await asyncio.shield(done)

    def media_now(self, room: R, pid: str | None = None) -> MediaControl | None:
        """The media control a participant's transports are on now (for
        background calls), if the room has one in their region."""
        if self.placement is None:
            return self._local()
        site = room.sites.get(self.region_of(room, pid)) if pid is not None else None
        return site.media if site is not None else None

    def controls(self, room: R) -> list[MediaControl]:
        """Every worker the room has media on."""
        if self.placement is not None:
            return [s.media for s in room.sites.values()]
        return [m for m in [self.media_now(room)] if m is not None]

    async def point(self, room: R, region: str, placed: Placed) -> None:
        """The room's site in ``region`` is on ``placed`` from now on."""
        assert self.media_client is not None
        old = room.sites.get(region)
        site = Site(region, placed, self.media_client.remote(placed.worker, placed.incarnation))
        room.sites[region] = site
        if old is not None:
            # Whatever went to or came from the old worker must be set up again.
            for other in room.sites.values():
                other.receiving.pop(region, None)
        self._changed(room)
        log.info(
            "call room site placed",
            extra={"room": room.name, "worker": placed.worker, "region": region},
        )
        await self._read_peer(site)

    async def _read_peer(self, site: Site) -> RelayPeer | None:
        """The site's worker as a relay peer, from its registry entry."""
        if site.peer is None and self.placement is not None:
            info = await registry.worker(self.placement.redis, site.placed.worker)
            if (
                info is not None
                and info.incarnation == site.placed.incarnation
                and info.fingerprint
            ):
                site.peer = RelayPeer(info.worker, info.host, info.port, info.fingerprint)
        return site.peer

    async def subscribe(
        self,
        room: R,
        media: MediaControl,
        pid: str,
        ids: tuple[str, ...],
        restart: Restart | None = None,
    ) -> str | None:
        """``subscribe`` after the relays it needs are set (in the room's lane)."""
        if room.sites:
            await self.sync_relays(room)
        if restart is None:
            return await media.subscribe(room.name, pid, ids)
        return await media.subscribe(room.name, pid, ids, restart)

    async def sync_relays(self, room: R) -> None:
        """Bring every site's relays in line with what its participants want
        (see the module docstring). Runs in the room's media lane. A pair whose
        worker does not answer is left for the next call; the error is logged."""
        if len(room.sites) < 2 and not any(s.receiving for s in room.sites.values()):
            return
        publisher_of, wants = _wants(room.core)
        # Two regions that fell back to one worker are one site to relay to.
        canon: dict[Placed, str] = {}
        for region in sorted(room.sites):
            canon.setdefault(room.sites[region].placed, region)
        site_of = {region: canon[site.placed] for region, site in room.sites.items()}
        regions = {pid: site_of.get(self.region_of(room, pid), "") for pid in wants}
        needed = plan(publisher_of, wants, {p: r for p, r in regions.items() if r})
        for dst in [room.sites[region] for region in canon.values()]:
            sources = {src for (src, d) in needed if d == dst.region} | set(dst.receiving)
            for src_region in sorted(sources):
                want = needed.get((src_region, dst.region), ())
                if dst.receiving.get(src_region) == want:
                    continue
                src = room.sites.get(src_region)
                if src is None or src.placed == dst.placed:
                    dst.receiving.pop(src_region, None)
                    continue
                try:
                    await self._relay(room, src, dst, want)
                except Exception as exc:
                    log.warning(
                        "relay not set: %s",
                        exc,
                        extra={"room": room.name, "from": src_region, "to": dst.region},
                    )

    async def _relay(self, room: R, src: Site, dst: Site, want: tuple[str, ...]) -> None:
        src_peer = await self._read_peer(src)
        dst_peer = await self._read_peer(dst)
        if src_peer is None or dst_peer is None:
            raise errors.MediaUnavailable("a worker has no relay identity in the registry")
        tracks: list[RelayedTrack] = await src.media.relay_send(room.name, dst_peer, list(want))
        await dst.media.relay_receive(room.name, src_peer, tracks)
        RELAY_CHANGES.inc()
        if want:
            dst.receiving[src.region] = want
        else:
            dst.receiving.pop(src.region, None)
        log.info(
            "call relay set",
            extra={"room": room.name, "from": src.region, "to": dst.region, "tracks": len(want)},
        )

    def relays_changed(self, room: R) -> None:
        """A track or participant went: drop relays nobody needs (in the background)."""
        if self.placement is not None and len(room.sites) > 1:
            room.lane.background("relays", partial(self.sync_relays, room))

    def speaker_counts(self, room: R, worker: str | None) -> bool:
        """Whether an ``active_speaker`` event from ``worker`` speaks for the room."""
        if worker is None or len(room.sites) < 2:
            return True
        home = room.sites.get(room.region) or next(iter(room.sites.values()))
        return home.placed.worker == worker

    def publisher_site(self, room: R, pid: str, worker: str | None) -> bool:
        """Whether an event about publisher ``pid`` from ``worker`` comes from
        the publisher's own site (relay links count there)."""
        site = room.sites.get(self.region_of(room, pid))
        return worker is None or site is None or site.placed.worker == worker

    # -- workers that die or drain ---------------------------------------------

    async def refresh(self) -> None:
        """Renew the placements of every site of the rooms this replica owns."""
        if self.placement is not None:
            await self.placement.refresh(
                [(name, region) for name, r in self._rooms.items() for region in r.sites]
            )

    async def went_silent(self) -> bool:
        """Whether a worker that a site of the rooms this replica owns is on
        stopped listening on its control channel since the last call (one
        PUBSUB NUMSUB). A killed worker's subscription is gone as soon as
        Redis sees its socket close, so polling this often finds a death
        well before the watcher's next round; :meth:`check_media` judges
        it. Each silence is reported once."""
        if self.placement is None:
            return False
        placed = {site.placed for room in self._rooms.values() for site in room.sites.values()}
        if not placed:
            self._silent.clear()
            return False
        listening = await registry.listening_many(
            self.placement.redis, sorted({at.worker for at in placed})
        )
        silent = {at for at in placed if at.worker not in listening}
        new = silent - self._silent
        self._silent = silent
        return bool(new)

    def redis_back(self, at: float) -> None:
        """Redis came back from an outage (or another server answers) at
        ``at`` (time.time()): a worker whose registry entry is written after
        that is alive, however long its subscription takes to follow."""
        self._back_at = at

    def _resubscribing(self, info: registry.WorkerInfo) -> bool:
        """Whether ``info``'s worker, registered but not listening, is alive
        and subscribing again after the last Redis outage: its heartbeat
        wrote the entry since Redis came back, within :data:`RESUBSCRIBE_WITHIN`
        of that. A killed worker's last beat is older than the outage."""
        back = self._back_at
        return (
            back is not None
            and info.updated >= back - CLOCK_SKEW
            and time.time() - back < RESUBSCRIBE_WITHIN
        )

    async def check_media(self, *, trust_absence: bool = True) -> None:
        """Sites whose worker died (its registry entry expired, its incarnation
        changed, or nobody listens on its control channel) or drains move to
        another worker. Without ``trust_absence`` (Redis has just come back
        from an outage: entries and subscriptions are being written again)
        only a draining worker's sites move."""
        if self.placement is None:
            return
        sites = [(room, site) for room in self._rooms.values() for site in room.sites.values()]
        self._stranded &= {(room.name, site.region) for room, site in sites}
        if not sites:
            return
        redis = self.placement.redis
        verdicts: dict[Placed, str | None] = {}
        now = time.monotonic()
        targets = {site.placed for _, site in sites}
        wids = sorted({at.worker for at in targets})
        workers = await registry.entries(redis, wids)
        subscribed = await registry.listening_many(redis, wids)
        for at in targets:
            info = workers.get(at.worker)
            listening = at.worker in subscribed
            if info is not None and info.incarnation == at.incarnation:
                self.unregistered.pop(at, None)
                if listening:
                    verdicts[at] = "media-draining" if info.draining else None
                else:
                    verdicts[at] = None if self._resubscribing(info) else "media-lost"
            elif info is None and listening:
                # Its process still takes requests but its entry is gone: Redis
                # lost it (a restart) and the next heartbeat writes it again.
                # Only a worker silent for several TTLs is given up.
                since = self.unregistered.setdefault(at, now)
                grace = 3 * self._worker_ttl
                verdicts[at] = "media-lost" if now - since > grace else None
            else:
                verdicts[at] = "media-lost"
        for room, site in sites:
            reason = verdicts.get(site.placed)
            if reason == "media-lost" and not trust_absence:
                continue
            current = self._rooms.get(room.name) is room and room.sites.get(site.region) is site
            if reason is not None and current:
                await self.move(room, site, reason)

    async def move(self, room: R, old: Site, reason: str) -> None:
        """Place the room's site ``old`` on another worker (``reason``:
        ``media-lost`` or ``media-draining``)."""
        assert self.placement is not None
        new = await self.placement.place(room.name, old.region, replacing=old.placed)
        stranded = (room.name, old.region)
        if new is None or new == old.placed:
            # Tried again at every check (each second) until a worker is
            # there: said once, not once a second for as long as it lasts.
            if stranded not in self._stranded:
                self._stranded.add(stranded)
                log.error(
                    "no media worker to move a call room site to",
                    extra={"room": room.name, "region": old.region},
                )
            return
        self._stranded.discard(stranded)
        if self._rooms.get(room.name) is not room or room.sites.get(old.region) is not old:
            return
        MEDIA_MOVES.labels(reason).inc()
        log.warning(
            "call room site moves to another media worker",
            extra={
                "room": room.name,
                "region": old.region,
                "from": old.placed.worker,
                "to": new.worker,
                "reason": reason,
            },
        )
        if reason == "media-lost" and self.media_client is not None:
            self.media_client.abandon(old.placed.worker, old.placed.incarnation)
        await self.point(room, old.region, new)
        moved = [
            pid for pid in room.core.members.participants if self.region_of(room, pid) == old.region
        ]
        if reason == "media-draining":
            room.lane.background("close_room", partial(old.media.close_room, room.name))
        # The other sites stop relaying to and from the old worker; what its
        # participants want comes back through sync_relays as they subscribe.
        if old.peer is not None:
            for other in list(room.sites.values()):
                if other.region == old.region or other.placed == old.placed:
                    continue
                other.receiving.pop(old.region, None)
                room.lane.background(
                    "relay-stop", partial(other.media.relay_send, room.name, old.peer, [])
                )
                room.lane.background(
                    "relay-stop", partial(other.media.relay_receive, room.name, old.peer, [])
                )
        self._moved(room, moved, reason)

    async def release_all(self, room: R) -> None:
        """The room is over: forget every site's placement."""
        if self.placement is None:
            return
        sites = list(room.sites.values())
        for i, site in enumerate(sites):
            shared = any(o.placed == site.placed for o in sites[i + 1 :])
            await self.placement.release(room.name, site.placed, site.region, shared=shared)


def _wants(core: Room) -> tuple[dict[str, str], dict[str, list[str]]]:
    publisher_of: dict[str, str] = {}
    wants: dict[str, list[str]] = {}
    for participant in core.members.present():
        for track in core.media.tracks_of(participant.id):
            publisher_of[track.track_id] = participant.id
        wants[participant.id] = [t.track_id for t in core.media.wanted(participant.id)]
    return publisher_of, wants
