-- Bank transfer (issue 22): proofs patients upload, statements finance staff
-- import, and every credit that reached the platform's bank account.
--
-- A bank transfer is a payment intent of gateway 'bank_transfer' whose
-- gateway_ref is the reference the patient writes on the transfer
-- (booking/payments/transfer.py). Nothing here changes payment_intents.

-- A patient's proof of payment (a photo or PDF of the bank's receipt). The
-- bytes live in the attachment store, sealed (AES-GCM) under the patient's
-- data key named in key_id ('s:' || subject_keys.id): erasure shreds it.
CREATE TABLE bank_transfer_proofs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_intent_id uuid NOT NULL,
    clinic_id         uuid NOT NULL,
    patient_id        uuid NOT NULL REFERENCES users (id),
    content_type      text NOT NULL
                      CHECK (content_type IN ('image/jpeg', 'image/png', 'image/gif',
                                              'image/webp', 'application/pdf')),
    size_bytes        integer NOT NULL CHECK (size_bytes > 0),
    storage_key       text NOT NULL,
    key_id            text NOT NULL,
    nonce             bytea NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (payment_intent_id, clinic_id)
        REFERENCES payment_intents (id, clinic_id) ON DELETE CASCADE
);
CREATE INDEX bank_transfer_proofs_intent ON bank_transfer_proofs (payment_intent_id);
CREATE INDEX bank_transfer_proofs_patient ON bank_transfer_proofs (patient_id);

-- One imported CSV statement: who imported it and what came of it.
CREATE TABLE bank_statements (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id   uuid NOT NULL REFERENCES clinics (id),
    imported_by uuid REFERENCES users (id),
    lines       integer NOT NULL,
    matched     integer NOT NULL,
    unmatched   integer NOT NULL,
    refund_due  integer NOT NULL,
    duplicates  integer NOT NULL,
    rejected    jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX bank_statements_clinic ON bank_statements (clinic_id, created_at);

-- Money that reached the platform's bank account: a statement line, or a
-- transfer finance staff confirmed by hand. A credit is
--   unmatched   no live transfer takes it (unknown reference, another amount);
--   matched     it paid the transfer payment_intent_id;
--   refund_due  it arrived for a transfer that had expired or was paid
--               already: the patient is owed it back, never silently kept;
--   refunded    finance sent it back.
CREATE TABLE bank_credits (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id         uuid NOT NULL REFERENCES clinics (id),
    source            text NOT NULL CHECK (source IN ('statement', 'manual')),
    statement_id      uuid REFERENCES bank_statements (id),
    line_no           integer,
    -- Recognises a line imported again (the same statement twice).
    fingerprint       bytea,
    booked_on         date NOT NULL,
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    currency          text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    -- The statement's description as given (it may carry the payer's name).
    narration         text NOT NULL DEFAULT '',
    bank_txn_id       text,
    reference         text,
    status            text NOT NULL
                      CHECK (status IN ('unmatched', 'matched', 'refund_due', 'refunded')),
    reason            text,
    payment_intent_id uuid REFERENCES payment_intents (id),
    note              text NOT NULL DEFAULT '',
    resolved_by       uuid REFERENCES users (id),
    resolved_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (clinic_id, fingerprint),
    CHECK (status <> 'matched' OR payment_intent_id IS NOT NULL)
);
CREATE INDEX bank_credits_status ON bank_credits (clinic_id, status, created_at);
CREATE INDEX bank_credits_intent ON bank_credits (payment_intent_id)
    WHERE payment_intent_id IS NOT NULL;
-- A transfer is paid by one credit at most.
CREATE UNIQUE INDEX bank_credits_one_match ON bank_credits (payment_intent_id)
    WHERE status = 'matched';
