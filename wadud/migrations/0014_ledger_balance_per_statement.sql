-- The ledger's balance check runs once per INSERT statement on
-- ledger_entries, over every transaction the statement touched, instead of
-- once per entry at commit.
--
-- The deferred row trigger of 0003 ran the same aggregate once for each entry:
-- three times for every capture (gateway, doctor, platform), a plpgsql call
-- and an index scan each, a fifteenth of the database's work per booking.
-- Transactions are written whole by one statement (booking.payments.service.
-- post_transaction is the ledger's only writer), so checking at the end of
-- that statement proves the same thing, and sooner: a statement that leaves
-- any transaction it wrote to unbalanced fails on the spot. Entries added to
-- an old transaction are checked with all of that transaction's entries, as
-- before. A header without entries still escapes the trigger; the check
-- function (ledger_is_balanced) still catches that.

DROP TRIGGER ledger_balanced ON ledger_entries;
DROP FUNCTION ledger_check_balanced();

-- The check itself is 0003's query, once per transaction the statement
-- wrote (by its index on transaction_id). A set-based form (IN over the
-- transition table) planned a sequential scan of the whole ledger on a
-- freshly started server, whose empty tables' statistics made that look
-- cheap, and plpgsql kept the plan as the ledger grew.
CREATE FUNCTION ledger_check_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    txn uuid;
BEGIN
    FOR txn IN SELECT DISTINCT transaction_id FROM new_entries LOOP
        IF EXISTS (
            SELECT 1 FROM ledger_entries
            WHERE transaction_id = txn
            GROUP BY currency HAVING sum(amount_minor) <> 0
        ) THEN
            RAISE EXCEPTION 'ledger transaction % does not balance', txn
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_balanced
    AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_check_balanced();
