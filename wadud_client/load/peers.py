"""The load tester's participants: a publisher that sends the clip, a
subscriber that counts what arrives. Each joins through the signalling
WebSocket as a browser does (docs/protocol.md, "Calls"), with a token minted
by the deployment's API key, and holds one :class:`~wadud_client.load.wire.link.Link`
per peer connection.

A subscriber never decodes. It reads each packet's RTP header (SSRC,
sequence, timestamp) and keeps per track: packets and bytes, the first
packet's arrival (join time), RFC 3550 interarrival jitter, and loss from the
sequence numbers. A *sampled* subscriber also unprotects every packet and
reads the stamp the tool's own publishers put in the payload
(wadud_client/load/media.py): one-way latency, and exact loss over the
stamped packets. The others read the header in the clear and skip SRTP's
authentication, so one generator core holds many more of them. Each sends
receiver reports every second, as browsers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from wadud_client.errors import ConnectionClosed, RequestFailed
from wadud_client.load import media
from wadud_client.load.tracks import TrackStats
from wadud_client.load.wire import rtp, sdp
from wadud_client.load.wire.feedback import TransportFeedback
from wadud_client.load.wire.link import Certificate, Link, LinkFailed
from wadud_client.socket import CallSocket

__all__ = ["Publisher", "Subscriber"]

#: Seconds between a subscriber's receiver reports, and a publisher's SRs.
REPORT_EVERY = 1.0
#: Seconds early a publisher sends what is due (the event loop's timer resolution).
_TIMER_SLACK = 0.002
#: The most sequence numbers of one gap a subscriber asks again.
NACK_MOST = 64
#: Seconds a NACK's retransmissions have before a subscriber asks for a keyframe.
PLI_AFTER = 0.25
_NTP_EPOCH = 2_208_988_800
_U16 = struct.Struct(">H")


def _ntp(now: float) -> int:
    whole = int(now) + _NTP_EPOCH
    return (whole << 32) | int((now % 1) * (1 << 32))


class _Member:
    """One participant's signalling: join, answers to frames, close."""

    def __init__(
        self,
        ws_url: str,
        token: str,
        http: aiohttp.ClientSession,
        label: str,
        certificate: Certificate,
    ) -> None:
        self.token = token
        self.certificate = certificate
        self.label = label
        self.socket = CallSocket(
            ws_url, on_frame=self._frame, on_closed=self._closed, label=label, http=http
        )
        self.closed_code: int | None = None
        #: The server closed this participant's signalling connection.
        self.gone = False
        self.joined_at = 0.0
        self.participant = ""
        self.leaving = False
        self.errors: list[str] = []
        #: Each time the server moved this participant's media (``media_reconnect``)
        #: or its link was lost: when (monotonic), why, and seconds until
        #: media flowed again (None while it has not).
        self.reconnects: list[dict[str, Any]] = []
        self._reconnecting: asyncio.Task[None] | None = None

    async def join(self) -> None:
        await self.socket.connect()
        answer = await self.socket.request("join", {"token": self.token})
        if answer["type"] != "joined":
            raise LinkFailed(f"{self.label} got {answer['type']} instead of joined")
        self.participant = str(answer.get("participant", {}).get("id", ""))
        self.joined_at = time.monotonic()

    async def _frame(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "ping":
            with contextlib.suppress(Exception):
                await self.socket.send("pong")
        elif frame["type"] == "media_reconnect":
            self._media_lost(str(frame.get("reason", "")), ask=False)
        self.socket.answered(frame)

    def _media_lost(self, reason: str, *, ask: bool) -> None:
        """The media is to be set up anew: told by the server (its worker
        died or drains), or our link lost consent (then we ask, with
        ``reconnect_media``, as a browser falls back to)."""
        if self.leaving or (self._reconnecting is not None and not self._reconnecting.done()):
            return
        self.reconnects.append({"at": time.monotonic(), "reason": reason, "back_s": None})
        # At once, before the next frame (the new offer) is read.
        self._drop_media()
        self._reconnecting = asyncio.create_task(
            self._media_again(ask), name=f"reconnect {self.label}"
        )

    def _drop_media(self) -> None:
        raise NotImplementedError

    async def _media_again(self, ask: bool) -> None:
        raise NotImplementedError

    def _media_back(self, at: float) -> None:
        last = self.reconnects[-1] if self.reconnects else None
        if last is not None and last["back_s"] is None:
            last["back_s"] = round(at - last["at"], 3)

    def _closed(self, code: int | None) -> None:
        self.closed_code = code
        self.gone = not self.leaving
        if not self.leaving:
            self.errors.append(f"signalling:closed: by the server ({code})")

    async def close(self) -> None:
        self.leaving = True
        if self._reconnecting is not None:
            self._reconnecting.cancel()
            await asyncio.wait({self._reconnecting})
        with contextlib.suppress(Exception):
            await self.socket.request("leave", {})
        await self.socket.drop()


@dataclass(slots=True)
class _Layer:
    """One video stream a publisher sends on its link (a simulcast layer, or
    the one camera stream): its RTP state and counts, for its sender reports."""

    rid: str  # "" without simulcast
    clip: media.Clip
    ssrc: int
    seq: int  # the next sequence number
    ts0: int  # the first timestamp
    octets: int = 0
    sent: int = 0


class Publisher(_Member):
    """Sends the clip: Opus every 20 ms, VP8 at 30 frames a second, each
    frame's packets together, and a keyframe when the server asks (PLI, FIR).

    With ``simulcast`` (``[(rid, clip), ...]``, lowest first) the camera is
    those layers, as Chromium sends them: one SSRC each, named by the RID
    header extension (RFC 8852) on its first second of packets, every
    layer's frame n carrying the same stamp. The server's ``set_encodings``
    (dynacast) stops and restarts layers."""

    def __init__(
        self,
        ws_url: str,
        token: str,
        http: aiohttp.ClientSession,
        label: str,
        certificate: Certificate,
        clip: media.Clip,
        *,
        audio: bool = True,
        video: bool = True,
        simulcast: Sequence[tuple[str, media.Clip]] = (),
    ) -> None:
        super().__init__(ws_url, token, http, label, certificate)
        self.clip = clip
        self.audio, self.video = audio, video
        self.simulcast = list(simulcast)
        #: Layers the server wants sent (dynacast), by RID.
        self.active = {rid: True for rid, _ in self.simulcast}
        #: Packets sent per layer (RID, or "" without simulcast).
        self.layer_packets: Counter[str] = Counter()
        self._video_track = ""
        self.link: Link | None = None
        #: Stamps sent, per kind: a subscriber's loss is over one track's.
        self.stamps = {"audio": 0, "video": 0}
        self.sent_packets = 0
        self.keyframes_asked = 0
        self._keyframe_due = False
        self._task: asyncio.Task[None] | None = None

    async def publish(self) -> None:
        offer = sdp.publish_offer(
            self.certificate.fingerprint,
            audio=self.audio,
            video=self.video,
            rids=tuple(rid for rid, _ in self.simulcast),
        )
        sources = {"0": "microphone", "1": "camera"}
        sources = {mid: what for mid, what in sources.items() if (self.audio, self.video)[int(mid)]}
        answer = await self.socket.request("publish", {"sdp": offer.sdp, "sources": sources})
        desc = sdp.read(str(answer["sdp"]))
        ids = {s.mid: s.extensions for s in desc.sections}
        tracks = answer.get("tracks") or []
        self._video_track = next(
            (str(t.get("track_id")) for t in tracks if t.get("mid") == "1"), ""
        )
        self._offer, self._ext = offer, ids
        self.link = Link(
            self.certificate,
            desc.remote,
            ufrag=offer.ufrag,
            pwd=offer.pwd,
            on_rtp=lambda data, at: None,
            on_rtcp=self._rtcp,
            on_lost=lambda why: self._media_lost(f"link lost: {why}", ask=True),
        )
        await self.link.connect()
        self._media_back(time.monotonic())
        self._task = asyncio.create_task(self._send(), name=f"send {self.label}")
        self._task.add_done_callback(self._sending_ended)

    def _sending_ended(self, task: asyncio.Task[None]) -> None:
        """A send loop that fails is an error of the run, counted like any other."""
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.errors.append(f"media:send: {exc!r}")

    def _drop_media(self) -> None:
        # A new publish connection (new certificate on a browser; a new link
        # here): what was sent on the old one is gone with its worker.
        if self.link is not None:
            self.link.close()
        if self._task is not None:
            self._task.cancel()

    async def _media_again(self, ask: bool) -> None:
        if self._task is not None:
            await asyncio.wait({self._task})
        try:
            if ask:
                await self.socket.request("reconnect_media", {})
            await self.publish()
        except (RequestFailed, ConnectionClosed, LinkFailed, TimeoutError, ValueError) as exc:
            self.errors.append(f"media:reconnect: {exc}")

    async def _frame(self, frame: dict[str, Any]) -> None:
        await super()._frame(frame)
        if frame["type"] == "set_encodings" and frame.get("track_id") == self._video_track:
            for item in frame.get("encodings") or []:
                rid = str(item.get("rid"))
                if rid in self.active:
                    self.active[rid] = bool(item.get("active"))

    def _rtcp(self, data: bytes) -> None:
        for pt, fmt, _ in rtp.rtcp_packets(data):
            if pt == 206 and fmt in (1, 4):  # PLI, FIR
                self._keyframe_due = True
                self.keyframes_asked += 1

    def _stamp(self, kind: str) -> bytes:
        self.stamps[kind] += 1
        return media.STAMP.pack(media.MAGIC, self.stamps[kind], time.monotonic_ns())

    async def _send(self) -> None:
        link, offer = self.link, self._offer
        assert link is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        a_ext = self._ext.get("0", {})
        v_ext = self._ext.get("1", {})
        a_mid = [(a_ext[sdp.MID_URI], b"0")] if sdp.MID_URI in a_ext else []
        v_mid = [(v_ext[sdp.MID_URI], b"1")] if sdp.MID_URI in v_ext else []
        rid_id = v_ext.get(sdp.RID_URI, 0)
        # As a browser's sender: every packet numbered transport-wide (one
        # count over the connection), so the server can say when each came
        # and number what it forwards; video stamped with its send time.
        a_tcc, v_tcc = a_ext.get(sdp.TWCC_URI), v_ext.get(sdp.TWCC_URI)
        v_abs = v_ext.get(sdp.ABS_SEND_TIME_URI)
        tseq = 0

        # Random first sequence numbers and timestamps, as RFC 3550 asks.
        def seq0() -> int:
            return int.from_bytes(os.urandom(2), "big")

        def ts0() -> int:
            return int.from_bytes(os.urandom(4), "big")

        a_seq, a_ts0 = seq0(), ts0()
        layers = (
            [_Layer(rid, clip, ssrc, seq0(), ts0())
             for (rid, clip), (_, ssrc) in zip(self.simulcast, offer.layers, strict=True)]
            if self.simulcast
            else [_Layer("", self.clip, offer.video_ssrc, seq0(), ts0())]
        )  # fmt: skip
        a_n = v_n = frame_no = 0
        a_sent = a_octets = 0  # for the SRs
        next_report = start + REPORT_EVERY
        audio_level = a_ext.get(sdp.AUDIO_LEVEL_URI)
        while not link.closed:
            # What falls due within the loop's timer resolution goes now: a
            # wake a millisecond early (uvloop's timers round to one) would
            # otherwise sleep again for nothing, a thousand times a second.
            now = loop.time() + _TIMER_SLACK
            due_audio = start + a_n * 0.02
            due_video = start + v_n / media.FPS
            if self.audio and now >= due_audio:
                payload = media.opus_stamped(
                    self.clip.audio[a_n % len(self.clip.audio)], self._stamp("audio")
                )
                ext = list(a_mid) if a_n < 50 else []
                if audio_level is not None:
                    ext.append((audio_level, b"\x9e"))  # voice, -30 dBov
                if a_tcc is not None:
                    ext.append((a_tcc, _U16.pack(tseq & 0xFFFF)))
                    tseq += 1
                link.send_rtp(
                    rtp.packet(
                        sdp.OPUS_PT,
                        a_seq,
                        a_ts0 + a_n * 960,
                        offer.audio_ssrc,
                        payload,
                        extensions=ext,
                    )
                )
                a_seq, a_n, a_sent, a_octets = (
                    a_seq + 1,
                    a_n + 1,
                    a_sent + 1,
                    a_octets + len(payload),
                )
            if self.video and now >= due_video:
                if self._keyframe_due:
                    self._keyframe_due = False
                    frame_no = layers[0].clip.next_keyframe(frame_no)
                stamp = self._stamp("video")
                first_second = v_n < media.FPS
                for layer in layers:
                    rid = layer.rid
                    if rid and not self.active.get(rid, True):
                        continue
                    data, key = layer.clip.video[frame_no % len(layer.clip.video)]
                    payloads = rtp.vp8_payloads(data, v_n, key)
                    payloads[-1] += stamp
                    ext = list(v_mid) if first_second else []
                    if rid and first_second and rid_id:
                        ext.append((rid_id, rid.encode()))
                    if v_abs is not None:
                        ext.append((v_abs, (int(now * 262144) & 0xFFFFFF).to_bytes(3, "big")))
                    for i, p in enumerate(payloads):
                        numbered = ext
                        if v_tcc is not None:
                            numbered = [*ext, (v_tcc, _U16.pack(tseq & 0xFFFF))]
                            tseq += 1
                        link.send_rtp(
                            rtp.packet(
                                sdp.VP8_PT,
                                layer.seq,
                                layer.ts0 + v_n * 3000,
                                layer.ssrc,
                                p,
                                marker=i == len(payloads) - 1,
                                extensions=numbered,
                            )
                        )
                        layer.seq += 1
                        layer.octets += len(p)
                    layer.sent += len(payloads)
                    self.layer_packets[rid] += len(payloads)
                v_n, frame_no = v_n + 1, frame_no + 1
            if now >= next_report:
                wall = time.time()
                report = b""
                if self.audio:
                    report += rtp.sender_report(
                        offer.audio_ssrc, _ntp(wall), a_ts0 + a_n * 960, a_sent, a_octets
                    )
                for layer in layers if self.video else ():
                    report += rtp.sender_report(
                        layer.ssrc, _ntp(wall), layer.ts0 + v_n * 3000, layer.sent, layer.octets
                    )
                link.send_rtcp(report)
                next_report += REPORT_EVERY
            self.sent_packets = a_sent + sum(layer.sent for layer in layers)
            wake = min(
                start + a_n * 0.02 if self.audio else 1e18,
                start + v_n / media.FPS if self.video else 1e18,
            )
            await asyncio.sleep(max(0.0, wake - loop.time()))

    async def close(self) -> None:
        if self.link is not None:
            self.link.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        await super().close()


class Subscriber(_Member):
    """Takes every track the server offers; counts, times and reports."""

    def __init__(
        self,
        ws_url: str,
        token: str,
        http: aiohttp.ClientSession,
        label: str,
        certificate: Certificate,
        *,
        sampled: bool = True,
    ) -> None:
        super().__init__(ws_url, token, http, label, certificate)
        self.sampled = sampled
        #: The region (``--region``) whose replicas it joined through, or "".
        self.region = ""
        self.link: Link | None = None
        self.tracks: dict[int, TrackStats] = {}
        self.first_media_at = 0.0
        self._ice: tuple[str, str] | None = None
        self._kinds: dict[int, str] = {}
        self._rtx: dict[int, int] = {}
        #: The last sender report of each SSRC: its NTP time's middle 32 bits
        #: and when it came (LSR and DLSR, RFC 3550 §6.4.1).
        self._sr: dict[int, tuple[int, float]] = {}
        self._ssrc = int.from_bytes(os.urandom(4), "big") | 1
        #: Transport-wide CC, once the server's offer numbers packets.
        self._feedback: TransportFeedback | None = None
        self._report: asyncio.Task[None] | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._answering: asyncio.Task[None] | None = None
        self._awaiting = False

    async def _frame(self, frame: dict[str, Any]) -> None:
        await super()._frame(frame)
        if frame["type"] == "offer":
            # Answered from a task of its own: the answer's ``ok`` is read by
            # the reader this runs in. One at a time, in order.
            previous = self._answering
            self._answering = asyncio.create_task(
                self._answer(str(frame["sdp"]), previous), name=f"answer {self.label}"
            )

    async def _answer(self, offer_sdp: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        try:
            await self._answer_now(offer_sdp)
        except (RequestFailed, ConnectionClosed, TimeoutError, ValueError) as exc:
            self.errors.append(f"signalling:answer: {exc}")

    async def _answer_now(self, offer_sdp: str) -> None:
        desc = sdp.read(offer_sdp)
        for section in desc.sections:
            self._rtx.update(section.rtx_of)
            for ssrc in section.ssrcs:
                if ssrc in section.rtx_ssrcs:
                    continue  # a retransmission repairs a track; not one itself
                self._kinds[ssrc] = section.kind
            twcc = section.extensions.get(sdp.TWCC_URI)
            if twcc is not None and self._feedback is None:
                self._feedback = TransportFeedback(twcc, self._ssrc)
        answer = sdp.answer_for(desc, offer_sdp, self.certificate.fingerprint, self._ice)
        await self.socket.request("answer", {"sdp": answer.sdp})
        if self.link is None:
            self._ice = (answer.ufrag, answer.pwd)
            self.link = Link(
                self.certificate,
                desc.remote,
                ufrag=answer.ufrag,
                pwd=answer.pwd,
                on_rtp=self._rtp if self.sampled else self._count,
                on_rtcp=self._rtcp,
                on_lost=lambda why: self._media_lost(f"link lost: {why}", ask=True),
                unprotect_rtp=self.sampled,
            )
            self._connecting = asyncio.create_task(self._connect(), name=f"link {self.label}")

    async def _connect(self) -> None:
        assert self.link is not None
        try:
            await self.link.connect()
        except LinkFailed as exc:
            self.errors.append(f"media:link: {exc}")
            return
        self._report = asyncio.create_task(self._reports(), name=f"rr {self.label}")

    def _drop_media(self) -> None:
        # The server offers what we receive on a new subscribe connection:
        # answered (in _answer) from a new link with new ICE credentials.
        for task in (self._report, self._connecting):
            if task is not None:
                task.cancel()
        if self.link is not None:
            self.link.close()
        self.link, self._ice = None, None
        if self._feedback is not None:
            self._feedback.restart()
        self._awaiting = True

    async def _media_again(self, ask: bool) -> None:
        if ask:
            try:
                await self.socket.request("reconnect_media", {})
            except (RequestFailed, ConnectionClosed, TimeoutError) as exc:
                self.errors.append(f"media:reconnect: {exc}")

    def _track(self, ssrc: int, arrived: float) -> TrackStats | None:
        """The track of ``ssrc``, made at its first packet; None for an SSRC
        the offer did not name as a track (RTX, a probe)."""
        kind = self._kinds.get(ssrc)
        if kind is None:
            repaired = self.tracks.get(self._rtx.get(ssrc, -1))
            if repaired is not None:
                repaired.repaired += 1  # a retransmission, asked or not
            return None
        rate = 48_000 if kind == "audio" else 90_000
        track = self.tracks[ssrc] = TrackStats(kind, ssrc, self.sampled, rate, first_at=arrived)
        if not self.first_media_at:
            self.first_media_at = arrived
        return track

    def _take(
        self, ssrc: int, seq: int, timestamp: int, arrived: float, size: int
    ) -> TrackStats | None:
        """One packet's header, whichever kind of subscriber read it: media is
        back, its track counts it, and a gap is asked again. Its track, or
        None for an SSRC that is none's."""
        if self._awaiting:
            self._awaiting = False
            self._media_back(arrived)
        track = self.tracks.get(ssrc) or self._track(ssrc, arrived)
        if track is None:
            return None
        gap = track.arrived(seq, timestamp, arrived, size)
        if gap or track.pli_want >= 0:
            self._repair(track, seq, gap, arrived)
        return track

    def _rtp(self, data: bytes, arrived: float) -> None:
        """A sampled subscriber's packet, unprotected: the header and the stamp."""
        head = rtp.read_header(data)
        if head is None:
            return
        if self._feedback is not None:
            self._arrival(self._feedback, data, head.ssrc, arrived)
        track = self._take(head.ssrc, head.seq, head.timestamp, arrived, len(data))
        if track is None:
            return
        stamp = media.read_stamp(data[head.start : head.end], track.kind == "audio")
        if stamp is not None:
            if track.stamped and stamp.index == track.last_index:
                # A simulcast switch forwards one frame from both layers (the
                # old run's, then the new layer's keyframe): one stamp, once.
                return
            if track.stamped == 0 or stamp.index < track.first_index:
                track.first_index = stamp.index
            track.last_index = max(track.last_index, stamp.index)
            track.stamped += 1
            track.latencies_ms.append(arrived * 1e3 - stamp.sent_ns / 1e6)

    def _count(self, data: bytes, arrived: float) -> None:
        """Any other subscriber's packet, still protected: its clear header only."""
        if len(data) < 12:
            return
        _, _, seq, timestamp, ssrc = rtp.FIXED.unpack_from(data)
        if self._feedback is not None:
            self._arrival(self._feedback, data, ssrc, arrived)
        link = self.link
        self._take(ssrc, seq, timestamp, arrived, len(data) - (link.tag_len if link else 0))

    def _arrival(self, feedback: TransportFeedback, data: bytes, ssrc: int, at: float) -> None:
        packet = feedback.arrived(data, ssrc, at)
        if packet is not None and self.link is not None:
            self.link.send_rtcp(packet)

    @property
    def feedbacks(self) -> int:
        """Transport-wide CC feedback packets sent."""
        return self._feedback.sent if self._feedback is not None else 0

    def _repair(self, track: TrackStats, seq: int, gap: int, at: float) -> None:
        """As a browser's video receiver: a gap is asked again at once (NACK,
        up to :data:`NACK_MOST` of its latest); a NACK its retransmissions
        have not made whole within :data:`PLI_AFTER` seconds asks for a
        keyframe (PLI), at most one a second. Audio is never asked again."""
        link = self.link
        if link is None or track.kind != "video":
            return
        if gap:
            seqs = [(seq - i) & 0xFFFF for i in range(min(gap, NACK_MOST), 0, -1)]
            link.send_rtcp(rtp.nack(self._ssrc, track.ssrc, seqs))
            track.nacked += len(seqs)
            if track.pli_want < 0:
                track.pli_want, track.pli_due = track.repaired + len(seqs), at + PLI_AFTER
        elif at >= track.pli_due:
            if track.repaired < track.pli_want and at - track.last_pli >= 1.0:
                link.send_rtcp(rtp.pli(self._ssrc, track.ssrc))
                track.plis += 1
                track.last_pli = at
            track.pli_want = -1

    def _rtcp(self, data: bytes) -> None:
        for pt, _, packet in rtp.rtcp_packets(data):
            if pt == 200 and len(packet) >= 16:  # SR: the SSRC, then NTP time
                ssrc, ntp = struct.unpack_from(">IQ", packet, 4)
                self._sr[ssrc] = ((ntp >> 16) & 0xFFFFFFFF, time.monotonic())

    async def _reports(self) -> None:
        link = self.link
        assert link is not None
        while not link.closed:
            await asyncio.sleep(REPORT_EVERY)
            now = time.monotonic()
            blocks = []
            for t in self.tracks.values():
                expected, received = t.sequence_expected, t.packets
                (was_expected, was_received), t.reported = t.reported, (expected, received)
                interval = expected - was_expected
                lost_now = interval - (received - was_received)
                fraction = min(255, lost_now * 256 // interval) if interval > 0 < lost_now else 0
                lsr, at = self._sr.get(t.ssrc, (0, now))
                dlsr = int((now - at) * 65536) if lsr else 0
                blocks.append(
                    (t.ssrc, fraction, expected - received, t.cycles + t.highest_seq,
                     int(t.jitter), lsr, dlsr)
                )  # fmt: skip
            if blocks:
                link.send_rtcp(rtp.receiver_report(self._ssrc, blocks))

    async def close(self) -> None:
        for task in (self._report, self._connecting, self._answering):
            if task is not None:
                task.cancel()
                await asyncio.wait({task})
        if self.link is not None:
            self.link.close()
        await super().close()
