"""The desk that takes calls from trunks: the user agent core
(:class:`sip.calls.agent.UserAgent`) on the SIP endpoint.

The endpoint tells the desk each transaction event (the desk is its
:class:`~sip.transport.endpoint.TransactionUser`); the desk hands it to the
agent with the loop's time, sends what the agent queued (responses through
their transactions, requests, its own 2xx repeats), keeps the agent's one
timer on ``loop.call_at``, and tells the bridge each call event
(``on_call``): a call to open media for, answered, changed, a digit by
INFO, ended; for calls it places, ringing, and answered or failed. The
bridge answers through :meth:`CallDesk.media_ready`, :meth:`CallDesk.reject`
and :meth:`CallDesk.hang_up`, and places calls with :meth:`CallDesk.dial`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from sip.calls.agent import Address, CallEvent, Trunk, UserAgent
from sip.transport.endpoint import SipEndpoint
from sip.wire.transactions import Event

__all__ = ["CallDesk"]

log = logging.getLogger(__name__)


class CallDesk:
    """``agent`` on an endpoint (:meth:`attach` it before the endpoint
    starts); ``on_call`` is told every call event, in order."""

    def __init__(self, agent: UserAgent, on_call: Callable[[CallEvent], None]) -> None:
        self.agent = agent
        self.on_call = on_call
        self.endpoint: SipEndpoint | None = None
        self._timer: asyncio.TimerHandle | None = None

    def attach(self, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint

    # -- from the endpoint ------------------------------------------------------------

    def handle(self, event: Event, endpoint: SipEndpoint) -> None:
        self.endpoint = endpoint
        self.agent.receive(event, self._now())
        self._flush()

    # -- from the bridge --------------------------------------------------------------

    def media_ready(self, call_id: str, host: str, port: int, key: bytes | None) -> None:
        """The call's media socket is open: answer it."""
        self.agent.media_ready(call_id, host, port, key, self._now())
        self._flush()

    def reject(self, call_id: str, status: int) -> None:
        self.agent.reject(call_id, status)
        self._flush()

    def hang_up(self, call_id: str) -> None:
        self.agent.hang_up(call_id, self._now())
        self._flush()

    def dial(
        self,
        trunk: Trunk,
        target: str,
        addr: Address,
        *,
        host: str,
        port: int,
        key: bytes | None,
        ring_timeout: float,
    ) -> str:
        """Place a call (:meth:`sip.calls.agent.UserAgent.dial`); its Call-ID."""
        call_id = self.agent.dial(
            trunk, target, addr, host=host, port=port, key=key, now=self._now(),
            ring_timeout=ring_timeout,
        )  # fmt: skip
        self._flush()
        return call_id

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # -- the glue ----------------------------------------------------------------------

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _flush(self) -> None:
        # Taken before sending: a send may come straight back as an event
        # (a 2xx leaves its transaction as Answered) and flush again.
        out, endpoint = self.agent.out, self.endpoint
        responses, out.responses = out.responses, []
        requests, out.requests = out.requests, []
        raw, out.raw = out.raw, []
        if endpoint is not None:
            for request, response in responses:
                endpoint.respond(request, response)
            for request, addr, reliable in requests:
                endpoint.request(request, addr, reliable)
            for data, addr, reliable in raw:
                endpoint.send_raw(data, addr, reliable)
        while (event := self.agent.next_event()) is not None:
            try:
                self.on_call(event)
            except Exception:
                # The bridge's own fault: logged, and the next call still served.
                log.exception("a call event's handler failed", extra={"event": repr(event)})
        self._rearm()

    def _rearm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.agent.get_timer()
        if due is not None:
            self._timer = asyncio.get_running_loop().call_at(due, self._fire)

    def _fire(self) -> None:
        self._timer = None
        self.agent.handle_timer(self._now())
        self._flush()
