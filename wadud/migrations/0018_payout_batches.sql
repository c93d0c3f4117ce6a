-- Payout batches: a doctor's bank details, and batches of bank transfers that
-- pay every doctor of a clinic owed at least a threshold, exported as one
-- bulk-upload file and marked paid or failed line by line
-- (booking/payments/batch.py is the line's state machine).

-- Where a doctor is paid. The IBAN is stored in its electronic form, checked
-- (country, length, mod 97) by booking.payments.batch.iban before it gets here.
CREATE TABLE doctor_payout_accounts (
    doctor_id     uuid PRIMARY KEY REFERENCES doctors (id),
    clinic_id     uuid NOT NULL REFERENCES clinics (id),
    iban          text NOT NULL CHECK (iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$'),
    account_title text NOT NULL CHECK (length(account_title) BETWEEN 1 AND 100),
    updated_by    uuid REFERENCES users (id),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payout_batches (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id       uuid NOT NULL REFERENCES clinics (id),
    reference       text NOT NULL UNIQUE CHECK (reference ~ '^[A-Z0-9-]{1,24}$'),
    currency        text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    threshold_minor bigint NOT NULL CHECK (threshold_minor > 0),
    -- open until every line is paid or failed.
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    created_by      uuid REFERENCES users (id),
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);
CREATE INDEX payout_batches_clinic ON payout_batches (clinic_id, created_at);
CREATE INDEX payout_batches_open ON payout_batches (clinic_id) WHERE status = 'open';

-- A line keeps the bank details it was exported with, so the file reads the
-- same however often it is downloaded. A paid line points at its payouts row,
-- whose id is the reference of the ledger's payout transaction.
CREATE TABLE payout_batch_lines (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    batch_id       uuid NOT NULL REFERENCES payout_batches (id),
    clinic_id      uuid NOT NULL REFERENCES clinics (id),
    line_no        integer NOT NULL CHECK (line_no > 0),
    doctor_id      uuid NOT NULL REFERENCES doctors (id),
    amount_minor   bigint NOT NULL CHECK (amount_minor > 0),
    currency       text NOT NULL CHECK (currency IN ('PKR', 'AED', 'QAR', 'SAR')),
    iban           text NOT NULL,
    account_title  text NOT NULL,
    reference      text NOT NULL UNIQUE,
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'paid', 'failed')),
    failure_reason text CHECK (length(failure_reason) <= 500),
    payout_id      uuid UNIQUE REFERENCES payouts (id),
    settled_by     uuid REFERENCES users (id),
    settled_at     timestamptz,
    UNIQUE (batch_id, line_no),
    UNIQUE (batch_id, doctor_id),
    CHECK ((status = 'paid') = (payout_id IS NOT NULL)),
    CHECK ((status = 'pending') = (settled_at IS NULL))
);
-- The last line of defence against paying a doctor twice: whatever the
-- application's locks get wrong, a doctor has at most one unsettled line.
CREATE UNIQUE INDEX payout_batch_lines_one_pending ON payout_batch_lines (doctor_id)
    WHERE status = 'pending';
CREATE INDEX payout_batch_lines_doctor ON payout_batch_lines (doctor_id, batch_id);
