"""Which gateways answer: outages seen by the inquiry rounds, and when to
try an unreachable gateway again.

The payments sweeper (:func:`.checkout.sweeper.sweep_once`) and EasyPaisa's inquiry
round (:mod:`.easypaisa.inquiry`) ask gateways about payments whose
notification never came. When a gateway cannot be reached (connection
refused, a timeout, a 5xx: :class:`.errors.GatewayUnreachable`), asking it
about the rest of the round's payments would only wait out the same error
once per payment, and waiting a whole interval to ask again leaves paid
bookings held that long after the gateway is back. So the first failure
starts an *outage*: the gateway is left alone until a retry time that
backs off (``first``, doubling, at most ``cap``), the round's loop wakes for
it (:meth:`Reach.retry_in`), and the first answer ends the outage.

A pure core (no clock, no I/O): callers pass ``now`` (monotonic seconds) and
do the logging and counting it tells them to (:meth:`Reach.failed` is True
once per outage, :meth:`Reach.answered` returns the outage that ended).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Outage", "Reach"]


@dataclass(slots=True)
class Outage:
    """A gateway that stopped answering: since when, how many attempts
    failed, and when it may be asked again."""

    since: float
    failures: int
    retry_at: float


class Reach:
    """Outages per gateway name (see the module docstring)."""

    def __init__(self, *, first: float = 5.0, cap: float = 60.0) -> None:
        if not 0 < first <= cap:
            raise ValueError("Reach needs 0 < first <= cap")
        self.first = first
        self.cap = cap
        self._down: dict[str, Outage] = {}

    def may_ask(self, gateway: str, now: float) -> bool:
        """False while ``gateway`` is down and its retry time has not come."""
        outage = self._down.get(gateway)
        return outage is None or now >= outage.retry_at

    def failed(self, gateway: str, now: float) -> bool:
        """``gateway`` could not be reached at ``now``; True when this starts
        an outage (log it), False for another failed retry of one."""
        outage = self._down.get(gateway)
        if outage is None:
            self._down[gateway] = Outage(since=now, failures=1, retry_at=now + self.first)
            return True
        outage.failures += 1
        wait = min(self.cap, self.first * 2 ** (outage.failures - 1))
        outage.retry_at = now + wait
        return False

    def answered(self, gateway: str) -> Outage | None:
        """``gateway`` answered: the outage this ends, if it was down."""
        return self._down.pop(gateway, None)

    def down(self) -> dict[str, Outage]:
        """The gateways down now, with their outages (a copy)."""
        return dict(self._down)

    def retry_in(self, now: float, gateways: Iterable[str] | None = None) -> float | None:
        """Seconds until the first retry of a gateway that is down (of
        ``gateways``, or any), 0 if one is due; None when all of them answer."""
        names = self._down.keys() if gateways is None else set(gateways) & self._down.keys()
        if not names:
            return None
        return max(0.0, min(self._down[n].retry_at for n in names) - now)
