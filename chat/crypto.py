"""Encryption at rest for chat bodies and attachments: AES-256-GCM
(NIST SP 800-38D) through ``cryptography``.

Each row keeps the id of the key that sealed it and its 96-bit random nonce,
so keys rotate without a flag day: put the new key first in
``chat_encryption_keys`` (it seals from then on), keep the old ones after it
(they still open old rows), and :func:`reencrypt` moves old rows to the new
key in batches before the old one is dropped. The associated data binds a
ciphertext to its conversation, so a row copied into another conversation
does not open.
"""

from __future__ import annotations

import base64
import os
from uuid import UUID

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from chat.errors import ChatError
from privacy.subject_keys import KeyShredded, Sealed, SubjectKeys, is_subject_kid
from wadud.config import Settings
from wadud.errors import ConfigError, Gone

DERIVED_KID = "sk1"


class DecryptError(ChatError):
    code = "decrypt-failed"
    title = "Stored chat data could not be decrypted"


class Shredded(ChatError, Gone):
    """The data was sealed with an erased patient's key."""

    code = "erased"
    title = "This data was erased at the patient's request"


class Keyring:
    """Named AES-256 keys; the first seals, any opens."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise ConfigError("the chat keyring needs at least one key")
        self._keys = list(keys)
        self._aead: dict[str, AESGCM] = {}
        for kid, key in keys:
            if len(key) != 32:
                raise ConfigError(f"chat key {kid!r} must be 32 bytes (AES-256)")
            if kid in self._aead:
                raise ConfigError(f"chat key id {kid!r} appears twice")
            self._aead[kid] = AESGCM(key)
        self.current = keys[0][0]
        #: Patients' data keys, wrapped by this ring.
        self.subjects = SubjectKeys(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keyring:
        entries = []
        for item in settings.chat_encryption_keys:
            kid, sep, b64 = item.partition(":")
            if not sep or not kid or len(kid) > 32:
                raise ConfigError("chat_encryption_keys entries are KID:BASE64KEY")
            try:
                key = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4))
            except ValueError:
                raise ConfigError(f"chat key {kid!r} is not base64") from None
            entries.append((kid, key))
        if not entries:
            # One key derived from the server secret (RFC 5869 HKDF), so a
            # development server encrypts with no set-up. Production sets keys
            # of its own: this one changes if the secret does.
            secret = settings.secret_key.encode()
            key = HKDF(
                algorithm=hashes.SHA256(), length=32, salt=b"wadud-chat", info=b"chat at rest v1"
            ).derive(secret)
            entries.append((DERIVED_KID, key))
        return cls(entries)

    def rotated(self, key_id: str, key: bytes) -> Keyring:
        """This ring with ``key`` first: it seals, the others still open."""
        return Keyring([(key_id, key), *self._keys])

    def seal(self, plaintext: bytes, aad: bytes) -> Sealed:
        nonce = os.urandom(12)
        return Sealed(self.current, nonce, self._aead[self.current].encrypt(nonce, plaintext, aad))

    async def seal_for(
        self, conn: asyncpg.Connection | asyncpg.Pool, subject: UUID, plaintext: bytes, aad: bytes
    ) -> Sealed:
        """Seal with the data key of ``subject`` (the conversation's patient)."""
        key = await self.subjects.key_for(conn, subject)
        nonce, data = key.seal(plaintext, aad)
        return Sealed(key.kid, nonce, data)

    async def load(self, conn: asyncpg.Connection | asyncpg.Pool, key_ids: set[str]) -> None:
        """Fetch the subject keys among ``key_ids``, so :meth:`open` can use them."""
        await self.subjects.preload(conn, key_ids)

    async def open_any(
        self,
        conn: asyncpg.Connection | asyncpg.Pool,
        key_id: str,
        nonce: bytes,
        data: bytes,
        aad: bytes,
    ) -> bytes:
        """:meth:`open`, fetching a subject key first when the row names one."""
        if is_subject_kid(key_id):
            await self.subjects.preload(conn, {key_id})
        return self.open(key_id, nonce, data, aad)

    def open(self, key_id: str, nonce: bytes, data: bytes, aad: bytes) -> bytes:
        """Open a ciphertext; a subject key must be loaded first (:meth:`load`)
        (:class:`Shredded` when the patient was erased)."""
        if is_subject_kid(key_id):
            try:
                return self.subjects.cached(key_id).open(nonce, data, aad)
            except KeyShredded:
                raise Shredded("sealed with an erased patient's key") from None
            except KeyError:
                raise DecryptError(f"subject key {key_id!r} was not loaded") from None
            except InvalidTag:
                raise DecryptError("a stored chat ciphertext failed authentication") from None
        aead = self._aead.get(key_id)
        if aead is None:
            raise DecryptError(f"chat key {key_id!r} is not configured")
        try:
            return aead.decrypt(nonce, data, aad)
        except InvalidTag:
            raise DecryptError("a stored chat ciphertext failed authentication") from None


def message_aad(conversation_id: UUID) -> bytes:
    return b"wadud-chat-message:" + conversation_id.bytes


def attachment_aad(attachment_id: UUID) -> bytes:
    return b"wadud-chat-attachment:" + attachment_id.bytes


async def reencrypt(pool: asyncpg.Pool, keyring: Keyring, *, batch: int = 500) -> int:
    """Re-seal message bodies not under the current key; return how many.

    Bodies sealed by a server key only (subject keys are re-wrapped instead,
    :meth:`privacy.subject_keys.SubjectKeys.rewrap`, which this calls first).
    Attachments are content-addressed objects in the store and
    are re-sealed by uploading again (their rows name their own key, so old
    ones keep opening while the old key is configured). Rows are taken with
    ``SKIP LOCKED`` so several nodes can run this at once."""
    await keyring.subjects.rewrap(pool)
    done = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """SELECT conversation_id, seq, key_id, nonce, body FROM chat_events
                   WHERE key_id IS NOT NULL AND key_id <> $1 AND key_id NOT LIKE 's:%'
                   LIMIT $2 FOR UPDATE SKIP LOCKED""",
                keyring.current,
                batch,
            )
            for r in rows:
                aad = message_aad(r["conversation_id"])
                sealed = keyring.seal(keyring.open(r["key_id"], r["nonce"], r["body"], aad), aad)
                await conn.execute(
                    """UPDATE chat_events SET key_id = $3, nonce = $4, body = $5
                       WHERE conversation_id = $1 AND seq = $2""",
                    r["conversation_id"],
                    r["seq"],
                    sealed.key_id,
                    sealed.nonce,
                    sealed.data,
                )
        done += len(rows)
        if len(rows) < batch:
            return done
