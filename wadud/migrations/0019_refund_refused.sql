-- Refunds a gateway refused, and money that arrived after its booking lapsed
-- on a gateway that cannot send it back (EasyPaisa's merchant API has no
-- refund call). Both are kept as refund rows finance pays back by hand
-- (booking/payments/refund_due.py), listed per clinic, never dropped.
--
-- A refund row is now
--   kind 'refund'         a refund someone asked for (staff, a cancellation);
--   kind 'late_payment'   the whole of a payment received after its booking
--                         was no longer held, owed back to the patient;
-- and its status
--   succeeded            the gateway refunded it (the ledger posted it);
--   refused_by_gateway   the gateway said no: owed to the patient, nothing
--                        posted for a 'refund' (money has not moved), the
--                        money parked in patient_refunds_due for a
--                        'late_payment' (it did arrive);
--   refunded_by_hand     finance sent it back outside the gateway, with a
--                        note; posted then, as a gateway refund would be.
ALTER TABLE refunds DROP CONSTRAINT refunds_status_check;
ALTER TABLE refunds
    ADD CONSTRAINT refunds_status_check
        CHECK (status IN ('pending', 'succeeded', 'failed', 'refused_by_gateway',
                          'refunded_by_hand')),
    ADD COLUMN kind text NOT NULL DEFAULT 'refund' CHECK (kind IN ('refund', 'late_payment')),
    ADD COLUMN gateway_code text NOT NULL DEFAULT '',
    ADD COLUMN gateway_message text NOT NULL DEFAULT '',
    ADD COLUMN requested_by uuid REFERENCES users (id),
    ADD COLUMN note text NOT NULL DEFAULT '' CHECK (length(note) <= 1000),
    ADD COLUMN resolved_by uuid REFERENCES users (id),
    ADD COLUMN resolved_at timestamptz,
    ADD CONSTRAINT refunds_resolved CHECK ((status = 'refunded_by_hand') = (resolved_at IS NOT NULL));

-- Finance's list: what is still owed, per clinic.
CREATE INDEX refunds_owed ON refunds (clinic_id, created_at) WHERE status = 'refused_by_gateway';
-- A late payment is owed back once, however often the gateway reports it.
CREATE UNIQUE INDEX refunds_one_late_payment ON refunds (payment_intent_id)
    WHERE kind = 'late_payment';
