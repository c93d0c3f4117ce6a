-- The patient's phone rings when the doctor starts a booked visit (issue 40):
-- call.incoming joins the inbox's topics, every earlier topic and condition
-- (migration 0030) kept as they were.
DROP TRIGGER outbox_to_notify ON outbox;
CREATE TRIGGER outbox_to_notify AFTER INSERT ON outbox FOR EACH ROW
    WHEN (NEW.topic IN ('booking.requested', 'booking.accepted', 'booking.cancelled',
                        'payment.refunded', 'chat.message.sent', 'call.waiting',
                        'payment.bank_transfer.requested', 'payment.bank_transfer.confirmed',
                        'payment.refund_refused', 'payment.received_late',
                        'payment.bank_transfer.refund_due', 'payment.bank_transfer.refunded',
                        'invite.created', 'call.incoming')
          OR (NEW.topic = 'payment.succeeded'
              AND NEW.payload->>'gateway' IS DISTINCT FROM 'bank_transfer')
          OR (NEW.topic = 'payment.expired' AND NEW.payload->>'gateway' = 'bank_transfer'))
    EXECUTE FUNCTION notify_inbox_copy();

-- An iPhone app has two APNs tokens: its alert token, and its PushKit token,
-- which takes VoIP pushes (a call ringing, shown by CallKit) and nothing else.
ALTER TABLE notify_devices
    ADD COLUMN voip boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT notify_devices_voip_apns CHECK (NOT voip OR kind = 'apns');
