-- Doctors' bank details sealed at rest (booking/payments/payout_details.py):
-- the IBAN and account title together, AES-256-GCM under the doctor's data
-- key (subject_keys; the server key for a doctor without an account), with
-- only the IBAN's last four characters in clear. A batch line takes its
-- doctor's sealed details as they are.
--
-- Rows from before this migration keep their clear columns until the
-- application seals them at start (it holds the keys; SQL does not), so a
-- row is either sealed, with nothing in clear, or clear and not yet sealed.
ALTER TABLE doctor_payout_accounts
    ALTER COLUMN iban DROP NOT NULL,
    ALTER COLUMN account_title DROP NOT NULL,
    ADD COLUMN key_id text,
    ADD COLUMN nonce bytea,
    ADD COLUMN sealed bytea,
    ADD COLUMN iban_last4 text CHECK (iban_last4 ~ '^[A-Z0-9]{4}$'),
    ADD CONSTRAINT doctor_payout_accounts_sealed_or_clear CHECK (
        CASE WHEN sealed IS NULL
             THEN iban IS NOT NULL AND account_title IS NOT NULL
                  AND key_id IS NULL AND nonce IS NULL
             ELSE iban IS NULL AND account_title IS NULL AND key_id IS NOT NULL
                  AND nonce IS NOT NULL AND iban_last4 IS NOT NULL
        END);

ALTER TABLE payout_batch_lines
    ALTER COLUMN iban DROP NOT NULL,
    ALTER COLUMN account_title DROP NOT NULL,
    ADD COLUMN key_id text,
    ADD COLUMN nonce bytea,
    ADD COLUMN sealed bytea,
    ADD COLUMN iban_last4 text CHECK (iban_last4 ~ '^[A-Z0-9]{4}$'),
    ADD CONSTRAINT payout_batch_lines_sealed_or_clear CHECK (
        CASE WHEN sealed IS NULL
             THEN iban IS NOT NULL AND account_title IS NOT NULL
                  AND key_id IS NULL AND nonce IS NULL
             ELSE iban IS NULL AND account_title IS NULL AND key_id IS NOT NULL
                  AND nonce IS NOT NULL AND iban_last4 IS NOT NULL
        END);
