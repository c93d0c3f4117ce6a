"""Per-subject data keys: crypto-shredding for data that belongs to one patient.

Each patient gets one random AES-256 key (NIST SP 800-38D, AES-GCM), stored in
``subject_keys`` wrapped by a server key (a :class:`Wrapper`, chat's keyring in
practice). Features seal the patient's data with it (:meth:`SubjectKeys.key_for`)
and name it in their rows as ``s:<key id>``; erasure deletes the row
(:func:`shred`), after which no copy of those ciphertexts opens again, in
backups and replicas included.

The key row is read once and cached for :data:`CACHE_SECONDS`: a replica that
cached a key keeps it that long after a shred elsewhere, which is why erasure
also deletes the rows that key sealed rather than relying on the shred alone.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import asyncpg
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "PREFIX",
    "DataKey",
    "KeyShredded",
    "Sealed",
    "SubjectKeys",
    "Wrapper",
    "is_subject_kid",
    "shred",
]

PREFIX = "s:"
CACHE_SECONDS = 60.0
_CACHE_MAX = 50_000


class KeyShredded(LookupError):
    """The subject's key is gone (erased): what it sealed cannot be opened."""


@dataclass(frozen=True)
class Sealed:
    """AES-GCM ciphertext with the id of the key that sealed it and its nonce."""

    key_id: str
    nonce: bytes
    data: bytes


class Wrapper(Protocol):
    """A server keyring: the first key seals, any configured key opens."""

    @property
    def current(self) -> str: ...
    def seal(self, plaintext: bytes, aad: bytes) -> Sealed: ...
    def open(self, key_id: str, nonce: bytes, data: bytes, aad: bytes) -> bytes: ...


def _wrap_aad(subject: UUID, key_id: UUID) -> bytes:
    # Bind the wrapped key to its subject and id: a row copied onto another
    # subject does not unwrap.
    return b"wadud-subject-key:" + subject.bytes + key_id.bytes


def is_subject_kid(kid: str | None) -> bool:
    return kid is not None and kid.startswith(PREFIX)


@dataclass(frozen=True)
class DataKey:
    kid: str  # "s:" + the key row's id
    subject: UUID
    aead: AESGCM

    def seal(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """(nonce, ciphertext)."""
        nonce = os.urandom(12)
        return nonce, self.aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        return self.aead.decrypt(nonce, data, aad)


class SubjectKeys:
    """Gets, creates and caches subjects' data keys."""

    def __init__(self, wrapper: Wrapper) -> None:
        self.wrapper = wrapper
        self._by_subject: dict[UUID, tuple[DataKey, float]] = {}
        self._by_kid: dict[str, tuple[DataKey | None, float]] = {}

    def _keep(self, key: DataKey) -> None:
        if len(self._by_kid) > _CACHE_MAX:
            self._by_kid.clear()
            self._by_subject.clear()
        until = time.monotonic() + CACHE_SECONDS
        self._by_subject[key.subject] = (key, until)
        self._by_kid[key.kid] = (key, until)

    def _unwrap(self, row: asyncpg.Record) -> DataKey:
        raw = self.wrapper.open(
            row["wrap_key_id"],
            row["nonce"],
            row["wrapped"],
            _wrap_aad(row["subject_id"], row["id"]),
        )
        return DataKey(PREFIX + row["id"].hex, row["subject_id"], AESGCM(raw))

    async def key_for(self, conn: asyncpg.Connection | asyncpg.Pool, subject: UUID) -> DataKey:
        """The subject's key, created on first use (two racing creators agree
        on one row)."""
        hit = self._by_subject.get(subject)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        row = await conn.fetchrow("SELECT * FROM subject_keys WHERE subject_id = $1", subject)
        if row is None:
            key_id = UUID(bytes=os.urandom(16), version=4)
            sealed = self.wrapper.seal(AESGCM.generate_key(256), _wrap_aad(subject, key_id))
            await conn.execute(
                """INSERT INTO subject_keys (id, subject_id, wrap_key_id, nonce, wrapped)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (subject_id) DO NOTHING""",
                key_id,
                subject,
                sealed.key_id,
                sealed.nonce,
                sealed.data,
            )
            row = await conn.fetchrow("SELECT * FROM subject_keys WHERE subject_id = $1", subject)
            assert row is not None
        key = self._unwrap(row)
        self._keep(key)
        return key

    async def preload(self, conn: asyncpg.Connection | asyncpg.Pool, kids: set[str]) -> None:
        """Fetch the keys named ``s:...`` in ``kids`` that are not cached, so
        :meth:`cached` answers for them (None for a shredded one)."""
        now = time.monotonic()
        wanted = [
            k for k in kids if is_subject_kid(k) and self._by_kid.get(k, (None, 0.0))[1] <= now
        ]
        if not wanted:
            return
        ids = []
        for k in wanted:
            try:
                ids.append(UUID(hex=k[len(PREFIX) :]))
            except ValueError:
                continue
        rows = await conn.fetch("SELECT * FROM subject_keys WHERE id = ANY($1::uuid[])", ids)
        found = {PREFIX + r["id"].hex: r for r in rows}
        for k in wanted:
            row = found.get(k)
            if row is None:
                self._by_kid[k] = (None, now + CACHE_SECONDS)
            else:
                self._keep(self._unwrap(row))

    def cached(self, kid: str) -> DataKey:
        """A key :meth:`preload` or :meth:`key_for` fetched; :class:`KeyShredded`
        if it is gone, ``KeyError`` if it was never fetched."""
        key, _ = self._by_kid[kid]
        if key is None:
            raise KeyShredded(kid)
        return key

    async def open(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        kid: str,
        nonce: bytes,
        data: bytes,
        aad: bytes,
    ) -> bytes:
        """Open one ciphertext sealed by a subject key (:class:`KeyShredded`
        if erased; ``InvalidTag`` if tampered)."""
        if kid not in self._by_kid or self._by_kid[kid][1] <= time.monotonic():
            await self.preload(conn, {kid})
        return self.cached(kid).open(nonce, data, aad)

    def forget(self, subject: UUID) -> None:
        """Drop a subject's key from this process's cache (after a shred)."""
        hit = self._by_subject.pop(subject, None)
        if hit is not None:
            self._by_kid[hit[0].kid] = (None, time.monotonic() + CACHE_SECONDS)

    async def rewrap(self, pool: asyncpg.Pool) -> int:
        """Re-wrap keys not wrapped by the wrapper's current key (after a
        server key rotation); return how many."""
        done = 0
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT * FROM subject_keys WHERE wrap_key_id <> $1 FOR UPDATE SKIP LOCKED",
                self.wrapper.current,
            )
            for row in rows:
                aad = _wrap_aad(row["subject_id"], row["id"])
                raw = self.wrapper.open(row["wrap_key_id"], row["nonce"], row["wrapped"], aad)
                sealed = self.wrapper.seal(raw, aad)
                await conn.execute(
                    """UPDATE subject_keys SET wrap_key_id = $2, nonce = $3, wrapped = $4
                       WHERE id = $1""",
                    row["id"],
                    sealed.key_id,
                    sealed.nonce,
                    sealed.data,
                )
                done += 1
        return done


async def shred(conn: asyncpg.Connection, subject: UUID) -> int:
    """Destroy the subject's data key; return 1 if there was one."""
    status = await conn.execute("DELETE FROM subject_keys WHERE subject_id = $1", subject)
    return int(status.split()[-1])
