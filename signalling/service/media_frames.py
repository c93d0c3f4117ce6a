"""The frames that call a room's media worker: publish, answer, mute,
unpublish, a track's view, audio only, ICE restarts and new transports.

Each is checked by the room's core first (its rights, the track's owner),
then goes to the worker through the room's media lane (one call at a time,
in the order asked); what the worker answers changes the room
(:meth:`signalling.room.media.RoomMedia.published`, ``muted``, ...), whose
outputs the rooms carry out. Subscribe offers come from each participant's
:class:`signalling.live.room.SubscribeNegotiation`.
"""

from __future__ import annotations

from functools import partial

from sfu.control.messages import MediaControl, PublishResult, TrackDisplay
from signalling import protocol
from signalling.cluster.connections import AnyConnection
from signalling.live.room import CallRoom, SubscribeNegotiation, offer_tracks
from signalling.room.media import offer_actions, offer_receives, track_info
from signalling.service.rooms import Rooms
from wadud.web.roles import Action

__all__ = ["MediaFrames"]


class MediaFrames:
    """Handles the frames of the rooms this process owns (``rooms``) that
    call their media worker."""

    def __init__(self, rooms: Rooms) -> None:
        self._rooms = rooms

    async def _publish(
        self,
        room: CallRoom,
        media: MediaControl,
        pid: str,
        frame: protocol.Publish,
        sub: SubscribeNegotiation | None,
    ) -> PublishResult:
        """The worker's answer to a publish offer, in the room's lane; on a
        single connection with the tracks it should receive now (their
        relays from other regions set first, as for a subscribe offer)."""
        if sub is None:
            return await media.publish(room.name, pid, frame.sdp, frame.sources)
        if room.sites:
            await self._rooms.sites.sync_relays(room)
        return await media.publish(room.name, pid, frame.sdp, frame.sources, sub.wants())

    async def handle(
        self, room: CallRoom, conn: AnyConnection, frame: protocol.ClientFrame
    ) -> None:
        """A frame that calls the room's media worker."""
        core = room.core
        ok = protocol.reply("ok", frame.id)
        match frame:
            case protocol.Publish():
                who = core.check_publish(
                    conn, offer_actions(frame.sdp, frame.sources), offer_receives(frame.sdp)
                )
                media = await room.media_for(who.id)
                sub = room.subscriber(who.id) if who.single else None
                result = await room.media_call(
                    partial(self._publish, room, media, who.id, frame, sub)
                )
                if core.members.get(who.id) is not who or not who.present:
                    # It left while the worker answered: what the worker just
                    # set up must go too.
                    room.lane.background("leave", partial(media.leave, room.name, who.id))
                    return
                outputs = core.media.published(who.id, result.added, result.removed)
                room.republished(who.id)
                extra = {}
                if sub is not None:
                    extra["receiving"] = offer_tracks(result.answer, core.media.wanted(who.id))
                conn.send(
                    protocol.reply(
                        "published",
                        frame.id,
                        sdp=result.answer,
                        tracks=[track_info(t) for t in core.media.tracks_of(who.id)],
                        **extra,
                    )
                )
                self._rooms.apply(room, outputs)
                if sub is not None:
                    sub.published(result.receiving, result.free)
            case protocol.Answer():
                who = core.members.check(conn, Action.SUBSCRIBE)
                await room.subscriber(who.id).answer(frame.sdp)
                conn.send(ok)
            case protocol.Candidate():
                # ICE-lite (RFC 8445 section 2.5): the worker learns the
                # client's addresses from its checks; trickled candidates are
                # accepted and not needed.
                core.members.check_joined(conn)
                conn.send(ok)
            case protocol.Mute():
                who, track = core.media.check_mute(conn, frame.track_id)
                await room.track_call(
                    track.participant,
                    lambda media: media.set_muted(room.name, track.track_id, frame.muted),
                )
                outputs = core.media.muted(who.id, track.track_id, frame.muted)
                conn.send(ok)
                self._rooms.apply(room, outputs)
            case protocol.Unpublish():
                who = core.media.check_unpublish(conn, frame.track_id)
                await room.track_call(
                    who.id, lambda media: media.unpublish(room.name, who.id, frame.track_id)
                )
                outputs = core.media.unpublished(who.id, frame.track_id)
                conn.send(ok)
                self._rooms.apply(room, outputs)
            case protocol.TrackView():
                # No answer: pages send these often (docs/protocol.md).
                who = core.members.check(conn, Action.SUBSCRIBE)
                if any(t.track_id == frame.track_id for t in core.media.wanted(who.id)):
                    media = await room.media_for(who.id)
                    room.lane.background(
                        "view",
                        partial(
                            media.set_view,
                            room.name,
                            who.id,
                            frame.track_id,
                            TrackDisplay(frame.width, frame.height, frame.visible),
                        ),
                    )
            case protocol.AudioOnly():
                who = core.members.check_joined(conn)
                media = await room.media_for(who.id)
                await room.media_call(
                    partial(media.set_audio_only, room.name, who.id, frame.enabled)
                )
                conn.send(ok)
            case protocol.IceRestart() | protocol.ReconnectMedia():
                # On a single connection the client's own next offer renews it.
                who = core.members.check_joined(conn)
                room.subscriber(who.id).restart(
                    "ice" if isinstance(frame, protocol.IceRestart) else "transport"
                )
                conn.send(ok)
                room.media_state(who.id, "reconnecting")
