"""What the SIP endpoint counts, ready for metrics: messages in and out by
method or status class, malformed input by reason, and the life of its TCP
connections. One object, handed to the endpoint and to its stream
connections, which both count into it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sip.errors import SipParseError
from sip.transport.hop import describe
from sip.wire.message import Request, Response

__all__ = ["EndpointStats", "malformed_reason"]


def malformed_reason(error: SipParseError) -> str:
    """The counter a parse error goes in: ``too_large`` (413), ``version``
    (505) or ``unparseable``. A reason phrase is the peer's text, shortened,
    and would make a counter per message."""
    return {413: "too_large", 505: "version"}.get(error.status, "unparseable")


@dataclass
class EndpointStats:
    """Counters of one :class:`sip.transport.endpoint.SipEndpoint`."""

    #: Requests by method, responses by status class (``2xx``), as they
    #: crossed the wire: what the endpoint sent includes retransmissions.
    requests_in: Counter[str] = field(default_factory=Counter)
    requests_out: Counter[str] = field(default_factory=Counter)
    responses_in: Counter[str] = field(default_factory=Counter)
    responses_out: Counter[str] = field(default_factory=Counter)
    #: Input refused, by :func:`malformed_reason`, and ``unmatchable`` for a
    #: message the transaction layer could not match.
    malformed: Counter[str] = field(default_factory=Counter)
    #: Refused requests answered (400, 413 or 505): the rest were dropped.
    rejected: int = 0
    #: CRLF keepalives: UDP ones dropped, TCP pings answered.
    keepalives: int = 0
    tcp_accepted: int = 0
    #: Connections refused at the cap, and outbound ones that failed.
    tcp_refused: int = 0
    tcp_connect_failed: int = 0
    tcp_idle_closed: int = 0
    #: Messages dropped because they had no way out (a response for a TCP
    #: connection that has gone, a send error).
    unsent: int = 0

    def count_in(self, message: Request | Response) -> None:
        if isinstance(message, Request):
            self.requests_in[message.method] += 1
        else:
            self.responses_in[f"{message.status // 100}xx"] += 1

    def count_out(self, data: bytes) -> None:
        request, name = describe(data)
        (self.requests_out if request else self.responses_out)[name] += 1

    def as_dict(self) -> dict[str, int]:
        """Flat ``name`` or ``name.key`` counters, for a metrics exporter."""
        flat: dict[str, int] = {}
        for name, value in vars(self).items():
            if isinstance(value, Counter):
                flat.update({f"{name}.{key}": count for key, count in sorted(value.items())})
            else:
                flat[name] = value
        return flat
