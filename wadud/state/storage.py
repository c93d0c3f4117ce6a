"""Where uploaded files live: a small interface, a local-folder implementation
and an S3-compatible one (AWS S3, MinIO, Ceph, ...).

Files are content-addressed: the key is the SHA-256 of the bytes (hex), so the
same file uploaded twice is stored once and a key can never name a path
outside the store. An implementation only has to keep the three coroutines of
:class:`Storage`. Which one the app uses comes from the ``storage_*`` settings
(:func:`storage_of`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from wadud.config import Settings
from wadud.errors import ConfigError, NotFound, UpstreamError

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["LocalStorage", "S3Storage", "Storage", "close_storage", "create", "storage_of"]

_KEY = re.compile(r"^[0-9a-f]{64}$")
_EXTRA = "storage"


# Magic numbers: a stored file's type comes from its bytes, never its name or
# a header the client chose.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)


def sniff_type(data: bytes) -> str | None:
    """The content type of ``data`` judged by its first bytes: JPEG, PNG,
    GIF, WebP or PDF; None for anything else. Callers narrow it to the types
    they accept."""
    for magic, ctype in _MAGIC:
        if data.startswith(magic):
            return ctype
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


class Storage(Protocol):
    async def put(self, data: bytes) -> str:
        """Store ``data``; return its key (the hex SHA-256)."""
        ...

    async def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; :class:`NotFound` if none."""
        ...

    async def delete(self, key: str) -> None:
        """Forget ``key``; no error if it is already gone."""
        ...


def _check(key: str) -> str:
    # Keys come from our own rows, but a path or object name is built from
    # them, so check.
    if not _KEY.match(key):
        raise NotFound("no such stored file")
    return key


class LocalStorage:
    """Files under ``root/ab/cd/<sha256>``: two levels of fan-out keep any one
    folder small."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        _check(key)
        return self.root / key[:2] / key[2:4] / key

    def _put(self, data: bytes, key: str) -> None:
        path = self._path(key)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # Write aside and rename, so a reader never sees half a file and two
        # concurrent writers of the same bytes both end with a whole one.
        tmp = path.with_name(f".{key}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    async def put(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(self._put, data, key)
        return key

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound("no such stored file") from None

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete, key)

    async def close(self) -> None:
        return None


class S3Storage:
    """Objects ``<prefix><ab>/<sha256>`` in one bucket of an S3-compatible
    service, through aiobotocore (botocore's signing and retries on aiohttp).

    The client is opened on first use and closed by :meth:`close`; path-style
    addressing, so MinIO and other self-hosted services work without DNS
    tricks."""

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str = "",
        region: str = "us-east-1",
        access_key: str = "",
        secret_key: str = "",
        prefix: str = "",
    ) -> None:
        if not bucket:
            raise ConfigError("storage_backend = s3 needs storage_s3_bucket")
        self.bucket = bucket
        self.endpoint = endpoint or None
        self.region = region
        self.access_key = access_key or None
        self.secret_key = secret_key or None
        self.prefix = prefix
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None
        self._opening = asyncio.Lock()

    async def _s3(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._opening:
            if self._client is None:
                # Imported late: only deployments that choose S3 need it.
                from aiobotocore.config import AioConfig  # type: ignore[import-untyped,import-not-found,unused-ignore]
                from aiobotocore.session import get_session  # type: ignore[import-untyped,import-not-found,unused-ignore]

                stack = contextlib.AsyncExitStack()
                self._client = await stack.enter_async_context(
                    get_session().create_client(
                        "s3",
                        endpoint_url=self.endpoint,
                        region_name=self.region,
                        aws_access_key_id=self.access_key,
                        aws_secret_access_key=self.secret_key,
                        config=AioConfig(
                            s3={"addressing_style": "path"},
                            retries={"max_attempts": 3, "mode": "standard"},
                            connect_timeout=5,
                            read_timeout=30,
                        ),
                    )
                )
                self._stack = stack
        return self._client

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key[:2]}/{_check(key)}"

    async def put(self, data: bytes) -> str:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped,import-not-found,unused-ignore]

        key = hashlib.sha256(data).hexdigest()
        s3 = await self._s3()
        try:
            await s3.put_object(
                Bucket=self.bucket,
                Key=self._name(key),
                Body=data,
                ContentType="application/octet-stream",
            )
        except (BotoCoreError, ClientError) as exc:
            raise UpstreamError(f"object store refused the upload: {exc}") from exc
        return key

    async def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped,import-not-found,unused-ignore]

        s3 = await self._s3()
        try:
            resp = await s3.get_object(Bucket=self.bucket, Key=self._name(key))
            async with resp["Body"] as body:
                data: bytes = await body.read()
            return data
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise NotFound("no such stored file") from None
            raise UpstreamError(f"object store failed: {exc}") from exc
        except BotoCoreError as exc:
            raise UpstreamError(f"object store failed: {exc}") from exc

    async def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped,import-not-found,unused-ignore]

        s3 = await self._s3()
        try:
            # S3 answers 204 for a missing key too, which is what we promise.
            await s3.delete_object(Bucket=self.bucket, Key=self._name(key))
        except (BotoCoreError, ClientError) as exc:
            raise UpstreamError(f"object store failed: {exc}") from exc

    async def close(self) -> None:
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()


def create(settings: Settings) -> LocalStorage | S3Storage:
    """The store the settings name."""
    if settings.storage_backend == "local":
        return LocalStorage(settings.data_dir / "uploads")
    if settings.storage_backend == "s3":
        return S3Storage(
            bucket=settings.storage_s3_bucket,
            endpoint=settings.storage_s3_endpoint,
            region=settings.storage_s3_region,
            access_key=settings.storage_s3_access_key,
            secret_key=settings.storage_s3_secret_key,
        )
    raise ConfigError(f"storage_backend must be local or s3, not {settings.storage_backend!r}")


def storage_of(app: web.Application) -> Storage:
    """The app's file store, made from the settings on first use (or whatever
    something installed under ``app[keys.EXTRAS]["storage"]`` before)."""
    # The app's keys (aiohttp, asyncpg) are imported here: a media worker
    # records through create() and never loads either.
    from wadud.state import keys

    extras = app[keys.EXTRAS]
    store: Storage | None = extras.get(_EXTRA)
    if store is None:
        store = create(app[keys.SETTINGS])
        extras[_EXTRA] = store
    return store


async def close_storage(app: web.Application) -> None:
    """Close the app's store if one was opened (for a cleanup context)."""
    from wadud.state import keys

    store = app[keys.EXTRAS].pop(_EXTRA, None)
    close = getattr(store, "close", None)
    if close is not None:
        await close()
