"""REST credentials, nonces and the peer policy, without sockets."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc.stun import long_term_key
from turn.credentials import CredentialVerifier, NonceFactory, rest_credentials, rest_expiry
from turn.errors import StunRequestError
from turn.policy import PeerPolicy


def test_rest_credentials_are_coturn_use_auth_secret() -> None:
    username, password = rest_credentials("north", "alice", 3600, 1_700_000_000.5)
    assert username == "1700003600:alice"
    # coturn: base64(HMAC-SHA1(static-auth-secret, username)).
    expected = base64.b64encode(hmac.new(b"north", username.encode(), hashlib.sha1).digest())
    assert password == expected.decode()


def test_rest_credentials_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="ttl"):
        rest_credentials("s", "u", 0, 0)
    with pytest.raises(ValueError, match=":"):
        rest_credentials("s", "a:b", 10, 0)
    assert rest_credentials("s", "", 10, 100)[0] == "110"


def test_verifier_expiry_rotation_and_users() -> None:
    v = CredentialVerifier("r", secrets=("new", "old"), static_users={"carol": "pw"})
    username, password = rest_credentials("old", "alice", 60, 1000)
    keys = v.keys_for(username, 1000)
    assert long_term_key(username, "r", password) in keys
    with pytest.raises(StunRequestError) as err:
        v.keys_for(username, 1061)
    assert err.value.code == 401
    assert err.value.metric == "expired"
    assert v.keys_for("carol", 0) == (long_term_key("carol", "r", "pw"),)
    with pytest.raises(StunRequestError, match="401"):
        v.keys_for("mallory", 0)
    assert CredentialVerifier.user_of(username) == "alice"
    assert CredentialVerifier.user_of("carol") == "carol"


@given(st.text(max_size=30))
def test_rest_expiry_never_raises(username: str) -> None:
    value = rest_expiry(username)
    assert value is None or value >= 0


def test_nonces_are_bound_to_address_and_time() -> None:
    f = NonceFactory(b"k" * 32, 10)
    nonce = f.issue("192.0.2.1", 100.0)
    assert f.check(nonce, "192.0.2.1", 105.0) is True
    assert f.check(nonce, "192.0.2.1", 200.0) is False
    assert f.check(nonce, "192.0.2.9", 105.0) is None
    assert f.check(b"x" * 24, "192.0.2.1", 105.0) is None
    assert NonceFactory(b"other" * 8, 10).check(nonce, "192.0.2.1", 105.0) is None


@given(st.binary(max_size=40))
def test_nonce_check_never_raises(junk: bytes) -> None:
    assert NonceFactory(b"k", 10).check(junk, "1.2.3.4", 0) in (None, False, True)


@pytest.mark.parametrize(
    "ip",
    [
        "127.0.0.1", "127.9.9.9", "10.0.0.1", "172.31.255.255", "192.168.0.1", "100.64.0.1",
        "169.254.169.254", "0.0.0.0", "0.1.2.3", "224.0.0.1", "239.255.255.250",
        "255.255.255.255", "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "ff02::1",
        "::ffff:127.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "2002:7f00:1::1",
        "not-an-ip",
    ],
)  # fmt: skip
def test_default_policy_denies_special_addresses(ip: str) -> None:
    assert not PeerPolicy().allowed(ip)


@pytest.mark.parametrize("ip", ["8.8.8.8", "9.9.9.9", "2001:4860:4860::8888", "1.1.1.1"])
def test_default_policy_allows_public_addresses(ip: str) -> None:
    assert PeerPolicy().allowed(ip)


def test_allow_list_overrides_defaults_but_not_explicit_deny() -> None:
    p = PeerPolicy(allow=("127.0.0.0/8", "10.1.0.0/16"), deny=("10.1.2.0/24",))
    assert p.allowed("127.0.0.1")
    assert p.allowed("10.1.9.9")
    assert not p.allowed("10.1.2.3")
    assert not p.allowed("10.2.0.1")
    assert not p.allowed("169.254.169.254")


@given(st.ip_addresses())
def test_policy_agrees_with_ipaddress_flags(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    allowed = PeerPolicy().allowed(str(ip))
    special = ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified
    if isinstance(ip, ipaddress.IPv4Address):
        special = (
            special
            or ip in ipaddress.ip_network("10.0.0.0/8")
            or ip in ipaddress.ip_network("192.168.0.0/16")
        )
    if special:
        assert not allowed
