"""Simulcast in the forwarder: groups of layers, and switching a subscriber between them.

:class:`SimulcastGroups` keeps the :class:`~sfu.forward.table.SimulcastGroup` records (the
model is in Group's docstring) of a :class:`sfu.forward.forwarder.Forwarder`, which
holds one as :attr:`Forwarder.simulcast`; the cut-over itself happens in the hot
path (:meth:`Forwarder.route_into` calls :meth:`SimulcastGroups.switch_in`
on the keyframe). Sans-I/O like the rest of the forwarder.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping

from sfu.errors import SfuStateError
from sfu.forward.history import PacketHistory
from sfu.forward.table import Key, SimulcastGroup, SourceStream, Subscription

__all__ = ["SimulcastGroups"]


class SimulcastGroups:
    """The simulcast groups of one :class:`sfu.forward.forwarder.Forwarder`.

    The forwarder holds one and hands it the tables they share (its tracks
    and RTX streams by SSRC, the groups by id, the switch times) and the two
    of its verbs a group needs: ``add_track`` registers a layer as a track
    (:meth:`sfu.forward.forwarder.Forwarder.add_track`), ``request_keyframe`` asks a
    layer's publisher for the keyframe a switch waits for.
    """

    def __init__(
        self,
        tracks: dict[int, SourceStream],
        rtx_tracks: dict[int, SourceStream],
        groups: dict[int, SimulcastGroup],
        switch_times: deque[float],
        history_age: float,
        add_track: Callable[..., SourceStream],
        request_keyframe: Callable[[int, float], None],
    ) -> None:
        self._tracks = tracks
        self._rtx_tracks = rtx_tracks
        self._groups = groups
        self._switch_times = switch_times
        self._history_age = history_age
        self._add_track = add_track
        self._request_keyframe = request_keyframe

    def add_group(
        self,
        publisher: Key,
        gid: int,
        layers: int,
        *,
        codec: str,
        clock_rate: int,
        rtx_payload_types: Mapping[int, int] | None = None,
        extensions: Mapping[str, int] | None = None,
        nack: bool = True,
        fir: bool = False,
    ) -> SimulcastGroup:
        """Register a simulcast video track of ``layers`` layers under ``gid``
        (an id in the SSRC space no packet carries: subscribe, mute and
        remove it like a track). Layers are added as their SSRCs become
        known (:meth:`add_layer`)."""
        if gid in self._tracks or gid in self._rtx_tracks or gid in self._groups:
            raise SfuStateError(f"SSRC {gid} is already routed")
        idle = SourceStream(
            publisher,
            gid,
            "video",
            codec,
            clock_rate,
            None,
            dict(rtx_payload_types or {}),
            dict(extensions or {}),
            nack,
            fir,
            PacketHistory(1, self._history_age),
        )
        group = self._groups[gid] = SimulcastGroup(gid, publisher, layers, idle)
        return group

    def group(self, gid: int) -> SimulcastGroup | None:
        return self._groups.get(gid)

    def add_layer(
        self, gid: int, index: int, ssrc: int, rtx_ssrc: int | None = None
    ) -> SourceStream:
        """A group's layer ``index`` arrives on ``ssrc`` (and RTX on ``rtx_ssrc``)."""
        group = self._groups.get(gid)
        if group is None or not 0 <= index < len(group.layers):
            raise SfuStateError(f"no simulcast layer {index} of {gid}")
        if group.layers[index] is not None:
            raise SfuStateError(f"simulcast layer {index} of {gid} is known already")
        idle = group.idle
        track = self._add_track(
            group.publisher,
            ssrc,
            kind="video",
            codec=idle.codec,
            clock_rate=idle.clock_rate,
            rtx_ssrc=rtx_ssrc,
            rtx_payload_types=idle.rtx_apt,
            extensions=idle.extensions,
            nack=idle.nack,
            fir=idle.fir,
        )
        track.group = group
        track.layer = index
        track.muted = idle.muted
        track.sizing = track.codec == "vp8"
        group.layers[index] = track
        return track

    def add_layer_rtx(self, gid: int, index: int, rtx_ssrc: int) -> None:
        """The RTX stream (RFC 4588) of a known layer, learnt after it."""
        group = self._groups.get(gid)
        track = group.layers[index] if group is not None else None
        if track is None:
            raise SfuStateError(f"no simulcast layer {index} of {gid}")
        if rtx_ssrc in self._tracks or rtx_ssrc in self._rtx_tracks:
            raise SfuStateError(f"SSRC {rtx_ssrc} is already routed")
        if track.rtx_ssrc is not None:
            self._rtx_tracks.pop(track.rtx_ssrc, None)
        track.rtx_ssrc = rtx_ssrc
        self._rtx_tracks[rtx_ssrc] = track

    def set_layer(self, subscriber: Key, gid: int, index: int | None, now: float) -> bool:
        """Forward layer ``index`` of group ``gid`` to ``subscriber`` (None:
        nothing). Returns whether anything changed. A subscription on a
        layer keeps it until the new layer's keyframe (requested, throttled);
        one still waiting for its layer's first keyframe keeps waiting for it
        too and takes whichever comes first, so an allocation that changes its
        mind while a starved publisher's keyframes are slow does not restart
        the wait each time. One on no layer, or paused, moves at once."""
        group = self._groups.get(gid)
        if group is None:
            raise SfuStateError(f"no simulcast group {gid}")
        sub = next((s for s in group.subscriptions if s.key == subscriber), None)
        if sub is None:
            raise SfuStateError(f"subscriber {subscriber!r} does not receive track {gid}")
        target = group.idle if index is None else group.layers[index]
        if target is None:
            raise SfuStateError(f"simulcast layer {index} of {gid} is not known yet")
        if target is sub.pending_on:
            return False
        current = sub.track
        holding = current is not group.idle and not sub.paused
        if target is current:
            if sub.pending_on is None:
                return False
            self._cancel_pending(sub)
            return True
        self._cancel_pending(sub)
        sub.switch_started = now
        if target is group.idle or not holding:
            self._move(sub, target, now)
            return True
        target.pending.append(sub)
        target.waiting += 1
        sub.pending_on = target
        self._request_keyframe(target.ssrc, now)
        return True

    def _cancel_pending(self, sub: Subscription) -> None:
        on = sub.pending_on
        if on is not None:
            on.pending.remove(sub)
            on.waiting -= 1
            sub.pending_on = None

    def _move(self, sub: Subscription, target: SourceStream, now: float) -> None:
        """Put a subscription that forwards nothing on ``target`` at once."""
        old = sub.track
        old.subscriptions = [s for s in old.subscriptions if s is not sub]
        if sub.waiting_keyframe:
            old.waiting -= 1
            sub.waiting_keyframe = False
        sub.track = target
        target.subscriptions.append(sub)
        group = sub.group
        if group is not None and target is not group.idle and not sub.paused:
            sub.waiting_keyframe = True
            target.waiting += 1
            self._request_keyframe(target.ssrc, now)

    def switch_in(self, track: SourceStream, now: float) -> None:
        """A keyframe of ``track``: subscriptions waiting to switch to it cut over."""
        times = self._switch_times
        for sub in track.pending:
            old = sub.track
            old.subscriptions = [s for s in old.subscriptions if s is not sub]
            if sub.waiting_keyframe:  # this keyframe came before old's first
                old.waiting -= 1
                sub.waiting_keyframe = False
            track.subscriptions.append(sub)
            sub.track = track
            sub.pending_on = None
            sub.rewriter.switch()
            sub.sent_from = track
            if sub.vp8 is not None:
                sub.vp8.switch()
            times.append(now - sub.switch_started)
        track.waiting -= len(track.pending)
        track.pending = []

    def leave(self, sub: Subscription) -> None:
        """A subscription to a group ends: out of its group and any switch it waits for."""
        self._cancel_pending(sub)
        group = sub.group
        if group is not None:
            group.subscriptions = [s for s in group.subscriptions if s is not sub]
