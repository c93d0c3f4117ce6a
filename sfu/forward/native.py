"""The optional native leaves of the forwarding path (``sfu/forward/_fanout.c``) and their switch.

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

On the receive side, :func:`unprotector` gives the hot path a native SRTP
(or SRTCP) unprotect bound to a pylibsrtp session (``sfu/forward/_unprotect.c``):
one copy into the bytes it returns, libsrtp in place, none of pylibsrtp's
per-call Python. :data:`PARSE` is :meth:`RtpView.parse` as a function of the
view and the packet, in native code (``sfu/forward/_view.c``): the same
fields, refusals and messages, written straight into the view's slots.
:data:`STAMP` reads the kernel's receive stamp of the datagram last read on
a socket (``sfu/forward/_stamp.c``) for :class:`sfu.node.arrival.ArrivalClock`.

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
from collections.abc import Callable
from typing import Any, Protocol

import pylibsrtp

from rtc.rtp.view import RtpView
from sfu.forward.fanout import NativeRed

__all__ = ["AVAILABLE", "PARSE", "RED", "STAMP", "Fanout", "enabled", "fanout", "unprotector"]


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


_LIBSRTP_CALLS = ("srtp_protect", "srtp_unprotect", "srtp_unprotect_rtcp")


def _load() -> tuple[Any, dict[str, int]]:
    if not enabled():
        return None, {}
    try:
        from pylibsrtp._binding import ffi, lib

        from sfu.forward import _fanout  # type: ignore[attr-defined]
    except ImportError:
        return None, {}
    # The leaves call these as (srtp_t, void *, int *), libsrtp 2.x's
    # signature; a pylibsrtp built on another keeps the Python path.
    calls = {}
    for name in _LIBSRTP_CALLS:
        signature = ffi.getctype(ffi.typeof(getattr(lib, name)))
        if "(struct srtp_ctx_t_ *, void *, int *)" not in signature:
            return None, {}
        calls[name] = int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))
    return _fanout, calls


_MODULE, _CALLS = _load()

AVAILABLE: bool = _MODULE is not None
"""The extension is built, loads, matches pylibsrtp's libsrtp, and is not switched off."""

RED: NativeRed | None = _MODULE
"""RED's per-packet steps in native code (pure functions), None without the extension."""

PARSE: Callable[[RtpView, bytes], None] = RtpView.parse if _MODULE is None else _MODULE.parse_view
"""``PARSE(view, packet)``: :meth:`RtpView.parse`, in native code with the extension."""

STAMP: Callable[[int], float] | None = None if _MODULE is None else _MODULE.receive_stamp
"""``STAMP(fd)``: the wall-clock seconds the kernel stamped the datagram last
read on ``fd`` with (``SIOCGSTAMPNS``), -1.0 without one; None without the extension."""


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
    return _srtp_address(session)


def _srtp_address(session: pylibsrtp.Session) -> int:
    """The ``srtp_t`` pylibsrtp keeps in ``Session._srtp`` (an ``srtp_t *``
    from its cffi binding) for the session's whole life, as an address."""
    from pylibsrtp._binding import ffi

    return int(ffi.cast("uintptr_t", session._srtp[0]))


def fanout(sock: socket.socket | Any) -> Fanout | None:
    """A native fan-out sending on ``sock`` (the worker's non-blocking UDP socket), or None."""
    if _MODULE is None:
        return None
    fan: Fanout = _MODULE.Fanout(sock.fileno(), _CALLS["srtp_protect"], _session_pointer)
    return fan


def unprotector(session: pylibsrtp.Session, rtcp: bool = False) -> Callable[[bytes], bytes]:
    """``session.unprotect`` (``unprotect_rtcp`` with ``rtcp``), in native code when it can be.

    The leaf's ``Unprotect`` copies the datagram once into the bytes it
    returns and has libsrtp unprotect it there, where pylibsrtp copies it
    in and out through cffi and releases the GIL around libsrtp: in a
    worker with one publisher and no subscriber, pylibsrtp's Python around
    ``srtp_unprotect`` took twice libsrtp's own time. It raises what
    pylibsrtp raises for a refused packet (:class:`pylibsrtp.Error`, with
    pylibsrtp's message), and the session stays pylibsrtp's: the leaf holds
    it, so it lives as long as the call does.
    """
    python = session.unprotect_rtcp if rtcp else session.unprotect
    if _MODULE is None or type(session) is not pylibsrtp.Session:
        return python
    fn = _CALLS["srtp_unprotect_rtcp" if rtcp else "srtp_unprotect"]
    call: Callable[[bytes], bytes] = _MODULE.Unprotect(
        fn, _srtp_address(session), session, _refused
    )
    return call


def _refused(status: int) -> pylibsrtp.Error:
    """What pylibsrtp raises for libsrtp's ``status`` (its messages, by status)."""
    messages: list[str] = pylibsrtp.ERRORS
    known = 0 <= status < len(messages)
    return pylibsrtp.Error(messages[status] if known else f"libsrtp status {status}")
