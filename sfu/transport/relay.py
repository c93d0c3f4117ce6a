"""A relay link between two media workers, as a sans-I/O core (RFC 5764 DTLS-SRTP without ICE).

One :class:`RelayLink` joins this worker to one other worker and carries
every room the two share, both ways: the media of a track that has
subscribers over there crosses once, however many they are (see
:mod:`sfu.node.links` for the worker's side). Its security is that of a
participant's transport, minus ICE:

* the peer is known in advance, from the registry (:class:`sfu.control.messages.RelayPeer`):
  its address and its certificate's fingerprint, which the DTLS handshake
  must present (RFC 8122 section 5), both ways; a wrong certificate fails the
  link;
* the DTLS roles are fixed by worker id, the smaller id is the client
  (RFC 5763's ``a=setup`` has no SDP to travel in here), so both sides agree
  without a message; the client retransmits its flights (RFC 6347 4.2.4),
  so it does not matter which side learns of the link first;
* SRTP keys come from the DTLS exporter (RFC 5764 section 4.2); plain RTP
  never crosses a link, and the worker accepts datagrams for the link only
  from the peer's address.

No STUN: nothing needs discovering between two workers whose addresses are
in the registry. Liveness is SRTCP: every ``keepalive`` seconds the link
sends an authenticated empty receiver report (RFC 3550 6.4.2) of its own
SSRC, and the worker stamps :attr:`RelayLink.heard` with every datagram
that authenticates. Nothing authenticated for ``timeout`` seconds fails the
link, as does a handshake that does not finish in ``connect_timeout``.

A failed link is not given up: while the worker still uses it, it starts a
new handshake after ``retry`` seconds (the peer may have restarted, or the
path come back); the worker tells signalling each time with a
:class:`~sfu.control.messages.RelayState`. A peer that starts a new handshake while we
think the association is up (it restarted, or failed on its side first) is
taken at its word: the server side restarts and answers.

The machine, in one table (:data:`TRANSITIONS`): NEW, then CONNECTING from
:meth:`RelayLink.start`; CONNECTED when the handshake is done, the
fingerprint verified and SRTP keyed; FAILED on a DTLS failure or silence;
CLOSED by :meth:`RelayLink.close` (terminal) or by the peer's close_notify.
FAILED and a peer's CLOSED go back to CONNECTING on a retry.
"""

from __future__ import annotations

import enum
import secrets
from collections import Counter
from dataclasses import dataclass

from rtc.dtls import (
    DEFAULT_PROFILES,
    ApplicationData,
    Closed,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsRole,
    HandshakeComplete,
    HandshakeFailed,
)
from rtc.errors import DtlsError, SrtpError
from rtc.ice import Address
from rtc.machine import Machine, earliest
from rtc.rtcp.reports import ReceiverReport
from rtc.srtp import SrtpSession
from sfu.control.messages import RelayPeer
from sfu.errors import SfuStateError

__all__ = [
    "TRANSITIONS",
    "LinkInput",
    "LinkState",
    "LinkStateChanged",
    "RelayLink",
    "dtls_role",
    "parse_fingerprint",
]

KEEPALIVE = 1.0
TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
RETRY = 2.0


class LinkState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class LinkInput(enum.Enum):
    START = "start"  # start() or a retry
    READY = "ready"  # handshake done, fingerprint checked, SRTP keyed
    FAIL = "fail"  # DTLS failure, connect timeout, silence
    PEER_CLOSED = "peer_closed"  # a close_notify from the peer
    CLOSE = "close"  # close(): no room uses the link any more


_S, _In = LinkState, LinkInput

TRANSITIONS: dict[tuple[LinkState, LinkInput], LinkState] = {
    (_S.NEW, _In.START): _S.CONNECTING,
    (_S.NEW, _In.CLOSE): _S.CLOSED,
    (_S.CONNECTING, _In.START): _S.CONNECTING,
    (_S.CONNECTING, _In.READY): _S.CONNECTED,
    (_S.CONNECTING, _In.FAIL): _S.FAILED,
    (_S.CONNECTING, _In.PEER_CLOSED): _S.FAILED,
    (_S.CONNECTING, _In.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _In.START): _S.CONNECTING,
    (_S.CONNECTED, _In.FAIL): _S.FAILED,
    (_S.CONNECTED, _In.PEER_CLOSED): _S.FAILED,
    (_S.CONNECTED, _In.CLOSE): _S.CLOSED,
    (_S.FAILED, _In.START): _S.CONNECTING,
    (_S.FAILED, _In.FAIL): _S.FAILED,
    (_S.FAILED, _In.PEER_CLOSED): _S.FAILED,
    (_S.FAILED, _In.CLOSE): _S.CLOSED,
}


@dataclass(frozen=True, slots=True)
class LinkStateChanged:
    """The link moved from ``old`` to ``new``; ``reason`` says what did it."""

    old: LinkState
    new: LinkState
    reason: str


def dtls_role(local_worker: str, peer_worker: str) -> DtlsRole:
    """The smaller worker id is the DTLS client; both sides compute the same."""
    if local_worker == peer_worker:
        raise SfuStateError("a worker cannot relay to itself")
    return DtlsRole.CLIENT if local_worker < peer_worker else DtlsRole.SERVER


def parse_fingerprint(text: str) -> tuple[str, str]:
    """``"sha-256 AB:CD:..."`` as (algorithm, value) (RFC 8122 section 5); ValueError if not."""
    algorithm, _, value = text.strip().partition(" ")
    value = value.strip()
    if not algorithm or not value:
        raise ValueError(f"not a certificate fingerprint: {text!r}")
    return algorithm.lower(), value.upper()


def _new_handshake(data: bytes) -> bool:
    """Whether a DTLS datagram starts with a handshake record of epoch 0 (RFC 6347 4.1):
    a ClientHello, which a restarted peer sends to start over."""
    return len(data) > 13 and data[0] == 22 and data[3] == 0 and data[4] == 0 and data[13] == 1


class RelayLink(Machine[LinkState, LinkInput, LinkStateChanged]):
    """DTLS-SRTP to one other worker (RFC 5764), without ICE; see the module docstring.

    The worker owns the socket and the clock: it feeds DTLS datagrams from
    the peer's address to :meth:`receive_datagram`, sends
    :meth:`datagrams_to_send` to :attr:`address`, runs :meth:`handle_timer`
    at :meth:`get_timer` and reads :meth:`next_event`. Media does not pass
    through here: once CONNECTED, :attr:`srtp` protects and unprotects on the
    worker's hot path, which stamps :attr:`heard`.
    """

    def __init__(
        self,
        certificate: DtlsCertificate,
        local_worker: str,
        peer: RelayPeer,
        *,
        now: float,
        keepalive: float = KEEPALIVE,
        timeout: float = TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        retry: float = RETRY,
        mtu: int = 1200,
    ) -> None:
        super().__init__(TRANSITIONS, LinkState.NEW, SfuStateError, LinkStateChanged)
        self.certificate = certificate
        self.local_worker = local_worker
        self.role = dtls_role(local_worker, peer.worker)
        self.peer = peer
        self.fingerprint = parse_fingerprint(peer.fingerprint)
        self.keepalive = keepalive
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retry = retry
        self.mtu = mtu
        self.srtp: SrtpSession | None = None
        self.ssrc = secrets.randbits(32) or 1
        """The SSRC of the link's own keepalive reports."""
        self.heard = now
        """When the peer last sent something that authenticated (the worker stamps it)."""
        self.connected_at: float | None = None
        self.counters: Counter[str] = Counter()
        self.dtls = self._endpoint()
        self._deadline: float | None = None
        self._keepalive_at: float | None = None
        self._retry_at: float | None = None
        self._out: list[bytes] = []

    @property
    def address(self) -> Address:
        return (self.peer.host, self.peer.port)

    @property
    def peer_worker(self) -> str:
        return self.peer.worker

    def _endpoint(self) -> DtlsEndpoint:
        return DtlsEndpoint(
            self.certificate,
            self.role,
            [self.fingerprint],
            profiles=DEFAULT_PROFILES,
            mtu=self.mtu,
        )

    # -- input -------------------------------------------------------------------

    def start(self, now: float, reason: str = "started") -> None:
        """Start (or start over) the handshake; the client sends its ClientHello now."""
        if self.state is LinkState.CLOSED:
            raise SfuStateError("the relay link is closed")
        if self.state is not LinkState.NEW:
            self.dtls = self._endpoint()
        self.srtp = None
        self._retry_at = None
        self._keepalive_at = None
        self._deadline = now + self.connect_timeout
        self.heard = now
        self._transition(_In.START, reason)
        self.dtls.start(now)
        self._dtls_io(now)

    def restart(self, peer: RelayPeer, now: float) -> None:
        """The peer is another incarnation (new address or certificate): start over with it."""
        if peer.worker != self.peer.worker:
            raise SfuStateError("a link's peer worker cannot change")
        self.peer = peer
        self.fingerprint = parse_fingerprint(peer.fingerprint)
        self.start(now, "the peer changed")

    def receive_datagram(self, data: bytes, now: float) -> None:
        """One DTLS datagram from the peer's address. Never raises for any input."""
        state = self.state
        if state is LinkState.CLOSED or state is LinkState.NEW:
            self.counters["dtls_not_started"] += 1
            return
        if self.role is DtlsRole.SERVER and _new_handshake(data) and state is not _S.CONNECTING:
            # The peer started over (it restarted, or its side of the link
            # failed first): so do we, with its ClientHello.
            self.start(now, "the peer started a new handshake")
        elif state is LinkState.FAILED:
            self.counters["dtls_while_failed"] += 1
            return
        self.dtls.receive(data, now)
        self._dtls_io(now)

    def get_timer(self) -> float | None:
        """The next deadline: DTLS retransmission, connect timeout, keepalive, silence, retry."""
        state = self.state
        if state is LinkState.CONNECTING:
            return earliest((self._deadline, self.dtls.get_timer()))
        if state is LinkState.CONNECTED:
            return earliest((self.heard + self.timeout, self._keepalive_at))
        if state is LinkState.FAILED:
            return self._retry_at
        return None

    def handle_timer(self, now: float) -> None:
        state = self.state
        if state is LinkState.CONNECTING:
            due = self.dtls.get_timer()
            if due is not None and now >= due:
                self.dtls.handle_timer(now)
                self._dtls_io(now)
            if (
                self.state is LinkState.CONNECTING
                and self._deadline is not None
                and now >= self._deadline
            ):
                self._fail(f"DTLS handshake did not finish in {self.connect_timeout:g} s", now)
        elif state is LinkState.CONNECTED:
            if now - self.heard >= self.timeout:
                self._fail(f"nothing from the peer for {self.timeout:g} s", now)
            elif self._keepalive_at is not None and now >= self._keepalive_at:
                self._send_keepalive(now)
        elif state is LinkState.FAILED and self._retry_at is not None and now >= self._retry_at:
            self.start(now, "retry")

    def close(self, reason: str = "closed") -> None:
        """No room uses the link: close_notify to the peer, and stop for good."""
        if self.state is LinkState.CLOSED:
            return
        if self.state is LinkState.CONNECTED:
            self.dtls.close()
            self._out.extend(self.dtls.datagrams_to_send())
        self.srtp = None
        self._transition(_In.CLOSE, reason)

    # -- output ------------------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        """Datagrams for :attr:`address`, oldest first; the queue is emptied."""
        out, self._out = self._out, []
        return out

    # -- internals ---------------------------------------------------------------

    def _fail(self, reason: str, now: float) -> None:
        self.srtp = None
        self.connected_at = None
        self._transition(_In.FAIL, reason)
        self._retry_at = now + self.retry
        self.counters["failures"] += 1

    def _send_keepalive(self, now: float) -> None:
        srtp = self.srtp
        self._keepalive_at = now + self.keepalive
        if srtp is None:
            return
        try:
            self._out.append(srtp.outbound.protect_rtcp(bytes(ReceiverReport(self.ssrc))))
        except Exception:
            self.counters["keepalive_unprotected"] += 1
            return
        self.counters["keepalives"] += 1

    def _dtls_io(self, now: float) -> None:
        dtls = self.dtls
        self._out.extend(dtls.datagrams_to_send())
        while (event := dtls.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                try:
                    self.srtp = SrtpSession.from_keys(event.keys, event.role)
                except SrtpError as exc:
                    self._fail(f"SRTP: {exc}", now)
                    return
                self.heard = now
                self.connected_at = now
                self._deadline = None
                self._transition(_In.READY, f"DTLS done ({event.profile.name}), SRTP keyed")
                self._send_keepalive(now)
            elif isinstance(event, HandshakeFailed):
                self._fail(f"DTLS: {_describe(event.error)}", now)
            elif isinstance(event, Closed):
                if event.alert is None:
                    self.srtp = None
                    self._transition(_In.PEER_CLOSED, "DTLS close_notify from the peer")
                    self._retry_at = now + self.retry
                else:
                    self._fail(f"DTLS: {event.alert}", now)
            elif isinstance(event, ApplicationData):
                self.counters["dtls_application_data"] += 1


def _describe(error: DtlsError) -> str:
    return f"{type(error).__name__}: {error}"
