"""The frame codec and the pure parts around it (no sockets): parse never
raises anything but ProtocolError, valid frames round-trip, and encryption at
rest with key rotation."""

from __future__ import annotations

import base64
import json
import os
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chat import protocol as p
from chat.crypto import DecryptError, Keyring, message_aad, reencrypt
from chat.service import RateLimiter
from tests.chat.conftest import World
from tests.conftest import Api
from tests.wadud.framing import OUTCOMES, frame_objects, outcome
from wadud.config import Settings
from wadud.state import keys
from wadud.state.storage import sniff_type as sniff


@given(st.text() | st.binary())
def test_parse_arbitrary_bytes_only_raises_protocol_errors(data: str | bytes) -> None:
    assert outcome(p.parse, p.ProtocolError, data) in OUTCOMES


@given(frame_objects(p.TYPES, max_size=6))
def test_parse_arbitrary_objects_only_raises_protocol_errors(obj: dict[str, Any]) -> None:
    try:
        frame = p.parse(json.dumps(obj))
    except p.ProtocolError:
        return
    assert frame.type == obj["type"]


# Valid frames' text: no NUL, and no lone surrogate (category Cs: no
# character at all, which a frame refuses as not valid Unicode).
texts = st.text(st.characters(exclude_characters="\x00", exclude_categories=("Cs",)), max_size=200)
cids = st.uuids()
client_ids = st.text(min_size=1, max_size=100)
frames = st.one_of(
    st.builds(
        p.Send,
        conversation_id=cids,
        client_id=client_ids,
        body=texts,
        attachment_id=st.none() | st.uuids(),
        id=st.none() | st.text(min_size=1, max_size=64),
    ),
    st.builds(p.Subscribe, conversation_id=cids, after=st.none() | st.integers(0, 2**62)),
    st.builds(
        p.Edit,
        conversation_id=cids,
        client_id=client_ids,
        target_seq=st.integers(1, 2**62),
        body=texts,
    ),
    st.builds(
        p.Delete, conversation_id=cids, client_id=client_ids, target_seq=st.integers(1, 2**62)
    ),
    st.builds(p.Read, conversation_id=cids, seq=st.integers(0, 2**62)),
    st.builds(p.Typing, conversation_id=cids),
    st.builds(
        p.History,
        conversation_id=cids,
        before=st.none() | st.integers(1, 2**62),
        limit=st.integers(1, 200),
    ),
    st.builds(p.Ping),
    st.builds(p.Auth, token=st.text(min_size=1, max_size=100)),
)


@given(frames)
def test_valid_frames_round_trip(frame: p.Frame) -> None:
    text = p.encode(frame)
    again = p.parse(text)
    assert again == frame
    assert p.encode(again) == text


def test_errors_name_the_frame_and_field() -> None:
    cid = uuid.uuid4()
    with pytest.raises(p.InvalidFrame) as info:
        p.parse(json.dumps({"type": "read", "id": "r9", "conversation_id": str(cid), "seq": "7"}))
    assert info.value.ref == "r9"
    assert "seq" in info.value.detail
    with pytest.raises(p.UnknownType) as unknown:
        p.parse('{"type": "explode", "id": "x"}')
    assert unknown.value.ref == "x"
    with pytest.raises(p.InvalidFrame):
        p.parse(
            json.dumps(
                {"type": "send", "conversation_id": str(cid), "client_id": "1", "body": "a\x00b"}
            )
        )
    with pytest.raises(p.BadFrame):
        p.parse("[" * 100_000)
    with pytest.raises(p.BodyTooLarge):
        p.check_body("ب" * 10, 19)
    assert p.check_body("ب" * 10, 20) == ("ب" * 10).encode()
    # Text travels unescaped.
    assert "سلام" in p.encode(p.Send(conversation_id=cid, client_id="1", body="سلام"))


def test_sniff_by_content() -> None:
    assert sniff(b"\x89PNG\r\n\x1a\nrest") == "image/png"
    assert sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "image/webp"
    assert sniff(b"%PDF-1.4") == "application/pdf"
    assert sniff(b"<html>") is None
    assert sniff(b"") is None


def test_rate_limiter() -> None:
    lim = RateLimiter(rate=2.0, burst=2)
    u = uuid.uuid4()
    assert [lim.take(u, 0.0) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert lim.take(u, 0.5) == 0.0
    assert lim.take(uuid.uuid4(), 0.5) == 0.0


def test_keyring_seal_open_and_bind_to_conversation() -> None:
    ring = Keyring.from_settings(Settings(secret_key="s" * 40))
    cid = uuid.uuid4()
    sealed = ring.seal("سلام".encode(), message_aad(cid))
    assert ring.open(sealed.key_id, sealed.nonce, sealed.data, message_aad(cid)) == "سلام".encode()
    with pytest.raises(DecryptError):
        ring.open(sealed.key_id, sealed.nonce, sealed.data, message_aad(uuid.uuid4()))
    with pytest.raises(DecryptError):
        ring.open("gone", sealed.nonce, sealed.data, message_aad(cid))
    # Rotation: the new key seals, the old still opens.
    k1 = os.urandom(32)
    old = Keyring.from_settings(Settings(chat_encryption_keys=[f"k1:{_b64(k1)}"]))
    s1 = old.seal(b"a", b"")
    assert s1.key_id == "k1"
    new = Keyring.from_settings(
        Settings(chat_encryption_keys=[f"k2:{_b64(os.urandom(32))}", f"k1:{_b64(k1)}"])
    )
    assert new.current == "k2"
    assert new.open("k1", s1.nonce, s1.data, b"") == b"a"
    assert old.rotated("k3", os.urandom(32)).open("k1", s1.nonce, s1.data, b"") == b"a"


def _b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


async def test_reencrypt_moves_rows_to_the_current_key(api: Api, world: World) -> None:
    from chat.service import CHAT

    w = world
    svc = api.app[CHAT]
    for i in range(5):
        await api.post(
            f"/api/v1/chat/conversations/{w.conversation_id}/messages",
            {"client_id": str(i), "body": f"نص {i}"},
            token=w.patient_token,
        )
    pool = api.app[keys.DB]
    # New bodies are sealed with the patient's data key; two rows stand for
    # bodies sealed by the server key before subject keys existed.
    kids = await pool.fetch("SELECT DISTINCT key_id FROM chat_events")
    assert [r["key_id"][:2] for r in kids] == ["s:"]
    cid = uuid.UUID(w.conversation_id)
    for seq in (1, 2):
        legacy = svc.keyring.seal(f"نص {seq - 1}".encode(), message_aad(cid))
        await pool.execute(
            "UPDATE chat_events SET key_id = $3, nonce = $4, body = $5"
            " WHERE conversation_id = $1 AND seq = $2",
            cid,
            seq,
            legacy.key_id,
            legacy.nonce,
            legacy.data,
        )
    new_key = os.urandom(32)
    rotated = svc.keyring.rotated("k-new", new_key)
    assert await reencrypt(pool, rotated, batch=1) == 2
    kids = await pool.fetch("SELECT DISTINCT left(key_id, 2) AS k FROM chat_events ORDER BY 1")
    assert [r["k"] for r in kids] == ["k-", "s:"]
    # The patient's data key is now wrapped by the new server key.
    wraps = await pool.fetch("SELECT DISTINCT wrap_key_id FROM subject_keys")
    assert [r["wrap_key_id"] for r in wraps] == ["k-new"]
    # Everything opens with the new key alone: the old one can be dropped.
    only_new = Keyring([("k-new", new_key)])
    svc.keyring = only_new
    svc.hub.keyring = only_new
    events = await api.get(
        f"/api/v1/chat/conversations/{w.conversation_id}/events?after=0", token=w.doctor.token
    )
    assert [e["body"] for e in events] == [f"نص {i}" for i in range(5)]


@settings(max_examples=30)
@given(st.sampled_from(["", "k", "k:", ":abc", "k:!!!", "k:" + "A" * 10]))
def test_bad_key_settings_are_config_errors(entry: str) -> None:
    from wadud.errors import ConfigError

    with pytest.raises(ConfigError):
        Keyring.from_settings(Settings(chat_encryption_keys=[entry]))


def test_slow_client_is_cut_not_waited_for() -> None:
    from chat.hub import Client

    cut: list[int] = []
    client = Client(uuid.uuid4(), queue_max=3, on_overflow=lambda: cut.append(1))
    for i in range(6):
        client.put(str(i))
    assert client.queue.qsize() == 3
    assert cut == [1]
    assert client.overflowed


def test_lone_surrogates_are_refused_not_crashed_on() -> None:
    cid = str(uuid.uuid4())
    for field in ("body", "client_id"):
        frame = {"type": "send", "conversation_id": cid, "client_id": "c", "body": "x"}
        frame[field] = "a\ud800b"
        with pytest.raises(p.InvalidFrame):
            p.parse(json.dumps(frame))
    with pytest.raises(p.InvalidFrame) as info:
        p.parse(json.dumps({"type": "ping", "id": "\udfff"}))
    assert info.value.ref is None
