"""DTLS-SRTP core: our client against our server through an in-memory link that
drops and reorders, on a fake clock; fingerprint and timeout failures; and a
handshake against aiortc's RTCDtlsTransport (a peer no one here wrote) in memory."""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from typing import Any

import pytest
from aiortc.rtcdtlstransport import (
    RTCCertificate,
    RTCDtlsFingerprint,
    RTCDtlsParameters,
    RTCDtlsTransport,
    certificate_digest,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtc.dtls import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80,
    ApplicationData,
    Closed,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsRole,
    DtlsState,
    HandshakeComplete,
    HandshakeFailed,
    SrtpKeys,
    local_setup,
    role_for_remote_setup,
)
from rtc.errors import (
    DtlsError,
    DtlsFingerprintError,
    DtlsHandshakeError,
    DtlsStateError,
    DtlsTimeoutError,
)
from rtc.srtp import SrtpSession
from tests.rtc.certificates import (
    CLIENT_CERT,
    GSTREAMER_PROFILES,
    ISSUED,
    SERVER_CERT,
    gstreamer_like_certificate,
)
from tests.rtc.dtls_pair import DtlsPair, dtls_endpoints


def completed(events: list[Any]) -> HandshakeComplete:
    done = [e for e in events if isinstance(e, HandshakeComplete)]
    assert len(done) == 1, events
    return done[0]


def test_handshake_completes_with_the_same_keys() -> None:
    pair = DtlsPair(*dtls_endpoints())
    pair.run()
    assert pair.client.state is DtlsState.CONNECTED
    assert pair.server.state is DtlsState.CONNECTED
    c, s = completed(pair.events["client"]), completed(pair.events["server"])
    assert c.profile == s.profile == SRTP_AEAD_AES_128_GCM  # preferred when both offer it
    assert c.keys == s.keys
    assert len(c.keys.client_key) == 16 and len(c.keys.client_salt) == 12
    assert c.keys.client_key != c.keys.server_key
    assert (c.role, s.role) == (DtlsRole.CLIENT, DtlsRole.SERVER)
    assert pair.now == 0.0  # no timer was needed
    assert "client_key" not in repr(c.keys)  # no secrets in logs
    assert pair.client.get_timer() is None and pair.server.get_timer() is None


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles"),
    [
        ((SRTP_AES128_CM_SHA1_80,), (SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80)),
        ((SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80), (SRTP_AES128_CM_SHA1_80,)),
    ],
)
def test_falls_back_to_aes_cm(client_profiles: Any, server_profiles: Any) -> None:
    pair = DtlsPair(*dtls_endpoints(c_profiles=client_profiles, s_profiles=server_profiles))
    pair.run()
    c = completed(pair.events["client"])
    assert c.profile == SRTP_AES128_CM_SHA1_80
    assert len(c.keys.client_salt) == 14
    assert c.keys == completed(pair.events["server"]).keys


def test_no_common_profile_fails() -> None:
    pair = DtlsPair(
        *dtls_endpoints(c_profiles=(SRTP_AES128_CM_SHA1_80,), s_profiles=(SRTP_AEAD_AES_128_GCM,))
    )
    pair.run()
    # OpenSSL's server goes on without use_srtp; both sides refuse the result.
    assert pair.client.state is DtlsState.FAILED
    assert pair.server.state is DtlsState.FAILED
    assert isinstance(pair.events["server"][0].error, DtlsHandshakeError)


@pytest.mark.parametrize(
    ("direction", "index"),
    [
        ("c2s", 0),  # ClientHello
        ("s2c", 0),  # ServerHello .. ServerHelloDone
        ("c2s", 1),  # Certificate .. Finished
        ("s2c", 1),  # the server's final ChangeCipherSpec + Finished
    ],
)
def test_a_dropped_flight_is_retransmitted_on_the_timer(direction: str, index: int) -> None:
    pair = DtlsPair(*dtls_endpoints(), drop=lambda d, i, data: (d, i) == (direction, index))
    pair.run()
    assert pair.dropped == 1
    assert pair.client.state is DtlsState.CONNECTED
    assert pair.server.state is DtlsState.CONNECTED
    assert completed(pair.events["client"]).keys == completed(pair.events["server"]).keys
    assert 0.9 <= pair.now <= 3.0  # one retransmission timeout (OpenSSL says ~1 s), not more


def test_every_flight_dropped_twice_still_completes() -> None:
    seen: dict[tuple[str, bytes], int] = {}

    def drop(direction: str, index: int, data: bytes) -> bool:
        key = (direction, data[:13])
        seen[key] = seen.get(key, 0) + 1
        return seen[key] <= 2

    pair = DtlsPair(*dtls_endpoints(), drop=drop)
    pair.run()
    assert pair.client.state is DtlsState.CONNECTED
    assert pair.server.state is DtlsState.CONNECTED
    assert completed(pair.events["client"]).keys == completed(pair.events["server"]).keys


def test_small_mtu_packs_whole_records() -> None:
    oversized: list[bytes] = []

    def record(direction: str, index: int, data: bytes) -> bool:
        if len(data) > 200:
            oversized.append(data)
        return False

    pair = DtlsPair(*dtls_endpoints(c_mtu=200, s_mtu=200), drop=record)
    pair.run()
    assert pair.sent["s2c"] > 3  # the server's flight really was split
    # Only a record that alone exceeds the MTU goes out bigger, and then alone.
    assert oversized
    assert all(int.from_bytes(d[11:13], "big") + 13 == len(d) for d in oversized)
    assert pair.client.state is DtlsState.CONNECTED
    assert pair.server.state is DtlsState.CONNECTED
    assert pair.now == 0.0


def test_reordered_flights_recover_with_openssl_retransmission() -> None:
    """Every flight arrives in reverse order, so the receiver reads a ChangeCipherSpec
    before the messages it follows and discards it. Only OpenSSL's own retransmission
    (fresh record numbers) repairs that, and it runs on OpenSSL's wall clock: this
    test drives the endpoints with the real monotonic clock, as the adapter does."""
    pair = DtlsPair(*dtls_endpoints(c_mtu=200, s_mtu=200), reorder=True)
    start = time.monotonic()
    pair.clock = time.monotonic
    pair.run()
    assert pair.client.state is DtlsState.CONNECTED
    assert pair.server.state is DtlsState.CONNECTED
    assert completed(pair.events["client"]).keys == completed(pair.events["server"]).keys
    assert 0.9 <= time.monotonic() - start < 4.0  # one OpenSSL timeout, about 1 s


def test_timeout_when_nothing_gets_through() -> None:
    pair = DtlsPair(*dtls_endpoints(c_max_retransmissions=3), drop=lambda d, i, data: True)
    pair.run()
    assert pair.client.state is DtlsState.FAILED
    failure = pair.events["client"][-1]
    assert isinstance(failure, HandshakeFailed)
    assert isinstance(failure.error, DtlsTimeoutError)
    # 1 + 2 + 4 s of backoff, then the fourth timeout gives up.
    assert pair.now == pytest.approx(15.0, abs=0.1)
    assert pair.server.state is DtlsState.CONNECTING  # it never heard anything


@pytest.mark.parametrize("liar", ["client", "server"])
def test_wrong_fingerprint_fails_the_handshake(liar: str) -> None:
    wrong = [("sha-256", DtlsCertificate.generate(ISSUED).fingerprint())]
    client, server = dtls_endpoints()
    if liar == "server":  # the client expects someone else
        client = DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, wrong)
    else:
        server = DtlsEndpoint(SERVER_CERT, DtlsRole.SERVER, wrong)
    pair = DtlsPair(client, server)
    pair.run()
    checker = pair.client if liar == "server" else pair.server
    checker_events = pair.events["client" if liar == "server" else "server"]
    assert checker.state is DtlsState.FAILED
    assert isinstance(checker_events[-1].error, DtlsFingerprintError)
    assert checker.keys is None
    # The other side got the fatal alert and failed too; neither exported keys.
    assert pair.client.state is DtlsState.FAILED and pair.server.state is DtlsState.FAILED
    assert not any(isinstance(e, HandshakeComplete) for e in pair.events["client"])
    assert not any(isinstance(e, HandshakeComplete) for e in pair.events["server"])


@pytest.mark.parametrize("fingerprint", ["right", "wrong"])
def test_an_ended_association_is_freed_at_once_not_by_the_garbage_collector(
    fingerprint: str,
) -> None:
    """Each association holds about 90 KB of OpenSSL's memory. Its endpoint
    and ``SSL.Connection`` go when the last reference does, as a handshake
    that completed or failed ends: no reference cycle leaves them to a full
    collection (a busy ``wadud serve`` grew by megabytes per round of calls
    while they waited for one)."""
    client, server = dtls_endpoints()
    if fingerprint == "wrong":
        wrong = [("sha-256", DtlsCertificate.generate(ISSUED).fingerprint())]
        server = DtlsEndpoint(SERVER_CERT, DtlsRole.SERVER, wrong)
    gc.disable()
    try:
        pair = DtlsPair(client, server)
        pair.run()
        assert (client.state is DtlsState.CONNECTED) == (fingerprint == "right")
        client.close()
        server.close()
        held = [weakref.ref(x) for x in (client, server, client._ssl, server._ssl)]
        del client, server, pair
        assert [ref() for ref in held] == [None] * 4
    finally:
        gc.enable()


@pytest.mark.parametrize(
    ("our_role", "cipher"),
    [
        # The RSA peer is the server: only an ECDHE-RSA suite can be agreed,
        # and the server follows our order of preference.
        (DtlsRole.CLIENT, "ECDHE-RSA-AES128-GCM-SHA256"),
        # We are the server: our P-256 certificate serves an ECDSA suite (the
        # first of the peer's @STRENGTH order), and the RSA peer's own
        # certificate only signs its CertificateVerify.
        (DtlsRole.SERVER, "ECDHE-ECDSA-AES256-GCM-SHA384"),
    ],
)
def test_a_peer_with_an_rsa_certificate(our_role: DtlsRole, cipher: str) -> None:
    """RFC 8827 section 6.5: both ECDHE suites, whichever side holds the RSA key."""
    rsa_peer = gstreamer_like_certificate()
    their_role = DtlsRole.SERVER if our_role is DtlsRole.CLIENT else DtlsRole.CLIENT
    ours = DtlsEndpoint(CLIENT_CERT, our_role, [("sha-256", rsa_peer.fingerprint())])
    theirs = DtlsEndpoint(
        rsa_peer,
        their_role,
        [("sha-256", CLIENT_CERT.fingerprint())],
        profiles=GSTREAMER_PROFILES,
    )
    pair = DtlsPair(*((ours, theirs) if our_role is DtlsRole.CLIENT else (theirs, ours)))
    pair.run()
    assert ours.state is DtlsState.CONNECTED, pair.events
    assert theirs.state is DtlsState.CONNECTED, pair.events
    c, s = completed(pair.events["client"]), completed(pair.events["server"])
    assert c.cipher == s.cipher == cipher
    assert c.profile == s.profile == SRTP_AES128_CM_SHA1_80
    assert c.keys == s.keys
    mine = SrtpSession.from_keys(c.keys, our_role)
    peer = SrtpSession.from_keys(c.keys, their_role)
    rtp = bytes([0x80, 0x60, 0x12, 0x34]) + (7).to_bytes(4, "big") + bytes(4) + b"media" * 20
    assert peer.unprotect(mine.protect(rtp)) == rtp
    assert mine.unprotect(peer.protect(rtp)) == rtp


def test_an_rsa_peer_must_still_match_its_fingerprint() -> None:
    wrong = [("sha-256", SERVER_CERT.fingerprint())]
    ours = DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, wrong)
    theirs = DtlsEndpoint(
        gstreamer_like_certificate(), DtlsRole.SERVER, [("sha-256", CLIENT_CERT.fingerprint())]
    )
    pair = DtlsPair(ours, theirs)
    pair.run()
    assert ours.state is DtlsState.FAILED
    assert isinstance(pair.events["client"][-1].error, DtlsFingerprintError)
    assert not any(isinstance(e, HandshakeComplete) for e in pair.events["server"])


def test_fingerprint_rules() -> None:
    with pytest.raises(DtlsFingerprintError):
        DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, [("md5", "00:11")])
    # Unknown algorithms are ignored; every known one must match, in any case.
    fp = SERVER_CERT.fingerprint().lower()
    client = DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, [("md5", "00"), ("SHA-256", fp)])
    _, server = dtls_endpoints()
    pair = DtlsPair(client, server)
    pair.run()
    assert pair.client.state is DtlsState.CONNECTED
    both = [("sha-256", SERVER_CERT.fingerprint()), ("sha-1", "00:11")]
    pair = DtlsPair(DtlsEndpoint(CLIENT_CERT, DtlsRole.CLIENT, both), dtls_endpoints()[1])
    pair.run()
    assert pair.client.state is DtlsState.FAILED


def test_fingerprint_format_matches_aiortc() -> None:
    for algorithm in ("sha-256", "sha-384", "sha-512"):
        assert CLIENT_CERT.fingerprint(algorithm) == certificate_digest(
            CLIENT_CERT.certificate, algorithm
        )
    with pytest.raises(DtlsError):
        CLIENT_CERT.fingerprint("md5")


def test_application_data_and_close_notify() -> None:
    pair = DtlsPair(*dtls_endpoints())
    pair.run()
    pair.client.send(b"sctp init")
    pair.pump()
    assert pair.events["server"][-1] == ApplicationData(b"sctp init")
    pair.server.send(b"sctp init-ack")
    pair.pump()
    assert pair.events["client"][-1] == ApplicationData(b"sctp init-ack")
    pair.client.close()
    pair.pump()
    assert pair.client.state is DtlsState.CLOSED
    assert pair.server.state is DtlsState.CLOSED
    assert pair.events["server"][-1] == Closed(None)
    with pytest.raises(DtlsStateError):
        pair.client.send(b"late")


def test_state_errors_and_drops() -> None:
    client, server = dtls_endpoints()
    with pytest.raises(DtlsStateError):
        client.send(b"too early")
    server.receive(b"\x16\xfe\xfd", 0.0)  # not started: dropped
    server.start(0.0)
    with pytest.raises(DtlsStateError):
        server.start(0.0)
    server.receive(b"\x80\x60rtp", 0.0)  # not DTLS: dropped
    server.receive(b"", 0.0)
    assert server.dropped == 3
    server.close()
    assert server.state is DtlsState.CLOSED
    server.close()


def test_roles_from_sdp() -> None:
    assert role_for_remote_setup("active") is DtlsRole.SERVER
    assert role_for_remote_setup("passive") is DtlsRole.CLIENT
    assert role_for_remote_setup("actpass") is DtlsRole.CLIENT
    assert role_for_remote_setup("actpass", default=DtlsRole.SERVER) is DtlsRole.SERVER
    assert local_setup(DtlsRole.CLIENT) == "active"
    assert local_setup(DtlsRole.SERVER) == "passive"
    with pytest.raises(DtlsError):
        role_for_remote_setup("holdconn")


def test_keying_material_split() -> None:
    """RFC 5764 section 4.2: client key, server key, client salt, server salt."""
    material = bytes(range(56))
    keys = SrtpKeys.from_material(SRTP_AEAD_AES_128_GCM, material)
    assert keys.client_key == material[0:16] and keys.server_key == material[16:32]
    assert keys.client_salt == material[32:44] and keys.server_salt == material[44:56]
    assert keys.local_key(DtlsRole.CLIENT) == keys.remote_key(DtlsRole.SERVER)
    with pytest.raises(DtlsError):
        SrtpKeys.from_material(SRTP_AES128_CM_SHA1_80, material)


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(garbage=st.lists(st.binary(min_size=1, max_size=120), max_size=4), connected=st.booleans())
def test_random_datagrams_never_raise(garbage: list[bytes], connected: bool) -> None:
    client, server = dtls_endpoints()
    if connected:
        DtlsPair(client, server).run()
    else:
        server.start(0.0)
    for data in garbage:
        # Put most of them in DTLS's range so OpenSSL really reads them.
        server.receive(bytes([20 + data[0] % 44]) + data[1:], 1.0)
        server.datagrams_to_send()
        server.handle_timer(2.0)
    while server.next_event() is not None:
        pass
    assert server.state in (DtlsState.CONNECTING, DtlsState.CONNECTED, DtlsState.FAILED)


# --- cross-check against aiortc, in memory ------------------------------------------


class _MemoryIce:
    """Just what RTCDtlsTransport uses of an RTCIceTransport: _send, _recv and role."""

    def __init__(self, role: str, inbox: asyncio.Queue[bytes], outbox: asyncio.Queue[bytes]):
        self.role = role
        self._inbox, self._outbox = inbox, outbox

    async def _recv(self) -> bytes:
        return await self._inbox.get()

    async def _send(self, data: bytes) -> None:
        await self._outbox.put(data)


async def _drive(ep: DtlsEndpoint, inbox: asyncio.Queue[bytes], out: asyncio.Queue[bytes]) -> None:
    loop = asyncio.get_running_loop()
    ep.start(loop.time())
    while ep.state is DtlsState.CONNECTING:
        for data in ep.datagrams_to_send():
            await out.put(data)
        timer = ep.get_timer()
        wait = 0.05 if timer is None else max(0.0, timer - loop.time())
        try:
            data = await asyncio.wait_for(inbox.get(), wait)
        except TimeoutError:
            ep.handle_timer(loop.time())
        else:
            ep.receive(data, loop.time())
    for data in ep.datagrams_to_send():
        await out.put(data)


@pytest.mark.parametrize("our_role", [DtlsRole.SERVER, DtlsRole.CLIENT])
async def test_against_aiortc(our_role: DtlsRole) -> None:
    to_us: asyncio.Queue[bytes] = asyncio.Queue()
    to_them: asyncio.Queue[bytes] = asyncio.Queue()
    certificate = RTCCertificate.generateCertificate()
    theirs = RTCDtlsTransport(_MemoryIce("controlled", to_them, to_us), [certificate])  # type: ignore[arg-type]
    theirs._set_role("client" if our_role is DtlsRole.SERVER else "server")
    ours = DtlsEndpoint(
        CLIENT_CERT,
        our_role,
        [(f.algorithm, f.value) for f in certificate.getFingerprints()],
    )
    params = RTCDtlsParameters(
        fingerprints=[RTCDtlsFingerprint("sha-256", CLIENT_CERT.fingerprint())]
    )
    await asyncio.wait_for(asyncio.gather(theirs.start(params), _drive(ours, to_us, to_them)), 10)
    try:
        assert theirs.state == "connected"
        assert ours.state is DtlsState.CONNECTED
        done = ours.next_event()
        assert isinstance(done, HandshakeComplete)
        assert done.profile == SRTP_AEAD_AES_128_GCM
        # Their SRTP sessions come from their own key split: packets must cross.
        session = SrtpSession.from_keys(done.keys, our_role)
        rtp = bytes([0x80, 0x60, 0x12, 0x34]) + (7).to_bytes(4, "big") + bytes(4) + b"media" * 20
        assert session.unprotect(theirs._tx_srtp.protect(rtp)) == rtp
        assert theirs._rx_srtp.unprotect(session.protect(rtp)) == rtp
        rtcp = bytes([0x80, 201, 0, 1]) + (7).to_bytes(4, "big")
        assert theirs._rx_srtp.unprotect_rtcp(session.protect_rtcp(rtcp)) == rtcp
        assert session.unprotect_rtcp(theirs._tx_srtp.protect_rtcp(rtcp)) == rtcp
    finally:
        await theirs.stop()
