-- Foundation: tenants, accounts and tokens, the outbox, idempotency keys.

CREATE TABLE clinics (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                   text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    region                 text NOT NULL CHECK (region IN ('PK', 'AE', 'QA', 'SA')),
    currency               text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    -- Platform commission; NULL means the configured default.
    commission_bp          integer CHECK (commission_bp BETWEEN 0 AND 10000),
    commission_fixed_minor bigint NOT NULL DEFAULT 0 CHECK (commission_fixed_minor >= 0),
    created_at             timestamptz NOT NULL DEFAULT now()
);

-- Feature flags per region (e.g. instant consultations, a payment gateway).
CREATE TABLE region_features (
    region  text NOT NULL CHECK (region IN ('PK', 'AE', 'QA', 'SA')),
    feature text NOT NULL CHECK (feature ~ '^[a-z][a-z0-9_.-]{0,62}$'),
    enabled boolean NOT NULL,
    PRIMARY KEY (region, feature)
);

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text CHECK (email IS NULL OR length(email) BETWEEN 3 AND 320),
    password_hash text,
    role          text NOT NULL CHECK (role IN ('patient', 'doctor', 'clinic_staff', 'admin')),
    clinic_id     uuid REFERENCES clinics (id),
    display_name  text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    anonymous     boolean NOT NULL DEFAULT false,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    upgraded_at   timestamptz,
    -- Anonymous sessions are patients with no credentials until they upgrade.
    CHECK (anonymous = (email IS NULL)),
    CHECK (anonymous = (password_hash IS NULL)),
    CHECK (NOT anonymous OR role = 'patient'),
    -- Doctors and clinic staff belong to exactly one clinic; others to none.
    CHECK ((role IN ('doctor', 'clinic_staff')) = (clinic_id IS NOT NULL))
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE INDEX users_clinic ON users (clinic_id) WHERE clinic_id IS NOT NULL;

-- A login starts a family of refresh tokens; each refresh rotates to a new
-- token of the same family. Presenting a rotated-out token again means it was
-- stolen or replayed: the whole family is revoked.
CREATE TABLE token_families (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX token_families_user ON token_families (user_id);

CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    family_id  uuid NOT NULL REFERENCES token_families (id) ON DELETE CASCADE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text NOT NULL,
    payload      jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

-- One row per (client, endpoint, key): a retried request gets the first answer.
CREATE TABLE idempotency_keys (
    owner         text NOT NULL,
    method        text NOT NULL,
    path          text NOT NULL,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    status        integer,
    content_type  text,
    body          bytea,
    created_at    timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    PRIMARY KEY (owner, method, path, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
