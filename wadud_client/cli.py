"""``python -m wadud_client``: join a call as a headless participant that
publishes a synthetic test pattern and prints what happens, one JSON object
a line. ``--url`` may be a join link printed by ``wadud token``, which
carries the token."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from wadud_client.call import CallClient
from wadud_client.errors import CallError, RequestFailed
from wadud_client.network import allow_loopback_candidates, ws_url
from wadud_client.sources import TestPatternVideo, ToneAudio

__all__ = ["main"]


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def _run(args: argparse.Namespace) -> int:
    url, token, _ = ws_url(args.url)
    token = args.token or token
    if not token:
        print("no token: give --token or a join link with ?token=", file=sys.stderr)
        return 2
    if _is_loopback(url):
        allow_loopback_candidates()
    client = CallClient(url, token, room=args.room, label=args.name or "cli")

    def show(what: str, **data: Any) -> None:
        print(json.dumps({"t": round(time.monotonic(), 3), "what": what, **data}), flush=True)

    try:
        try:
            first = await client.join()
        except RequestFailed as exc:
            show("refused", code=exc.code, message=exc.message)
            return 1
        show(first["type"], participant=client.participant, tracks=list(client.room_tracks))
        if client.state == "waiting":
            await client.wait_admitted(within=args.duration or 3600)
            show("admitted")
        tracks: dict[str, Any] = {}
        if not args.no_audio:
            tracks["microphone"] = ToneAudio()
        if not args.no_video:
            tracks["camera"] = TestPatternVideo(args.width, args.height, args.fps)
        if tracks and client.participant.get("grants", {}).get("publish", True):
            show("published", tracks=await client.publish(tracks))
        loop = asyncio.get_running_loop()
        end = loop.time() + args.duration if args.duration else math.inf
        seen = 0
        while client.state != "closed" and loop.time() < end:
            await asyncio.sleep(min(args.report, max(0.0, end - loop.time())))
            if client.state == "disconnected":
                try:
                    await client.resume()
                    show("resumed")
                except (CallError, OSError, aiohttp.ClientError, TimeoutError) as exc:
                    show("resume-failed", error=str(exc))
            for event in client.history[seen:]:
                if event.type not in ("ping", "pong"):
                    show("event", frame=event.data)
            seen = len(client.history)
            show(
                "receiving",
                tracks={
                    r.mid: {"from": r.participant, "kind": r.kind, "frames": r.frames}
                    for r in client.received.values()
                },
            )
        if client.state == "closed":
            show("closed", code=client.close_code)
            return 1
        await client.leave()
        return 0
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m wadud_client",
        description="Join a Wadud call as a headless participant and publish a test pattern.",
    )
    parser.add_argument("--url", required=True, help="server URL, /ws URL or join link")
    parser.add_argument("--token", help="room token (else the join link's ?token=)")
    parser.add_argument("--room", help="room the token must be for (?room=)")
    parser.add_argument("--name", help="label in the output")
    parser.add_argument("--duration", type=float, default=0, help="seconds, 0 = until stopped")
    parser.add_argument("--report", type=float, default=2.0, help="seconds between reports")
    parser.add_argument("--no-audio", action="store_true")
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=float, default=15.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        return asyncio.run(_run(args))
    except KeyboardInterrupt:
        return 130
