"""A datagram's kernel receive stamp, carried to the event loop's clock.

Linux stamps each datagram with the wall-clock time it reached the host, as
a ``struct timespec``: through ``SO_TIMESTAMPNS``'s control message on
``recvmsg`` (the SIP node's legs read their sockets so) or through the
``SIOCGSTAMPNS`` ioctl after a read (the media worker, whose loop's
transport reads for it; :mod:`sfu.node.arrival`). Arrival times feed jitter
buffers, interarrival jitter and the senders' delay-based estimators, which
must measure the network, not how long a busy loop took to read.

The caller reads both clocks (``wall_lead``: the wall clock's lead on the
loop's, from :class:`wadud.clocks.WallLead`); this core only converts. A stamp is
never later than ``now`` and never more than :data:`MAX_AGE` before it: a
wall clock stepped by NTP moves the arrivals read across the step by at most
that much, never past the present.
"""

from __future__ import annotations

import struct

__all__ = ["MAX_AGE", "TIMESPEC", "on_loop_clock", "wall_on_loop_clock"]

#: ``struct timespec`` as the kernel writes it (seconds, nanoseconds).
TIMESPEC = struct.Struct("@qq")

#: Seconds: how far before ``now`` an arrival may be.
MAX_AGE = 1.0


def on_loop_clock(timespec: bytes | bytearray, now: float, wall_lead: float) -> float:
    """The arrival ``timespec`` records, on the loop's clock, within ``[now - MAX_AGE, now]``."""
    seconds, nanoseconds = TIMESPEC.unpack_from(timespec)
    return wall_on_loop_clock(seconds + nanoseconds * 1e-9, now, wall_lead)


def wall_on_loop_clock(wall: float, now: float, wall_lead: float) -> float:
    """:func:`on_loop_clock` of a stamp already read as wall-clock seconds."""
    return min(now, max(now - MAX_AGE, wall - wall_lead))
