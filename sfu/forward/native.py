"""The optional native fan-out (``sfu/forward/_fanout.c``) and the switch that turns it off.

The worker's hot path is: SRTP unprotect once, :meth:`Forwarder.route_into`
rewrites a copy per subscriber, then each copy is protected with that
subscriber's SRTP session and sent. In Python the last step was over half the
worker's time (a profile put 33% in ``sendto`` and 24% in pylibsrtp's
protect, about half of it copying into and out of Python objects), so it is a
C leaf: it takes the routed list, protects each copy into a preallocated
buffer with the libsrtp that pylibsrtp bundles (the sessions pylibsrtp owns,
no second copy of a key), and sends the batch with one ``sendmmsg``. It
returns how many datagrams the kernel took.

The same leaf also makes the copies in the steady state (``forward``): with
``steady``, :meth:`Forwarder.route_view` hands back what the copies of a
packet need (:data:`sfu.forward.fanout.Steady`: the packet's
:class:`~rtc.rtp.view.RtpView`, parsed once where it arrived, and the
offsets the forwarder chose) instead of making them, and the
worker passes that to ``forward``, which writes each copy's header,
extension ids, transport-wide sequence number and abs-send-time straight
into its send buffer (no ``bytes`` or tuple per copy), protects and sends
it; the subscriptions it leaves (a keyframe wait, the first packet of a run)
go back to :meth:`Forwarder.route_rest`. Everything else (reception, repair,
every table) stays in Python, and all state stays in the Python objects that
own it: the leaf reads and writes their slots.
The subscriber records (:class:`sfu.rooms.records.Peer`) keep owning ``protect``
and ``addr``; the leaf caches, in the record's ``wire`` slot, the session
pointer and packed address it derived from them, rebuilt whenever either is
a new object.

The module also has the two per-packet steps of Opus RED (RFC 2198) as pure
functions on the bytes (:data:`RED`, handed to the forwarder), twins of
:func:`rtc.red.primary` and (for the shape Chromium sends) :func:`rtc.red.deepen`.

``WADUD_NATIVE=0`` in the environment (read at import), or an install without
a compiler, leaves :data:`AVAILABLE` false and the worker on its pure-Python
loop; both paths are tested (``tests/sfu/forward/test_native.py`` and CI's second
run of the hot-path tests with ``WADUD_NATIVE=0``).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Protocol

import pylibsrtp

from sfu.forward.fanout import NativeRed

__all__ = ["AVAILABLE", "RED", "Fanout", "enabled", "fanout"]


class Fanout(Protocol):
    """What the worker calls: ``forward(*steady)`` -> copies made (also added to
    the forwarder's ``stats.forwarded``), the subscriptions it leaves appended
    to the tuple's ``rest``; ``send(routed)`` -> datagrams sent; ``counters()``."""

    def forward(self, *steady: object) -> int: ...

    def send(self, routed: list[tuple[Any, bytes]], /) -> int: ...

    def counters(self) -> dict[str, int]: ...


def enabled() -> bool:
    """Whether ``WADUD_NATIVE`` allows the native loops (anything but ``0``)."""
    return os.environ.get("WADUD_NATIVE", "1").strip() != "0"


def _load() -> tuple[Any, int]:
    if not enabled():
        return None, 0
    try:
        from pylibsrtp._binding import ffi, lib

        from sfu.forward import _fanout  # type: ignore[attr-defined]
    except ImportError:
        return None, 0
    # The leaf calls srtp_protect(srtp_t, void *, int *) of libsrtp 2.x; a
    # pylibsrtp built on another signature keeps the Python path.
    if "(struct srtp_ctx_t_ *, void *, int *)" not in ffi.getctype(ffi.typeof(lib.srtp_protect)):
        return None, 0
    return _fanout, int(ffi.cast("uintptr_t", ffi.addressof(lib, "srtp_protect")))


_MODULE, _PROTECT_FN = _load()

AVAILABLE: bool = _MODULE is not None
"""The extension is built, loads, matches pylibsrtp's libsrtp, and is not switched off."""

RED: NativeRed | None = _MODULE
"""RED's per-packet steps in native code (pure functions), None without the extension."""


def _session_pointer(protect: object) -> int:
    """libsrtp's ``srtp_t`` behind a bound ``pylibsrtp.Session.protect``; 0 for anything else.

    pylibsrtp keeps the session in ``Session._srtp`` (an ``srtp_t *`` from its
    cffi binding) for its whole life; the leaf's cached record holds the bound
    method, so the session outlives every use of the pointer.
    """
    session = getattr(protect, "__self__", None)
    if type(session) is not pylibsrtp.Session:
        return 0
    if getattr(protect, "__func__", None) is not pylibsrtp.Session.protect:
        return 0
    from pylibsrtp._binding import ffi

    return int(ffi.cast("uintptr_t", session._srtp[0]))


def fanout(sock: socket.socket | Any) -> Fanout | None:
    """A native fan-out sending on ``sock`` (the worker's non-blocking UDP socket), or None."""
    if _MODULE is None:
        return None
    fan: Fanout = _MODULE.Fanout(sock.fileno(), _PROTECT_FN, _session_pointer)
    return fan
