-- Notifications (notify/): what a user wants to hear and where, the events
-- the notifier has still to read, the durable schedule (reminders included)
-- and the delivery log. docs/notifications.md tells the whole story.

-- Who the notifier writes to, in which language and time zone. NULL: the
-- defaults (English; the time zone of the clinic's region or the doctor's).
ALTER TABLE users
    ADD COLUMN locale    text CHECK (locale IN ('en', 'ur', 'ar')),
    ADD COLUMN time_zone text CHECK (time_zone IS NULL OR length(time_zone) BETWEEN 1 AND 64),
    -- E.164, for SMS and WhatsApp.
    ADD COLUMN phone     text CHECK (phone IS NULL OR phone ~ '^\+[1-9][0-9]{6,14}$');

-- The notifier's own inbox: a copy of every outbox event it acts on, written
-- by a trigger in the very transaction that wrote the event. So an event is
-- here if and only if its transaction committed, whether or not Redis was up
-- or the outbox relay already published and pruned it; any number of
-- notifiers share the rows with FOR UPDATE SKIP LOCKED and delete each one in
-- the transaction that turned it into jobs (at least once in, never lost).
CREATE TABLE notify_inbox (
    event_id bigint PRIMARY KEY,          -- outbox.id
    topic    text NOT NULL,
    payload  jsonb NOT NULL,
    at       timestamptz NOT NULL
);

CREATE FUNCTION notify_inbox_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notify_inbox (event_id, topic, payload, at)
    VALUES (NEW.id, NEW.topic, NEW.payload, NEW.created_at)
    ON CONFLICT (event_id) DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_to_notify AFTER INSERT ON outbox FOR EACH ROW
    WHEN (NEW.topic IN ('booking.requested', 'booking.accepted', 'booking.cancelled',
                        'payment.succeeded', 'payment.refunded', 'chat.message.sent',
                        'call.waiting'))
    EXECUTE FUNCTION notify_inbox_copy();

-- The durable schedule: one row per (event, template, recipient), due now
-- (confirmations, receipts) or later (reminders 24 h and 15 min before a
-- booking, a chat message still unread after a while). A due row is claimed
-- with FOR UPDATE SKIP LOCKED and expanded into deliveries, one per channel
-- the recipient wants, in one transaction.
CREATE TABLE notify_jobs (
    key          text PRIMARY KEY CHECK (length(key) <= 300),
    event_id     text NOT NULL,
    recipient_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    template     text NOT NULL,
    params       jsonb NOT NULL,
    booking_id   uuid,
    due_at       timestamptz NOT NULL,
    -- Past this a job or its deliveries are pointless (a reminder after the
    -- consultation began) and are dropped, not sent.
    expires_at   timestamptz,
    state        text NOT NULL DEFAULT 'scheduled'
                 CHECK (state IN ('scheduled', 'done', 'cancelled', 'skipped', 'expired')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz
);
CREATE INDEX notify_jobs_due ON notify_jobs (due_at) WHERE state = 'scheduled';
CREATE INDEX notify_jobs_booking ON notify_jobs (booking_id) WHERE state = 'scheduled';
CREATE INDEX notify_jobs_recipient ON notify_jobs (recipient_id);

-- Devices and browsers a user gets push notifications on.
CREATE TABLE notify_devices (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('webpush', 'fcm', 'apns')),
    -- FCM registration token, APNs device token (hex), or a web push endpoint URL.
    token      text NOT NULL CHECK (length(token) BETWEEN 1 AND 2048),
    -- Web push only: the subscription's p256dh and auth keys.
    keys       jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, token)
);
CREATE INDEX notify_devices_user ON notify_devices (user_id);

CREATE TABLE notify_preferences (
    user_id     uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    channels    text[] NOT NULL DEFAULT '{email,webpush,fcm,apns}'
                CHECK (channels <@ '{email,webpush,fcm,apns,sms,whatsapp}'::text[]),
    -- Categories the user does not want: booking, reminder, payment, chat, call.
    muted       text[] NOT NULL DEFAULT '{}'
                CHECK (muted <@ '{booking,reminder,payment,chat,call}'::text[]),
    -- Local wall-clock times (the user's time zone); both or neither.
    quiet_start time,
    quiet_end   time,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- The delivery log. The unique key is the invariant "never twice": whatever
-- replicas race and however often an event is read, one (event, channel,
-- recipient, device) has one row, and a row is sent once it is 'sent'.
CREATE TABLE notify_deliveries (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        text NOT NULL,
    channel         text NOT NULL
                    CHECK (channel IN ('email', 'webpush', 'fcm', 'apns', 'sms', 'whatsapp')),
    recipient_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- notify_devices.id for push channels; '' for email, SMS and WhatsApp.
    target          text NOT NULL DEFAULT '',
    job_key         text NOT NULL REFERENCES notify_jobs (key) ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'sent', 'failed', 'expired')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    UNIQUE (event_id, channel, recipient_id, target)
);
CREATE INDEX notify_deliveries_due ON notify_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX notify_deliveries_job ON notify_deliveries (job_key);
CREATE INDEX notify_deliveries_recipient ON notify_deliveries (recipient_id, created_at);

-- Every attempt, kept with its outcome (what an operator reads when a
-- message did not arrive).
CREATE TABLE notify_attempts (
    delivery_id bigint NOT NULL REFERENCES notify_deliveries (id) ON DELETE CASCADE,
    attempt     integer NOT NULL CHECK (attempt > 0),
    at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    ok          boolean NOT NULL,
    detail      text NOT NULL DEFAULT '',
    PRIMARY KEY (delivery_id, attempt)
);
