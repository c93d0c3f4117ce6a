"""Simulcast for the Python client: three aiortc encoders sent as one RFC 8853 track.

aiortc cannot encode rid-based simulcast: one ``RTCRtpSender`` is one
encoding. A browser (Chromium) publishes its camera as one m= section with
``a=rid:q send``, ``a=rid:h send``, ``a=rid:f send`` and
``a=simulcast:send q;h;f``, three SSRCs it never names in the SDP, and the
MID and RID header extensions (RFC 8852) on its packets so the receiver can
tell the layers apart. This module makes aiortc look like that, honestly
encoding each layer:

* :func:`layer_tracks` gives three tracks from one source: its frames scaled
  to 1/4, 1/2 and 1/1 (``q``, ``h``, ``f``), each fed to its own aiortc
  sender and so its own VP8 encoder (own SSRC, own PictureIDs, own RTX
  SSRC), as libwebrtc runs one encoder per layer;
* :class:`SimulcastMunger` rewrites the three m= sections of aiortc's offer
  into the one simulcast section the server sees (the first layer's mid, no
  ``a=ssrc``), the server's answer back into three for aiortc, and every
  RTP packet the senders emit on its way to the DTLS transport: the MID
  becomes the visible section's and the RID (or, on RTX, the repaired RID)
  is added, as Chromium writes them;
* ``set_encodings`` from the server (dynacast) stops or restarts a layer's
  encoder by taking its track off the sender.

What it does not do: the three encoders are not one encoder's simulcast, so
bitrates are aiortc's per-encoder defaults, shaped only by the REMB the
server sends (no per-layer bitrate plan, no temporal layers); every packet
carries MID and RID (Chromium stops once the SSRC is acknowledged); H.264
and screen shares are sent as one layer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiortc.mediastreams import MediaStreamTrack
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from aiortc.rtp import HeaderExtensionsMap, RtpPacket

__all__ = ["RIDS", "SCALES", "ScaledVideo", "SimulcastMunger", "layer_tracks"]

#: The RIDs and scale-down factors the call page uses, lowest layer first.
RIDS = ("q", "h", "f")
SCALES = (4, 2, 1)

MID = "urn:ietf:params:rtp-hdrext:sdes:mid"
RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"
REPAIRED_RTP_STREAM_ID = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"


class ScaledVideo(MediaStreamTrack):
    """Frames of ``source`` scaled down by ``scale`` (even sizes, as VP8 wants)."""

    kind = "video"

    def __init__(self, source: MediaStreamTrack, scale: int) -> None:
        super().__init__()
        self.source = source
        self.scale = scale

    async def recv(self) -> Any:
        frame: Any = await self.source.recv()
        if self.scale == 1:
            return frame
        width = max(2, frame.width // self.scale // 2 * 2)
        height = max(2, frame.height // self.scale // 2 * 2)
        out = frame.reformat(width=width, height=height)
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def stop(self) -> None:
        super().stop()
        self.source.stop()


def layer_tracks(source: MediaStreamTrack) -> list[MediaStreamTrack]:
    """Three tracks of ``source`` at :data:`SCALES`, lowest first."""
    from aiortc.contrib.media import MediaRelay

    relay = MediaRelay()
    return [ScaledVideo(relay.subscribe(source, buffered=False), s) for s in SCALES]


@dataclass
class _Group:
    """One simulcast track: aiortc's m= sections (lowest layer first; the
    first is the one the server sees), their senders and tracks."""

    mids: list[str]
    senders: list[Any]
    tracks: list[MediaStreamTrack]
    rids: tuple[str, ...] = RIDS
    active: dict[str, bool] = field(default_factory=dict)


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in sdp.replace("\r\n", "\n").split("\n") if ln]
    session: list[str] = []
    media: list[list[str]] = []
    for ln in lines:
        if ln.startswith("m="):
            media.append([ln])
        elif media:
            media[-1].append(ln)
        else:
            session.append(ln)
    return session, media


def _mid(section: list[str]) -> str | None:
    return next((ln[6:] for ln in section if ln.startswith("a=mid:")), None)


def _extmap(line: str) -> tuple[int, str]:
    """(id, URI) of an ``a=extmap:ID[/direction] URI`` line."""
    head, uri = line.split()[:2]
    return int(head[9:].split("/")[0]), uri


def _join(session: list[str], media: Iterable[list[str]]) -> str:
    return "\r\n".join([*session, *(ln for s in media for ln in s)]) + "\r\n"


def _bundle(session: list[str], mids: Sequence[str]) -> list[str]:
    return [
        "a=group:BUNDLE " + " ".join(mids) if ln.startswith("a=group:BUNDLE") else ln
        for ln in session
    ]


class SimulcastMunger:
    """The SDP and RTP rewriting of one publish connection (see the module docstring)."""

    def __init__(self) -> None:
        self.groups: list[_Group] = []
        self._order: list[str] = []
        self._ids: dict[str, int] = {}
        self._map: HeaderExtensionsMap | None = None
        self._by_ssrc: dict[int, tuple[str, str, bool]] = {}  # ssrc -> (mid, rid, rtx)
        self._wrapped: set[int] = set()

    def add(self, transceivers: Sequence[Any], tracks: Sequence[MediaStreamTrack]) -> None:
        """A simulcast track: its aiortc transceivers (one per RID in
        :data:`RIDS`), once ``setLocalDescription`` gave them mids."""
        group = _Group(
            [t.mid for t in transceivers], [t.sender for t in transceivers], list(tracks)
        )
        group.active = dict.fromkeys(group.rids, True)
        self.groups.append(group)
        for sender, rid in zip(group.senders, group.rids, strict=True):
            self._by_ssrc[sender._ssrc] = (group.mids[0], rid, False)
            self._by_ssrc[sender._rtx_ssrc] = (group.mids[0], rid, True)

    def mid_of(self, mid: str) -> str | None:
        """The visible mid of a group, if ``mid`` is its first section."""
        return mid if any(g.mids[0] == mid for g in self.groups) else None

    # -- SDP -------------------------------------------------------------------

    def offer(self, sdp: str) -> str:
        """aiortc's offer with each group's sections folded into one simulcast section."""
        if not self.groups:
            return sdp
        session, media = _sections(sdp)
        self._order = [m for m in (_mid(s) for s in media) if m is not None]
        hidden = {mid for g in self.groups for mid in g.mids[1:]}
        first = {g.mids[0]: g for g in self.groups}
        used = {_extmap(ln)[0] for s in media for ln in s if ln.startswith("a=extmap:")}
        free = [i for i in range(1, 15) if i not in used]
        out: list[list[str]] = []
        for section in media:
            mid = _mid(section)
            if mid in hidden:
                continue
            group = first.get(mid or "")
            if group is None:
                out.append(section)
                continue
            kept = [ln for ln in section if not ln.startswith(("a=ssrc:", "a=ssrc-group:"))]
            uris = {
                uri: xid for xid, uri in (_extmap(ln) for ln in kept if ln.startswith("a=extmap:"))
            }
            last = max(i for i, ln in enumerate(kept) if ln.startswith(("a=extmap:", "a=mid:")))
            extra = []
            for uri in (RTP_STREAM_ID, REPAIRED_RTP_STREAM_ID):
                if uri not in uris:
                    uris[uri] = free.pop(0)
                    extra.append(f"a=extmap:{uris[uri]} {uri}")
            kept[last + 1 : last + 1] = extra
            kept += [f"a=rid:{rid} send" for rid in group.rids]
            kept.append("a=simulcast:send " + ";".join(group.rids))
            self._ids = uris
            out.append(kept)
        self._map = _extension_map(self._ids)
        visible = [m for m in self._order if m not in hidden]
        return _join(_bundle(session, visible), out)

    def answer(self, sdp: str) -> str:
        """The server's answer with each group's section copied back for every layer."""
        if not self.groups:
            return sdp
        session, media = _sections(sdp)
        by_mid = {_mid(s): s for s in media}
        copies: dict[str, list[str]] = {}
        for group in self.groups:
            section = by_mid.get(group.mids[0])
            if section is None:
                continue
            plain = [ln for ln in section if not ln.startswith(("a=rid:", "a=simulcast:"))]
            by_mid[group.mids[0]] = plain
            for mid in group.mids[1:]:
                copies[mid] = [f"a=mid:{mid}" if ln.startswith("a=mid:") else ln for ln in plain]
        out = [copies.get(mid) or by_mid.get(mid) for mid in self._order]
        return _join(_bundle(session, self._order), [s for s in out if s is not None])

    # -- RTP -------------------------------------------------------------------

    def install(self, transports: Iterable[Any]) -> None:
        """Rewrite what these DTLS transports send (once each), where there
        are layers to rewrite: without a group, nothing is wrapped (every
        packet sent through the munger pays for one more coroutine), and a
        later call, after :meth:`add`, wraps them then."""
        if not self.groups:
            return
        for transport in transports:
            if transport is None or id(transport) in self._wrapped:
                continue
            self._wrapped.add(id(transport))
            send = transport._send_rtp

            async def send_rtp(data: bytes, send: Any = send) -> None:
                await send(self.rewrite(data))

            transport._send_rtp = send_rtp

    def rewrite(self, data: bytes) -> bytes:
        """One RTP packet from a layer's sender, as Chromium would have sent it."""
        if len(data) < 12 or self._map is None:
            return data
        ssrc = int.from_bytes(data[8:12], "big")
        known = self._by_ssrc.get(ssrc)
        if known is None:
            return data
        mid, rid, rtx = known
        packet = RtpPacket.parse(data, self._map)
        packet.extensions.mid = mid
        if rtx:
            packet.extensions.repaired_rtp_stream_id = rid
        else:
            packet.extensions.rtp_stream_id = rid
        return bytes(packet.serialize(self._map))

    # -- dynacast --------------------------------------------------------------

    async def set_encodings(self, mid: str, encodings: Iterable[dict[str, Any]]) -> None:
        """Stop (take the track off its sender) or restart the listed layers."""
        group = next((g for g in self.groups if g.mids[0] == mid), None)
        if group is None:
            return
        for item in encodings:
            rid, active = str(item.get("rid")), bool(item.get("active"))
            if rid not in group.rids or group.active.get(rid) == active:
                continue
            group.active[rid] = active
            i = group.rids.index(rid)
            group.senders[i].replaceTrack(group.tracks[i] if active else None)
        await asyncio.sleep(0)


def _extension_map(ids: dict[str, int]) -> HeaderExtensionsMap:
    extension_map = HeaderExtensionsMap()
    extension_map.configure(
        RTCRtpParameters(
            headerExtensions=[RTCRtpHeaderExtensionParameters(id=i, uri=u) for u, i in ids.items()]
        )
    )
    return extension_map
