"""Attachments: type by content, size limit, encrypted in the store, served
to members only through signed links that expire; and the two stores, the
local folder and S3 (against a real S3-compatible server, moto's)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import chat.service
from chat.errors import LinkExpired
from tests.chat.conftest import World, make_patient
from tests.conftest import Api, free_port
from wadud.errors import NotFound
from wadud.state import keys
from wadud.state.storage import LocalStorage, S3Storage, Storage

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(256)) * 4
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"


def _conv(w: World) -> str:
    return f"/api/v1/chat/conversations/{w.conversation_id}"


async def _upload(
    api: Api, w: World, data: bytes, ctype: str, token: str | None = None
) -> tuple[int, Any]:
    resp = await api.client.post(
        _conv(w) + "/attachments",
        data=data,
        headers={"Authorization": f"Bearer {token or w.patient_token}", "Content-Type": ctype},
    )
    return resp.status, await resp.json(content_type=None)


async def test_upload_share_and_fetch_through_signed_url(api: Api, world: World) -> None:
    w = world
    status, att = await _upload(api, w, PNG, "image/png")
    assert status == 201, att
    assert (att["content_type"], att["size_bytes"]) == ("image/png", len(PNG))
    sent = await api.post(
        _conv(w) + "/messages",
        {"client_id": "a1", "body": "photo of the rash", "attachment_id": att["id"]},
        token=w.patient_token,
        expect=201,
    )
    events = await api.get(_conv(w) + "/events?after=0", token=w.doctor.token)
    assert events[0]["attachment"] == {
        "id": att["id"],
        "content_type": "image/png",
        "size": len(PNG),
    }
    assert sent["seq"] == 1
    link = await api.get(f"/api/v1/chat/attachments/{att['id']}/url", token=w.doctor.token)
    resp = await api.client.get(link["url"])
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "image/png"
    assert await resp.read() == PNG
    # At rest it is ciphertext.
    key = await api.app[keys.DB].fetchval(
        "SELECT storage_key FROM chat_attachments WHERE id = $1", uuid.UUID(att["id"])
    )
    stored = next((Path(api.app[keys.SETTINGS].data_dir) / "uploads").rglob(key)).read_bytes()
    assert PNG[16:64] not in stored
    # A tampered or expired link is refused.
    resp = await api.client.get(link["url"].replace("sig=", "sig=x"))
    assert resp.status == 403
    svc = api.app[chat.service.CHAT]
    old, _ = svc.sign(uuid.UUID(att["id"]), time.time() - 3600)
    resp = await api.client.get(old)
    assert resp.status == 403
    assert (await resp.json(content_type=None))["code"] == "link-expired"
    # Another attachment id with this signature is refused.
    resp = await api.client.get(link["url"].replace(att["id"], str(uuid.uuid4())))
    assert resp.status == 403


async def test_non_members_cannot_upload_or_get_links(api: Api, world: World) -> None:
    w = world
    _, att = await _upload(api, w, PDF, "application/pdf")
    stranger, _ = await make_patient(api)
    await api.get(f"/api/v1/chat/attachments/{att['id']}/url", token=stranger, expect=404)
    await api.get(f"/api/v1/chat/attachments/{uuid.uuid4()}/url", token=stranger, expect=404)
    status, _ = await _upload(api, w, PNG, "image/png", token=stranger)
    assert status == 404
    # Someone else's upload cannot be attached to your message.
    r = await api.post(
        _conv(w) + "/messages",
        {"client_id": "x", "body": "", "attachment_id": att["id"]},
        token=w.doctor.token,
    )
    assert r["status"] == 404
    # Without the signature there is nothing to fetch.
    resp = await api.client.get(f"/api/v1/chat/attachments/{att['id']}/content")
    assert resp.status == 422


@pytest.mark.parametrize(
    ("data", "ctype", "status"),
    [
        (b"MZ\x90\x00 this is an exe", "image/png", 415),  # the name/type lies
        (PNG, "application/pdf", 415),  # the header disagrees with the bytes
        (PNG, "text/plain", 415),
        (b"GIF89a" + b"\x00" * 20, "application/octet-stream", 201),  # type from the bytes
        (b"", "image/png", 422),
        (b"\xff\xd8\xff" + b"\x00" * 70_000, "image/jpeg", 413),  # over the test limit
    ],
)
async def test_upload_type_and_size_checks(
    api: Api, world: World, data: bytes, ctype: str, status: int
) -> None:
    got, body = await _upload(api, world, data, ctype)
    assert got == status, body


# -- the stores ------------------------------------------------------------------


async def keeps_and_deletes(store: Storage, data: bytes, foreign: str) -> None:
    """What every store does: gives ``data`` back, deletes it (twice without
    error), and then has nothing at its key, nor ever at ``foreign``."""
    key = await store.put(data)
    assert await store.get(key) == data
    await store.delete(key)
    await store.delete(key)
    with pytest.raises(NotFound):
        await store.get(key)
    with pytest.raises(NotFound):
        await store.get(foreign)


async def test_local_storage(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path)
    assert await store.put(b"hello") == await store.put(b"hello")
    await keeps_and_deletes(store, b"hello", "../../etc/passwd")


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server on loopback: moto's standalone server."""
    pytest.importorskip("moto.server")
    pytest.importorskip("aiobotocore")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(log.read_text())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_s3_storage_against_real_server(s3_endpoint: str) -> None:
    from aiobotocore.session import get_session  # type: ignore[import-untyped]

    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
    async with get_session().create_client(
        "s3", endpoint_url=s3_endpoint, region_name="us-east-1", **creds
    ) as s3:
        await s3.create_bucket(Bucket="chat")
    store = S3Storage(
        bucket="chat",
        endpoint=s3_endpoint,
        access_key="test",
        secret_key="test",
        prefix="uploads/",
    )
    try:
        await keeps_and_deletes(store, PNG * 50, "not-a-key")
    finally:
        await store.close()


async def test_forged_non_ascii_signature_is_403_not_500(api: Api) -> None:
    resp = await api.client.get(
        f"/api/v1/chat/attachments/{uuid.uuid4()}/content",
        params={"exp": "99999999999", "sig": "é" * 43},
    )
    assert resp.status == 403, await resp.text()
    svc = api.app[chat.service.CHAT]
    with pytest.raises(LinkExpired):
        svc.verify(uuid.uuid4(), 2**40, "é" * 43, time.time())
