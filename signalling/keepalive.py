"""One call WebSocket's own deadlines, without I/O: when to ping, when a
silent client counts as dropped, and when its TURN credentials are renewed.

The service's per-connection loop (:meth:`signalling.service.calls.CallService.serve`'s
pinger) sleeps until :meth:`Keepalive.get_timer` and carries out what
:meth:`Keepalive.handle_timer` returns, as aioquic's adapters do; anything
heard from the client is :meth:`Keepalive.heard`, a ``joined`` sent to it
:meth:`Keepalive.issued`. Nothing here reads the clock.

* A ping goes out every ``interval`` seconds once the client joined.
* A client heard from last at ``t`` is dropped at exactly
  ``t + MISSED_PINGS * interval`` (not at the next ping after it), so its
  participant's resume grace starts then: a silent app keeps its seat
  ``MISSED_PINGS * interval + resume_grace`` seconds after its last frame.
* Silence is counted in time the server was listening. A timer that wakes a
  whole ``interval`` or more after it was due woke from a stall of the
  server's own loop (a CPU-starved host, a long collection): what the client
  sent meanwhile is still unread, so instead of dropping it the server pings
  and gives it ``interval`` from now to be heard, as if its last frame had
  come ``MISSED_PINGS - 1`` pings ago. A stall must not end every call on
  the replica at once.
* TURN credentials handed out with a ``ttl`` are renewed (an ``ice_servers``
  frame) once :data:`RENEW_AT` of the shortest ``ttl`` less a second has
  passed (their expiry is a whole Unix second, up to one before
  ``now + ttl``), and again after each renewal, while the socket lives.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from typing import Any

__all__ = ["MISSED_PINGS", "RENEW_AT", "Keepalive", "Wake"]

#: Server pings a client may leave unanswered before it is disconnected.
MISSED_PINGS = 3
#: The share of the credentials' ``ttl`` after which new ones are sent.
RENEW_AT = 0.8


class Wake(Enum):
    PING = "ping"
    TIMEOUT = "timeout"
    RENEW = "renew"


def renew_after(ice_servers: Sequence[dict[str, Any]]) -> float | None:
    """Seconds after which ``ice_servers`` want renewing: :data:`RENEW_AT`
    of the shortest ``ttl`` less the second their expiry may be rounded
    down by; None when none expires."""
    ttls = [float(s["ttl"]) for s in ice_servers if isinstance(s.get("ttl"), int | float)]
    return RENEW_AT * max(min(ttls) - 1.0, 0.0) if ttls else None


class Keepalive:
    """The deadlines of one connection, opened at ``now``."""

    def __init__(self, interval: float, now: float) -> None:
        self.interval = interval
        #: When anything was last heard from the client.
        self.last_seen = now
        self.joined = False
        self._next_ping = now + interval
        #: Whose credentials to renew (the identity ``joined`` named), and when.
        self.identity: str | None = None
        self.renew_at: float | None = None

    def heard(self, now: float) -> None:
        self.last_seen = now

    @property
    def silent_at(self) -> float:
        """When the client counts as dropped, unless heard from before."""
        return self.last_seen + MISSED_PINGS * self.interval

    def issued(self, now: float, identity: str, ice_servers: Sequence[dict[str, Any]]) -> None:
        """``joined`` (or ``ice_servers``) handed ``identity`` these at ``now``."""
        self.joined = True
        self.identity = identity
        after = renew_after(ice_servers)
        self.renew_at = None if after is None else now + after

    def get_timer(self) -> float:
        """When :meth:`handle_timer` next has something to do."""
        when = self._next_ping
        if self.joined:
            when = min(when, self.silent_at)
            if self.renew_at is not None:
                when = min(when, self.renew_at)
        return when

    def handle_timer(self, now: float, joined: bool, due: float | None = None) -> list[Wake]:
        """What is due at ``now``; ``joined``: the connection is in a room
        (a connection that has not joined is the join timeout's business);
        ``due``: when the timer was to wake (:meth:`get_timer`), to tell a
        stall of the server's loop from the client's silence (module
        docstring). After :data:`Wake.TIMEOUT` nothing more is due."""
        self.joined = joined
        out: list[Wake] = []
        if joined and now >= self.silent_at:
            if due is None or now - due < self.interval:
                return [Wake.TIMEOUT]
            self.last_seen = now - (MISSED_PINGS - 1) * self.interval
            self._next_ping = now
        if now >= self._next_ping:
            while self._next_ping <= now:
                self._next_ping += self.interval
            if joined:
                out.append(Wake.PING)
        if joined and self.renew_at is not None and now >= self.renew_at:
            self.renew_at = None  # until the new ones are issued
            out.append(Wake.RENEW)
        return out
