-- The calls a visit's doctor, or its clinic's staff, asked the phone bridge
-- to place to the patient's phone (issue 38, docs/phone.md "Calling the
-- patient"). The API writes a row (state 'requested') and NOTIFYs
-- wadud_phone_calls; a bridge claims it (FOR UPDATE SKIP LOCKED, so one
-- bridge places each call however many run) and writes each step after.
--
-- number: NULL for the patient's own number (read from users.phone when the
-- call is placed, so no copy of it is kept here); otherwise a number on a
-- trunk's dial_allow (an interpreter's line), which the bridge checks.
CREATE TABLE phone_calls (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    booking_id   uuid NOT NULL REFERENCES bookings (id) ON DELETE CASCADE,
    number       text CHECK (number ~ '^\+[0-9]{6,15}$'),
    state        text NOT NULL DEFAULT 'requested' CHECK (state IN (
                     'requested', 'dialling', 'ringing', 'answered', 'joined',
                     'ended', 'busy', 'no_answer', 'declined', 'failed')),
    reason       text,
    -- Who asked: their account (NULL: a room admin whose link names none).
    requested_by uuid REFERENCES users (id),
    bridge       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- One call at a time per visit: a second press while the phone rings is a
-- 409, not a second call.
CREATE UNIQUE INDEX phone_calls_live ON phone_calls (booking_id)
    WHERE state IN ('requested', 'dialling', 'ringing', 'answered');
CREATE INDEX phone_calls_waiting ON phone_calls (created_at) WHERE state = 'requested';
CREATE INDEX phone_calls_booking ON phone_calls (booking_id, created_at);
