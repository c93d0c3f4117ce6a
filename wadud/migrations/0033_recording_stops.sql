-- A recording that stops is a job for a recorder (recording/recorder.py):
-- each stop wakes the recorders that LISTEN on wadud_recordings, which then
-- sleep until its grace has passed, instead of polling every two seconds
-- (issue 41: pushes, not polls). A recording stops once, and few stop a
-- minute, so this NOTIFY costs the commits of stops nothing that matters.
CREATE FUNCTION recording_stopped_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('wadud_recordings', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER recording_stopped AFTER UPDATE OF state ON recordings FOR EACH ROW
    WHEN (NEW.state = 'stopped' AND OLD.state IS DISTINCT FROM 'stopped')
    EXECUTE FUNCTION recording_stopped_notify();
