-- Payments: what a live intent must keep to hand its checkout out again.

-- A patient who asks again for a live intent's checkout (reloaded page, second
-- tab) gets the same session: gateways that check out by form POST (JazzCash)
-- need the signed fields, not just a URL, and a fresh signing would need a
-- fresh transaction reference. The client's return_url is where the browser
-- goes after our redirect landing has verified the gateway's result.
ALTER TABLE payment_intents
    ADD COLUMN checkout_method text NOT NULL DEFAULT 'GET'
        CHECK (checkout_method IN ('GET', 'POST')),
    ADD COLUMN checkout_fields jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN return_url text CHECK (length(return_url) <= 2000);

-- The sweeper's two queries: unpaid intents past their window, and processing
-- ones to inquire about.
CREATE INDEX payment_intents_live ON payment_intents (status, expires_at)
    WHERE status IN ('requires_payment', 'processing');

-- Earnings read a doctor's account across clinics' entries by account name.
CREATE INDEX ledger_entries_account_only ON ledger_entries (account);

-- Payouts and refunds are listed per clinic.
CREATE INDEX refunds_clinic ON refunds (clinic_id, created_at);
CREATE INDEX payouts_clinic ON payouts (clinic_id, created_at);

-- Earnings find a doctor's captures and refunds through their booking.
CREATE INDEX ledger_transactions_booking ON ledger_transactions (booking_id)
    WHERE booking_id IS NOT NULL;
