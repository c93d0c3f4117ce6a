"""wadud_client.network: receive buffers for a process of many clients."""

from __future__ import annotations

import socket

import aioice

from wadud_client.network import widen_receive_buffers


async def test_sockets_gathered_after_widening_get_the_buffer_and_undo_ends_it() -> None:
    async def gathered() -> list[int]:
        connection = aioice.Connection(ice_controlling=True)
        try:
            await connection.gather_candidates()
            return [
                p.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                for p in connection._protocols
            ]
        finally:
            await connection.close()

    undo = widen_receive_buffers(24 << 20)
    try:
        wide = await gathered()
    finally:
        undo()
    # The kernel reports twice what was set (its own bookkeeping).
    assert wide and all(size >= 24 << 20 for size in wide), wide
    # Undone: what the suite's own widening (tests/conftest.py, 8 MB) gives.
    assert all(size < 24 << 20 for size in await gathered())
