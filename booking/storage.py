"""Where uploaded files live: a small interface and a local-folder implementation.

Files are content-addressed: the key is the SHA-256 of the bytes (hex), so the
same document uploaded twice is stored once and a key can never name a path
outside the store. Another implementation (S3, GCS) only has to keep the same
three coroutines.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
from pathlib import Path
from typing import Protocol

from aiohttp import web

from wadud import keys
from wadud.errors import NotFound

__all__ = ["LocalStorage", "Storage", "storage_of"]

_KEY = re.compile(r"^[0-9a-f]{64}$")
_EXTRA = "booking_storage"


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


class LocalStorage:
    """Files under ``root/ab/cd/<sha256>``: two levels of fan-out keep any one
    folder small."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        # Keys come from our own rows, but a path is built from them, so check.
        if not _KEY.match(key):
            raise NotFound("no such stored file")
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


def storage_of(app: web.Application) -> Storage:
    """The app's document store (a :class:`LocalStorage` under
    ``DATA_DIR/uploads`` unless something installed another under
    ``app[keys.EXTRAS]["booking_storage"]``)."""
    extras = app[keys.EXTRAS]
    store: Storage | None = extras.get(_EXTRA)
    if store is None:
        store = LocalStorage(app[keys.SETTINGS].data_dir / "uploads")
        extras[_EXTRA] = store
    return store
