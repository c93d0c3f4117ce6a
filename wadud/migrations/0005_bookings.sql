-- Bookings: lookups the booking and instant-queue handlers make by key.

-- The public manage link names its booking only by the secret's SHA-256;
-- resolving a link must not scan every booking, and two bookings never share
-- a secret.
CREATE UNIQUE INDEX bookings_manage_token ON bookings (manage_token_hash)
    WHERE manage_token_hash IS NOT NULL;

-- The instant queue's wait estimate reads recent instant consultations of one
-- clinic.
CREATE INDEX bookings_instant_recent ON bookings (clinic_id, updated_at DESC)
    WHERE instant;
