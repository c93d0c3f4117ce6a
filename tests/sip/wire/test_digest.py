"""Digest credentials (sip/wire/digest.py) checked against the RFCs' own
worked examples, read back from their header form, and the stateless
nonces' three answers."""

from __future__ import annotations

import dataclasses

import pytest

from sip.errors import SipParseError
from sip.wire.digest import Credentials, Nonces, challenge, parse_credentials, verify

# RFC 2617 section 3.5 (MD5, qop=auth): the password is "Circle Of Life".
RFC2617 = (
    'Digest username="Mufasa", realm="testrealm@host.com",'
    ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth,'
    ' nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1",'
    ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
# RFC 7616 section 3.9.1 (SHA-256): the password is "Circle of Life".
RFC7616 = (
    'Digest username="Mufasa", realm="http-auth@example.org", uri="/dir/index.html",'
    ' algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", nc=00000001,'
    ' cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", qop=auth,'
    ' response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",'
    ' opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)


def test_the_rfcs_worked_examples_verify_and_a_wrong_password_does_not() -> None:
    md5 = parse_credentials(RFC2617)
    assert md5.algorithm == "MD5" and md5.qop == "auth" and md5.nc == "00000001"
    assert verify(md5, "GET", "Circle Of Life")
    assert not verify(md5, "GET", "Circle of Life")
    assert not verify(md5, "INVITE", "Circle Of Life")  # the method is in the hash
    sha = parse_credentials(RFC7616)
    assert sha.algorithm == "SHA-256"
    assert verify(sha, "GET", "Circle of Life")
    assert not verify(sha, "GET", "Circle Of Life")


def test_an_answer_without_qop_is_checked_the_rfc_2069_way() -> None:
    # response = MD5(HA1:nonce:HA2), computed by hand for these values.
    import hashlib

    ha1 = hashlib.md5(b"shifa:wadud:s3cret").hexdigest()
    ha2 = hashlib.md5(b"INVITE:sip:visit@192.0.2.1").hexdigest()
    response = hashlib.md5(f"{ha1}:n1:{ha2}".encode()).hexdigest()
    header = (
        f'Digest username="shifa",realm="wadud",nonce="n1",uri="sip:visit@192.0.2.1",'
        f'response="{response}"'
    )
    credentials = parse_credentials(header)
    assert credentials.qop is None and verify(credentials, "INVITE", "s3cret")
    assert not verify(dataclasses.replace(credentials, algorithm="MD4"), "INVITE", "s3cret")


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        'Digest realm="r", nonce="n", uri="u", response="x"',  # no username
        'Digest username="a", realm="r", nonce="n", uri="u", response="x", qop=auth',
        'Digest username="a, realm="r"',
        'Digest username=a b, realm="r", nonce="n", uri="u", response="x"',
        "Digest",
    ],
)
def test_credentials_that_are_not_are_refused(header: str) -> None:
    with pytest.raises(SipParseError):
        parse_credentials(header)


def test_the_challenge_names_realm_nonce_algorithm_and_qop() -> None:
    assert (
        challenge("wadud", "abc") == 'Digest realm="wadud", nonce="abc", algorithm=MD5, qop="auth"'
    )
    assert challenge("wadud", "abc", stale=True).endswith(", stale=true")


def test_nonces_are_ours_and_fresh_or_not() -> None:
    nonces = Nonces(lifetime=300)
    nonce = nonces.issue(1000.0)
    assert nonces.check(nonce, 1000.0) == "ok"
    assert nonces.check(nonce, 1299.0) == "ok"
    assert nonces.check(nonce, 1301.0) == "stale"
    assert nonces.check(nonce, 999.0) == "stale"  # from the future: not trusted
    assert Nonces().check(nonce, 1000.0) == "bad"  # another process's key
    mac = nonce.rsplit(".", 1)[1]
    assert nonces.check(f"2000.000.{mac}", 2000.0) == "bad"  # a time it did not sign
    assert nonces.check("not a nonce", 1000.0) == "bad"
    assert isinstance(parse_credentials(RFC2617), Credentials)
