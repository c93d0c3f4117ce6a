"""When a datagram reached the host, not when the event loop read it.

A receiver's arrival times feed the sender's delay-based estimator
(transport-cc, draft-holmer-rmcat-transport-wide-cc-extensions-01) and the
interarrival jitter of receiver reports (RFC 3550 section 6.4.1 and A.8).
Read from the loop's clock in ``datagram_received``, they include how long
the datagram waited in the socket while the process was busy or descheduled:
a server stalled for 100 ms reports that its packets queued for 100 ms and
then came all at once, and every publisher's estimator cuts its rate for a
stall that was the server's own. libwebrtc's receivers take the kernel's
receive time stamp for the same reason (its physical socket server asks for
it with ``SIOCGSTAMP`` after each read).

The loop's datagram transport reads with ``recvfrom`` and hands no
ancillary data on, so this asks the socket with ``SIOCGSTAMPNS`` (socket(7);
in native code with the extension, :data:`sfu.forward.native.STAMP`),
which gives the time stamp of the datagram the process read last: called
from ``datagram_received``, that is the one being handled (uvloop and
asyncio call the protocol for each datagram right after reading it). The
first ask turns time stamping on for the socket, so it is made once when the
socket opens. The stamp is on the wall clock; :func:`rtc.stamps.on_loop_clock`
carries it to the loop's clock through the wall clock's lead on it
(:class:`wadud.clocks.WallLead`, read afresh ten times a second between two
monotonic reads close together).

Where the socket cannot give stamps (not Linux, a sandbox without the
ioctl, no datagram read yet), the loop's ``now`` stands.
"""

from __future__ import annotations

import errno
import fcntl
import socket

from rtc.stamps import TIMESPEC, on_loop_clock, wall_on_loop_clock
from sfu.forward import native
from wadud.clocks import WallLead

__all__ = ["ArrivalClock"]

#: linux/sockios.h: the receive time stamp of the last datagram read, as a timespec.
SIOCGSTAMPNS = 0x8907


class ArrivalClock:
    """When the datagram a socket gave the process last reached the host, on the loop's clock.

    ``clock(now)`` with the loop's ``now`` returns the arrival (at most
    ``now``); ``available`` says whether the socket gives stamps at all.
    """

    __slots__ = ("_buffer", "_fd", "_lead", "_stamp", "available")

    def __init__(self, sock: socket.socket) -> None:
        self._fd = sock.fileno()
        self._buffer = bytearray(TIMESPEC.size)
        self._lead = WallLead()
        self._stamp = native.STAMP
        try:
            fcntl.ioctl(self._fd, SIOCGSTAMPNS, self._buffer)
            self.available = True
        except OSError as exc:
            # ENOENT: stamping is on now, and no datagram was read yet.
            self.available = exc.errno == errno.ENOENT

    def __call__(self, now: float) -> float:
        if not self.available:
            return now
        stamp = self._stamp
        if stamp is not None:  # the same ioctl, in native code
            wall = stamp(self._fd)
            return now if wall < 0 else wall_on_loop_clock(wall, now, self._lead(now))
        try:
            fcntl.ioctl(self._fd, SIOCGSTAMPNS, self._buffer)
        except OSError:
            return now
        # The wall clock's lead on the loop's (monotonic: asyncio's, and
        # uvloop's to the millisecond), not read against ``now``: a process
        # held between the two reads would place the arrival that much too
        # early (and one held within WallLead's reads, too late).
        return on_loop_clock(self._buffer, now, self._lead(now))
