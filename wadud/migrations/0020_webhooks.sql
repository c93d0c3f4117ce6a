-- Clinics' signed room webhooks (hooks/, docs/webhooks.md): the endpoints a
-- clinic admin configured, the room events that concern a clinic, and one
-- delivery per (event, endpoint) with its attempts.

CREATE TABLE room_hook_endpoints (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    clinic_id   uuid NOT NULL REFERENCES clinics (id) ON DELETE CASCADE,
    url         text NOT NULL CHECK (length(url) BETWEEN 8 AND 2048),
    -- The events it wants; empty: every event.
    events      text[] NOT NULL DEFAULT '{}',
    -- Signs every delivery (HMAC-SHA256); shown once, at creation or rotation.
    secret      text NOT NULL CHECK (length(secret) >= 32),
    description text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX room_hook_endpoints_clinic ON room_hook_endpoints (clinic_id);

-- A room event of a booking, kept for its deliveries (the outbox prunes its
-- own rows). id is the outbox row's: the event id receivers see.
CREATE TABLE room_hook_events (
    id         bigint PRIMARY KEY,
    name       text NOT NULL,
    clinic_id  uuid NOT NULL REFERENCES clinics (id) ON DELETE CASCADE,
    booking_id uuid NOT NULL,
    room       text NOT NULL,
    payload    jsonb NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE INDEX room_hook_events_clinic ON room_hook_events (clinic_id, created_at);

-- Exactly one delivery per (event, endpoint), a database invariant. Claimed
-- FOR UPDATE SKIP LOCKED by any number of deliverers, sent with the lock
-- held, and per (endpoint, room) in event order: a later event waits while
-- an earlier one is pending.
CREATE TABLE room_hook_deliveries (
    id              bigserial PRIMARY KEY,
    event_id        bigint NOT NULL REFERENCES room_hook_events (id) ON DELETE CASCADE,
    endpoint_id     uuid NOT NULL REFERENCES room_hook_endpoints (id) ON DELETE CASCADE,
    room            text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX room_hook_deliveries_due ON room_hook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX room_hook_deliveries_order ON room_hook_deliveries (endpoint_id, room, event_id)
    WHERE status = 'pending';

CREATE TABLE room_hook_attempts (
    id          bigserial PRIMARY KEY,
    delivery_id bigint NOT NULL REFERENCES room_hook_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    ok          boolean NOT NULL,
    -- The receiver's HTTP status; NULL when it was never reached.
    http_status integer,
    detail      text NOT NULL DEFAULT '',
    duration_ms integer NOT NULL DEFAULT 0
);
CREATE INDEX room_hook_attempts_delivery ON room_hook_attempts (delivery_id, attempt);

-- In the transaction that wrote the outbox row: the event and its
-- deliveries exist if and only if it committed, whether or not Redis was up.
CREATE FUNCTION webhook_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    booking uuid;
    clinic  uuid;
    name    text := substr(NEW.topic, 6);
BEGIN
    IF NOT (NEW.payload->>'booking_id' ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$') THEN
        RETURN NULL;
    END IF;
    booking := (NEW.payload->>'booking_id')::uuid;
    SELECT b.clinic_id INTO clinic FROM bookings b WHERE b.id = booking;
    IF clinic IS NULL OR NOT EXISTS (
        SELECT 1 FROM room_hook_endpoints e
        WHERE e.clinic_id = clinic AND e.enabled AND (e.events = '{}' OR name = ANY (e.events))
    ) THEN
        RETURN NULL;
    END IF;
    INSERT INTO room_hook_events (id, name, clinic_id, booking_id, room, payload, created_at)
    VALUES (NEW.id, name, clinic, booking, coalesce(NEW.payload->>'room', ''), NEW.payload,
            NEW.created_at)
    ON CONFLICT (id) DO NOTHING;
    INSERT INTO room_hook_deliveries (event_id, endpoint_id, room)
    SELECT NEW.id, e.id, coalesce(NEW.payload->>'room', '')
    FROM room_hook_endpoints e
    WHERE e.clinic_id = clinic AND e.enabled AND (e.events = '{}' OR name = ANY (e.events))
    ON CONFLICT (event_id, endpoint_id) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_to_webhooks AFTER INSERT ON outbox FOR EACH ROW
    WHEN (NEW.topic LIKE 'room.%')
    EXECUTE FUNCTION webhook_fan_out();
