-- Visits a clinic books in its own system (POST /api/v1/visits, issue 39,
-- docs/guests.md "Visits booked elsewhere"). A visit is a booking row, so
-- its room's webhooks, call report, recordings and invites are a booked
-- visit's; external_ref is the clinic's own reference for it (one per
-- clinic). The clinic's system keeps the doctor's time: such a visit is
-- left out of the overlap rule, which guards the schedule Wadud books.
ALTER TABLE bookings ADD COLUMN external_ref text
    CHECK (external_ref ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$');
CREATE UNIQUE INDEX bookings_external_ref ON bookings (clinic_id, external_ref)
    WHERE external_ref IS NOT NULL;

ALTER TABLE bookings DROP CONSTRAINT bookings_no_overlap;
ALTER TABLE bookings ADD CONSTRAINT bookings_no_overlap EXCLUDE USING gist (
    int8range(doctor_key, doctor_key, '[]') WITH &&,
    blocked WITH &&
) WHERE (status IN ('held', 'requested', 'accepted', 'in_progress') AND external_ref IS NULL);

-- A clinic's patient, by the clinic's own reference, as an account with no
-- credentials (as an anonymous patient's): one per reference, so their
-- visits' recordings and data rights gather under one person.
CREATE TABLE external_patients (
    clinic_id  uuid NOT NULL REFERENCES clinics (id) ON DELETE CASCADE,
    reference  text NOT NULL CHECK (reference ~ '^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$'),
    user_id    uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (clinic_id, reference)
);
