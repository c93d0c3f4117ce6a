-- API keys: a key id and a secret that a clinic's server or a load tester
-- presents (HTTP Basic) to mint room tokens from outside
-- (wadud/web/api_keys.py). Only a hash of the secret is kept: the secret is
-- 256 random bits, so one SHA-256 is as strong as a slow password hash and
-- costs a mint nothing. A revoked key stays, for the audit trail to name.
--
-- A clinic's key is that clinic's data, as every tenant row; a load key
-- belongs to the deployment and may only mint rooms under its reserved prefix.
CREATE TABLE api_keys (
    id           text PRIMARY KEY CHECK (id ~ '^wk_[0-9a-f]{16}$'),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    scope        text NOT NULL CHECK (scope IN ('load', 'clinic')),
    clinic_id    uuid REFERENCES clinics (id) ON DELETE CASCADE,
    secret_hash  bytea NOT NULL CHECK (length(secret_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CHECK ((scope = 'clinic') = (clinic_id IS NOT NULL))
);
CREATE INDEX api_keys_clinic ON api_keys (clinic_id) WHERE clinic_id IS NOT NULL;
