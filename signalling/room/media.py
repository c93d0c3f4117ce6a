"""What a call room's participants publish, without I/O: their tracks, what
each should receive, who speaks, and what a lost or drained media worker
changes.

The media worker answers each publish with the tracks that came and went
(:meth:`RoomMedia.published`); the room tells everyone and asks the adapter
to renegotiate the subscribers' connections (:class:`Resubscribe`) towards
:meth:`RoomMedia.wanted`.

Media moves
-----------

When the room's media worker is lost or drained, :meth:`RoomMedia.reset`
forgets every track and tells each connected participant ``media_reconnect``
(new peer connections, publish again); a DETACHED one hears it when it
resumes (:meth:`RoomMedia.resumed`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from rtc.sdp.attributes import Direction
from rtc.sdp.session import SessionDescription
from sfu.control.messages import TrackInfo
from signalling import errors
from signalling.protocol import reply
from signalling.room.members import Member, Members, MemberState
from signalling.room.outputs import ConnId, Output, Resubscribe
from wadud.web.roles import Action

__all__ = ["RoomMedia", "offer_actions", "track_info"]

#: The sources that are a screen, whatever their kind.
_SCREEN = frozenset({"screen", "screen_audio"})


def offer_actions(sdp: str, sources: Mapping[str, str]) -> frozenset[Action]:
    """What a publish offer would send, as the actions it needs: each audio
    or video section the offer sends on, by its source (``sources``, by mid)
    or, for a source it does not name, by its kind. :class:`rtc.errors.SdpError`
    when ``sdp`` is not an offer at all."""
    needs: set[Action] = set()
    for m in SessionDescription.parse(sdp).media:
        if m.rejected or m.direction in (Direction.RECVONLY, Direction.INACTIVE):
            continue
        if sources.get(m.mid or "") in _SCREEN:
            needs.add(Action.SHARE_SCREEN)
        elif m.kind == "audio":
            needs.add(Action.PUBLISH_AUDIO)
        elif m.kind == "video":
            needs.add(Action.PUBLISH_VIDEO)
    return frozenset(needs)


def offer_receives(sdp: str) -> bool:
    """Whether an offer has ``recvonly`` sections: a single connection's
    room for the tracks it receives (docs/protocol.md)."""
    return any(m.direction is Direction.RECVONLY for m in SessionDescription.parse(sdp).media)


def track_info(t: TrackInfo) -> dict[str, Any]:
    return {
        "track_id": t.track_id,
        "participant": t.participant,
        "kind": t.kind,
        "source": t.source,
        "mid": t.mid,
        "muted": t.muted,
    }


class RoomMedia:
    """The tracks a room's participants publish and its active speaker;
    handed the room's :class:`Members`, who hear of every change."""

    def __init__(self, members: Members) -> None:
        self._members = members
        #: Each participant's published tracks, by id, in publish order.
        self._tracks: dict[str, dict[str, TrackInfo]] = {}
        #: Participants the room's media moved away from while they were
        #: DETACHED: told on resume.
        self._stale: set[str] = set()
        #: Who the media worker last said speaks.
        self.active_speaker: str | None = None

    # -- views -----------------------------------------------------------------

    def tracks(self) -> list[TrackInfo]:
        """Every present participant's tracks, in joining then publish order."""
        return [t for p in self._members.present() for t in self._of(p.id).values()]

    def tracks_of(self, participant_id: str) -> list[TrackInfo]:
        return list(self._of(participant_id).values())

    def wanted(self, participant_id: str) -> list[TrackInfo]:
        """The tracks this participant should receive: every other present
        participant's, if it is present and has the subscribe grant."""
        p = self._members.get(participant_id)
        if p is None or not p.present or not p.grant.can(Action.SUBSCRIBE):
            return []
        return [t for t in self.tracks() if t.participant != participant_id]

    def _of(self, participant_id: str) -> dict[str, TrackInfo]:
        return self._tracks.get(participant_id, {})

    def _track(self, track_id: str) -> TrackInfo:
        for p in self._members.present():
            found = self._of(p.id).get(track_id)
            if found is not None:
                return found
        raise errors.UnknownTarget(f"no track {track_id!r}")

    # -- rights ----------------------------------------------------------------

    def check_mute(self, conn: ConnId, track_id: str) -> tuple[Member, TrackInfo]:
        p = self._members.check_joined(conn)
        t = self._track(track_id)
        if t.participant != p.id and not p.grant.can(Action.REMOVE):
            raise errors.NotAllowed.lacking(Action.REMOVE, p.grant.role)
        return p, t

    def check_unpublish(self, conn: ConnId, track_id: str) -> Member:
        p = self._members.check_joined(conn)
        t = self._track(track_id)
        if t.participant != p.id:
            raise errors.NotAllowed("you can unpublish only your own tracks")
        return p

    # -- what the media worker says ------------------------------------------------

    def published(
        self, participant_id: str, added: Sequence[TrackInfo], removed: Iterable[str]
    ) -> list[Output]:
        """The media worker answered a publish offer: tracks came and went."""
        p = self._members.get(participant_id)
        if p is None or not p.present:
            return []
        out: list[Output] = []
        changed = False
        tracks = self._tracks.setdefault(p.id, {})
        for track_id in removed:
            if tracks.pop(track_id, None) is not None:
                changed = True
                out += self._members.broadcast(reply("track_unpublished", track_id=track_id), p)
        for t in added:
            if t.participant != p.id:
                t = replace(t, participant=p.id)
            tracks[t.track_id] = t
            changed = True
            out += self._members.broadcast(reply("track_published", track=track_info(t)), p)
        if changed and (subs := self._members.subscribers(besides=p.id)):
            out.append(Resubscribe(subs))
        return out

    def unpublished(self, participant_id: str, track_id: str) -> list[Output]:
        return self.published(participant_id, (), (track_id,))

    def muted(self, by: str, track_id: str, muted: bool) -> list[Output]:
        """A track was muted or unmuted on the media side; everyone is told."""
        for p in self._members.present():
            tracks = self._of(p.id)
            if track_id in tracks:
                tracks[track_id] = replace(tracks[track_id], muted=muted)
                frame = reply("track_muted", track_id=track_id, muted=muted, by=by)
                return self._members.broadcast(frame)
        return []

    def speaker(self, participant_id: str | None) -> list[Output]:
        """The media worker's active speaker changed."""
        if participant_id is not None and self._members.get(participant_id) is None:
            participant_id = None
        if participant_id == self.active_speaker:
            return []
        self.active_speaker = participant_id
        return self._members.broadcast(reply("active_speaker", participant_id=participant_id))

    # -- media moves -----------------------------------------------------------

    def reset(self, reason: str, only: Collection[str] | None = None) -> list[Output]:
        """A media worker is gone (or draining): the tracks of everyone on it
        (everyone, or the participants in ``only`` when the room spans
        several workers) are forgotten, those connected are told
        ``media_reconnect`` and DETACHED ones will be told when they resume."""
        out: list[Output] = []
        moved = [p for p in self._members.present() if only is None or p.id in only]
        for p in moved:
            for t in self._tracks.pop(p.id, {}).values():
                out += self._members.broadcast(reply("track_unpublished", track_id=t.track_id), p)
        for p in moved:
            if p.state is MemberState.JOINED and p.conn is not None:
                out += self._members.to(p, reply("media_reconnect", reason=reason))
            else:
                self._stale.add(p.id)
        if self.active_speaker is not None and (only is None or self.active_speaker in only):
            self.active_speaker = None
            out += self._members.broadcast(reply("active_speaker", participant_id=None))
        return out

    def resumed(self, p: Member) -> list[Output]:
        """``p`` is back: told ``media_reconnect`` if the media moved meanwhile."""
        if p.id not in self._stale or p.state is not MemberState.JOINED:
            return []
        self._stale.discard(p.id)
        return self._members.to(p, reply("media_reconnect", reason="media-moved"))

    # -- leaving -----------------------------------------------------------------

    def forget(self, participant_id: str) -> list[TrackInfo]:
        """A participant left: its tracks go (returned, for the others to hear of)."""
        self._stale.discard(participant_id)
        return list(self._tracks.pop(participant_id, {}).values())

    def silenced(self, participant_id: str) -> list[Output]:
        """A participant left: if it was the active speaker, nobody is."""
        if self.active_speaker != participant_id:
            return []
        self.active_speaker = None
        return self._members.broadcast(reply("active_speaker", participant_id=None))

    # -- snapshots ---------------------------------------------------------------

    def snapshot(self, participant_id: str) -> dict[str, Any]:
        """A participant's media as plain data (beside its member's snapshot)."""
        return {
            "tracks": [asdict(t) for t in self._of(participant_id).values()],
            "media_stale": participant_id in self._stale,
        }

    def clear(self, active_speaker: str | None) -> None:
        self._tracks.clear()
        self._stale.clear()
        self.active_speaker = active_speaker

    def restore(self, participant_id: str, data: dict[str, Any]) -> None:
        """A participant's media back from :meth:`snapshot`."""
        tracks = {t["track_id"]: TrackInfo(**t) for t in data.get("tracks", ())}
        if tracks:
            self._tracks[participant_id] = tracks
        if data.get("media_stale", False):
            self._stale.add(participant_id)
