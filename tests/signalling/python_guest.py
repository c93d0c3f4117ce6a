"""One Python-client participant (wadud_client, aiortc) in its own process,
for a browser test's driver that needs several beside its pages.

Each aiortc participant decodes every track it receives, a thread and a
share of the interpreter per track; five of them in the driver's process
took the GIL from the server beside them on a busy machine until consent
checks went unanswered. In a process of its own each is scheduled by the
kernel as the server and the browsers are.

``python -m tests.signalling.python_guest --url WS [--token T] --name NAME
[--publish] [--try-publish]`` joins with the token (else the first line of
its standard input, so that it can be started, and pay for its imports,
before the token exists) and prints one JSON object a line:

- ``{"state": "waiting"|"joined", "participant": ID}`` when ``join`` is answered;
- ``{"in": true}`` once in the room (and publishing, with ``--publish``);
- ``{"refused": CODE}`` with ``--try-publish``: a hand-written offer's answer;
- ``{"receiving": {ID: [KIND, ...]}, "tracks_by": [ID, ...]}`` whenever it
  changes: the kinds whose every received track from ID has decoded a
  frame, and whose tracks the room lists.

It leaves the call and exits when its standard input closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from typing import Any

from wadud_client.call import CallClient
from wadud_client.errors import RequestFailed
from wadud_client.network import allow_loopback_candidates, widen_receive_buffers
from wadud_client.sources import TestPatternVideo, ToneAudio


def _say(**what: Any) -> None:
    print(json.dumps(what), flush=True)


def _receiving(client: CallClient) -> dict[str, list[str]]:
    decoded: dict[tuple[str, str], bool] = {}
    for r in client.received.values():
        if r.active and r.participant:
            key = (r.participant, r.kind)
            decoded[key] = decoded.get(key, True) and r.frames > 0
    got: dict[str, list[str]] = {}
    for (who, kind), yes in sorted(decoded.items()):
        if yes:
            got.setdefault(who, []).append(kind)
    return got


async def _run(args: argparse.Namespace) -> None:
    allow_loopback_candidates()
    widen_receive_buffers()  # its sockets read late on a starved machine, not lost
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    token = args.token or (await stdin.readline()).decode().strip()
    client = CallClient(args.url, token, label=args.name)
    closed = asyncio.create_task(stdin.read())
    try:
        await client.join()
        _say(state=client.state, participant=client.participant_id)
        await client.wait_until(lambda: client.state == "joined", within=60)
        if args.publish:
            await client.publish(
                {"microphone": ToneAudio(), "camera": TestPatternVideo(160, 120, fps=10)}
            )
        _say(**{"in": True})
        if args.try_publish:
            from tests.signalling.test_roles import publish_offer

            try:
                await client.request(
                    "publish", sdp=publish_offer("video", "0"), sources={"0": "camera"}
                )
                _say(refused="accepted")
            except RequestFailed as exc:
                _say(refused=exc.code)
        last: dict[str, Any] = {}

        def seen() -> dict[str, Any]:
            return {
                "receiving": _receiving(client),
                "tracks_by": sorted({str(t["participant"]) for t in client.room_tracks.values()}),
            }

        closed.add_done_callback(lambda _: client.changes.notify())
        while not closed.done():
            # Woken by the client's own changes (a first frame, a track, a
            # frame from the server) or stdin's end.
            with contextlib.suppress(TimeoutError):
                await client.wait_until(lambda was=last: closed.done() or seen() != was, within=60)
            now = seen()
            if now != last:
                last = now
                _say(**last)
        await client.leave()
    finally:
        closed.cancel()
        await client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", help="else the first line of stdin")
    parser.add_argument("--name", required=True)
    parser.add_argument("--publish", action="store_true")
    parser.add_argument("--try-publish", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import uvloop

    uvloop.run(_run(args))


if __name__ == "__main__":
    main()
