"""A call participant built on GStreamer's webrtcbin, written from
docs/protocol.md ("Calls (signalling)") alone: a client we did not write
the media stack of, with webrtcbin's defaults (an RSA-2048 DTLS certificate,
offers with ``a=setup:actpass``).

Run by the system Python (``/usr/bin/python3``, which has ``gi``), not the
project's venv: tests/signalling/test_gstreamer.py starts it. It joins with
a room token, publishes a test tone (Opus) and a test picture (VP8, 320x240
at 15 fps) on a publish webrtcbin, answers the server's offers on a
subscribe webrtcbin, decodes what arrives and counts it: decoded video
frames and decoded audio buffers, after the decoder (fakesink handoffs).

It writes JSON lines to stdout: ``{"event": "joined", "participant": ID}``,
then every 0.5 s ``{"event": "counts", ...}`` with what it has decoded, the
state of both peer connections and any ``error`` frames the server sent. It
leaves the call when its stdin closes (or after ``--max-seconds``) and ends
with a last ``counts`` line.

By hand: /usr/bin/python3 tests/signalling/gst_peer.py --url ws://HOST/ws
--token ROOM_TOKEN (and ``--local-address 127.0.0.1`` where loopback is the
only interface: libnice gathers no loopback candidate by itself).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import threading
import time
import traceback
from typing import Any

import gi
import websockets

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import Gst, GstSdp, GstWebRTC  # noqa: E402

SENDERS = """
webrtcbin name=pub bundle-policy=max-bundle
webrtcbin name=sub bundle-policy=max-bundle
videotestsrc is-live=true pattern=ball
  ! video/x-raw,width=320,height=240,framerate=15/1
  ! vp8enc deadline=1 target-bitrate=300000 keyframe-max-dist=15 error-resilient=partitions
  ! rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96 ! pub.
audiotestsrc is-live=true wave=sine freq=440
  ! audioconvert ! audioresample ! opusenc
  ! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! pub.
"""


def out(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def mids(sdp: str) -> list[tuple[str, str]]:
    """(kind, mid) of each m= section, in order."""
    sections: list[tuple[str, str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append((line[2:].split()[0], ""))
        elif line.startswith("a=mid:") and sections:
            sections[-1] = (sections[-1][0], line[6:].strip())
    return sections


def failed(task: asyncio.Task[None]) -> None:
    """Say why a task of the peer died (a bug here, or a frame it did not expect)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        traceback.print_exception(exc)
        out(event="failed", error=repr(exc))


class Peer:
    """One participant: the signalling socket and the two webrtcbins."""

    def __init__(self, url: str, token: str, addresses: list[str]) -> None:
        self.url, self.token = url, token
        self.loop = asyncio.get_running_loop()
        self.ids = itertools.count(1)
        self.ws: Any = None
        self.counts = {"video_frames": 0, "audio_buffers": 0}
        self.count_lock = threading.Lock()
        self.errors: list[dict[str, Any]] = []
        self.published: list[str] = []
        self.frames_seen: dict[str, int] = {}
        self.pipeline = Gst.parse_launch(SENDERS)
        self.pub = self.pipeline.get_by_name("pub")
        self.sub = self.pipeline.get_by_name("sub")
        # Held for the peer's life: PyGObject drops a reference it never took
        # when the wrapper goes, and webrtcbin's agent would go with it.
        self.ice_agents = [w.get_property("ice-agent") for w in (self.pub, self.sub)]
        for agent in self.ice_agents:
            # libnice leaves loopback out of its host candidates; a test in a
            # loopback-only namespace names 127.0.0.1 here.
            for address in addresses:
                agent.emit("add-local-ip-address", address)
        self.pub_mids: list[tuple[str, str]] = []
        self.sub_mids: list[tuple[str, str]] = []
        self.pub.connect("on-ice-candidate", self._candidate, "publish")
        self.sub.connect("on-ice-candidate", self._candidate, "subscribe")
        self.sub.connect("pad-added", self._incoming)
        # Answers to the server's offers go one at a time, in order.
        self.offers: asyncio.Queue[str] = asyncio.Queue()

    # -- signalling -------------------------------------------------------

    async def send(self, frame: dict[str, Any]) -> None:
        frame = {"v": 1, "id": str(next(self.ids)), **frame}
        await self.ws.send(json.dumps(frame))

    async def run(self, max_seconds: float) -> None:
        async with websockets.connect(self.url, max_size=None) as ws:
            self.ws = ws
            await self.send({"type": "join", "token": self.token})
            reader = asyncio.create_task(self._read())
            answering = asyncio.create_task(self._answer_offers())
            for task in (reader, answering):
                task.add_done_callback(failed)
            reporting = asyncio.create_task(self._report())
            try:
                await asyncio.wait_for(self._until_stdin_closes(), max_seconds)
            except TimeoutError:
                pass
            finally:
                for task in (reporting, answering):
                    task.cancel()
                with contextlib.suppress(Exception):
                    await self.send({"type": "leave"})
                    await asyncio.wait_for(reader, 3)
                reader.cancel()
                self.pipeline.set_state(Gst.State.NULL)
                self._report_once()

    async def _until_stdin_closes(self) -> None:
        reader = asyncio.StreamReader()
        await self.loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while await reader.read(4096):
            pass

    async def _read(self) -> None:
        async for raw in self.ws:
            frame = json.loads(raw)
            kind = frame.get("type")
            self.frames_seen[kind] = self.frames_seen.get(kind, 0) + 1
            if kind == "joined" and "ref" in frame:
                out(event="joined", participant=frame["participant"]["id"])
                await self._publish()
            elif kind == "offer":
                await self.offers.put(frame["sdp"])
            elif kind == "published":
                self.published = sorted(t["kind"] for t in frame["tracks"])
                await self._set_remote(self.pub, "answer", frame["sdp"])
            elif kind == "ping":
                await self.send({"type": "pong"})
            elif kind == "error":
                self.errors.append(frame)
                out(event="error", frame=frame)

    # -- publishing -------------------------------------------------------

    async def _publish(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)
        # What we publish only goes out: sendonly, as the protocol asks.
        for pad in self.pub.sinkpads:
            transceiver = pad.get_property("transceiver")
            transceiver.props.direction = GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY
        # webrtcbin writes a section's a=ssrc from its pad's caps, which come
        # with the first encoded buffer; without a=ssrc (and no simulcast)
        # the server publishes nothing for a section, so wait for them.
        deadline = time.monotonic() + 10
        while not all(
            (caps := pad.get_current_caps()) is not None and caps.get_structure(0).has_field("ssrc")
            for pad in self.pub.sinkpads
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the encoders gave no caps with an SSRC in 10 s")
            await asyncio.sleep(0.05)
        offer = await self._promise(self.pub, "create-offer", "offer")
        await self._promise(self.pub, "set-local-description", None, offer)
        sdp = offer.sdp.as_text()
        self.pub_mids = mids(sdp)
        sources = {
            mid: "camera" if kind == "video" else "microphone" for kind, mid in self.pub_mids
        }
        await self.send({"type": "publish", "sdp": sdp, "sources": sources})

    # -- subscribing ------------------------------------------------------

    async def _answer_offers(self) -> None:
        while True:
            sdp = await self.offers.get()
            await self._set_remote(self.sub, "offer", sdp)
            self.sub_mids = mids(sdp)
            answer = await self._promise(self.sub, "create-answer", "answer")
            await self._promise(self.sub, "set-local-description", None, answer)
            await self.send({"type": "answer", "sdp": answer.sdp.as_text()})

    def _incoming(self, webrtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        decode = Gst.ElementFactory.make("decodebin")
        decode.connect("pad-added", self._decoded)
        self.pipeline.add(decode)
        decode.sync_state_with_parent()
        pad.link(decode.get_static_pad("sink"))

    def _decoded(self, decode: Gst.Element, pad: Gst.Pad) -> None:
        caps = pad.get_current_caps() or pad.query_caps(None)
        name = caps.get_structure(0).get_name()
        key = "video_frames" if name.startswith("video/") else "audio_buffers"
        queue = Gst.ElementFactory.make("queue")
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("sync", False)
        sink.set_property("signal-handoffs", True)
        sink.connect("handoff", self._count, key)
        for element in (queue, sink):
            self.pipeline.add(element)
            element.sync_state_with_parent()
        queue.link(sink)
        pad.link(queue.get_static_pad("sink"))

    def _count(self, sink: Gst.Element, buffer: Gst.Buffer, pad: Gst.Pad, key: str) -> None:
        with self.count_lock:
            self.counts[key] += 1

    # -- both -------------------------------------------------------------

    def _candidate(self, webrtc: Gst.Element, index: int, candidate: str, transport: str) -> None:
        sections = self.pub_mids if transport == "publish" else self.sub_mids
        init: dict[str, Any] = {"candidate": candidate, "sdpMLineIndex": index}
        if index < len(sections):
            init["sdpMid"] = sections[index][1]
        frame = {"type": "candidate", "transport": transport, "candidate": init}
        asyncio.run_coroutine_threadsafe(self.send(frame), self.loop)

    async def _set_remote(self, webrtc: Gst.Element, kind: str, sdp: str) -> None:
        _, message = GstSdp.SDPMessage.new_from_text(sdp)
        sdp_type = (
            GstWebRTC.WebRTCSDPType.OFFER if kind == "offer" else GstWebRTC.WebRTCSDPType.ANSWER
        )
        description = GstWebRTC.WebRTCSessionDescription.new(sdp_type, message)
        await self._promise(webrtc, "set-remote-description", None, description)

    async def _promise(
        self, webrtc: Gst.Element, signal: str, field: str | None, *args: Any
    ) -> Any:
        """Emit ``signal`` with a promise and wait for it off the event loop."""
        promise = Gst.Promise.new()
        if signal.startswith("create-"):
            webrtc.emit(signal, None, promise)
        else:
            webrtc.emit(signal, *args, promise)
        await self.loop.run_in_executor(None, promise.wait)
        if field is None:
            return None
        # The description lives in the reply: hold the reply while copying it
        # (a chained call lets the reply go first, and the copy finds no SDP).
        reply = promise.get_reply()
        description = reply.get_value(field)
        return description.copy()

    async def _report(self) -> None:
        while True:
            self._report_once()
            await asyncio.sleep(0.5)

    def _report_once(self) -> None:
        with self.count_lock:
            counts = dict(self.counts)
        out(
            event="counts",
            at=round(time.monotonic(), 3),
            **counts,
            publish=self.pub.get_property("connection-state").value_nick,
            subscribe=self.sub.get_property("connection-state").value_nick,
            published=self.published,
            errors=self.errors,
            frames=self.frames_seen,
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the signalling WebSocket, ws://HOST/ws")
    parser.add_argument("--token", required=True, help="a room token")
    parser.add_argument("--max-seconds", type=float, default=120)
    parser.add_argument(
        "--local-address",
        action="append",
        default=[],
        help="an address to gather host candidates on (libnice skips loopback)",
    )
    args = parser.parse_args()
    Gst.init(None)
    await Peer(args.url, args.token, args.local_address).run(args.max_seconds)


if __name__ == "__main__":
    asyncio.run(main())
