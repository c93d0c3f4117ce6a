-- A history or ledger row belongs to its parent's clinic: one composite
-- foreign key says so, instead of one key to the parent and one to clinics.
--
-- Each key is checked on every insert by a query that takes a KEY SHARE lock
-- on the referenced row. The separate clinic keys made every booking lock
-- its clinic's row a dozen times (booking and payment events, each ledger
-- entry), from every concurrent booking of the clinic at once: the busiest
-- rows in the database, with a MultiXact per overlapping locker. The
-- composite key checks one row, the parent, and checks more: the child's
-- clinic is its parent's (what ledger_is_balanced used to verify after the
-- fact for ledger entries). ON DELETE behaviour is the parent key's.

ALTER TABLE bookings ADD CONSTRAINT bookings_id_clinic UNIQUE (id, clinic_id);
ALTER TABLE payment_intents ADD CONSTRAINT payment_intents_id_clinic UNIQUE (id, clinic_id);
ALTER TABLE ledger_transactions
    ADD CONSTRAINT ledger_transactions_id_clinic UNIQUE (id, clinic_id);

ALTER TABLE booking_events
    DROP CONSTRAINT booking_events_booking_id_fkey,
    DROP CONSTRAINT booking_events_clinic_id_fkey,
    ADD CONSTRAINT booking_events_parent_fkey FOREIGN KEY (booking_id, clinic_id)
        REFERENCES bookings (id, clinic_id) ON DELETE CASCADE;

ALTER TABLE payment_intents
    DROP CONSTRAINT payment_intents_booking_id_fkey,
    DROP CONSTRAINT payment_intents_clinic_id_fkey,
    ADD CONSTRAINT payment_intents_parent_fkey FOREIGN KEY (booking_id, clinic_id)
        REFERENCES bookings (id, clinic_id);

ALTER TABLE payment_events
    DROP CONSTRAINT payment_events_payment_intent_id_fkey,
    DROP CONSTRAINT payment_events_clinic_id_fkey,
    ADD CONSTRAINT payment_events_parent_fkey FOREIGN KEY (payment_intent_id, clinic_id)
        REFERENCES payment_intents (id, clinic_id);

ALTER TABLE ledger_entries
    DROP CONSTRAINT ledger_entries_transaction_id_fkey,
    DROP CONSTRAINT ledger_entries_clinic_id_fkey,
    ADD CONSTRAINT ledger_entries_parent_fkey FOREIGN KEY (transaction_id, clinic_id)
        REFERENCES ledger_transactions (id, clinic_id);
