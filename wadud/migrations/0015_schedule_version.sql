-- A doctor's schedule version: bumped by every change to the doctor's weekly
-- rules or date overrides, whoever makes it (the API, an admin's SQL).
--
-- A hold checks the requested slot against the doctor's availability. The
-- API keeps the availability it built per doctor (booking.slots) and holds
-- in one statement that inserts only if the doctor's row still has the
-- version, and the settings, that availability was built from; a mismatch
-- inserts nothing and the hold takes the long way, which reads everything
-- afresh. The doctor's own settings (time zone, slot lengths, buffers,
-- notice, horizon) are compared column by column in that statement, so this
-- version covers only the two tables of rows.

ALTER TABLE doctors ADD COLUMN schedule_version bigint NOT NULL DEFAULT 0;

CREATE FUNCTION doctor_schedule_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        UPDATE doctors SET schedule_version = schedule_version + 1 WHERE id = OLD.doctor_id;
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.doctor_id <> OLD.doctor_id) THEN
        UPDATE doctors SET schedule_version = schedule_version + 1 WHERE id = NEW.doctor_id;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER availability_rules_changed
    AFTER INSERT OR UPDATE OR DELETE ON availability_rules
    FOR EACH ROW EXECUTE FUNCTION doctor_schedule_changed();
CREATE TRIGGER availability_overrides_changed
    AFTER INSERT OR UPDATE OR DELETE ON availability_overrides
    FOR EACH ROW EXECUTE FUNCTION doctor_schedule_changed();
