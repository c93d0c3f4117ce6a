"""The phone side's offer/answer (sip/wire/sdp.py): what a trunk offers is
answered with the bridge's best codec, digits and keys; what cannot be
agreed is refused with the error answered 488."""

from __future__ import annotations

import base64
import contextlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtc.sdp.attributes import Direction
from rtc.sdp.session import SessionDescription
from sip.errors import SdpOfferError
from sip.wire.sdp import Crypto, SrtpSuite, answer_offer, make_offer, read_answer

KEY = bytes(range(30))
THEIR_KEY = base64.b64encode(bytes(range(100, 130))).decode()


def offer(*lines: str, proto: str = "RTP/AVP", formats: str = "0 8 9 101") -> str:
    head = [
        "v=0", "o=trunk 53655765 2353687637 IN IP4 192.0.2.7", "s=-", "c=IN IP4 192.0.2.7",
        "t=0 0", f"m=audio 6000 {proto} {formats}",
    ]  # fmt: skip
    return "\r\n".join([*head, *lines]) + "\r\n"


ASTERISK = offer(
    "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:9 G722/8000",
    "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16", "a=ptime:20", "a=sendrecv",
)  # fmt: skip


def test_a_trunks_offer_gets_wideband_audio_and_digits() -> None:
    agreed, text = answer_offer(ASTERISK, "198.51.100.4", 40000, session_id=7, key=KEY)
    assert (agreed.host, agreed.port) == ("192.0.2.7", 6000)
    assert (agreed.codec, agreed.payload_type, agreed.dtmf_payload_type) == ("G722", 9, 101)
    assert agreed.direction is Direction.SENDRECV and not agreed.on_hold
    assert agreed.local is None and agreed.remote is None
    answer = SessionDescription.parse(text)
    (media,) = answer.media
    assert (media.port, media.proto, media.formats) == (40000, "RTP/AVP", ["9", "101"])
    assert answer.connection is not None and answer.connection.address == "198.51.100.4"
    assert "a=ptime:20" in text and "a=sendrecv" in text


def test_g711_only_is_answered_in_what_was_offered_first_of_ours() -> None:
    agreed, text = answer_offer(offer(formats="8 0"), "198.51.100.4", 40000, session_id=1, key=None)
    # Static payload types need no rtpmap (RFC 3551 section 6); µ-law before A-law.
    assert (agreed.codec, agreed.payload_type, agreed.dtmf_payload_type) == ("PCMU", 0, None)
    assert "m=audio 40000 RTP/AVP 0\r\n" in text and "telephone-event" not in text


def test_a_held_call_is_answered_recvonly() -> None:
    held = ASTERISK.replace("a=sendrecv", "a=sendonly")
    agreed, text = answer_offer(held, "198.51.100.4", 40000, session_id=1, key=None, version=2)
    assert agreed.on_hold and "a=recvonly" in text and " 2 IN IP4 " in text
    # On the session, for every section (RFC 8866 section 6.7).
    session = ASTERISK.replace("a=sendrecv\r\n", "").replace("t=0 0", "t=0 0\r\na=inactive")
    agreed, text = answer_offer(session, "198.51.100.4", 40000, session_id=1, key=None)
    assert agreed.direction is Direction.INACTIVE and "a=inactive" in text


def test_sdes_is_answered_with_a_key_of_ours_in_the_best_suite_both_speak() -> None:
    savp = offer(
        "a=rtpmap:0 PCMU/8000",
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{THEIR_KEY}|2^20|1:32",
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}",
        "a=crypto:3 F8_128_HMAC_SHA1_80 inline:xx",
        proto="RTP/SAVP", formats="0",
    )  # fmt: skip
    agreed, text = answer_offer(savp, "198.51.100.4", 40000, session_id=1, key=KEY)
    assert agreed.remote == Crypto(2, SrtpSuite.AES_CM_128_HMAC_SHA1_80, bytes(range(100, 130)))
    assert agreed.local == Crypto(2, SrtpSuite.AES_CM_128_HMAC_SHA1_80, KEY)
    assert "m=audio 40000 RTP/SAVP 0" in text
    assert f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{base64.b64encode(KEY).decode()}" in text


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (offer("a=rtpmap:18 G729/8000", formats="18"), "no codec in common"),
        (offer("a=rtpmap:0 PCMU/8000", proto="RTP/SAVP", formats="0"), "SRTP"),
        (offer(proto="UDP/TLS/RTP/SAVPF", formats="0"), "not RTP or SDES-SRTP"),
        (offer(formats="0").replace("m=audio", "m=video"), "no audio"),
        (offer(formats="0").replace("c=IN IP4 192.0.2.7", "c=IN IP4 trunk.example"), "address"),
        ("hello", "not a session description"),
    ],
)
def test_what_cannot_be_agreed_is_refused(text: str, why: str) -> None:
    with pytest.raises(SdpOfferError, match=why):
        answer_offer(text, "198.51.100.4", 40000, session_id=1, key=KEY)


def test_dial_out_offers_every_codec_and_reads_the_answer() -> None:
    text = make_offer("198.51.100.4", 40000, session_id=9, key=KEY)
    (media,) = SessionDescription.parse(text).media
    assert media.formats == ["9", "0", "8", "101"] and media.proto == "RTP/SAVP"
    # A phone that takes µ-law answers with its own key.
    agreed, answer = answer_offer(text, "192.0.2.7", 6000, session_id=3, key=bytes(30))
    ours = read_answer(answer, key=KEY)
    assert (ours.host, ours.port, ours.codec) == ("192.0.2.7", 6000, "G722")
    assert ours.dtmf_payload_type == 101
    assert ours.remote == Crypto(1, SrtpSuite.AES_CM_128_HMAC_SHA1_80, bytes(30))
    assert ours.local is not None and ours.local.key == KEY
    assert agreed.remote is not None and agreed.remote.key == KEY
    with pytest.raises(SdpOfferError, match="no key"):
        read_answer(answer.replace("a=crypto", "a=x-crypto"), key=KEY)
    g729 = answer.replace(" 9 101", " 18 101").replace("rtpmap:9 G722", "rtpmap:18 G729")
    with pytest.raises(SdpOfferError, match="no codec"):
        read_answer(g729, key=KEY)


@given(st.text(max_size=300))
def test_any_text_is_answered_or_refused_with_the_typed_error(text: str) -> None:
    with contextlib.suppress(SdpOfferError):
        answer_offer(text, "198.51.100.4", 40000, session_id=1, key=os.urandom(30))


@given(st.lists(st.sampled_from(ASTERISK.split("\r\n")), max_size=14))
def test_any_mix_of_an_offers_lines_is_answered_or_refused(lines: list[str]) -> None:
    with contextlib.suppress(SdpOfferError):
        answer_offer("\r\n".join(lines) + "\r\n", "198.51.100.4", 40000, session_id=1, key=None)
