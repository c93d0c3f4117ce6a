-- Payments: intents, gateway webhooks, commission, the double-entry ledger.

-- Platform commission per region; a clinic's own commission_bp overrides it,
-- and the payments_platform_commission_bp setting applies when neither is set.
CREATE TABLE region_commissions (
    region                 text PRIMARY KEY CHECK (region IN ('PK', 'AE', 'QA', 'SA')),
    commission_bp          integer NOT NULL CHECK (commission_bp BETWEEN 0 AND 10000),
    commission_fixed_minor bigint NOT NULL DEFAULT 0 CHECK (commission_fixed_minor >= 0)
);

CREATE TABLE payment_intents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    booking_id      uuid NOT NULL REFERENCES bookings (id),
    patient_id      uuid NOT NULL REFERENCES users (id),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    currency        text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    gateway         text NOT NULL,
    gateway_ref     text,
    -- booking/payments/intent.py is the one transition table.
    status          text NOT NULL
                    CHECK (status IN ('requires_payment', 'processing', 'succeeded', 'failed',
                                      'cancelled', 'refunded', 'partially_refunded')),
    checkout_url    text,
    refunded_minor  bigint NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    failure_reason  text,
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (refunded_minor <= amount_minor),
    UNIQUE (gateway, gateway_ref)
);
CREATE INDEX payment_intents_booking ON payment_intents (booking_id);
CREATE INDEX payment_intents_clinic ON payment_intents (clinic_id, created_at);
-- At most one live intent per booking.
CREATE UNIQUE INDEX payment_intents_one_live ON payment_intents (booking_id)
    WHERE status IN ('requires_payment', 'processing');

CREATE TABLE payment_events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_intent_id uuid NOT NULL REFERENCES payment_intents (id),
    clinic_id         uuid NOT NULL REFERENCES clinics (id),
    event             text NOT NULL,
    from_state        text,
    to_state          text NOT NULL,
    detail            jsonb NOT NULL DEFAULT '{}',
    at                timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_events_intent ON payment_events (payment_intent_id, id);

-- Webhook deliveries, deduplicated by the gateway's event id.
CREATE TABLE webhook_events (
    gateway     text NOT NULL,
    event_id    text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL,
    PRIMARY KEY (gateway, event_id)
);

CREATE TABLE refunds (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    payment_intent_id uuid NOT NULL REFERENCES payment_intents (id),
    clinic_id         uuid NOT NULL REFERENCES clinics (id),
    amount_minor      bigint NOT NULL CHECK (amount_minor > 0),
    status            text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    gateway_ref       text,
    reason            text NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_intent ON refunds (payment_intent_id);

CREATE TABLE payouts (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id    uuid NOT NULL REFERENCES clinics (id),
    doctor_id    uuid NOT NULL REFERENCES doctors (id),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    reference    text NOT NULL DEFAULT '',
    created_by   uuid REFERENCES users (id),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payouts_doctor ON payouts (doctor_id, created_at);

-- The ledger: append-only, double-entry. A transaction's entries sum to
-- zero per currency, checked at commit by a deferred constraint trigger, so a
-- transaction is inserted entry by entry and judged whole.
CREATE TABLE ledger_transactions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id         uuid NOT NULL REFERENCES clinics (id),
    kind              text NOT NULL CHECK (kind IN ('capture', 'refund', 'payout', 'adjustment')),
    reference         text NOT NULL,
    payment_intent_id uuid REFERENCES payment_intents (id),
    booking_id        uuid REFERENCES bookings (id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, reference)
);
CREATE INDEX ledger_transactions_clinic ON ledger_transactions (clinic_id, created_at);

CREATE TABLE ledger_entries (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id uuid NOT NULL REFERENCES ledger_transactions (id),
    clinic_id      uuid NOT NULL REFERENCES clinics (id),
    account        text NOT NULL CHECK (length(account) BETWEEN 1 AND 200),
    -- Debit positive, credit negative.
    amount_minor   bigint NOT NULL CHECK (amount_minor <> 0),
    currency       text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR'))
);
CREATE INDEX ledger_entries_txn ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account ON ledger_entries (clinic_id, account);

CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM ledger_entries
        WHERE transaction_id = NEW.transaction_id
        GROUP BY currency HAVING sum(amount_minor) <> 0
    ) THEN
        RAISE EXCEPTION 'ledger transaction % does not balance', NEW.transaction_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER ledger_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_check_balanced();

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only; post a reversing transaction instead'
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
