-- A guest a visit's host invites (issue 39, migration 0029) hears of it from
-- the notifier: invite.created joins the inbox's topics, every earlier topic
-- and condition (migration 0023) kept as they were.
DROP TRIGGER outbox_to_notify ON outbox;
CREATE TRIGGER outbox_to_notify AFTER INSERT ON outbox FOR EACH ROW
    WHEN (NEW.topic IN ('booking.requested', 'booking.accepted', 'booking.cancelled',
                        'payment.refunded', 'chat.message.sent', 'call.waiting',
                        'payment.bank_transfer.requested', 'payment.bank_transfer.confirmed',
                        'payment.refund_refused', 'payment.received_late',
                        'payment.bank_transfer.refund_due', 'payment.bank_transfer.refunded',
                        'invite.created')
          OR (NEW.topic = 'payment.succeeded'
              AND NEW.payload->>'gateway' IS DISTINCT FROM 'bank_transfer')
          OR (NEW.topic = 'payment.expired' AND NEW.payload->>'gateway' = 'bank_transfer'))
    EXECUTE FUNCTION notify_inbox_copy();

-- A guest is no user: no preferences, devices or quiet hours, only the
-- address the inviter typed and the one channel they chose for it. So a job
-- is for a user (recipient_id, expanded by their preferences) or for an
-- address on a channel, never both. The address is as room_invites holds it
-- (E.164 for SMS and WhatsApp, as users.phone); the link is not stored, only
-- the invite's id in params: the notifier computes the link when it sends.
ALTER TABLE notify_jobs
    ALTER COLUMN recipient_id DROP NOT NULL,
    ADD COLUMN channel text,
    ADD COLUMN address text,
    ADD CONSTRAINT notify_jobs_user_or_address CHECK (
        (recipient_id IS NOT NULL AND channel IS NULL AND address IS NULL)
        OR (recipient_id IS NULL AND channel IS NOT NULL AND address IS NOT NULL
            AND ((channel = 'email' AND length(address) <= 254
                  AND address ~ '^[^@[:space:]]+@[^@[:space:]]+$')
                 OR (channel IN ('sms', 'whatsapp') AND address ~ '^\+[1-9][0-9]{6,14}$'))));

-- A guest's job has one delivery, on its channel (the send reads the address
-- from the job). The unique key of (event, channel, recipient, device) does
-- not hold where recipient_id is NULL, so this index says "once" for them.
ALTER TABLE notify_deliveries
    ALTER COLUMN recipient_id DROP NOT NULL,
    ADD CONSTRAINT notify_deliveries_user_or_guest CHECK (
        recipient_id IS NOT NULL OR (target = '' AND channel IN ('email', 'sms', 'whatsapp')));
CREATE UNIQUE INDEX notify_deliveries_guest ON notify_deliveries (job_key)
    WHERE recipient_id IS NULL;
