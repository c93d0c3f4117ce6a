"""The webhook signature (wadud.signing, docs/webhooks.md): a round trip
verifies, any change to the body, the timestamp or the secret fails, and a
malformed header is a BadSignature, never another exception."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wadud import signing

SECRET = "whsec_" + "k" * 43
NOW = 1_790_000_000


@given(body=st.binary(max_size=2000), flip=st.integers(min_value=0))
def test_round_trip_and_any_flipped_byte_fails(body: bytes, flip: int) -> None:
    header = signing.sign(body, SECRET, NOW)
    assert signing.verify(body, header, SECRET, NOW) == NOW
    if body:
        i = flip % len(body)
        tampered = body[:i] + bytes([body[i] ^ 1]) + body[i + 1 :]
        with pytest.raises(signing.BadSignature):
            signing.verify(tampered, header, SECRET, NOW)


@given(header=st.text(max_size=300))
def test_any_header_is_verified_or_refused_with_bad_signature(header: str) -> None:
    with pytest.raises(signing.BadSignature):
        signing.verify(b"{}", header, SECRET, NOW)


def test_stale_future_and_other_secrets_fail_and_rotation_passes() -> None:
    header = signing.sign(b"{}", SECRET, NOW)
    for now in (NOW + 301, NOW - 301):
        with pytest.raises(signing.BadSignature):
            signing.verify(b"{}", header, SECRET, now)
    with pytest.raises(signing.BadSignature):
        signing.verify(b"{}", header, "whsec_other", NOW)
    both = signing.sign(b"{}", ["whsec_old", SECRET], NOW)
    assert signing.verify(b"{}", both, "whsec_old", NOW) == NOW
    assert signing.verify(b"{}", both, SECRET, NOW) == NOW
    assert both.startswith(f"t={NOW},v1=")
