-- A visit's phone PIN: what a patient or guest on a plain phone keys to join
-- the visit through the phone bridge (sip/, issue 38). Eight digits, always:
-- one length a caller is told and keys, never changed under them (a PIN
-- length change broke phone joins elsewhere). Unique among the visits that
-- can still be joined, so a PIN names one visit; a finished or cancelled
-- visit's PIN is free again. Drawn from gen_random_uuid(), the built-in
-- strong random source (random() is a seeded PRNG): 48 random bits reduced
-- modulo 10^8, a bias of under one in a million.
CREATE FUNCTION bookings_new_phone_pin() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    pin text;
BEGIN
    LOOP
        pin := lpad((('x' || substr(replace(gen_random_uuid()::text, '-', ''), 1, 12))::bit(48)::bigint
                     % 100000000)::text, 8, '0');
        EXIT WHEN NOT EXISTS (
            SELECT 1 FROM bookings
            WHERE phone_pin = pin AND status IN ('held', 'requested', 'accepted', 'in_progress'));
    END LOOP;
    RETURN pin;
END $$;

ALTER TABLE bookings ADD COLUMN phone_pin text CHECK (phone_pin ~ '^[0-9]{8}$');
CREATE UNIQUE INDEX bookings_phone_pin_live ON bookings (phone_pin)
    WHERE status IN ('held', 'requested', 'accepted', 'in_progress');

-- Every visit still to come gets one, one row at a time so each draw sees
-- the ones before it.
DO $$
DECLARE
    row_id uuid;
BEGIN
    FOR row_id IN SELECT id FROM bookings
                  WHERE status IN ('held', 'requested', 'accepted', 'in_progress') LOOP
        UPDATE bookings SET phone_pin = bookings_new_phone_pin() WHERE id = row_id;
    END LOOP;
END $$;

ALTER TABLE bookings ALTER COLUMN phone_pin SET DEFAULT bookings_new_phone_pin();
