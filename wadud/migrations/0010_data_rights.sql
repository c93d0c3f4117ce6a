-- Data rights (issue 15): per-subject data keys for crypto-shredding, and
-- the mark an erased account keeps.

-- One AES-256 data key per patient, wrapped (AES-GCM) by the server's chat
-- key named in wrap_key_id. Chat bodies and attachments of the patient's
-- conversations are sealed with it (their key_id is 's:' || id). Erasure
-- deletes the row: every copy of those ciphertexts, in backups, replicas
-- and object-store versions included, stops opening.
CREATE TABLE subject_keys (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subject_id  uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    wrap_key_id text NOT NULL,
    nonce       bytea NOT NULL,
    wrapped     bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- An erased account keeps its row (bookings and the ledger point at it) but
-- nothing personal: no email, no password, no name, disabled.
ALTER TABLE users ADD COLUMN erased_at timestamptz;

-- Retention finds idle conversations by their last activity.
CREATE INDEX chat_conversations_activity
    ON chat_conversations ((COALESCE(last_event_at, created_at)));
