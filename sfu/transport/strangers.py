"""Whose is SRTP from an address no transport validated: a NAT rebinding, or a forgery.

A phone's carrier NAT may give it a new port in the middle of a call; its
next packets then come from an address the worker has never seen. The
connected transports that know the packet's SSRC (a publisher's media SSRC,
or the sender SSRC of a peer's earlier SRTCP) try their keys, and the first
that authenticates it is the packet's transport: the worker moves that
transport's path to the new address and uses the packet. libsrtp checks the
tag before it touches the replay window, so a wrong key's attempt changes
nothing. The search is bounded per second, and per packet, so a flood of
forged packets costs little.

:class:`StrangerSearch` finds the transport and returns it with the packet
unprotected; the worker does the rest.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Literal, Protocol, TypeVar

import pylibsrtp

__all__ = ["MAX_TRIES", "PER_SECOND", "RTCP_SSRCS", "Keyed", "StrangerSearch"]

PER_SECOND = 200
"""Packets from unknown addresses that may search per second: a NAT
rebinding needs one, a flood of forgeries gets the rest dropped unsearched."""
MAX_TRIES = 16
"""At most this many transports try to authenticate one packet. Media SSRCs
are random, but every Chromium subscriber sends its receiver reports from
SSRC 1, so SRTCP may have several candidates."""
RTCP_SSRCS = 8
"""Sender SSRCs of a transport's SRTCP the worker remembers (``rtcp_ssrcs``),
for the search of an SRTCP packet from a stranger."""

_SSRC = struct.Struct("!I")
_P = TypeVar("_P", bound="Keyed")
_SRTP_ERRORS = (pylibsrtp.Error, ValueError, TypeError)


class Keyed(Protocol):
    """What the search reads of a transport (:class:`sfu.rooms.records.Peer` has it)."""

    @property
    def unprotect(self) -> object | None: ...

    @property
    def unprotect_rtcp(self) -> object | None: ...

    @property
    def recv_stats(self) -> Iterable[int]: ...

    @property
    def rtcp_ssrcs(self) -> Iterable[int]: ...


class StrangerSearch:
    """The transport whose keys authenticate a packet from a stranger, within a budget."""

    __slots__ = ("_left", "_second")

    def __init__(self) -> None:
        self._second = -1.0
        self._left = 0

    def find(
        self, data: bytes, rtcp: bool, peers: Iterable[_P], now: float
    ) -> tuple[_P, bytes] | Literal["forged"] | None:
        """``(transport, plain)`` for SRTP (or SRTCP, ``rtcp``) ``data`` of at
        least 12 octets; "forged" when transports knew its SSRC but none had
        its keys (never a reason to move a path); None when the budget is
        spent or no transport knew the SSRC."""
        second = now // 1.0
        if second != self._second:
            self._second, self._left = second, PER_SECOND
        if self._left <= 0:
            return None
        self._left -= 1
        (ssrc,) = _SSRC.unpack_from(data, 4 if rtcp else 8)
        tried = 0
        for peer in peers:
            if peer.unprotect is None or not (
                ssrc in peer.recv_stats or (rtcp and ssrc in peer.rtcp_ssrcs)
            ):
                continue
            tried += 1
            unprotect = peer.unprotect_rtcp if rtcp else peer.unprotect
            assert callable(unprotect)
            try:
                plain: bytes = unprotect(data)
            except _SRTP_ERRORS:
                if tried >= MAX_TRIES:
                    break
                continue
            return peer, plain
        return "forged" if tried else None
