"""The TURN data path (RFC 8656 sections 10 and 12): Send indications from
clients relayed to their peers, Data indications built for peers without a
channel, and the bandwidth budget every relayed datagram is charged to.

ChannelData, and peer-to-client data, never reach the core: the asyncio
adapter and the native leaf relay them from the lookup tables of
:class:`turn.allocation.Allocation`. What they ask of the core per datagram
is here: :meth:`DataPath.send_indication` for a Send indication,
:meth:`DataPath.data_indication` for a datagram from a peer without a
channel, :meth:`DataPath.spend` for any datagram of a capped allocation.
The budget's period is a timer, like every deadline of the core.
"""

from __future__ import annotations

import binascii
import struct
from collections.abc import Hashable
from typing import Any

from rtc.errors import StunParseError
from rtc.stun import (
    COOKIE,
    COOKIE_BYTES,
    DATA,
    DATA_ATTR,
    FINGERPRINT,
    FINGERPRINT_XOR,
    INDICATION,
    KNOWN_TYPES,
    SEND,
    U32,
    XOR_PEER_ADDRESS,
    StunMessage,
    message_type,
    unxor_address,
    xor_address,
)
from turn import metrics
from turn.allocation import Address, Allocation, ClientSide
from turn.policy import PeerPolicy
from turn.timers import Timer, Timers

__all__ = ["SEND_INDICATION_TYPE", "TICK", "DataPath"]

TICK = 1.0  # bandwidth budget period

_DATA_IND_TYPE = message_type(DATA, INDICATION)
_DATA_HDR = struct.Struct("!HHI12s")
_PADS = (b"", b"\x00", b"\x00\x00", b"\x00\x00\x00")
_NO_PERMISSION = metrics.MALFORMED.labels("no_permission")
SEND_INDICATION_TYPE = message_type(SEND, INDICATION).to_bytes(2, "big")
_TLV = struct.Struct("!HH")


class DataPath:
    """Send and Data indications and the bandwidth budget; see the module docstring."""

    def __init__(self, policy: PeerPolicy, max_bps: int, timers: Timers) -> None:
        self.policy = policy
        self.timers = timers
        self.epoch = 0
        self.epoch_budget = max_bps // 8 if max_bps else 0
        self._tick_armed = False
        self.dropped = 0
        self._xpa_cache: dict[bytes, Address] = {}

    def limit(self, alloc: Allocation, now: float) -> None:
        """Put a new allocation under the bandwidth budget, if there is one."""
        if self.epoch_budget:
            alloc.limited = True
            if not self._tick_armed:
                self._tick_armed = True
                self.timers.at(now + TICK, Timer.TICK)

    def tick(self, now: float, busy: bool) -> None:
        """A new budget period: every capped allocation may spend again.

        The period runs on while there are allocations (``busy``).
        """
        self._tick_armed = False
        self.epoch += 1
        if busy and self.epoch_budget:
            self._tick_armed = True
            self.timers.at(now + TICK, Timer.TICK)

    def handle_send_indication(
        self, side: ClientSide, client: Hashable, msg: StunMessage, now: float
    ) -> None:
        """Send indication (RFC 8656 section 10.2): relay DATA to the peer, or drop silently.

        The full checks, on a parsed message, for what :meth:`send_indication`
        leaves to :meth:`turn.core.TurnCore.handle`.
        """
        alloc = side.allocations.get(client)
        raw_peer = msg.get(XOR_PEER_ADDRESS)
        payload = msg.get(DATA_ATTR)
        if any(a.type < 0x8000 and a.type not in KNOWN_TYPES for a in msg.attributes):
            # RFC 8489 section 6.3.2: indications with unknown
            # comprehension-required attributes are dropped.
            metrics.MALFORMED.labels("unknown_attribute").inc()
            return
        if alloc is None or raw_peer is None or payload is None:
            metrics.MALFORMED.labels("send_indication").inc()
            return
        try:
            peer = unxor_address(raw_peer, msg.transaction_id)
        except StunParseError:
            metrics.MALFORMED.labels("send_indication").inc()
            return
        if peer[0] not in alloc.permissions:
            _NO_PERMISSION.inc()
            return
        if not self.policy.allowed(peer[0]):
            metrics.PEER_DENIED.labels("Send").inc()
            return
        if alloc.limited and not self.spend(alloc, len(payload)):
            return
        alloc.to_peer_pkts += 1
        alloc.to_peer_bytes += len(payload)
        alloc.relay.sendto(payload, peer)

    def spend(self, alloc: Allocation, n: int) -> bool:
        """Charge ``n`` bytes to the allocation's bandwidth budget; False means drop."""
        if alloc.epoch != self.epoch:
            alloc.epoch = self.epoch
            alloc.budget = self.epoch_budget
        alloc.budget -= n
        if alloc.budget < 0:
            self.dropped += 1
            return False
        return True

    def data_indication(self, alloc: Allocation, peer: tuple[Any, ...], payload: bytes) -> bytes:
        """A Data indication (RFC 8656 section 10.3) for a peer without a channel.

        The XOR-PEER-ADDRESS TLV is cached per peer: encoding an address
        through ``ipaddress`` costs more than the rest of the packet.
        """
        cache = alloc.data_xpa
        xpa = cache.get(peer)
        if xpa is None:
            raw = xor_address((peer[0], peer[1]), alloc.data_txid)
            if len(cache) >= 1024:
                cache.clear()
            xpa = cache[peer] = _TLV.pack(XOR_PEER_ADDRESS, len(raw)) + raw
        n = len(payload)
        pad = -n & 3
        return b"".join(
            (
                _DATA_HDR.pack(_DATA_IND_TYPE, len(xpa) + 4 + n + pad, COOKIE, alloc.data_txid),
                xpa,
                _TLV.pack(DATA_ATTR, n),
                payload,
                _PADS[pad],
            )
        )

    def send_indication(self, side: ClientSide, client: Hashable, data: bytes) -> bool:
        """Relay a well-formed Send indication without building a :class:`StunMessage`.

        The common case of RFC 8656 section 10.2 on the hot path: returns False
        for anything unusual (FINGERPRINT, unknown attributes, bad framing, no
        allocation) so :meth:`turn.core.TurnCore.handle` does the full checks and
        counts the drop.
        """
        n = len(data)
        if n < 20 or data[4:8] != COOKIE_BYTES or ((data[2] << 8) | data[3]) + 20 != n:
            return False
        alloc = side.allocations.get(client)
        if alloc is None:
            return False
        pos = 20
        xpa = payload = None
        while pos + 4 <= n:
            atype, alen = _TLV.unpack_from(data, pos)
            start = pos + 4
            end = start + alen
            if end > n:
                return False
            if atype == XOR_PEER_ADDRESS:
                if xpa is None:
                    xpa = data[start:end]
            elif atype == DATA_ATTR:
                if payload is None:
                    payload = data[start:end]
            elif atype == FINGERPRINT:
                # Must be last and right (RFC 8489 section 14.7); CRC32 is C-fast.
                if end != n or alen != 4:
                    return False
                crc = (binascii.crc32(data[:pos]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
                if crc != U32.unpack_from(data, start)[0]:
                    return False
            elif atype < 0x8000 and atype not in KNOWN_TYPES:
                return False
            pos = end + (-alen & 3)
        if pos != n or xpa is None or payload is None:
            return False
        peer = self._xpa_cache.get(xpa) if len(xpa) == 8 else None
        if peer is None:
            try:
                peer = unxor_address(xpa, data[8:20])
            except StunParseError:
                return False
            if len(xpa) == 8:
                # IPv4 XOR addresses do not depend on the transaction id.
                if len(self._xpa_cache) >= 65536:
                    self._xpa_cache.clear()
                self._xpa_cache[xpa] = peer
        if peer[0] not in alloc.permissions:
            _NO_PERMISSION.inc()
            return True
        if not self.policy.allowed(peer[0]):
            metrics.PEER_DENIED.labels("Send").inc()
            return True
        if alloc.limited and not self.spend(alloc, len(payload)):
            return True
        alloc.to_peer_pkts += 1
        alloc.to_peer_bytes += len(payload)
        alloc.relay.sendto(payload, peer)
        return True
