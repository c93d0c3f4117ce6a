"""A media worker's settings: one frozen record, made once, handed to the cores that need them.

:class:`sfu.node.worker.MediaWorker` builds a :class:`WorkerSettings` from its
keyword arguments (its own defaults filled in: a random worker id and
feedback SSRC, a fresh certificate) and hands the same record to its cores:
the transports (:class:`sfu.negotiation.transports.Transports`: certificate,
ICE timeouts, simulcast, RED, feedback SSRC, REMB cap, forwarder options),
the offer/answer negotiator (:class:`sfu.negotiation.negotiator.Negotiator`)
and the relay links (:class:`sfu.node.links.Links`: worker id, certificate,
link options). None of them copies a setting out of it, and nothing changes
it: a worker with other settings is another worker.

What changes while the worker runs is not here: the port the socket was
bound to (``MediaWorker.port``, found when ``port`` is 0) and so the host
candidates, which the worker hands the transports as a function.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from rtc.dtls import DtlsCertificate
from rtc.ice import CONNECT_TIMEOUT, CONSENT_TIMEOUT

__all__ = ["WorkerSettings"]


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """A media worker's settings (:class:`sfu.node.worker.MediaWorker` says what each does).

    The option mappings are read-only copies and the announced addresses a
    tuple, so nothing reached through the record changes it either.
    ``fingerprint`` is the certificate's SHA-256 fingerprint (RFC 8122
    section 5), worked out once.
    """

    worker_id: str
    """The worker's name to other workers' relay links (its registry id)."""
    certificate: DtlsCertificate
    """The DTLS certificate of every transport and relay link."""
    feedback_ssrc: int
    """The SSRC our RTCP (reports, NACK, PLI, bandwidth feedback) is sent from."""
    host: str = "127.0.0.1"
    port: int = 0
    """The port the socket binds (0: any free port)."""
    announced_addresses: Sequence[str] = ()
    consent_timeout: float = CONSENT_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    forwarder_options: Mapping[str, Any] = field(default_factory=dict)
    remb_max_bitrate: int = 2_500_000
    link_options: Mapping[str, Any] = field(default_factory=dict)
    simulcast: bool = True
    red: bool = True
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        frozen = object.__setattr__
        frozen(self, "announced_addresses", tuple(self.announced_addresses))
        frozen(self, "forwarder_options", MappingProxyType(dict(self.forwarder_options)))
        frozen(self, "link_options", MappingProxyType(dict(self.link_options)))
        frozen(self, "fingerprint", self.certificate.fingerprint("sha-256"))
