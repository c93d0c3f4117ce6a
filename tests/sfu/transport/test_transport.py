"""PeerTransport, the sans-I/O ICE-lite + DTLS-SRTP session, on a fake clock.

The other side is a browser stand-in built from pieces no one here wrote or
that are tested on their own: connectivity checks from aioice's STUN codec, a
DTLS endpoint (rtc.dtls over OpenSSL) and an SRTP session (libsrtp). They are
joined through an in-memory link that can drop datagrams (aioquic's
``transfer()``)."""

from __future__ import annotations

from typing import Any

import pytest
from aioice import stun as astun
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.dtls import Closed, DtlsCertificate, DtlsEndpoint, DtlsRole, DtlsState, HandshakeComplete
from rtc.ice import (
    CONSENT_TIMEOUT,
    MAX_VALIDATED,
    Address,
    CredentialsRetired,
    ForgottenAddress,
    SelectedAddress,
    ValidatedAddress,
)
from rtc.rtp.packet import RtpPacket
from rtc.srtp import SrtpSession
from sfu.errors import SfuStateError
from sfu.transport.peer import (
    TERMINAL,
    TRANSITIONS,
    PeerInput,
    PeerState,
    PeerStateChanged,
    PeerTransport,
)
from tests.rtc.certificates import CLIENT_CERT, SERVER_CERT
from tests.rtc.memory_link import Drop, MemoryLink

CLIENT = ("198.51.100.7", 50000)
OTHER = ("198.51.100.8", 50001)
STRANGER = ("203.0.113.9", 40000)
CLIENT_UFRAG, CLIENT_PWD = "brwU", "browserpassword012345678"


def check(
    transport: PeerTransport,
    *,
    use_candidate: bool = False,
    pwd: str | None = None,
    ufrag: str | None = None,
    remote: str = CLIENT_UFRAG,
) -> bytes:
    """A Binding request as a controlling browser sends it, built by aioice."""
    msg = astun.Message(message_method=astun.Method.BINDING, message_class=astun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{ufrag or transport.local_ufrag}:{remote}"
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLING"] = 0x1234567890ABCDEF
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    msg.add_message_integrity((pwd or transport.local_pwd).encode())
    msg.add_fingerprint()
    return bytes(msg)


class Browser:
    """The peer: ICE checks from aioice, DTLS from rtc.dtls, SRTP from libsrtp."""

    def __init__(self, role: DtlsRole, server_fingerprint: str | None = None) -> None:
        fingerprint = server_fingerprint or SERVER_CERT.fingerprint()
        self.dtls = DtlsEndpoint(CLIENT_CERT, role, [("sha-256", fingerprint)])
        self.events: list[Any] = []
        self.stun: list[astun.Message] = []
        self.srtp: SrtpSession | None = None

    @property
    def setup(self) -> str:
        # What its SDP says: an offer is actpass; an answer names its role.
        return "active" if self.dtls.role is DtlsRole.CLIENT else "actpass"

    def receive(self, data: bytes, now: float) -> None:
        if data[0] < 4:
            self.stun.append(astun.parse_message(data))
            return
        self.dtls.receive(data, now)
        while (event := self.dtls.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, HandshakeComplete):
                self.srtp = SrtpSession.from_keys(event.keys, event.role)


class Link(MemoryLink):
    """A transport and a browser joined by the in-memory link: "up" to the
    transport, "down" to the browser."""

    def __init__(
        self,
        transport: PeerTransport,
        browser: Browser,
        *,
        addr: Address = CLIENT,
        drop: Drop | None = None,
    ) -> None:
        super().__init__(("up", "down"), drop)
        self.t = transport
        self.b = browser
        self.addr = addr
        self.events: list[Any] = []
        self.elsewhere: list[tuple[bytes, Address]] = []

    def send(self, data: bytes, addr: Address | None = None) -> None:
        self.t.receive_datagram(data, addr or self.addr, self.now)
        self.pump()

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for data, addr in self.t.datagrams_to_send():
                moved = True
                if addr != self.addr:
                    self.sent["down"] += 1  # sent, to another address than the browser's
                    self.elsewhere.append((data, addr))
                elif self.arrives("down", data):
                    self.b.receive(data, self.now)
            for data in self.b.dtls.datagrams_to_send():
                moved = True
                if self.arrives("up", data):
                    self.t.receive_datagram(data, self.addr, self.now)
        while (event := self.t.next_event()) is not None:
            self.events.append(event)

    def run(self, limit: float = 60.0) -> None:
        """Fire timers on the fake clock until nothing is due before ``limit``."""
        while True:
            self.pump()
            timers = [t for t in (self.t.get_timer(), self.b.dtls.get_timer()) if t is not None]
            due = min(timers, default=None)
            if due is None or due > limit or self.t.state is PeerState.CONNECTED:
                return
            self.now = max(self.now, due)
            self.t.handle_timer(self.now)
            self.b.dtls.handle_timer(self.now)

    def states(self) -> list[PeerState]:
        return [e.new for e in self.events if isinstance(e, PeerStateChanged)]


def publish_link(
    *,
    fingerprint_of: DtlsCertificate = CLIENT_CERT,
    consent_timeout: float = CONSENT_TIMEOUT,
    **kwargs: Any,
) -> Link:
    """Our side answers a publisher's actpass offer: we are the DTLS client.
    The offer carries ``fingerprint_of``'s fingerprint (the browser's, unless
    a test wants a mismatch)."""
    transport = PeerTransport(SERVER_CERT, now=0.0, consent_timeout=consent_timeout)
    browser = Browser(DtlsRole.SERVER)
    browser.dtls.start(0.0)
    transport.set_remote(
        CLIENT_UFRAG, CLIENT_PWD, [("sha-256", fingerprint_of.fingerprint())], "actpass", 0.0
    )
    return Link(transport, browser, **kwargs)


def connect(link: Link) -> None:
    link.send(check(link.t))
    link.send(check(link.t, use_candidate=True))
    link.run()


def rtp(seq: int = 1, ssrc: int = 0x1234) -> bytes:
    return bytes(
        RtpPacket(
            payload_type=96, sequence_number=seq, timestamp=3000, ssrc=ssrc, payload=b"\x10" * 40
        )
    )


def state(t: PeerTransport) -> PeerState:
    # A call, so mypy does not narrow the state across the transport's methods.
    return t.state


# --- handshakes ---------------------------------------------------------------------


def test_publish_transport_connects_as_dtls_client_after_nomination() -> None:
    link = publish_link()
    assert link.t.role is DtlsRole.CLIENT
    assert link.t.datagrams_to_send() == []

    link.send(check(link.t))
    # Validated but not nominated: no DTLS yet (nowhere chosen to send it).
    assert state(link.t) is PeerState.CHECKING
    assert ValidatedAddress(CLIENT) in link.events
    assert link.b.dtls.state is DtlsState.CONNECTING
    assert link.sent["down"] == 1  # the STUN success response only
    assert link.b.stun[0].message_class == astun.Class.RESPONSE

    link.send(check(link.t, use_candidate=True))
    link.run()
    assert state(link.t) is PeerState.CONNECTED
    assert SelectedAddress(CLIENT) in link.events
    assert link.states() == [PeerState.CHECKING, PeerState.CONNECTED]
    assert link.t.remote == CLIENT

    # Both sides derived the same SRTP keys, each direction its own.
    assert link.t.srtp is not None and link.b.srtp is not None
    packet = rtp()
    assert link.t.srtp.unprotect(link.b.srtp.protect(packet)) == packet
    assert link.b.srtp.unprotect(link.t.srtp.protect(packet)) == packet


def test_subscribe_transport_keeps_an_early_client_hello_until_the_answer() -> None:
    # We offered actpass; the browser answers active and may start DTLS before
    # its answer reaches us through signalling.
    transport = PeerTransport(SERVER_CERT, now=0.0)
    browser = Browser(DtlsRole.CLIENT)
    link = Link(transport, browser)
    link.send(check(transport, use_candidate=True))
    assert state(transport) is PeerState.CHECKING
    browser.dtls.start(0.0)
    link.pump()
    assert link.sent["up"] >= 1
    assert transport.dtls is None
    assert state(transport) is PeerState.CHECKING

    transport.set_remote(
        CLIENT_UFRAG, CLIENT_PWD, [("sha-256", CLIENT_CERT.fingerprint())], browser.setup, 0.1
    )
    assert transport.role is DtlsRole.SERVER
    link.now = 0.1
    link.run()
    assert state(transport) is PeerState.CONNECTED
    assert browser.srtp is not None and transport.srtp is not None
    assert transport.srtp.unprotect(browser.srtp.protect(rtp())) == rtp()


def test_dtls_client_starts_when_fingerprint_comes_after_nomination() -> None:
    transport = PeerTransport(SERVER_CERT, now=0.0)
    browser = Browser(DtlsRole.SERVER)
    browser.dtls.start(0.0)
    link = Link(transport, browser)
    link.send(check(transport, use_candidate=True))
    assert link.sent["down"] == 1
    transport.set_remote(
        CLIENT_UFRAG, CLIENT_PWD, [("sha-256", CLIENT_CERT.fingerprint())], "passive", 0.0
    )
    link.run()
    assert state(transport) is PeerState.CONNECTED
    assert transport.role is DtlsRole.CLIENT


def test_handshake_survives_lost_flights() -> None:
    # Drop the first DTLS datagram each way: our ClientHello, then the
    # browser's first flight after our resent one.
    dropped: list[str] = []

    def drop(direction: str, index: int, data: bytes) -> bool:
        if data[0] < 20 or direction in dropped:
            return False
        dropped.append(direction)
        return True

    link = publish_link(drop=drop)
    connect(link)
    assert sorted(dropped) == ["down", "up"]
    assert state(link.t) is PeerState.CONNECTED
    assert link.now >= 1.0  # retransmission timers fired


def test_fingerprint_mismatch_fails() -> None:
    link = publish_link(fingerprint_of=SERVER_CERT)
    transport = link.t
    connect(link)
    assert state(transport) is PeerState.FAILED
    assert "DTLS" in transport.reason
    assert transport.srtp is None
    assert transport.get_timer() is None


# --- who may speak -----------------------------------------------------------------


def test_dtls_from_a_stranger_is_dropped_and_counted() -> None:
    link = publish_link()
    connect(link)
    hello = DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, [("sha-256", SERVER_CERT.fingerprint())])
    hello.start(0.0)
    for data in hello.datagrams_to_send():
        link.t.receive_datagram(data, STRANGER, link.now)
    assert link.t.counters["dtls_unvalidated"] >= 1
    assert link.t.datagrams_to_send() == []
    assert state(link.t) is PeerState.CONNECTED


def test_dtls_before_any_check_is_dropped() -> None:
    transport = PeerTransport(SERVER_CERT, now=0.0)
    transport.receive_datagram(b"\x16\xfe\xfd" + bytes(20), CLIENT, 0.0)
    assert transport.counters["dtls_unvalidated"] == 1
    assert transport.next_event() is None


def test_wrong_password_gets_401_and_validates_nothing() -> None:
    link = publish_link()
    link.send(check(link.t, use_candidate=True, pwd="not-the-password-at-all0"))
    assert link.b.stun[-1].message_class == astun.Class.ERROR
    assert link.b.stun[-1].attributes["ERROR-CODE"][0] == 401
    assert state(link.t) is PeerState.NEW
    assert link.events == []
    assert link.t.validated == frozenset()


def test_early_dtls_is_bounded() -> None:
    transport = PeerTransport(SERVER_CERT, now=0.0)
    transport.receive_datagram(check(transport), CLIENT, 0.0)
    transport.datagrams_to_send()
    for _ in range(20):
        transport.receive_datagram(b"\x16\xfe\xfd" + bytes(20), CLIENT, 0.0)
    assert transport.counters["dtls_early_dropped"] == 12


def test_srtp_and_garbage_are_not_control_datagrams() -> None:
    transport = PeerTransport(SERVER_CERT, now=0.0)
    for data in (rtp(), b"", b"\xff" * 30, b"\x40\x00\x00\x04abcd"):
        transport.receive_datagram(data, CLIENT, 0.0)
    assert transport.counters["not_control"] == 4
    assert transport.datagrams_to_send() == []


# --- moves, consent, timeouts, close ----------------------------------------------------


def test_renomination_moves_the_selected_address() -> None:
    link = publish_link()
    connect(link)
    link.events.clear()
    link.t.receive_datagram(check(link.t, use_candidate=True), OTHER, link.now)
    link.pump()
    assert ValidatedAddress(OTHER) in link.events
    assert SelectedAddress(OTHER) in link.events
    assert link.t.remote == OTHER
    assert state(link.t) is PeerState.CONNECTED
    assert link.states() == []


def test_too_many_addresses_forget_the_oldest() -> None:
    transport = PeerTransport(SERVER_CERT, now=0.0)
    for port in range(MAX_VALIDATED + 2):
        transport.receive_datagram(check(transport), ("198.51.100.1", 1000 + port), 0.0)
    events = []
    while (event := transport.next_event()) is not None:
        events.append(event)
    forgotten = [e.address for e in events if isinstance(e, ForgottenAddress)]
    assert forgotten == [("198.51.100.1", 1000), ("198.51.100.1", 1001)]
    assert len(transport.validated) == MAX_VALIDATED
    assert ("198.51.100.1", 1000) not in transport.validated


def test_consent_expiry_fails_the_transport() -> None:
    link = publish_link(consent_timeout=5.0)
    transport = link.t
    connect(link)
    assert state(transport) is PeerState.CONNECTED
    # A consent check at 3 s keeps it alive past 5 s ...
    link.now = 3.0
    link.send(check(transport))
    timer = transport.get_timer()
    assert timer == pytest.approx(8.0)
    transport.handle_timer(6.0)
    assert state(transport) is PeerState.CONNECTED
    # ... and silence after it does not.
    transport.handle_timer(8.0)
    link.pump()
    assert state(transport) is PeerState.FAILED
    assert "consent" in transport.reason
    assert transport.srtp is None
    # A failed transport answers nothing.
    transport.receive_datagram(check(transport), CLIENT, 9.0)
    assert transport.datagrams_to_send() == []
    assert transport.counters["closed"] == 1


def test_no_nomination_before_the_connect_timeout_fails() -> None:
    transport = PeerTransport(SERVER_CERT, now=10.0, connect_timeout=5.0)
    assert transport.get_timer() == 15.0
    transport.handle_timer(14.9)
    assert state(transport) is PeerState.NEW
    transport.handle_timer(15.0)
    assert state(transport) is PeerState.FAILED
    event = transport.next_event()
    assert isinstance(event, PeerStateChanged) and event.old is PeerState.NEW


def test_close_sends_close_notify() -> None:
    link = publish_link()
    connect(link)
    link.t.close("left")
    link.pump()
    assert state(link.t) is PeerState.CLOSED
    assert link.t.reason == "left"
    assert any(isinstance(e, Closed) and e.alert is None for e in link.b.events)
    link.t.close("again")  # idempotent
    assert link.t.reason == "left"


def test_peer_close_notify_closes() -> None:
    link = publish_link()
    connect(link)
    link.b.dtls.close()
    link.pump()
    assert state(link.t) is PeerState.CLOSED
    assert "close_notify" in link.t.reason


def test_renegotiation_repeats_parameters_or_is_refused() -> None:
    link = publish_link()
    fp = [("sha-256", CLIENT_CERT.fingerprint())]
    link.t.set_remote(CLIENT_UFRAG, CLIENT_PWD, fp, "actpass", 1.0)  # same: no-op
    # New credentials without our restart_ice, or a new certificate: refused.
    with pytest.raises(SfuStateError):
        link.t.set_remote("newU", CLIENT_PWD, fp, "actpass", 1.0)
    with pytest.raises(SfuStateError):
        link.t.set_remote(CLIENT_UFRAG, CLIENT_PWD, [("sha-256", "AA:BB")], "actpass", 1.0)


def test_ice_restart_keeps_dtls_and_srtp_and_moves_the_path() -> None:
    link = publish_link()
    connect(link)
    srtp, browser_srtp = link.t.srtp, link.b.srtp
    assert srtp is not None and browser_srtp is not None
    old_ufrag, old_pwd = link.t.local_ufrag, link.t.local_pwd
    link.events.clear()
    # The phone's network changed: its offer has new credentials, same certificate.
    link.t.restart_ice(link.now)
    assert link.t.local_ufrag != old_ufrag
    fp = [("sha-256", CLIENT_CERT.fingerprint())]
    link.t.set_remote("brwV", "newbrowserpassword012345", fp, "actpass", link.now)
    # Checks under the old credentials keep the old path until the new one is nominated.
    link.send(check(link.t, ufrag=old_ufrag, pwd=old_pwd))
    assert link.t.remote == CLIENT
    link.now += 1.0
    link.t.receive_datagram(check(link.t, use_candidate=True, remote="brwV"), OTHER, link.now)
    link.pump()
    assert ValidatedAddress(OTHER) in link.events
    assert SelectedAddress(OTHER) in link.events
    assert ForgottenAddress(CLIENT) in link.events
    assert CredentialsRetired(old_ufrag) in link.events
    assert link.t.remote == OTHER and link.t.validated == frozenset({OTHER})
    # Same DTLS association and SRTP contexts: media keeps its keys.
    assert link.t.srtp is srtp
    assert state(link.t) is PeerState.CONNECTED and link.states() == []
    plain = rtp(seq=7)
    assert srtp.inbound.unprotect(browser_srtp.outbound.protect(plain)) == plain


def test_ice_restart_needs_a_negotiated_live_transport() -> None:
    with pytest.raises(SfuStateError):
        PeerTransport(SERVER_CERT, now=0.0).restart_ice(0.0)
    link = publish_link()
    connect(link)
    link.t.close()
    with pytest.raises(SfuStateError):
        link.t.restart_ice(1.0)


def test_authenticated_media_from_a_new_address_rebinds() -> None:
    link = publish_link()
    connect(link)
    link.events.clear()
    assert link.t.rebind(STRANGER, link.now)
    assert link.events == [] and link.t.remote == STRANGER
    link.pump()
    assert link.events == [ValidatedAddress(STRANGER), SelectedAddress(STRANGER)]
    assert STRANGER in link.t.validated
    assert not link.t.rebind(STRANGER, link.now)  # already there
    # A transport that is not connected has no path to move.
    assert not PeerTransport(SERVER_CERT, now=0.0).rebind(STRANGER, 0.0)


# --- the transition table ----------------------------------------------------------------


def test_terminal_states_have_no_exit() -> None:
    for (source, _), target in TRANSITIONS.items():
        assert source not in TERMINAL
        assert target in PeerState
    assert {target for target in TRANSITIONS.values()} == set(PeerState) - {PeerState.NEW}


@given(st.lists(st.sampled_from(list(PeerInput)), max_size=12))
def test_transition_table_walks(inputs: list[PeerInput]) -> None:
    transport = PeerTransport(SERVER_CERT, now=0.0, local_ufrag="abcd", local_pwd="p" * 22)
    for event in inputs:
        before = state(transport)
        if (before, event) in TRANSITIONS:
            transport._transition(event, "test")
            assert state(transport) is TRANSITIONS[(before, event)]
        else:
            with pytest.raises(SfuStateError):
                transport._transition(event, "test")
            assert state(transport) is before
    # CONNECTED is reached only through READY, which needs CHECKING first.
    changes = []
    while (e := transport.next_event()) is not None:
        assert isinstance(e, PeerStateChanged)
        changes.append((e.old, e.new))
    for old, new in changes:
        if new is PeerState.CONNECTED:
            assert old is PeerState.CHECKING


@settings(max_examples=200)
@given(st.binary(max_size=200), st.sampled_from([CLIENT, STRANGER]))
def test_any_datagram_is_counted_or_answered_never_raised(data: bytes, addr: Address) -> None:
    link = publish_link()
    connect(link)
    link.t.receive_datagram(data, addr, link.now)
    link.t.datagrams_to_send()
    assert state(link.t) in (PeerState.CONNECTED, PeerState.FAILED, PeerState.CLOSED)
