"""One peer's WebRTC transport on the worker's shared socket, sans-I/O.

A :class:`PeerTransport` joins the three pieces of a BUNDLE transport (RFC
8843) that the ``rtc`` package provides one by one: the ICE-lite agent (RFC
8445 section 2.5, consent freshness of RFC 7675), the DTLS endpoint that keys
SRTP (RFC 5764) and the SRTP session itself (RFC 3711). It never touches a
socket or the clock; the worker feeds it datagrams with ``now`` and sends what
it returns (aioquic's shape: :meth:`~PeerTransport.receive_datagram`,
:meth:`~PeerTransport.datagrams_to_send`, :meth:`~PeerTransport.get_timer`,
:meth:`~PeerTransport.handle_timer`, :meth:`~PeerTransport.next_event`).

Only STUN and DTLS go through :meth:`~PeerTransport.receive_datagram`. Media
is the hot path: the worker unprotects and protects with :attr:`srtp`
directly, once the transport is CONNECTED, without a call through here.

Which DTLS role we take comes from the peer's ``a=setup`` (RFC 8842 section
5, :func:`rtc.dtls.role_for_remote_setup`): a publisher's offer says
``actpass`` and :func:`sfu.transport.offer_answer.answer` answers ``active``, so we are the DTLS
client and send the ClientHello as soon as ICE has selected an address; a
subscriber answers our ``actpass`` offer with ``active``, so we are the server
and wait. A subscriber may finish ICE and send its ClientHello before its
answer reached us through signalling; those records are kept (a few) until
:meth:`~PeerTransport.set_remote` says who the peer is.

Security: DTLS is accepted only from addresses that passed an ICE check with
our password (RFC 8445 section 7.3); anything else is dropped and counted. The
worker applies the same rule to SRTP by routing media through the addresses
in :class:`~rtc.ice.ValidatedAddress` events only.

The machine, in one table (:data:`TRANSITIONS`):

* NEW until the first valid ICE check, then CHECKING.
* CHECKING becomes CONNECTED once ICE has selected a pair (USE-CANDIDATE)
  *and* the DTLS handshake is done *and* SRTP is keyed; in whichever order
  those happen, the last one does it.
* A later nomination of another address (the peer moved), an ICE restart
  (:meth:`~PeerTransport.restart_ice`, RFC 8445 section 9) and a NAT
  rebinding (:meth:`~PeerTransport.rebind`) keep CONNECTED: the DTLS
  association and the SRTP contexts stay, only the path changes, and
  :class:`~rtc.ice.SelectedAddress` says where it went. A completed restart retires
  the previous local ufrag (:class:`rtc.ice.CredentialsRetired`).
* Any failure (ICE connect timeout, consent expiry, a DTLS alert or timeout,
  a fingerprint mismatch, unusable SRTP keys) makes it FAILED. A close_notify
  from the peer, or :meth:`~PeerTransport.close`, makes it CLOSED. Both are
  terminal: a peer that comes back needs a new transport (a new peer
  connection on its side: a new DTLS certificate).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rtc import demux
from rtc.dtls import (
    DEFAULT_PROFILES,
    ApplicationData,
    Closed,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsRole,
    DtlsState,
    HandshakeComplete,
    HandshakeFailed,
    SrtpProfile,
    role_for_remote_setup,
)
from rtc.errors import SrtpError
from rtc.ice import (
    CONNECT_TIMEOUT,
    CONSENT_TIMEOUT,
    DISCONNECT_TIMEOUT,
    Address,
    CredentialsRetired,
    ForgottenAddress,
    IceLiteAgent,
    IceState,
    SelectedAddress,
    StateChanged,
    ValidatedAddress,
    random_credentials,
)
from rtc.machine import Machine, earliest
from rtc.srtp import SrtpSession
from sfu.errors import SfuStateError

__all__ = [
    "TRANSITIONS",
    "PeerInput",
    "PeerState",
    "PeerStateChanged",
    "PeerTransport",
    "TransportEvent",
]

# DTLS records a subscriber may send before its answer arrives: its first
# flight is one or two datagrams, and it retransmits anyway.
MAX_EARLY_DTLS = 8


class PeerState(enum.Enum):
    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    FAILED = "failed"
    CLOSED = "closed"


class PeerInput(enum.Enum):
    CHECK = "check"  # ICE accepted a check, or selected a pair, before SRTP is keyed
    READY = "ready"  # ICE selected and SRTP keyed
    FAIL = "fail"
    CLOSE = "close"


_S, _In = PeerState, PeerInput

TRANSITIONS: dict[tuple[PeerState, PeerInput], PeerState] = {
    (_S.NEW, _In.CHECK): _S.CHECKING,
    (_S.NEW, _In.FAIL): _S.FAILED,
    (_S.NEW, _In.CLOSE): _S.CLOSED,
    (_S.CHECKING, _In.CHECK): _S.CHECKING,
    (_S.CHECKING, _In.READY): _S.CONNECTED,
    (_S.CHECKING, _In.FAIL): _S.FAILED,
    (_S.CHECKING, _In.CLOSE): _S.CLOSED,
    (_S.CONNECTED, _In.CHECK): _S.CONNECTED,
    (_S.CONNECTED, _In.READY): _S.CONNECTED,
    (_S.CONNECTED, _In.FAIL): _S.FAILED,
    (_S.CONNECTED, _In.CLOSE): _S.CLOSED,
}

TERMINAL = frozenset({PeerState.FAILED, PeerState.CLOSED})


# --- events -----------------------------------------------------------------------

# Besides its own state changes, the transport passes on the ICE agent's
# address events (rtc.ice: ValidatedAddress and ForgottenAddress once per
# change of the validated set, SelectedAddress, CredentialsRetired).


@dataclass(frozen=True, slots=True)
class PeerStateChanged:
    """The transport moved from ``old`` to ``new``; ``reason`` says what did it."""

    old: PeerState
    new: PeerState
    reason: str


TransportEvent = (
    PeerStateChanged | ValidatedAddress | ForgottenAddress | SelectedAddress | CredentialsRetired
)


class PeerTransport(Machine[PeerState, PeerInput, TransportEvent]):
    """ICE-lite + DTLS-SRTP for one peer connection (RFC 8445 2.5, RFC 5764, RFC 8843).

    ``certificate`` is the worker's (one for every peer). Local ICE
    credentials are fresh unless given (RFC 8839 section 5.4). The remote
    side (ICE credentials, fingerprints, ``a=setup``) comes from its SDP
    through :meth:`set_remote`, at once for a publisher (its offer) or later
    for a subscriber (its answer). ``counters`` counts what was dropped and
    why, for the worker's metrics; the ICE agent keeps its own
    (``ice.counters``).
    """

    def __init__(
        self,
        certificate: DtlsCertificate,
        *,
        now: float,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        consent_timeout: float = CONSENT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        profiles: Sequence[SrtpProfile] = DEFAULT_PROFILES,
        mtu: int = 1200,
    ) -> None:
        if local_ufrag is None or local_pwd is None:
            local_ufrag, local_pwd = random_credentials()
        super().__init__(TRANSITIONS, PeerState.NEW, SfuStateError, PeerStateChanged)
        self.certificate = certificate
        self.ice = IceLiteAgent(
            local_ufrag,
            local_pwd,
            now=now,
            consent_timeout=consent_timeout,
            disconnect_timeout=min(DISCONNECT_TIMEOUT, consent_timeout),
            connect_timeout=connect_timeout,
        )
        self.dtls: DtlsEndpoint | None = None
        self.srtp: SrtpSession | None = None
        self.remote: Address | None = None
        """The selected address: where media and DTLS go."""
        self.counters: Counter[str] = Counter()
        self._profiles = tuple(profiles)
        self._mtu = mtu
        self._validated: set[Address] = set()
        self._fingerprints: list[tuple[str, str]] = []
        self._early: list[tuple[bytes, Address]] = []
        self._dtls_addr: Address | None = None
        self._out: list[tuple[bytes, Address]] = []

    # -- identity ----------------------------------------------------------------

    @property
    def local_ufrag(self) -> str:
        return self.ice.local_ufrag

    @property
    def local_pwd(self) -> str:
        return self.ice.local_pwd

    @property
    def role(self) -> DtlsRole | None:
        """Our DTLS role, once the remote ``a=setup`` is known."""
        return None if self.dtls is None else self.dtls.role

    @property
    def remote_fingerprints(self) -> list[tuple[str, str]]:
        """The peer's ``a=fingerprint`` pairs, once :meth:`set_remote` was called."""
        return list(self._fingerprints)

    @property
    def validated(self) -> frozenset[Address]:
        """Addresses whose DTLS and SRTP this transport accepts."""
        return frozenset(self._validated)

    def is_new_connection(
        self, ufrag: str, pwd: str, fingerprints: Sequence[tuple[str, str]]
    ) -> bool:
        """Whether an offer comes from another peer connection than this transport's.

        New ICE credentials *and* a new certificate: the client made a new
        ``RTCPeerConnection`` (browsers make a certificate per connection), which
        gets a new transport. New credentials with the same certificate are an
        ICE restart (RFC 8445 section 9) on the old connection, which keeps its
        DTLS association (:meth:`restarts_ice`).
        """
        ice = self.ice
        if ice.remote_ufrag is None or (ice.remote_ufrag, ice.remote_pwd) == (ufrag, pwd):
            return False
        known = {(a.lower(), v.strip().upper()) for a, v in self._fingerprints}
        return not known & {(a.lower(), v.strip().upper()) for a, v in fingerprints}

    def restarts_ice(self, ufrag: str, pwd: str) -> bool:
        """Whether an offer on this transport's own peer connection (same certificate:
        :meth:`is_new_connection` said so) carries new ICE credentials: the client
        restarts ICE (RFC 8445 section 9, RFC 8839 section 4.4.1.1.1)."""
        ice = self.ice
        if self.dtls is None or ice.remote_ufrag is None:
            return False
        return (ice.remote_ufrag, ice.remote_pwd) != (ufrag, pwd)

    def set_remote(
        self,
        ice_ufrag: str,
        ice_pwd: str,
        fingerprints: Sequence[tuple[str, str]],
        setup: str,
        now: float,
    ) -> None:
        """Learn the peer from its SDP (RFC 8839 section 5.4, RFC 8122 section 5, RFC 8842).

        ``setup`` is the peer's ``a=setup``; ``actpass`` (an offer) makes us
        the DTLS client, as :func:`sfu.transport.offer_answer.answer` answers ``active``. Calling
        it again with the same parameters (a renegotiation) changes nothing;
        other credentials or fingerprints would be an ICE restart or a new
        DTLS association, which this transport does not do: SfuStateError.
        Raises :class:`rtc.errors.DtlsError` for an unusable ``setup`` or no
        fingerprint with a known hash function.
        """
        ice = self.ice
        if self.dtls is not None:
            if self._fingerprints != _normal(fingerprints):
                raise SfuStateError("new DTLS fingerprint: a new association needs a new transport")
            if (ice.remote_ufrag, ice.remote_pwd) == (ice_ufrag, ice_pwd):
                return
            if ice.restarting and ice.remote_ufrag is None:
                ice.set_remote_credentials(ice_ufrag, ice_pwd)
                return
            raise SfuStateError("new ICE credentials without an ICE restart")
        if self.state in TERMINAL:
            raise SfuStateError(f"transport is {self.state.value}")
        role = role_for_remote_setup(setup, default=DtlsRole.CLIENT)
        dtls = DtlsEndpoint(
            self.certificate, role, fingerprints, profiles=self._profiles, mtu=self._mtu
        )
        ice.set_remote_credentials(ice_ufrag, ice_pwd)
        self._fingerprints = _normal(fingerprints)
        self.dtls = dtls
        if role is DtlsRole.SERVER:
            dtls.start(now)
            early, self._early = self._early, []
            for data, addr in early:
                self._dtls_addr = addr
                dtls.receive(data, now)
            self._dtls_io(now)
        elif self.remote is not None:
            # ICE finished before we knew the peer's fingerprint: start now.
            dtls.start(now)
            self._dtls_io(now)

    def restart_ice(self, now: float) -> None:
        """Take new local ICE credentials for an ICE restart (RFC 8445 section 9).

        The DTLS association, SRTP contexts and the selected path stay;
        media keeps flowing there until the peer nominates a pair under the
        new credentials. The peer's new credentials come through
        :meth:`set_remote`. SfuStateError in a terminal state or before the
        first negotiation (there is nothing to restart).
        """
        if self.state in TERMINAL:
            raise SfuStateError(f"transport is {self.state.value}")
        if self.dtls is None:
            raise SfuStateError("nothing to restart before the first negotiation")
        ufrag, pwd = random_credentials()
        self.ice.restart(ufrag, pwd, now)

    # -- input -------------------------------------------------------------------

    def rebind(self, addr: Address, now: float) -> bool:
        """SRTP or SRTCP that authenticated under this transport's keys came from ``addr``,
        a new address (a NAT rebinding): send there from now on.

        The caller verified the packet's authentication tag with :attr:`srtp`,
        which only the peer can produce. Returns whether the path moved.
        """
        if self.state is not PeerState.CONNECTED:
            return False
        moved = self.ice.rebind(addr, now)
        self._ice_events(now)
        return moved

    def receive_datagram(self, data: bytes, addr: Address, now: float) -> None:
        """Process one STUN or DTLS datagram from ``addr`` (RFC 7983 section 7).

        Never raises for any input: what cannot be used is counted in
        :attr:`counters` (``dtls_unvalidated``, ``dtls_early_dropped``,
        ``not_control``, ``closed``) and dropped.
        """
        if self.state in TERMINAL:
            self.counters["closed"] += 1
            return
        kind = demux.classify(data)
        if kind == demux.STUN:
            response = self.ice.receive_stun(data, addr, now)
            if response is not None:
                self._out.append((response, addr))
            self._ice_events(now)
        elif kind == demux.DTLS:
            if addr not in self._validated:
                # RFC 8445 section 7.3 and 8826 section 4.2: only a checked
                # address may speak DTLS to us; a stranger gets nothing.
                self.counters["dtls_unvalidated"] += 1
                return
            dtls = self.dtls
            if dtls is None:
                if len(self._early) >= MAX_EARLY_DTLS:
                    self.counters["dtls_early_dropped"] += 1
                else:
                    self._early.append((data, addr))
                return
            self._dtls_addr = addr
            dtls.receive(data, now)
            self._dtls_io(now)
        else:
            # SRTP and SRTCP are the worker's (its hot path); anything else is garbage.
            self.counters["not_control"] += 1

    def get_timer(self) -> float | None:
        """The next ICE (connect, consent) or DTLS (retransmission) deadline, or None."""
        if self.state in TERMINAL:
            return None
        dtls = self.dtls
        return earliest((self.ice.get_timer(), None if dtls is None else dtls.get_timer()))

    def handle_timer(self, now: float) -> None:
        """Apply due deadlines: ICE connect or consent expiry (RFC 7675 5.1), DTLS resends."""
        if self.state in TERMINAL:
            return
        timer = self.ice.get_timer()
        if timer is not None and now >= timer:
            self.ice.handle_timer(now)
            self._ice_events(now)
        dtls = self.dtls
        if dtls is not None and self.state not in TERMINAL:
            timer = dtls.get_timer()
            if timer is not None and now >= timer:
                dtls.handle_timer(now)
                self._dtls_io(now)

    def close(self, reason: str = "closed") -> None:
        """Close: a DTLS close_notify is queued if the association is up, and ICE stops."""
        if self.state in TERMINAL:
            return
        if self.dtls is not None:
            self.dtls.close()
            self._flush_dtls()
        self.ice.close()
        self.srtp = None
        self._transition(_In.CLOSE, reason)

    # -- output ------------------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """``[(datagram, address)]`` to send, oldest first; the queue is emptied."""
        out, self._out = self._out, []
        return out

    # -- internals ---------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self.state in TERMINAL:
            return
        self.ice.close()
        if self.dtls is not None and self.dtls.state in (DtlsState.NEW, DtlsState.CONNECTING):
            self.dtls.close()
        self.srtp = None
        self._transition(_In.FAIL, reason)

    def _ice_events(self, now: float) -> None:
        ice = self.ice
        while (event := ice.next_event()) is not None:
            if isinstance(event, ValidatedAddress):
                if event.address not in self._validated:
                    self._validated.add(event.address)
                    self._events.append(event)
            elif isinstance(event, ForgottenAddress):
                if event.address in self._validated:
                    self._validated.discard(event.address)
                    self._events.append(event)
            elif isinstance(event, CredentialsRetired):
                self._events.append(event)
            elif isinstance(event, SelectedAddress):
                self.remote = event.address
                self._events.append(event)
                dtls = self.dtls
                if dtls is not None and dtls.state is DtlsState.NEW:
                    dtls.start(now)
                    self._dtls_io(now)
                self._ready()
            elif isinstance(event, StateChanged):
                if event.new is IceState.FAILED:
                    self._fail(f"ICE: {event.reason}")
                elif event.new is IceState.CHECKING and self.state is PeerState.NEW:
                    self._transition(_In.CHECK, "ICE check")
                # DISCONNECTED is a warning only: the peer's checks may come back.

    def _flush_dtls(self) -> None:
        dtls = self.dtls
        if dtls is None:
            return
        dest = self.remote or self._dtls_addr
        datagrams = dtls.datagrams_to_send()
        if dest is None:
            # Nowhere to send yet; the handshake's retransmission covers it.
            self.counters["dtls_unsent"] += len(datagrams)
            return
        for datagram in datagrams:
            self._out.append((datagram, dest))

    def _dtls_io(self, now: float) -> None:
        dtls = self.dtls
        if dtls is None:
            return
        self._flush_dtls()
        while (event := dtls.next_event()) is not None:
            if isinstance(event, HandshakeComplete):
                try:
                    self.srtp = SrtpSession.from_keys(event.keys, event.role)
                except SrtpError as exc:
                    self._fail(f"SRTP: {exc}")
                    return
                self._ready()
            elif isinstance(event, HandshakeFailed):
                self._fail(f"DTLS: {event.error}")
            elif isinstance(event, Closed):
                self.srtp = None
                self.ice.close()
                if event.alert is None:
                    self._transition(_In.CLOSE, "DTLS close_notify from the peer")
                else:
                    self._transition(_In.FAIL, f"DTLS: {event.alert}")
            elif isinstance(event, ApplicationData):
                # No data channels (SCTP, RFC 8261) on the worker yet.
                self.counters["dtls_application_data"] += 1

    def _ready(self) -> None:
        if self.remote is None or self.srtp is None or self.state in TERMINAL:
            return
        if self.state is PeerState.NEW:
            self._transition(_In.CHECK, "ICE check")
        self._transition(_In.READY, "ICE selected, DTLS done, SRTP keyed")


def _normal(fingerprints: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((a.lower(), v.strip().upper()) for a, v in fingerprints)
