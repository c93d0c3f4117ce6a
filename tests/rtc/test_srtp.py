"""SRTP sessions from DTLS-exported keys: both directions, both profiles, typed
errors, and the key split checked against aiortc's own."""

from __future__ import annotations

import contextlib
import os
import struct

import pytest
from aiortc.rtcdtlstransport import SRTP_AEAD_AES_128_GCM as AIORTC_GCM
from aiortc.rtcdtlstransport import SRTP_AES128_CM_SHA1_80 as AIORTC_CM
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc.dtls import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AES128_CM_SHA1_80,
    DtlsRole,
    DtlsState,
    SrtpKeys,
    SrtpProfile,
)
from rtc.errors import SrtpAuthError, SrtpError, SrtpReplayError
from rtc.srtp import DEFAULT_WINDOW, SEND_WINDOW, SrtpSession
from tests.rtc.dtls_pair import DtlsPair, dtls_endpoints

PROFILES = [SRTP_AEAD_AES_128_GCM, SRTP_AES128_CM_SHA1_80]


def handshake(profile: SrtpProfile) -> tuple[SrtpKeys, SrtpKeys]:
    """A real DTLS handshake in memory restricted to ``profile``; both sides' keys."""
    client, server = dtls_endpoints(c_profiles=(profile,), s_profiles=(profile,))
    DtlsPair(client, server).run()
    assert client.state is server.state is DtlsState.CONNECTED
    assert client.keys is not None and server.keys is not None
    assert client.keys.profile == profile
    return client.keys, server.keys


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\x90" * 160) -> bytes:
    return struct.pack("!BBHII", 0x80, 111, seq, seq * 960, ssrc) + payload


def rtcp_rr(ssrc: int = 0x11223344) -> bytes:
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


@pytest.fixture(scope="module", params=PROFILES, ids=lambda p: p.name)
def sessions(request: pytest.FixtureRequest) -> tuple[SrtpProfile, SrtpKeys, SrtpKeys]:
    client_keys, server_keys = handshake(request.param)
    return request.param, client_keys, server_keys


def pair(keys: tuple[SrtpProfile, SrtpKeys, SrtpKeys]) -> tuple[SrtpSession, SrtpSession]:
    _, client_keys, server_keys = keys
    return (
        SrtpSession.from_keys(client_keys, DtlsRole.CLIENT),
        SrtpSession.from_keys(server_keys, DtlsRole.SERVER),
    )


def test_both_directions(sessions: tuple[SrtpProfile, SrtpKeys, SrtpKeys]) -> None:
    client, server = pair(sessions)
    for seq in range(1, 20):
        packet = rtp(seq)
        protected = client.protect(packet)
        assert protected != packet and len(protected) > len(packet)
        assert server.unprotect(protected) == packet
        back = rtp(seq, ssrc=0x55667788)
        assert client.unprotect(server.protect(back)) == back
    assert server.unprotect_rtcp(client.protect_rtcp(rtcp_rr())) == rtcp_rr()
    assert client.unprotect_rtcp(server.protect_rtcp(rtcp_rr(7))) == rtcp_rr(7)
    # A session never accepts its own direction's packets.
    with pytest.raises(SrtpAuthError):
        client.unprotect(client.protect(rtp(100)))


def test_tag_lengths(sessions: tuple[SrtpProfile, SrtpKeys, SrtpKeys]) -> None:
    profile, *_ = sessions
    client, _ = pair(sessions)
    # RFC 7714: a 16-byte GCM tag; RFC 3711: an 80-bit HMAC-SHA1 tag.
    expected = 16 if profile == SRTP_AEAD_AES_128_GCM else 10
    assert len(client.protect(rtp(1))) - len(rtp(1)) == expected


def test_tampered_packet_raises_auth_error(
    sessions: tuple[SrtpProfile, SrtpKeys, SrtpKeys],
) -> None:
    client, server = pair(sessions)
    protected = bytearray(client.protect(rtp(1)))
    protected[20] ^= 0x01
    with pytest.raises(SrtpAuthError):
        server.unprotect(bytes(protected))
    rtcp = bytearray(client.protect_rtcp(rtcp_rr()))
    rtcp[9] ^= 0x80
    with pytest.raises(SrtpAuthError):
        server.unprotect_rtcp(bytes(rtcp))
    # The failure did not poison the session.
    assert server.unprotect(client.protect(rtp(2))) == rtp(2)


def test_replay_raises_replay_error(sessions: tuple[SrtpProfile, SrtpKeys, SrtpKeys]) -> None:
    client, server = pair(sessions)
    protected = client.protect(rtp(5))
    server.unprotect(protected)
    with pytest.raises(SrtpReplayError):
        server.unprotect(protected)
    # Outbound allows the same sequence number again (a NACK answered as sent).
    assert client.protect(rtp(5)) == protected


def test_the_windows_of_what_is_received_and_what_is_sent(
    sessions: tuple[SrtpProfile, SrtpKeys, SrtpKeys],
) -> None:
    client, server = pair(sessions)
    last = 1100
    sent = {seq: client.protect(rtp(seq)) for seq in range(1, last + 1)}
    # What is received: 1024 packets of reordering are taken, older is not.
    server.unprotect(sent[last])
    oldest = last - DEFAULT_WINDOW + 1
    assert server.unprotect(sent[oldest]) == rtp(oldest)
    with pytest.raises(SrtpReplayError):
        server.unprotect(sent[oldest - 10])
    # What is sent again as it was (no RTX) within SEND_WINDOW packets of its
    # stream; older fails to protect, a typed error the hot path counts.
    oldest = last - SEND_WINDOW + 1
    assert client.protect(rtp(oldest)) == sent[oldest]
    with pytest.raises(SrtpReplayError):
        client.protect(rtp(oldest - 10))
    # Another stream (SSRC) has its own window.
    assert server.unprotect(client.protect(rtp(3, ssrc=9))) == rtp(3, ssrc=9)


def test_wrong_key_is_an_auth_error() -> None:
    client_keys, _ = handshake(SRTP_AES128_CM_SHA1_80)
    other, _ = handshake(SRTP_AES128_CM_SHA1_80)
    sender = SrtpSession.from_keys(client_keys, DtlsRole.CLIENT)
    stranger = SrtpSession.from_keys(other, DtlsRole.SERVER)
    with pytest.raises(SrtpAuthError):
        stranger.unprotect(sender.protect(rtp(1)))


def test_malformed_and_oversized_packets_are_srtp_errors() -> None:
    _, server = pair((SRTP_AES128_CM_SHA1_80, *handshake(SRTP_AES128_CM_SHA1_80)))
    with pytest.raises(SrtpError):
        server.unprotect(b"\x80")
    with pytest.raises(SrtpError):
        server.unprotect(rtp(1, payload=bytes(2000)))
    with pytest.raises(SrtpError):
        server.protect(rtp(1, payload=bytes(2000)))
    with pytest.raises(SrtpError):
        SrtpSession("SRTP_NULL_SHA1_32", bytes(30), bytes(30))
    with pytest.raises(SrtpError):
        SrtpSession(SRTP_AEAD_AES_128_GCM.name, bytes(4), bytes(28))


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_srtp_errors(data: bytes) -> None:
    session = SrtpSession(SRTP_AEAD_AES_128_GCM.name, bytes(28), bytes(range(28)))
    for unprotect in (session.unprotect, session.unprotect_rtcp):
        with contextlib.suppress(SrtpError):
            unprotect(data)


@given(material=st.binary(min_size=60, max_size=60))
def test_key_split_matches_aiortc(material: bytes) -> None:
    """aiortc's own split of the exporter output (its get_key_and_salt) gives the same
    write keys as ours, for both roles and both profiles."""
    for ours, theirs in ((SRTP_AEAD_AES_128_GCM, AIORTC_GCM), (SRTP_AES128_CM_SHA1_80, AIORTC_CM)):
        assert ours.name.encode() == theirs.openssl_profile
        assert (ours.key_length, ours.salt_length) == (theirs.key_length, theirs.salt_length)
        n = 2 * (ours.key_length + ours.salt_length)
        keys = SrtpKeys.from_material(ours, material[:n])
        assert keys.local_key(DtlsRole.CLIENT) == theirs.get_key_and_salt(material[:n], 0)
        assert keys.local_key(DtlsRole.SERVER) == theirs.get_key_and_salt(material[:n], 1)


def test_random_keys_round_trip() -> None:
    for profile in PROFILES:
        size = profile.key_length + profile.salt_length
        a, b = os.urandom(size), os.urandom(size)
        left = SrtpSession(profile.name, a, b)
        right = SrtpSession(profile.name, b, a)
        assert right.unprotect(left.protect(rtp(9))) == rtp(9)
