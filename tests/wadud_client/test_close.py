"""wadud_client.media.close_connection: a bounded close that does not break
a close already under way."""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

from wadud_client.media import close_connection


async def test_a_close_given_up_on_leaves_the_close_under_way_whole() -> None:
    # aiortc closes a failed connection by itself; ours comes second, waits
    # on the first's future and gives up at once. Unshielded, giving up
    # cancelled that future and the first close failed on it.
    pc = RTCPeerConnection()
    pc.addTransceiver("audio")
    await pc.setLocalDescription(await pc.createOffer())
    first = asyncio.create_task(pc.close())
    await asyncio.sleep(0)
    await close_connection(pc, within=0)
    await asyncio.wait({first}, timeout=10)
    assert first.done() and first.exception() is None
    assert pc.connectionState == "closed"
