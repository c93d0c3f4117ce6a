-- Consent, the tamper-evident audit trail, and TOTP for staff and admins
-- (issue 15; docs/privacy.md).

-- == Consent ====================================================================
--
-- A consent text is versioned per (region, purpose, language) and never
-- edited: a change is a new version. Versions of one (region, purpose) in
-- different languages with the same number are translations of one text.
-- ``material``: acceptances of earlier versions no longer count once this one
-- is published (the patient must accept again).

CREATE TABLE consent_texts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    region       text NOT NULL CHECK (region IN ('PK', 'AE', 'QA', 'SA')),
    purpose      text NOT NULL CHECK (purpose IN ('telehealth_consultation', 'data_processing',
                                                  'call_recording', 'marketing')),
    language     text NOT NULL CHECK (language IN ('en', 'ur', 'ar')),
    version      integer NOT NULL CHECK (version >= 1),
    title        text NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    body         text NOT NULL CHECK (length(body) BETWEEN 1 AND 100000),
    material     boolean NOT NULL DEFAULT true,
    published_by uuid REFERENCES users (id) ON DELETE SET NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (region, purpose, language, version)
);
CREATE INDEX consent_texts_material ON consent_texts (region, purpose, version DESC) WHERE material;

-- Every accept and withdraw, appended; the latest per (user, region,
-- purpose) is the patient's current answer. Rows are never updated (a
-- trigger refuses it); erasure may delete them with the account.
CREATE TABLE consent_events (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    region   text NOT NULL CHECK (region IN ('PK', 'AE', 'QA', 'SA')),
    purpose  text NOT NULL,
    action   text NOT NULL CHECK (action IN ('accept', 'withdraw')),
    -- The text accepted (its version is copied for the check at booking and join).
    text_id  uuid REFERENCES consent_texts (id),
    version  integer,
    at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((action = 'accept') = (text_id IS NOT NULL AND version IS NOT NULL))
);
CREATE INDEX consent_events_latest ON consent_events (user_id, region, purpose, id DESC);

CREATE FUNCTION wadud_refuse_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: rows are never changed', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER consent_texts_frozen BEFORE UPDATE ON consent_texts
    FOR EACH ROW EXECUTE FUNCTION wadud_refuse_update();
CREATE TRIGGER consent_events_frozen BEFORE UPDATE ON consent_events
    FOR EACH ROW EXECUTE FUNCTION wadud_refuse_update();

-- == Audit trail =================================================================
--
-- One append-only table, hash-chained: each row's hash is
--   SHA-256(previous row's hash || UTF-8 of audit_content(row))
-- with 32 zero bytes before the first row. The chain is computed here, in a
-- BEFORE INSERT trigger, under a transaction-scoped advisory lock, so a
-- writer sends one INSERT and the order of the chain is the order of the
-- commits (privacy/audit.py explains the choice). ``wadud audit verify``
-- recomputes it in Python from the stored columns.
--
-- The hashed content holds ids, never plaintext personal data. The patient a
-- row is about appears twice: ``subject_digest`` (hashed, SHA-256 of
-- 'wadud-audit-subject:' || the user id) and ``subject_id`` (not hashed, the
-- key "who accessed my data" and the export look rows up by). Erasure sets
-- subject_id to NULL: the only UPDATE the table accepts.

CREATE TABLE audit_log (
    seq            bigint PRIMARY KEY,
    at             timestamptz NOT NULL,
    actor_id       uuid,
    actor_role     text NOT NULL CHECK (actor_role ~ '^[a-z_]{1,32}$'),
    action         text NOT NULL CHECK (action ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    clinic_id      uuid,
    object         text NOT NULL DEFAULT ''
                   CHECK (object ~ '^([a-z_]{1,32}/[A-Za-z0-9_.:-]{1,128})?$'),
    subject_digest text NOT NULL DEFAULT '' CHECK (subject_digest ~ '^([0-9a-f]{64})?$'),
    -- JSON written by the caller (no personal data; hashed as stored).
    detail         text NOT NULL DEFAULT '{}' CHECK (length(detail) <= 4000),
    hash           bytea NOT NULL CHECK (length(hash) = 32),
    -- Not hashed: cleared by erasure.
    subject_id     uuid
);
CREATE INDEX audit_log_clinic ON audit_log (clinic_id, seq DESC) WHERE clinic_id IS NOT NULL;
CREATE INDEX audit_log_subject ON audit_log (subject_id, seq DESC) WHERE subject_id IS NOT NULL;

-- What a row's hash covers, one field a line; detail last (the only field
-- that may hold a newline), so the encoding is unambiguous.
CREATE FUNCTION audit_content(
    p_seq bigint, p_at timestamptz, p_actor_id uuid, p_actor_role text, p_action text,
    p_clinic_id uuid, p_object text, p_subject_digest text, p_detail text
) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_seq::text || E'\n'
        -- Whole microseconds since 1970 without floating point (extract
        -- gives float8 before PostgreSQL 14, too coarse for microseconds).
        || (extract(epoch FROM date_trunc('second', p_at))::bigint * 1000000
            + extract(microseconds FROM p_at)::bigint % 1000000)::text || E'\n'
        || coalesce(p_actor_id::text, '') || E'\n'
        || p_actor_role || E'\n'
        || p_action || E'\n'
        || coalesce(p_clinic_id::text, '') || E'\n'
        || p_object || E'\n'
        || p_subject_digest || E'\n'
        || p_detail
$$;

CREATE FUNCTION audit_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_seq  bigint;
    v_hash bytea;
BEGIN
    -- Held to the end of the transaction: the next writer reads this row as
    -- its predecessor only once it is committed (or rolled back, and then
    -- not at all). Key 0x6175646974 spells "audit".
    PERFORM pg_advisory_xact_lock(418581342580);
    SELECT seq, hash INTO v_seq, v_hash FROM audit_log ORDER BY seq DESC LIMIT 1;
    NEW.seq := coalesce(v_seq, 0) + 1;
    NEW.at := date_trunc('microseconds', clock_timestamp());
    IF NEW.subject_id IS NOT NULL THEN
        NEW.subject_digest := encode(
            sha256(convert_to('wadud-audit-subject:' || NEW.subject_id::text, 'UTF8')), 'hex');
    END IF;
    NEW.hash := sha256(
        coalesce(v_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)
        || convert_to(audit_content(NEW.seq, NEW.at, NEW.actor_id, NEW.actor_role, NEW.action,
                                    NEW.clinic_id, NEW.object, NEW.subject_digest, NEW.detail),
                      'UTF8'));
    RETURN NEW;
END;
$$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_chain();

CREATE FUNCTION audit_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- Erasure's one change: forget whose data the row was about.
    IF TG_OP = 'UPDATE' AND NEW.subject_id IS NULL
       AND (NEW.seq, NEW.at, NEW.actor_id, NEW.actor_role, NEW.action, NEW.clinic_id,
            NEW.object, NEW.subject_digest, NEW.detail, NEW.hash)
           IS NOT DISTINCT FROM
           (OLD.seq, OLD.at, OLD.actor_id, OLD.actor_role, OLD.action, OLD.clinic_id,
            OLD.object, OLD.subject_digest, OLD.detail, OLD.hash) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();

-- == TOTP (RFC 6238) for staff and admins =========================================

ALTER TABLE users
    -- Base32 secret; set by enrolment, in use once confirmed with a code.
    ADD COLUMN totp_secret       text CHECK (totp_secret ~ '^[A-Z2-7]{16,64}$'),
    ADD COLUMN totp_confirmed_at timestamptz,
    -- The last time step a code was accepted for: a code works once.
    ADD COLUMN totp_last_step    bigint,
    ADD CHECK (totp_confirmed_at IS NULL OR totp_secret IS NOT NULL);

-- A clinic may require TOTP of its doctors and staff at sign-in.
ALTER TABLE clinics ADD COLUMN require_totp boolean NOT NULL DEFAULT false;
