-- The notifier's inbox takes every event its planner acts on
-- (notify.plan.INBOX, which a test holds to this trigger), and no event it
-- plans nothing for. Migration 0011 copied the topics the planner knew then;
-- the bank transfer's instructions, receipt and expiry, and the money owed
-- back by hand, were planned but never reached the inbox.
--
-- A bank transfer's payment.succeeded is left out (its receipt is
-- payment.bank_transfer.confirmed's, which names the transfer's reference),
-- and payment.expired is taken only for a bank transfer (the patient hears
-- their hold lapsed; a card checkout left unpaid tells nobody).
DROP TRIGGER outbox_to_notify ON outbox;
CREATE TRIGGER outbox_to_notify AFTER INSERT ON outbox FOR EACH ROW
    WHEN (NEW.topic IN ('booking.requested', 'booking.accepted', 'booking.cancelled',
                        'payment.refunded', 'chat.message.sent', 'call.waiting',
                        'payment.bank_transfer.requested', 'payment.bank_transfer.confirmed',
                        'payment.refund_refused', 'payment.received_late',
                        'payment.bank_transfer.refund_due', 'payment.bank_transfer.refunded')
          OR (NEW.topic = 'payment.succeeded'
              AND NEW.payload->>'gateway' IS DISTINCT FROM 'bank_transfer')
          OR (NEW.topic = 'payment.expired' AND NEW.payload->>'gateway' = 'bank_transfer'))
    EXECUTE FUNCTION notify_inbox_copy();
